//! Giving freed memory back to the OS after a large, short-lived burst of
//! allocations (a config load). The daemon allocates with jemalloc (the
//! `jemalloc` feature, on by default; its allocator and settings are in
//! `main.rs`), which returns freed pages after about a second anyway; this
//! only makes it happen at once after a load.

/// Asks the allocator to give its free pages back to the OS now: jemalloc's
/// with the `jemalloc` feature, else the C library's (a no-op off glibc).
pub(crate) fn release_free_memory() {
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
    #[cfg(all(not(feature = "jemalloc"), target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it has
    // no preconditions and is safe to call at any time from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}
