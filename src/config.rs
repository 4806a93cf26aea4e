//! The optional config file: `$XDG_CONFIG_HOME/lease/config.toml`, or `--config`/`LEASE_CONFIG`.
//!
//! Every key is optional; a missing default file means the built-in defaults. A file named
//! explicitly must exist. Unknown keys, unknown profile names and bad values are errors naming
//! the file, the key and the line.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;

use crate::endpoint::Endpoint;
use crate::route::{Route, RouteFile};
use crate::scope::{self, Grant, Scope};
use crate::ttl;

/// The default name of the variable that carries the token.
pub const DEFAULT_TOKEN_ENV: &str = "LEASE_TOKEN";
/// The variable, set by `lease run` in its command's environment, that names the variable the
/// token is in, so that nested runs and `verify` find it under any name.
pub const TOKEN_ENV_VAR: &str = "LEASE_TOKEN_ENV";

/// The most threads `workers` may ask the broker for.
const MAX_WORKERS: usize = 256;

/// The default `owner_timeout`: how long a broker's run may be silent or away.
pub const DEFAULT_OWNER_TIMEOUT: Duration = Duration::from_secs(10);

/// What `lease run` does to its command when the lease expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnExpiry {
    /// Nothing: the token just stops working.
    #[default]
    Keep,
    /// SIGTERM, then SIGKILL after the grace period.
    Term,
    /// SIGKILL.
    Kill,
}

impl OnExpiry {
    /// The word the command line and the config use.
    pub fn as_str(self) -> &'static str {
        match self {
            OnExpiry::Keep => "keep",
            OnExpiry::Term => "term",
            OnExpiry::Kill => "kill",
        }
    }
}

impl FromStr for OnExpiry {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> Result<OnExpiry> {
        match text {
            "keep" => Ok(OnExpiry::Keep),
            "term" => Ok(OnExpiry::Term),
            "kill" => Ok(OnExpiry::Kill),
            other => bail!("'{}' is not one of keep, term, kill", other.escape_debug()),
        }
    }
}

/// Settings after defaults are applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The file the settings came from, if any.
    pub path: Option<PathBuf>,
    /// TTL for leases when `--ttl` is not given.
    pub default_ttl: Duration,
    /// The longest TTL that may be asked for, and the furthest `renew` may extend a lease.
    pub max_ttl: Duration,
    /// Whether the file sets `max_ttl` (else it is the default), for messages.
    pub max_ttl_set: bool,
    /// The variable that carries the token to the child and that `verify` reads.
    pub token_env: String,
    /// When set, the only scopes that may be minted (a requested scope must be covered by one).
    pub allowed_scopes: Option<Vec<Scope>>,
    /// Whether `--no-parent` may mint a root lease while a parent token is present.
    pub allow_orphans: bool,
    /// Named sets of defaults for `--profile`.
    pub profiles: BTreeMap<String, Profile>,
    /// The audit log is rotated when it would grow past this size.
    pub audit_max_bytes: u64,
    /// Glob patterns of variables removed from every child's environment.
    pub scrub_env: Vec<glob::Pattern>,
    /// The broker every subcommand goes through (`broker = "unix:/path"`), if any.
    pub broker: Option<Endpoint>,
    /// The broker's route table for `/v1/auth` (`[[route]]`), in the order written.
    pub routes: Vec<Route>,
    /// The uids that are the broker's operators (`operators`, names resolved); `None` means
    /// the default: the uid the broker runs as.
    pub operators: Option<Vec<u32>>,
    /// How long a broker waits for a silent run (no keepalive) or a run whose broker restarted
    /// to come back before it ends the run's lease as `owner gone`.
    pub owner_timeout: Duration,
    /// The group the broker's unix sockets are given to, mode 0660 (`socket_group`, a name
    /// resolved); `None`: the sockets stay 0600, the broker's user's only.
    pub socket_group: Option<u32>,
    /// The broker's certificate chain and private key (PEM files), for TLS on its TCP
    /// listeners (`tls_cert`, `tls_key`; both or neither).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// The broker's upstreams (`[upstream.NAME]`), by name: real APIs it calls for runs, adding
    /// their keys itself.
    pub upstreams: BTreeMap<String, crate::upstream::Spec>,
    /// The broker's store on etcd (`store = "etcd://..."`), shared with other brokers; `None`:
    /// the local store in the state dir.
    pub store: Option<crate::store::etcd::Url>,
    /// The files of an `etcd+https://` store (`[etcd]`).
    pub etcd_tls: crate::store::etcd::TlsFiles,
    /// The threads the broker answers requests on (`workers`, 1 to 256, read at start): one
    /// by default, which event-driven servers measure best at on a few cores (docs/performance.md).
    pub workers: usize,
}

