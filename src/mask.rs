//! `lease run --mask`: the token is replaced with `***` in the command's stdout and stderr.
//!
//! Only with `--mask` does lease sit between the command and the terminal. One thread per
//! stream reads the command's pipe and writes what it read, masked, to lease's own stream as
//! soon as it has it: lines, partial lines and prompts alike, so the output streams as the
//! command writes it. The one thing held back is a possible start of the token: the longest
//! tail of what was read that is a proper prefix of the token (for instance a trailing `a`,
//! `agt_` or `agt_Zx`), until the next byte shows whether the token follows, or the stream
//! ends. A token is therefore masked wherever it falls, however the command's writes and
//! lease's reads cut it, in lines of any length ([`Stream`]).
//!
//! When lease cannot write its output any more (the reader went away: `lease run --mask -- yes
//! | head -1`), the pump stops reading and closes the command's pipe, so the command gets
//! SIGPIPE (or EPIPE) at its next write, as it would without lease, and lease ends as it does.
//!
//! When the command has exited, whatever it wrote is drained; a grandchild that keeps the pipe
//! open holds lease for at most a short drain.

use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use zeroize::Zeroizing;

/// What the token is replaced with.
pub const MASK: &[u8] = b"***";
/// How long output is still drained after the command exits, while it keeps coming.
const DRAIN: Duration = Duration::from_millis(1000);
/// How long the pipe may stay quiet, once the command has exited, before lease stops reading.
const QUIET: Duration = Duration::from_millis(100);
/// How much one read takes from the command's pipe (a whole pipe buffer).
const READ_SIZE: usize = 64 * 1024;

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
            pumps.push(spawn_pump(out, FdWriter(io::stdout()), secret, &exited));
        }
        if let Some(err) = stderr {
            pumps.push(spawn_pump(err, FdWriter(io::stderr()), secret, &exited));
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
    thread::spawn(move || {
        pump(input, output, &secret, &exited);
    })
}

/// How a pump ended.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// The stream ended, or the command exited and the stream went quiet (or the drain ran
    /// out): everything read was written.
    Drained,
    /// lease's own output could not be written: the command's pipe was closed.
    OutputGone,
}

