//! Handler tests through the router without a socket (`oneshot`), on a tiny random model
//! without a tokenizer: prompts are token ids, as OpenAI's completions API allows.
//! Success, streaming framing, usage, the prefix cache, and every error status.

mod common;

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use common::*;
use serde_json::{json, Value};
use whale_server::{ServeOptions, MAX_BODY_BYTES};

fn opts() -> ServeOptions {
    ServeOptions {
        ctx: Some(512),
        ..Default::default()
    }
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn health_models_and_metrics() {
    let dir = tiny_model(false);
    let server = start(dir.path(), opts());
    let app = server.app();
    let r = call(&app, "GET", "/health", None, None).await;
    assert_eq!(
        (r.status, r.json()),
        (StatusCode::OK, json!({"status": "ok"}))
    );

    let r = call(&app, "GET", "/v1/models", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    let name = dir.path().file_name().unwrap().to_str().unwrap();
    let v = r.json();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], name);
    assert_eq!(v["data"][0]["object"], "model");
    let r = call(&app, "GET", &format!("/v1/models/{name}"), None, None).await;
    assert_eq!(r.json()["id"], name);
    call(&app, "GET", "/v1/models/gpt-4", None, None)
        .await
        .error(StatusCode::NOT_FOUND);

    let r = call(&app, "GET", "/metrics", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = String::from_utf8(r.body).unwrap();
    for name in [
        "whale_requests_total{endpoint=\"/health\",status=\"200\"} 1",
        "whale_queue_depth",
        "whale_running_sequences",
        "whale_batch_size_bucket",
        "whale_time_to_first_token_seconds_bucket",
        "whale_inter_token_seconds_bucket",
        "whale_prefix_cache_hit_tokens_total",
        "whale_prompt_tokens_total",
        "whale_generation_tokens_total",
    ] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn completion_with_token_ids_matches_the_model_and_reports_usage() {
    let dir = tiny_model(false);
    let model = load(dir.path());
    let p = prompt(20, 1);
    let want = greedy_reference(&model, &p, 8);
    let server = start(dir.path(), opts());
    let app = server.app();
    let body = json!({"model": "x", "prompt": p, "max_tokens": 8, "temperature": 0, "user": "unknown fields are fine"});
    let r = call(&app, "POST", "/v1/completions", Some(&body), None).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let v = r.json();
    assert_eq!(v["object"], "text_completion");
    assert!(v["id"].as_str().unwrap().starts_with("cmpl-"));
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "length");
    assert_eq!(choice["text"], ""); // no tokenizer: ids only
    assert_eq!(ids(&choice["token_ids"]), want);
    let u = &v["usage"];
    assert_eq!(u["prompt_tokens"], 20);
    assert_eq!(u["completion_tokens"], 8);
    assert_eq!(u["total_tokens"], 28);
    assert_eq!(u["prompt_tokens_details"]["cached_tokens"], 0);
    assert_eq!(u["prompt_cache_hit_tokens"], 0);
    assert_eq!(u["prompt_cache_miss_tokens"], 20);

    // Batch form with one prompt; seeded sampling is reproducible.
    let body =
        json!({"prompt": [p], "max_tokens": 6, "temperature": 1.0, "seed": 7, "logprobs": 2});
    let a = call(&app, "POST", "/v1/completions", Some(&body), None)
        .await
        .json();
    let b = call(&app, "POST", "/v1/completions", Some(&body), None)
        .await
        .json();
    assert_eq!(a["choices"][0]["token_ids"], b["choices"][0]["token_ids"]);
    let lp = &a["choices"][0]["logprobs"];
    assert_eq!(lp["tokens"].as_array().unwrap().len(), 6);
    assert_eq!(lp["top_logprobs"][0].as_object().unwrap().len(), 2);
    assert!(lp["token_logprobs"][0].as_f64().unwrap() <= 0.0);
    assert!(lp["tokens"][0].as_str().unwrap().starts_with("token_id:"));
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_requests_are_batched_and_match_separate_runs() {
    let dir = tiny_model(false);
    let model = load(dir.path());
    // Different lengths, so prefill chunks and decode steps mix in one batch.
    let prompts: Vec<Vec<u32>> = [5, 40, 300, 70, 1]
        .iter()
        .enumerate()
        .map(|(i, &n)| prompt(n, i as u32))
        .collect();
    let wants: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| greedy_reference(&model, p, 12))
        .collect();
    let server = start(
        dir.path(),
        ServeOptions {
            prefill_chunk: 64,
            max_seqs: 4,
            ..opts()
        },
    );
    let app = server.app();
    let tasks: Vec<_> = prompts
        .iter()
        .map(|p| {
            let app = app.clone();
            let body = json!({"prompt": p, "max_tokens": 12, "temperature": 0});
            tokio::spawn(
                async move { call(&app, "POST", "/v1/completions", Some(&body), None).await },
            )
        })
        .collect();
    for (task, want) in tasks.into_iter().zip(&wants) {
        let r = task.await.unwrap();
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(&ids(&r.json()["choices"][0]["token_ids"]), want);
    }
    let metrics = String::from_utf8(call(&app, "GET", "/metrics", None, None).await.body).unwrap();
    // Some step ran more than one sequence.
    let single = metric(&metrics, "whale_batch_size_bucket{le=\"1\"}");
    let all = metric(&metrics, "whale_batch_size_count");
    assert!(all > single, "no batched step:\n{metrics}");
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("{name} not in:\n{text}"))
}

