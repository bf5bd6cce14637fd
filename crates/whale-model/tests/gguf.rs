//! GGUF input: the files in `fixtures/gguf` (made by scripts/make_gguf_fixtures.py from the
//! golden safetensors checkpoints, in llama.cpp's converter layout) must give the logits the
//! safetensors checkpoints give, and broken files must fail with one line naming the problem.

mod common;

use std::path::{Path, PathBuf};

use common::{max_abs_diff, read_npy_f32, std_dev};
use whale_gguf::{GgmlType, GgufFile, GgufWriter, Value};
use whale_model::config::Config;
use whale_model::{GgufCheckpoint, LoadOptions, Logits, MlaImpl, Model};
use whale_tensor::{QuantType, Weight};

/// As in golden.rs: agreement with transformers within 1e-3 of the logits' standard deviation.
const LOGIT_TOL_STD: f32 = 1e-3;

/// GGUF and safetensors hold the same values; only f32 metadata differs (e.g. YaRN's
/// `0.1 · mscale_all_dim` stored as f32), so they agree far more tightly than with PyTorch.
const SAME_WEIGHTS_TOL_STD: f32 = 1e-5;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn gguf(name: &str) -> PathBuf {
    root().join("fixtures/gguf").join(name)
}

fn golden(name: &str) -> PathBuf {
    root().join("fixtures/models").join(name)
}

