//! Weight buffers on transparent huge pages where Linux allows it: a decoding step streams every
//! weight once, and with 4 KiB pages the TLB misses cost a measurable share of the bandwidth
//! (+10–28 % with huge pages in the prototypes of `../shared/NOTES.md`).

/// `n` zero bytes whose 2 MiB-aligned interior Linux is asked (`madvise(MADV_HUGEPAGE)`) to
/// back with huge pages, before any of it is touched (a zeroed allocation this large is fresh
/// mapped memory). Elsewhere, or if the call fails (THP off), an ordinary zeroed `Vec`.
pub fn zeroed_i8(n: usize) -> Vec<i8> {
    let v = vec![0i8; n];
    #[cfg(target_os = "linux")]
    advise(v.as_ptr().cast(), v.len());
    v
}

/// Asks Linux (6.1 or later, glibc targets) to move the huge-page-aligned interior of `v`, once
/// written, onto huge pages now (`madvise(MADV_COLLAPSE)`), where the first touch got ordinary
/// pages (no huge page was free at the time). Best effort: nothing happens elsewhere or on
/// failure, and the contents are unchanged either way.
pub fn collapse(v: &[i8]) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    madvise(v.as_ptr().cast(), v.len(), libc::MADV_COLLAPSE);
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = v;
}

#[cfg(target_os = "linux")]
fn advise(start: *const u8, len: usize) {
    madvise(start, len, libc::MADV_HUGEPAGE);
}

/// `madvise(advice)` over the 2 MiB-aligned interior of `[start, start + len)`.
#[cfg(target_os = "linux")]
fn madvise(start: *const u8, len: usize, advice: libc::c_int) {
    const HUGE: usize = 2 << 20;
    let begin = (start as usize).next_multiple_of(HUGE);
    let end = (start as usize + len) / HUGE * HUGE;
    if end > begin {
        // SAFETY: [begin, end) lies inside the allocation that `start` and `len` describe, and
        // MADV_HUGEPAGE and MADV_COLLAPSE only change how the kernel backs those pages, not
        // their contents or validity; the result is ignored (the pages stay as they are on
        // failure).
        unsafe {
            libc::madvise(begin as *mut libc::c_void, end - begin, advice);
        }
    }
}
