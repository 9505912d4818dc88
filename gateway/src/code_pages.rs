//! Letting go of start-up code once the daemon runs. The kernel maps a
//! program's code in large chunks (fault-around, large page-cache folios), so
//! loading the config, the command line and building the topology leave most
//! of the binary and its libraries mapped — about 10 MiB of resident memory —
//! though a running gateway executes a fraction of it. Advising
//! `MADV_DONTNEED` on the never-written (read-only and executable) segments
//! of every loaded object drops those mappings: the pages stay in the page
//! cache, shared and reclaimable, and whatever the daemon runs next is mapped
//! again on its first use. Only segments that are never written qualify, so
//! no data is lost: their content is the file's.

/// Drops this process's mappings of the read-only and executable segments of
/// the program and its shared libraries (not the vDSO); returns how many
/// bytes were advised. A no-op (0) where `dl_iterate_phdr` is not available.
pub fn release() -> usize {
    #[cfg(target_os = "linux")]
    {
        linux::release()
    }
    #[cfg(not(target_os = "linux"))]
    {
        0
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use std::ffi::c_void;

    /// `DT_NULL`, `DT_TEXTREL`, `DT_FLAGS` and `DF_TEXTREL` of the ELF
    /// specification (not exported by the libc crate).
    const DT_NULL: isize = 0;
    const DT_TEXTREL: isize = 22;
    const DT_FLAGS: isize = 30;
    const DF_TEXTREL: usize = 0x4;

    /// A program header of this target's ELF class.
    #[cfg(target_pointer_width = "64")]
    type Phdr = libc::Elf64_Phdr;
    #[cfg(target_pointer_width = "32")]
    type Phdr = libc::Elf32_Phdr;

    /// One entry of an object's dynamic section (`ElfN_Dyn`: a word-sized
    /// tag and a word-sized value on both 32- and 64-bit targets).
    #[repr(C)]
    struct Dyn {
        tag: isize,
        val: usize,
    }

    /// What the callback needs and what it found.
    struct Walk {
        page: usize,
        vdso: usize,
        advised: usize,
    }

    pub fn release() -> usize {
        // SAFETY: sysconf and getauxval only read process constants.
        let (page, vdso) = unsafe {
            (
                libc::sysconf(libc::_SC_PAGESIZE),
                libc::getauxval(libc::AT_SYSINFO_EHDR),
            )
        };
        let Ok(page) = usize::try_from(page) else {
            return 0;
        };
        if !page.is_power_of_two() {
            return 0;
        }
        let mut walk = Walk {
            page,
            vdso: vdso as usize,
            advised: 0,
        };
        // SAFETY: dl_iterate_phdr calls `each_object` once per loaded object
        // with a valid `dl_phdr_info`, under the loader's lock, and passes
        // our `walk` back as `data`; it lives until the call returns.
        unsafe {
            libc::dl_iterate_phdr(Some(each_object), (&raw mut walk).cast::<c_void>());
        }
        walk.advised
    }

    /// Advises the never-written segments of one loaded object.
    unsafe extern "C" fn each_object(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut c_void,
    ) -> libc::c_int {
        // SAFETY: both pointers come from dl_iterate_phdr as documented in
        // `release`: `info` is valid for this call, `data` is our `Walk`.
        let (info, walk) = unsafe { (&*info, &mut *data.cast::<Walk>()) };
        if info.dlpi_phdr.is_null() {
            return 0;
        }
        // SAFETY: the loader's program header table of this object has
        // `dlpi_phnum` entries.
        let headers = unsafe { std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum.into()) };
        let bias = info.dlpi_addr as usize;
        let segment = |h: &Phdr| {
            let start = bias.wrapping_add(h.p_vaddr as usize);
            (start, start.wrapping_add(h.p_memsz as usize))
        };
        // The vDSO is the kernel's, not a file mapping: leave it alone.
        if headers.iter().any(|h| {
            let (start, end) = segment(h);
            h.p_type == libc::PT_LOAD && (start..end).contains(&walk.vdso)
        }) {
            return 0;
        }
        // An object with text relocations writes to its code while loading:
        // its "read-only" pages are private copies and must stay.
        if let Some(dynamic) = headers.iter().find(|h| h.p_type == libc::PT_DYNAMIC) {
            let mut entry = segment(dynamic).0 as *const Dyn;
            loop {
                // SAFETY: the dynamic section is mapped for as long as the
                // object is loaded and ends with a DT_NULL entry.
                let d = unsafe { &*entry };
                if d.tag == DT_NULL {
                    break;
                }
                if d.tag == DT_TEXTREL || (d.tag == DT_FLAGS && d.val & DF_TEXTREL != 0) {
                    return 0;
                }
                // SAFETY: not past the DT_NULL entry checked above.
                entry = unsafe { entry.add(1) };
            }
        }
        for h in headers {
            if h.p_type != libc::PT_LOAD || h.p_flags & libc::PF_W != 0 {
                continue;
            }
            // Whole pages inside the segment only: a page it shares with a
            // writable neighbour is that neighbour's.
            let (start, end) = segment(h);
            let first = start.next_multiple_of(walk.page);
            let last = end & !(walk.page - 1);
            if last <= first {
                continue;
            }
            // SAFETY: [first, last) lies inside a loaded, never-written
            // segment of this object (no PF_W, no text relocations), mapped
            // privately from its file: dropping the mapping loses nothing,
            // the next access maps the file's page again.
            let rc =
                unsafe { libc::madvise(first as *mut c_void, last - first, libc::MADV_DONTNEED) };
            if rc == 0 {
                walk.advised += last - first;
            }
        }
        0
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// `RssFile` of this process, in kB.
    fn rss_file_kb() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("RssFile:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    #[test]
    fn releases_mapped_code_and_the_process_keeps_running() {
        let before = rss_file_kb();
        let advised = release();
        let after = rss_file_kb();
        assert!(advised > 0, "nothing advised");
        assert!(after < before, "RssFile {before} kB -> {after} kB");
        // Code and read-only data come back on use: formatting touches both.
        let s = format!("{:>5}|{:.3}", "x", std::f64::consts::PI);
        assert_eq!(s, "    x|3.142");
    }
}
