//! Absorbed-MLA attention over a latent cache stored as f32, bf16 or Q8_0, at DeepSeek-V2-Lite
//! shapes (16 heads, rows of 512 + 64 values): the scores (`matmul_rows`) and the weighted
//! value sums (`weighted_rows`) of one decoded token, per layer, at several depths.
//!
//! `cargo bench -p whale-tensor --bench attention [-- --depths 1024,4096]`
//!
//! Eight layers' caches are cycled through so that, as in a model, a layer's rows are not in
//! cache from the previous call.

use std::time::{Duration, Instant};

use half::bf16;
use whale_tensor::quant::BlockQ8_0;
use whale_tensor::rows::{push_q8_0_row, RowData};
use whale_tensor::{attend_rows, matmul_rows, threads, weighted_rows, Rows};

const HEADS: usize = 16;
const LATENT: usize = 512;
const WIDTH: usize = 576;
const LAYERS: usize = 8;

fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005) | 1;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn q8_0(x: &[f32]) -> Vec<BlockQ8_0> {
    let mut out = Vec::new();
    for r in x.chunks(WIDTH) {
        push_q8_0_row(&mut out, r);
    }
    out
}

/// Best per-layer seconds of (scores, value sums, single pass) over `rounds` passes through
/// the layers.
fn time(layers: &[Rows], depth: usize, rounds: usize) -> (f64, f64, f64) {
    let q = values(HEADS * WIDTH, 3);
    let mut p = values(HEADS * depth, 4);
    for v in &mut p {
        *v = v.abs() / depth as f32;
    }
    let visible = [depth; HEADS];
    let (mut scores, mut sums) = (vec![0.0f32; HEADS * depth], vec![0.0f32; HEADS * LATENT]);
    let (mut best_s, mut best_v, mut best_f) = (f64::MAX, f64::MAX, f64::MAX);
    for _ in 0..rounds {
        let (mut ts, mut tv, mut tf) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
        for &rows in layers {
            let t0 = Instant::now();
            matmul_rows(&mut scores, &q, rows, depth, WIDTH, HEADS);
            let t1 = Instant::now();
            weighted_rows(&mut sums, &p, rows, depth, LATENT);
            let t2 = Instant::now();
            attend_rows(&mut sums, &q, rows, &visible, WIDTH, LATENT, 0.07);
            tf += t2.elapsed();
            tv += t2 - t1;
            ts += t1 - t0;
        }
        let n = layers.len() as f64;
        best_s = best_s.min(ts.as_secs_f64() / n);
        best_v = best_v.min(tv.as_secs_f64() / n);
        best_f = best_f.min(tf.as_secs_f64() / n);
    }
    std::hint::black_box((&scores, &sums));
    (best_s, best_v, best_f)
}

fn main() {
    let mut depths = vec![1024, 4096, 16384];
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--depths" {
            let list = args.next().unwrap_or_default();
            depths = list
                .split(',')
                .map(|d| d.parse().expect("--depths N,N"))
                .collect();
        }
    }
    println!(
        "{} threads; per layer, one token × {HEADS} heads, rows of {WIDTH}",
        threads::threads()
    );
    println!(
        "| cache | depth | MB/layer | scores µs | values µs | two passes µs | single pass µs |"
    );
    println!("|---|---|---|---|---|---|---|");
    for &depth in &depths {
        let f: Vec<Vec<f32>> = (0..LAYERS)
            .map(|l| values(depth * WIDTH, 10 + l as u64))
            .collect();
        let b: Vec<Vec<bf16>> = f
            .iter()
            .map(|x| x.iter().map(|&v| bf16::from_f32(v)).collect())
            .collect();
        let q: Vec<Vec<BlockQ8_0>> = f.iter().map(|x| q8_0(x)).collect();
        let rounds = (200_000 / depth).clamp(3, 50);
        let cases: [(&str, Vec<Rows>, usize); 3] = [
            (
                "f32",
                f.iter().map(|v| Rows::f32(v, WIDTH)).collect(),
                4 * WIDTH,
            ),
            (
                "bf16",
                b.iter()
                    .map(|v| Rows {
                        data: RowData::Bf16(v),
                        width: WIDTH,
                    })
                    .collect(),
                2 * WIDTH,
            ),
            (
                "q8_0",
                q.iter()
                    .map(|v| Rows {
                        data: RowData::Q8_0(v),
                        width: WIDTH,
                    })
                    .collect(),
                WIDTH / 32 * 34,
            ),
        ];
        for (name, layers, row_bytes) in &cases {
            let (s, v, f) = time(layers, depth, rounds);
            println!(
                "| {name} | {depth} | {:.1} | {:.0} | {:.0} | {:.0} | {:.0} |",
                (depth * row_bytes) as f64 / 1e6,
                s * 1e6,
                v * 1e6,
                (s + v) * 1e6,
                f * 1e6
            );
        }
    }
}
