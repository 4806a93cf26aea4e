//! The client side of the broker: one blocking HTTP/1.1 request over a unix socket or TCP,
//! with no async runtime, so that a subcommand sent to a broker starts as fast as a local one.
//!
//! Every step has a bound ([`TIMEOUT`] to connect, to send, to receive), the answer is read
//! up to [`MAX_ANSWER`] bytes, and the token travels only in the `Authorization` header of a
//! buffer that is zeroed when dropped.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr, sockopt};
use nix::sys::time::TimeVal;
use zeroize::Zeroizing;

use crate::endpoint::Endpoint;
use crate::token::Token;

/// The bound on connecting, and on each read and write.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// The largest answer read from a broker: `lease list --json` of a store of 100,000 leases
/// (about 300 bytes each) fits.
const MAX_ANSWER: u64 = 64 * 1024 * 1024;
/// The longest a whole answer may take to arrive.
const ANSWER_DEADLINE: Duration = Duration::from_secs(10);

/// A broker's answer.
#[derive(Debug)]
pub struct Answer {
    /// The HTTP status code.
    pub status: u16,
    /// The body (a mint's holds a token: zeroed when dropped).
    pub body: Zeroizing<Vec<u8>>,
}

impl Answer {
    /// Why the broker refused, in one line: the `error` of its JSON body (`{"error": ...}`);
    /// `None` when the body is not one. Redacted of anything shaped like a token.
    pub fn reason(&self) -> Option<String> {
        #[derive(serde::Deserialize)]
        struct Error {
            error: String,
        }
        let error = serde_json::from_slice::<Error>(&self.body).ok()?;
        Some(crate::token::redact(&one_line(&error.error, usize::MAX)).into_owned())
    }

    /// An answer that is not the broker's (another server's: a proxy's error page, say), in
    /// one line that names `endpoint`.
    pub fn unexpected(&self, endpoint: &Endpoint) -> String {
        let text = String::from_utf8_lossy(&self.body);
        let began = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .map(|l| format!(" (it began: {})", one_line(l, 60)))
            .unwrap_or_default();
        let line = format!(
            "broker {endpoint} answered {} and not as a lease broker does: is another server in between?{began}",
            self.status
        );
        crate::token::redact(&line).into_owned()
    }
}

/// `text` on one line (control characters, line breaks among them, as spaces), cut after
/// `max` characters.
fn one_line(text: &str, max: usize) -> String {
    let mut line: String = text
        .chars()
        .take(max)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().nth(max).is_some() {
        line.push_str("...");
    }
    line
}

/// `POST`s `body` as JSON to `path` and reads a 200 answer as a `T` (`what` names it in an
/// error); any other status is an error with the broker's own reason.
pub fn call<T: serde::de::DeserializeOwned>(
    endpoint: &Endpoint,
    path: &str,
    token: Option<&Token>,
    body: &impl serde::Serialize,
    what: &str,
) -> Result<T> {
    call_taking(endpoint, path, (token, body), what, false)
}

/// `POST /v1/commands`: what the broker's run of a subcommand printed. It comes with a `200`,
/// or with a `401` when the command was about a token that is no credential (malformed,
/// unknown, ended): the command still said so in its own words, which the client prints.
pub fn run_command(
    endpoint: &Endpoint,
    token: Option<&Token>,
    asked: &crate::wire::Remote,
) -> Result<crate::wire::Printed> {
    call_taking(
        endpoint,
        "/v1/commands",
        (token, asked),
        "a command's output",
        true,
    )
}

/// [`call`], taking the answer from a `401` too when `unauthorized` is set and it reads as one.
fn call_taking<T: serde::de::DeserializeOwned>(
    endpoint: &Endpoint,
    path: &str,
    (token, body): (Option<&Token>, &impl serde::Serialize),
    what: &str,
    unauthorized: bool,
) -> Result<T> {
    let body = serde_json::to_vec(body)?;
    let answer = request(endpoint, "POST", path, token, Some(&body))?;
    match answer.status {
        200 => serde_json::from_slice(&answer.body)
            .with_context(|| format!("broker {endpoint} answered something that is not {what}")),
        401 if unauthorized && let Ok(taken) = serde_json::from_slice(&answer.body) => Ok(taken),
        _ => bail!(
            "{}",
            answer
                .reason()
                .unwrap_or_else(|| answer.unexpected(endpoint))
        ),
    }
}

