//! Free space of a file system (statvfs(2)): the file store's floor
//! (`minFreeBytes`) and `stateDirectory.freeBytes` in the health report.

use std::io;
use std::path::Path;

/// Bytes an unprivileged user may still write on the file system holding
/// `path` (`f_bavail × f_frsize`).
pub(crate) fn free_bytes(path: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a NUL-terminated path that outlives the call and `st`
    // points to writable memory the size of a `statvfs`.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it filled `st`.
    let st = unsafe { st.assume_init() };
    #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
    Ok(u64::from(st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_temporary_directory_has_free_space_and_a_bad_path_is_an_error() {
        let free = super::free_bytes(&std::env::temp_dir()).expect("statvfs of the temp dir");
        assert!(free > 0);
        assert!(super::free_bytes(std::path::Path::new("/nonexistent/fieldgate")).is_err());
    }
}
