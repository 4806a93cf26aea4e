//! The client side of the broker: one blocking HTTP/1.1 request over a unix socket or TCP,
//! with no async runtime, so that a subcommand sent to a broker starts as fast as a local one.
//!
//! Every step has a bound ([`TIMEOUT`] to connect, to send, to receive), the answer is read
//! up to [`MAX_ANSWER`] bytes, and the token travels only in the `Authorization` header of a
//! buffer that is zeroed when dropped.

use std::io::{Read, Write};
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