/// Writes the `Authorization` line for `token`. A value that is not a lease token (a
/// `ghp_...` left in `LEASE_TOKEN`, another service's key in `--token-env`) is never sent to
/// the broker, over a network least of all: the bare prefix goes in its place, which the
/// broker refuses in the same words as any malformed token.
fn write_bearer(head: &mut Vec<u8>, token: &Token) -> std::io::Result<()> {
    let sent = if token.is_well_formed() {
        token.expose()
    } else {
        crate::token::PREFIX
    };
    write!(head, "Authorization: Bearer {sent}\r\n")
}

/// Sends one request to the broker at `endpoint` and reads its answer; `token`, if any, goes
/// in `Authorization: Bearer`. Errors name the broker.
pub fn request(
    endpoint: &Endpoint,
    method: &str,
    path: &str,
    token: Option<&Token>,
    body: Option<&[u8]>,
) -> Result<Answer> {
    let exchange = || -> Result<Answer> {
        // The head holds the token: the buffer is zeroed when dropped.
        let mut head = Zeroizing::new(Vec::with_capacity(256));
        let host = match endpoint {
            Endpoint::Unix(_) => "lease",
            Endpoint::Http(authority) | Endpoint::Https(authority) => authority,
        };
        write!(
            head,
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
        )?;
        if let Some(token) = token {
            write_bearer(&mut head, token)?;
        }
        if let Some(body) = body {
            write!(
                head,
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            )?;
        }
        head.extend_from_slice(b"\r\n");
        head.extend_from_slice(body.unwrap_or_default());
        let raw = send(Conn::open(endpoint, TIMEOUT)?, &head)?;
        parse(&raw)
    };
    exchange().map_err(|err| {
        anyhow!(
            "broker {endpoint}: {}",
            crate::token::redact(&format!("{err:#}"))
        )
    })
}

/// Connects to a unix socket within `limit` (a broker whose backlog is full would otherwise
/// keep `connect` waiting); each read and write then waits at most `limit` too.
fn connect_unix(path: &Path, limit: Duration) -> Result<UnixStream> {
    let fd: OwnedFd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .context("creating a socket")?;
    limit_waits(std::os::fd::AsFd::as_fd(&fd), limit)?;
    let address = UnixAddr::new(path).context("socket path")?;
    socket::connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &address).map_err(|errno| {
        let io = std::io::Error::from(errno);
        match errno {
            // Nothing listens there: say what to check.
            nix::errno::Errno::ENOENT | nix::errno::Errno::ECONNREFUSED => {
                anyhow!("connecting: {io}: is `lease serve` running, and listening on this socket?")
            }
            _ => anyhow::Error::from(io).context("connecting"),
        }
    })?;
    Ok(UnixStream::from(fd))
}

/// Makes each read and write on `fd` wait at most `limit` (at least a millisecond: a zero
/// would mean no bound at all).
fn limit_waits(fd: std::os::fd::BorrowedFd<'_>, limit: Duration) -> Result<()> {
    let limit = limit.clamp(Duration::from_millis(1), TIMEOUT);
    let timeout = TimeVal::new(limit.as_secs() as _, limit.subsec_micros() as _);
    socket::setsockopt(&fd, sockopt::SendTimeout, &timeout)?;
    socket::setsockopt(&fd, sockopt::ReceiveTimeout, &timeout)?;
    Ok(())
}

