//! Upstreams: the real APIs the broker calls for a run, adding the strong key itself, so that
//! the run never holds the key (`[upstream.NAME]` in the broker's config; docs/api.md).
//!
//! ```toml
//! [upstream.github]
//! url = "https://api.github.com"
//! secret_file = "/etc/lease/keys/github"   # or secret_env = "NAME", or secret_command = [...]
//! inject = "bearer"                        # bearer | basic (basic_user) | header (header, format)
//! child_env = { base_url = "GITHUB_API_URL", token = "GH_TOKEN" }
//!
//! [[upstream.github.route]]
//! method = "GET"
//! path = "/repos/acme/site/**"
//! action = "read:site"
//! ```
//!
//! This module holds what the config says ([`Spec`]), the key as the broker holds it
//! ([`Secret`]: loaded at start and on SIGHUP, zeroed when dropped, never shown), how the key is
//! put on a request ([`Inject`]), and the filter that keeps the key from coming back in a
//! response ([`Redactor`]). The proxying itself is the broker's (`broker::proxy`).

use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::route::{Route, RouteFile};

/// The largest secret read from a file or a command: keys are a few hundred bytes.
const MAX_SECRET_BYTES: u64 = 64 * 1024;
/// How long `secret_command` may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the broker waits for an upstream to connect and answer with its head, unless the
/// upstream says otherwise (`timeout`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a response body may go without a byte before the broker gives up on it, unless
/// the upstream says otherwise (`idle_timeout`): long enough for a model that thinks.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// One `[upstream.NAME]` table, as the config says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// The name in `/u/NAME/` and `--upstream NAME`.
    pub name: String,
    /// `http` or `https`.
    pub scheme: String,
    /// `host[:port]`.
    pub authority: String,
    /// The base path, without a trailing `/` (empty for the root).
    pub base_path: String,
    /// Where the key comes from.
    pub source: Source,
    /// How the key goes on a request.
    pub inject: Inject,
    /// A header, besides `Authorization`, in which clients send their lease token (lower case).
    pub token_header: Option<String>,
    /// The variables `lease run --upstream NAME` sets in the child.
    pub child_env: ChildEnv,
    /// The method and path globs that name each request's action; no match is a 403.
    pub routes: Vec<Route>,
    /// A PEM file of certificate authorities trusted for this upstream, besides the system's.
    pub ca_file: Option<PathBuf>,
    /// Connecting and receiving the response's head.
    pub timeout: Duration,
    /// The longest silence within a response body.
    pub idle_timeout: Duration,
    /// A TCP address where the broker serves this upstream alone, at the root, for clients
    /// that cannot take a base path (`127.0.0.1:8081`).
    pub listen: Option<String>,
}

/// Where an upstream's key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A file: regular, the broker's user's, no permission for group or others.
    File(PathBuf),
    /// A variable of the broker's environment.
    Env(String),
    /// A command's standard output (`pass show github`), run with no shell.
    Command(Vec<String>),
}

/// How the key is put on each request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inject {
    /// `Authorization: Bearer KEY`.
    Bearer,
    /// `Authorization: Basic base64(USER:KEY)`.
    Basic { user: String },
    /// `NAME: FORMAT` with `{secret}` in FORMAT replaced by the key.
    Header { name: String, format: String },
}

/// What `lease run --upstream NAME` sets in its command's environment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChildEnv {
    /// The variable that gets the broker's base URL for this upstream.
    pub base_url: Option<String>,
    /// The variable that gets the run's lease token, where the client expects its API key.
    pub token: Option<String>,
}

/// An `[upstream.NAME]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecFile {
    url: String,
    secret_file: Option<PathBuf>,
    secret_env: Option<String>,
    secret_command: Option<Vec<String>>,
    inject: Option<String>,
    basic_user: Option<String>,
    header: Option<String>,
    format: Option<String>,
    token_header: Option<String>,
    #[serde(default)]
    child_env: ChildEnv,
    ca_file: Option<PathBuf>,
    timeout: Option<u64>,
    idle_timeout: Option<u64>,
    listen: Option<String>,
    #[serde(default)]
    route: Vec<RouteFile>,
}

/// Whether `name` is a usable header name (an RFC 9110 token).
fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Whether `name` is a usable environment variable name.
fn is_env_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Headers a request may not have its token in: they are hop-by-hop, or the proxy sets them.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "expect",
];

