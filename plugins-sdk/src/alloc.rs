//! A cache of small freed blocks in front of the system allocator.
//!
//! Every `sign-request` allocates a handful of small blocks and frees them again: the
//! host lowers each string of the request (method, scheme, authority, path, query, the
//! configuration, every header name and value) into memory the module allocates, and
//! frees the returned strings after the call. With wasi-libc's `dlmalloc`, those
//! allocations and frees are about a sixth of a kept instance's call (measured in
//! session 15, see `docs/performance.md`). [`SmallBlocks`] keeps freed blocks of up to
//! 256 bytes in one last-in-first-out list per 16-byte size class and hands them out
//! again without asking `dlmalloc`; anything larger, or aligned to more than 8 bytes,
//! goes straight to the allocator underneath.
//!
//! Blocks in the lists are never returned to the allocator underneath while the
//! instance lives, so a module's memory is bounded by its peak use of each class, not
//! its current use. Outpost drops an instance after `OUTPOST_PLUGIN_REUSE` calls.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;
use std::ptr;

/// Width of one size class, in bytes.
const STEP: usize = 16;
/// Size classes: blocks of 16, 32, … 256 bytes.
const CLASSES: usize = 16;
/// Largest alignment served from the lists: what `malloc` guarantees on wasm32, so the
/// allocator underneath takes its fast path for every block the lists hold.
const MAX_ALIGN: usize = 8;

/// The size class of `layout`, or `None` for layouts left to the allocator underneath.
fn class(layout: Layout) -> Option<usize> {
    let size = layout.size();
    if size == 0 || size > STEP * CLASSES || layout.align() > MAX_ALIGN {
        None
    } else {
        Some((size - 1) / STEP)
    }
}

/// The layout of every block in class `c` (< [`CLASSES`]). Never `None` ((c + 1) * 16
/// ≤ 256 and 8 is a power of two); the check keeps the code free of `unsafe`, and its
/// failure would only make `alloc` report an allocation failure.
fn block(c: usize) -> Option<Layout> {
    Layout::from_size_align((c + 1) * STEP, MAX_ALIGN).ok()
}

/// A global allocator for modules: small blocks are recycled through per-size free
/// lists, everything else is passed to `A` (the system allocator by default).
///
/// Install it with [`small_block_allocator!`](crate::small_block_allocator), which does
/// so only on single-threaded WebAssembly, the one place it is sound as a global.
pub struct SmallBlocks<A: GlobalAlloc = System> {
    inner: A,
    /// The first free block of each class; a free block holds the next one's address in
    /// its first bytes.
    heads: UnsafeCell<[*mut u8; CLASSES]>,
}

impl SmallBlocks<System> {
    /// A cache in front of the system allocator (`dlmalloc` on wasm32-wasip2).
    pub const fn new() -> Self {
        Self::with(System)
    }
}

impl Default for SmallBlocks<System> {
    fn default() -> Self {
        Self::new()
    }
}

impl<A: GlobalAlloc> SmallBlocks<A> {
    /// A cache in front of `inner`.
    pub const fn with(inner: A) -> Self {
        Self {
            inner,
            heads: UnsafeCell::new([ptr::null_mut(); CLASSES]),
        }
    }
}

impl<A: GlobalAlloc> std::fmt::Debug for SmallBlocks<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmallBlocks").finish_non_exhaustive()
    }
}

// SAFETY: `unsafe` is necessary here: a global allocator must be `Sync`, and the free
// lists are plain cells. This impl exists only for WebAssembly without the atomics
// feature, where a module has exactly one thread and nothing (no signal, no interrupt)
// can enter the allocator while it runs, so the cells are never accessed concurrently.
// Everywhere else `SmallBlocks` is not `Sync` and so cannot be installed globally.
#[cfg(all(target_family = "wasm", not(target_feature = "atomics")))]
#[allow(unsafe_code)]
unsafe impl<A: GlobalAlloc + Sync> Sync for SmallBlocks<A> {}

