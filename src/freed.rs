//! Unit-test builds only: the allocator the unit tests run on, which can watch the memory freed
//! on a thread for a secret. It proves that a copy of a token is zeroed before it is freed (a
//! freed block that still holds the token can be handed out again, or read from a core dump),
//! which nothing outside the process could see.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// The system allocator, scanning each freed block while a secret is watched on its thread.
/// `realloc` is the trait's default (allocate, copy, free), so a block left behind by a
/// reallocation is scanned too.
struct Watching;

thread_local! {
    static SECRET: Cell<Option<&'static [u8]>> = const { Cell::new(None) };
    static FREED_HOLDING_IT: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every allocation is the system allocator's; dealloc only reads the block it is
// about to free, which is valid for `layout.size()` bytes, and allocates nothing.
unsafe impl GlobalAlloc for Watching {
    /// Zeroed, so that every byte a later scan reads is initialized, spare capacity included.
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // `try_with`: a thread's locals may be gone while it frees its last blocks.
        if let Ok(Some(secret)) = SECRET.try_with(Cell::get) {
            // SAFETY: `ptr` is a live block of `layout.size()` bytes until freed below, every
            // byte of it initialized (zeroed at allocation, then written by its owner); the
            // reads are volatile so that none is assumed away.
            let byte = |i: usize| unsafe { ptr.add(i).read_volatile() };
            let starts = layout
                .size()
                .checked_sub(secret.len())
                .map_or(0, |last| last + 1);
            let holds = (0..starts).any(|at| (0..secret.len()).all(|i| byte(at + i) == secret[i]));
            if holds {
                let _ = FREED_HOLDING_IT.try_with(|n| n.set(n.get() + 1));
            }
        }
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Watching = Watching;

/// Runs `f`, and counts the heap blocks it freed on this thread that still held `secret`.
pub fn blocks_freed_holding(secret: &'static [u8], f: impl FnOnce()) -> usize {
    /// Stops the watch however `f` ends, a panic included.
    struct Unwatch;
    impl Drop for Unwatch {
        fn drop(&mut self) {
            SECRET.with(|s| s.set(None));
        }
    }
    assert!(!secret.is_empty(), "an empty secret is in every block");
    FREED_HOLDING_IT.with(|n| n.set(0));
    SECRET.with(|s| s.set(Some(secret)));
    let unwatch = Unwatch;
    f();
    drop(unwatch);
    FREED_HOLDING_IT.with(Cell::get)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_secret_freed_as_is_is_seen_and_one_zeroed_first_is_not() {
        const SECRET: &[u8] = b"a-secret-that-only-these-tests-use";
        let plain = super::blocks_freed_holding(SECRET, || drop(SECRET.to_vec()));
        assert_eq!(plain, 1);
        let zeroed = super::blocks_freed_holding(SECRET, || {
            let mut copy = SECRET.to_vec();
            zeroize::Zeroize::zeroize(&mut copy);
        });
        assert_eq!(zeroed, 0);
    }
}