/// A named set of defaults for `run` and `issue`; flags on the command line override each.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Profile {
    /// Scopes, with optional use budgets.
    pub scope: Option<Vec<Grant>>,
    /// Lifetime.
    pub ttl: Option<Duration>,
    /// The variable the token goes in.
    pub env: Option<String>,
    /// What happens to the command at expiry.
    pub on_expiry: Option<OnExpiry>,
    /// Grace between SIGTERM and SIGKILL for `on_expiry = "term"`.
    pub grace: Option<Duration>,
    /// Total granted verifies.
    pub uses: Option<u64>,
    /// Upstreams of the broker that a run with this profile reaches (`--upstream` for each).
    pub upstreams: Vec<String>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            path: None,
            default_ttl: ttl::DEFAULT_TTL,
            max_ttl: ttl::DEFAULT_MAX_TTL,
            max_ttl_set: false,
            token_env: DEFAULT_TOKEN_ENV.to_owned(),
            allowed_scopes: None,
            allow_orphans: false,
            profiles: BTreeMap::new(),
            audit_max_bytes: crate::audit::DEFAULT_MAX_BYTES,
            scrub_env: Vec::new(),
            broker: None,
            routes: Vec::new(),
            operators: None,
            owner_timeout: DEFAULT_OWNER_TIMEOUT,
            socket_group: None,
            tls: None,
            upstreams: BTreeMap::new(),
            store: None,
            etcd_tls: crate::store::etcd::TlsFiles::default(),
            workers: 1,
        }
    }
}

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    default_ttl: Option<DurationValue>,
    max_ttl: Option<DurationValue>,
    token_env: Option<String>,
    allowed_scopes: Option<Vec<String>>,
    allow_orphans: Option<bool>,
    audit_max_bytes: Option<u64>,
    scrub_env: Option<Vec<String>>,
    broker: Option<String>,
    operators: Option<Vec<OperatorValue>>,
    owner_timeout: Option<DurationValue>,
    workers: Option<i64>,
    socket_group: Option<OperatorValue>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    store: Option<String>,
    etcd: Option<EtcdFile>,
    #[serde(default)]
    profile: BTreeMap<String, ProfileFile>,
    #[serde(default)]
    route: Vec<RouteFile>,
    #[serde(default)]
    upstream: BTreeMap<String, crate::upstream::SpecFile>,
}

/// `[etcd]`: the files of an `etcd+https://` store.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EtcdFile {
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
}

/// An entry of `operators`: a user name or a uid.
#[derive(Debug, Deserialize)]
#[serde(
    untagged,
    expecting = "expected a user name (\"alice\") or a uid (1000)"
)]
enum OperatorValue {
    Uid(u32),
    Name(String),
}

/// What an [`OperatorValue`] names.
#[derive(Debug, Clone, Copy)]
enum Account {
    User,
    Group,
}

impl OperatorValue {
    /// The id it names: a number as it is, a name looked up in /etc/passwd or /etc/group (see
    /// [`crate::account`]); or why not.
    fn id(&self, of: Account) -> std::result::Result<u32, String> {
        let (what, file, lookup): (_, _, fn(&str) -> Option<u32>) = match of {
            Account::User => ("user", "/etc/passwd", crate::account::uid_of),
            Account::Group => ("group", "/etc/group", crate::account::gid_of),
        };
        match self {
            // -1: chown's "leave it as it is" (a socket_group of -1 opened the socket to the
            // broker's own group), getuid's error: never a user or a group.
            OperatorValue::Uid(u32::MAX) => Err(format!("4294967295 (-1) is no {what}")),
            OperatorValue::Uid(id) => Ok(*id),
            OperatorValue::Name(name) => lookup(name).ok_or_else(|| {
                format!(
                    "no {what} is called '{}' in {file} (give a {what} only a directory service knows by its {})",
                    name.escape_debug(),
                    if matches!(of, Account::User) { "uid" } else { "gid" }
                )
            }),
        }
    }
}

/// A `[profile.NAME]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileFile {
    scope: Option<Vec<String>>,
    ttl: Option<DurationValue>,
    env: Option<String>,
    on_expiry: Option<String>,
    grace: Option<DurationValue>,
    uses: Option<u64>,
    upstreams: Option<Vec<String>>,
}

/// A duration written as whole seconds (`600`) or as text (`"10m"`).
#[derive(Debug, Deserialize)]
#[serde(
    untagged,
    expecting = "expected whole seconds (600) or a duration (\"10m\"), at most 10 years"
)]
enum DurationValue {
    Seconds(u64),
    Text(String),
}

impl DurationValue {
    fn parse(&self) -> Result<Duration> {
        match self {
            DurationValue::Seconds(seconds) => ttl::parse(&seconds.to_string()),
            DurationValue::Text(text) => ttl::parse(text),
        }
    }
}

/// Turns a problem with one key's value into an error naming the file, the key and its line.
struct Located<'a> {
    text: &'a str,
    path: &'a Path,
}

impl Located<'_> {
    /// `table` is `None` for a top-level key, or the profile name.
    fn error(&self, table: Option<&str>, key: &str, err: impl std::fmt::Display) -> anyhow::Error {
        let shown = self.path.display();
        let name = match table {
            Some(profile) => format!("profile.{profile}.{key}"),
            None => key.to_owned(),
        };
        match key_line(self.text, table, key) {
            Some(line) => anyhow!("invalid config {shown}: line {line}: {name}: {err:#}"),
            None => anyhow!("invalid config {shown}: {name}: {err:#}"),
        }
    }
}

