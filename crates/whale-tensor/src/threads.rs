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

/// Runs `task(i)` for every `i` in `0..n` on the pool: each thread takes the next index from a
/// shared counter until none is left. One spawn per helper thread instead of rayon's tree of
/// split jobs and latches: a matmul's threads finish within one task of each other and the
/// caller returns ~1 µs after the last (5–20 µs through `par_iter` on this VM).
pub(crate) fn for_each_task(n: usize, task: impl Fn(usize) + Sync) {
    let helpers = rayon::current_num_threads().min(n).saturating_sub(1);
    if helpers == 0 {
        (0..n).for_each(task);
        return;
    }
    let next = AtomicUsize::new(0);
    let work = || loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= n {
            break;
        }
        task(i);
    };
    rayon::scope(|s| {
        for _ in 0..helpers {
            s.spawn(|_| work());
        }
        work();
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
}
