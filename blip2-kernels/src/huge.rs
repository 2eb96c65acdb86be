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

#[cfg(target_os = "linux")]
fn advise(start: *const u8, len: usize) {
    const HUGE: usize = 2 << 20;
    let begin = (start as usize).next_multiple_of(HUGE);
    let end = (start as usize + len) / HUGE * HUGE;
    if end > begin {
        // SAFETY: [begin, end) lies inside the allocation that `start` and `len` describe, and
        // MADV_HUGEPAGE only changes how the kernel backs those pages, not their contents or
        // validity; the result is ignored (the pages stay ordinary ones on failure).
        unsafe {
            libc::madvise(begin as *mut libc::c_void, end - begin, libc::MADV_HUGEPAGE);
        }
    }
}
