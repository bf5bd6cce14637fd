//! Golden tests: whale's logits and greedy tokens against transformers' float32 outputs
//! on the tiny random checkpoints in `fixtures/models` (made by scripts/make_fixtures.py).

use std::path::{Path, PathBuf};

mod common;

use common::{max_abs_diff, read_npy_f32, std_dev};
use whale_model::sampling::argmax;
use whale_model::{Logits, MlaImpl, Model};

/// Logits must agree within this fraction of the reference logits' standard deviation
/// (the bound): both sides compute in f32, so only summation order differs.
const LOGIT_TOL_STD: f32 = 1e-3;

/// Prefill and token-by-token decode run the same dot products in the same order, so
/// they agree far more tightly than whale agrees with PyTorch.
const STEP_TOL_STD: f32 = 1e-5;

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models")
}

/// Every checkpoint folder (one with a reference.json).
fn checkpoints() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(fixtures_dir())
        .expect("fixtures/models is missing: run scripts/make_fixtures.py")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("reference.json").is_file())
        .collect();
    dirs.sort();
    dirs
}

struct Reference {
    prompt_ids: Vec<u32>,
    logits: Vec<f32>,
    greedy_prompt: Vec<u32>,
    greedy_ids: Vec<u32>,
    max_new_tokens: usize,
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("id list")
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn reference(dir: &Path) -> Reference {
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    let logits_file = r
        .get("logits_file")
        .and_then(|v| v.as_str())
        .unwrap_or("logits.npy");
    Reference {
        prompt_ids: ids(&r["prompt_ids"]),
        logits: read_npy_f32(&dir.join(logits_file)),
        greedy_prompt: ids(&r["greedy"]["prompt_ids"]),
        greedy_ids: ids(&r["greedy"]["generated_ids"]),
        max_new_tokens: r["greedy"]["max_new_tokens"].as_u64().unwrap() as usize,
    }
}

fn greedy(model: &Model, prompt: &[u32], max_new: usize) -> Vec<u32> {
    let eos = &model.config.eos_token_ids;
    let mut cache = model.new_cache(model.config.max_position_embeddings);
    let mut logits = model.forward(prompt, &mut cache, Logits::Last).unwrap();
    let mut out = Vec::new();
    loop {
        let id = argmax(&logits) as u32;
        out.push(id);
        if out.len() == max_new || eos.contains(&id) {
            return out;
        }
        logits = model.forward(&[id], &mut cache, Logits::Last).unwrap();
    }
}

#[test]
fn fixtures_cover_every_variant() {
    let names: Vec<String> = checkpoints()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.len() >= 5,
        "expected at least 5 golden checkpoints, found {names:?}"
    );
}

#[test]
fn logits_match_reference_in_every_mla_form() {
    for dir in checkpoints() {
        let r = reference(&dir);
        let tol = LOGIT_TOL_STD * std_dev(&r.logits);
        for mla in MlaImpl::ALL {
            let model = Model::load(&dir, mla).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            let mut cache = model.new_cache(model.config.max_position_embeddings);
            let got = model
                .forward(&r.prompt_ids, &mut cache, Logits::All)
                .unwrap();
            let diff = max_abs_diff(&got, &r.logits);
            assert!(
                diff <= tol,
                "{} {mla:?}: max |Δlogit| {diff} > {tol}",
                dir.display()
            );
        }
    }
}

#[test]
fn greedy_tokens_match_reference() {
    for dir in checkpoints() {
        let r = reference(&dir);
        for mla in MlaImpl::ALL {
            let model = Model::load(&dir, mla).unwrap();
            let got = greedy(&model, &r.greedy_prompt, r.max_new_tokens);
            assert_eq!(got, r.greedy_ids, "{} {mla:?}", dir.display());
        }
    }
}

#[test]
fn prefill_equals_step_by_step_decode() {
    for dir in checkpoints() {
        let r = reference(&dir);
        let tol = STEP_TOL_STD * std_dev(&r.logits);
        for mla in [MlaImpl::Naive, MlaImpl::Absorbed] {
            let model = Model::load(&dir, mla).unwrap();
            let mut cache = model.new_cache(model.config.max_position_embeddings);
            let prefill = model
                .forward(&r.prompt_ids, &mut cache, Logits::All)
                .unwrap();
            let mut cache = model.new_cache(model.config.max_position_embeddings);
            let mut stepped = Vec::new();
            // Uneven chunks (1, 2, 3, …) also exercise chunked prefill with an offset mask.
            let mut pos = 0;
            let mut chunk = 1;
            while pos < r.prompt_ids.len() {
                let end = (pos + chunk).min(r.prompt_ids.len());
                stepped.extend(
                    model
                        .forward(&r.prompt_ids[pos..end], &mut cache, Logits::All)
                        .unwrap(),
                );
                pos = end;
                chunk += 1;
            }
            let diff = max_abs_diff(&prefill, &stepped);
            assert!(
                diff <= tol,
                "{} {mla:?}: prefill vs chunked decode differ by {diff}",
                dir.display()
            );
        }
    }
}

#[test]
fn naive_and_absorbed_agree() {
    for dir in checkpoints() {
        let r = reference(&dir);
        let run = |mla| {
            let model = Model::load(&dir, mla).unwrap();
            let mut cache = model.new_cache(model.config.max_position_embeddings);
            model
                .forward(&r.prompt_ids, &mut cache, Logits::All)
                .unwrap()
        };
        let diff = max_abs_diff(&run(MlaImpl::Naive), &run(MlaImpl::Absorbed));
        assert!(
            diff <= LOGIT_TOL_STD * std_dev(&r.logits),
            "{}: {diff}",
            dir.display()
        );
    }
}

#[test]
fn batched_sequences_equal_separate_runs() {
    use whale_model::Step;
    for dir in checkpoints() {
        let r = reference(&dir);
        let model = Model::load(&dir, MlaImpl::Absorbed).unwrap();
        let ctx = model.config.max_position_embeddings;
        let (a, b) = r.prompt_ids.split_at(r.prompt_ids.len() / 3);
        let alone = |ids: &[u32]| {
            let mut cache = model.new_cache(ctx);
            model.forward(ids, &mut cache, Logits::All).unwrap()
        };
        let (mut ca, mut cb) = (model.new_cache(ctx), model.new_cache(ctx));
        let mut steps = [
            Step {
                tokens: a,
                cache: &mut ca,
                logits: Logits::All,
            },
            Step {
                tokens: b,
                cache: &mut cb,
                logits: Logits::All,
            },
        ];
        let out = model.forward_batch(&mut steps).unwrap();
        let tol = STEP_TOL_STD * std_dev(&r.logits);
        assert!(max_abs_diff(&out[0], &alone(a)) <= tol, "{}", dir.display());
        assert!(max_abs_diff(&out[1], &alone(b)) <= tol, "{}", dir.display());
        assert_eq!((ca.len(), cb.len()), (a.len(), b.len()));
    }
}
