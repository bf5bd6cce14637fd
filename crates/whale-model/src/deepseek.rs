//! The DeepSeek-V2/V3 transformer: MLA attention (naive and absorbed), dense SwiGLU and
//! DeepSeekMoE layers. Mirrors DeepSeek's `inference/model.py` (`MLA`, `Gate`, `MoE`,
//! `Block`, `Transformer`) and transformers' `modeling_deepseek_v3.py`.
//!
//! Letters in shape comments: `t` tokens in this step, `T` cached positions after it,
//! `d` hidden size, `h` heads, `c` kv_lora_rank, `r` rope dim, `n` nope dim, `v` value
//! dim, `e` routed experts.

use std::path::Path;

use rayon::prelude::*;
use whale_tensor::ops::{axpy, rms_norm_rows, sigmoid, softmax, swiglu};
use whale_tensor::{
    attend_rows, matmul, matmul_heads, matmul_rows, weighted_rows, Isa, QuantType, Rows, Weight,
    WeightData,
};

use crate::cache::{CacheType, LatentCache};
use crate::checkpoint::{Checkpoint, TensorSource, WeightLoader};
use crate::config::{Config, ScoringFunc, TopkMethod};
use crate::error::{ModelError, Result};
use crate::gguf::GgufCheckpoint;
use crate::rope::Rope;

/// eps of `q_a_layernorm` and `kv_a_layernorm`: transformers and the hub code build
/// them with the default 1e-6 whatever `rms_norm_eps` says (SPEC §7.1).
const LATENT_NORM_EPS: f32 = 1e-6;

/// Query vectors (tokens × heads) up to which absorbed attention runs in one pass over the
/// cache ([`attend_rows`], decode and small batches): each row read once, while the weighted sums
/// of that many queries still fit in L1/L2. Longer blocks score every visible row first and
/// share each row read among more queries.
const SINGLE_PASS_QUERIES: usize = 64;

/// How MLA attends (SPEC §3.3). Every form reads the same latent cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MlaImpl {
    /// Decompress per-head keys and values from the latent (`kv_b_proj`) every step.
    Naive,
    /// Fold `W_UK` into the query and `W_UV` into the output; attend in latent space.
    Absorbed,
    /// Per step, whichever of the two needs fewer multiply-adds (ik_llama.cpp's `mla = 3`):
    /// absorbed for decode and short chunks over a long cache, decompressed for prefill,
    /// where decompressing every cached row once is cheaper than attending `c + r` wide.
    Auto,
}

impl MlaImpl {
    pub const ALL: [MlaImpl; 3] = [MlaImpl::Naive, MlaImpl::Absorbed, MlaImpl::Auto];
}

impl std::str::FromStr for MlaImpl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "naive" => Ok(MlaImpl::Naive),
            "absorbed" | "absorb" => Ok(MlaImpl::Absorbed),
            "auto" => Ok(MlaImpl::Auto),
            _ => Err(format!(
                "unknown MLA form {s:?} (expected naive, absorbed or auto)"
            )),
        }
    }
}

/// MLA sizes in the letters of the shape comments: heads, nope / rope / value head dims,
/// latent rank, query-key head dim (`n + r`) and cached row width (`c + r`).
#[derive(Clone, Copy)]
struct MlaDims {
    h: usize,
    nd: usize,
    rd: usize,
    vd: usize,
    cd: usize,
    qk: usize,
    ld: usize,
}

impl MlaDims {
    fn of(c: &Config) -> MlaDims {
        let (nd, rd, cd) = (c.qk_nope_head_dim, c.qk_rope_head_dim, c.kv_lora_rank);
        MlaDims {
            h: c.num_attention_heads,
            nd,
            rd,
            vd: c.v_head_dim,
            cd,
            qk: nd + rd,
            ld: cd + rd,
        }
    }
}

impl MlaDims {
    /// Whether `s` query tokens over `total` cached rows (the last `s` of them new) cost fewer
    /// multiply-adds decompressed (`kv_b` over every row, then attention `n + r` wide and
    /// values `v` wide) than absorbed (`W_UK`/`W_UV` per query, attention `c + r` wide and
    /// values `c` wide). Causal: a query sees on average `total − s/2` rows.
    fn decompressing_is_cheaper(&self, s: usize, total: usize) -> bool {
        let MlaDims {
            h,
            nd,
            vd,
            cd,
            qk,
            ld,
            ..
        } = *self;
        let seen = total - s / 2;
        let naive = total * h * (nd + vd) * cd + s * h * seen * (qk + vd);
        let absorbed = s * h * (nd + vd) * cd + s * h * seen * (ld + cd);
        naive < absorbed
    }
}

/// Query projection: plain, or low-rank with a norm in between (q-LoRA).
enum QProj {
    Plain(Weight),
    Lora {
        a: Weight,
        norm: Vec<f32>,
        b: Weight,
    },
}

struct Mla {
    q: QProj,
    /// `[c + r, d]`: latent and shared rope key.
    kv_a: Weight,
    kv_norm: Vec<f32>,
    /// `[h·(n + v), c]`: per head `W_UK` rows then `W_UV` rows.
    kv_b: Weight,
    /// `kv_b` split per head for the absorbed form.
    absorbed: Option<Absorbed>,
    o: Weight,
}

