//! A global allocator that counts the heap bytes live and their peak, for the memory test
//! and the lm-head bench (each declares `#[global_allocator] static ALLOC: Counting`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

/// The counting allocator.
pub struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), SeqCst) + layout.size();
            PEAK.fetch_max(live, SeqCst);
        }
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        unsafe { System.dealloc(p, layout) };
        LIVE.fetch_sub(layout.size(), SeqCst);
    }
}

/// Peak heap bytes above the live ones while `f` runs (what `f` returns is dropped inside).
pub fn extra<R>(f: impl FnOnce() -> R) -> usize {
    let before = LIVE.load(SeqCst);
    PEAK.store(before, SeqCst);
    drop(f());
    PEAK.load(SeqCst) - before
}