impl Spec {
    /// Checks one `[upstream.NAME]` table. Errors name the key, not the table: the caller adds
    /// the file and the table.
    pub fn parse(name: &str, file: SpecFile) -> Result<Spec> {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            bail!("the name must be letters, digits, '-', '_' or '.' (it goes in /u/NAME/)");
        }
        // `/u/..` is the broker's root to every client, and `/u/.` is `/u/`.
        if name == "." || name == ".." {
            bail!("the name must not be '.' or '..' (in /u/NAME/ a client reads it as a step)");
        }
        let (scheme, rest) = file.url.split_once("://").ok_or_else(|| {
            anyhow!(
                "url: '{}' is not http:// or https://",
                file.url.escape_debug()
            )
        })?;
        if scheme != "http" && scheme != "https" {
            bail!(
                "url: '{}' is not http:// or https://",
                crate::endpoint::url_shown(&file.url).escape_debug()
            );
        }
        let (authority, base_path) = match rest.find('/') {
            Some(at) => (&rest[..at], rest[at..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if authority.is_empty()
            || authority.contains('@')
            || rest.contains(['?', '#'])
            || authority.parse::<hyper::http::uri::Authority>().is_err()
            || hyper::http::uri::PathAndQuery::try_from(if base_path.is_empty() {
                "/"
            } else {
                base_path
            })
            .is_err()
        {
            bail!(
                "url: '{}' must be scheme://host[:port][/path], with no user, query or fragment",
                crate::endpoint::url_shown(&file.url).escape_debug()
            );
        }
        let source = match (file.secret_file, file.secret_env, file.secret_command) {
            (Some(path), None, None) => Source::File(path),
            (None, Some(var), None) if is_env_name(&var) => Source::Env(var),
            (None, Some(var), None) => {
                bail!(
                    "secret_env: '{}' is not a variable name",
                    var.escape_debug()
                )
            }
            (None, None, Some(argv)) if !argv.is_empty() && !argv[0].is_empty() => {
                Source::Command(argv)
            }
            (None, None, Some(_)) => bail!("secret_command: must name a program"),
            (None, None, None) => {
                bail!("no secret: set one of secret_file, secret_env or secret_command")
            }
            _ => bail!(
                "more than one secret: set only one of secret_file, secret_env or secret_command"
            ),
        };
        let refuse_crlf = |key: &str, value: &str| {
            if value.contains(['\r', '\n', '\0']) {
                bail!("{key}: must not contain a line break or NUL");
            }
            Ok(())
        };
        let inject = match file.inject.as_deref().unwrap_or("bearer") {
            "bearer" => Inject::Bearer,
            "basic" => {
                let user = file.basic_user.clone().unwrap_or_default();
                refuse_crlf("basic_user", &user)?;
                if user.contains(':') {
                    bail!("basic_user: must not contain ':'");
                }
                Inject::Basic { user }
            }
            "header" => {
                let header = file.header.clone().ok_or_else(|| {
                    anyhow!("header: inject = \"header\" needs the header's name")
                })?;
                if !is_header_name(&header) {
                    bail!("header: '{}' is not a header name", header.escape_debug());
                }
                let header = header.to_ascii_lowercase();
                if RESERVED_HEADERS.contains(&header.as_str()) {
                    bail!("header: '{header}' is set by the proxy itself");
                }
                let format = file.format.clone().unwrap_or_else(|| "{secret}".to_owned());
                refuse_crlf("format", &format)?;
                // What a header carries as it is, as for the key itself (see `Secret::new`).
                if format.bytes().any(|b| b.is_ascii_control() && b != b'\t') || !format.is_ascii()
                {
                    bail!(
                        "format: must be ASCII without control characters (a header could not carry it)"
                    );
                }
                if format.matches("{secret}").count() != 1 {
                    bail!("format: must contain {{secret}} once");
                }
                Inject::Header {
                    name: header,
                    format,
                }
            }
            other => bail!(
                "inject: '{}' is not bearer, basic or header",
                other.escape_debug()
            ),
        };
        if file.basic_user.is_some() && !matches!(inject, Inject::Basic { .. }) {
            bail!("basic_user: only with inject = \"basic\"");
        }
        if (file.header.is_some() || file.format.is_some())
            && !matches!(inject, Inject::Header { .. })
        {
            bail!("header and format: only with inject = \"header\"");
        }
        let token_header = match file.token_header {
            Some(header) if is_header_name(&header) => {
                let header = header.to_ascii_lowercase();
                if RESERVED_HEADERS.contains(&header.as_str()) || header == "authorization" {
                    bail!("token_header: '{header}' cannot carry the token");
                }
                Some(header)
            }
            Some(header) => bail!(
                "token_header: '{}' is not a header name",
                header.escape_debug()
            ),
            None => None,
        };
        for (key, var) in [
            ("child_env.base_url", &file.child_env.base_url),
            ("child_env.token", &file.child_env.token),
        ] {
            if let Some(var) = var {
                crate::config::validate_child_var(var).map_err(|err| anyhow!("{key}: {err:#}"))?;
            }
        }
        if file.child_env.base_url.is_some() && file.child_env.base_url == file.child_env.token {
            bail!("child_env: base_url and token name the same variable");
        }
        let mut routes = Vec::new();
        for (index, route) in file.route.iter().enumerate() {
            routes.push(
                route
                    .parse()
                    .map_err(|e| anyhow!("route {} (path {:?}): {e:#}", index + 1, route.path()))?,
            );
        }
        let seconds = |key: &str, value: Option<u64>, default: Duration| match value {
            None => Ok(default),
            Some(s) if (1..=86_400).contains(&s) => Ok(Duration::from_secs(s)),
            Some(_) => Err(anyhow!("{key}: must be between 1 and 86400 seconds")),
        };
        Ok(Spec {
            name: name.to_owned(),
            scheme: scheme.to_owned(),
            authority: authority.to_owned(),
            base_path: base_path.to_owned(),
            source,
            inject,
            token_header,
            child_env: file.child_env,
            routes,
            ca_file: file.ca_file,
            timeout: seconds("timeout", file.timeout, DEFAULT_TIMEOUT)?,
            idle_timeout: seconds("idle_timeout", file.idle_timeout, DEFAULT_IDLE_TIMEOUT)?,
            listen: match file.listen {
                Some(text)
                    if text.rsplit_once(':').is_some_and(|(host, port)| {
                        !host.is_empty() && port.parse::<u16>().is_ok()
                    }) =>
                {
                    Some(text)
                }
                Some(text) => bail!("listen: '{}' is not HOST:PORT", text.escape_debug()),
                None => None,
            },
        })
    }

    /// The variable `secret_env` names, if the key is there.
    pub fn secret_env(&self) -> Option<&str> {
        match &self.source {
            Source::Env(var) => Some(var),
            Source::File(_) | Source::Command(_) => None,
        }
    }

    /// Reads the key from where the config says, checks it, and holds it. `hidden` are the
    /// variables that hold keys (every upstream's `secret_env`): a `secret_command` runs
    /// without them.
    pub fn load_secret(&self, hidden: &[&str]) -> Result<Secret> {
        let (bytes, from) = match &self.source {
            Source::File(path) => (
                read_secret_file(path)?,
                format!("secret_file {}", path.display()),
            ),
            Source::Env(var) => (
                Zeroizing::new(
                    std::env::var_os(var)
                        .map(std::os::unix::ffi::OsStringExt::into_vec)
                        .ok_or_else(|| {
                            anyhow!("secret_env: {var} is not set in the broker's environment")
                        })?,
                ),
                format!("secret_env {var}"),
            ),
            Source::Command(argv) => (
                run_secret_command(argv, hidden)?,
                format!("secret_command {}", argv[0].escape_debug()),
            ),
        };
        Secret::new(bytes).context(from)
    }
}

/// The secret in `path`: a regular file of the broker's user, private to it.
fn read_secret_file(path: &Path) -> Result<Zeroizing<Vec<u8>>> {
    let shown = path.display();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC)
        .open(path)
        .map_err(|err| match err.raw_os_error() {
            Some(nix::libc::ELOOP) => {
                anyhow!("secret_file {shown}: it is a symbolic link: name the file itself")
            }
            _ => anyhow::Error::new(err).context(format!("secret_file {shown}")),
        })?;
    let meta = file
        .metadata()
        .with_context(|| format!("secret_file {shown}"))?;
    if !meta.is_file() {
        bail!("secret_file {shown}: it is not a regular file");
    }
    let me = crate::owner::euid();
    if meta.uid() != me {
        bail!(
            "secret_file {shown}: it is owned by uid {}, not by the broker's user (uid {me})",
            meta.uid()
        );
    }
    if meta.mode() & 0o077 != 0 {
        bail!(
            "secret_file {shown}: it is open to group or others (mode {:o}): chmod 600 {shown}",
            meta.mode() & 0o7777
        );
    }
    let mut bytes = Zeroizing::new(Vec::new());
    file.take(MAX_SECRET_BYTES + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("secret_file {shown}"))?;
    if bytes.len() as u64 > MAX_SECRET_BYTES {
        bail!("secret_file {shown}: it is larger than {MAX_SECRET_BYTES} bytes");
    }
    Ok(bytes)
}

/// A `secret_command` cut short because the broker was asked to stop (SIGTERM or SIGINT)
/// while it started.
#[derive(Debug)]
pub struct Stopped;

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the broker was asked to stop")
    }
}

