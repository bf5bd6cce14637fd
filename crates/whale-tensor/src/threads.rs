//! The persistent worker pool every parallel kernel runs on: rayon's global pool, built once
//! with one thread per physical core unless [`set_threads`] asked for another count.

use std::sync::OnceLock;

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

/// Runs `f` on one of the pool's workers and waits for it. A parallel kernel called from a
/// thread outside the pool hands its work to the pool and then sleeps on a latch until the
/// workers finish, so every matmul of a decode step would pay two thread wake-ups (tens of µs
/// each on a VM); called from a worker, the caller does its share and the idle worker, still
/// spinning between the step's many small kernels, steals the rest. Wrap a whole forward pass.
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    threads(); // build the pool with whale's default size if nothing has yet
    rayon::scope(|_| f())
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
