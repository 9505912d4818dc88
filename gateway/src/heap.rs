//! Keeping the daemon's resident memory at its steady-state size: a large
//! config load allocates many short-lived objects, and what it frees goes
//! back to the OS at once. The daemon allocates with jemalloc (the
//! `jemalloc` feature, on by default: one arena, freed pages returned after
//! about a second), which keeps long-lived objects packed by size class;
//! with glibc's malloc instead, the load runs on a scratch thread and its
//! result is copied compactly, so that live data does not pin the pages of
//! the load's garbage.

/// Runs `load` and returns the memory it freed to the OS. With jemalloc
/// (the `jemalloc` feature) that is all: its size classes keep the result
/// apart from the load's garbage. With glibc's malloc, `load` runs on a
/// scratch thread, its result is deep-copied on the calling thread and the
/// original dropped, so that live data does not pin the garbage's pages;
/// falls back to running `load` in place if a thread cannot be started.
pub fn load_compact<T, F>(load: F) -> T
where
    T: Clone + Send,
    F: FnOnce() -> T + Send,
{
    if cfg!(feature = "jemalloc") {
        let result = load();
        release_free_memory();
        return result;
    }
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

/// Asks the allocators to give free memory back to the OS now: jemalloc's
/// (the daemon's, with the `jemalloc` feature) and the C library's (used by
/// C dependencies, and by everything without the feature). The C library's
/// part is a no-op off glibc.
pub fn release_free_memory() {
    #[cfg(feature = "jemalloc")]
    // SAFETY: "arena.<MALLCTL_ARENAS_ALL>.purge" is a void control (no old
    // or new value, both pointers null) that purges every arena's unused
    // dirty pages; it is safe to call at any time from any thread.
    unsafe {
        tikv_jemalloc_sys::mallctl(
            c"arena.4096.purge".as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        );
    }
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
