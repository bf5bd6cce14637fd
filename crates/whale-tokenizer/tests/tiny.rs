//! Behaviour tests on a tiny byte-level BPE tokenizer the test writes itself: streaming decode of
//! multi-byte characters, the BOS policy, load errors that name their file, chat-template
//! semantics (against strings transformers 5.24 rendered) and template errors that do not panic.

use std::path::PathBuf;

use serde_json::{json, Value};
use whale_tokenizer::{ChatMessage, StreamDecoder, Tokenizer, TokenizerError};

// Ids of the tiny vocabulary: bytes are ids 0..=255 (by byte value), then the merges, then the
// added special tokens.
const E_ACUTE: u32 = 256; // "é" = C3 A9, one token
const NI_HEAD: u32 = 257; // first two bytes of "你" (E4 BD A0)
const HAO_TAIL_A: u32 = 258; // last byte of "好" (E5 A5 BD) + "a": a token across a char boundary
const HELLO: u32 = 262;
const BOS: u32 = 263;
const EOS: u32 = 264;
const USER: u32 = 265;

/// GPT-2's `bytes_to_unicode`: printable bytes stand for themselves, the others for U+0100 + n.
fn byte_char(b: u8) -> char {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    if printable(b) {
        b as char
    } else {
        let n = (0..b).filter(|&x| !printable(x)).count() as u32;
        char::from_u32(256 + n).unwrap()
    }
}

/// A `tokenizer.json` in the DeepSeek layout (byte-level pre-tokenizer and decoder) with the
/// given post-processor.
fn tokenizer_json(post_processor: Value) -> Value {
    let mut vocab = serde_json::Map::new();
    for b in 0..=255u8 {
        vocab.insert(byte_char(b).to_string(), json!(b));
    }
    let merges = [
        ("Ã", "©"),
        ("ä", "½"),
        ("½", "a"),
        ("h", "e"),
        ("l", "l"),
        ("he", "ll"),
        ("hell", "o"),
    ];
    for (i, (a, b)) in merges.iter().enumerate() {
        vocab.insert(format!("{a}{b}"), json!(256 + i));
    }
    let added = |id: u32, content: &str| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
               "normalized": false, "special": true})
    };
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [added(BOS, "<s>"), added(EOS, "</s>"), added(USER, "<|user|>"), added(266, "<|assistant|>")],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": post_processor,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": merges.iter().map(|(a, b)| format!("{a} {b}")).collect::<Vec<_>>()}
    })
}

/// DeepSeek's post-processor: offsets only, no special tokens.
fn byte_level_post_processor() -> Value {
    json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true})
}

/// Llama-3 style: the post-processor itself prepends BOS.
fn bos_template_post_processor() -> Value {
    let bos = json!({"SpecialToken": {"id": "<s>", "type_id": 0}});
    json!({
        "type": "TemplateProcessing",
        "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [bos, {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<s>": {"id": "<s>", "ids": [BOS], "tokens": ["<s>"]}}
    })
}

/// DeepSeek-like config: AddedToken-object BOS, string EOS, `add_bos_token: true`.
fn config(chat_template: &str) -> Value {
    json!({
        "add_bos_token": true,
        "add_eos_token": false,
        "bos_token": {"__type": "AddedToken", "content": "<s>", "lstrip": false, "normalized": true,
                      "rstrip": false, "single_word": false},
        "eos_token": "</s>",
        "pad_token": "</s>",
        "unk_token": null,
        "chat_template": chat_template
    })
}

const SIMPLE_TEMPLATE: &str =
    "{{ bos_token }}{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}\
                               {% if add_generation_prompt %}<|assistant|>{% endif %}";

/// A fresh model folder under cargo's per-test temp dir holding the given files (raw strings).
fn model_dir(name: &str, files: &[(&str, String)]) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("whale-tokenizer-tiny")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for (file, text) in files {
        std::fs::write(dir.join(file), text).unwrap();
    }
    dir
}