impl std::error::Error for Stopped {}

/// The standard output of `argv`, run with no shell and no input, within [`COMMAND_TIMEOUT`]
/// (its whole process group is killed past it, and a descendant that keeps the output open
/// does not hold the broker: the output is waited for until the same deadline).
fn run_secret_command(argv: &[String], hidden: &[&str]) -> Result<Zeroizing<Vec<u8>>> {
    use std::os::unix::process::CommandExt;
    let program = &argv[0];
    let mut command = Command::new(program);
    for name in hidden {
        command.env_remove(name);
    }
    let mut child = command
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .with_context(|| format!("secret_command: cannot start {}", program.escape_debug()))?;
    let mut stdout = child.stdout.take().expect("piped stdout");
    let (sender, output) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut bytes = Zeroizing::new(Vec::new());
        let read = (&mut stdout)
            .take(MAX_SECRET_BYTES + 1)
            .read_to_end(&mut bytes);
        let _ = sender.send(read.map(|_| bytes));
    });
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let late = || {
        anyhow!(
            "secret_command: {} did not finish within {} s",
            program.escape_debug(),
            COMMAND_TIMEOUT.as_secs()
        )
    };
    let kill = |child: &mut std::process::Child| {
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = child.wait();
    };
    // The broker was asked to stop while it starts: it does not wait for the key first.
    let stopped = |child: &mut std::process::Child| {
        kill(child);
        Err(anyhow::Error::new(Stopped))
            .with_context(|| format!("secret_command: {} was stopped", program.escape_debug()))
    };
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(err) => {
                kill(&mut child);
                return Err(err).context("secret_command: waiting");
            }
        }
        if Instant::now() >= deadline {
            kill(&mut child);
            return Err(late());
        }
        if crate::signals::stop_pending() {
            return stopped(&mut child);
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    // Its output, which a descendant may keep open past its exit: waited for as long.
    let bytes = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match output.recv_timeout(left.min(Duration::from_millis(10))) {
            Ok(read) => break read.context("secret_command: reading its output")?,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) if !left.is_zero() => {
                if crate::signals::stop_pending() {
                    return stopped(&mut child);
                }
            }
            Err(_) => {
                kill(&mut child);
                return Err(late());
            }
        }
    };
    if !status.success() {
        bail!(
            "secret_command: {} failed ({status})",
            program.escape_debug()
        );
    }
    if bytes.len() as u64 > MAX_SECRET_BYTES {
        bail!("secret_command: its output is larger than {MAX_SECRET_BYTES} bytes");
    }
    Ok(bytes)
}