/// `kv_b`'s two halves, each head's matrix stacked one above the next, as the absorbed form's
/// per-head matmuls ([`matmul_heads`]) read them.
struct Absorbed {
    /// `W_UKᵀ` per head, `[h·c, n]`: `q_nope · W_UK` (the query taken into latent space) is a
    /// matmul against head g's rows `g·c..(g + 1)·c`.
    uk_t: Weight,
    /// `W_UV` per head, `[h·v, c]`: maps the attended latent back to the head's value.
    uv: Weight,
}

impl Absorbed {
    /// Float and FP8 `kv_b` stay f32 (exact: what the golden tests compare). A block-quantized one
    /// (GGUF files, `--quant`) is re-encoded as Q8_0, whose rounding is far below the source
    /// format's: decode reads these two halves for every token, and in f32 they were 5–8% of
    /// a quantized model's bytes per token.
    fn new(kv_b: &Weight, h: usize, nd: usize, vd: usize) -> Absorbed {
        let dense = kv_b.to_f32(); // [h·(n + v), c]
        let cd = kv_b.cols;
        let float = matches!(
            kv_b.data,
            WeightData::F32(_)
                | WeightData::F16(_)
                | WeightData::Bf16(_)
                | WeightData::Fp8Block { .. }
        );
        // `rows` per head; interleaving needs each head's rows to be whole row groups.
        let store = |rows: usize, cols: usize, values: Vec<f32>| {
            let w = Weight::from_f32(h * rows, cols, values);
            if float || !QuantType::Q8_0.fits(cols) {
                return w;
            }
            let q = w
                .quantize(QuantType::Q8_0)
                .expect("rows are whole Q8_0 blocks (checked)");
            if rows.is_multiple_of(whale_tensor::quant::ROWS) {
                q.for_isa(Isa::detect())
            } else {
                q
            }
        };
        let head = |i: usize| &dense[i * (nd + vd) * cd..(i + 1) * (nd + vd) * cd];
        let uk_t = (0..h)
            .flat_map(|i| {
                let uk = &head(i)[..nd * cd]; // [n, c]
                (0..cd * nd).map(move |k| uk[(k % nd) * cd + k / nd])
            })
            .collect();
        let uv = (0..h).flat_map(|i| &head(i)[nd * cd..]).copied().collect();
        let (uk_t, uv) = (store(cd, nd, uk_t), store(vd, cd, uv));
        Absorbed { uk_t, uv }
    }
}

/// SwiGLU MLP: `down(silu(gate·x) ⊙ up·x)`.
struct Mlp {
    gate_up: GateUp,
    down: Weight,
}

/// An MLP's gate and up projections (`[width, d]` each).
enum GateUp {
    /// Stacked `[2·width, d]`, gate's rows first: one matmul for both (one pass over the
    /// activations and one parallel region instead of two; Q4_K_M prefill +1–2%).
    Stacked(Weight),
    /// Stored in different formats, so computed apart.
    Apart { gate: Weight, up: Weight },
}

struct Moe {
    /// `[e, d]` router (`mlp.gate.weight`), applied in f32.
    router: Weight,
    /// `e_score_correction_bias`: shifts selection only (noaux_tc).
    bias: Option<Vec<f32>>,
    experts: Vec<Mlp>,
    shared: Option<Mlp>,
}

enum Ffn {
    Dense(Mlp),
    Moe(Moe),
}

struct Block {
    attn_norm: Vec<f32>,
    attn: Mla,
    ffn_norm: Vec<f32>,
    ffn: Ffn,
}

/// One sequence's share of a batched step: new tokens, the sequence's cache, and which
/// positions need logits.
pub struct Step<'a> {
    pub tokens: &'a [u32],
    pub cache: &'a mut LatentCache,
    pub logits: Logits,
}

/// How to load a model: the MLA form and an optional weight re-encoding (`--quant`).
#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    pub mla: MlaImpl,
    /// Re-encode every projection (not the router, which stays f32) to this type.
    pub quant: Option<whale_tensor::QuantType>,
    /// How [`Model::new_cache`] stores the latent cache.
    pub cache: CacheType,
}

/// Which positions of a step need logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    All,
    Last,
}

pub struct Model {
    pub config: Config,
    pub mla: MlaImpl,
    /// How new latent caches store their rows.
    pub cache_type: CacheType,
    embed: Weight,
    layers: Vec<Block>,
    norm: Vec<f32>,
    head: Weight,
    rope: Rope,
    softmax_scale: f32,
    /// Checkpoint tensors deliberately not used (the MTP layer).
    pub ignored_tensors: Vec<String>,
}

impl Model {
    /// Loads a model folder (`config.json` and safetensors weights) or a GGUF file.
    pub fn load(path: &Path, mla: MlaImpl) -> Result<Model> {
        Model::load_with(
            path,
            &LoadOptions {
                mla,
                quant: None,
                cache: CacheType::F32,
            },
        )
    }

    /// [`Model::load`] with a `--quant` re-encoding. A path that is a file (or is named
    /// `*.gguf`) is read as GGUF.
    pub fn load_with(path: &Path, opts: &LoadOptions) -> Result<Model> {
        if path.is_file() || path.extension().is_some_and(|e| e == "gguf") {
            let gguf = GgufCheckpoint::open(path)?;
            return Model::from_source(gguf.config().clone(), &gguf, opts);
        }
        let config = Config::from_file(&path.join("config.json"))?;
        let ckpt = Checkpoint::open(path)?;
        Model::from_source(config, &ckpt, opts)
    }

    pub fn from_checkpoint(config: Config, ckpt: &Checkpoint, opts: &LoadOptions) -> Result<Model> {
        Model::from_source(config, ckpt, opts)
    }

