//! lease: short-lived, narrowly scoped credentials for each command, CI step or agent run.
//!
//! `lease run` mints a random token, records its hash in a local store, hands the token to a
//! command in its environment, forwards signals, and revokes the token when the command exits.
//! `lease verify ACTION` is the other side: it tells a tool whether a presented token is still
//! valid and grants the action. See `docs/design.md` for how a run flows through the modules.

// `lease run` revokes its lease while a panic unwinds (`RevokeOnExit` in commands/run.rs); with
// `panic = "abort"` a panic would leave the lease live until its TTL. Refuse to build so.
#[cfg(panic = "abort")]
compile_error!("lease must be built with panic = \"unwind\": a panic must still revoke the lease");

pub mod account;
pub mod audit;
pub mod authorize;
pub mod broker;
pub mod child;
pub mod cli;
pub mod client;
pub mod commands;
pub mod config;
pub mod endpoint;
pub mod exit;
#[cfg(test)]
mod freed;
pub mod lease;
pub mod mask;
pub mod owner;
pub mod policy;
pub mod receipt;
pub mod record;
pub mod request;
pub mod route;
pub mod scope;
pub mod signals;
pub mod store;
pub mod tls_relay;
pub mod token;
pub mod ttl;
pub mod upstream;
pub mod wire;

use std::ffi::OsString;
use std::panic::{self, AssertUnwindSafe};

use cli::Rejected;
use exit::{Exit, ExitError};

/// `eprintln!` for lease's own messages: whatever they quote (a path, a value from a config,
/// an error from below), the line printed is one line ([`within_a_line`]) with no token in it.
macro_rules! say {
    ($($arg:tt)*) => {
        eprintln!("{}", $crate::one_line(&format!($($arg)*)))
    };
}
pub(crate) use say;

/// Makes a panic print one line on stderr, `WHO: internal error at FILE:LINE: WHAT; please
/// report this bug` (redacted, escaped), whatever thread it happens on, instead of Rust's
/// default lines.
pub fn report_panics_in_one_line(who: &'static str) {
    panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let what = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("a panic");
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        say!("{who}: internal error{at}: {what}; please report this bug");
    }));
}

/// `text` as lease prints a message: tokens redacted, made one line ([`within_a_line`]).
pub fn one_line(text: &str) -> String {
    within_a_line(&token::redact(text)).into_owned()
}

/// Runs lease with these arguments (including argv[0]) and returns how it should exit.
/// Errors are printed here, once, as `lease: what went wrong: why`.
pub fn main(args: Vec<OsString>) -> Exit {
    // A panic must not unwind out of the binary's C entry point (that aborts): the hook has
    // reported it; lease fails with 2, the status of a subcommand that cannot go on.
    panic::catch_unwind(AssertUnwindSafe(|| main_inner(args))).unwrap_or(Exit::Failure)
}

/// Whether lease started with its standard output closed (then filled with /dev/null): what
/// it prints there (a new token) would be lost.
pub static STDOUT_WAS_CLOSED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// What the standard library's start-up does before a Rust `main` and lease relies on, for a
/// binary with its own C entry point (see `src/main.rs`): descriptors 0, 1 and 2 open, so that
/// a file lease opens can never become its standard output (a closed one is opened on
/// `/dev/null`), and SIGPIPE ignored, so that a write to a closed pipe is an error lease
/// handles (`lease log | head`) instead of a silent death.
pub fn prepare_process() {
    // `open` returns the lowest free descriptor: a closed standard one is filled with
    // /dev/null and kept; the first descriptor above 2 means all three are open.
    while let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        let fd = std::os::fd::AsRawFd::as_raw_fd(&null);
        if fd > 2 {
            break;
        }
        if fd == 1 {
            STDOUT_WAS_CLOSED.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        // A standard descriptor is inherited: the command gets /dev/null there too.
        let inherited = nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty());
        let _ = nix::fcntl::fcntl(&null, inherited);
        std::mem::forget(null);
    }
    signals::ignore_sigpipe();
}

fn main_inner(args: Vec<OsString>) -> Exit {
    use std::io::Write as _;
    // lease holds tokens in memory: no core dump, and no ptrace by other processes of the user,
    // may read them. The command it starts is dumpable again from its exec on.
    #[cfg(target_os = "linux")]
    let _ = nix::sys::prctl::set_dumpable(false);
    report_panics_in_one_line("lease");
    let invocation = match cli::parse(args) {
        Ok(invocation) => invocation,
        Err(Rejected::Info(text)) => {
            // `--help >/dev/full`: said in one line, as any other output that cannot be written.
            let mut out = std::io::stdout().lock();
            return match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
                Ok(()) => Exit::Success,
                Err(err) => {
                    say!("lease: writing to standard output: {err}");
                    Exit::Failure
                }
            };
        }
        Err(Rejected::Help(text, exit)) => {
            // Help in place of an error goes to standard error; if that cannot be written,
            // there is nowhere left to say so.
            let _ = std::io::stderr().write_all(text.as_bytes());
            return exit;
        }
        Err(Rejected::UsageInJson(message, exit)) => {
            if let Err(err) = commands::print_undecided(authorize::Reason::Error) {
                say!("lease: {err:#}");
            }
            say!("lease: {message}");
            return exit;
        }
        Err(Rejected::Usage(message, exit)) => {
            // A value typed in the wrong place may be a token: never echo one back.
            say!("lease: {message}");
            return exit;
        }
    };
    let failure = invocation.failure;
    match panic::catch_unwind(AssertUnwindSafe(|| commands::dispatch(invocation))) {
        Ok(Ok(exit)) => exit,
        // The reader went away (`lease log | head`): nothing to report, as with any filter.
        Ok(Err(err)) if is_broken_pipe(&err) => Exit::Success,
        Ok(Err(err)) => {
            say!("lease: {err:#}");
            err.downcast_ref::<ExitError>()
                .map_or(failure, ExitError::exit)
        }
        // The hook has printed the panic; any lease was revoked while unwinding.
        Err(_) => failure,
    }
}

/// The longest error line lease prints, in bytes.
const MAX_ERROR: usize = 4096;

/// An error message made one line: a control character it quotes (a newline in a path, an
/// escape sequence in a value) is shown escaped (`\n`, `\u{1b}`), so that it can neither
/// break the line nor drive the terminal; and it is cut to [`MAX_ERROR`] bytes by its middle,
/// where a value it quotes is (a 1 MB value in a config quoted whole made a 1 MB line), its
/// start (what went wrong) and its end (the fix) kept.
fn within_a_line(message: &str) -> std::borrow::Cow<'_, str> {
    let escaped = |c: char| c.is_control() && c != '\t';
    let message = if message.contains(escaped) {
        let mut line = String::with_capacity(message.len() + 16);
        for c in message.chars() {
            if escaped(c) {
                line.extend(c.escape_default());
            } else {
                line.push(c);
            }
        }
        std::borrow::Cow::Owned(line)
    } else {
        std::borrow::Cow::Borrowed(message)
    };
    if message.len() <= MAX_ERROR {
        return message;
    }
    let mut head = MAX_ERROR / 2;
    while !message.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = message.len() - MAX_ERROR / 4;
    while !message.is_char_boundary(tail) {
        tail += 1;
    }
    let left_out = tail - head;
    std::borrow::Cow::Owned(format!(
        "{} …({left_out} bytes left out)… {}",
        &message[..head],
        &message[tail..]
    ))
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
