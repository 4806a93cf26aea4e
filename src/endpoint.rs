//! Where a broker is: the address a client connects to (`LEASE_BROKER`, `--broker`, `broker`
//! in the config) and the addresses `lease serve --listen` binds.

use std::fmt;
use std::path::PathBuf;

use anyhow::{Result, bail};

/// The address a client reaches a broker at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `unix:/path/to/broker.sock`
    Unix(PathBuf),
    /// `http://host:port`: `host:port` as written.
    Http(String),
    /// `https://host:port`: `host:port` as written.
    Https(String),
}

impl Endpoint {
    /// Parses `unix:PATH`, `http://HOST:PORT` or `https://HOST:PORT` (a trailing `/` allowed).
    pub fn parse(text: &str) -> Result<Endpoint> {
        let usage = "expected unix:/path/to/broker.sock, http://HOST:PORT or https://HOST:PORT";
        if crate::token::is_token_shaped(text) {
            bail!("that is a token, not a broker address: {usage}");
        }
        if let Some(path) = text.strip_prefix("unix:") {
            if !path.starts_with('/') {
                bail!(
                    "'{}' is not an absolute socket path: {usage}",
                    path.escape_debug()
                );
            }
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        let (https, rest) = if let Some(rest) = text.strip_prefix("http://") {
            (false, rest)
        } else if let Some(rest) = text.strip_prefix("https://") {
            (true, rest)
        } else {
            bail!(
                "'{}' is not a broker address: {usage}",
                url_shown(text).escape_debug()
            );
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['@', '/', '?', '#']) {
            bail!(
                "'{}' is not a broker address: it has a user, a path or a query; {usage}",
                url_shown(text).escape_debug()
            );
        }
        host_port(authority).map_err(|err| anyhow::anyhow!("{err}: {usage}"))?;
        Ok(if https {
            Endpoint::Https(authority.to_owned())
        } else {
            Endpoint::Http(authority.to_owned())
        })
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(path) => write!(f, "unix:{}", path.display()),
            Endpoint::Http(authority) => write!(f, "http://{authority}"),
            Endpoint::Https(authority) => write!(f, "https://{authority}"),
        }
    }
}

/// `url` as an error may quote it: a password or a key someone put in it (`https://u:PASS@`,
/// `?api_key=KEY`) shown as `***`.
pub fn url_shown(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), url),
    };
    // A password may hold a `/`, `?` or `#` of its own: everything up to the last `@` goes.
    let (user, rest) = match rest.rsplit_once('@') {
        Some((_, rest)) => ("***@", rest),
        None => ("", rest),
    };
    let (authority, path) = rest.split_at(rest.find(['/', '?', '#']).unwrap_or(rest.len()));
    let host = format!("{user}{authority}");
    let path = match path.find(['?', '#']) {
        Some(at) => format!("{}?***", &path[..at]),
        None => path.to_owned(),
    };
    format!("{scheme}{host}{path}")
}

/// An address `lease serve` listens on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// `unix:PATH`
    Unix(PathBuf),
    /// `HOST:PORT` (`[v6]:PORT` for IPv6), as written.
    Tcp(String),
}

impl Listen {
    /// Parses `unix:PATH` or `HOST:PORT`.
    pub fn parse(text: &str) -> Result<Listen> {
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                bail!("unix: needs a socket path, e.g. unix:/run/lease/broker.sock");
            }
            return Ok(Listen::Unix(PathBuf::from(path)));
        }
        host_port(text).map_err(|err| {
            anyhow::anyhow!("{err}: expected unix:PATH or HOST:PORT, e.g. 127.0.0.1:7070")
        })?;
        Ok(Listen::Tcp(text.to_owned()))
    }
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listen::Unix(path) => write!(f, "unix:{}", path.display()),
            Listen::Tcp(address) => f.write_str(address),
        }
    }
}

/// Checks `HOST:PORT`: a non-empty host (a name, an IPv4 address or `[IPv6]`) and a port.
fn host_port(text: &str) -> Result<()> {
    let Some((host, port)) = text.rsplit_once(':') else {
        bail!("'{}' has no port", text.escape_debug());
    };
    if port.parse::<u16>().is_err() {
        bail!("'{}' is not a port number", port.escape_debug());
    }
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '_');
    if host.is_empty() || !host.chars().all(valid) {
        bail!("'{}' is not a host name or address", host.escape_debug());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_and_print_as_written() {
        for text in [
            "unix:/run/lease/broker.sock",
            "http://127.0.0.1:7070",
            "https://broker.example:443",
            "http://[::1]:7070",
        ] {
            assert_eq!(Endpoint::parse(text).expect("valid").to_string(), text);
        }
        assert_eq!(
            Endpoint::parse("http://127.0.0.1:7070/").expect("valid"),
            Endpoint::Http("127.0.0.1:7070".into())
        );
    }

    #[test]
    fn bad_endpoints_are_refused() {
        for text in [
            "",
            "unix:relative.sock",
            "ftp://x:1",
            "http://x",
            "http://:80",
            "http://x:99999",
            "http://x y:80",
            "127.0.0.1:7070",
        ] {
            assert!(Endpoint::parse(text).is_err(), "{text}");
        }
        let token = format!("agt_{}", "A".repeat(48));
        let err = Endpoint::parse(&token).expect_err("refused").to_string();
        assert!(!err.contains(&token), "{err}");
        // A password or a key put in the address is never quoted back.
        for text in [
            "https://user:PASSWORD@broker:7443",
            "http://broker:7070/?key=PASSWORD",
            "ftp://user:PASSWORD@broker",
            "http://broker:7070/x#PASSWORD",
        ] {
            let err = Endpoint::parse(text).expect_err("refused").to_string();
            assert!(!err.contains("PASSWORD"), "{err}");
            assert!(err.contains("***"), "{err}");
        }
    }

    #[test]
    fn a_url_is_shown_without_its_user_or_its_query() {
        for (url, shown) in [
            ("https://u:p@host:1/a/b?k=v#f", "https://***@host:1/a/b?***"),
            ("http://host/a#f", "http://host/a?***"),
            ("http://a@b@host", "http://***@host"),
            ("https://user:pa/ss@broker:7443", "https://***@broker:7443"),
            ("https://user:p?ss#x@host/a?k", "https://***@host/a?***"),
            ("host:1", "host:1"),
            ("https://host/a/b", "https://host/a/b"),
        ] {
            assert_eq!(url_shown(url), shown, "{url}");
        }
    }

    #[test]
    fn listen_addresses_parse() {
        assert_eq!(
            Listen::parse("unix:/tmp/b.sock").expect("valid"),
            Listen::Unix("/tmp/b.sock".into())
        );
        assert_eq!(
            Listen::parse("127.0.0.1:0").expect("valid"),
            Listen::Tcp("127.0.0.1:0".into())
        );
        assert!(Listen::parse("unix:").is_err());
        assert!(Listen::parse("localhost").is_err());
    }
}
