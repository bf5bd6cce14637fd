//! Chat and text completions through the router on a tiny model with a byte-level
//! tokenizer and a chat template: messages, SSE chunk framing, stop strings, logprobs,
//! and prefix reuse across the turns of a conversation.

mod common;

use axum::http::StatusCode;
use common::*;
use serde_json::{json, Value};
use whale_server::ServeOptions;

fn opts() -> ServeOptions {
    ServeOptions {
        ctx: Some(2048),
        ..Default::default()
    }
}

fn chat_body(messages: Value, extra: Value) -> Value {
    let mut body = json!({"model": "whale", "messages": messages, "temperature": 0});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

#[tokio::test(flavor = "multi_thread")]
async fn chat_completion_non_streamed_and_streamed_agree() {
    let dir = tiny_model(true);
    let server = start(dir.path(), opts());
    let app = server.app();
    let messages = json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]);
    let body = chat_body(messages.clone(), json!({"max_tokens": 12}));
    let r = call(&app, "POST", "/v1/chat/completions", Some(&body), None).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    let choice = &v["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    let content = choice["message"]["content"].as_str().unwrap().to_string();
    let finish = choice["finish_reason"].as_str().unwrap().to_string();
    assert!(choice.get("token_ids").is_none(), "ids only when asked for");
    // Template: BOS, then "<|role|>content\n" per message, then "<|assistant|>", one
    // token per byte.
    let rendered = "<|system|>Be brief.\n<|user|>Hello there\n<|assistant|>";
    let usage = &v["usage"];
    assert_eq!(usage["prompt_tokens"], 1 + rendered.len());
    let completion_tokens = usage["completion_tokens"].as_u64().unwrap();
    assert!(completion_tokens <= 12);
    assert_eq!(finish == "length", completion_tokens == 12);

    let body = chat_body(
        messages,
        json!({"max_completion_tokens": 12, "stream": true,
                                           "stream_options": {"include_usage": true}}),
    );
    let r = call(&app, "POST", "/v1/chat/completions", Some(&body), None).await;
    assert_eq!(r.status, StatusCode::OK);
    let events = r.sse_data();
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    let usage_chunk = chunks.last().unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"]["completion_tokens"], completion_tokens);
    let finish_chunk = &chunks[chunks.len() - 2];
    assert_eq!(finish_chunk["choices"][0]["finish_reason"], finish.as_str());
    assert_eq!(finish_chunk["choices"][0]["delta"], json!({}));
    let streamed: String = chunks[1..chunks.len() - 2]
        .iter()
        .map(|c| {
            assert!(c["usage"].is_null() && c["choices"][0]["finish_reason"].is_null());
            c["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(streamed, content);
}

#[tokio::test(flavor = "multi_thread")]
async fn stop_strings_cut_the_text_and_finish_with_stop() {
    let dir = tiny_model(true);
    let server = start(dir.path(), opts());
    let app = server.app();
    // A text prompt makes the tiny model produce some text; find a stop string in it.
    let body = json!({"prompt": "The quick brown fox", "max_tokens": 40, "temperature": 0, "return_token_ids": true});
    let v = call(&app, "POST", "/v1/completions", Some(&body), None)
        .await
        .json();
    let text = v["choices"][0]["text"].as_str().unwrap().to_string();
    assert_eq!(
        v["choices"][0]["token_ids"].as_array().unwrap().len() as u64,
        v["usage"]["completion_tokens"].as_u64().unwrap()
    );
    let chars: Vec<char> = text.chars().collect();
    let Some(start) = (2..chars.len().saturating_sub(2))
        .find(|&i| chars[i] != '\u{fffd}' && chars[i + 1] != '\u{fffd}')
    else {
        panic!("the tiny model produced too little text: {text:?}");
    };
    let stop: String = chars[start..start + 2].iter().collect();
    let want = &text[..text.find(&stop).unwrap()];
    for stream in [false, true] {
        let body = json!({"prompt": "The quick brown fox", "max_tokens": 40, "temperature": 0,
                          "stop": ["NEVER-SEEN", stop], "stream": stream});
        let r = call(&app, "POST", "/v1/completions", Some(&body), None).await;
        let (got, finish) = if stream {
            let events = r.sse_data();
            let chunks: Vec<Value> = events[..events.len() - 1]
                .iter()
                .map(|e| serde_json::from_str(e).unwrap())
                .collect();
            let text: String = chunks
                .iter()
                .map(|c| c["choices"][0]["text"].as_str().unwrap())
                .collect();
            (
                text,
                chunks.last().unwrap()["choices"][0]["finish_reason"].clone(),
            )
        } else {
            let v = r.json();
            (
                v["choices"][0]["text"].as_str().unwrap().to_string(),
                v["choices"][0]["finish_reason"].clone(),
            )
        };
        assert_eq!(got, want, "stream={stream} stop={stop:?} full={text:?}");
        assert_eq!(finish, "stop");
    }
    // A single string is accepted too.
    let body =
        json!({"prompt": "The quick brown fox", "max_tokens": 40, "temperature": 0, "stop": stop});
    assert_eq!(
        call(&app, "POST", "/v1/completions", Some(&body), None)
            .await
            .json()["choices"][0]["text"],
        want
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn chat_logprobs_and_penalties() {
    let dir = tiny_model(true);
    let server = start(dir.path(), opts());
    let app = server.app();
    let messages = json!([{"role": "user", "content": [{"type": "text", "text": "Count: "}, {"type": "text", "text": "1 2 3"}]}]);
    let body = chat_body(
        messages.clone(),
        json!({"max_tokens": 6, "logprobs": true, "top_logprobs": 3}),
    );
    let v = call(&app, "POST", "/v1/chat/completions", Some(&body), None)
        .await
        .json();
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(
        content.len() as u64,
        v["usage"]["completion_tokens"].as_u64().unwrap()
    );
    for item in content {
        let top = item["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        // Greedy: the chosen token is the most likely one.
        assert_eq!(item["logprob"], top[0]["logprob"]);
        assert!(item["bytes"].is_array());
    }
    let bad = chat_body(messages.clone(), json!({"top_logprobs": 3}));
    let e = call(&app, "POST", "/v1/chat/completions", Some(&bad), None)
        .await
        .error(StatusCode::BAD_REQUEST);
    assert_eq!(e["param"], "top_logprobs");
    let bad = chat_body(
        messages.clone(),
        json!({"logprobs": true, "top_logprobs": 21}),
    );
    call(&app, "POST", "/v1/chat/completions", Some(&bad), None)
        .await
        .error(StatusCode::BAD_REQUEST);
    let bad = chat_body(json!([]), json!({}));
    call(&app, "POST", "/v1/chat/completions", Some(&bad), None)
        .await
        .error(StatusCode::BAD_REQUEST);
    let bad = chat_body(
        json!([{"role": "user", "content": [{"type": "image_url"}]}]),
        json!({}),
    );
    call(&app, "POST", "/v1/chat/completions", Some(&bad), None)
        .await
        .error(StatusCode::BAD_REQUEST);
    let bad = chat_body(messages.clone(), json!({"max_completion_tokens": 0}));
    let e = call(&app, "POST", "/v1/chat/completions", Some(&bad), None)
        .await
        .error(StatusCode::BAD_REQUEST);
    assert_eq!(e["param"], "max_completion_tokens");
    let long = "x".repeat(3000);
    let bad = chat_body(json!([{"role": "user", "content": long}]), json!({}));
    let e = call(&app, "POST", "/v1/chat/completions", Some(&bad), None)
        .await
        .error(StatusCode::BAD_REQUEST);
    assert_eq!(
        (e["param"].as_str(), e["code"].as_str()),
        (Some("messages"), Some("context_length_exceeded"))
    );

    // Penalties are accepted and change nothing about the response's shape.
    let body = chat_body(
        messages,
        json!({"max_tokens": 6, "frequency_penalty": 1.5, "presence_penalty": 0.5,
                                           "temperature": 0.8, "top_p": 0.9, "seed": 3}),
    );
    let v = call(&app, "POST", "/v1/chat/completions", Some(&body), None)
        .await
        .json();
    assert!(v["choices"][0]["message"]["content"].is_string());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_conversation_reuses_its_history() {
    let dir = tiny_model(true);
    let server = start(dir.path(), opts());
    let app = server.app();
    let system = "You are a helpful assistant. ".repeat(8); // ~230 tokens
    let mut messages = vec![
        json!({"role": "system", "content": system}),
        json!({"role": "user", "content": "Hi"}),
    ];
    let v = call(
        &app,
        "POST",
        "/v1/chat/completions",
        Some(&chat_body(json!(messages), json!({"max_tokens": 4}))),
        None,
    )
    .await
    .json();
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    let reply = v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    messages.push(json!({"role": "assistant", "content": reply}));
    messages.push(json!({"role": "user", "content": "And then?"}));
    let v = call(
        &app,
        "POST",
        "/v1/chat/completions",
        Some(&chat_body(json!(messages), json!({"max_tokens": 4}))),
        None,
    )
    .await
    .json();
    let cached = v["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    let prompt = v["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(
        cached >= 192 && cached < prompt,
        "cached {cached} of {prompt}"
    );
    assert_eq!(v["usage"]["prompt_cache_hit_tokens"], cached);
    assert_eq!(v["usage"]["prompt_cache_miss_tokens"], prompt - cached);
}