/// With a q8_0 latent cache the prefix cache still serves hits: blocks are exported as f32
/// and re-encoded on import to the same blocks, so a hit continues as a direct run does.
#[tokio::test(flavor = "multi_thread")]
async fn q8_0_cache_works_with_the_prefix_cache() {
    let dir = tiny_model(false);
    let load = || {
        let opts = whale_model::LoadOptions {
            mla: whale_model::MlaImpl::Absorbed,
            quant: None,
            cache: whale_model::CacheType::Q8_0,
        };
        whale_model::Model::load_with(dir.path(), &opts).unwrap()
    };
    let p = prompt(200, 5);
    let want = greedy_reference(&load(), &p, 5);
    let server = whale_server::Server::start(load(), dir.path(), &opts()).unwrap();
    let app = server.app();
    let body = json!({"prompt": p, "max_tokens": 5, "temperature": 0});
    for cached in [0, 192] {
        let r = call(&app, "POST", "/v1/completions", Some(&body), None)
            .await
            .json();
        assert_eq!(r["usage"]["prompt_tokens_details"]["cached_tokens"], cached);
        assert_eq!(ids(&r["choices"][0]["token_ids"]), want, "cached {cached}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn repeated_prompt_reuses_the_cached_prefix() {
    let dir = tiny_model(false);
    let model = load(dir.path());
    let p = prompt(200, 3);
    let want = greedy_reference(&model, &p, 5);
    let server = start(dir.path(), opts());
    let app = server.app();
    let body = json!({"prompt": p, "max_tokens": 5, "temperature": 0});
    let first = call(&app, "POST", "/v1/completions", Some(&body), None)
        .await
        .json();
    assert_eq!(first["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    let second = call(&app, "POST", "/v1/completions", Some(&body), None)
        .await
        .json();
    // 199 reusable tokens (the last is always computed) hold three 64-token blocks.
    assert_eq!(
        second["usage"]["prompt_tokens_details"]["cached_tokens"],
        192
    );
    assert_eq!(second["usage"]["prompt_cache_hit_tokens"], 192);
    assert_eq!(second["usage"]["prompt_cache_miss_tokens"], 8);
    assert_eq!(ids(&second["choices"][0]["token_ids"]), want);
    // The finished sequence cached its generated tokens too: prompt + 5 generated, then
    // more, reuses the blocks that span the end of the old prompt.
    let mut longer = p.clone();
    longer.extend(&want);
    longer.extend(prompt(60, 9));
    let body = json!({"prompt": longer, "max_tokens": 1, "temperature": 0});
    let third = call(&app, "POST", "/v1/completions", Some(&body), None)
        .await
        .json();
    assert_eq!(
        third["usage"]["prompt_tokens_details"]["cached_tokens"],
        192
    );
    let metrics = String::from_utf8(call(&app, "GET", "/metrics", None, None).await.body).unwrap();
    assert_eq!(
        metric(&metrics, "whale_prefix_cache_hit_tokens_total"),
        384.0
    );
    assert_eq!(
        metric(&metrics, "whale_prefix_cache_hit_requests_total"),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn streaming_framing_usage_and_ids() {
    let dir = tiny_model(false);
    let model = load(dir.path());
    let p = prompt(30, 4);
    let want = greedy_reference(&model, &p, 6);
    let server = start(dir.path(), opts());
    let app = server.app();
    let body = json!({"prompt": p, "max_tokens": 6, "temperature": 0, "stream": true,
                      "stream_options": {"include_usage": true}});
    let r = call(&app, "POST", "/v1/completions", Some(&body), None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let events = r.sse_data();
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let mut got = Vec::new();
    let (usage_chunk, rest) = chunks.split_last().unwrap();
    let (finish_chunk, token_chunks) = rest.split_last().unwrap();
    for c in token_chunks {
        assert_eq!(c["object"], "text_completion");
        assert!(c["usage"].is_null());
        assert!(c["choices"][0]["finish_reason"].is_null());
        got.extend(ids(&c["choices"][0]["token_ids"]));
    }
    assert_eq!(got, want);
    assert_eq!(finish_chunk["choices"][0]["finish_reason"], "length");
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"]["completion_tokens"], 6);
    assert_eq!(usage_chunk["usage"]["prompt_tokens"], 30);
    // Every chunk of one stream shares its id.
    assert!(chunks.iter().all(|c| c["id"] == chunks[0]["id"]));

    // Without include_usage: no usage field, no usage chunk.
    let body = json!({"prompt": p, "max_tokens": 2, "stream": true});
    let events = call(&app, "POST", "/v1/completions", Some(&body), None)
        .await
        .sse_data();
    assert_eq!(events.len(), 2 + 1 + 1);
    assert!(events.iter().all(|e| !e.contains("\"usage\"")));
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_openai_shaped_400s() {
    let dir = tiny_model(false);
    let server = start(
        dir.path(),
        ServeOptions {
            ctx: Some(64),
            ..Default::default()
        },
    );
    let app = server.app();
    let raw = call_raw(
        &app,
        "POST",
        "/v1/completions",
        Some(b"{\"prompt\": [1, 2".to_vec()),
        None,
    )
    .await;
    let e = raw.error(StatusCode::BAD_REQUEST);
    assert_eq!(e["type"], "invalid_request_error");
    assert!(e["message"].as_str().unwrap().contains("JSON"));
    call_raw(&app, "POST", "/v1/completions", Some(b"[1]".to_vec()), None)
        .await
        .error(StatusCode::BAD_REQUEST);

    let (p60, p70) = (vec![1u32; 60], vec![1u32; 70]);
    let cases: Vec<(Value, &str)> = vec![
        (json!({"prompt": [1, 2], "max_tokens": "ten"}), "max_tokens"),
        (json!({"prompt": [1, 2], "max_tokens": 0}), "max_tokens"),
        (json!({"prompt": [1, 2], "max_tokens": -5}), "max_tokens"),
        (json!({"prompt": [1, 2], "n": 2}), "n"),
        (
            json!({"prompt": [1, 2], "temperature": "warm"}),
            "temperature",
        ),
        (json!({"prompt": [1, 2], "temperature": 3}), "temperature"),
        (json!({"prompt": [1, 2], "top_p": 1.5}), "top_p"),
        (json!({"prompt": [1, 2], "stop": 5}), "stop"),
        (json!({"prompt": [1, 2], "stop": "x".repeat(2000)}), "stop"),
        (json!({"prompt": [1, 2], "stop": vec!["a"; 17]}), "stop"),
        (json!({"prompt": [1, 2], "stream": "yes"}), "stream"),
        (json!({"prompt": [1, 2], "logprobs": 9}), "logprobs"),
        (json!({"prompt": [1, 2], "echo": true}), "echo"),
        (json!({"prompt": [1, 100000]}), "prompt"),
        (json!({"prompt": []}), "prompt"),
        (json!({"prompt": [[1], [2]]}), "prompt"),
        (json!({"prompt": "text needs a tokenizer"}), "prompt"),
        (json!({"max_tokens": 3}), "prompt"),
        (json!({"prompt": p70}), "prompt"),
        (json!({"prompt": p60, "max_tokens": 10}), "prompt"),
    ];
    for (body, param) in cases {
        let e = call(&app, "POST", "/v1/completions", Some(&body), None)
            .await
            .error(StatusCode::BAD_REQUEST);
        assert_eq!(e["param"], param, "{body}: {e}");
    }
    let e = call(
        &app,
        "POST",
        "/v1/completions",
        Some(&json!({"prompt": p70})),
        None,
    )
    .await
    .error(StatusCode::BAD_REQUEST);
    assert_eq!(e["code"], "context_length_exceeded");
    let chat = json!({"messages": [{"role": "user", "content": "hi"}]});
    call(&app, "POST", "/v1/chat/completions", Some(&chat), None)
        .await
        .error(StatusCode::BAD_REQUEST);
    let e = call(
        &app,
        "POST",
        "/v1/chat/completions",
        Some(&json!({"messages": "hi"})),
        None,
    )
    .await
    .error(StatusCode::BAD_REQUEST);
    assert_eq!(e["param"], "messages");

    call(&app, "GET", "/v1/nothing", None, None)
        .await
        .error(StatusCode::NOT_FOUND);
    call(&app, "GET", "/v1/completions", None, None)
        .await
        .error(StatusCode::METHOD_NOT_ALLOWED);
    let metrics = String::from_utf8(call(&app, "GET", "/metrics", None, None).await.body).unwrap();
    assert!(
        metric(
            &metrics,
            "whale_requests_total{endpoint=\"/v1/completions\",status=\"400\"}"
        ) >= 20.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn api_key_body_limit_and_full_queue() {
    let dir = tiny_model(false);
    let server = start(
        dir.path(),
        ServeOptions {
            api_key: Some("sekret".into()),
            max_seqs: 1,
            max_queue: Some(0),
            ctx: Some(4096),
            ..Default::default()
        },
    );
    let app = server.app();
    let body = json!({"prompt": [1, 2, 3], "max_tokens": 2});
    let e = call(&app, "POST", "/v1/completions", Some(&body), None)
        .await
        .error(StatusCode::UNAUTHORIZED);
    assert_eq!(e["code"], "invalid_api_key");
    call(&app, "POST", "/v1/completions", Some(&body), Some("wrong"))
        .await
        .error(StatusCode::UNAUTHORIZED);
    call(&app, "GET", "/v1/models", None, None)
        .await
        .error(StatusCode::UNAUTHORIZED);
    assert_eq!(
        call(&app, "GET", "/health", None, None).await.status,
        StatusCode::OK
    );
    let ok = call(&app, "POST", "/v1/completions", Some(&body), Some("sekret")).await;
    assert_eq!(ok.status, StatusCode::OK);

    let big = vec![b' '; MAX_BODY_BYTES + 1];
    call_raw(&app, "POST", "/v1/completions", Some(big), Some("sekret"))
        .await
        .error(StatusCode::PAYLOAD_TOO_LARGE);

    // One slot and no queue: a long stream holds it, the next request gets 429.
    let long = json!({"prompt": [1, 2, 3], "max_tokens": 4000, "stream": true});
    let req = axum::http::Request::post("/v1/completions")
        .header("authorization", "Bearer sekret")
        .body(axum::body::Body::from(long.to_string()))
        .unwrap();
    let held = tower::ServiceExt::oneshot(app.clone(), req).await.unwrap();
    assert_eq!(held.status(), StatusCode::OK);
    let r = call(&app, "POST", "/v1/completions", Some(&body), Some("sekret")).await;
    let e = r.error(StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(e["code"], "rate_limit_exceeded");
    assert_eq!(r.headers["retry-after"], "1");
    // Dropping the stream cancels its sequence and frees the slot within a step or two.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = call(&app, "POST", "/v1/completions", Some(&body), Some("sekret")).await;
        if r.status == StatusCode::OK {
            break;
        }
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(Instant::now() < deadline, "slot never freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let metrics = String::from_utf8(call(&app, "GET", "/metrics", None, None).await.body).unwrap();
    assert_eq!(metric(&metrics, "whale_requests_cancelled_total"), 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn client_disconnect_mid_stream_cancels_the_sequence() {
    use http_body_util::BodyExt;
    let dir = tiny_model(false);
    let server = start(
        dir.path(),
        ServeOptions {
            ctx: Some(8192),
            ..Default::default()
        },
    );
    let app = server.app();
    let long = json!({"prompt": [5, 6, 7], "max_tokens": 8000, "stream": true});
    let req = axum::http::Request::post("/v1/completions")
        .body(axum::body::Body::from(long.to_string()))
        .unwrap();
    let response = tower::ServiceExt::oneshot(app.clone(), req).await.unwrap();
    let mut body = response.into_body();
    // Read one token chunk, then hang up.
    let frame = body.frame().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(frame.data_ref().unwrap()).starts_with("data: {"));
    drop(body);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let metrics =
            String::from_utf8(call(&app, "GET", "/metrics", None, None).await.body).unwrap();
        if metric(&metrics, "whale_requests_cancelled_total") == 1.0 {
            assert!(metric(&metrics, "whale_generation_tokens_total") < 8000.0);
            break;
        }
        assert!(Instant::now() < deadline, "never cancelled:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
