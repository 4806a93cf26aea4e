//! The client side of the broker: one blocking HTTP/1.1 request over a unix socket or TCP,
//! with no async runtime, so that a subcommand sent to a broker starts as fast as a local one.
//!
//! Every step has a bound ([`TIMEOUT`] to connect, to send, to receive), the answer is read
//! up to [`MAX_ANSWER`] bytes, and the token travels only in the `Authorization` header of a
//! buffer that is zeroed when dropped.

use std::io::{BufRead as _, Read, Write};
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
/// The largest answer read from a broker.
const MAX_ANSWER: u64 = 1024 * 1024;

/// A broker's answer.
#[derive(Debug)]
pub struct Answer {
    /// The HTTP status code.
    pub status: u16,
    /// The body (a mint's holds a token: zeroed when dropped).
    pub body: Zeroizing<Vec<u8>>,
}

impl Answer {
    /// The `error` field of a JSON error body, or the body as text.
    pub fn error_text(&self) -> String {
        #[derive(serde::Deserialize)]
        struct Error {
            error: String,
        }
        match serde_json::from_slice::<Error>(&self.body) {
            Ok(error) => error.error,
            Err(_) => String::from_utf8_lossy(&self.body).trim().to_owned(),
        }
    }
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
            write!(head, "Authorization: Bearer {}\r\n", token.expose())?;
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
        let raw = match endpoint {
            Endpoint::Unix(path) => send(connect_unix(path)?, &head)?,
            Endpoint::Http(authority) => send(connect_tcp(authority)?, &head)?,
            Endpoint::Https(_) => {
                bail!("https brokers are not supported yet: use unix: or http:// on loopback")
            }
        };
        parse(&raw)
    };
    exchange().map_err(|err| {
        anyhow!(
            "broker {endpoint}: {}",
            crate::token::redact(&format!("{err:#}"))
        )
    })
}

/// Connects to a unix socket with [`TIMEOUT`] (a broker whose backlog is full would otherwise
/// keep `connect` waiting).
fn connect_unix(path: &Path) -> Result<UnixStream> {
    let fd: OwnedFd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .context("creating a socket")?;
    let timeout = TimeVal::new(TIMEOUT.as_secs() as _, 0);
    socket::setsockopt(&fd, sockopt::SendTimeout, &timeout)?;
    socket::setsockopt(&fd, sockopt::ReceiveTimeout, &timeout)?;
    let address = UnixAddr::new(path).context("socket path")?;
    socket::connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &address)
        .map_err(std::io::Error::from)
        .context("connecting")?;
    Ok(UnixStream::from(fd))
}