/// A config file larger than this is refused: no real one comes near it.
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// Reads a config file without ever blocking (a FIFO is opened `O_NONBLOCK` and refused) and
/// without reading more than [`MAX_CONFIG_BYTES`] (`/dev/zero` is refused too); `/dev/null` is
/// an empty config.
/// The config sets the policy, the broker and the token's variable: as OpenSSH's StrictModes
/// asks of its files, it must be the user's (or root's) and writable by no one else, and so
/// must every directory above it, above the path as given and above each symbolic link on the
/// way ([`directories_on_the_way`]), unless sticky (as `/tmp` is): otherwise another user could
/// rewrite it, or put another file, or another link, in its place.
fn only_its_owner_may_change(path: &Path, meta: &fs::Metadata) -> io::Result<()> {
    use crate::owner::{OpenToOthers, open_to_others};
    let refuse = |what: String| Err(io::Error::other(what));
    match open_to_others(meta) {
        Some(OpenToOthers::Owner(uid)) => {
            return refuse(format!(
                "it belongs to uid {uid}, not to you or root: only its owner may set the policy; use a config of your own"
            ));
        }
        Some(OpenToOthers::Writable(perms)) => {
            return refuse(format!(
                "it is writable by group or others (mode {perms:o}): only its owner may set the policy; chmod go-w {}",
                path.display()
            ));
        }
        None => {}
    }
    for dir in directories_on_the_way(path)? {
        match open_to_others(&fs::metadata(&dir)?) {
            Some(OpenToOthers::Owner(uid)) => {
                return refuse(format!(
                    "its directory {} belongs to uid {uid}, not to you or root: its owner could put another config in its place",
                    dir.display()
                ));
            }
            Some(OpenToOthers::Writable(perms)) => {
                return refuse(format!(
                    "its directory {} is writable by group or others (mode {perms:o}): anyone could put another config in its place; chmod go-w {}",
                    dir.display(),
                    dir.display()
                ));
            }
            None => {}
        }
    }
    Ok(())
}

/// Every directory that `path` goes through on its way to its file, symbolic links followed
/// one at a time: those above the path as given, above each link met (whoever may write beside
/// a link may point it elsewhere), and above the file itself. At most 40 links, as the kernel.
fn directories_on_the_way(path: &Path) -> io::Result<Vec<PathBuf>> {
    use std::path::Component;
    let mut dirs: Vec<PathBuf> = Vec::new();
    let mut above = |at: &Path| {
        for dir in at.ancestors().skip(1) {
            if !dirs.iter().any(|known| known == dir) {
                dirs.push(dir.to_path_buf());
            }
        }
    };
    let given = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()?.join(path)
    };
    // The parts still to walk, the next one last.
    let mut pending: Vec<std::ffi::OsString> = Vec::new();
    let push = |pending: &mut Vec<std::ffi::OsString>, at: &Path| {
        let parts: Vec<_> = at.components().map(|c| c.as_os_str().to_owned()).collect();
        pending.extend(parts.into_iter().rev());
    };
    push(&mut pending, &given);
    let mut current = PathBuf::from("/");
    let mut links = 0;
    while let Some(part) = pending.pop() {
        match Path::new(&part).components().next() {
            Some(Component::RootDir) => current = PathBuf::from("/"),
            Some(Component::ParentDir) => {
                current.pop();
            }
            Some(Component::Normal(name)) => {
                let next = current.join(name);
                if fs::symlink_metadata(&next)?.file_type().is_symlink() {
                    links += 1;
                    if links > 40 {
                        return Err(io::Error::other("too many symbolic links on the way"));
                    }
                    above(&next);
                    push(&mut pending, &fs::read_link(&next)?);
                } else {
                    current = next;
                }
            }
            _ => {}
        }
    }
    above(&current);
    Ok(dirs)
}

/// The largest PEM file lease reads: a system's CA bundle is a few hundred KB.
pub const MAX_PEM_BYTES: u64 = 4 << 20;

/// The bytes of a PEM file the config or the environment names (`tls_cert`, `tls_key`,
/// `ca_file`, `LEASE_BROKER_CA`, etcd's): see [`read_regular`]. Zeroed when dropped: it may
/// be a private key.
pub fn read_pem(path: &Path) -> io::Result<zeroize::Zeroizing<Vec<u8>>> {
    read_regular(path, MAX_PEM_BYTES, |_| Ok(()))
}

/// The bytes of a PEM file that holds a private key (`tls_key`, etcd's `key_file`): as
/// [`read_pem`], and refused if it is not the user's or root's, or if others may touch it or
/// its group may change it (`0640 root:ssl-cert` passes; `0644` does not).
pub fn read_private_pem(path: &Path) -> io::Result<zeroize::Zeroizing<Vec<u8>>> {
    read_regular(path, MAX_PEM_BYTES, |meta| {
        use std::os::unix::fs::MetadataExt;
        let mode = meta.mode() & 0o7777;
        let me = crate::owner::euid();
        if meta.uid() != me && meta.uid() != 0 {
            return Err(io::Error::other(format!(
                "it belongs to uid {}, not to you or root, and it holds a private key",
                meta.uid()
            )));
        }
        if mode & 0o027 != 0 {
            return Err(io::Error::other(format!(
                "it holds a private key and is open to others or writable by its group (mode {mode:o}): chmod 600 {}",
                path.display()
            )));
        }
        Ok(())
    })
}

