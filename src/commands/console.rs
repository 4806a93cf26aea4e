//! Where a subcommand prints: the process's stdout and stderr, or, when the broker runs the
//! subcommand for a client (`POST /v1/commands`), two buffers that go back to that client, so
//! that it prints exactly what a local run would have.

use std::cell::RefCell;
use std::io::{self, Write};

thread_local! {
    /// The buffers of the subcommand this thread runs for a broker's client, if it does.
    static CAPTURED: RefCell<Option<Captured>> = const { RefCell::new(None) };
}

/// What a subcommand run for a broker's client printed.
#[derive(Debug, Default)]
pub struct Captured {
    /// Its standard output.
    pub out: Vec<u8>,
    /// Its standard error.
    pub err: Vec<u8>,
    /// Whether it wrote to standard error before anything to standard output (a note before
    /// the answer), so that the client prints them in that order.
    pub err_first: bool,
}

/// Standard output, or the captured one.
#[derive(Debug)]
pub struct Out;

/// Standard error, or the captured one.
#[derive(Debug)]
pub struct Err;

fn write_to(stderr: bool, buf: &[u8]) -> io::Result<usize> {
    CAPTURED.with(|captured| match &mut *captured.borrow_mut() {
        Some(captured) => {
            if stderr {
                captured.err_first |= captured.out.is_empty();
                captured.err.extend_from_slice(buf);
            } else {
                captured.out.extend_from_slice(buf);
            }
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

/// Runs `f` with what it prints captured: its result, and what it printed.
pub fn captured<T>(f: impl FnOnce() -> T) -> (T, Captured) {
    CAPTURED.with(|captured| *captured.borrow_mut() = Some(Captured::default()));
    let result = f();
    let printed = CAPTURED
        .with(|captured| captured.borrow_mut().take())
        .unwrap_or_default();
    (result, printed)
}

/// `eprintln!` for subcommands: a line on their stderr, wherever that is.
macro_rules! note {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(
            $crate::commands::console::Err,
            "{}",
            $crate::one_line(&format!($($arg)*))
        );
    }};
}
pub(crate) use note;