fn connect_tcp(authority: &str) -> Result<TcpStream> {
    let mut last = None;
    for address in authority
        .to_socket_addrs()
        .context("resolving the address")?
    {
        match TcpStream::connect_timeout(&address, TIMEOUT) {
            Ok(stream) => {
                stream.set_read_timeout(Some(TIMEOUT))?;
                stream.set_write_timeout(Some(TIMEOUT))?;
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(err) => last = Some(err),
        }
    }
    Err(last.map_or_else(|| anyhow!("no address"), |err| anyhow!("connecting: {err}")))
}

fn send(mut stream: impl Read + Write, request: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    stream.write_all(request).context("sending")?;
    let mut raw = Zeroizing::new(Vec::new());
    stream
        .take(MAX_ANSWER + 1)
        .read_to_end(&mut raw)
        .context("reading the answer")?;
    if raw.len() as u64 > MAX_ANSWER {
        bail!("the answer is larger than {MAX_ANSWER} bytes");
    }
    Ok(raw)
}

/// Parses a whole HTTP/1.1 response (the connection was closed after it).
fn parse(raw: &[u8]) -> Result<Answer> {
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
    let mut body = Zeroizing::new(raw[end..].to_vec());
    for header in response.headers.iter() {
        if header.name.eq_ignore_ascii_case("content-length") {
            let length: usize = std::str::from_utf8(header.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| anyhow!("its answer has a bad Content-Length"))?;
            if body.len() < length {
                bail!("its answer was cut short");
            }
            body.truncate(length);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            bail!("its answer uses a transfer encoding this client does not read");
        }
    }
    Ok(Answer { status, body })
}

#[cfg(test)]
mod tests {
    use super::*;

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

/// A connection to a broker: a unix socket or TCP.
#[derive(Debug)]
enum Conn {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Conn {
    fn open(endpoint: &Endpoint) -> Result<Conn> {
        match endpoint {
            Endpoint::Unix(path) => Ok(Conn::Unix(connect_unix(path)?)),
            Endpoint::Http(authority) => Ok(Conn::Tcp(connect_tcp(authority)?)),
            Endpoint::Https(_) => {
                bail!("https brokers are not supported yet: use unix: or http:// on loopback")
            }
        }
    }

    fn try_clone(&self) -> std::io::Result<Conn> {
        Ok(match self {
            Conn::Unix(s) => Conn::Unix(s.try_clone()?),
            Conn::Tcp(s) => Conn::Tcp(s.try_clone()?),
        })
    }

    fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        match self {
            Conn::Unix(s) => s.as_fd(),
            Conn::Tcp(s) => s.as_fd(),
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Unix(s) => s.read(buf),
            Conn::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Unix(s) => s.write(buf),
            Conn::Tcp(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Conn::Unix(s) => s.flush(),
            Conn::Tcp(s) => s.flush(),
        }
    }
}

/// A run's connection to the broker (`/v1/runs`), upgraded to JSON lines: it holds the run's
/// lease for as long as it is open (docs/api.md).
#[derive(Debug)]
pub struct Hold {
    endpoint: Endpoint,
    writer: Conn,
    reader: std::io::BufReader<Conn>,
}

impl Hold {
    /// Starts a run: mints its lease as `body` asks (nested in `parent`'s, if given), held by
    /// this connection. A refusal is an error with the broker's reason.
    pub fn start(
        endpoint: &Endpoint,
        parent: Option<&Token>,
        body: &crate::wire::MintBody,
    ) -> Result<(Hold, crate::wire::Started)> {
        let mut hold = Hold::open(endpoint, "/v1/runs", parent)?;
        hold.send(body)?;
        match hold.receive()? {
            crate::wire::FromBroker::Started(started) => Ok((hold, started)),
            crate::wire::FromBroker::Error(why) => bail!("{}", crate::token::redact(&why)),
            _ => bail!("broker {endpoint}: answered a run with something else"),
        }
    }

    /// Takes a run's lease back on a new connection, proving it holds `token`.
    pub fn attach(endpoint: &Endpoint, token: &Token) -> Result<Hold> {
        let mut hold = Hold::open(endpoint, "/v1/runs/attach", Some(token))?;
        match hold.receive()? {
            crate::wire::FromBroker::Attached => Ok(hold),
            crate::wire::FromBroker::Error(why) => bail!("{}", crate::token::redact(&why)),
            _ => bail!("broker {endpoint}: answered a re-attach with something else"),
        }
    }

    /// Opens the connection and upgrades it.
    fn open(endpoint: &Endpoint, path: &str, token: Option<&Token>) -> Result<Hold> {
        let fail = |err: anyhow::Error| {
            anyhow!(
                "broker {endpoint}: {}",
                crate::token::redact(&format!("{err:#}"))
            )
        };
        let mut writer = Conn::open(endpoint).map_err(fail)?;
        let mut head = Zeroizing::new(Vec::with_capacity(256));
        write!(
            head,
            "POST {path} HTTP/1.1\r\nHost: lease\r\nConnection: Upgrade\r\nUpgrade: lease-run\r\nContent-Length: 0\r\n"
        )?;
        if let Some(token) = token {
            write!(head, "Authorization: Bearer {}\r\n", token.expose())?;
        }
        head.extend_from_slice(b"\r\n");
        writer.write_all(&head).context("sending").map_err(fail)?;
        let mut reader = std::io::BufReader::new(writer.try_clone()?);
        // The answer's head, up to its blank line, at most 16 KiB.
        let mut raw = Vec::new();
        while !raw.ends_with(b"\r\n\r\n") {
            let mut line = Vec::new();
            let read = (&mut reader)
                .take(16 * 1024)
                .read_until(b'\n', &mut line)
                .context("reading the answer")
                .map_err(fail)?;
            if read == 0 || raw.len() + line.len() > 16 * 1024 {
                return Err(fail(anyhow!("it closed the connection without answering")));
            }
            raw.extend_from_slice(&line);
        }
        let answer = parse(&raw).map_err(fail)?;
        if answer.status != 101 {
            // Refused before the upgrade: the body, if any, says why.
            let mut body = Vec::new();
            let _ = (&mut reader).take(64 * 1024).read_to_end(&mut body);
            let text = String::from_utf8_lossy(&body);
            return Err(fail(anyhow!("answered {}: {}", answer.status, text.trim())));
        }
        Ok(Hold {
            endpoint: endpoint.clone(),
            writer,
            reader,
        })
    }

    /// Sends one JSON line.
    pub fn send(&mut self, message: &impl serde::Serialize) -> Result<()> {
        let mut line = serde_json::to_vec(message)?;
        line.push(b'\n');
        self.writer
            .write_all(&line)
            .map_err(|err| anyhow!("broker {}: sending: {err}", self.endpoint))
    }

    /// Reads one JSON line from the broker, within [`TIMEOUT`].
    pub fn receive(&mut self) -> Result<crate::wire::FromBroker> {
        let mut line = Zeroizing::new(Vec::new());
        let read = (&mut self.reader)
            .take(64 * 1024)
            .read_until(b'\n', &mut line)
            .map_err(|err| anyhow!("broker {}: reading: {err}", self.endpoint))?;
        if read == 0 || line.last() != Some(&b'\n') {
            bail!("broker {}: the connection closed", self.endpoint);
        }
        serde_json::from_slice(&line)
            .map_err(|err| anyhow!("broker {}: answered garbage: {err}", self.endpoint))
    }

    /// Waits at most `timeout` for the broker to close the connection (the only thing it
    /// sends while it holds a run): `true` if it did, or the connection failed.
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        use std::io::BufRead;
        if !self.reader.buffer().is_empty() {
            return false;
        }
        let millis = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [nix::poll::PollFd::new(
            self.reader.get_ref().fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(millis)) {
            Ok(0) => false,
            Ok(_) => self.reader.fill_buf().map_or(true, |data| data.is_empty()),
            Err(nix::errno::Errno::EINTR) => false,
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
    /// Starts keeping `hold`; `token` is the run's, for re-attaching.
    pub fn start(hold: Hold, token: Token, owner_timeout: Duration) -> Result<Keeper> {
        let (stop_read, stop) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let thread = std::thread::Builder::new()
            .name("lease-keepalive".into())
            .spawn(move || keep(hold, &token, owner_timeout, &stop_read))?;
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

fn keep(mut hold: Hold, token: &Token, owner_timeout: Duration, stop: &OwnedFd) -> Kept {
    let interval = owner_timeout / 3;
    loop {
        let woken = wait_on(stop, Some(hold.reader.get_ref().fd()), interval);
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
            let why = match Hold::attach(&endpoint, token) {
                Ok(again) => {
                    hold = again;
                    break;
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