fn tiny(name: &str, post_processor: Value, config: Option<Value>) -> Tokenizer {
    let mut files = vec![("tokenizer.json", tokenizer_json(post_processor).to_string())];
    files.extend(config.map(|c| ("tokenizer_config.json", c.to_string())));
    Tokenizer::from_dir(&model_dir(name, &files)).unwrap()
}

fn deepseek_like(name: &str, chat_template: &str) -> Tokenizer {
    tiny(
        name,
        byte_level_post_processor(),
        Some(config(chat_template)),
    )
}

#[test]
fn encodes_with_merges_and_round_trips() {
    let tok = deepseek_like("round_trip", SIMPLE_TEMPLATE);
    assert_eq!(tok.encode("é", false).unwrap(), [E_ACUTE]);
    assert_eq!(tok.encode("hello", false).unwrap(), [HELLO]);
    assert_eq!(tok.encode("你", false).unwrap(), [NI_HEAD, 0xA0]);
    assert_eq!(tok.encode("好a", false).unwrap(), [0xE5, 0xA5, HAO_TAIL_A]);
    assert_eq!(
        tok.encode("<|user|>hi", false).unwrap(),
        [USER, b'h' as u32, b'i' as u32]
    );
    for text in [
        "",
        "héllo wörld",
        "你好a 😀",
        "👨\u{200d}👩\u{200d}👧",
        "tab\tnew\nline  ",
        "🇫🇷e\u{301}",
    ] {
        let ids = tok.encode(text, false).unwrap();
        assert_eq!(tok.decode(&ids, false).unwrap(), text);
    }
    assert_eq!(tok.vocab_size(), 267);
    assert_eq!(tok.token_to_id("<|assistant|>"), Some(266));
    assert_eq!(tok.token_to_id("<|nope|>"), None);
    assert_eq!(tok.decode(&[BOS, HELLO, EOS], true).unwrap(), "hello");
    assert_eq!(
        tok.decode(&[BOS, HELLO, EOS], false).unwrap(),
        "<s>hello</s>"
    );
}