    /// Builds the model from tensors named as in Hugging Face checkpoints; a GGUF source
    /// translates the names (see [`crate::gguf`]).
    pub fn from_source<'a>(
        config: Config,
        source: impl Into<TensorSource<'a>>,
        opts: &LoadOptions,
    ) -> Result<Model> {
        let source = source.into();
        let c = &config;
        let mla = opts.mla;
        let mut w = WeightLoader::new(source, c.fp8_block).with_quant(opts.quant);
        let (d, h) = (c.hidden_size, c.num_attention_heads);
        let embed = w.projection("model.embed_tokens.weight", c.vocab_size, d);
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let q = match c.q_lora_rank {
                None => QProj::Plain(w.projection(
                    &format!("{p}.self_attn.q_proj.weight"),
                    h * c.qk_head_dim(),
                    d,
                )),
                Some(rank) => QProj::Lora {
                    a: w.projection(&format!("{p}.self_attn.q_a_proj.weight"), rank, d),
                    norm: w.vector(&format!("{p}.self_attn.q_a_layernorm.weight"), rank),
                    b: w.projection(
                        &format!("{p}.self_attn.q_b_proj.weight"),
                        h * c.qk_head_dim(),
                        rank,
                    ),
                },
            };
            let kv_b = w.projection(
                &format!("{p}.self_attn.kv_b_proj.weight"),
                h * (c.qk_nope_head_dim + c.v_head_dim),
                c.kv_lora_rank,
            );
            let attn = Mla {
                q,
                kv_a: w.projection(
                    &format!("{p}.self_attn.kv_a_proj_with_mqa.weight"),
                    c.latent_dim(),
                    d,
                ),
                kv_norm: w.vector(
                    &format!("{p}.self_attn.kv_a_layernorm.weight"),
                    c.kv_lora_rank,
                ),
                absorbed: (mla != MlaImpl::Naive)
                    .then(|| Absorbed::new(&kv_b, h, c.qk_nope_head_dim, c.v_head_dim)),
                kv_b,
                o: w.projection(&format!("{p}.self_attn.o_proj.weight"), d, h * c.v_head_dim),
            };
            let mlp = |w: &mut WeightLoader, prefix: &str, width: usize| {
                let (gate, up) = (
                    format!("{prefix}.gate_proj.weight"),
                    format!("{prefix}.up_proj.weight"),
                );
                let gate_up = match w.stacked_projections(&[&gate, &up], width, d) {
                    Ok(stacked) => GateUp::Stacked(stacked),
                    Err(apart) => {
                        let [gate, up] = <[Weight; 2]>::try_from(apart).expect("two projections");
                        GateUp::Apart { gate, up }
                    }
                };
                Mlp {
                    gate_up,
                    down: w.projection(&format!("{prefix}.down_proj.weight"), d, width),
                }
            };
            let ffn = match c.moe.as_ref().filter(|_| c.is_moe_layer(i)) {
                None => Ffn::Dense(mlp(&mut w, &format!("{p}.mlp"), c.intermediate_size)),
                Some(m) => Ffn::Moe(Moe {
                    router: w.matrix(&format!("{p}.mlp.gate.weight"), m.n_routed_experts, d),
                    bias: (m.topk_method == TopkMethod::NoauxTc).then(|| {
                        w.vector(
                            &format!("{p}.mlp.gate.e_score_correction_bias"),
                            m.n_routed_experts,
                        )
                    }),
                    experts: (0..m.n_routed_experts)
                        .map(|e| {
                            mlp(
                                &mut w,
                                &format!("{p}.mlp.experts.{e}"),
                                m.moe_intermediate_size,
                            )
                        })
                        .collect(),
                    shared: (m.n_shared_experts > 0).then(|| {
                        mlp(
                            &mut w,
                            &format!("{p}.mlp.shared_experts"),
                            m.n_shared_experts * m.moe_intermediate_size,
                        )
                    }),
                }),
            };
            layers.push(Block {
                attn_norm: w.vector(&format!("{p}.input_layernorm.weight"), d),
                attn,
                ffn_norm: w.vector(&format!("{p}.post_attention_layernorm.weight"), d),
                ffn,
            });
        }
        let norm = w.vector("model.norm.weight", d);
        let head_name = if c.tie_word_embeddings && !source.contains("lm_head.weight") {
            "model.embed_tokens.weight"
        } else {
            "lm_head.weight"
        };
        let head = w.output_projection(head_name, c.vocab_size, d);
        let unused = w.finish()?;
        // The MTP modules (layers L..L+num_nextn_predict_layers) are accepted and ignored;
        // anything else unused is too, as transformers does with unexpected keys. Names are
        // as stored (GGUF names for a GGUF file).
        let ignored_tensors = unused;
        Ok(Model {
            rope: Rope::new(c),
            softmax_scale: c.softmax_scale(),
            embed,
            layers,
            norm,
            head,
            mla,
            cache_type: opts.cache,
            ignored_tensors,
            config,
        })
    }

    /// Weight bytes one decoded token reads: every matrix except the routed experts it is
    /// not sent to (`num_experts_per_tok` average experts per MoE layer), and one embedding row.
    pub fn weight_bytes_per_token(&self) -> usize {
        self.weight_bytes_touched(true)
    }

    /// Bytes of all weights held in memory.
    pub fn weight_bytes(&self) -> usize {
        self.weight_bytes_touched(false)
    }

    fn weight_bytes_touched(&self, one_token: bool) -> usize {
        let mlp = |m: &Mlp| {
            let gate_up = match &m.gate_up {
                GateUp::Stacked(w) => w.storage_bytes(),
                GateUp::Apart { gate, up } => gate.storage_bytes() + up.storage_bytes(),
            };
            gate_up + m.down.storage_bytes()
        };
        let embed = self.embed.storage_bytes() / if one_token { self.embed.rows.max(1) } else { 1 };
        let mut bytes = self.head.storage_bytes() + embed;
        for l in &self.layers {
            let a = &l.attn;
            bytes += match &a.q {
                QProj::Plain(w) => w.storage_bytes(),
                QProj::Lora { a, b, .. } => a.storage_bytes() + b.storage_bytes(),
            };
            bytes += a.kv_a.storage_bytes() + a.kv_b.storage_bytes() + a.o.storage_bytes();
            bytes += match &l.ffn {
                Ffn::Dense(m) => mlp(m),
                Ffn::Moe(m) => {
                    let all: usize = m.experts.iter().map(mlp).sum();
                    let experts = if one_token {
                        let k = self
                            .config
                            .moe
                            .as_ref()
                            .map_or(0, |c| c.num_experts_per_tok);
                        k * all / m.experts.len().max(1)
                    } else {
                        all
                    };
                    m.router.storage_bytes() + m.shared.as_ref().map_or(0, mlp) + experts
                }
            };
        }
        bytes
    }

    /// A fresh latent cache holding up to `capacity` positions, stored as loaded
    /// ([`LoadOptions::cache`]).
    pub fn new_cache(&self, capacity: usize) -> LatentCache {
        LatentCache::with_type(&self.config, capacity, self.cache_type)
    }

    /// Runs `tokens` at positions `cache.len()..`, appends their latents to the cache and
    /// returns logits `[t, vocab]` (or `[1, vocab]` for [`Logits::Last`]).
    pub fn forward(
        &self,
        tokens: &[u32],
        cache: &mut LatentCache,
        want: Logits,
    ) -> Result<Vec<f32>> {
        let mut steps = [Step {
            tokens,
            cache,
            logits: want,
        }];
        Ok(self.forward_batch(&mut steps)?.pop().unwrap_or_default())
    }

    /// One step of several independent sequences at once. Their tokens go through every
    /// projection and expert together, so concurrent sequences share each weight read;
    /// attention stays per sequence, over its own cache. Returns each step's logits.
    pub fn forward_batch(&self, steps: &mut [Step]) -> Result<Vec<Vec<f32>>> {
        whale_tensor::on_pool(|| self.forward_on_pool(steps))
    }

    fn forward_on_pool(&self, steps: &mut [Step]) -> Result<Vec<Vec<f32>>> {
        let c = &self.config;
        for step in steps.iter() {
            if let Some((i, &id)) = step
                .tokens
                .iter()
                .enumerate()
                .find(|(_, &id)| id as usize >= c.vocab_size)
            {
                return Err(ModelError::Input(format!(
                    "token id {id} at position {i} is out of range: vocab_size is {}",
                    c.vocab_size
                )));
            }
            if step.cache.len() + step.tokens.len() > step.cache.capacity() {
                return Err(ModelError::Input(format!(
                    "{} tokens after {} cached exceed the context of {} tokens",
                    step.tokens.len(),
                    step.cache.len(),
                    step.cache.capacity()
                )));
            }
        }
        let d = c.hidden_size;
        let t: usize = steps.iter().map(|s| s.tokens.len()).sum(); // all tokens of the batch
        let mut hidden = vec![0.0f32; t * d]; // [t, d]
        for (row, &id) in hidden
            .chunks_exact_mut(d)
            .zip(steps.iter().flat_map(|s| s.tokens))
        {
            self.embed.row_into(id as usize, row);
        }
        let mut x = vec![0.0f32; t * d];
        for (i, layer) in self.layers.iter().enumerate() {
            x.copy_from_slice(&hidden);
            rms_norm_rows(&mut x, &layer.attn_norm, c.rms_norm_eps);
            let attn = self.attention(i, &layer.attn, &x, steps); // [t, d]
            axpy(&mut hidden, 1.0, &attn);
            x.copy_from_slice(&hidden);
            rms_norm_rows(&mut x, &layer.ffn_norm, c.rms_norm_eps);
            let y = match &layer.ffn {
                Ffn::Dense(mlp) => mlp.forward(&x, t),
                Ffn::Moe(moe) => self.moe(moe, &x, t),
            };
            axpy(&mut hidden, 1.0, &y);
        }
        // Rows that need logits, normalised and projected in one matmul.
        let mut rows = Vec::new();
        let mut counts = Vec::with_capacity(steps.len());
        let mut start = 0;
        for step in steps.iter_mut() {
            let n = step.tokens.len();
            step.cache.commit(n);
            let keep = match step.logits {
                Logits::All => start..start + n,
                Logits::Last => (start + n).saturating_sub(1).max(start)..start + n,
            };
            counts.push(keep.len());
            rows.extend_from_slice(&hidden[keep.start * d..keep.end * d]);
            start += n;
        }
        rms_norm_rows(&mut rows, &self.norm, c.rms_norm_eps);
        let n = rows.len() / d;
        let mut logits = vec![0.0f32; n * c.vocab_size];
        matmul(&mut logits, &rows, &self.head, n);
        let mut out = Vec::with_capacity(steps.len());
        let mut rest = &logits[..];
        for k in counts {
            let (mine, tail) = rest.split_at(k * c.vocab_size);
            out.push(mine.to_vec());
            rest = tail;
        }
        Ok(out)
    }

    /// Multi-head latent attention for one layer over a batch of sequence steps; appends
    /// each step's latents to its cache.
    fn attention(&self, layer: usize, a: &Mla, x: &[f32], steps: &mut [Step]) -> Vec<f32> {
        let c = &self.config;
        let t = x.len() / c.hidden_size;
        let MlaDims {
            h,
            nd,
            rd: _,
            vd,
            cd,
            qk,
            ld,
        } = MlaDims::of(c);

        // Query: [t, h, n + r]; latent: [t, c + r].
        let mut q = vec![0.0f32; t * h * qk];
        match &a.q {
            QProj::Plain(wq) => matmul(&mut q, x, wq, t),
            QProj::Lora { a: wa, norm, b: wb } => {
                let mut cq = vec![0.0f32; t * wa.rows]; // [t, q_lora_rank]
                matmul(&mut cq, x, wa, t);
                rms_norm_rows(&mut cq, norm, LATENT_NORM_EPS);
                matmul(&mut q, &cq, wb, t);
            }
        }
        let mut kv = vec![0.0f32; t * ld];
        matmul(&mut kv, x, &a.kv_a, t);

        // Per step: rotate, cache the latents, and attend at once in the naive form; steps in
        // the absorbed form are gathered so that each head's W_UK and W_UV products run once
        // over all their tokens (a server batch of decode steps reads those weights once).
        let mut out = vec![0.0f32; t * h * vd]; // [t, h, v]
        let mut absorbed = Vec::new(); // (step, first token in the batch, tokens)
        let mut start = 0;
        for (i, step) in steps.iter_mut().enumerate() {
            let n = step.tokens.len();
            let p0 = step.cache.len();
            let q = &mut q[start * h * qk..(start + n) * h * qk];
            for (s, q_s) in q.chunks_exact_mut(h * qk).enumerate() {
                for q_h in q_s.chunks_exact_mut(qk) {
                    self.rope.apply(&mut q_h[nd..], p0 + s);
                }
            }
            // Cache the normalised latent c_KV and the rotated shared key k_pe.
            let kv = &mut kv[start * ld..(start + n) * ld];
            for (s, row) in kv.chunks_exact_mut(ld).enumerate() {
                let (lat, pe) = row.split_at_mut(cd);
                rms_norm_rows(lat, &a.kv_norm, LATENT_NORM_EPS);
                self.rope.apply(pe, p0 + s);
            }
            step.cache.append(layer, kv);
            let naive = match self.mla {
                MlaImpl::Naive => true,
                MlaImpl::Absorbed => false,
                MlaImpl::Auto => MlaDims::of(c).decompressing_is_cheaper(n, p0 + n),
            };
            if naive {
                let cached = step.cache.rows(layer, p0 + n); // [T, c + r]
                let out = &mut out[start * h * vd..(start + n) * h * vd];
                self.attend_naive(a, q, cached, p0, out);
            } else {
                absorbed.push((i, start, n));
            }
            start += n;
        }
        if !absorbed.is_empty() {
            let ab = a
                .absorbed
                .as_ref()
                .expect("absorbed MLA keeps kv_b per head");
            let tokens: usize = absorbed.iter().map(|&(_, _, n)| n).sum();
            let q_abs = concat(
                absorbed
                    .iter()
                    .map(|&(_, s0, n)| &q[s0 * h * qk..(s0 + n) * h * qk]),
            );
            let q_lat = self.absorb_queries(ab, &q_abs, tokens); // [tokens, h, c + r]

            // Each step over its own cache; steps side by side (a decode step's pass over a
            // short cache is one task).
            let mut parts = Vec::with_capacity(absorbed.len());
            let mut k = 0;
            for &(i, _, n) in &absorbed {
                let p0 = steps[i].cache.len();
                parts.push((k, n, p0, steps[i].cache.rows(layer, p0 + n)));
                k += n;
            }
            let o_parts: Vec<Vec<f32>> = parts
                .par_iter()
                .map(|&(k, n, p0, cached)| {
                    let mut o = vec![0.0f32; n * h * cd];
                    self.latent_attention(&q_lat[k * h * ld..(k + n) * h * ld], cached, p0, &mut o);
                    o
                })
                .collect();
            let o_lat = o_parts.concat(); // [tokens, h, c]
            let o = self.expand_values(ab, &o_lat, tokens); // [tokens, h, v]
            let mut k = 0;
            for &(_, s0, n) in &absorbed {
                out[s0 * h * vd..(s0 + n) * h * vd]
                    .copy_from_slice(&o[k * h * vd..(k + n) * h * vd]);
                k += n;
            }
        }
        let mut y = vec![0.0f32; t * c.hidden_size];
        matmul(&mut y, &out, &a.o, t);
        y
    }

    /// Naive MLA: decompress per-head keys and values from every cached latent, then per head
    /// one matmul for the scores and one weighted sum of the values.
    /// `q`: [s, h, n + r] of one sequence at positions `p0..`; `out`: [s, h, v].
    fn attend_naive(&self, a: &Mla, q: &[f32], cached: Rows, p0: usize, out: &mut [f32]) {
        let c = &self.config;
        let MlaDims {
            h,
            nd,
            rd,
            vd,
            cd,
            qk,
            ld,
        } = MlaDims::of(c);
        let n = q.len() / (h * qk); // query tokens
        let total = p0 + n; // T
        let decoded;
        let cached = match cached.as_f32() {
            Some(rows) => rows,
            None => {
                decoded = {
                    let mut v = vec![0.0f32; total * ld];
                    cached.decode(0, total, ld, &mut v);
                    v
                };
                &decoded[..]
            }
        };
        let latents = concat(cached.chunks_exact(ld).map(|r| &r[..cd]));
        let mut kvb = vec![0.0f32; total * h * (nd + vd)]; // [T, h, n + v]
        matmul(&mut kvb, &latents, &a.kv_b, total);
        let per_head: Vec<Vec<f32>> = (0..h)
            .into_par_iter()
            .map(|head| {
                // Keys [T, n + r]: the head's decompressed k_nope and the shared k_pe.
                let keys = concat((0..total).flat_map(|j| {
                    let k = &kvb[(j * h + head) * (nd + vd)..][..nd];
                    [k, &cached[j * ld + cd..][..rd]]
                }));
                let values = &kvb[head * (nd + vd) + nd..]; // row j at j·h·(n + v)
                let mut o = vec![0.0f32; n * vd]; // [s, v]

                // Query tokens in blocks: bounded scratch, causal rows only.
                let block = ((1 << 20) / total.max(1)).clamp(1, 64);
                for s0 in (0..n).step_by(block) {
                    let s1 = (s0 + block).min(n);
                    let visible_all = p0 + s1;
                    let qh = concat((s0..s1).map(|s| &q[(s * h + head) * qk..][..qk]));
                    let mut probs = vec![0.0f32; (s1 - s0) * visible_all];
                    let keys = Rows::f32(&keys, qk);
                    matmul_rows(&mut probs, &qh, keys, visible_all, qk, s1 - s0);
                    for (i, p) in probs.chunks_exact_mut(visible_all).enumerate() {
                        causal_softmax(p, p0 + s0 + i + 1, self.softmax_scale);
                    }
                    let o = &mut o[s0 * vd..s1 * vd];
                    let values = Rows::f32(values, h * (nd + vd));
                    weighted_rows(o, &probs, values, visible_all, vd);
                }
                o
            })
            .collect();
        for (idx, o) in out.chunks_exact_mut(vd).enumerate() {
            let (s, head) = (idx / h, idx % h);
            o.copy_from_slice(&per_head[head][s * vd..][..vd]);
        }
    }

    /// Absorbed MLA, step 1: each query taken into latent space, `[t, h, c + r]` =
    /// (`W_UKᵀ·q_nope`, `q_pe`), one matmul per head over all `t` tokens. With the latents as
    /// keys and values the attention is then MQA of width c + r ([`Self::latent_attention`]), and
    /// `W_UV` maps the result back per head ([`Self::expand_values`]).
    fn absorb_queries(&self, ab: &Absorbed, q: &[f32], t: usize) -> Vec<f32> {
        let MlaDims {
            h, nd, cd, qk, ld, ..
        } = MlaDims::of(&self.config);
        let q_nope = concat(q.chunks_exact(qk).map(|q| &q[..nd]));
        let mut lat = vec![0.0f32; t * h * cd]; // [t, h, c]
        matmul_heads(&mut lat, &q_nope, &ab.uk_t, h, t);
        let mut q_lat = vec![0.0f32; t * h * ld];
        for ((q_l, l), q) in q_lat
            .chunks_exact_mut(ld)
            .zip(lat.chunks_exact(cd))
            .zip(q.chunks_exact(qk))
        {
            q_l[..cd].copy_from_slice(l);
            q_l[cd..].copy_from_slice(&q[nd..]);
        }
        q_lat
    }

    /// Absorbed MLA, step 2: one sequence's queries in latent space (`[s, h, c + r]` at positions
    /// `p0..`) attend over its cached latents; `o_lat`: `[s, h, c]`.
    fn latent_attention(&self, q_lat: &[f32], cached: Rows, p0: usize, o_lat: &mut [f32]) {
        let MlaDims { h, cd, ld, .. } = MlaDims::of(&self.config);
        let n = q_lat.len() / (h * ld); // query tokens

        // Query tokens in blocks of at most 32: bounded scratch (≤ 4M scores, 16 MiB) and,
        // under the causal mask, each block scores only the rows its last token can see (in a
        // 512-token prefill, about half the score work of one block; 32 tokens × h heads are
        // still enough query rows for the matmul's tiles).
        let block = ((4 << 20) / (h * (p0 + n)).max(1)).clamp(1, 32);
        for s0 in (0..n).step_by(block) {
            let s1 = (s0 + block).min(n);
            let rows = (s1 - s0) * h; // query vectors: [s, h]
            let total = p0 + s1; // rows of the cache visible to this block
            let q = &q_lat[s0 * h * ld..s1 * h * ld];
            let o = &mut o_lat[s0 * h * cd..s1 * h * cd];
            if rows <= SINGLE_PASS_QUERIES {
                // Decode: one pass over the cache with an online softmax.
                let visible: Vec<usize> = (0..rows).map(|idx| p0 + s0 + idx / h + 1).collect();
                attend_rows(o, q, cached, &visible, ld, cd, self.softmax_scale);
                continue;
            }
            let mut probs = vec![0.0f32; rows * total]; // [s·h, T]
            matmul_rows(&mut probs, q, cached, total, ld, rows);
            probs
                .par_chunks_mut(total)
                .enumerate()
                .for_each(|(idx, p)| causal_softmax(p, p0 + s0 + idx / h + 1, self.softmax_scale));
            weighted_rows(o, &probs, cached, total, cd); // Σ p·c_KV
        }
    }

    /// Absorbed MLA, step 3: the attended latents `[t, h, c]` back to each head's values
    /// `[t, h, v]`, each head's own matrix, all heads in one batched matmul.
    fn expand_values(&self, ab: &Absorbed, o_lat: &[f32], t: usize) -> Vec<f32> {
        let MlaDims { h, vd, .. } = MlaDims::of(&self.config);
        let mut out = vec![0.0f32; t * h * vd];
        matmul_heads(&mut out, o_lat, &ab.uv, h, t);
        out
    }

    /// DeepSeekMoE: routed experts weighted by the router plus the shared experts.
    fn moe(&self, m: &Moe, x: &[f32], t: usize) -> Vec<f32> {
        let cfg = self
            .config
            .moe
            .as_ref()
            .expect("MoE layer without MoE config");
        let (d, e) = (self.config.hidden_size, cfg.n_routed_experts);
        let mut logits = vec![0.0f32; t * e]; // [t, e], f32 router
        matmul(&mut logits, x, &m.router, t);
        // Tokens per expert with their weights, so each expert runs once per step.
        let mut assigned: Vec<Vec<(usize, f32)>> = vec![Vec::new(); e];
        for (s, row) in logits.chunks_exact(e).enumerate() {
            for (expert, weight) in route(cfg, row, m.bias.as_deref()) {
                assigned[expert].push((s, weight));
            }
        }
        // The active experts and the shared ones run side by side (each matmul still splits
        // its rows): in decode every expert is small, and one parallel region per layer
        // instead of one per projection saves most of the threads' synchronisation.
        let active: Vec<(usize, &[(usize, f32)])> = assigned
            .iter()
            .enumerate()
            .filter(|(_, v)| !v.is_empty())
            .map(|(e, v)| (e, v.as_slice()))
            .collect();
        let (outs, shared) = rayon::join(
            || {
                active
                    .par_iter()
                    .map(|&(expert, tokens)| {
                        let xs = concat(tokens.iter().map(|&(s, _)| &x[s * d..(s + 1) * d]));
                        m.experts[expert].forward(&xs, tokens.len())
                    })
                    .collect::<Vec<_>>()
            },
            || m.shared.as_ref().map(|shared| shared.forward(x, t)),
        );
        // Summed in expert order, then the shared experts, whatever order they ran in.
        let mut y = vec![0.0f32; t * d];
        for (&(_, tokens), out) in active.iter().zip(&outs) {
            for (&(s, weight), o) in tokens.iter().zip(out.chunks_exact(d)) {
                axpy(&mut y[s * d..(s + 1) * d], weight, o);
            }
        }
        if let Some(shared) = shared {
            axpy(&mut y, 1.0, &shared);
        }
        y
    }
}

