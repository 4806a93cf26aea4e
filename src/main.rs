//! The `lease` binary: parse, run, exit. Everything else lives in the library.
#![forbid(unsafe_code)]

fn main() {
    lease::main(std::env::args_os().collect()).terminate()
}
