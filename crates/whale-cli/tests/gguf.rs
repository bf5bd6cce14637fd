//! The `whale` binary on GGUF files (`fixtures/gguf`, made by scripts/make_gguf_fixtures.py):
//! the same logits and tokens as the safetensors checkpoints they were converted from, GGUF
//! details in `inspect`, the tokenizer from the file, and one-line errors for broken files.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use whale_gguf::{GgufFile, GgufWriter, Value};

fn whale(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_whale"))
        .args(args)
        .output()
        .expect("run whale")
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn gguf(name: &str) -> String {
    root()
        .join("fixtures/gguf")
        .join(name)
        .display()
        .to_string()
}

fn golden(name: &str) -> String {
    root()
        .join("fixtures/models")
        .join(name)
        .display()
        .to_string()
}

fn reference(dir: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(Path::new(dir).join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn ids_arg(v: &serde_json::Value) -> String {
    let ids: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.to_string())
        .collect();
    ids.join(",")
}

fn ok(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "whale failed: {stderr}");
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// Float32 values of a `.npy` file written by `whale logits`.
fn npy(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    bytes[10 + hlen..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn logits(model: &str, ids: &str, extra: &[&str], dir: &Path) -> Vec<f32> {
    let name = Path::new(model).file_name().unwrap().to_string_lossy();
    let out = dir.join(format!("{name}{}.npy", extra.join("_")));
    let mut args = vec![
        "logits",
        "--model",
        model,
        "--ids",
        ids,
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    ok(&whale(&args));
    npy(&out)
}

#[test]
fn logits_from_gguf_equal_logits_from_safetensors() {
    let tmp = tempfile::tempdir().unwrap();
    for (file, dir, quant) in [
        ("v2_greedy_f32-kvb-f32.gguf", "v2_greedy_f32", None),
        (
            "v2_grouped_bf16-split-bf16.gguf",
            "v2_grouped_bf16_sharded",
            None,
        ),
        ("v2_greedy_f32-kvb-q8_0.gguf", "v2_greedy_f32", Some("q8_0")),
    ] {
        let dir = golden(dir);
        let ids = ids_arg(&reference(&dir)["prompt_ids"]);
        let quant_args: Vec<&str> = quant.map_or(vec![], |q| vec!["--quant", q]);
        let from_gguf = logits(&gguf(file), &ids, &[], tmp.path());
        let from_st = logits(&dir, &ids, &quant_args, tmp.path());
        assert_eq!(from_gguf.len(), from_st.len());
        let diff = from_gguf
            .iter()
            .zip(&from_st)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(diff < 1e-4, "{file}: max |Δlogit| {diff}");
    }
}

#[test]
fn generate_on_gguf_reproduces_reference_greedy_tokens() {
    let dir = golden("v2_greedy_f32");
    let r = reference(&dir);
    for mla in ["naive", "absorbed"] {
        let out = ok(&whale(&[
            "generate",
            "--model",
            &gguf("v2_greedy_f32-split-f32.gguf"),
            "--mla",
            mla,
            "--ids",
            &ids_arg(&r["greedy"]["prompt_ids"]),
            "--max-tokens",
            &r["greedy"]["max_new_tokens"].to_string(),
            "--temperature",
            "0",
            "--json",
        ]));
        let summary: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
        assert_eq!(
            summary["generated_ids"], r["greedy"]["generated_ids"],
            "{mla}"
        );
    }
}

#[test]
fn inspect_describes_the_gguf_file() {
    let out = ok(&whale(&[
        "inspect",
        "--model",
        &gguf("v3_noaux_bf16-split-bf16.gguf"),
        "--json",
    ]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let from_config = ok(&whale(&[
        "inspect",
        "--model",
        &golden("v3_noaux_bf16"),
        "--json",
    ]));
    let c: serde_json::Value = serde_json::from_str(&from_config).unwrap();
    assert_eq!(v["total_params"], c["total_params"]);
    assert_eq!(v["active_params"], c["active_params"]);
    assert_eq!(v["gguf"]["version"], 3);
    assert_eq!(v["gguf"]["tensors"], 52);
    assert_eq!(v["gguf"]["types"]["BF16"]["tensors"], 35);
    assert!(v["gguf"]["kv_b"].as_str().unwrap().starts_with("split"));
    let text = ok(&whale(&[
        "inspect",
        "--model",
        &gguf("whale-tiny-vocab.gguf"),
    ]));
    assert!(
        text.contains("tokenizer     gpt2, pre-tokenizer gpt-2, 8000 tokens, chat template"),
        "{text}"
    );
}

#[test]
fn tokenize_reads_the_tokenizer_in_the_file() {
    let folder = root().join("models/whale-tiny").display().to_string();
    for args in [
        vec!["--text", "Hello, world! Ça va? 你好"],
        vec!["--text", "<｜User｜>hi<｜Assistant｜>"],
    ] {
        let mut a = vec!["tokenize", "--model"];
        let file = gguf("whale-tiny-vocab.gguf");
        a.push(&file);
        a.extend(&args);
        let mut b = vec!["tokenize", "--model", &folder];
        b.extend(&args);
        assert_eq!(ok(&whale(&a)), ok(&whale(&b)), "{args:?}");
    }
}

/// Asserts a clean failure: exit 1, no panic, one line on stderr containing all `needles`.
fn assert_clean_error(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
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

/// A damaged copy of a fixture.
fn broken(tmp: &Path, name: &str, edit: impl FnOnce(&mut GgufWriter)) -> String {
    let mut w = GgufWriter::from_file(
        &GgufFile::open(Path::new(&gguf("v3_noaux_bf16-split-bf16.gguf"))).unwrap(),
    );
    edit(&mut w);
    let path = tmp.join(name);
    w.write(&path).unwrap();
    path.display().to_string()
}

#[test]
fn broken_gguf_files_fail_with_one_line_naming_file_and_key_or_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |model: &str| {
        whale(&[
            "logits",
            "--model",
            model,
            "--ids",
            "1,2,3",
            "--out",
            "/dev/null",
        ])
    };

    let bytes = std::fs::read(gguf("v3_noaux_bf16-split-bf16.gguf")).unwrap();
    let truncated = tmp.path().join("truncated.gguf");
    std::fs::write(&truncated, &bytes[..bytes.len() - 1000]).unwrap();
    assert_clean_error(
        &run(truncated.to_str().unwrap()),
        &["truncated.gguf", "truncated", "blk."],
    );
    let header_only = tmp.path().join("header.gguf");
    std::fs::write(&header_only, &bytes[..300]).unwrap();
    assert_clean_error(
        &run(header_only.to_str().unwrap()),
        &[
            "header.gguf",
            "truncated",
            "metadata entry 6 of 36, after `deepseek2.embedding_length`",
        ],
    );

    let p = broken(tmp.path(), "arch.gguf", |w| {
        w.set("general.architecture", Value::String("llama".into()));
    });
    assert_clean_error(
        &run(&p),
        &["arch.gguf", "`general.architecture`", "\"llama\""],
    );

    let p = broken(tmp.path(), "key.gguf", |w| {
        w.remove("deepseek2.embedding_length");
    });
    assert_clean_error(
        &run(&p),
        &["key.gguf", "`deepseek2.embedding_length`: missing"],
    );

    let p = broken(tmp.path(), "shape.gguf", |w| {
        let t = w
            .tensors
            .iter_mut()
            .find(|t| t.0 == "blk.1.ffn_down_exps.weight")
            .unwrap();
        t.1 = vec![32, 48, 32]; // same bytes, 32 experts of 48 rows
    });
    assert_clean_error(
        &run(&p),
        &[
            "shape.gguf",
            "`blk.1.ffn_down_exps.weight` has dims [32, 48, 32], expected [32, 96, 16]",
        ],
    );

    let mut magic = bytes.clone();
    magic[..4].copy_from_slice(b"GGML");
    let p = tmp.path().join("magic.gguf");
    std::fs::write(&p, &magic).unwrap();
    assert_clean_error(
        &run(p.to_str().unwrap()),
        &["magic.gguf", "not a GGUF file"],
    );

    let missing = tmp.path().join("nowhere.gguf");
    assert_clean_error(
        &run(missing.to_str().unwrap()),
        &["nowhere.gguf", "No such file"],
    );

    // A GGUF without tokenizer metadata: text prompts need one.
    let out = whale(&[
        "generate",
        "--model",
        &gguf("v2_greedy_f32-kvb-f32.gguf"),
        "--prompt",
        "hi",
    ]);
    assert_clean_error(
        &out,
        &["v2_greedy_f32-kvb-f32.gguf", "no tokenizer", "--ids"],
    );
    let out = whale(&[
        "tokenize",
        "--model",
        &gguf("v2_greedy_f32-kvb-f32.gguf"),
        "--text",
        "hi",
    ]);
    assert_clean_error(&out, &["v2_greedy_f32-kvb-f32.gguf", "needs a tokenizer"]);
}
