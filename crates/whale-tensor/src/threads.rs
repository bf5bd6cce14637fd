//! The persistent worker pool every parallel kernel runs on: rayon's global pool, built once
//! with one thread per physical core unless [`set_threads`] asked for another count.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::error::TensorError;

/// Threads in the global pool, recorded when whale (or, failing that, rayon) built it.
static POOL_THREADS: OnceLock<usize> = OnceLock::new();

/// Builds the global pool with `n` threads (0 = one per physical core). Call it before any
/// matmul; it can take effect only once per process. Returns the pool's size, or an error if a
/// pool of another size is already running.
pub fn set_threads(n: usize) -> Result<usize, TensorError> {
    let requested = if n == 0 { physical_cores() } else { n };
    let running = *POOL_THREADS.get_or_init(|| build_global(requested));
    if running == requested {
        Ok(running)
    } else {
        Err(TensorError::ThreadPoolRunning { requested, running })
    }
}

/// Threads in the pool, building it with the default size on first use.
pub fn threads() -> usize {
    *POOL_THREADS.get_or_init(|| build_global(physical_cores()))
}

/// Runs `f` on one of the pool's workers and waits for it, with the other workers kept awake.
/// A parallel kernel called from a thread outside the pool hands its work to the pool and
/// sleeps on a latch until the workers finish, so every matmul of a decode step would pay two
/// thread wake-ups (tens of µs each on a VM); called from a worker, the caller does its share
/// and the others steal the rest. Between a step's ~100 parallel regions an idle rayon worker
/// falls asleep within tens of µs, and waking it again costs as much (measured: the second
/// thread started a matmul's work 9 µs after the first, 1 µs when kept spinning), so for the
/// length of `f` each other worker runs a [`spin_for_work`] loop, as llama.cpp's threads spin
/// between graph nodes. Wrap a whole forward pass.
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let n = threads(); // build the pool with whale's default size if nothing has yet
    if rayon::current_thread_index().is_some() {
        return f(); // already on the pool (nested), where the workers are busy anyway
    }
    let done = &AtomicBool::new(false);
    rayon::scope(|s| {
        let caller = rayon::current_thread_index();
        for _ in 1..n {
            s.spawn(move |_| spin_for_work(done, caller));
        }
        let r = f();
        done.store(true, Ordering::Release);
        r
    })
}

/// How long a spinning worker waits without finding work before it gives up and lets rayon put
/// it to sleep: longer than the gaps between a decode step's kernels, and a bound on how long a
/// spinner can hold up whatever it was stacked on.
const SPIN_IDLE_LIMIT: Duration = Duration::from_millis(1);

/// Runs the pool's pending jobs as they appear until `done`, or until nothing has come for
/// [`SPIN_IDLE_LIMIT`]. A worker that picked this job up while waiting inside another job
/// (rayon runs stolen jobs on top of a waiting one) therefore returns to it in bounded time,
/// so a spinner can never deadlock the pool; on the caller's own thread it returns at once.
fn spin_for_work(done: &AtomicBool, caller: Option<usize>) {
    if rayon::current_thread_index() == caller {
        return;
    }
    let mut idle_since = Instant::now();
    while !done.load(Ordering::Acquire) {
        if rayon::yield_now() == Some(rayon::Yield::Executed) {
            idle_since = Instant::now();
        } else if idle_since.elapsed() > SPIN_IDLE_LIMIT {
            return;
        } else {
            std::hint::spin_loop();
        }
    }
}

