//! End-to-end tests of the `whale` binary: golden outputs through the CLI, and bad input
//! that must end in a one-line error and a non-zero exit, never a panic.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use safetensors::tensor::TensorView;

fn whale(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_whale"))
        .args(args)
        .output()
        .expect("run whale")
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/models")
        .join(name)
}

/// The first golden checkpoint stored as one `model.safetensors` file.
fn single_file_fixture() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(fixture(""))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("model.safetensors").is_file() && p.join("reference.json").is_file())
        .collect();
    dirs.sort();
    dirs.into_iter().next().expect("a single-file fixture")
}

fn reference(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap()
}

fn ids_arg(v: &serde_json::Value) -> String {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// A scratch copy of a fixture folder that a test may damage.
fn copy_fixture(src: &Path, tag: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix(tag).tempdir().unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
    }
    dir
}

/// Asserts a clean failure: non-zero exit, no panic, one line on stderr containing all `needles`.
fn assert_clean_error(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure, stderr: {stderr}");
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "one line expected: {stderr}"
    );
    for n in needles {
        assert!(stderr.contains(n), "{n:?} not in: {stderr}");
    }
}

#[test]
fn generate_json_reproduces_reference_greedy_tokens() {
    let dir = single_file_fixture();
    let r = reference(&dir);
    for mla in ["naive", "absorbed"] {
        let out = whale(&[
            "generate",
            "--model",
            dir.to_str().unwrap(),
            "--ids",
            &ids_arg(&r["greedy"]["prompt_ids"]),
            "--temperature",
            "0",
            "--json",
            "--mla",
            mla,
            "--max-tokens",
            &r["greedy"]["max_new_tokens"].to_string(),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).unwrap();
        let last: serde_json::Value =
            serde_json::from_str(stdout.trim_end().lines().last().unwrap()).unwrap();
        assert_eq!(last["generated_ids"], r["greedy"]["generated_ids"], "{mla}");
        assert_eq!(last["prompt_ids"], r["greedy"]["prompt_ids"]);
        assert!(last["text"].is_string());
    }
}

#[test]
fn logits_command_writes_the_reference_logits() {
    let dir = single_file_fixture();
    let r = reference(&dir);
    let tmp = tempfile::tempdir().unwrap();
    let out_path = tmp.path().join("logits.npy");
    let out = whale(&[
        "logits",
        "--model",
        dir.to_str().unwrap(),
        "--ids",
        &ids_arg(&r["prompt_ids"]),
        "--out",
        out_path.to_str().unwrap(),
        "--mla",
        "naive",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ours = std::fs::read(&out_path).unwrap();
    let theirs = std::fs::read(dir.join("logits.npy")).unwrap();
    let body = |b: &[u8]| {
        let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
        let header = String::from_utf8_lossy(&b[10..10 + hlen]).replace(' ', "");
        let values: Vec<f32> = b[10 + hlen..]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        (header, values)
    };
    let ((h1, a), (h2, b)) = (body(&ours), body(&theirs));
    assert_eq!(h1, h2, "same dtype and shape in the .npy header");
    let mean = b.iter().sum::<f32>() / b.len() as f32;
    let std = (b.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / b.len() as f32).sqrt();
    let diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max);
    assert!(diff <= 1e-3 * std, "{diff} vs std {std}");
}

#[test]
fn inspect_reports_deepseek_v3_latent_cache_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("config.json"),
        include_str!("data/deepseek_v3_config.json"),
    )
    .unwrap();
    let out = whale(&["inspect", "--model", tmp.path().to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("70,272 bytes/token"), "{text}");
    assert!(text.contains("98.59% saved"), "{text}");
}

#[test]
fn truncated_safetensors_is_reported_with_its_file() {
    let tmp = copy_fixture(&single_file_fixture(), "truncated");
    let f = tmp.path().join("model.safetensors");
    let len = std::fs::metadata(&f).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&f)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let out = whale(&[
        "logits",
        "--model",
        tmp.path().to_str().unwrap(),
        "--ids",
        "1,2",
        "--out",
        "/dev/null",
    ]);
    assert_clean_error(&out, &["model.safetensors"]);
}

#[test]
fn header_lying_about_offsets_is_rejected() {
    let tmp = copy_fixture(&single_file_fixture(), "lying");
    let f = tmp.path().join("model.safetensors");
    let mut bytes = std::fs::read(&f).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    // Point the first tensor's data past the end of the file, same header length.
    let (name, _) = header
        .as_object()
        .unwrap()
        .iter()
        .find(|(k, _)| *k != "__metadata__")
        .unwrap();
    let name = name.clone();
    header[&name]["data_offsets"][1] = serde_json::json!(u32::MAX);
    let mut text = serde_json::to_vec(&header).unwrap();
    assert!(text.len() <= n, "rewritten header must fit");
    text.resize(n, b' ');
    bytes[8..8 + n].copy_from_slice(&text);
    std::fs::write(&f, bytes).unwrap();
    let out = whale(&[
        "logits",
        "--model",
        tmp.path().to_str().unwrap(),
        "--ids",
        "1,2",
        "--out",
        "/dev/null",
    ]);
    assert_clean_error(&out, &["model.safetensors"]);
}

