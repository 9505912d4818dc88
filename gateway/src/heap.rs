//! Returning freed heap memory to the operating system after bursts of
//! allocation (loading a large config), so a small box sees the steady-state
//! footprint rather than the load's peak.

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
