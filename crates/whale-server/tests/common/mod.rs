//! Shared by the integration tests: a tiny random DeepSeek-V2 checkpoint (one dense and
//! one MoE layer) written to a temporary folder, optionally with a byte-level tokenizer
//! and a chat template, plus helpers that call the router without a socket.

#![allow(dead_code)] // each test file uses a different subset

use std::path::Path;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use http_body_util::BodyExt;
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::{json, Value};
use tower::ServiceExt;
use whale_model::{MlaImpl, Model};
use whale_server::{ServeOptions, Server};

pub const VOCAB: usize = 320;
/// Only set when the model has a tokenizer (`<｜end▁of▁sentence｜>`); without one, no
/// EOS, so greedy runs always reach `max_tokens` and tests can count on it.
pub const EOS: u32 = 257;
pub const BOS: u32 = 256;

const HIDDEN: usize = 32;
const LAYERS: usize = 2;
const HEADS: usize = 2;
const KV_LORA: usize = 16;
const NOPE: usize = 8;
const ROPE: usize = 8;
const V_DIM: usize = 8;
const INTER: usize = 48;
const EXPERTS: usize = 4;
const MOE_INTER: usize = 16;

/// Deterministic pseudo-random weights (xorshift), uniform in `[-scale, scale]`.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }

    fn fill(&mut self, n: usize, scale: f32, offset: f32) -> Vec<f32> {
        (0..n).map(|_| offset + scale * self.next()).collect()
    }
}

/// Writes a tiny model into a fresh temporary folder named `whale-tiny-…`.
pub fn tiny_model(with_tokenizer: bool) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("whale-tiny-")
        .tempdir()
        .unwrap();
    let mut config = json!({
        "architectures": ["DeepseekV2ForCausalLM"],
        "model_type": "deepseek_v2",
        "vocab_size": VOCAB,
        "hidden_size": HIDDEN,
        "intermediate_size": INTER,
        "moe_intermediate_size": MOE_INTER,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": HEADS,
        "n_shared_experts": 1,
        "n_routed_experts": EXPERTS,
        "num_experts_per_tok": 2,
        "first_k_dense_replace": 1,
        "moe_layer_freq": 1,
        "topk_method": "greedy",
        "scoring_func": "softmax",
        "norm_topk_prob": false,
        "routed_scaling_factor": 1.0,
        "kv_lora_rank": KV_LORA,
        "q_lora_rank": null,
        "qk_nope_head_dim": NOPE,
        "qk_rope_head_dim": ROPE,
        "v_head_dim": V_DIM,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "tie_word_embeddings": false,
        "torch_dtype": "float32",
    });
    if with_tokenizer {
        config["bos_token_id"] = json!(BOS);
        config["eos_token_id"] = json!(EOS);
    }
    std::fs::write(
        dir.path().join("config.json"),
        serde_json::to_string_pretty(&config).unwrap(),
    )
    .unwrap();
    write_weights(dir.path());
    if with_tokenizer {
        write_tokenizer(dir.path());
    }
    dir
}

fn write_weights(dir: &Path) {
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut add = |name: String, shape: Vec<usize>, scale: f32, offset: f32, rng: &mut Rng| {
        let n = shape.iter().product();
        let bytes = rng
            .fill(n, scale, offset)
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        tensors.push((name, shape, bytes));
    };
    let w = 0.3; // large enough that attention and routing matter
    add(
        "model.embed_tokens.weight".into(),
        vec![VOCAB, HIDDEN],
        1.0,
        0.0,
        &mut rng,
    );
    for i in 0..LAYERS {
        let p = format!("model.layers.{i}");
        add(
            format!("{p}.input_layernorm.weight"),
            vec![HIDDEN],
            0.1,
            1.0,
            &mut rng,
        );
        add(
            format!("{p}.post_attention_layernorm.weight"),
            vec![HIDDEN],
            0.1,
            1.0,
            &mut rng,
        );
        add(
            format!("{p}.self_attn.q_proj.weight"),
            vec![HEADS * (NOPE + ROPE), HIDDEN],
            w,
            0.0,
            &mut rng,
        );
        add(
            format!("{p}.self_attn.kv_a_proj_with_mqa.weight"),
            vec![KV_LORA + ROPE, HIDDEN],
            w,
            0.0,
            &mut rng,
        );
        add(
            format!("{p}.self_attn.kv_a_layernorm.weight"),
            vec![KV_LORA],
            0.1,
            1.0,
            &mut rng,
        );
        add(
            format!("{p}.self_attn.kv_b_proj.weight"),
            vec![HEADS * (NOPE + V_DIM), KV_LORA],
            w,
            0.0,
            &mut rng,
        );
        add(
            format!("{p}.self_attn.o_proj.weight"),
            vec![HIDDEN, HEADS * V_DIM],
            w,
            0.0,
            &mut rng,
        );
        let mut mlp = |prefix: String, width: usize, rng: &mut Rng| {
            add(
                format!("{prefix}.gate_proj.weight"),
                vec![width, HIDDEN],
                w,
                0.0,
                rng,
            );
            add(
                format!("{prefix}.up_proj.weight"),
                vec![width, HIDDEN],
                w,
                0.0,
                rng,
            );
            add(
                format!("{prefix}.down_proj.weight"),
                vec![HIDDEN, width],
                w,
                0.0,
                rng,
            );
        };
        if i == 0 {
            mlp(format!("{p}.mlp"), INTER, &mut rng);
        } else {
            for e in 0..EXPERTS {
                mlp(format!("{p}.mlp.experts.{e}"), MOE_INTER, &mut rng);
            }
            mlp(format!("{p}.mlp.shared_experts"), MOE_INTER, &mut rng);
            add(
                format!("{p}.mlp.gate.weight"),
                vec![EXPERTS, HIDDEN],
                w,
                0.0,
                &mut rng,
            );
        }
    }
    add("model.norm.weight".into(), vec![HIDDEN], 0.1, 1.0, &mut rng);
    add(
        "lm_head.weight".into(),
        vec![VOCAB, HIDDEN],
        1.0,
        0.0,
        &mut rng,
    );
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, s.clone(), b).unwrap(),
            )
        })
        .collect();
    std::fs::write(
        dir.join("model.safetensors"),
        safetensors::serialize(views, None).unwrap(),
    )
    .unwrap();
}

