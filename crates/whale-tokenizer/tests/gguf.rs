//! Tokenizers from GGUF metadata against the `tokenizer.json` they were converted from.
//!
//! * whale-tiny: `fixtures/gguf/whale-tiny-vocab.gguf` (scripts/make_gguf_fixtures.py, which
//!   follows llama.cpp's converter with gguf-py's own `SpecialVocab`).
//! * DeepSeek-V3 (pre-tokenizer "deepseek-v3") and the V2-era DeepSeek LLM tokenizer
//!   ("deepseek-llm"): DeepSeek-licensed, so never committed. scripts/fetch_test_assets.sh puts
//!   their `tokenizer.json` in .test-assets/, and [`convert`] writes the GGUF metadata
//!   `convert_hf_to_gguf.py` would write for them (its `get_vocab_base` and gguf-py's
//!   `SpecialVocab`). Without the files these tests fail rather than skip.

use std::path::{Path, PathBuf};

use serde_json::Value as Json;
use whale_gguf::{GgufFile, GgufWriter, Value, ValueType};
use whale_tokenizer::{ChatMessage, Tokenizer, TokenizerError};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The texts of the DeepSeek-V3 golden fixture (multilingual, emoji, code, digits, whitespace,
/// special-token text) and llama.cpp's pre-tokenizer check string.
fn texts() -> Vec<String> {
    let path = root().join("fixtures/tokenizer/deepseek_v3.json");
    let fx: Json = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut texts: Vec<String> = fx["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["text"].as_str().unwrap().to_string())
        .collect();
    texts.push("\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u{200d}🌫️ (multiple emojis concatenated) ✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL".into());
    texts.push(
        "<｜User｜>What is 2+2?<｜Assistant｜><think>\n4\n</think>4<｜end▁of▁sentence｜>".into(),
    );
    texts
}

fn chats() -> Vec<(Vec<ChatMessage>, bool)> {
    vec![
        (vec![ChatMessage::new("user", "Hello! 你好")], true),
        (
            vec![
                ChatMessage::new("system", "Be brief."),
                ChatMessage::new("user", "2+2?"),
                ChatMessage::new("assistant", "4"),
                ChatMessage::new("user", "and 3+3?"),
            ],
            true,
        ),
        (
            vec![
                ChatMessage::new("user", "hi"),
                ChatMessage::new("assistant", "hey"),
            ],
            false,
        ),
    ]
}

/// Everything a GGUF tokenizer must share with its `tokenizer.json`. `non_special_controls`:
/// tokens the JSON calls non-special that the converter made CONTROL (they look special), so
/// `skip_special_tokens` treats them differently.
fn assert_same(json: &Tokenizer, gguf: &Tokenizer, non_special_controls: &[u32]) {
    assert_eq!(json.vocab_size(), gguf.vocab_size());
    assert_eq!(json.bos_token_id(), gguf.bos_token_id());
    assert_eq!(json.eos_token_id(), gguf.eos_token_id());
    let mut failures = Vec::new();
    for text in texts() {
        let (a, b) = (
            json.encode(&text, false).unwrap(),
            gguf.encode(&text, false).unwrap(),
        );
        if a != b {
            failures.push(format!("encode({text:?}): json {a:?}, gguf {b:?}"));
        }
        for skip in [false, true] {
            let (da, db) = (
                json.decode(&a, skip).unwrap(),
                gguf.decode(&a, skip).unwrap(),
            );
            if da != db && !a.iter().any(|id| non_special_controls.contains(id)) {
                failures.push(format!("decode({a:?}, {skip}): json {da:?}, gguf {db:?}"));
            }
        }
    }
    // Every id decodes alike, alone and (catching byte-level joins) in runs of three.
    let n = json.vocab_size() as u64;
    for id in 0..n {
        let ids = [id, (id * 7919) % n, (id * 104729 + 13) % n].map(|i| i as u32);
        for ids in [&ids[..1], &ids[..]] {
            let (a, b) = (
                json.decode(ids, false).unwrap(),
                gguf.decode(ids, false).unwrap(),
            );
            if a != b {
                failures.push(format!("decode({ids:?}): json {a:?}, gguf {b:?}"));
            }
        }
        if failures.len() > 20 {
            break;
        }
    }
    for (messages, add_generation_prompt) in chats() {
        let a = json
            .apply_chat_template(&messages, add_generation_prompt)
            .unwrap();
        let b = gguf
            .apply_chat_template(&messages, add_generation_prompt)
            .unwrap();
        if a != b {
            failures.push(format!("chat template: json {a:?}, gguf {b:?}"));
        }
        let (ia, ib) = (
            json.encode_chat(&messages, add_generation_prompt).unwrap(),
            gguf.encode_chat(&messages, add_generation_prompt).unwrap(),
        );
        if ia != ib {
            failures.push(format!("encode_chat: json {ia:?}, gguf {ib:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn whale_tiny_gguf_tokenizer_equals_tokenizer_json() {
    let json = Tokenizer::from_dir(&root().join("models/whale-tiny")).unwrap();
    let gguf =
        Tokenizer::from_gguf_path(&root().join("fixtures/gguf/whale-tiny-vocab.gguf")).unwrap();
    assert_same(&json, &gguf, &[]);
    // whale-tiny's post-processor and the file's add_bos_token agree: BOS first.
    for text in texts() {
        assert_eq!(
            json.encode(&text, true).unwrap(),
            gguf.encode(&text, true).unwrap(),
            "{text:?}"
        );
    }
}

/// What `convert_hf_to_gguf.py --vocab-only` writes for a Hugging Face tokenizer folder
/// (`get_vocab_base` + `SpecialVocab`), for a model whose embedding has `vocab_size` rows.
fn convert(dir: &Path, vocab_size: usize, pre: &str) -> GgufWriter {
    let read = |name: &str| -> Json {
        let path = dir.join(name);
        assert!(
            path.is_file(),
            "{} missing: run scripts/fetch_test_assets.sh",
            path.display()
        );
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    };
    let (tok, cfg) = (read("tokenizer.json"), read("tokenizer_config.json"));
    let mut names: Vec<Option<String>> = vec![None; vocab_size];
    for (token, id) in tok["model"]["vocab"].as_object().unwrap() {
        names[id.as_u64().unwrap() as usize] = Some(token.clone());
    }
    let mut types = vec![1i32; vocab_size]; // NORMAL
    let looks_special = |t: &str| {
        (t.starts_with("<|") && t.ends_with("|>")) || (t.starts_with("<｜") && t.ends_with("｜>"))
    };
    for added in tok["added_tokens"].as_array().unwrap() {
        let id = added["id"].as_u64().unwrap() as usize;
        let content = added["content"].as_str().unwrap();
        names[id] = Some(content.to_string());
        let special = added["special"].as_bool().unwrap() || looks_special(content);
        types[id] = if special { 3 } else { 4 }; // CONTROL, USER_DEFINED
    }
    let tokens: Vec<Value> = names
        .iter()
        .enumerate()
        .map(|(i, t)| match t {
            Some(t) => Value::String(t.clone()),
            None => {
                types[i] = 5; // UNUSED
                Value::String(format!("[PAD{i}]"))
            }
        })
        .collect();
    let merges: Vec<Value> = tok["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| match m {
            Json::String(s) => Value::String(s.clone()),
            Json::Array(pair) => Value::String(format!(
                "{} {}",
                pair[0].as_str().unwrap(),
                pair[1].as_str().unwrap()
            )),
            other => panic!("merge {other}"),
        })
        .collect();
    let id_of = |field: &str| -> Option<u32> {
        let content = match &cfg[field] {
            Json::String(s) => s.clone(),
            Json::Object(o) => o["content"].as_str()?.to_string(),
            _ => return None,
        };
        names
            .iter()
            .position(|t| t.as_deref() == Some(&content))
            .map(|i| i as u32)
    };
    let mut w = GgufWriter::new();
    w.set("general.architecture", Value::String("deepseek2".into()))
        .set("tokenizer.ggml.model", Value::String("gpt2".into()))
        .set("tokenizer.ggml.pre", Value::String(pre.into()))
        .set(
            "tokenizer.ggml.tokens",
            Value::Array(ValueType::String, tokens),
        )
        .set(
            "tokenizer.ggml.token_type",
            Value::Array(ValueType::I32, types.into_iter().map(Value::I32).collect()),
        )
        .set(
            "tokenizer.ggml.merges",
            Value::Array(ValueType::String, merges),
        );
    for (field, key) in [
        ("bos_token", "tokenizer.ggml.bos_token_id"),
        ("eos_token", "tokenizer.ggml.eos_token_id"),
        ("pad_token", "tokenizer.ggml.padding_token_id"),
    ] {
        if let Some(id) = id_of(field) {
            w.set(key, Value::U32(id));
        }
    }
    // gguf-py's SpecialVocab: a ByteLevel post-processor adds nothing, and it wins over
    // tokenizer_config.json's add_bos_token/add_eos_token.
    let byte_level = tok["post_processor"]["type"] == "ByteLevel";
    for (field, key) in [
        ("add_bos_token", "tokenizer.ggml.add_bos_token"),
        ("add_eos_token", "tokenizer.ggml.add_eos_token"),
    ] {
        if let Some(b) = cfg[field].as_bool() {
            w.set(key, Value::Bool(b && !byte_level));
        }
    }
    if let Some(t) = cfg["chat_template"].as_str() {
        w.set("tokenizer.chat_template", Value::String(t.into()));
    }
    w
}

fn write(w: &GgufWriter) -> (tempfile::TempDir, Tokenizer) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vocab.gguf");
    w.write(&path).unwrap();
    let tok = Tokenizer::from_gguf(&GgufFile::open(&path).unwrap()).unwrap();
    (dir, tok)
}

#[test]
fn deepseek_v3_gguf_tokenizer_equals_tokenizer_json() {
    let dir = root().join(".test-assets/deepseek_v3_tokenizer");
    let (_tmp, gguf) = write(&convert(&dir, 129280, "deepseek-v3"));
    let json = Tokenizer::from_dir(&dir).unwrap();
    // The added tokens tokenizer.json calls non-special that the converter makes CONTROL.
    let tok: Json =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer.json")).unwrap())
            .unwrap();
    let controls: Vec<u32> = tok["added_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| !a["special"].as_bool().unwrap())
        .map(|a| a["id"].as_u64().unwrap() as u32)
        .collect();
    assert_eq!(
        controls.len(),
        14,
        "<｜User｜>, <｜Assistant｜>, tool and FIM tokens"
    );
    assert_same(&json, &gguf, &controls);
    // Today's converter writes add_bos_token = false (the ByteLevel post-processor), so plain
    // text encodes as from tokenizer.json; older converters copied tokenizer_config.json's
    // true, and llama.cpp then prepends BOS, as whale does.
    let mut old = convert(&dir, 129280, "deepseek-v3");
    old.set("tokenizer.ggml.add_bos_token", Value::Bool(true));
    let (_tmp2, old) = write(&old);
    for text in texts() {
        let plain = json.encode(&text, true).unwrap();
        assert_eq!(gguf.encode(&text, true).unwrap(), plain, "{text:?}");
        let mut want = vec![0];
        want.extend(plain);
        assert_eq!(old.encode(&text, true).unwrap(), want, "{text:?}");
    }
    assert_eq!(gguf.decode(&controls[..2], true).unwrap(), "");
    assert_eq!(
        gguf.decode(&[128815, 129279], false).unwrap(),
        "",
        "[PAD] placeholders"
    );
}

#[test]
fn deepseek_llm_gguf_tokenizer_equals_tokenizer_json() {
    let dir = root().join(".test-assets/deepseek_llm_tokenizer");
    let (_tmp, gguf) = write(&convert(&dir, 102400, "deepseek-llm"));
    let json = Tokenizer::from_dir(&dir).unwrap();
    assert_same(&json, &gguf, &[]);
}

fn gguf_err(edit: impl FnOnce(&mut GgufWriter)) -> String {
    let file = GgufFile::open(&root().join("fixtures/gguf/whale-tiny-vocab.gguf")).unwrap();
    let mut w = GgufWriter::from_file(&file);
    edit(&mut w);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.gguf");
    w.write(&path).unwrap();
    let err = Tokenizer::from_gguf_path(&path).err().expect("should fail");
    let msg = err.to_string();
    assert!(msg.contains("bad.gguf") && !msg.contains('\n'), "{msg}");
    msg
}

#[test]
fn unusable_tokenizer_metadata_is_one_line_naming_the_key() {
    let msg = gguf_err(|w| {
        w.set("tokenizer.ggml.pre", Value::String("mystery".into()));
    });
    assert!(
        msg.contains("`tokenizer.ggml.pre`: pre-tokenizer \"mystery\" is not supported"),
        "{msg}"
    );
    let msg = gguf_err(|w| {
        w.set("tokenizer.ggml.model", Value::String("llama".into()));
    });
    assert!(msg.contains("`tokenizer.ggml.model`"), "{msg}");
    let msg = gguf_err(|w| {
        w.remove("tokenizer.ggml.merges");
    });
    assert!(msg.contains("`tokenizer.ggml.merges`: missing"), "{msg}");
    let msg = gguf_err(|w| {
        w.set("tokenizer.ggml.bos_token_id", Value::U32(99999));
    });
    assert!(msg.contains("`tokenizer.ggml.bos_token_id`"), "{msg}");
    let msg = gguf_err(|w| {
        w.tensors.clear();
        w.metadata.retain(|(k, _)| !k.starts_with("tokenizer."));
    });
    assert!(
        msg.contains("`tokenizer.ggml.model`: missing: the file has no tokenizer"),
        "{msg}"
    );
}

#[test]
fn missing_chat_template_names_the_gguf_key() {
    let file = GgufFile::open(&root().join("fixtures/gguf/whale-tiny-vocab.gguf")).unwrap();
    let mut w = GgufWriter::from_file(&file);
    w.remove("tokenizer.chat_template");
    let (_tmp, tok) = write(&w);
    let err = tok
        .apply_chat_template(&[ChatMessage::new("user", "hi")], true)
        .unwrap_err();
    assert!(matches!(err, TokenizerError::NoChatTemplate { .. }));
    assert!(
        err.to_string().contains("`tokenizer.chat_template`"),
        "{err}"
    );
}