impl Mlp {
    fn forward(&self, x: &[f32], t: usize) -> Vec<f32> {
        let width = self.down.cols;
        let g = match &self.gate_up {
            GateUp::Stacked(gate_up) => {
                // Token s's row holds its gate then its up values; gate them in place and
                // move the result to row s of a [t, width] matrix (it never overtakes a row
                // not yet read: 2·s·width ≥ s·width).
                let mut h = vec![0.0f32; t * 2 * width];
                matmul(&mut h, x, gate_up, t);
                for s in 0..t {
                    let (g, u) = h[2 * s * width..2 * (s + 1) * width].split_at_mut(width);
                    swiglu(g, u);
                    h.copy_within(2 * s * width..(2 * s + 1) * width, s * width);
                }
                h.truncate(t * width);
                h
            }
            GateUp::Apart { gate, up } => {
                let mut g = vec![0.0f32; t * width];
                let mut u = vec![0.0f32; t * width];
                matmul(&mut g, x, gate, t);
                matmul(&mut u, x, up, t);
                swiglu(&mut g, &u);
                g
            }
        };
        let mut y = vec![0.0f32; t * self.down.rows];
        matmul(&mut y, &g, &self.down, t);
        y
    }
}

/// `parts` one after another, copied a slice at a time (a flattened iterator of floats copied
/// them one by one: 1.5% of a long prefill).
fn concat<'a>(parts: impl Iterator<Item = &'a [f32]> + Clone) -> Vec<f32> {
    let mut out = Vec::with_capacity(parts.clone().map(<[f32]>::len).sum());
    for part in parts {
        out.extend_from_slice(part);
    }
    out
}

