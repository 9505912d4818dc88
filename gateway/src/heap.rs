//! Keeping the daemon's resident memory at its steady-state size: a large
//! config load allocates many short-lived objects, and live data scattered
//! among them would pin their pages. Loading runs on a scratch thread (glibc
//! gives it its own malloc arena), the result is copied compactly into the
//! caller's arena, and the freed memory is handed back to the OS.

/// Runs `load` on a scratch thread, deep-copies its result on the calling
/// thread, drops the original and returns free memory to the OS. Falls back
/// to running `load` in place if a thread cannot be started.
pub fn load_compact<T, F>(load: F) -> T
where
    T: Clone + Send,
    F: FnOnce() -> T + Send,
{
    let mut load = Some(load);
    let scratch = std::thread::scope(|s| {
        let job = load.take();
        std::thread::Builder::new()
            .name("fieldgate-load".into())
            .spawn_scoped(s, move || job.map(|f| f()))
            .ok()
            .and_then(|h| h.join().ok())
            .flatten()
    });
    let result = match scratch {
        Some(original) => {
            let copy = original.clone();
            drop(original);
            copy
        }
        None => match load.take() {
            Some(f) => f(),
            // The job ran and panicked on the scratch thread; run it again
            // here so the panic surfaces where the caller can see it.
            None => unreachable_load(),
        },
    };
    release_free_memory();
    result
}

#[cold]
fn unreachable_load() -> ! {
    panic!("config load panicked on its scratch thread")
}

/// Makes every thread allocate from one malloc arena. glibc otherwise gives
/// each runtime worker its own arena, and memory freed in one cannot serve
/// the others: with 1 000 devices that cost ~15% more resident memory, for
/// no measurable gain at a gateway's allocation rate (per-thread caches stay
/// on). Must run before the runtime's threads start; a no-op off glibc.
pub fn use_one_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before any
    // other thread exists, it races with nothing.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Asks the allocator to give free memory back to the OS. A no-op where the
/// C library has no `malloc_trim` (non-glibc targets).
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it has
    // no preconditions and is safe to call at any time from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_what_the_load_returned() {
        let v = load_compact(|| vec![String::from("a"); 1000]);
        assert_eq!(v.len(), 1000);
        assert_eq!(v[999], "a");
    }
}