fn connect_tcp(authority: &str, limit: Duration) -> Result<TcpStream> {
    let mut last = None;
    for address in authority
        .to_socket_addrs()
        .context("resolving the address")?
    {
        match TcpStream::connect_timeout(&address, limit.max(Duration::from_millis(1))) {
            Ok(stream) => {
                limit_waits(std::os::fd::AsFd::as_fd(&stream), limit)?;
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(err) => last = Some(err),
        }
    }
    Err(last.map_or_else(|| anyhow!("no address"), |err| anyhow!("connecting: {err}")))
}

fn send(mut stream: impl Read + Write, request: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    // A broker that refuses a request before reading all of it (a body over its limit: 413)
    // answers and closes: its answer, if it can still be read, says more than the broken pipe.
    let unsent = match stream.write_all(request) {
        Ok(()) => None,
        Err(err)
            if matches!(
                err.kind(),
                ErrorKind::BrokenPipe | ErrorKind::ConnectionReset
            ) =>
        {
            Some(err)
        }
        Err(err) => return Err(anyhow::Error::from(err).context("sending")),
    };
    let raw = receive(&mut stream);
    match (unsent, raw) {
        (Some(err), Ok(raw)) if raw.is_empty() => Err(anyhow::Error::from(err).context("sending")),
        (Some(err), Err(_)) => Err(anyhow::Error::from(err).context("sending")),
        (_, raw) => raw,
    }
}

/// The whole answer on `stream`, read until the broker closes it.
fn receive(mut stream: impl Read) -> Result<Zeroizing<Vec<u8>>> {
    let mut raw = Zeroizing::new(Vec::new());
    // Each read waits at most TIMEOUT; the whole answer, at most ANSWER_DEADLINE, so that a
    // broker dripping bytes cannot hold the client either.
    let deadline = std::time::Instant::now() + ANSWER_DEADLINE;
    let mut chunk = [0u8; 8192];
    loop {
        if std::time::Instant::now() > deadline {
            bail!("the answer took longer than {}s", ANSWER_DEADLINE.as_secs());
        }
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&chunk[..n]),
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            // A TLS peer that closes without close_notify after a whole answer: `parse`
            // checks that the answer is whole.
            Err(err) if err.kind() == ErrorKind::UnexpectedEof && !raw.is_empty() => {
                break;
            }
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                bail!("no answer within {}s", TIMEOUT.as_secs());
            }
            Err(err) => return Err(anyhow::Error::from(err).context("reading the answer")),
        }
        if raw.len() as u64 > MAX_ANSWER {
            break;
        }
    }
    chunk.fill(0);
    if raw.len() as u64 > MAX_ANSWER {
        bail!("the answer is larger than {MAX_ANSWER} bytes");
    }
    Ok(raw)
}

/// Parses a whole HTTP/1.1 response (the connection was closed after it).
fn parse(raw: &[u8]) -> Result<Answer> {
    let (status, length, end) = parse_head(raw)?;
    let mut body = Zeroizing::new(raw[end..].to_vec());
    if let Some(length) = length {
        if body.len() < length {
            bail!("its answer was cut short");
        }
        body.truncate(length);
    }
    Ok(Answer { status, body })
}