/// The config file's text: see [`read_regular`]; it must also be one only its owner (the
/// user or root) may change.
fn read_bounded(path: &Path) -> io::Result<String> {
    // `--config /dev/null` is the usual way to say "no config file".
    if path == Path::new("/dev/null") {
        return Ok(String::new());
    }
    let bytes = read_regular(path, MAX_CONFIG_BYTES, |meta| {
        only_its_owner_may_change(path, meta)
    })?;
    String::from_utf8(bytes.to_vec()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "stream did not contain valid UTF-8",
        )
    })
}

/// The bytes of a file lease is told to read: a regular file (a FIFO, a device such as
/// `/dev/zero` or a directory is refused at once, never waited on or read without end),
/// passing `check`, of at most `max` bytes.
fn read_regular(
    path: &Path,
    max: u64,
    check: impl FnOnce(&fs::Metadata) -> io::Result<()>,
) -> io::Result<zeroize::Zeroizing<Vec<u8>>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::other("it is not a regular file"));
    }
    check(&meta)?;
    let mut bytes = zeroize::Zeroizing::new(Vec::new());
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(io::Error::other(format!("it is larger than {max} bytes")));
    }
    Ok(bytes)
}

impl Config {
    /// Loads the config: from `explicit` if given (it must exist), else from the default
    /// location if a file is there, else the defaults.
    pub fn load(explicit: Option<&Path>) -> Result<Config> {
        let (path, required) = match explicit {
            Some(path) => (Some(path.to_path_buf()), true),
            None => (default_path(), false),
        };
        let Some(path) = path else {
            return Ok(Config::default());
        };
        let text = match read_bounded(&path) {
            Ok(text) => text,
            // No file is no policy; but a symbolic link whose file is gone is a policy that
            // went missing (moved, on a mount not there yet): fail closed, not open.
            Err(err) if err.kind() == io::ErrorKind::NotFound && !required => {
                // The file, or a directory above it (`~/.config/lease` linked to a mount).
                let dangling = path.ancestors().find(|at| {
                    at.symlink_metadata().is_ok_and(|m| m.is_symlink()) && at.metadata().is_err()
                });
                if let Some(link) = dangling {
                    bail!(
                        "reading config {}: {} is a symbolic link to something that does not exist: restore it, or remove the link to run without a config",
                        path.display(),
                        link.display()
                    );
                }
                return Ok(Config::default());
            }
            Err(err) => {
                return Err(err).with_context(|| format!("reading config {}", path.display()));
            }
        };
        // `/dev/null` is no config file: no message should suggest editing it.
        if path == Path::new("/dev/null") {
            return Ok(Config::default());
        }
        Config::parse(&text, &path)
    }