/// One query's scores over the cache turned into probabilities in place: the first `visible`
/// (causal: keys `0..=position`) scaled and softmaxed, the rest zero.
fn causal_softmax(p: &mut [f32], visible: usize, scale: f32) {
    let (p, masked) = p.split_at_mut(visible);
    for v in p.iter_mut() {
        *v *= scale;
    }
    softmax(p);
    masked.fill(0.0);
}

/// Chooses `num_experts_per_tok` experts for one token from its router logits and returns
/// `(expert, weight)` pairs (SPEC §5.2–5.3, pitfalls §10.3–10.5).
pub fn route(cfg: &crate::config::Moe, logits: &[f32], bias: Option<&[f32]>) -> Vec<(usize, f32)> {
    let e = logits.len();
    let mut scores = logits.to_vec();
    match cfg.scoring_func {
        ScoringFunc::Softmax => softmax(&mut scores),
        ScoringFunc::Sigmoid => scores.iter_mut().for_each(|s| *s = sigmoid(*s)),
    }
    // Selection scores: bias-corrected for noaux_tc; the weights use the plain scores.
    let mut choice = scores.clone();
    if let (TopkMethod::NoauxTc, Some(b)) = (cfg.topk_method, bias) {
        choice.iter_mut().zip(b).for_each(|(c, b)| *c += b);
    }
    if cfg.topk_method != TopkMethod::Greedy && cfg.n_group > 1 {
        let per = e / cfg.n_group;
        let group_score: Vec<f32> = choice
            .chunks_exact(per)
            .map(|g| match cfg.topk_method {
                // V2: the group's best expert; V3: its two best, summed.
                TopkMethod::GroupLimitedGreedy => {
                    g.iter().copied().fold(f32::NEG_INFINITY, f32::max)
                }
                _ => top_k(g, 2).iter().map(|&i| g[i]).sum(),
            })
            .collect();
        let keep = top_k(&group_score, cfg.topk_group);
        for (gi, g) in choice.chunks_exact_mut(per).enumerate() {
            if !keep.contains(&gi) {
                g.fill(f32::NEG_INFINITY);
            }
        }
    }
    let chosen = top_k(&choice, cfg.num_experts_per_tok);
    let mut weights: Vec<f32> = chosen.iter().map(|&i| scores[i]).collect();
    // transformers' V2 (softmax) router never renormalises; V3's does when asked.
    if cfg.norm_topk_prob && cfg.scoring_func == ScoringFunc::Sigmoid {
        let sum: f32 = weights.iter().sum::<f32>() + 1e-20;
        weights.iter_mut().for_each(|w| *w /= sum);
    }
    chosen
        .into_iter()
        .zip(weights)
        .map(|(i, w)| (i, w * cfg.routed_scaling_factor))
        .collect()
}

