//! Where a subcommand prints: the process's stdout and stderr, or, when the broker runs the
//! subcommand for a client (`POST /v1/commands`), two buffers that go back to that client, so
//! that it prints exactly what a local run would have.

use std::cell::RefCell;
use std::io::{self, Write};

thread_local! {
    /// The buffers of the subcommand this thread runs for a broker's client, if it does.
    static CAPTURED: RefCell<Option<(Vec<u8>, Vec<u8>)>> = const { RefCell::new(None) };
}

/// Standard output, or the captured one.
#[derive(Debug)]
pub struct Out;

/// Standard error, or the captured one.
#[derive(Debug)]
pub struct Err;

fn write_to(stderr: bool, buf: &[u8]) -> io::Result<usize> {
    CAPTURED.with(|captured| match &mut *captured.borrow_mut() {
        Some((out, err)) => {
            if stderr { err } else { out }.extend_from_slice(buf);
            Ok(buf.len())
        }
        None if stderr => io::stderr().write(buf),
        None => io::stdout().write(buf),
    })
}

impl Write for Out {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        write_to(false, buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stdout().flush()
    }
}

impl Write for Err {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        write_to(true, buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Runs `f` with what it prints captured: its result, its stdout and its stderr.
pub fn captured<T>(f: impl FnOnce() -> T) -> (T, Vec<u8>, Vec<u8>) {
    CAPTURED.with(|captured| *captured.borrow_mut() = Some((Vec::new(), Vec::new())));
    let result = f();
    let (out, err) = CAPTURED
        .with(|captured| captured.borrow_mut().take())
        .unwrap_or_default();
    (result, out, err)
}

/// `eprintln!` for subcommands: a line on their stderr, wherever that is.
macro_rules! note {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!($crate::commands::console::Err, $($arg)*);
    }};
}
pub(crate) use note;
