//! The `lease` binary: parse, run, exit. Everything else lives in the library.
//!
//! The entry point is the C `main`, not Rust's: the standard library's start-up probes the
//! main thread's stack bounds (glibc parses `/proc/self/maps` for it), a fifth of a `lease
//! verify`'s instructions, to report a stack overflow by name. lease does the two things of
//! that start-up it relies on itself, in [`lease::prepare_process`]: standard descriptors that
//! are open, and SIGPIPE ignored. Arguments still come from `std::env`, which glibc hands to
//! the standard library before `main` runs.
#![no_main]
#![deny(unsafe_code)]

use std::ffi::{c_char, c_int};

// SAFETY: this is the process's only `main`; the C runtime calls it once, with the arguments
// the standard library also reads through `std::env::args_os`.
#[allow(unsafe_code)]
#[unsafe(no_mangle)]
extern "C" fn main(_argc: c_int, _argv: *const *const c_char) -> c_int {
    lease::prepare_process();
    lease::main(std::env::args_os().collect()).terminate()
}
