//! The prefix cache on disk (`--cache-dir`): blocks written by one server are found by
//! the next; corrupt or foreign files are ignored (counted, never trusted) and rewritten.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use serde_json::json;
use whale_server::disk_cache::model_fingerprint;
use whale_server::prefix_cache::chain_keys;
use whale_server::ServeOptions;

fn opts(cache_dir: &Path) -> ServeOptions {
    ServeOptions {
        ctx: Some(1024),
        cache_dir: Some(cache_dir.to_path_buf()),
        ..Default::default()
    }
}

/// Runs one greedy request on a fresh server; returns (cached tokens, token ids, metrics).
async fn run_once(model_dir: &Path, cache_dir: &Path, prompt: &[u32]) -> (u64, Vec<u64>, String) {
    let server = start(model_dir, opts(cache_dir));
    let app = server.app();
    let body = json!({"prompt": prompt, "max_tokens": 4, "temperature": 0});
    let v = call(&app, "POST", "/v1/completions", Some(&body), None)
        .await
        .json();
    let metrics = String::from_utf8(call(&app, "GET", "/metrics", None, None).await.body).unwrap();
    let ids = v["choices"][0]["token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    // Dropping the server stops the engine and waits for the disk writes.
    drop(server);
    (
        v["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap(),
        ids,
        metrics,
    )
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("{name} not in:\n{text}"))
}

fn block_files(model_dir: &Path, cache_dir: &Path, prompt: &[u32]) -> Vec<PathBuf> {
    let fp = model_fingerprint(model_dir).unwrap();
    chain_keys(prompt)
        .iter()
        .map(|k| {
            cache_dir
                .join(format!("{fp:016x}"))
                .join(format!("{k:016x}.wkv"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn blocks_survive_a_restart_and_bad_files_are_ignored() {
    let model = tiny_model(false);
    let cache = tempfile::tempdir().unwrap();
    let p = prompt(200, 11);
    let files = block_files(model.path(), cache.path(), &p);
    assert_eq!(files.len(), 3);

    let (cached, cold_ids, _) = run_once(model.path(), cache.path(), &p).await;
    assert_eq!(cached, 0);
    assert!(
        files.iter().all(|f| f.is_file()),
        "blocks not written: {files:?}"
    );

    // A restarted server finds all three blocks on disk.
    let (cached, ids, metrics) = run_once(model.path(), cache.path(), &p).await;
    assert_eq!(cached, 192);
    assert_eq!(ids, cold_ids);
    assert_eq!(metric(&metrics, "whale_prefix_cache_disk_loads_total"), 3.0);

    // A flipped payload byte in block 2: block 1 is used, block 2 is ignored and rewritten.
    let mut bytes = std::fs::read(&files[1]).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&files[1], &bytes).unwrap();
    let (cached, ids, metrics) = run_once(model.path(), cache.path(), &p).await;
    assert_eq!(cached, 64);
    assert_eq!(ids, cold_ids);
    assert_eq!(
        metric(&metrics, "whale_prefix_cache_disk_rejected_total"),
        1.0
    );
    let (cached, _, _) = run_once(model.path(), cache.path(), &p).await;
    assert_eq!(cached, 192, "the corrupt block was not rewritten");

    // A file claiming another model (fingerprint field changed) or truncated: not trusted.
    let mut bytes = std::fs::read(&files[0]).unwrap();
    bytes[16] ^= 1;
    std::fs::write(&files[0], &bytes).unwrap();
    let (cached, ids, metrics) = run_once(model.path(), cache.path(), &p).await;
    assert_eq!((cached, &ids), (0, &cold_ids));
    assert_eq!(
        metric(&metrics, "whale_prefix_cache_disk_rejected_total"),
        1.0
    );
    std::fs::write(&files[0], b"WHALEKV\0short").unwrap();
    let (cached, _, _) = run_once(model.path(), cache.path(), &p).await;
    assert_eq!(cached, 0);
    let (cached, _, _) = run_once(model.path(), cache.path(), &p).await;
    assert_eq!(cached, 192);

    // Another model (a changed config) gets its own folder and no hits.
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.path().join("config.json")).unwrap())
            .unwrap();
    config["rms_norm_eps"] = json!(1e-5);
    std::fs::write(model.path().join("config.json"), config.to_string()).unwrap();
    let (cached, _, _) = run_once(model.path(), cache.path(), &p).await;
    assert_eq!(cached, 0);
    assert_eq!(std::fs::read_dir(cache.path()).unwrap().count(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_budget_evicts_least_recently_used_blocks() {
    let model = tiny_model(false);
    let m = load(model.path());
    // Room for exactly three blocks.
    let block_bytes = 64 * m.config.latent_dim() * m.config.num_hidden_layers * 4 + 64 * 4;
    drop(m);
    let server = start(
        model.path(),
        ServeOptions {
            ctx: Some(1024),
            cache_mem: 3 * block_bytes,
            ..Default::default()
        },
    );
    let app = server.app();
    let cached = |v: serde_json::Value| {
        v["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap()
    };
    let (a, b) = (prompt(130, 1), prompt(130, 2)); // two blocks each
    let body = |p: &Vec<u32>| json!({"prompt": p, "max_tokens": 1, "temperature": 0});
    call(&app, "POST", "/v1/completions", Some(&body(&a)), None).await;
    assert_eq!(
        cached(
            call(&app, "POST", "/v1/completions", Some(&body(&a)), None)
                .await
                .json()
        ),
        128
    );
    // b's two blocks push out a's oldest-used one: a's second block (children go first, so
    // a's first block, the parent, survives and still gives a partial hit).
    call(&app, "POST", "/v1/completions", Some(&body(&b)), None).await;
    assert_eq!(
        cached(
            call(&app, "POST", "/v1/completions", Some(&body(&b)), None)
                .await
                .json()
        ),
        128
    );
    assert_eq!(
        cached(
            call(&app, "POST", "/v1/completions", Some(&body(&a)), None)
                .await
                .json()
        ),
        64
    );
    let metrics = String::from_utf8(call(&app, "GET", "/metrics", None, None).await.body).unwrap();
    assert!(metric(&metrics, "whale_prefix_cache_bytes") <= (3 * block_bytes) as f64);
}
