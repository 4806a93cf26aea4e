//! `lease run --mask`: the token is replaced with `***` in the command's stdout and stderr.
//!
//! Only with `--mask` does lease sit between the command and the terminal. One thread per
//! stream reads the command's pipe and writes whole lines, masked, to lease's own stream, so the
//! output still streams line by line. A line without a newline is written at the end of the
//! stream, or when it grows long. When the command has exited, whatever it wrote is drained; a
//! grandchild that keeps the pipe open holds lease for at most a short drain.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, poll};
use zeroize::Zeroizing;

/// What the token is replaced with.
pub const MASK: &[u8] = b"***";
/// How long output is still drained after the command exits, while it keeps coming.
const DRAIN: Duration = Duration::from_millis(1000);
/// How long the pipe may stay quiet, once the command has exited, before lease stops reading.
const QUIET: Duration = Duration::from_millis(100);
/// A line longer than this is written in pieces (keeping back what could start a token).
const LONG_LINE: usize = 64 * 1024;

/// The two pumps of a masked run.
#[derive(Debug)]
pub struct Masker {
    pumps: Vec<JoinHandle<()>>,
    exited: Arc<AtomicBool>,
}

impl Masker {
    /// Starts masking `secret` in the command's `stdout` and `stderr` pipes.
    pub fn start(
        stdout: Option<std::process::ChildStdout>,
        stderr: Option<std::process::ChildStderr>,
        secret: &[u8],
    ) -> Masker {
        let exited = Arc::new(AtomicBool::new(false));
        let mut pumps = Vec::new();
        if let Some(out) = stdout {
            pumps.push(spawn_pump(out, std::io::stdout(), secret, &exited));
        }
        if let Some(err) = stderr {
            pumps.push(spawn_pump(err, std::io::stderr(), secret, &exited));
        }
        Masker { pumps, exited }
    }

    /// Called once the command has exited: drains what is left and returns.
    pub fn finish(self) {
        self.exited.store(true, Ordering::SeqCst);
        for pump in self.pumps {
            let _ = pump.join();
        }
    }
}

fn spawn_pump<R, W>(input: R, output: W, secret: &[u8], exited: &Arc<AtomicBool>) -> JoinHandle<()>
where
    R: Read + AsFd + Send + 'static,
    W: Write + Send + 'static,
{
    let secret = Zeroizing::new(secret.to_vec());
    let exited = Arc::clone(exited);
    thread::spawn(move || pump(input, output, &secret, &exited))
}

/// Copies `input` to `output` line by line with `secret` masked, until the end of the stream,
/// or until the command has exited and the stream went quiet (or the drain ran out).
fn pump(mut input: impl Read + AsFd, mut output: impl Write, secret: &[u8], exited: &AtomicBool) {
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = [0u8; 8192];
    let mut last_data = Instant::now();
    let mut drain_until: Option<Instant> = None;
    loop {
        let mut fds = [PollFd::new(input.as_fd(), PollFlags::POLLIN)];
        let ready = poll(&mut fds, 50u8).unwrap_or(0);
        if ready > 0 {
            match input.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    pending.extend_from_slice(&buf[..n]);
                    last_data = Instant::now();
                    write_complete_lines(&mut pending, &mut output, secret);
                }
            }
        }
        if exited.load(Ordering::SeqCst) {
            let until = *drain_until.get_or_insert_with(|| Instant::now() + DRAIN);
            if last_data.elapsed() >= QUIET || Instant::now() >= until {
                break;
            }
        }
    }
    let _ = output.write_all(&mask(&pending, secret));
    let _ = output.flush();
}

/// Writes every complete line of `pending` (masked) and keeps the rest; a line that grows too
/// long is written up to what could be the start of a token.
fn write_complete_lines(pending: &mut Vec<u8>, output: &mut impl Write, secret: &[u8]) {
    let cut = match pending.iter().rposition(|b| *b == b'\n') {
        Some(newline) => newline + 1,
        None if pending.len() > LONG_LINE => pending.len() - secret.len().saturating_sub(1),
        None => return,
    };
    let rest = pending.split_off(cut);
    let _ = output.write_all(&mask(pending, secret));
    let _ = output.flush();
    *pending = rest;
}

/// `text` with every occurrence of `secret` replaced by [`MASK`].
pub fn mask(text: &[u8], secret: &[u8]) -> Vec<u8> {
    if secret.is_empty() {
        return text.to_vec();
    }
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        if text[i..].starts_with(secret) {
            out.extend_from_slice(MASK);
            i += secret.len();
        } else {
            out.push(text[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_every_occurrence() {
        assert_eq!(
            mask(b"a SECRET b SECRETSECRET", b"SECRET"),
            b"a *** b ******"
        );
        assert_eq!(mask(b"SECRE", b"SECRET"), b"SECRE");
        assert_eq!(mask(b"", b"SECRET"), b"");
    }

    #[test]
    fn long_lines_keep_back_what_could_start_a_token() {
        let secret = b"agt_SECRET";
        let mut pending = vec![b'x'; LONG_LINE + 5];
        pending.extend_from_slice(b"agt_SE");
        let mut out = Vec::new();
        write_complete_lines(&mut pending, &mut out, secret);
        assert!(
            pending.ends_with(b"agt_SE"),
            "the possible start of a token is kept"
        );
        assert_eq!(out.len() + pending.len(), LONG_LINE + 11);
    }
}