/// The status of the answer that begins `raw`, its `Content-Length` if it has one, and where
/// its head ends.
fn parse_head(raw: &[u8]) -> Result<(u16, Option<usize>, usize)> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let end = match response.parse(raw) {
        Ok(httparse::Status::Complete(end)) => end,
        Ok(httparse::Status::Partial) if raw.is_empty() => {
            bail!("it closed the connection without answering")
        }
        Ok(httparse::Status::Partial) => bail!("its answer was cut short"),
        Err(err) => bail!("its answer is not HTTP: {err}"),
    };
    let status = response
        .code
        .ok_or_else(|| anyhow!("its answer has no status"))?;
    let mut length = None;
    for header in response.headers.iter() {
        if header.name.eq_ignore_ascii_case("content-length") {
            length = Some(
                std::str::from_utf8(header.value)
                    .ok()
                    .and_then(|v| v.trim().parse().ok())
                    .ok_or_else(|| anyhow!("its answer has a bad Content-Length"))?,
            );
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            bail!("its answer uses a transfer encoding this client does not read");
        }
    }
    Ok((status, length, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A broker that answers (413) and closes before it has read the whole request: the
    /// client reads that answer rather than failing on the broken pipe.
    #[test]
    fn an_answer_given_before_the_whole_request_was_read_is_still_read() {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().expect("a pair");
        ours.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let broker = std::thread::spawn(move || {
            let mut theirs = theirs;
            let mut head = [0u8; 16];
            theirs.read_exact(&mut head).expect("the request's start");
            theirs
                .write_all(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 2\r\n\r\n{}")
                .expect("the answer");
        });
        // Far more than the socket's buffers hold: the write is still going when it closes.
        let request = vec![b'x'; 8 << 20];
        let raw = send(&ours, &request).expect("the answer");
        assert!(
            raw.starts_with(b"HTTP/1.1 413 "),
            "{:?}",
            String::from_utf8_lossy(&raw)
        );
        broker.join().expect("the broker");
    }

    #[test]
    fn a_whole_answer_parses() {
        let answer =
            parse(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 2\r\n\r\n{}trailing").expect("valid");
        assert_eq!(answer.status, 403);
        assert_eq!(answer.body.as_slice(), b"{}");
    }

    #[test]
    fn garbage_and_short_answers_are_errors() {
        assert!(parse(b"").is_err());
        assert!(parse(b"hello\r\n\r\n").is_err());
        assert!(parse(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n{}").is_err());
        assert!(parse(b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n{}").is_err());
        assert!(
            parse(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n")
                .is_err()
        );
    }
}

/// A connection to a broker: a unix socket, TCP, or the socket to a TLS relay.
#[derive(Debug)]
enum Conn {
    Unix(UnixStream),
    Tcp(TcpStream),
    Relay(Relay),
}

/// The plain end of a TLS connection that `lease-broker --tls-relay` carries (see
/// [`crate::tls_relay`]); the relay is ended and reaped when this is dropped.
#[derive(Debug)]
struct Relay {
    socket: UnixStream,
    child: std::process::Child,
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the TLS relay to `authority` next to this binary and waits for its first line.
fn relay(authority: &str, limit: Duration) -> Result<Conn> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().context("cannot find lease's own binary")?;
    let helper = exe.with_file_name("lease-broker");
    let (socket, theirs) = UnixStream::pair().context("creating a socket pair")?;
    let child = std::process::Command::new(&helper)
        .arg("--tls-relay")
        .arg(authority)
        .stdin(std::process::Stdio::from(std::os::fd::OwnedFd::from(
            theirs,
        )))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        // Its own process group: a terminal's Ctrl-C is the command's to handle, and must not
        // cut the run's connection under it.
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start the TLS relay {}", helper.display()))?;
    limit_waits(std::os::fd::AsFd::as_fd(&socket), limit)?;
    let mut relay = Relay { socket, child };
    // Its first line: `ok`, or `error: WHY`.
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < 4096 {
        match relay.socket.read(&mut byte) {
            Ok(1) if byte[0] == b'\n' => break,
            Ok(1) => line.push(byte[0]),
            _ => bail!("the TLS relay ended without a word"),
        }
    }
    let line = String::from_utf8_lossy(&line).into_owned();
    match line.strip_prefix("error: ") {
        None if line == "ok" => Ok(Conn::Relay(relay)),
        Some(why) => bail!("{why}"),
        None => bail!("the TLS relay said something else"),
    }
}

impl Conn {
    /// Connects, each step (and each read and write after) waiting at most `limit`.
    fn open(endpoint: &Endpoint, limit: Duration) -> Result<Conn> {
        match endpoint {
            Endpoint::Unix(path) => Ok(Conn::Unix(connect_unix(path, limit)?)),
            Endpoint::Http(authority) => Ok(Conn::Tcp(connect_tcp(authority, limit)?)),
            Endpoint::Https(authority) => relay(authority, limit),
        }
    }

    fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        match self {
            Conn::Unix(s) => s.as_fd(),
            Conn::Tcp(s) => s.as_fd(),
            Conn::Relay(r) => r.socket.as_fd(),
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Unix(s) => s.read(buf),
            Conn::Tcp(s) => s.read(buf),
            Conn::Relay(r) => r.socket.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Unix(s) => s.write(buf),
            Conn::Tcp(s) => s.write(buf),
            Conn::Relay(r) => r.socket.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Conn::Unix(s) => s.flush(),
            Conn::Tcp(s) => s.flush(),
            Conn::Relay(r) => r.socket.flush(),
        }
    }
}

/// The longest line, and the longest answer head, a held run reads from its broker.
const MAX_HELD_LINE: usize = 64 * 1024;

/// The broker's refusal of a run, in the words a local run would have used.
#[derive(Debug)]
pub struct Refusal(String);

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refusal {}

/// Whether `err` is the broker saying the run's lease has ended (revoked, or `owner gone`
/// after its connection was lost too long): no attach can bring it back.
pub fn lease_has_ended(err: &anyhow::Error) -> bool {
    err.downcast_ref::<Refusal>()
        .is_some_and(|refusal| refusal.0.ends_with(" has ended"))
}

/// A run's connection to the broker (`/v1/runs`), upgraded to JSON lines: it holds the run's
/// lease for as long as it is open (docs/api.md).
#[derive(Debug)]
pub struct Hold {
    endpoint: Endpoint,
    conn: Conn,
    /// Bytes read and not consumed yet.
    buffered: Vec<u8>,
    /// Past it, no read starts: each read waits at most its own limit, and this bounds a broker
    /// that drips an answer a byte at a time within it (to the deadline and one read's limit).
    deadline: Option<std::time::Instant>,
}

impl Hold {
    /// Starts a run: mints its lease as `body` asks (nested in `parent`'s, if given), held by
    /// this connection. A refusal is a [`Refusal`], with the broker's reason.
    pub fn start(
        endpoint: &Endpoint,
        parent: Option<&Token>,
        body: &crate::wire::MintBody,
    ) -> Result<(Hold, crate::wire::Started)> {
        // The first line goes with the request (the broker reads it once the connection is
        // upgraded): one round trip less before the command can start.
        let mut first = serde_json::to_vec(body)?;
        first.push(b'\n');
        let mut hold = Hold::open(endpoint, "/v1/runs", (parent, None), &first, TIMEOUT)?;
        match hold.receive()? {
            crate::wire::FromBroker::Started(started) => {
                hold.deadline = None;
                Ok((hold, *started))
            }
            crate::wire::FromBroker::Error(why) => {
                Err(Refusal(crate::token::redact(&why).into_owned()).into())
            }
            _ => bail!("broker {endpoint}: answered a run with something else"),
        }
    }

    /// Takes a run's lease back on a new connection, proving it holds `token` and is the
    /// run's wrapper (`secret`, which the command never sees); each step waits at most `limit`.
    pub fn attach(
        endpoint: &Endpoint,
        token: &Token,
        secret: &Token,
        limit: Duration,
    ) -> Result<Hold> {
        let mut hold = Hold::open(
            endpoint,
            "/v1/runs/attach",
            (Some(token), Some(secret)),
            &[],
            limit,
        )?;
        match hold.receive()? {
            crate::wire::FromBroker::Attached => {
                hold.deadline = None;
                Ok(hold)
            }
            crate::wire::FromBroker::Error(why) => {
                Err(Refusal(crate::token::redact(&why).into_owned()).into())
            }
            _ => bail!("broker {endpoint}: answered a re-attach with something else"),
        }
    }

    /// Opens the connection and upgrades it, presenting `token` and the wrapper's `secret`,
    /// with `first` (the run's first line, if any) sent at once after the request; each step
    /// waits at most `limit`, and the answers until the caller clears [`Hold::deadline`], at
    /// most [`ANSWER_DEADLINE`] (or `limit`, if longer) in all.
    fn open(
        endpoint: &Endpoint,
        path: &str,
        (token, secret): (Option<&Token>, Option<&Token>),
        first: &[u8],
        limit: Duration,
    ) -> Result<Hold> {
        let fail = |err: anyhow::Error| {
            anyhow!(
                "broker {endpoint}: {}",
                crate::token::redact(&format!("{err:#}"))
            )
        };
        let conn = Conn::open(endpoint, limit).map_err(fail)?;
        let mut hold = Hold {
            endpoint: endpoint.clone(),
            conn,
            buffered: Vec::new(),
            deadline: Some(std::time::Instant::now() + ANSWER_DEADLINE.max(limit)),
        };
        let mut head = Zeroizing::new(Vec::with_capacity(256));
        write!(
            head,
            "POST {path} HTTP/1.1\r\nHost: lease\r\nConnection: Upgrade\r\nUpgrade: lease-run\r\nContent-Length: 0\r\n"
        )?;
        if let Some(token) = token {
            write_bearer(&mut head, token)?;
        }
        if let Some(secret) = secret {
            write!(head, "X-Lease-Hold: {}\r\n", secret.expose())?;
        }
        head.extend_from_slice(b"\r\n");
        head.extend_from_slice(first);
        hold.conn
            .write_all(&head)
            .context("sending")
            .map_err(fail)?;
        hold.conn.flush().context("sending").map_err(fail)?;
        // The answer's head, up to its blank line.
        let end = loop {
            if let Some(at) = hold.buffered.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            if hold.buffered.len() > MAX_HELD_LINE || hold.read_more().map_err(fail)? == 0 {
                return Err(fail(anyhow!("it closed the connection without answering")));
            }
        };
        let (status, length, _) = parse_head(&hold.buffered[..end]).map_err(fail)?;
        if status != 101 {
            // Refused before the upgrade: the body says why (read as far as it is announced,
            // within bounds; a server that does not announce it says less).
            let wanted = end + length.unwrap_or(0).min(MAX_HELD_LINE);
            while hold.buffered.len() < wanted && matches!(hold.read_more(), Ok(1..)) {}
            let mut body = hold.buffered.split_off(end);
            body.truncate(wanted - end);
            let answer = Answer {
                status,
                body: Zeroizing::new(body),
            };
            return Err(match answer.reason() {
                Some(why) => fail(anyhow!("answered {status}: {why}")),
                None => anyhow!("{}", answer.unexpected(endpoint)),
            });
        }
        hold.buffered.drain(..end);
        Ok(hold)
    }

    /// Reads what the connection has into the buffer; 0 at the end.
    fn read_more(&mut self) -> Result<usize> {
        if let Some(deadline) = self.deadline
            && std::time::Instant::now() > deadline
        {
            bail!("the answer took longer than it may: the broker sends it too slowly");
        }
        let mut chunk = [0u8; 4096];
        let read = self.conn.read(&mut chunk).map_err(|err| match err.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => {
                anyhow!("no answer within {}s", TIMEOUT.as_secs())
            }
            _ => anyhow::Error::from(err).context("reading"),
        })?;
        self.buffered.extend_from_slice(&chunk[..read]);
        Ok(read)
    }

    /// Makes each read and write from now on wait at most `limit`, and the reads fail once
    /// `deadline` is past.
    pub fn limit_waits(&mut self, limit: Duration, deadline: std::time::Instant) -> Result<()> {
        self.deadline = Some(deadline);
        limit_waits(self.conn.fd(), limit)
    }

    /// Sends one JSON line.
    pub fn send(&mut self, message: &impl serde::Serialize) -> Result<()> {
        let mut line = serde_json::to_vec(message)?;
        line.push(b'\n');
        self.conn
            .write_all(&line)
            .and_then(|()| self.conn.flush())
            .map_err(|err| anyhow!("broker {}: sending: {err}", self.endpoint))
    }

    /// Reads one JSON line from the broker, within [`TIMEOUT`].
    pub fn receive(&mut self) -> Result<crate::wire::FromBroker> {
        let end = loop {
            if let Some(at) = self.buffered.iter().position(|b| *b == b'\n') {
                break at;
            }
            let read = self
                .read_more()
                .map_err(|err| anyhow!("broker {}: {err:#}", self.endpoint))?;
            if read == 0 || self.buffered.len() > MAX_HELD_LINE {
                bail!("broker {}: the connection closed", self.endpoint);
            }
        };
        // The line may hold a token (a run's start): zeroed once read.
        let line: Zeroizing<Vec<u8>> = Zeroizing::new(self.buffered.drain(..=end).collect());
        serde_json::from_slice(&line[..end])
            .map_err(|err| anyhow!("broker {}: answered garbage: {err}", self.endpoint))
    }

    /// Waits at most `timeout` for the broker to close the connection (the only thing it
    /// sends while it holds a run): `true` if it did, or the connection failed.
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        if !self.buffered.is_empty() {
            return false;
        }
        let millis = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [nix::poll::PollFd::new(
            self.conn.fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(millis)) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => false,
            Ok(_) => self.read_more().map_or(true, |read| read == 0),
            Err(_) => true,
        }
    }
}

/// Keeps a run's connection alive from a thread of its own: a `ping` every third of
/// `owner_timeout`, and, when the connection is lost, a new one that re-attaches the run (for
/// at most `owner_timeout`) while the command goes on.
#[derive(Debug)]
pub struct Keeper {
    stop: OwnedFd,
    thread: std::thread::JoinHandle<Kept>,
}

/// What the keeper hands back when the run ends.
#[derive(Debug)]
pub struct Kept {
    /// The connection that holds the run now, if there is one.
    pub hold: Option<Hold>,
    /// Why there is none.
    pub lost: Option<String>,
}

impl Keeper {
    /// Starts keeping `hold`; `token` and `secret` are the run's, for re-attaching.
    pub fn start(
        hold: Hold,
        token: Token,
        secret: Token,
        owner_timeout: Duration,
    ) -> Result<Keeper> {
        let (stop_read, stop) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let thread = std::thread::Builder::new()
            .name("lease-keepalive".into())
            .spawn(move || keep(hold, &token, &secret, owner_timeout, &stop_read))?;
        Ok(Keeper { stop, thread })
    }

    /// Stops the keeper at once and takes the connection back.
    pub fn finish(self) -> Kept {
        let _ = nix::unistd::write(&self.stop, b"x");
        self.thread.join().unwrap_or(Kept {
            hold: None,
            lost: Some("the keepalive thread failed".to_owned()),
        })
    }
}

/// Which of the keeper's two descriptors woke it, if any.
enum Woken {
    Stop,
    Broker,
    Neither,
}

fn wait_on(
    stop: &OwnedFd,
    broker: Option<std::os::fd::BorrowedFd<'_>>,
    timeout: Duration,
) -> Woken {
    use std::os::fd::AsFd;
    let millis = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    let mut fds = vec![nix::poll::PollFd::new(
        stop.as_fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    if let Some(fd) = broker {
        fds.push(nix::poll::PollFd::new(fd, nix::poll::PollFlags::POLLIN));
    }
    match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(millis)) {
        Ok(n) if n > 0 => {
            let ready = |fd: &nix::poll::PollFd<'_>| fd.revents().is_some_and(|r| !r.is_empty());
            if ready(&fds[0]) {
                Woken::Stop
            } else {
                Woken::Broker
            }
        }
        _ => Woken::Neither,
    }
}

fn keep(
    mut hold: Hold,
    token: &Token,
    secret: &Token,
    owner_timeout: Duration,
    stop: &OwnedFd,
) -> Kept {
    let interval = owner_timeout / 3;
    loop {
        let woken = wait_on(stop, Some(hold.conn.fd()), interval);
        let lost = match woken {
            Woken::Stop => {
                return Kept {
                    hold: Some(hold),
                    lost: None,
                };
            }
            // The broker sends nothing while it holds a run: readable means closed.
            Woken::Broker => hold.closed_within(Duration::ZERO),
            Woken::Neither => hold.send(&crate::wire::FromRun::Ping).is_err(),
        };
        if !lost {
            continue;
        }
        // Come back to the broker (restarted, or reachable again) within owner_timeout.
        let endpoint = hold.endpoint.clone();
        let deadline = std::time::Instant::now() + owner_timeout;
        loop {
            let why = match Hold::attach(&endpoint, token, secret, TIMEOUT) {
                Ok(again) => {
                    hold = again;
                    break;
                }
                // The broker ended the lease meanwhile: no use asking again, and the command
                // runs on without a token that works, which its user must hear of now.
                Err(err) if lease_has_ended(&err) => {
                    let why = format!("{err:#}");
                    crate::say!(
                        "lease: warning: broker {endpoint} ended this run's lease while its connection was lost: {why}; the command runs on without a valid token"
                    );
                    return Kept {
                        hold: None,
                        lost: Some(why),
                    };
                }
                Err(err) => format!("{err:#}"),
            };
            if std::time::Instant::now() >= deadline {
                return Kept {
                    hold: None,
                    lost: Some(why),
                };
            }
            if let Woken::Stop = wait_on(stop, None, Duration::from_millis(100)) {
                return Kept {
                    hold: None,
                    lost: Some(why),
                };
            }
        }
    }
}