/// Indices of the `k` largest values (ties broken towards the lower index).
fn top_k(values: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    idx.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Moe as MoeCfg;

    /// V2-Lite's MLA sizes: decode and short chunks over a long cache stay absorbed, a prefill
    /// from an empty or short cache is decompressed.
    #[test]
    fn auto_mla_decompresses_prefill_and_absorbs_decode() {
        let dims = MlaDims {
            h: 16,
            nd: 128,
            rd: 64,
            vd: 128,
            cd: 512,
            qk: 192,
            ld: 576,
        };
        assert!(!dims.decompressing_is_cheaper(1, 2));
        assert!(!dims.decompressing_is_cheaper(1, 4096));
        assert!(!dims.decompressing_is_cheaper(16, 4096));
        assert!(dims.decompressing_is_cheaper(512, 512));
        assert!(dims.decompressing_is_cheaper(64, 64));
        assert!(dims.decompressing_is_cheaper(512, 4096));
    }

    fn cfg(method: TopkMethod, scoring: ScoringFunc, n_group: usize, topk_group: usize) -> MoeCfg {
        MoeCfg {
            n_routed_experts: 8,
            num_experts_per_tok: 2,
            n_shared_experts: 1,
            moe_intermediate_size: 4,
            topk_method: method,
            scoring_func: scoring,
            n_group,
            topk_group,
            norm_topk_prob: true,
            routed_scaling_factor: 2.0,
            first_k_dense_replace: 0,
            moe_layer_freq: 1,
        }
    }

    fn experts(r: &[(usize, f32)]) -> Vec<usize> {
        let mut v: Vec<usize> = r.iter().map(|p| p.0).collect();
        v.sort();
        v
    }

    #[test]
    fn group_limited_ranks_groups_by_their_best_expert() {
        // Groups of 2: {0,1} best 3.0, {2,3} best 2.9 (pair sum larger), {4,5}, {6,7}.
        let logits = [3.0, -5.0, 2.9, 2.8, 0.0, 0.0, 0.0, 0.0];
        let c = cfg(TopkMethod::GroupLimitedGreedy, ScoringFunc::Softmax, 4, 1);
        assert_eq!(experts(&route(&c, &logits, None)), vec![0, 1]);
        // V3's top-2 sum prefers group {2,3}.
        let c = cfg(TopkMethod::NoauxTc, ScoringFunc::Sigmoid, 4, 1);
        assert_eq!(experts(&route(&c, &logits, Some(&[0.0; 8]))), vec![2, 3]);
    }

    #[test]
    fn noaux_bias_selects_but_does_not_weight() {
        let logits = [0.0, 1.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0];
        let mut bias = [0.0f32; 8];
        bias[7] = 10.0;
        let c = cfg(TopkMethod::NoauxTc, ScoringFunc::Sigmoid, 1, 1);
        let r = route(&c, &logits, Some(&bias));
        assert_eq!(experts(&r), vec![1, 7]);
        let (s1, s7) = (sigmoid(1.0), sigmoid(0.0));
        let w7 = r.iter().find(|p| p.0 == 7).unwrap().1;
        assert!((w7 - 2.0 * s7 / (s1 + s7)).abs() < 1e-6);
    }

    #[test]
    fn softmax_router_is_not_renormalised() {
        let logits = [2.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        let c = cfg(TopkMethod::Greedy, ScoringFunc::Softmax, 1, 1);
        let r = route(&c, &logits, None);
        let mut p = logits.to_vec();
        softmax(&mut p);
        assert!((r[0].1 - 2.0 * p[0]).abs() < 1e-6);
    }
}