/// Copies `input` to `output` with `secret` masked, as it comes, until the end of the stream,
/// or until the command has exited and the stream went quiet (or the drain ran out). If
/// `output` fails, stops at once; `input` is dropped on return, which closes the command's pipe.
fn pump(
    mut input: impl Read + AsFd,
    mut output: impl Write,
    secret: &[u8],
    exited: &AtomicBool,
) -> Ended {
    let mut stream = Stream::new(secret);
    let mut buf = Zeroizing::new(vec![0u8; READ_SIZE]);
    let mut out = Zeroizing::new(Vec::new());
    let mut last_data = Instant::now();
    let mut drain_until: Option<Instant> = None;
    loop {
        let mut fds = [PollFd::new(input.as_fd(), PollFlags::POLLIN)];
        let ready = poll(&mut fds, PollTimeout::from(50u8)).unwrap_or(0);
        if ready > 0 {
            match input.read(&mut buf) {
                Ok(0) => break,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
                Ok(n) => {
                    out.clear();
                    stream.feed(&buf[..n], &mut out);
                    last_data = Instant::now();
                    if write_now(&mut output, &out).is_err() {
                        return Ended::OutputGone;
                    }
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
    out.clear();
    stream.finish(&mut out);
    match write_now(&mut output, &out) {
        Ok(()) => Ended::Drained,
        Err(_) => Ended::OutputGone,
    }
}

fn write_now(output: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    if !bytes.is_empty() {
        output.write_all(bytes)?;
    }
    output.flush()
}

/// Writes straight to a file descriptor (lease's stdout or stderr), without the standard
/// library's buffering, and reports every error, EPIPE included (lease ignores SIGPIPE). A
/// descriptor that was handed over non-blocking is waited on rather than given up on.
struct FdWriter<F>(F);

impl<F: AsFd> Write for FdWriter<F> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        loop {
            match nix::unistd::write(self.0.as_fd(), buf) {
                Ok(n) => return Ok(n),
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => {
                    let mut fds = [PollFd::new(self.0.as_fd(), PollFlags::POLLOUT)];
                    let _ = poll(&mut fds, PollTimeout::NONE);
                }
                Err(errno) => return Err(errno.into()),
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Masks a stream that arrives in pieces: the output of [`Stream::feed`] for every piece,
/// followed by that of [`Stream::finish`], is exactly [`mask`] of the whole stream, however it
/// was cut.
///
/// Every byte is decided as soon as what follows it is known well enough: a byte that starts
/// the secret is masked along with it; a byte from which the rest of what was read cannot
/// be the secret is written. Only the longest tail of the input that is a proper prefix of the
/// secret is kept back, since the next piece decides whether the secret follows.
#[derive(Debug)]
pub struct Stream {
    secret: Zeroizing<Vec<u8>>,
    held: Zeroizing<Vec<u8>>,
    scratch: Zeroizing<Vec<u8>>,
}

impl Stream {
    /// A stream in which `secret` is masked.
    pub fn new(secret: &[u8]) -> Stream {
        Stream {
            secret: Zeroizing::new(secret.to_vec()),
            held: Zeroizing::new(Vec::new()),
            scratch: Zeroizing::new(Vec::new()),
        }
    }

    /// Takes the next piece of the stream and appends to `out` what can be written now.
    pub fn feed(&mut self, piece: &[u8], out: &mut Vec<u8>) {
        let secret: &[u8] = &self.secret;
        let Some(&first) = secret.first() else {
            out.extend_from_slice(piece);
            return;
        };
        let text = &mut self.scratch;
        text.clear();
        text.extend_from_slice(&self.held);
        text.extend_from_slice(piece);
        self.held.clear();
        let mut i = 0;
        while i < text.len() {
            // Nothing before the next occurrence of the secret's first byte can start it.
            let Some(skip) = text[i..].iter().position(|&b| b == first) else {
                out.extend_from_slice(&text[i..]);
                return;
            };
            out.extend_from_slice(&text[i..i + skip]);
            i += skip;
            let rest = &text[i..];
            if rest.len() >= secret.len() {
                if rest.starts_with(secret) {
                    out.extend_from_slice(MASK);
                    i += secret.len();
                } else {
                    out.push(rest[0]);
                    i += 1;
                }
            } else if secret.starts_with(rest) {
                // Could still be the secret: the next piece (or the end) decides.
                self.held.extend_from_slice(rest);
                return;
            } else {
                out.push(rest[0]);
                i += 1;
            }
        }
    }

    /// The stream has ended: appends what was kept back (it was not the secret).
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.held);
        self.held.clear();
    }

    /// How many bytes are kept back, waiting for the next piece.
    pub fn held(&self) -> usize {
        self.held.len()
    }
}

/// `text` with every occurrence of `secret` replaced by [`MASK`], scanning from the left
/// (occurrences do not overlap).
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
    use proptest::prelude::*;

    /// A real token's shape: `agt_` and 48 base64url characters.
    const TOKEN: &[u8] = b"agt_Zx3kQ9v-Lm2Pq7Rs1Tu8Vw4Xy5Za6Bc0De_Fg9Hi2Jk3Lm4No5";

    fn masked_in_pieces(input: &[u8], cuts: &[usize], secret: &[u8]) -> Vec<u8> {
        let mut stream = Stream::new(secret);
        let mut out = Vec::new();
        let mut start = 0;
        for &cut in cuts {
            stream.feed(&input[start..cut], &mut out);
            start = cut;
        }
        stream.feed(&input[start..], &mut out);
        stream.finish(&mut out);
        out
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

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
    fn keeps_back_only_what_could_start_the_secret() {
        let mut stream = Stream::new(TOKEN);
        let mut out = Vec::new();
        stream.feed(b"Password: ", &mut out);
        assert_eq!(out, b"Password: ", "a prompt is written at once");
        out.clear();
        stream.feed(b"xxagt_Zx", &mut out);
        assert_eq!(out, b"xx");
        assert_eq!(stream.held(), 6);
        out.clear();
        stream.feed(b"Q", &mut out);
        assert_eq!(out, b"agt_ZxQ", "not the token after all");
        assert_eq!(stream.held(), 0);
        out.clear();
        stream.feed(b"a", &mut out);
        stream.feed(b"gt_", &mut out);
        assert!(out.is_empty());
        stream.feed(&TOKEN[4..], &mut out);
        stream.feed(b"\n", &mut out);
        assert_eq!(out, b"***\n");
    }

    #[test]
    fn a_token_cut_one_byte_at_a_time_is_masked() {
        let mut input = vec![b'x'; 70_000];
        input.extend_from_slice(TOKEN);
        input.push(b'\n');
        let cuts: Vec<usize> = (1..input.len()).collect();
        let out = masked_in_pieces(&input, &cuts, TOKEN);
        assert_eq!(out, mask(&input, TOKEN));
        assert!(out.ends_with(b"x***\n"));
    }

    #[test]
    fn self_overlapping_secrets_mask_as_the_whole_input_does() {
        for (input, secret) in [
            (&b"aaaaaaa"[..], &b"aaa"[..]),
            (b"abababab", b"abab"),
            (b"aabaabaab", b"aabaab"),
        ] {
            for cut in 0..=input.len() {
                assert_eq!(
                    masked_in_pieces(input, &[cut], secret),
                    mask(input, secret),
                    "{input:?} cut at {cut}"
                );
            }
        }
    }

    /// A pump that cannot write stops reading at once and closes the command's pipe.
    #[test]
    fn a_pump_whose_output_fails_stops_and_closes_the_command_pipe() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::from(io::ErrorKind::BrokenPipe))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let (reader, mut writer) = std::io::pipe().expect("a pipe");
        writer.write_all(b"y\n").expect("room in the pipe");
        let exited = AtomicBool::new(false);
        assert_eq!(pump(reader, Broken, TOKEN, &exited), Ended::OutputGone);
        let err = writer
            .write_all(b"y\n")
            .expect_err("the pipe has no reader");
        assert_eq!(
            err.kind(),
            io::ErrorKind::BrokenPipe,
            "the read end is closed"
        );
    }

    proptest! {
        // Each case runs some sixty inputs of 64 KiB: a few cases cover every offset.
        #![proptest_config(ProptestConfig::with_cases(16))]

        /// The token at every offset around the size of one read (and of a pipe buffer),
        /// written in random pieces: the output never holds the token, and is what masking
        /// the whole input gives.
        #[test]
        fn a_token_anywhere_in_any_pieces_is_masked(
            decoy in 0usize..TOKEN.len(),
            extra in prop::collection::vec(any::<u8>(), 0..8),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
            newline in any::<bool>(),
        ) {
            for offset in (READ_SIZE - TOKEN.len() - 2)..=(READ_SIZE + 2) {
                // x's, then a decoy (a proper prefix of the token) right before the token, which
                // starts at `offset`: what is kept back must restart inside the decoy.
                let mut input = vec![b'x'; offset - decoy];
                input.extend_from_slice(&TOKEN[..decoy]);
                input.extend_from_slice(TOKEN);
                input.extend_from_slice(&extra);
                if newline {
                    input.push(b'\n');
                }
                let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(input.len() + 1)).collect();
                cuts.push(READ_SIZE.min(input.len()));
                cuts.push(offset + TOKEN.len() / 2);
                cuts.sort_unstable();
                let out = masked_in_pieces(&input, &cuts, TOKEN);
                prop_assert!(!contains(&out, TOKEN), "the token leaked at offset {}", offset);
                prop_assert_eq!(&out, &mask(&input, TOKEN));
            }
        }
    }

    proptest! {
        /// Any bytes, any secret, any cuts: the same as masking the whole.
        #[test]
        fn pieces_mask_like_the_whole(
            input in prop::collection::vec(prop::sample::select(b"abx\n".to_vec()), 0..200),
            secret in prop::collection::vec(prop::sample::select(b"ab".to_vec()), 1..6),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..20),
        ) {
            let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(input.len() + 1)).collect();
            cuts.sort_unstable();
            prop_assert_eq!(masked_in_pieces(&input, &cuts, &secret), mask(&input, &secret));
        }
    }
}