/// Rewrites the fixture's safetensors file through `edit(name, shape) -> Some(new shape) | None (drop)`.
fn rewrite_tensors(dir: &Path, edit: impl Fn(&str, &[usize]) -> Option<Vec<usize>>) {
    let f = dir.join("model.safetensors");
    let bytes = std::fs::read(&f).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut kept = Vec::new();
    for (name, view) in st.tensors() {
        if let Some(shape) = edit(&name, view.shape()) {
            kept.push((
                name.clone(),
                TensorView::new(view.dtype(), shape, view.data()).unwrap(),
            ));
        }
    }
    let out = safetensors::serialize(kept, None).unwrap();
    std::fs::write(&f, out).unwrap();
}

#[test]
fn missing_and_misshapen_tensors_are_all_reported_at_once() {
    let tmp = copy_fixture(&single_file_fixture(), "tensors");
    rewrite_tensors(tmp.path(), |name, shape| match name {
        "model.norm.weight" => None,
        "lm_head.weight" => Some(vec![shape[1], shape[0]]),
        _ => Some(shape.to_vec()),
    });
    let out = whale(&[
        "logits",
        "--model",
        tmp.path().to_str().unwrap(),
        "--ids",
        "1,2",
        "--out",
        "/dev/null",
    ]);
    assert_clean_error(
        &out,
        &[
            "missing tensor `model.norm.weight`",
            "tensor `lm_head.weight` has shape",
            "2 tensor problem",
        ],
    );
}

fn edit_config(dir: &Path, edit: impl Fn(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

#[test]
fn inconsistent_config_names_the_key() {
    let src = single_file_fixture();
    let tmp = copy_fixture(&src, "groups");
    edit_config(tmp.path(), |v| {
        let e = v["n_routed_experts"].as_u64().unwrap();
        v["n_group"] = serde_json::json!(e + 1);
    });
    let out = whale(&[
        "logits",
        "--model",
        tmp.path().to_str().unwrap(),
        "--ids",
        "1,2",
        "--out",
        "/dev/null",
    ]);
    assert_clean_error(&out, &["config.json", "`n_group`", "not divisible"]);

    let tmp = copy_fixture(&src, "topk");
    edit_config(tmp.path(), |v| {
        v["topk_method"] = serde_json::json!("random_pick")
    });
    let out = whale(&["inspect", "--model", tmp.path().to_str().unwrap()]);
    assert_clean_error(&out, &["config.json", "`topk_method`", "random_pick"]);
}

#[test]
fn bad_ids_and_overlong_prompts_are_input_errors() {
    let dir = single_file_fixture();
    let model = dir.to_str().unwrap();
    let out = whale(&[
        "generate",
        "--model",
        model,
        "--ids",
        "1,999999",
        "--temperature",
        "0",
    ]);
    assert_clean_error(&out, &["token id 999999", "vocab_size"]);
    let out = whale(&[
        "logits",
        "--model",
        model,
        "--ids",
        "1,2,x",
        "--out",
        "/dev/null",
    ]);
    assert_clean_error(&out, &["--ids", "\"x\""]);
    let out = whale(&[
        "generate",
        "--model",
        model,
        "--ids",
        "1,2,3,4,5,6",
        "--ctx",
        "4",
    ]);
    assert_clean_error(&out, &["longer than the context of 4"]);
    let out = whale(&[
        "logits",
        "--model",
        model,
        "--ids",
        "1,2,3,4,5,6",
        "--ctx",
        "4",
        "--out",
        "/dev/null",
    ]);
    assert_clean_error(&out, &["exceed the context of 4"]);
    let out = whale(&["generate", "--model", "/nonexistent/model", "--ids", "1"]);
    assert_clean_error(&out, &["/nonexistent/model/config.json"]);
}

/// DeepSeek-V3's real tokenizer, fetched by scripts/fetch_test_assets.sh (never committed).
fn deepseek_v3_tokenizer() -> PathBuf {
    let dir =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.test-assets/deepseek_v3_tokenizer");
    assert!(
        dir.join("tokenizer.json").is_file(),
        "{} missing: run scripts/fetch_test_assets.sh",
        dir.display()
    );
    dir
}

#[test]
fn tokenize_matches_transformers_on_the_deepseek_v3_tokenizer() {
    let tok = deepseek_v3_tokenizer();
    let fixture: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tokenizer/deepseek_v3.json"),
        )
        .unwrap(),
    )
    .unwrap();
    for case in fixture["texts"].as_array().unwrap() {
        let out = whale(&[
            "tokenize",
            "--model",
            tok.to_str().unwrap(),
            "--text",
            case["text"].as_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(got["ids"], case["ids"], "text {:?}", case["text"]);
    }
    let tmp = tempfile::tempdir().unwrap();
    for chat in fixture["chats"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["add_generation_prompt"] == true)
    {
        let path = tmp.path().join("messages.json");
        std::fs::write(&path, chat["messages"].to_string()).unwrap();
        let out = whale(&[
            "tokenize",
            "--model",
            tok.to_str().unwrap(),
            "--messages",
            path.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(got["text"], chat["rendered"], "chat {}", chat["name"]);
        assert_eq!(got["ids"], chat["ids"], "chat {}", chat["name"]);
    }
}

#[test]
fn tokenize_rejects_a_malformed_messages_file() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("messages.json");
    std::fs::write(&path, r#"[{"role": "user"}]"#).unwrap();
    let tok = deepseek_v3_tokenizer();
    let out = whale(&[
        "tokenize",
        "--model",
        tok.to_str().unwrap(),
        "--messages",
        path.to_str().unwrap(),
    ]);
    assert_clean_error(&out, &["messages.json"]);
}