// SAFETY: `unsafe` is necessary here: `GlobalAlloc` is an `unsafe trait`, so any
// allocator implements it with `unsafe impl`. The contract holds:
// - `alloc` returns a block of at least `layout.size()` bytes aligned to
//   `layout.align()`, or null: list blocks are `block(c)`, which is at least as large
//   and as aligned as every layout of class `c`; other layouts come from `inner`.
// - `dealloc` receives the layout the block was allocated with, whose class is the one
//   it was allocated in (the class depends on the layout alone), so a block goes back to
//   the list, or to `inner`, it came from; list blocks are only ever allocated from `inner`
//   with `block(c)`, and they are handed back to `inner` with that layout (in `Drop`).
// - the cells are never accessed from two threads at once: see the `Sync` impl above,
//   which is the only way to share a `SmallBlocks`.
#[allow(unsafe_code)]
unsafe impl<A: GlobalAlloc> GlobalAlloc for SmallBlocks<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(c) = class(layout) else {
            // SAFETY: the caller's guarantees for `layout` pass through unchanged.
            return unsafe { self.inner.alloc(layout) };
        };
        // SAFETY: only this thread touches the cells (see the `Sync` impl), and no
        // reference to them outlives this call.
        let heads = unsafe { &mut *self.heads.get() };
        let head = heads[c];
        if head.is_null() {
            match block(c) {
                // SAFETY: `block(c)` has a non-zero size.
                Some(b) => unsafe { self.inner.alloc(b) },
                None => ptr::null_mut(),
            }
        } else {
            // SAFETY: `head` is a free block of this class, at least 16 bytes and
            // 8-aligned, whose first bytes hold the next free block (written by
            // `dealloc`).
            heads[c] = unsafe { head.cast::<*mut u8>().read() };
            head
        }
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        let Some(c) = class(layout) else {
            // SAFETY: `p` came from `inner` with this layout (see `alloc`).
            return unsafe { self.inner.dealloc(p, layout) };
        };
        // SAFETY: as in `alloc`.
        let heads = unsafe { &mut *self.heads.get() };
        // SAFETY: `p` is a block of class `c`, at least 16 bytes and 8-aligned, that
        // the caller no longer uses: its first bytes may hold the list link.
        unsafe { p.cast::<*mut u8>().write(heads[c]) };
        heads[c] = p;
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
            return ptr::null_mut();
        };
        match (class(layout), class(new_layout)) {
            // The block already has room for the new size.
            (Some(a), Some(b)) if a == b => p,
            // SAFETY: the caller's guarantees pass through; `inner` allocated `p`.
            (None, None) => unsafe { self.inner.realloc(p, layout, new_size) },
            _ => {
                // SAFETY: `new_layout` is valid and non-zero (the caller guarantees a
                // non-zero `new_size`); `p` holds `layout.size()` initialised bytes and
                // the new block at least `new_size`, and the two do not overlap.
                unsafe {
                    let q = self.alloc(new_layout);
                    if !q.is_null() {
                        ptr::copy_nonoverlapping(p, q, layout.size().min(new_size));
                        self.dealloc(p, layout);
                    }
                    q
                }
            }
        }
    }
}

impl<A: GlobalAlloc> Drop for SmallBlocks<A> {
    fn drop(&mut self) {
        // Only a `SmallBlocks` that is not the global allocator is ever dropped (statics
        // are not); give its cached blocks back.
        let heads = self.heads.get_mut();
        for (c, head) in heads.iter_mut().enumerate() {
            // A class without a block layout never allocated a block.
            let Some(b) = block(c) else { continue };
            while !head.is_null() {
                let p = *head;
                #[allow(unsafe_code)]
                // SAFETY: `p` is a free block of class `c` from `inner`, linked by
                // `dealloc`; it is unlinked before it is freed.
                unsafe {
                    *head = p.cast::<*mut u8>().read();
                    self.inner.dealloc(p, b);
                }
            }
        }
    }
}

/// Install [`SmallBlocks`] as the module's global allocator: faster allocation of the
/// small blocks each call's strings need. Only on WebAssembly without threads; on any
/// other target (a native `cargo test` of the module, say) it expands to nothing.
///
/// Leave it out if the module installs a global allocator of its own.
///
/// ```no_run
/// outpost_plugin_sdk::small_block_allocator!();
/// ```
#[macro_export]
macro_rules! small_block_allocator {
    () => {
        #[cfg(all(target_family = "wasm", not(target_feature = "atomics")))]
        #[global_allocator]
        static OUTPOST_ALLOCATOR: $crate::SmallBlocks = $crate::SmallBlocks::new();
    };
}

