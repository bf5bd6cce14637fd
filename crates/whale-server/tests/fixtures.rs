//! The server on every golden fixture checkpoint (fixtures/models/*): greedy token ids that
//! went through the batching scheduler, streamed or not, equal transformers' greedy
//! continuation stored in the fixture's reference.json.

mod common;

use std::path::{Path, PathBuf};

use axum::http::StatusCode;
use common::*;
use serde_json::{json, Value};
use whale_server::ServeOptions;

fn fixtures() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("reference.json").is_file())
        .collect();
    dirs.sort();
    dirs
}

fn ids(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn greedy_ids_match_the_reference_on_every_fixture() {
    let dirs = fixtures();
    assert!(!dirs.is_empty(), "no fixtures");
    for dir in dirs {
        let r: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
                .unwrap();
        let greedy = &r["greedy"];
        let want = ids(&greedy["generated_ids"]);
        let n = greedy["max_new_tokens"].as_u64().unwrap();
        let server = start(&dir, ServeOptions::default());
        let app = server.app();
        let vocab = load(&dir).config.vocab_size as u32;
        let reference = json!({"prompt": greedy["prompt_ids"], "max_tokens": n, "temperature": 0});
        let mut streamed = reference.clone();
        streamed["stream"] = json!(true);
        // Two unrelated prompts run in the same batches.
        let others: Vec<Value> = [30, 50]
            .iter()
            .map(|&len| {
                let p: Vec<u32> = prompt(len, len as u32).iter().map(|&t| t % vocab).collect();
                json!({"prompt": p, "max_tokens": n, "temperature": 0})
            })
            .collect();
        let mut tasks = Vec::new();
        for body in [reference, streamed].into_iter().chain(others) {
            let app = app.clone();
            tasks.push(tokio::spawn(async move {
                call(&app, "POST", "/v1/completions", Some(&body), None).await
            }));
        }
        let mut replies = Vec::new();
        for t in tasks {
            let reply = t.await.unwrap();
            assert_eq!(
                reply.status,
                StatusCode::OK,
                "{}: {}",
                dir.display(),
                String::from_utf8_lossy(&reply.body)
            );
            replies.push(reply);
        }
        assert_eq!(
            ids(&replies[0].json()["choices"][0]["token_ids"]),
            want,
            "{}",
            dir.display()
        );
        let events = replies[1].sse_data();
        let got: Vec<u64> = events[..events.len() - 1]
            .iter()
            .map(|e| serde_json::from_str::<Value>(e).unwrap())
            .filter(|c| c["choices"][0]["token_ids"].is_array())
            .flat_map(|c| ids(&c["choices"][0]["token_ids"]))
            .collect();
        assert_eq!(got, want, "{} (streamed)", dir.display());
    }
}