/// GPT-2's byte-to-character map, which byte-level BPE vocabularies are written in.
fn byte_chars() -> Vec<char> {
    let printable =
        |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut extra = 0;
    (0..256u32)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).unwrap()
            } else {
                extra += 1;
                char::from_u32(255 + extra).unwrap()
            }
        })
        .collect()
}

/// A byte-level BPE without merges (one token per byte) plus DeepSeek's BOS/EOS, and a
/// minimal chat template.
fn write_tokenizer(dir: &Path) {
    let vocab: serde_json::Map<String, Value> = byte_chars()
        .into_iter()
        .enumerate()
        .map(|(i, c)| (c.to_string(), json!(i)))
        .collect();
    let special = |id: u32, content: &str| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
               "normalized": false, "special": true})
    };
    let (bos, eos) = ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>");
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [special(BOS, bos), special(EOS, eos)],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos: {"id": bos, "ids": [BOS], "tokens": [bos]}}
        },
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": false, "vocab": vocab, "merges": []}
    });
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
    let template =
        "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}\
                    {% if add_generation_prompt %}<|assistant|>{% endif %}";
    let config = json!({
        "bos_token": bos,
        "eos_token": eos,
        "add_bos_token": true,
        "add_eos_token": false,
        "chat_template": template,
        "tokenizer_class": "LlamaTokenizerFast",
    });
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();
}

pub fn load(dir: &Path) -> Model {
    Model::load(dir, MlaImpl::Absorbed).unwrap()
}

pub fn start(dir: &Path, opts: ServeOptions) -> Server {
    Server::start(load(dir), dir, &opts).unwrap()
}

/// The greedy continuation computed directly with `Model::forward`, one sequence alone:
/// the reference the server's batched scheduler must reproduce.
pub fn greedy_reference(model: &Model, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut cache = model.new_cache(prompt.len() + n);
    let mut logits = model
        .forward(prompt, &mut cache, whale_model::Logits::Last)
        .unwrap();
    let mut out = Vec::new();
    for _ in 0..n {
        let id = whale_model::sampling::argmax(&logits) as u32;
        out.push(id);
        logits = model
            .forward(&[id], &mut cache, whale_model::Logits::Last)
            .unwrap();
    }
    out
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: axum::http::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// The `data:` payloads of an SSE body, in order.
    pub fn sse_data(&self) -> Vec<String> {
        let text = String::from_utf8(self.body.clone()).unwrap();
        assert!(
            text.ends_with("\n\n"),
            "events end with a blank line: {text:?}"
        );
        text.split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| {
                e.strip_prefix("data: ")
                    .unwrap_or_else(|| panic!("not a data event: {e:?}"))
                    .to_string()
            })
            .collect()
    }

    /// Asserts OpenAI's error shape and returns the `error` object.
    pub fn error(&self, status: StatusCode) -> Value {
        assert_eq!(
            self.status,
            status,
            "{}",
            String::from_utf8_lossy(&self.body)
        );
        let v = self.json();
        let e = v["error"].clone();
        assert!(e["message"].is_string() && e["type"].is_string(), "{v}");
        assert!(e.get("param").is_some() && e.get("code").is_some(), "{v}");
        e
    }
}

pub async fn call(
    app: &axum::Router,
    method: &str,
    path: &str,
    body: Option<&Value>,
    key: Option<&str>,
) -> Reply {
    let body = body.map(|b| b.to_string().into_bytes());
    call_raw(app, method, path, body, key).await
}

pub async fn call_raw(
    app: &axum::Router,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
    key: Option<&str>,
) -> Reply {
    let mut req = Request::builder().method(method).uri(path);
    if body.is_some() {
        req = req.header(header::CONTENT_TYPE, "application/json");
    }
    if let Some(k) = key {
        req = req.header(header::AUTHORIZATION, format!("Bearer {k}"));
    }
    let req = req.body(body.map_or_else(Body::empty, Body::from)).unwrap();
    let response = app.clone().oneshot(req).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes().to_vec();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

pub fn prompt(n: usize, seed: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| (i.wrapping_mul(2654435761).wrapping_add(seed * 97) >> 7) % 250)
        .collect()
}