    /// Parses config text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config> {
        let shown = path.display();
        let file: File = toml::from_str(text).map_err(|err| {
            let line = unknown_key_line(text, err.message()).or_else(|| {
                // The line the error's span starts on: the line breaks before it, plus one.
                err.span().map(|span| {
                    text.as_bytes()[..span.start.min(text.len())]
                        .iter()
                        .filter(|&&b| b == b'\n')
                        .count()
                        + 1
                })
            });
            let mut message = err.message().trim_end().replace('\n', " ");
            // A bad value's message does not say whose value it is: name the key on its line.
            if let Some(key) = line.and_then(|line| key_at(text, line))
                && !message.contains(&key)
            {
                message = format!("{key}: {message}");
            }
            match line {
                Some(line) => anyhow!("invalid config {shown}: line {line}: {message}"),
                None => anyhow!("invalid config {shown}: {message}"),
            }
        })?;
        let at = Located { text, path };
        let mut config = Config {
            path: Some(path.to_path_buf()),
            ..Config::default()
        };
        if let Some(value) = &file.max_ttl {
            config.max_ttl = value.parse().map_err(|e| at.error(None, "max_ttl", e))?;
            config.max_ttl_set = true;
        }
        if let Some(value) = &file.default_ttl {
            config.default_ttl = value
                .parse()
                .map_err(|e| at.error(None, "default_ttl", e))?;
        } else {
            config.default_ttl = config.default_ttl.min(config.max_ttl);
        }
        if config.default_ttl > config.max_ttl {
            let why = format!(
                "{} is longer than max_ttl ({})",
                ttl::human(config.default_ttl),
                ttl::human(config.max_ttl)
            );
            return Err(at.error(None, "default_ttl", why));
        }
        if let Some(name) = file.token_env {
            validate_token_env(&name).map_err(|e| at.error(None, "token_env", e))?;
            config.token_env = name;
        }
        if let Some(scopes) = &file.allowed_scopes {
            let parsed = if scopes.is_empty() {
                Ok(Vec::new())
            } else {
                scope::parse_list(scopes)
            };
            config.allowed_scopes = Some(parsed.map_err(|e| at.error(None, "allowed_scopes", e))?);
        }
        config.allow_orphans = file.allow_orphans.unwrap_or(false);
        if let Some(bytes) = file.audit_max_bytes {
            if bytes < 1024 {
                return Err(at.error(None, "audit_max_bytes", "must be at least 1024"));
            }
            config.audit_max_bytes = bytes;
        }
        for pattern in file.scrub_env.iter().flatten() {
            let parsed = scrub_pattern(pattern).map_err(|e| at.error(None, "scrub_env", e))?;
            config.scrub_env.push(parsed);
        }
        if let Some(text) = &file.broker {
            config.broker = Some(Endpoint::parse(text).map_err(|e| at.error(None, "broker", e))?);
        }
        if let Some(text) = &file.store {
            let url =
                crate::store::etcd::Url::parse(text).map_err(|e| at.error(None, "store", e))?;
            config.store = Some(url);
        }
        if let Some(etcd) = &file.etcd {
            if etcd.cert_file.is_some() != etcd.key_file.is_some() {
                return Err(at.error(None, "etcd", "cert_file and key_file go together"));
            }
            // Without a store here, `lease serve --store etcd+https://...` may bring one.
            if config.store.as_ref().is_some_and(|url| !url.tls) {
                let why = "is for an etcd+https:// store (store = \"etcd+https://...\")";
                return Err(at.error(None, "etcd", why));
            }
            config.etcd_tls = crate::store::etcd::TlsFiles {
                ca_file: etcd.ca_file.clone(),
                cert_file: etcd.cert_file.clone(),
                key_file: etcd.key_file.clone(),
            };
        }
        if let Some(value) = &file.owner_timeout {
            let timeout = value
                .parse()
                .map_err(|e| at.error(None, "owner_timeout", e))?;
            if timeout < Duration::from_secs(1) || timeout > Duration::from_secs(3600) {
                return Err(at.error(None, "owner_timeout", "must be between 1s and 1h"));
            }
            config.owner_timeout = timeout;
        }
        if let Some(workers) = file.workers {
            config.workers = usize::try_from(workers)
                .ok()
                .filter(|n| (1..=MAX_WORKERS).contains(n))
                .ok_or_else(|| {
                    let why = format!("must be between 1 and {MAX_WORKERS} (threads)");
                    at.error(None, "workers", why)
                })?;
        }
        config.tls = match (&file.tls_cert, &file.tls_key) {
            (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
            (None, None) => None,
            (Some(_), None) => {
                return Err(at.error(None, "tls_cert", "needs tls_key beside it"));
            }
            (None, Some(_)) => {
                return Err(at.error(None, "tls_key", "needs tls_cert beside it"));
            }
        };
        if let Some(value) = &file.socket_group {
            let gid = value
                .id(Account::Group)
                .map_err(|why| at.error(None, "socket_group", why))?;
            config.socket_group = Some(gid);
        }
        if let Some(values) = &file.operators {
            let uids = values
                .iter()
                .map(|value| value.id(Account::User))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|why| at.error(None, "operators", why))?;
            config.operators = Some(uids);
        }
        for (index, route) in file.route.iter().enumerate() {
            let parsed = route.parse().map_err(|e| {
                anyhow!(
                    "invalid config {}: route {} (the [[route]] with path {:?}): {e:#}",
                    path.display(),
                    index + 1,
                    route.path()
                )
            })?;
            config.routes.push(parsed);
        }
        for (name, upstream) in file.upstream {
            let spec = crate::upstream::Spec::parse(&name, upstream).map_err(|e| {
                anyhow!("invalid config {}: upstream.{name}: {e:#}", path.display())
            })?;
            config.upstreams.insert(name, spec);
        }
        for (name, profile) in &file.profile {
            let profile = parse_profile(profile, |key, err| at.error(Some(name), key, err))?;
            config.profiles.insert(name.clone(), profile);
        }
        Ok(config)
    }

    /// This config as a token holder of the broker is told of it: its messages name it "the
    /// broker's config", not its path (where it lives is none of a holder's concern).
    pub fn told_to_a_holder(&self) -> Config {
        Config {
            path: Some(PathBuf::from("the broker's config")),
            ..self.clone()
        }
    }

    /// The profile called `name`, or an error naming the file and the profiles it has.
    pub fn profile(&self, name: &str) -> Result<&Profile> {
        if let Some(profile) = self.profiles.get(name) {
            return Ok(profile);
        }
        let known: Vec<&str> = self.profiles.keys().map(String::as_str).collect();
        let file = match &self.path {
            Some(path) => format!("in {}", path.display()),
            None => "(no config file is in use)".to_owned(),
        };
        if known.is_empty() {
            bail!(
                "unknown profile '{}': no profiles are defined {file}",
                name.escape_debug()
            );
        }
        bail!(
            "unknown profile '{}': the profiles {file} are {}",
            name.escape_debug(),
            known.join(", ")
        )
    }

    /// Where a setting came from, for messages: "max_ttl in FILE" if the file sets it (`set`),
    /// else "the default max_ttl".
    pub fn source(&self, key: &str, set: bool) -> String {
        match &self.path {
            Some(path) if set => format!("{key} in {}", path.display()),
            _ => format!("the default {key}"),
        }
    }
}