#[test]
fn bos_follows_the_post_processor_only() {
    // A post-processor that adds nothing (DeepSeek's ByteLevel): no BOS, whatever
    // add_bos_token says — transformers 5 ignores it when tokenizer.json exists.
    let tok = deepseek_like("bos_not_prepended", SIMPLE_TEMPLATE);
    assert_eq!(
        (tok.bos_token_id(), tok.eos_token_id()),
        (Some(BOS), Some(EOS))
    );
    assert_eq!(tok.encode("hello", true).unwrap(), [HELLO]);
    assert_eq!(tok.encode("hello", false).unwrap(), [HELLO]);
    // A literal BOS in the text is the special token.
    assert_eq!(tok.encode("<s>hello", true).unwrap(), [BOS, HELLO]);

    // The post-processor adds BOS: exactly one, and only with special tokens.
    let tok = tiny(
        "bos_by_post_processor",
        bos_template_post_processor(),
        Some(config(SIMPLE_TEMPLATE)),
    );
    assert_eq!(tok.encode("hello", true).unwrap(), [BOS, HELLO]);
    assert_eq!(tok.encode("hello", false).unwrap(), [HELLO]);

    // No tokenizer_config.json: no special tokens known, no template.
    let tok = tiny("no_config", byte_level_post_processor(), None);
    assert_eq!((tok.bos_token_id(), tok.eos_token_id()), (None, None));
    assert_eq!(tok.encode("hello", true).unwrap(), [HELLO]);
    let err = tok
        .apply_chat_template(&[ChatMessage::new("user", "hi")], true)
        .unwrap_err();
    assert!(
        matches!(err, TokenizerError::NoChatTemplate { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("tokenizer_config.json"), "{err}");
}

/// Streams `ids`; returns what each push returned and the flushed rest.
fn stream(
    tok: &Tokenizer,
    ids: &[u32],
    skip_special_tokens: bool,
) -> (Vec<Option<String>>, Option<String>) {
    let mut decoder = StreamDecoder::new(tok, skip_special_tokens);
    let pushed = ids.iter().map(|&id| decoder.push(id).unwrap()).collect();
    (pushed, decoder.flush().unwrap())
}

#[test]
fn stream_decoder_emits_whole_characters_that_add_up_to_decode() {
    let tok = deepseek_like("stream", SIMPLE_TEMPLATE);
    let text = "héllo 你好a 😀 👨\u{200d}👩\u{200d}👧 🇫🇷 ok<|user|>中文<s>";
    let ids = tok.encode(text, false).unwrap();
    for skip in [false, true] {
        let want = tok.decode(&ids, skip).unwrap();
        let (pushed, flushed) = stream(&tok, &ids, skip);
        assert!(
            pushed.iter().any(Option::is_none),
            "some ids end inside a character"
        );
        let mut so_far = String::new();
        for piece in pushed.iter().flatten() {
            assert!(
                !piece.is_empty() && !piece.contains('\u{FFFD}'),
                "piece {piece:?}"
            );
            so_far.push_str(piece);
            assert!(
                want.starts_with(&so_far),
                "{so_far:?} is not a prefix of {want:?}"
            );
        }
        assert_eq!(flushed, None, "the text ends on a whole character");
        assert_eq!(so_far, want);
    }
    assert_eq!(tok.decode(&ids, false).unwrap(), text);

    // "好" is only complete with the token that also carries "a": nothing before it.
    let (pushed, _) = stream(&tok, &[0xE5, 0xA5, HAO_TAIL_A], false);
    assert_eq!(pushed, [None, None, Some("好a".to_string())]);
}

#[test]
fn stream_decoder_handles_invalid_and_unfinished_bytes() {
    let tok = deepseek_like("stream_invalid", SIMPLE_TEMPLATE);
    // A lead byte followed by ASCII is invalid UTF-8: emitted as U+FFFD, like decode.
    let (pushed, flushed) = stream(&tok, &[0xE4, b'a' as u32], false);
    assert_eq!(pushed, [None, Some("\u{FFFD}a".to_string())]);
    assert_eq!(flushed, None);
    // A character cut off by the end of generation comes out of flush.
    let ids = [b'x' as u32, 0xE4, 0xBD];
    let (pushed, flushed) = stream(&tok, &ids, false);
    assert_eq!(pushed, [Some("x".to_string()), None, None]);
    assert_eq!(flushed.as_deref(), Some("\u{FFFD}"));
    assert_eq!(tok.decode(&ids, false).unwrap(), "x\u{FFFD}");
    // Skipped special tokens add nothing and break nothing.
    let (pushed, flushed) = stream(&tok, &[BOS, 0xE4, EOS, 0xBD, 0xA0], true);
    assert_eq!(pushed, [None, None, None, None, Some("你".to_string())]);
    assert_eq!(flushed, None);
}

#[test]
fn missing_or_invalid_tokenizer_json_names_the_path() {
    let dir = model_dir("missing", &[]);
    let err = Tokenizer::from_dir(&dir)
        .err()
        .expect("no tokenizer.json must fail");
    let message = err.to_string();
    assert!(matches!(err, TokenizerError::Read { .. }), "{message}");
    assert!(
        message.contains(&dir.join("tokenizer.json").display().to_string()),
        "{message}"
    );

    for (name, text) in [("not_json", "{not json"), ("bad_schema", r#"{"model": 5}"#)] {
        let dir = model_dir(name, &[("tokenizer.json", text.to_string())]);
        let err = Tokenizer::from_dir(&dir)
            .err()
            .expect("a broken tokenizer.json must fail");
        let message = err.to_string();
        assert!(
            matches!(err, TokenizerError::InvalidTokenizer { .. }),
            "{message}"
        );
        assert!(
            message.contains(&dir.join("tokenizer.json").display().to_string()),
            "{message}"
        );
        assert!(!message.contains('\n'), "one line: {message}");
    }
}

#[test]
fn invalid_config_names_the_file_and_field() {
    let tokenizer = tokenizer_json(byte_level_post_processor()).to_string();
    let cases = [
        ("cfg_not_json", "{".to_string(), "(root)"),
        (
            "cfg_bos_number",
            json!({"bos_token": 5}).to_string(),
            "bos_token",
        ),
        (
            "cfg_eos_object",
            json!({"eos_token": {"lstrip": false}}).to_string(),
            "eos_token",
        ),
        (
            "cfg_template_number",
            json!({"chat_template": 3}).to_string(),
            "chat_template",
        ),
        (
            "cfg_template_list",
            json!({"chat_template": [{"name": "tool_use", "template": "x"}]}).to_string(),
            "chat_template",
        ),
    ];
    for (name, config, field) in cases {
        let dir = model_dir(
            name,
            &[
                ("tokenizer.json", tokenizer.clone()),
                ("tokenizer_config.json", config),
            ],
        );
        let err = Tokenizer::from_dir(&dir)
            .err()
            .expect("a broken config must fail");
        let message = err.to_string();
        assert!(
            matches!(err, TokenizerError::InvalidConfig { .. }),
            "{name}: {message}"
        );
        assert!(
            message.contains(&dir.join("tokenizer_config.json").display().to_string()),
            "{message}"
        );
        assert!(message.contains(&format!("`{field}`")), "{name}: {message}");
    }
    // A named-template list with a "default" entry is accepted, as in transformers.
    let config =
        json!({"chat_template": [{"name": "default", "template": "D{{ messages|length }}"}]});
    let dir = model_dir(
        "cfg_template_default",
        &[
            ("tokenizer.json", tokenizer),
            ("tokenizer_config.json", config.to_string()),
        ],
    );
    let tok = Tokenizer::from_dir(&dir).unwrap();
    assert_eq!(
        tok.apply_chat_template(&[ChatMessage::new("user", "x")], false)
            .unwrap(),
        "D1"
    );
}

/// Exercises whitespace control, namespaces, loop controls, pycompat methods, Python printing of
/// None/True/lists/dicts, `tojson` and the variables transformers passes.
const SEMANTICS_TEMPLATE: &str = r#"{%- set ns = namespace(sys='') -%}
{% for m in messages %}
    {% if m.role == 'system' %}
        {% set ns.sys = ns.sys + m['content'].strip() %}
        {% continue %}
    {% endif %}
<{{ m.role|upper }}> {{ m.content.split()|join(' ') }}
    {% if loop.last %}
{{ m|tojson }}
    {% endif %}
{% endfor %}
sys={{ ns.sys }} none={{ none }} t={{ true }} f={{ 1 > 2 }} gen={{ add_generation_prompt }} tools={{ tools }} docs={{ documents is none }} tc={{ messages[0].tool_calls is defined }}
{{ bos_token }}|{{ eos_token }}|{{ pad_token }}|{{ unk_token is defined }}
{{ {'a': [1.5, none, 'x<y'], 'b': {'c': true}}|tojson }}
{{ 'a,b'.split(',') }} {{ messages[-1] }} {{ [1, 2.0, none, "it's"] }} {{ messages[0].items()|list|length }} {{ 'a,b'.split(',')|length }} {{ 'Hi'.startswith('H') }} {{ '  x '.rstrip() }}|
{%- for k, v in messages[-1].items() %} {{ k }}={{ v }}{% endfor %}

{% if add_generation_prompt %}<|assistant|>{% endif %}
"#;

#[test]
fn template_renders_like_transformers() {
    let tok = deepseek_like("semantics", SEMANTICS_TEMPLATE);
    let messages = [
        ChatMessage::new("system", "  Be\tbrief. "),
        ChatMessage::new("user", "hello   big\nworld"),
        ChatMessage::new("system", " Second."),
        ChatMessage::new("assistant", "ok \"quoted\" é"),
    ];
    // Printed by transformers 5.24's render_jinja_template with bos/eos/pad_token as in config().
    let body = "<USER> hello big world\n<ASSISTANT> ok \"quoted\" é\n{\"role\": \"assistant\", \"content\": \"ok \\\"quoted\\\" é\"}\n\
                sys=Be\tbrief.Second. none=None t=True f=False gen=GEN tools=None docs=True tc=False\n\
                <s>|</s>|</s>|False\n{\"a\": [1.5, null, \"x<y\"], \"b\": {\"c\": true}}\n\
                ['a', 'b'] {'role': 'assistant', 'content': 'ok \"quoted\" é'} [1, 2.0, None, \"it's\"] \
                2 2 True   x| role=assistant content=ok \"quoted\" é\n";
    assert_eq!(
        tok.apply_chat_template(&messages, true).unwrap(),
        format!("{}<|assistant|>", body.replace("GEN", "True"))
    );
    assert_eq!(
        tok.apply_chat_template(&messages, false).unwrap(),
        body.replace("GEN", "False")
    );
}

#[test]
fn encode_chat_keeps_the_templates_single_bos() {
    let tok = deepseek_like("encode_chat", SIMPLE_TEMPLATE);
    let messages = [ChatMessage::new("user", "hello")];
    assert_eq!(
        tok.apply_chat_template(&messages, true).unwrap(),
        "<s><|user|>hello<|assistant|>"
    );
    assert_eq!(
        tok.encode_chat(&messages, true).unwrap(),
        [BOS, USER, HELLO, 266]
    );
    assert_eq!(
        tok.encode_chat(&messages, false).unwrap(),
        [BOS, USER, HELLO]
    );
}

#[test]
fn chat_template_jinja_file_overrides_the_config() {
    let files = [
        (
            "tokenizer.json",
            tokenizer_json(byte_level_post_processor()).to_string(),
        ),
        ("tokenizer_config.json", config("from config").to_string()),
        // jinja2 (keep_trailing_newline=False) drops one trailing newline of the source.
        (
            "chat_template.jinja",
            "from file {{ messages[0].content }} {{ strftime_now('%Y')|length }}\n".to_string(),
        ),
    ];
    let tok = Tokenizer::from_dir(&model_dir("jinja_file", &files)).unwrap();
    assert_eq!(
        tok.apply_chat_template(&[ChatMessage::new("user", "x")], false)
            .unwrap(),
        "from file x 4"
    );
}

#[test]
fn broken_templates_give_errors_not_panics() {
    let user = [ChatMessage::new("user", "hi")];
    let cases = [
        (
            "syntax",
            "{% for m in messages %}{{ m.content }}",
            "syntax error",
        ),
        (
            "raise",
            "{{ raise_exception('Only user and assistant roles are supported!') }}",
            "Only user and assistant",
        ),
        (
            "undefined_attr",
            "{{ messages[0].nope.deeper }}",
            "undefined",
        ),
        (
            "unknown_filter",
            "{{ messages|no_such_filter }}",
            "no_such_filter",
        ),
        (
            "bad_tojson_arg",
            "{{ messages|tojson(indent=[1]) }}",
            "indent",
        ),
    ];
    for (name, template, expected) in cases {
        let tok = deepseek_like(&format!("broken_{name}"), template);
        // The tokenizer itself still works: a bad template must not block plain completion.
        assert_eq!(tok.encode("hello", false).unwrap(), [HELLO]);
        let err = tok.apply_chat_template(&user, true).unwrap_err();
        let message = err.to_string();
        assert!(
            matches!(err, TokenizerError::Template { .. }),
            "{name}: {message}"
        );
        assert!(
            message.contains("tokenizer_config.json"),
            "{name}: {message}"
        );
        assert!(message.contains(expected), "{name}: {message}");
        assert!(!message.contains('\n'), "{name}: one line: {message}");
        assert!(tok.encode_chat(&user, true).is_err());
    }
    let tok = deepseek_like("empty_conversation", SIMPLE_TEMPLATE);
    let err = tok.apply_chat_template(&[], true).unwrap_err();
    assert!(matches!(err, TokenizerError::EmptyConversation), "{err}");
}