fn prompt(dir: &Path) -> Vec<u32> {
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    r["prompt_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

fn logits(model: &Model, ids: &[u32]) -> Vec<f32> {
    let mut cache = model.new_cache(model.config.max_position_embeddings);
    model.forward(ids, &mut cache, Logits::All).unwrap()
}

fn opts(mla: MlaImpl, quant: Option<QuantType>) -> LoadOptions {
    LoadOptions {
        mla,
        quant,
        cache: whale_model::CacheType::F32,
    }
}

fn load(path: &Path, o: LoadOptions) -> Model {
    Model::load_with(path, &o).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `(GGUF file, golden folder)`: files whose metadata says exactly what config.json says.
const FAITHFUL: &[(&str, &str)] = &[
    ("v2_greedy_f32-kvb-f32.gguf", "v2_greedy_f32"),
    ("v2_greedy_f32-split-f32.gguf", "v2_greedy_f32"),
    ("v2_grouped_bf16-split-bf16.gguf", "v2_grouped_bf16_sharded"),
];

#[test]
fn gguf_logits_match_transformers_and_safetensors() {
    for &(file, dir) in FAITHFUL {
        let (path, dir) = (gguf(file), golden(dir));
        let ids = prompt(&dir);
        let reference = read_npy_f32(&dir.join("logits.npy"));
        let std = std_dev(&reference);
        for mla in [MlaImpl::Naive, MlaImpl::Absorbed] {
            let got = logits(&load(&path, opts(mla, None)), &ids);
            let diff = max_abs_diff(&got, &reference);
            assert!(
                diff <= LOGIT_TOL_STD * std,
                "{file} {mla:?}: vs transformers {diff}"
            );
            let st = logits(&load(&dir, opts(mla, None)), &ids);
            let diff = max_abs_diff(&got, &st);
            assert!(
                diff <= SAME_WEIGHTS_TOL_STD * std,
                "{file} {mla:?}: vs safetensors {diff}"
            );
        }
    }
}

/// v3_noaux_bf16 sets `mscale` 1.0 ≠ `mscale_all_dim` 0.8; GGUF has no key for `mscale` and
/// llama.cpp takes it equal to `mscale_all_dim` (rotary amplitude 1). So the file matches the
/// safetensors model under that reading, not transformers'.
#[test]
fn split_v3_gguf_matches_safetensors_read_as_llama_cpp_does() {
    let path = gguf("v3_noaux_bf16-split-bf16.gguf");
    let dir = golden("v3_noaux_bf16");
    let ids = prompt(&dir);
    let std = std_dev(&read_npy_f32(&dir.join("logits.npy")));
    let mut config = Config::from_file(&dir.join("config.json")).unwrap();
    let yarn = config.rope.yarn.as_mut().unwrap();
    yarn.mscale = yarn.mscale_all_dim;
    let ckpt = whale_model::checkpoint::Checkpoint::open(&dir).unwrap();
    for mla in [MlaImpl::Naive, MlaImpl::Absorbed] {
        let st = Model::from_source(config.clone(), &ckpt, &opts(mla, None)).unwrap();
        let got = logits(&load(&path, opts(mla, None)), &ids);
        let diff = max_abs_diff(&got, &logits(&st, &ids));
        assert!(diff <= SAME_WEIGHTS_TOL_STD * std, "{mla:?}: {diff}");
    }
}

#[test]
fn fused_and_split_kv_b_give_identical_logits() {
    let ids = prompt(&golden("v2_greedy_f32"));
    for mla in [MlaImpl::Naive, MlaImpl::Absorbed] {
        let fused = logits(
            &load(&gguf("v2_greedy_f32-kvb-f32.gguf"), opts(mla, None)),
            &ids,
        );
        let split = logits(
            &load(&gguf("v2_greedy_f32-split-f32.gguf"), opts(mla, None)),
            &ids,
        );
        assert_eq!(fused, split, "{mla:?}");
    }
}

/// The metadata of each file describes the checkpoint's config.json (as llama.cpp reads it).
#[test]
fn metadata_gives_the_checkpoint_config() {
    let cases = [
        ("v2_greedy_f32-kvb-f32.gguf", "v2_greedy_f32"),
        ("v2_greedy_f32-split-f32.gguf", "v2_greedy_f32"),
        ("v2_greedy_f32-kvb-q8_0.gguf", "v2_greedy_f32"),
        ("v2_grouped_bf16-split-bf16.gguf", "v2_grouped_bf16_sharded"),
        ("v3_noaux_bf16-split-bf16.gguf", "v3_noaux_bf16"),
    ];
    for (file, dir) in cases {
        let got = GgufCheckpoint::open(&gguf(file)).unwrap().config().clone();
        let want = Config::from_file(&golden(dir).join("config.json")).unwrap();
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-6 * b.abs().max(1.0);
        assert_eq!(
            (
                got.vocab_size,
                got.hidden_size,
                got.intermediate_size,
                got.num_hidden_layers
            ),
            (
                want.vocab_size,
                want.hidden_size,
                want.intermediate_size,
                want.num_hidden_layers
            ),
            "{file}"
        );
        assert_eq!(
            (got.num_attention_heads, got.q_lora_rank, got.kv_lora_rank),
            (
                want.num_attention_heads,
                want.q_lora_rank,
                want.kv_lora_rank
            ),
            "{file}"
        );
        assert_eq!(
            (got.qk_nope_head_dim, got.qk_rope_head_dim, got.v_head_dim),
            (
                want.qk_nope_head_dim,
                want.qk_rope_head_dim,
                want.v_head_dim
            ),
            "{file}"
        );
        assert_eq!(got.rms_norm_eps, want.rms_norm_eps, "{file}");
        assert_eq!(
            got.max_position_embeddings, want.max_position_embeddings,
            "{file}"
        );
        assert_eq!(got.rope.theta, want.rope.theta, "{file}");
        let (gy, wy) = (
            got.rope.yarn.clone().unwrap(),
            want.rope.yarn.clone().unwrap(),
        );
        assert_eq!(gy.factor, wy.factor, "{file}");
        assert_eq!(
            gy.original_max_position_embeddings,
            wy.original_max_position_embeddings
        );
        assert!(
            close(gy.mscale_all_dim.unwrap(), wy.mscale_all_dim.unwrap()),
            "{file}"
        );
        assert!(
            close(got.softmax_scale() as f64, want.softmax_scale() as f64),
            "{file}"
        );
        let (gm, wm) = (got.moe.unwrap(), want.moe.unwrap());
        assert_eq!(gm.topk_method, wm.topk_method, "{file}");
        assert_eq!(gm.scoring_func, wm.scoring_func, "{file}");
        assert_eq!(
            (
                gm.n_routed_experts,
                gm.num_experts_per_tok,
                gm.n_shared_experts,
                gm.moe_intermediate_size
            ),
            (
                wm.n_routed_experts,
                wm.num_experts_per_tok,
                wm.n_shared_experts,
                wm.moe_intermediate_size
            ),
            "{file}"
        );
        assert_eq!(
            (
                gm.n_group,
                gm.topk_group,
                gm.norm_topk_prob,
                gm.first_k_dense_replace
            ),
            (
                wm.n_group,
                wm.topk_group,
                wm.norm_topk_prob,
                wm.first_k_dense_replace
            ),
            "{file}"
        );
        assert_eq!(gm.routed_scaling_factor, wm.routed_scaling_factor, "{file}");
        assert!(!got.tie_word_embeddings);
    }
}

/// Q8_0 blocks in the file are what whale's own quantizer makes from the same f32 values, so
/// the Q8_0 GGUF runs exactly like the safetensors checkpoint loaded with `--quant q8_0`.
#[test]
fn q8_0_gguf_equals_safetensors_quantized_at_load() {
    let dir = golden("v2_greedy_f32");
    let ids = prompt(&dir);
    let std = std_dev(&read_npy_f32(&dir.join("logits.npy")));
    for mla in [MlaImpl::Naive, MlaImpl::Absorbed] {
        let from_gguf = logits(
            &load(&gguf("v2_greedy_f32-kvb-q8_0.gguf"), opts(mla, None)),
            &ids,
        );
        let quantized = logits(&load(&dir, opts(mla, Some(QuantType::Q8_0))), &ids);
        let diff = max_abs_diff(&from_gguf, &quantized);
        assert!(diff <= SAME_WEIGHTS_TOL_STD * std, "{mla:?}: {diff}");
    }
    // `--quant q8_0` on a Q8_0 file re-quantizes the dequantized blocks: a fixed point.
    let twice = logits(
        &load(
            &gguf("v2_greedy_f32-kvb-q8_0.gguf"),
            opts(MlaImpl::Absorbed, Some(QuantType::Q8_0)),
        ),
        &ids,
    );
    let once = logits(
        &load(
            &gguf("v2_greedy_f32-kvb-q8_0.gguf"),
            opts(MlaImpl::Absorbed, None),
        ),
        &ids,
    );
    assert_eq!(twice, once);
}

/// gguf-py's Q8_0 and Q4_0 quantizers (ggml's reference algorithms) and whale's give the same
/// bytes for the same f32 weights.
#[test]
fn quantized_blocks_are_byte_identical_to_whales_quantizer() {
    let st_bytes = std::fs::read(golden("v2_greedy_f32").join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&st_bytes).unwrap();
    let f32_of = |name: &str| -> Vec<f32> {
        st.tensor(name)
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    for (file, quant, ty) in [
        (
            "v2_greedy_f32-kvb-q8_0.gguf",
            QuantType::Q8_0,
            GgmlType::Q8_0,
        ),
        (
            "v2_greedy_f32-kvb-q4_0.gguf",
            QuantType::Q4_0,
            GgmlType::Q4_0,
        ),
    ] {
        let g = GgufFile::open(&gguf(file)).unwrap();
        for (hf, gname) in [
            (
                "model.layers.0.self_attn.kv_b_proj.weight",
                "blk.0.attn_kv_b.weight",
            ),
            ("model.embed_tokens.weight", "token_embd.weight"),
            (
                "model.layers.1.mlp.shared_experts.down_proj.weight",
                "blk.1.ffn_down_shexp.weight",
            ),
        ] {
            let t = g.tensor(gname).unwrap();
            assert_eq!(t.ggml_type, ty, "{file} {gname}");
            let (cols, rows) = (t.dims[0] as usize, t.dims[1] as usize);
            let ours = Weight::from_f32(rows, cols, f32_of(hf))
                .quantize(quant)
                .unwrap();
            assert_eq!(
                ours.gguf_block_bytes().unwrap().1,
                g.tensor_bytes(t),
                "{file} {gname}"
            );
        }
    }
}

/// llama-quantize's Q4_0 mix is what `--quant q4_0` makes: Q4_0 projections and embedding, the
/// output head at Q6_K or, for rows of 64, Q8_0.
#[test]
fn q4_0_gguf_equals_safetensors_quantized_at_load() {
    let dir = golden("v2_greedy_f32");
    let ids = prompt(&dir);
    let std = std_dev(&read_npy_f32(&dir.join("logits.npy")));
    let file = load(
        &gguf("v2_greedy_f32-kvb-q4_0.gguf"),
        opts(MlaImpl::Absorbed, None),
    );
    // The file's config, not config.json: f32 metadata moves the softmax scale by an ulp, and
    // downstream Q8_0 activation rounding turns an ulp into visible logit differences; this test
    // is about the weights.
    let ckpt = whale_model::checkpoint::Checkpoint::open(&dir).unwrap();
    let st = Model::from_source(
        file.config.clone(),
        &ckpt,
        &opts(MlaImpl::Absorbed, Some(QuantType::Q4_0)),
    )
    .unwrap();
    let (from_gguf, quantized) = (logits(&file, &ids), logits(&st, &ids));
    let diff = max_abs_diff(&from_gguf, &quantized);
    assert!(diff <= SAME_WEIGHTS_TOL_STD * std, "{diff}");
}

/// A broken copy of `base` made by `edit`, written to a temp dir.
fn broken(base: &str, edit: impl FnOnce(&mut GgufWriter)) -> (tempfile::TempDir, PathBuf) {
    let mut w = GgufWriter::from_file(&GgufFile::open(&gguf(base)).unwrap());
    edit(&mut w);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.gguf");
    w.write(&path).unwrap();
    (dir, path)
}

fn load_err(path: &Path) -> String {
    let msg = match Model::load_with(path, &opts(MlaImpl::Absorbed, None)) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e.to_string(),
    };
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(!msg.contains('\n'), "{msg}");
    msg
}

#[test]
fn broken_files_fail_with_one_line_naming_file_and_key_or_tensor() {
    const BASE: &str = "v3_noaux_bf16-split-bf16.gguf";
    let (_d, p) = broken(BASE, |w| {
        w.remove("deepseek2.attention.kv_lora_rank");
    });
    assert!(load_err(&p).contains("`deepseek2.attention.kv_lora_rank`: missing"));

    let (_d, p) = broken(BASE, |w| {
        w.set("general.architecture", Value::String("llama".into()));
    });
    assert!(load_err(&p).contains("`general.architecture`: unsupported architecture \"llama\""));

    let (_d, p) = broken(BASE, |w| {
        w.set("deepseek2.expert_group_count", Value::U32(5));
    });
    assert!(load_err(&p).contains("`deepseek2.expert_group_count`"));

    let (_d, p) = broken(BASE, |w| {
        w.set("deepseek2.expert_gating_func", Value::U32(1));
    });
    assert!(load_err(&p).contains("`deepseek2.expert_gating_func`"));

    let (_d, p) = broken(BASE, |w| {
        let t = w
            .tensors
            .iter_mut()
            .find(|t| t.0 == "blk.0.attn_q_b.weight")
            .unwrap();
        t.1 = vec![32, 288]; // same bytes, wrong shape
    });
    let msg = load_err(&p);
    assert!(
        msg.contains("tensor `blk.0.attn_q_b.weight` has dims [32, 288], expected [64, 144]"),
        "{msg}"
    );

    let (_d, p) = broken(BASE, |w| {
        w.tensors.retain(|t| t.0 != "blk.2.attn_v_b.weight");
    });
    assert!(load_err(&p).contains("missing tensor `blk.2.attn_v_b.weight`"));

    let (_d, p) = broken(BASE, |w| {
        let t = w
            .tensors
            .iter_mut()
            .find(|t| t.0 == "blk.1.ffn_up_exps.weight")
            .unwrap();
        t.2 = GgmlType(3); // Q4_1: a real ggml type whale does not compute with
        t.1 = vec![96, 32, 16];
        t.3.truncate(96 / 32 * 20 * 32 * 16);
    });
    let msg = load_err(&p);
    assert!(
        msg.contains("1 tensor problem(s): tensor `blk.1.ffn_up_exps.weight` is Q4_1, which whale cannot compute with"),
        "{msg}"
    );

    let bytes = std::fs::read(gguf(BASE)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("truncated.gguf");
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let msg = load_err(&p);
    assert!(msg.contains("truncated"), "{msg}");
}