fn parse_profile(
    file: &ProfileFile,
    error: impl Fn(&str, anyhow::Error) -> anyhow::Error,
) -> Result<Profile> {
    let duration = |value: &Option<DurationValue>, key: &str| {
        value
            .as_ref()
            .map(|v| v.parse().map_err(|e| error(key, e)))
            .transpose()
    };
    let scope = match &file.scope {
        Some(items) if items.is_empty() => {
            return Err(error(
                "scope",
                anyhow!(
                    "an empty list grants nothing: list the profile's scopes, e.g. [\"read:articles\"]"
                ),
            ));
        }
        Some(items) => Some(scope::parse_grants(items).map_err(|e| error("scope", e))?),
        None => None,
    };
    let env = match &file.env {
        Some(name) => {
            validate_token_env(name).map_err(|e| error("env", e))?;
            Some(name.clone())
        }
        None => None,
    };
    let on_expiry = match &file.on_expiry {
        Some(text) => Some(
            text.parse::<OnExpiry>()
                .map_err(|e| error("on_expiry", e))?,
        ),
        None => None,
    };
    if file.uses == Some(0) {
        return Err(error("uses", anyhow!("must be at least 1")));
    }
    Ok(Profile {
        scope,
        ttl: duration(&file.ttl, "ttl")?,
        env,
        on_expiry,
        grace: duration(&file.grace, "grace")?,
        uses: file.uses,
        upstreams: file.upstreams.clone().unwrap_or_default(),
    })
}

/// Checks that `name` may carry a token into a command: a valid name, and none that lease sets
/// itself (`LEASE_*` other than `LEASE_TOKEN`), that finds programs (`PATH`), or that the dynamic
/// loader reads (`LD_*`, `DYLD_*`): the token there would break the run or reach the loader.
pub fn validate_token_env(name: &str) -> Result<()> {
    validate_env_name(name)?;
    let why = if name.starts_with("LEASE_") && name != DEFAULT_TOKEN_ENV {
        "lease sets the LEASE_* variables itself"
    } else if let Some(why) = steers_the_command(name) {
        why
    } else {
        return Ok(());
    };
    bail!("{name} cannot carry the token: {why}; choose another name, e.g. DEPLOY_TOKEN")
}

/// Checks that lease may set `name` in a command's environment for an upstream (a
/// `child_env` name): a variable name that is none of lease's own (`LEASE_*`) and does not
/// steer how the command runs (`PATH`, `LD_*`, `DYLD_*`).
pub fn validate_child_var(name: &str) -> Result<()> {
    validate_env_name(name)?;
    let why = if name.starts_with("LEASE_") {
        "lease sets the LEASE_* variables itself"
    } else if let Some(why) = steers_the_command(name) {
        why
    } else {
        return Ok(());
    };
    bail!(
        "{name} cannot be set for an upstream: {why}; choose another name, e.g. API_URL or API_KEY"
    )
}

/// Why a variable set for the command would steer how it runs, if it would.
fn steers_the_command(name: &str) -> Option<&'static str> {
    match name {
        "PATH" => Some("PATH is where commands are looked up"),
        _ if name.starts_with("LD_") || name.starts_with("DYLD_") => {
            Some("the dynamic loader reads LD_* and DYLD_* variables")
        }
        // Read as a place or a file to run, the token would be quoted in the errors of any
        // program that cannot find it (`cd: agt_...: No such file or directory`).
        "HOME" | "PWD" | "OLDPWD" | "CDPATH" | "TMPDIR" | "TMP" | "TEMP" | "SHELL" => {
            Some("programs read it as a path and quote it in their errors")
        }
        "LANG" | "LANGUAGE" | "TERM" => {
            Some("programs read it as a setting and quote it in their errors")
        }
        _ if name.starts_with("LC_") => {
            Some("programs read it as a setting and quote it in their errors")
        }
        "IFS" | "ENV" | "BASH_ENV" | "PS1" | "PS2" | "PS4" | "PROMPT_COMMAND" | "SHELLOPTS"
        | "BASHOPTS" => Some("shells read it as how to run, or as a file to run first"),
        "NODE_OPTIONS" | "PYTHONSTARTUP" | "PERL5OPT" | "RUBYOPT" | "GIT_SSH_COMMAND"
        | "EDITOR" | "VISUAL" | "PAGER" => Some("programs run it, or take it as their options"),
        _ => None,
    }
}

/// Checks that `name` can be an environment variable name: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn validate_env_name(name: &str) -> Result<()> {
    if crate::token::is_token_shaped(name) {
        bail!("that is a token, not a variable name: pass the name of the variable that holds it");
    }
    let mut chars = name.chars();
    let valid_start = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !valid_start || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        bail!(
            "'{}' is not a valid environment variable name (use letters, digits and _, not starting with a digit)",
            name.escape_debug()
        );
    }
    Ok(())
}

/// The line of `key = ...` in the top level (`table` None) or in `[profile.TABLE]`.
fn key_line(text: &str, table: Option<&str>, key: &str) -> Option<usize> {
    let mut current: Option<String> = None;
    for (index, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if let Some(header) = trimmed.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            current = header
                .trim()
                .strip_prefix("profile.")
                .map(|n| n.trim().to_owned());
            if current.is_none() {
                current = Some(String::new());
            }
            continue;
        }
        let in_table = match table {
            Some(name) => current.as_deref() == Some(name),
            None => current.is_none(),
        };
        let is_key = trimmed
            .strip_prefix(key)
            .is_some_and(|rest| rest.trim_start().starts_with('='));
        if in_table && is_key {
            return Some(index + 1);
        }
    }
    None
}

