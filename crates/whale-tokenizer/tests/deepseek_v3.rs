//! Golden test against DeepSeek-V3's real tokenizer: ids, decodings and chat renderings must equal
//! transformers' (fixtures/tokenizer/deepseek_v3.json, written by scripts/make_tokenizer_fixtures.py).
//!
//! The tokenizer files are DeepSeek-licensed and never committed; scripts/fetch_test_assets.sh
//! puts them in .test-assets/. Without them this test fails (it does not skip) so a green run
//! always means the comparison happened.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::Deserialize;
use whale_tokenizer::{ChatMessage, StreamDecoder, Tokenizer};

#[derive(Deserialize)]
struct Fixture {
    bos_token_id: u32,
    eos_token_id: u32,
    vocab_size: usize,
    token_ids: std::collections::BTreeMap<String, Option<u32>>,
    texts: Vec<TextCase>,
    chats: Vec<ChatCase>,
}

#[derive(Deserialize)]
struct TextCase {
    text: String,
    /// A default transformers 5 tokenizer: only the post-processor adds special tokens.
    ids: Vec<u32>,
    ids_no_special: Vec<u32>,
    decoded: String,
    decoded_skip_special: String,
}

#[derive(Deserialize)]
struct ChatCase {
    name: String,
    messages: Vec<ChatMessage>,
    add_generation_prompt: bool,
    rendered: String,
    ids: Vec<u32>,
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn tokenizer() -> &'static Tokenizer {
    static TOKENIZER: OnceLock<Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        let dir = workspace_root().join(".test-assets/deepseek_v3_tokenizer");
        assert!(
            dir.join("tokenizer.json").is_file() && dir.join("tokenizer_config.json").is_file(),
            "DeepSeek-V3 tokenizer missing from {}: run scripts/fetch_test_assets.sh",
            dir.display()
        );
        Tokenizer::from_dir(&dir).unwrap_or_else(|e| panic!("{e}"))
    })
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let path = workspace_root().join("fixtures/tokenizer/deepseek_v3.json");
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    })
}

/// Fails with every mismatch listed, not just the first.
fn assert_no_failures(what: &str, failures: Vec<String>) {
    assert!(
        failures.is_empty(),
        "{} {what} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn special_tokens_and_vocab_match() {
    let (tok, fx) = (tokenizer(), fixture());
    assert_eq!(tok.bos_token_id(), Some(fx.bos_token_id));
    assert_eq!(tok.eos_token_id(), Some(fx.eos_token_id));
    assert_eq!(tok.vocab_size(), fx.vocab_size);
    for (token, id) in &fx.token_ids {
        assert_eq!(tok.token_to_id(token), *id, "token_to_id({token:?})");
    }
}

#[test]
fn texts_encode_and_decode_like_transformers() {
    let (tok, fx) = (tokenizer(), fixture());
    assert!(fx.texts.len() >= 20, "fixture lost its cases");
    let mut failures = Vec::new();
    for case in &fx.texts {
        let t = &case.text;
        let ids = tok.encode(t, true).unwrap();
        if ids != case.ids {
            failures.push(format!(
                "encode({t:?}, true) = {ids:?}, want {:?}",
                case.ids
            ));
        }
        let ids = tok.encode(t, false).unwrap();
        if ids != case.ids_no_special {
            failures.push(format!(
                "encode({t:?}, false) = {ids:?}, want {:?}",
                case.ids_no_special
            ));
        }
        let text = tok.decode(&case.ids, false).unwrap();
        if text != case.decoded {
            failures.push(format!(
                "decode({:?}, false) = {text:?}, want {:?}",
                case.ids, case.decoded
            ));
        }
        let text = tok.decode(&case.ids, true).unwrap();
        if text != case.decoded_skip_special {
            failures.push(format!(
                "decode({:?}, true) = {text:?}, want {:?}",
                case.ids, case.decoded_skip_special
            ));
        }
    }
    assert_no_failures("text", failures);
}

#[test]
fn chats_render_and_encode_like_transformers() {
    let (tok, fx) = (tokenizer(), fixture());
    assert!(fx.chats.len() >= 8, "fixture lost its cases");
    let mut failures = Vec::new();
    for case in &fx.chats {
        let rendered = tok
            .apply_chat_template(&case.messages, case.add_generation_prompt)
            .unwrap();
        if rendered != case.rendered {
            failures.push(format!(
                "{}: rendered {rendered:?}, want {:?}",
                case.name, case.rendered
            ));
        }
        let ids = tok
            .encode_chat(&case.messages, case.add_generation_prompt)
            .unwrap();
        if ids != case.ids {
            failures.push(format!("{}: ids {ids:?}, want {:?}", case.name, case.ids));
        }
        // Exactly one BOS: the template writes it and encode_chat must not add another.
        if ids.iter().filter(|&&id| id == fx.bos_token_id).count() != 1 {
            failures.push(format!(
                "{}: ids {ids:?} do not hold exactly one BOS",
                case.name
            ));
        }
    }
    assert_no_failures("chat", failures);
}

/// Pushes `ids` one at a time; checks the pieces concatenate to `decode(ids)`.
fn stream_matches_decode(
    tok: &Tokenizer,
    ids: &[u32],
    skip_special_tokens: bool,
) -> Result<(), String> {
    let mut stream = StreamDecoder::new(tok, skip_special_tokens);
    let mut streamed = String::new();
    for &id in ids {
        if let Some(piece) = stream.push(id).map_err(|e| e.to_string())? {
            if piece.contains('\u{FFFD}') {
                return Err(format!("piece {piece:?} holds a replacement character"));
            }
            streamed.push_str(&piece);
        }
    }
    streamed.extend(stream.flush().map_err(|e| e.to_string())?);
    let want = tok
        .decode(ids, skip_special_tokens)
        .map_err(|e| e.to_string())?;
    if streamed != want {
        return Err(format!("streamed {streamed:?}, decode gives {want:?}"));
    }
    Ok(())
}

#[test]
fn stream_decode_concatenates_to_decode() {
    let (tok, fx) = (tokenizer(), fixture());
    let mut failures = Vec::new();
    let all_ids = fx
        .texts
        .iter()
        .map(|c| &c.ids)
        .chain(fx.chats.iter().map(|c| &c.ids));
    for ids in all_ids {
        for skip in [false, true] {
            if let Err(e) = stream_matches_decode(tok, ids, skip) {
                failures.push(format!("ids {ids:?} (skip_special_tokens={skip}): {e}"));
            }
        }
    }
    assert_no_failures("stream", failures);
}

/// Emoji and CJK really are split across tokens in this vocabulary, so the stream test above
/// exercises the hold-back path; and held-back text is released on the token that completes it.
#[test]
fn stream_holds_back_partial_characters() {
    let tok = tokenizer();
    let ids = tok.encode("👨\u{200d}👩\u{200d}👧 🤖", false).unwrap();
    let mut stream = StreamDecoder::new(tok, false);
    let pieces: Vec<Option<String>> = ids.iter().map(|&id| stream.push(id).unwrap()).collect();
    assert!(
        pieces.iter().any(Option::is_none),
        "no token ended inside a character: {ids:?}"
    );
    assert!(
        pieces.last().unwrap().is_some(),
        "the last token completes the text"
    );
    assert_eq!(stream.flush().unwrap(), None);
    let joined: String = pieces.into_iter().flatten().collect();
    assert_eq!(joined, "👨\u{200d}👩\u{200d}👧 🤖");
}
