//! The bundled model (models/whale-tiny) against transformers' float32 outputs on it
//! (fixtures/bundled, made by scripts/model/make_bundled_fixture.py), driven through the CLI
//! without `--model`, as the README's first command runs it.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn reference() -> serde_json::Value {
    let r: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("fixtures/bundled/reference.json")).unwrap(),
    )
    .unwrap();
    // A fixture made from other weights would compare against the wrong model.
    let weights = std::fs::read(root().join("models/whale-tiny/model.safetensors")).unwrap();
    let sha = format!("{:x}", Sha256::digest(&weights));
    assert_eq!(
        r["model_sha256"], sha,
        "fixtures/bundled is stale: rerun scripts/model/make_bundled_fixture.py"
    );
    r
}

fn whale(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_whale"))
        .args(args)
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    serde_json::from_str(stdout.trim_end().lines().last().unwrap()).unwrap()
}

fn read_npy(path: &Path) -> Vec<f32> {
    let b = std::fs::read(path).unwrap();
    let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
    b[10 + hlen..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

#[test]
fn bundled_logits_match_transformers_in_both_mla_forms() {
    let r = reference();
    let ids: Vec<String> = r["prompt_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.to_string())
        .collect();
    let want = read_npy(&root().join("fixtures/bundled/logits.npy"));
    let mean = want.iter().sum::<f32>() / want.len() as f32;
    let std = (want.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / want.len() as f32).sqrt();
    let tmp = tempfile::tempdir().unwrap();
    for mla in ["naive", "absorbed"] {
        let out = tmp.path().join(format!("{mla}.npy"));
        let status = Command::new(env!("CARGO_BIN_EXE_whale"))
            .args([
                "logits",
                "--ids",
                &ids.join(","),
                "--mla",
                mla,
                "--out",
                out.to_str().unwrap(),
            ])
            .current_dir(root())
            .status()
            .unwrap();
        assert!(status.success());
        let got = read_npy(&out);
        let diff = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        // The same bound as the other golden tests: 1e-3 of the logits' standard deviation.
        assert!(diff <= 1e-3 * std, "{mla}: {diff} > 1e-3 × {std}");
    }
}

#[test]
fn readme_style_generate_reproduces_transformers_greedy_text() {
    let r = reference();
    let out = whale(&[
        "generate",
        "--prompt",
        r["prompt"].as_str().unwrap(),
        "--temperature",
        "0",
        "--json",
        "--max-tokens",
        &r["greedy"]["max_new_tokens"].to_string(),
    ]);
    assert_eq!(out["prompt_ids"], r["greedy"]["prompt_ids"]);
    assert_eq!(out["generated_ids"], r["greedy"]["generated_ids"]);
    assert!(!out["text"].as_str().unwrap().is_empty());
}

#[test]
fn perplexity_matches_transformers_on_the_same_windows() {
    let r = reference();
    let p = &r["perplexity"];
    let file = root()
        .join("fixtures/bundled")
        .join(p["file"].as_str().unwrap());
    let out = whale(&[
        "perplexity",
        "--file",
        file.to_str().unwrap(),
        "--ctx",
        &p["ctx"].to_string(),
        "--json",
    ]);
    assert_eq!(out["windows"], p["windows"]);
    assert_eq!(out["predictions"], p["predictions"]);
    let (ours, theirs) = (
        out["perplexity"].as_f64().unwrap(),
        p["perplexity"].as_f64().unwrap(),
    );
    // The bound for the shipped model's perplexity: within 0.5% of transformers.
    assert!((ours / theirs - 1.0).abs() < 0.005, "{ours} vs {theirs}");
}

#[test]
fn chat_answers_each_turn_and_quits_on_an_empty_line() {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_whale"))
        .args([
            "chat",
            "--temperature",
            "0",
            "--max-tokens",
            "8",
            "--system",
            "Be brief.",
        ])
        .current_dir(root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"Good morning.\nAnd how are you?\n\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // One reply line per user turn, each with some text.
    let stdout = String::from_utf8(out.stdout).unwrap();
    let replies: Vec<&str> = stdout
        .split('\n')
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert!(!replies.is_empty(), "no reply in {stdout:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).matches("> ").count(),
        3,
        "two turns, then the quitting prompt"
    );
}