/// An upstream's key, in the broker's memory only: zeroed when dropped, never shown (`Debug`
/// prints `Secret(***)`).
pub struct Secret(Zeroizing<Vec<u8>>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl Secret {
    /// The key from `bytes`, one trailing line break removed (files and commands end with
    /// one). Refused: empty, a line break, NUL or another control character inside, a byte
    /// past ASCII, or blanks around it.
    pub fn new(mut bytes: Zeroizing<Vec<u8>>) -> Result<Secret> {
        if bytes.ends_with(b"\n") {
            bytes.pop();
            if bytes.ends_with(b"\r") {
                bytes.pop();
            }
        }
        if bytes.is_empty() {
            bail!("the secret is empty");
        }
        if bytes.iter().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
            bail!("the secret contains a line break or NUL: refused (it could split a header)");
        }
        if bytes.iter().any(|b| b.is_ascii_control() && *b != b'\t') {
            bail!("the secret contains a control character: refused");
        }
        // A header carries ASCII safely; past it, servers differ (some read U+0085 or U+2028
        // as a line break, some re-encode the value), and an API key is ASCII.
        if !bytes.is_ascii() {
            bail!(
                "the secret holds a byte past ASCII: refused (not every server would carry it as it is)"
            );
        }
        // HTTP trims the whitespace around a header's value: sent, the key would lose it, and
        // echoed back in a header it would no longer be the bytes the mask looks for.
        let blank = |b: Option<&u8>| matches!(b, Some(b' ' | b'\t'));
        if blank(bytes.first()) || blank(bytes.last()) {
            bail!(
                "the secret begins or ends with a space or a tab: refused (a header would not carry it whole); remove it from the key"
            );
        }
        Ok(Secret(bytes))
    }

    /// The key's bytes, for the header that carries it.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl Inject {
    /// The header that carries `secret` to the upstream: its name, and its value (zeroed when
    /// dropped).
    pub fn header(&self, secret: &Secret) -> (&str, Zeroizing<Vec<u8>>) {
        let key = secret.expose();
        match self {
            Inject::Bearer => {
                let mut value = Zeroizing::new(b"Bearer ".to_vec());
                value.extend_from_slice(key);
                ("authorization", value)
            }
            Inject::Basic { user } => {
                let mut pair = Zeroizing::new(user.as_bytes().to_vec());
                pair.push(b':');
                pair.extend_from_slice(key);
                let encoded =
                    Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(&*pair));
                let mut value = Zeroizing::new(b"Basic ".to_vec());
                value.extend_from_slice(encoded.as_bytes());
                ("authorization", value)
            }
            Inject::Header { name, format } => {
                let (before, after) = format.split_once("{secret}").unwrap_or((format, ""));
                let mut value = Zeroizing::new(before.as_bytes().to_vec());
                value.extend_from_slice(key);
                value.extend_from_slice(after.as_bytes());
                (name, value)
            }
        }
    }

    /// Every form of the key a response must not carry back: the key itself and, where it
    /// differs, the encoded form the upstream received (for basic, the base64 of `user:key`).
    pub fn needles(&self, secret: &Secret) -> Vec<Zeroizing<Vec<u8>>> {
        let mut needles = vec![Zeroizing::new(secret.expose().to_vec())];
        if let Inject::Basic { .. } = self {
            let (_, value) = self.header(secret);
            if let Some(encoded) = value.strip_prefix(b"Basic ") {
                needles.push(Zeroizing::new(encoded.to_vec()));
            }
        }
        needles
    }
}

/// Replaces every occurrence of any needle in a stream of chunks with `***`, including one
/// split across chunks.
///
/// Where a chunk is cut never depends on the needles' bytes: it holds back the end of each
/// chunk after its last line break, at most one byte less than the longest needle, whatever
/// those bytes are. Holding back only what could begin a needle would tell a client that can
/// place text at the end of a chunk (an echoing endpoint) whether its guess begins the key,
/// one byte at a time. A chunk ending in a line break (a server-sent event, a line of output)
/// still goes out whole at once: a key has no line break.
pub struct Redactor {
    needles: Vec<Zeroizing<Vec<u8>>>,
    /// Whether a line break ends every needle's reach (no needle holds one).
    lines_bound: bool,
    held: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redactor({} needles, ***)", self.needles.len())
    }
}

/// What a needle is replaced with.
pub const MASK: &[u8] = b"***";

impl Redactor {
    /// A filter for `needles` (none empty).
    pub fn new(mut needles: Vec<Zeroizing<Vec<u8>>>) -> Redactor {
        needles.retain(|n| !n.is_empty());
        // Longest first: where two start at the same byte, the longer is masked whole.
        needles.sort_by_key(|n| std::cmp::Reverse(n.len()));
        let lines_bound = needles.iter().all(|n| !n.contains(&b'\n'));
        Redactor {
            needles,
            lines_bound,
            held: Zeroizing::new(Vec::new()),
        }
    }