#[cfg(test)]
#[allow(unsafe_code)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// What reached the allocator below.
    #[derive(Default)]
    struct Counts {
        allocs: Cell<usize>,
        deallocs: Cell<usize>,
        reallocs: Cell<usize>,
    }

    /// The system allocator, counting into a [`Counts`] that outlives the cache.
    struct Counting<'a>(&'a Counts);

    unsafe impl GlobalAlloc for Counting<'_> {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            self.0.allocs.set(self.0.allocs.get() + 1);
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
            self.0.deallocs.set(self.0.deallocs.get() + 1);
            unsafe { System.dealloc(p, layout) }
        }
        unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            self.0.reallocs.set(self.0.reallocs.get() + 1);
            unsafe { System.realloc(p, layout, new_size) }
        }
    }

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    #[test]
    fn a_freed_small_block_serves_the_next_allocation_of_its_class() {
        let n = Counts::default();
        let a = SmallBlocks::with(Counting(&n));
        unsafe {
            let p = a.alloc(layout(20, 1));
            a.dealloc(p, layout(20, 1));
            // 17–32 bytes share a class: the same block, without the allocator below.
            let q = a.alloc(layout(32, 4));
            assert_eq!(p, q);
            assert_eq!(n.allocs.get(), 1);
            // Another class gets its own block.
            let r = a.alloc(layout(40, 1));
            assert_ne!(r, q);
            assert_eq!(n.allocs.get(), 2);
            a.dealloc(q, layout(32, 4));
            a.dealloc(r, layout(40, 1));
        }
        assert_eq!(n.deallocs.get(), 0, "small blocks stay in the lists");
    }

    #[test]
    fn lists_are_last_in_first_out_and_blocks_stay_distinct() {
        let n = Counts::default();
        let a = SmallBlocks::with(Counting(&n));
        unsafe {
            let blocks: Vec<_> = (0..5).map(|_| a.alloc(layout(8, 8))).collect();
            for &p in &blocks {
                a.dealloc(p, layout(8, 8));
            }
            let again: Vec<_> = (0..5).map(|_| a.alloc(layout(8, 8))).collect();
            let mut expected = blocks.clone();
            expected.reverse();
            assert_eq!(again, expected);
            assert_eq!(n.allocs.get(), 5);
            // Each block is usable for its whole class size without touching another.
            for (i, &p) in again.iter().enumerate() {
                assert_eq!(p as usize % 8, 0);
                ptr::write_bytes(p, i as u8, 16);
            }
            for (i, &p) in again.iter().enumerate() {
                assert!(
                    std::slice::from_raw_parts(p, 16)
                        .iter()
                        .all(|&b| b == i as u8)
                );
                a.dealloc(p, layout(8, 8));
            }
        }
    }

    #[test]
    fn large_or_overaligned_blocks_go_to_the_allocator_below() {
        let n = Counts::default();
        let a = SmallBlocks::with(Counting(&n));
        unsafe {
            for l in [
                layout(257, 1),
                layout(4096, 8),
                layout(16, 16),
                layout(64, 32),
            ] {
                let p = a.alloc(l);
                assert_eq!(p as usize % l.align(), 0);
                a.dealloc(p, l);
            }
        }
        assert_eq!(n.allocs.get(), 4);
        assert_eq!(n.deallocs.get(), 4);
    }

    #[test]
    fn realloc_keeps_the_block_within_its_class_and_copies_across_classes() {
        let n = Counts::default();
        let a = SmallBlocks::with(Counting(&n));
        unsafe {
            let p = a.alloc(layout(3, 1));
            ptr::copy_nonoverlapping(b"abc".as_ptr(), p, 3);
            // 3 → 16 bytes: same class, same block.
            assert_eq!(a.realloc(p, layout(3, 1), 16), p);
            // 16 → 100 bytes: a block of another class, contents copied.
            let q = a.realloc(p, layout(16, 1), 100);
            assert_ne!(q, p);
            assert_eq!(std::slice::from_raw_parts(q, 3), b"abc");
            // The old block went back to its list.
            assert_eq!(a.alloc(layout(10, 1)), p);
            // 100 → 1000 bytes: out of the lists, contents copied.
            let r = a.realloc(q, layout(100, 1), 1000);
            assert_eq!(std::slice::from_raw_parts(r, 3), b"abc");
            assert_eq!(n.reallocs.get(), 0);
            // 1000 → 2000: both large, the allocator below reallocates.
            let s = a.realloc(r, layout(1000, 1), 2000);
            assert_eq!(n.reallocs.get(), 1);
            assert_eq!(std::slice::from_raw_parts(s, 3), b"abc");
            a.dealloc(s, layout(2000, 1));
            a.dealloc(p, layout(10, 1));
        }
    }

    #[test]
    fn zeroed_allocations_are_zero_even_from_a_reused_block() {
        let n = Counts::default();
        let a = SmallBlocks::with(Counting(&n));
        unsafe {
            let p = a.alloc(layout(48, 8));
            ptr::write_bytes(p, 0xAA, 48);
            a.dealloc(p, layout(48, 8));
            let q = a.alloc_zeroed(layout(48, 8));
            assert_eq!(p, q);
            assert!(std::slice::from_raw_parts(q, 48).iter().all(|&b| b == 0));
            a.dealloc(q, layout(48, 8));
        }
    }

    #[test]
    fn dropping_the_cache_returns_its_blocks() {
        let n = Counts::default();
        {
            let a = SmallBlocks::with(Counting(&n));
            unsafe {
                // Two blocks in one class, one in another.
                let ls = [layout(10, 1), layout(12, 1), layout(100, 1)];
                let ps: Vec<_> = ls.iter().map(|&l| a.alloc(l)).collect();
                for (p, l) in ps.into_iter().zip(ls) {
                    a.dealloc(p, l);
                }
            }
            assert_eq!(n.deallocs.get(), 0);
        }
        assert_eq!(n.allocs.get(), 3);
        assert_eq!(n.deallocs.get(), 3);
    }
}