/// The key that line `line` (from 1) sets, with its table: `max_ttl` or `profile.NAME.ttl`.
fn key_at(text: &str, line: usize) -> Option<String> {
    let before = text.lines().take(line.checked_sub(1)?);
    let table = before
        .filter_map(|l| l.trim().strip_prefix('[')?.strip_suffix(']'))
        .last();
    let (key, _) = text.lines().nth(line - 1)?.split_once('=')?;
    let key = key.trim();
    let bare = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if key.is_empty() || !key.chars().all(bare) {
        return None;
    }
    Some(match table {
        Some(table) => format!("{}.{key}", table.trim()),
        None => key.to_owned(),
    })
}

/// toml reports an unknown key with the span of its whole table; find the key's own line.
fn unknown_key_line(text: &str, message: &str) -> Option<usize> {
    let key = message.strip_prefix("unknown field `")?.split('`').next()?;
    text.lines()
        .position(|line| {
            line.trim_start()
                .strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map(|index| index + 1)
}

fn default_path() -> Option<PathBuf> {
    crate::account::config_dir().map(|dir| dir.join("lease").join("config.toml"))
}

/// A pattern of `scrub_env` or `--scrub`: a glob over variable names. An empty one would
/// match no variable, so that a scrub which removes nothing is a mistake said at once.
pub fn scrub_pattern(text: &str) -> Result<glob::Pattern, String> {
    // Never quoted: a token typed in the wrong place must not be echoed.
    if crate::token::is_token_shaped(text) {
        return Err(
            "that is a token, not a variable name pattern: pass a pattern such as '*_TOKEN'".into(),
        );
    }
    if text.is_empty() {
        return Err(
            "an empty pattern matches no variable: give a name or a glob such as '*_TOKEN'".into(),
        );
    }
    glob::Pattern::new(text)
        .map_err(|err| format!("invalid pattern '{}': {err}", text.escape_debug()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config> {
        Config::parse(text, Path::new("/etc/lease.toml"))
    }

    #[test]
    fn a_private_key_is_read_only_when_others_cannot_touch_it() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("dir");
        let key = dir.path().join("k.pem");
        fs::write(&key, "key").expect("key");
        for (mode, read) in [
            (0o600, true),
            (0o400, true),
            (0o640, true),
            (0o644, false),
            (0o604, false),
            (0o660, false),
            (0o601, false),
        ] {
            fs::set_permissions(&key, fs::Permissions::from_mode(mode)).expect("mode");
            let got = read_private_pem(&key);
            assert_eq!(got.is_ok(), read, "{mode:o}: {got:?}");
            if let Err(err) = got {
                assert!(
                    err.to_string().contains(&format!("(mode {mode:o})")),
                    "{err}"
                );
            }
        }
    }

    /// -1 is chown's "leave it as it is" and getuid's error: never a user or a group.
    #[test]
    fn an_id_of_minus_one_is_no_user_and_no_group() {
        for (text, said) in [
            (
                "socket_group = 4294967295\n",
                "socket_group: 4294967295 (-1) is no group",
            ),
            (
                "operators = [0, 4294967295]\n",
                "operators: 4294967295 (-1) is no user",
            ),
        ] {
            let err = format!("{:#}", parse(text).expect_err(text));
            assert!(err.contains(said), "{err}");
        }
        assert_eq!(
            parse("socket_group = 4294967294\n")
                .expect("valid")
                .socket_group,
            Some(4_294_967_294)
        );
    }

    #[test]
    fn workers_is_a_count_of_threads_from_1_to_256() {
        assert_eq!(parse("").expect("empty").workers, 1);
        assert_eq!(parse("workers = 4\n").expect("valid").workers, 4);
        assert_eq!(parse("workers = 256\n").expect("valid").workers, 256);
        for bad in ["workers = 0\n", "workers = -1\n", "workers = 257\n"] {
            let err = format!("{:#}", parse(bad).expect_err(bad));
            assert!(err.contains("workers: must be between 1 and 256"), "{err}");
        }
        assert!(parse("workers = \"2\"\n").is_err());
    }

    #[test]
    fn all_keys_are_optional() {
        let config = parse("").expect("empty config");
        assert_eq!(config.default_ttl, ttl::DEFAULT_TTL);
        assert_eq!(config.token_env, DEFAULT_TOKEN_ENV);
        assert!(config.allowed_scopes.is_none() && config.profiles.is_empty());
    }

    #[test]
    fn reads_durations_as_seconds_or_text() {
        let config =
            parse("default_ttl = 120\nmax_ttl = \"1h\"\ntoken_env = \"MY_TOKEN\"").expect("ok");
        assert_eq!(config.default_ttl, Duration::from_secs(120));
        assert_eq!(config.max_ttl, Duration::from_secs(3600));
        assert_eq!(config.token_env, "MY_TOKEN");
    }

    #[test]
    fn reads_the_documented_example() {
        // The example in the README's Policy section, so that the documentation stays true.
        let readme = include_str!("../README.md");
        let policy = &readme[readme.find("## Policy").expect("a Policy section")..];
        let start = policy.find("```toml\n").expect("a toml block") + "```toml\n".len();
        let example = &policy[start..start + policy[start..].find("```").expect("its end")];
        let config = parse(example).expect("valid");
        let deploy = config.profile("deploy").expect("profile");
        assert_eq!(deploy.ttl, Some(Duration::from_secs(120)));
        assert_eq!(deploy.on_expiry, Some(OnExpiry::Term));
        assert_eq!(deploy.uses, Some(1));
        assert!(config.profile("nope").is_err());
    }

    #[test]
    fn errors_name_the_file_key_and_line() {
        let err = format!(
            "{:#}",
            parse("max_ttl = \"1h\"\ncolour = 1").expect_err("unknown key")
        );
        assert!(
            err.contains("/etc/lease.toml") && err.contains("colour") && err.contains("line 2"),
            "{err}"
        );
        let err = format!(
            "{:#}",
            parse("default_ttl = \"2h\"\nmax_ttl = \"1h\"").expect_err("too long")
        );
        assert!(
            err.contains("default_ttl") && err.contains("line 1"),
            "{err}"
        );
        let err = format!("{:#}", parse("token_env = \"1X\"").expect_err("bad name"));
        assert!(err.contains("token_env"), "{err}");
        let err = format!(
            "{:#}",
            parse("max_ttl = 60\n[profile.a]\nttl = \"5x\"").expect_err("bad profile ttl")
        );
        assert!(
            err.contains("profile.a.ttl") && err.contains("line 3"),
            "{err}"
        );
        let err = format!(
            "{:#}",
            parse("[profile.a]\non_expiry = \"explode\"").expect_err("bad on_expiry")
        );
        assert!(
            err.contains("profile.a.on_expiry") && err.contains("line 2"),
            "{err}"
        );
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        /// Any integer TOML can hold, with the values around lease's limits as likely as the rest.
        fn any_integer() -> impl Strategy<Value = i128> {
            let max = i128::from(ttl::MAX.as_secs());
            prop_oneof![
                any::<i64>().prop_map(i128::from),
                any::<u64>().prop_map(i128::from),
                -10i128..2000,
                max - 1000..max + 1000,
                i128::from(u64::MAX) - 1000..=i128::from(u64::MAX),
            ]
        }

        /// Checks that a bad value is one line naming the file, the line and `key`.
        fn one_line_naming(
            err: &anyhow::Error,
            line: usize,
            key: &str,
        ) -> Result<(), TestCaseError> {
            let message = format!("{err:#}");
            prop_assert!(!message.contains('\n'), "{}", message);
            let start = format!("invalid config /etc/lease.toml: line {line}: {key}: ");
            prop_assert!(message.starts_with(&start), "{}", message);
            Ok(())
        }

        proptest! {
            #[test]
            fn a_duration_key_takes_whole_seconds_up_to_ten_years(
                n in any_integer(),
                (table, key) in prop_oneof![
                    Just(("", "max_ttl")),
                    Just(("", "default_ttl")),
                    Just(("[profile.p]\n", "ttl")),
                    Just(("[profile.p]\n", "grace")),
                ],
            ) {
                let limit = if key == "max_ttl" { "" } else { "max_ttl = \"10y\"\n" };
                let text = format!("{limit}{table}{key} = {n}");
                let line = text.lines().count();
                let shown = if table.is_empty() { key.to_owned() } else { format!("profile.p.{key}") };
                let in_range = (1..=i128::from(ttl::MAX.as_secs())).contains(&n);
                match parse(&text) {
                    Ok(config) => {
                        prop_assert!(in_range, "{} was accepted", n);
                        let expected = Duration::from_secs(u64::try_from(n).expect("in range"));
                        let got = match key {
                            "max_ttl" => Some(config.max_ttl),
                            "default_ttl" => Some(config.default_ttl),
                            "ttl" => config.profiles["p"].ttl,
                            _ => config.profiles["p"].grace,
                        };
                        prop_assert_eq!(got, Some(expected));
                    }
                    Err(err) => {
                        prop_assert!(!in_range, "{} was refused: {:#}", n, err);
                        one_line_naming(&err, line, &shown)?;
                    }
                }
            }

            #[test]
            fn a_duration_in_years_is_refused_past_ten(n in any_integer()) {
                let text = format!("max_ttl = \"{n}y\"");
                let in_range = (1..=10).contains(&n);
                match parse(&text) {
                    Ok(config) => {
                        prop_assert!(in_range);
                        prop_assert_eq!(config.max_ttl.as_secs(), u64::try_from(n).expect("in range") * 31_557_600);
                    }
                    Err(err) => {
                        prop_assert!(!in_range);
                        one_line_naming(&err, 1, "max_ttl")?;
                    }
                }
            }

            #[test]
            fn a_count_key_takes_any_whole_number_from_its_minimum(
                n in any_integer(),
                (table, key, least) in prop_oneof![
                    Just(("[profile.p]\n", "uses", 1)),
                    Just(("", "audit_max_bytes", 1024)),
                ],
            ) {
                let text = format!("{table}{key} = {n}");
                let line = text.lines().count();
                let shown = if table.is_empty() { key.to_owned() } else { format!("profile.p.{key}") };
                let in_range = (least..=i128::from(u64::MAX)).contains(&n);
                match parse(&text) {
                    Ok(config) => {
                        prop_assert!(in_range, "{} was accepted", n);
                        let expected = u64::try_from(n).expect("in range");
                        let got = if key == "uses" { config.profiles["p"].uses } else { Some(config.audit_max_bytes) };
                        prop_assert_eq!(got, Some(expected));
                    }
                    Err(err) => {
                        prop_assert!(!in_range, "{} was refused: {:#}", n, err);
                        one_line_naming(&err, line, &shown)?;
                    }
                }
            }
        }
    }
}
