//! Serving a GGUF file: the tokenizer and chat template come from the file's metadata, the
//! model id from its name, and completions equal the model run directly.

mod common;

use std::path::{Path, PathBuf};

use axum::http::StatusCode;
use common::*;
use serde_json::json;
use whale_gguf::{GgufFile, GgufWriter};
use whale_server::disk_cache::model_fingerprint;
use whale_server::{ServeOptions, Server};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/gguf")
        .join(name)
}

/// The v2_greedy_f32 GGUF (vocab 256) with whale-tiny's tokenizer metadata added: ids of
/// special tokens and single ASCII characters fall inside the model's vocabulary.
fn model_with_tokenizer(dir: &Path) -> PathBuf {
    let mut w =
        GgufWriter::from_file(&GgufFile::open(&fixture("v2_greedy_f32-kvb-f32.gguf")).unwrap());
    let vocab = GgufFile::open(&fixture("whale-tiny-vocab.gguf")).unwrap();
    for (k, v) in vocab.metadata() {
        if k.starts_with("tokenizer.") {
            w.set(k, v.clone());
        }
    }
    let path = dir.join("tiny-chat.gguf");
    w.write(&path).unwrap();
    path
}

fn opts() -> ServeOptions {
    ServeOptions {
        ctx: Some(64),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn chat_on_a_gguf_file_uses_its_tokenizer_and_template() {
    let tmp = tempfile::tempdir().unwrap();
    let path = model_with_tokenizer(tmp.path());
    let server = Server::start(load(&path), &path, &opts()).unwrap();
    let app = server.app();
    let r = call(&app, "GET", "/v1/models", None, None).await;
    assert_eq!(r.json()["data"][0]["id"], "tiny-chat");
    let body =
        json!({"messages": [{"role": "user", "content": "a"}], "max_tokens": 4, "temperature": 0});
    let r = call(&app, "POST", "/v1/chat/completions", Some(&body), None).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    // BOS, <｜User｜>, "a", <｜Assistant｜> from whale-tiny's template.
    assert_eq!(r.json()["usage"]["prompt_tokens"], 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn token_id_completion_on_a_gguf_file_matches_the_model() {
    let path = fixture("v2_greedy_f32-split-f32.gguf");
    let model = load(&path);
    let p = prompt(12, 3);
    let want = greedy_reference(&model, &p, 6);
    let server = Server::start(model, &path, &opts()).unwrap();
    let app = server.app();
    let body = json!({"prompt": p, "max_tokens": 6, "temperature": 0});
    let r = call(&app, "POST", "/v1/completions", Some(&body), None).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let got: Vec<u32> = r.json()["choices"][0]["token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(got, want);
}

#[test]
fn gguf_fingerprint_follows_the_file() {
    let a = model_fingerprint(&fixture("v2_greedy_f32-kvb-f32.gguf")).unwrap();
    assert_eq!(
        a,
        model_fingerprint(&fixture("v2_greedy_f32-kvb-f32.gguf")).unwrap()
    );
    assert_ne!(
        a,
        model_fingerprint(&fixture("v2_greedy_f32-split-f32.gguf")).unwrap()
    );
    assert_ne!(
        a,
        model_fingerprint(&fixture("v2_greedy_f32-kvb-q8_0.gguf")).unwrap()
    );
}