/// Runs `task(i)` for every `i` in `0..n` on the pool. Each thread owns a contiguous share of
/// the indices and takes them in order from its share's cursor, then helps with the others'
/// shares through their cursors: one spawn per helper thread instead of rayon's tree of split
/// jobs and latches (a matmul's threads then finish within one task of each other, and the
/// caller returns ~1 µs after the last instead of 5–20 µs through `par_iter` on this VM), while
/// each thread still streams one run of weights, as the prefetches ahead of it expect.
pub(crate) fn for_each_task(n: usize, task: impl Fn(usize) + Sync) {
    let threads = rayon::current_num_threads().min(n);
    if threads <= 1 {
        (0..n).for_each(task);
        return;
    }
    let share_end = |k: usize| (k + 1) * n / threads;
    let cursors: Vec<AtomicUsize> = (0..threads)
        .map(|k| AtomicUsize::new(k * n / threads))
        .collect();
    let work = |me: usize| {
        for k in (0..threads).map(|j| (me + j) % threads) {
            loop {
                let i = cursors[k].fetch_add(1, Ordering::Relaxed);
                if i >= share_end(k) {
                    break;
                }
                task(i);
            }
        }
    };
    let work = &work;
    rayon::scope(|s| {
        for k in 1..threads {
            s.spawn(move |_| work(k));
        }
        work(0);
    });
}

fn build_global(n: usize) -> usize {
    let built = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("whale-{i}"))
        .build_global();
    match built {
        Ok(()) => n,
        // Something used rayon before us and got its default pool; live with it.
        Err(_) => rayon::current_num_threads(),
    }
}

/// Physical cores this process may use: distinct (package, core) pairs in Linux sysfs, capped
/// by the CPUs the process is allowed on; the logical count where sysfs is unavailable. SMT
/// siblings share one core's load/store units, which int8 dot products saturate.
pub fn physical_cores() -> usize {
    let logical = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut cores = std::collections::HashSet::new();
    if let Ok(dir) = std::fs::read_dir("/sys/devices/system/cpu") {
        for entry in dir.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if !name
                .strip_prefix("cpu")
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            {
                continue;
            }
            let read =
                |f: &str| std::fs::read_to_string(entry.path().join("topology").join(f)).ok();
            if let (Some(pkg), Some(core)) = (read("physical_package_id"), read("core_id")) {
                cores.insert((pkg.trim().to_string(), core.trim().to_string()));
            }
        }
    }
    if cores.is_empty() {
        logical
    } else {
        cores.len().min(logical)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_is_built_once_with_a_positive_size() {
        let n = threads();
        assert!(n >= 1);
        assert_eq!(set_threads(n).unwrap(), n);
        assert!(set_threads(n + 1).is_err());
        assert!(physical_cores() >= 1);
    }

    /// Every index runs exactly once, for any count against any pool size, nested too.
    #[test]
    fn for_each_task_runs_every_index_once() {
        for n in [0, 1, 2, 3, 7, 16, 101] {
            let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            for_each_task(n, |i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
                // A nested parallel loop inside a task (as MoE experts run matmuls).
                let inner = AtomicUsize::new(0);
                for_each_task(5, |_| {
                    inner.fetch_add(1, Ordering::Relaxed);
                });
                assert_eq!(inner.load(Ordering::Relaxed), 5);
            });
            assert!(
                hits.iter().all(|h| h.load(Ordering::Relaxed) == 1),
                "n = {n}"
            );
        }
    }

    /// Forward passes started from several outside threads at once (a test harness, or two
    /// engines in one process) all finish: a spinner parked on a busy worker gives up.
    #[test]
    fn concurrent_on_pool_calls_finish() {
        let sums: Vec<usize> = std::thread::scope(|s| {
            let calls: Vec<_> = (0..4)
                .map(|k| {
                    s.spawn(move || {
                        on_pool(|| {
                            let total = AtomicUsize::new(0);
                            for _ in 0..50 {
                                for_each_task(8, |i| {
                                    total.fetch_add(i + k, Ordering::Relaxed);
                                });
                            }
                            total.into_inner()
                        })
                    })
                })
                .collect();
            calls.into_iter().map(|c| c.join().unwrap()).collect()
        });
        for (k, sum) in sums.into_iter().enumerate() {
            assert_eq!(sum, 50 * (28 + 8 * k));
        }
    }
}