    /// The next part of the stream that can go out, after `chunk`.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        let (first, then) = self.push_bytes(bytes::Bytes::copy_from_slice(chunk));
        [first, then].concat()
    }

    /// [`Redactor::push`] for a chunk the caller owns, in two parts that go out in order: when
    /// no needle is in it, the second is the chunk itself (or its start), not a copy. The
    /// first holds what was held back before it, decided with the chunk's first bytes; it is
    /// empty when nothing was.
    pub fn push_bytes(&mut self, chunk: bytes::Bytes) -> (bytes::Bytes, bytes::Bytes) {
        let longest = self.needles.first().map_or(0, |n| n.len());
        let held = self.held.len();
        let (first, rest) = if held == 0 {
            (bytes::Bytes::new(), chunk)
        } else if chunk.len() < 2 * longest {
            // A short chunk: decided with what was held, in one copy.
            let mut data = std::mem::take(&mut self.held);
            data.extend_from_slice(&chunk);
            let (masked, held_from) = self.scan(&data, false);
            self.held.extend_from_slice(&data[held_from..]);
            let out = masked.unwrap_or_else(|| data[..held_from].to_vec());
            return (bytes::Bytes::new(), bytes::Bytes::from(out));
        } else {
            // Every needle that begins in the held bytes ends within the chunk's first
            // `longest` bytes: those decide them, and the rest of the chunk is scanned alone.
            let mut junction = std::mem::take(&mut self.held);
            junction.extend_from_slice(&chunk[..longest]);
            let (masked, end) = self.scan_to(&junction, held);
            let first = masked.unwrap_or_else(|| junction[..end].to_vec());
            (bytes::Bytes::from(first), chunk.slice(end - held..))
        };
        let (masked, held_from) = self.scan(&rest, false);
        self.held.extend_from_slice(&rest[held_from..]);
        let then = match masked {
            Some(out) => bytes::Bytes::from(out),
            None => rest.slice(..held_from),
        };
        (first, then)
    }

    /// What is left at the end of the stream (the start of a needle that never finished).
    pub fn finish(&mut self) -> Vec<u8> {
        let data = std::mem::take(&mut self.held);
        let (masked, _) = self.scan(&data, true);
        masked.unwrap_or_else(|| data.to_vec())
    }

    /// Masks every needle in one whole value (a header), if it has any.
    pub fn redact_whole(&self, value: &[u8]) -> Option<Vec<u8>> {
        self.scan(value, true).0
    }

    /// `data` with its needles masked up to where it is cut (see [`Redactor`]; all of it when
    /// `last`): the masked text (`None` when there was nothing to mask, so that the caller can
    /// pass `data` on as it is), and where the rest to hold starts. A needle that begins
    /// before the cut is masked whole, even past it. Where needles start at the same byte, the
    /// longest wins.
    fn scan(&self, data: &[u8], last: bool) -> (Option<Vec<u8>>, usize) {
        let cut = if last { data.len() } else { self.cut(data) };
        self.scan_to(data, cut)
    }

    /// `data` with the needles that begin before `cut` masked, and where what is left starts
    /// (`cut`, or the end of a needle that runs past it). Every needle that may begin before
    /// `cut` must be told by `data`.
    fn scan_to(&self, data: &[u8], cut: usize) -> (Option<Vec<u8>>, usize) {
        // Most of a small response (its header names, most values, a short body) is shorter
        // than any key: nothing to search, and no search to build.
        if self
            .needles
            .last()
            .is_some_and(|shortest| data.len() < shortest.len())
        {
            return (None, cut);
        }
        // A substring search per needle (SIMD, led by the needle's rarest bytes: on random
        // bytes a search for the first byte alone stops every 256 bytes), built for this call
        // on the needles where they are. A search copies no needle; what it derives from one
        // (two of its bytes and their offsets, a 32-bit hash, the set of its bytes mod 64) is
        // freed unzeroed with it (docs/security.md).
        let finders: Vec<memchr::memmem::Finder<'_>> = self
            .needles
            .iter()
            .map(|n| memchr::memmem::Finder::new(n.as_slice()))
            .collect();
        let search = |finder: &memchr::memmem::Finder<'_>, from: usize| {
            finder.find(&data[from..]).map(|at| from + at)
        };
        // Where each needle next begins, searched again only once the scan has passed it.
        let mut next: Vec<Option<usize>> = finders.iter().map(|f| search(f, 0)).collect();
        let mut out: Option<Vec<u8>> = None;
        let mut copied = 0;
        let mut end = cut;
        // The next needle to begin, the longest (the first, in the needles' order) where
        // several begin at once. Every needle that begins before the cut is told here: a
        // needle that `data` ends within would begin after the last line break and less than
        // a needle's length from the end, which is past the cut.
        while let Some((at, which)) = next
            .iter()
            .enumerate()
            .filter_map(|(which, at)| at.map(|at| (at, which)))
            .min()
            && at < cut
        {
            let out = out.get_or_insert_with(|| Vec::with_capacity(data.len()));
            out.extend_from_slice(&data[copied..at]);
            out.extend_from_slice(MASK);
            copied = at + self.needles[which].len();
            end = end.max(copied);
            for (finder, at) in finders.iter().zip(&mut next) {
                if at.is_some_and(|at| at < copied) {
                    *at = search(finder, copied);
                }
            }
        }
        if let Some(out) = &mut out {
            out.extend_from_slice(&data[copied..end]);
        }
        (out, end)
    }

    /// Where `data` is cut when more may follow: after its last line break (if no needle
    /// holds one), and no more than one byte less than the longest needle before its end.
    fn cut(&self, data: &[u8]) -> usize {
        let longest = self.needles.first().map_or(0, |n| n.len());
        let reach = data.len().saturating_sub(longest.saturating_sub(1));
        match memchr::memrchr(b'\n', data) {
            Some(line) if self.lines_bound => reach.max(line + 1),
            _ => reach,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn spec(text: &str) -> Result<Spec> {
        let file: SpecFile = toml::from_str(text).map_err(|e| anyhow!("{}", e.message()))?;
        Spec::parse("api", file)
    }

    fn needles(list: &[&[u8]]) -> Vec<Zeroizing<Vec<u8>>> {
        list.iter().map(|n| Zeroizing::new(n.to_vec())).collect()
    }

    /// Every needle of `list` in `data` masked, by the obvious whole-buffer method.
    fn masked(data: &[u8], list: &[&[u8]]) -> Vec<u8> {
        let mut sorted = list.to_vec();
        sorted.sort_by_key(|n| std::cmp::Reverse(n.len()));
        let mut out = Vec::new();
        let mut i = 0;
        'scan: while i < data.len() {
            for n in &sorted {
                if data[i..].starts_with(n) {
                    out.extend_from_slice(MASK);
                    i += n.len();
                    continue 'scan;
                }
            }
            out.push(data[i]);
            i += 1;
        }
        out
    }

    proptest! {
        #[test]
        fn the_stream_is_masked_as_the_whole_would_be_wherever_it_is_cut(
            data in proptest::collection::vec(prop_oneof![Just(b'k'), Just(b'e'), Just(b'y'), Just(b'\n'), any::<u8>()], 0..200),
            cuts in proptest::collection::vec(0usize..200, 0..10),
        ) {
            let list: [&[u8]; 2] = [b"keyey", b"ke"];
            let mut redactor = Redactor::new(needles(&list));
            let mut cuts = cuts.into_iter().map(|c| c.min(data.len())).collect::<Vec<_>>();
            cuts.sort_unstable();
            let mut out = Vec::new();
            let mut from = 0;
            for cut in cuts.into_iter().chain([data.len()]) {
                out.extend(redactor.push(&data[from..cut]));
                from = cut;
            }
            out.extend(redactor.finish());
            prop_assert_eq!(out, masked(&data, &list));
        }
    }

    proptest! {
        /// A client that can place text at the end of a chunk (an echo) learns nothing from
        /// where the chunks it gets back are cut: they are cut the same for a needle that its
        /// text begins as for one it has nothing in common with.
        #[test]
        fn where_the_stream_is_cut_tells_nothing_of_the_needle(
            data in proptest::collection::vec(prop_oneof![Just(b'k'), Just(b'e'), Just(b'y'), Just(b'\n'), Just(b'x')], 0..120),
            cuts in proptest::collection::vec(0usize..120, 0..10),
        ) {
            prop_assume!(!data.windows(5).any(|w| w == b"keyey"));
            let mut cuts = cuts.into_iter().map(|c| c.min(data.len())).collect::<Vec<_>>();
            cuts.sort_unstable();
            let lengths = |needle: &[u8]| {
                let mut redactor = Redactor::new(needles(&[needle]));
                let mut from = 0;
                let mut lengths = Vec::new();
                for &cut in &cuts {
                    lengths.push(redactor.push(&data[from..cut]).len());
                    from = cut;
                }
                lengths
            };
            prop_assert_eq!(lengths(b"keyey"), lengths(b"zzzzz"));
        }
    }

    #[test]
    fn a_guess_at_the_start_of_the_key_is_cut_where_any_other_text_is() {
        for guess in [&b"AB s3c"[..], b"AB x9q"] {
            let mut redactor = Redactor::new(needles(&[b"s3cr3t"]));
            assert_eq!(redactor.push(guess), b"A");
            let mut rest = redactor.push(b"|CD\n");
            rest.extend(redactor.finish());
            assert_eq!([&b"A"[..], &rest].concat(), [guess, b"|CD\n"].concat());
        }
    }

    #[test]
    fn a_needle_split_over_chunks_is_masked_and_a_line_goes_out_at_once() {
        let mut redactor = Redactor::new(needles(&[b"s3cr3t"]));
        // Five bytes (the needle's length less one) wait for what follows.
        assert_eq!(redactor.push(b"data: s3c"), b"data");
        assert_eq!(redactor.push(b"r3t ok\n"), b": *** ok\n");
        assert_eq!(redactor.push(b"data: token\n\n"), b"data: token\n\n");
        assert_eq!(redactor.push(b"s3"), b"");
        assert_eq!(redactor.finish(), b"s3");
    }

    #[test]
    fn a_whole_value_is_masked_only_where_it_holds_a_needle_and_the_filter_shows_none() {
        let redactor = Redactor::new(needles(&[b"s3cr3t", b"czNjcjN0"]));
        assert_eq!(
            redactor
                .redact_whole(b"Bearer s3cr3t, Basic czNjcjN0")
                .as_deref(),
            Some(&b"Bearer ***, Basic ***"[..])
        );
        assert_eq!(
            redactor.redact_whole(b"s3cr3"),
            None,
            "a start alone is no needle"
        );
        assert_eq!(redactor.redact_whole(b"nothing here"), None);
        let shown = format!("{redactor:?}");
        assert_eq!(shown, "Redactor(2 needles, ***)");
    }

    #[test]
    fn a_secret_is_refused_empty_with_a_line_break_inside_or_blanks_around() {
        let secret =
            |b: &[u8]| Secret::new(Zeroizing::new(b.to_vec())).map(|s| s.expose().to_vec());
        assert_eq!(secret(b"abc\n").expect("trimmed"), b"abc");
        assert_eq!(secret(b"abc\r\n").expect("trimmed"), b"abc");
        assert_eq!(secret(b"a b\tc\n").expect("inner blanks"), b"a b\tc");
        for bad in [
            &b""[..],
            b"\n",
            b"a\nb",
            b"a\rb",
            b"a\0b",
            b"ab\n\n",
            b"a\x1bb",
            "a\u{85}b".as_bytes(),
            "a\u{2028}b".as_bytes(),
            b"a\xffb",
            b"key ",
            b" key",
            b"\tkey",
            b"key\t\n",
        ] {
            assert!(secret(bad).is_err(), "{bad:?}");
        }
        let shown = format!(
            "{:?}",
            Secret::new(Zeroizing::new(b"k3y".to_vec())).expect("ok")
        );
        assert_eq!(shown, "Secret(***)");
    }

    #[test]
    fn each_injection_puts_the_key_where_the_config_says() {
        let key = Secret::new(Zeroizing::new(b"k3y".to_vec())).expect("secret");
        let header = |inject: Inject| {
            let (name, value) = inject.header(&key);
            (
                name.to_owned(),
                String::from_utf8(value.to_vec()).expect("text"),
            )
        };
        assert_eq!(
            header(Inject::Bearer),
            ("authorization".into(), "Bearer k3y".into())
        );
        assert_eq!(
            header(Inject::Basic {
                user: "x-access-token".into()
            }),
            (
                "authorization".into(),
                "Basic eC1hY2Nlc3MtdG9rZW46azN5".into()
            )
        );
        assert_eq!(
            header(Inject::Header {
                name: "x-api-key".into(),
                format: "key={secret};".into()
            }),
            ("x-api-key".into(), "key=k3y;".into())
        );
        let basic = Inject::Basic { user: "u".into() };
        let forms: Vec<Vec<u8>> = basic.needles(&key).iter().map(|n| n.to_vec()).collect();
        assert_eq!(forms, [b"k3y".to_vec(), b"dTprM3k=".to_vec()]);
    }

    #[test]
    fn an_upstream_table_is_checked_key_by_key() {
        let ok = spec(
            r#"url = "https://api.example.com/v2/"
secret_env = "KEY"
inject = "header"
header = "X-Api-Key"
token_header = "X-Api-Key"
child_env = { base_url = "API_URL", token = "API_KEY" }
[[route]]
method = "GET"
path = "/things/**"
action = "read:things"
"#,
        )
        .expect("valid");
        assert_eq!(
            (
                ok.scheme.as_str(),
                ok.authority.as_str(),
                ok.base_path.as_str()
            ),
            ("https", "api.example.com", "/v2")
        );
        assert_eq!(ok.token_header.as_deref(), Some("x-api-key"));
        assert_eq!(ok.routes.len(), 1);
        for (text, error) in [
            (
                r#"url = "ftp://x""#,
                "url: 'ftp://x' is not http:// or https://",
            ),
            (
                r#"url = "http://u@x""#,
                "url: 'http://***@x' must be scheme://host[:port][/path], with no user, query or fragment",
            ),
            (
                r#"url = "http://x/?a=1""#,
                "url: 'http://x/?***' must be scheme://host[:port][/path], with no user, query or fragment",
            ),
            (
                r#"url = "https://user:PASSWORD@api.example.com/v1?api_key=KEY#f""#,
                "url: 'https://***@api.example.com/v1?***' must be scheme://host[:port][/path], with no user, query or fragment",
            ),
            (
                r#"url = "ftp://user:PASSWORD@x?k=KEY""#,
                "url: 'ftp://***@x?***' is not http:// or https://",
            ),
            (
                r#"url = "http://x""#,
                "no secret: set one of secret_file, secret_env or secret_command",
            ),
            (
                "url = \"http://x\"\nsecret_env = \"A\"\nsecret_file = \"/k\"",
                "more than one secret: set only one of secret_file, secret_env or secret_command",
            ),
            (
                "url = \"http://x\"\nsecret_env = \"1A\"",
                "secret_env: '1A' is not a variable name",
            ),
            (
                "url = \"http://x\"\nsecret_env = \"A\"\ninject = \"cookie\"",
                "inject: 'cookie' is not bearer, basic or header",
            ),
            (
                "url = \"http://x\"\nsecret_env = \"A\"\ninject = \"header\"",
                "header: inject = \"header\" needs the header's name",
            ),
            (
                "url = \"http://x\"\nsecret_env = \"A\"\ninject = \"header\"\nheader = \"Host\"",
                "header: 'host' is set by the proxy itself",
            ),
            (
                "url = \"http://x\"\nsecret_env = \"A\"\ninject = \"header\"\nheader = \"k\"\nformat = \"a\"",
                "format: must contain {secret} once",
            ),
            (
                "url = \"http://x\"\nsecret_env = \"A\"\ninject = \"header\"\nheader = \"k\"\nformat = \"{secret}\\r\\nx: {secret}\"",
                "format: must not contain a line break or NUL",
            ),
            (
                "url = \"http://x\"\nsecret_env = \"A\"\ninject = \"header\"\nheader = \"k\"\nformat = \"a\\u0001{secret}\"",
                "format: must be ASCII without control characters (a header could not carry it)",
            ),
            (
                "url = \"http://x\"\nsecret_env = \"A\"\ninject = \"header\"\nheader = \"k\"\nformat = \"Clé {secret}\"",
                "format: must be ASCII without control characters (a header could not carry it)",
            ),
            (
                "url = \"http://x\"\nsecret_env = \"A\"\nbasic_user = \"u\"",
                "basic_user: only with inject = \"basic\"",
            ),
            (
                "url = \"http://x\"\nsecret_env = \"A\"\ntoken_header = \"authorization\"",
                "token_header: 'authorization' cannot carry the token",
            ),
            (
                "url = \"http://x\"\nsecret_env = \"A\"\ntimeout = 0",
                "timeout: must be between 1 and 86400 seconds",
            ),
            (
                "url = \"http://x\"\nsecret_env = \"A\"\nchild_env = { token = \"LD_PRELOAD\" }",
                "child_env.token: LD_PRELOAD cannot be set for an upstream: the dynamic loader reads LD_* and DYLD_* variables; choose another name, e.g. API_URL or API_KEY",
            ),
            (
                "url = \"http://x\"\nsecret_env = \"A\"\nchild_env = { base_url = \"PATH\" }",
                "child_env.base_url: PATH cannot be set for an upstream: PATH is where commands are looked up; choose another name, e.g. API_URL or API_KEY",
            ),
            (
                "url = \"http://x\"\nsecret_env = \"A\"\nchild_env = { base_url = \"LEASE_BROKER\" }",
                "child_env.base_url: LEASE_BROKER cannot be set for an upstream: lease sets the LEASE_* variables itself; choose another name, e.g. API_URL or API_KEY",
            ),
            (
                "url = \"http://x\"\nsecret_env = \"A\"\nchild_env = { token = \"LEASE_TOKEN\" }",
                "child_env.token: LEASE_TOKEN cannot be set for an upstream: lease sets the LEASE_* variables itself; choose another name, e.g. API_URL or API_KEY",
            ),
            (
                "url = \"http://x\"\nsecret_env = \"A\"\nchild_env = { base_url = \"K\", token = \"K\" }",
                "child_env: base_url and token name the same variable",
            ),
        ] {
            let err = spec(text).expect_err(text);
            assert_eq!(format!("{err:#}"), error, "{text}");
        }
        let file = |text: &str| toml::from_str::<SpecFile>(text).expect("toml");
        for (name, error) in [
            (
                "..",
                "the name must not be '.' or '..' (in /u/NAME/ a client reads it as a step)",
            ),
            (
                ".",
                "the name must not be '.' or '..' (in /u/NAME/ a client reads it as a step)",
            ),
            (
                "a/b",
                "the name must be letters, digits, '-', '_' or '.' (it goes in /u/NAME/)",
            ),
            (
                "",
                "the name must be letters, digits, '-', '_' or '.' (it goes in /u/NAME/)",
            ),
        ] {
            let err =
                Spec::parse(name, file("url = \"http://x\"\nsecret_env = \"A\"")).expect_err(name);
            assert_eq!(format!("{err:#}"), error, "{name}");
        }
        assert!(Spec::parse("..a", file("url = \"http://x\"\nsecret_env = \"A\"")).is_ok());
    }

    #[test]
    fn a_secret_command_gives_its_output_and_is_bounded() {
        let command = |argv: &[&str]| Spec {
            source: Source::Command(argv.iter().map(|a| (*a).to_owned()).collect()),
            ..spec("url = \"http://x\"\nsecret_env = \"A\"").expect("spec")
        };
        let loaded = command(&["sh", "-c", "echo k3y"])
            .load_secret(&[])
            .expect("loaded");
        assert_eq!(loaded.expose(), b"k3y");
        let err = command(&["sh", "-c", "exit 3"])
            .load_secret(&[])
            .expect_err("failed");
        assert_eq!(
            err.to_string(),
            "secret_command: sh failed (exit status: 3)"
        );
        // A descendant that keeps the output open past the command's exit: the deadline holds.
        let started = Instant::now();
        let err = command(&["sh", "-c", "sleep 60 & echo k3y"])
            .load_secret(&[])
            .expect_err("bounded");
        assert_eq!(
            err.to_string(),
            "secret_command: sh did not finish within 10 s"
        );
        assert!(started.elapsed() < Duration::from_secs(15));
    }

    #[test]
    fn a_secret_file_must_be_private_to_the_broker() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("key");
        std::fs::write(&path, "k3y\n").expect("written");
        let source = |path: &Path| Spec {
            source: Source::File(path.to_owned()),
            ..spec("url = \"http://x\"\nsecret_env = \"A\"").expect("spec")
        };
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o640))
            .expect("chmod");
        let err = source(&path)
            .load_secret(&[])
            .expect_err("open to the group");
        assert_eq!(
            err.to_string(),
            format!(
                "secret_file {0}: it is open to group or others (mode 640): chmod 600 {0}",
                path.display()
            )
        );
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod");
        assert_eq!(
            source(&path).load_secret(&[]).expect("loaded").expose(),
            b"k3y"
        );
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&path, &link).expect("symlink");
        assert!(
            source(&link).load_secret(&[]).is_err(),
            "a symlink is not followed"
        );
        assert!(source(dir.path()).load_secret(&[]).is_err(), "a directory");
    }
}
