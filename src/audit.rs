//! The audit trail: `audit.jsonl` in the state dir, one JSON event per line, append-only.
//!
//! Every event is one `write` of one whole line to a file opened with `O_APPEND`, so concurrent
//! writers never interleave partial lines. The file is rotated to `audit.jsonl.1` when it would
//! grow past `audit_max_bytes` (one rotated file is kept). The token is never part of an event;
//! commands are recorded as argv[0] and an argument count, never their arguments.
//!
//! The log is reached through the state dir's handle (opened and checked once by the store), only
//! ever opened with `O_NOFOLLOW | O_NONBLOCK`, and used only if it is then a regular file owned
//! by the user: a symlink, FIFO, device or someone else's file planted as
//! `audit.jsonl` can neither hang lease nor feed it without end. Such a log is reported once,
//! as a warning on stderr, and the events are not recorded (the decision is still made, the run
//! still runs); `lease log` refuses to read it. Reading takes at most the rotation limit plus
//! [`READ_SLACK`] from each file: the newest part, if a file is larger than that.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{Mode, SFlag};
use serde::{Deserialize, Serialize};

use crate::record::{Record, rfc3339};
use crate::token::LeaseId;

/// The log's file name in the state dir.
pub const FILE_NAME: &str = "audit.jsonl";
/// Where the previous log goes when the log is rotated.
pub const ROTATED_NAME: &str = "audit.jsonl.1";
/// The size past which the log is rotated when the config says nothing.
pub const DEFAULT_MAX_BYTES: u64 = 10 * 1024 * 1024;
/// How much more than the rotation limit is read from one file: a file may pass the limit by
/// a line, or the limit may have been lowered since the file was written.
pub const READ_SLACK: u64 = 1024 * 1024;
/// How long a rotation waits for the log's lock before appending without rotating.
const LOCK_WAIT: Duration = Duration::from_millis(500);

/// What an event of the trail records; stored as its snake_case name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A lease was minted.
    #[default]
    Issued,
    /// A verify granted an action.
    Granted,
    /// A verify denied an action.
    Denied,
    /// A lease was revoked.
    Revoked,
    /// A lease was found past its expiry, or its command was ended at expiry.
    Expired,
    /// `gc` found a lease whose owner was gone.
    OwnerGone,
    /// The command of a run exited.
    ChildExit,
    /// A lease was renewed.
    Renewed,
    /// The broker forwarded a request to an upstream for a lease, or refused to.
    Proxied,
}

impl EventKind {
    /// The name stored in the trail and shown by `lease log`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Issued => "issued",
            EventKind::Granted => "granted",
            EventKind::Denied => "denied",
            EventKind::Revoked => "revoked",
            EventKind::Expired => "expired",
            EventKind::OwnerGone => "owner_gone",
            EventKind::ChildExit => "child_exit",
            EventKind::Renewed => "renewed",
            EventKind::Proxied => "proxied",
        }
    }
}

/// One event of the trail.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// When it happened (RFC 3339, UTC).
    pub time: String,
    /// What happened.
    pub event: EventKind,
    /// The lease it concerns, if one was found.
    pub lease: Option<LeaseId>,
    /// That lease's parent, for a nested lease.
    pub parent: Option<LeaseId>,
    /// The lease of the `lease run` this event belongs to (a run's own lease, or the nearest
    /// ancestor made by a run); `null` outside any run.
    pub run: Option<LeaseId>,
    /// The process the event happened for: a run's own pid, or the caller of a subcommand.
    pub pid: Option<u32>,
    /// That process's program (argv[0] only: arguments may hold secrets).
    pub command: Option<String>,
    /// How many arguments followed argv[0].
    pub argc: Option<usize>,
    /// The lease's scopes (`issued`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<Vec<String>>,
    /// The lease's expiry (`issued`, `renewed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// The action asked about (`granted`, `denied`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// Why (`granted`, `denied`, `revoked`, `expired`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The command's exit code (`child_exit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The signal the command died of (`child_exit`); the last signal lease sent it because
    /// its lease expired (`expired`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// How long the command ran, in milliseconds (`child_exit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// The broker's route that named the action (`granted`, `denied` through `/v1/auth`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// The address of the broker's client (`unix` or `HOST:PORT`) for a decision it made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// For a forward-auth decision: the address the web server in front says the request came
    /// from (the last of `X-Forwarded-For`, or `X-Real-IP`); the web server's word.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarded_for: Option<String>,
    /// The upstream a request was for (`proxied`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// The request's method (`proxied`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// The request's path under the upstream, without its query string (`proxied`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The upstream's status code; absent when it was not contacted (`proxied`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Request body bytes sent to the upstream (`proxied`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_up: Option<u64>,
    /// Response body bytes received from the upstream (`proxied`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_down: Option<u64>,
}

/// The longest path (or argv[0] a broker's client sends) an event keeps, in bytes: a request's
/// head may be 64 KiB, and a client sending such paths by the hundred would otherwise rotate
/// the trail away within seconds.
pub const MAX_PATH: usize = 1024;

/// The longest method an event keeps, in bytes: the longest registered HTTP method is 17.
pub const MAX_METHOD: usize = 32;

/// A request's path (or a broker's client's argv[0]) as an event keeps it: see [`shown`].
pub fn path_shown(path: &str) -> String {
    shown(path, MAX_PATH)
}

/// A request's method as an event keeps it (a web server passes on whatever its client sent):
/// see [`shown`].
pub fn method_shown(method: &str) -> String {
    shown(method, MAX_METHOD)
}

/// What the trail and the log show for a path or a method that holds a percent-encoded token
/// (within [`MAX_METHOD`]).
pub const ENCODED_TOKEN_LEFT_OUT: &str = "(left out: a lease token)";

/// `text` with a token in it redacted, then cut to `max` bytes (at a character's boundary)
/// with `…` after it. Redacted first, so that no cut leaves part of a token behind. A token
/// percent-encoded in it, in whole or in part (`agt%5F...`, `agt_ABCDEFGH%49...`), which the
/// redaction of its plain text would only cut in two, leaves nothing of the text but a word.
fn shown(text: &str, max: usize) -> String {
    if text.contains('%') && crate::token::holds_whole_token(text.as_bytes()) {
        return ENCODED_TOKEN_LEFT_OUT.to_owned();
    }
    let redacted = crate::token::redact(text);
    if redacted.len() <= max {
        return redacted.into_owned();
    }
    let mut cut = max;
    while !redacted.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &redacted[..cut])
}

/// The leases of one tree as the trail tells it: a lease and, as their `issued` events come
/// (each names its parent before the lease is used), the leases nested in it at any depth.
#[derive(Debug)]
pub struct Tree(std::collections::HashSet<String>);

impl Tree {
    /// The tree of lease `root`.
    pub fn new(root: &str) -> Tree {
        Tree(std::collections::HashSet::from([root.to_owned()]))
    }

    /// Whether `event` is about a lease of the tree, taking in a lease it shows nested in one.
    /// Events must come in the trail's order.
    pub fn holds(&mut self, event: &Event) -> bool {
        if let (Some(id), Some(parent)) = (&event.lease, &event.parent)
            && self.0.contains(parent.as_str())
        {
            self.0.insert(id.to_string());
        }
        event
            .lease
            .as_ref()
            .is_some_and(|l| self.0.contains(l.as_str()))
    }
}

/// Whether `trail` reaches back to the start of lease `id`: it holds the lease's `issued`
/// event. Once a rotation has dropped that, events of the lease may be gone with it.
pub fn reaches_back_to(trail: &[Event], id: &str) -> bool {
    trail
        .iter()
        .any(|e| e.event == EventKind::Issued && e.lease.as_deref() == Some(id))
}

impl Event {
    /// For an event that records a decision (`granted`, `denied`, or a `proxied` request,
    /// which the broker decided on first), whether it granted.
    pub fn decided(&self) -> Option<bool> {
        match self.event {
            EventKind::Granted => Some(true),
            EventKind::Denied => Some(false),
            EventKind::Proxied => Some(self.reason.as_deref() == Some("granted")),
            _ => None,
        }
    }

    /// An event of kind `event` about `record` (if any), now.
    pub fn new(event: EventKind, record: Option<&Record>) -> Event {
        Event {
            time: rfc3339::format(SystemTime::now()),
            event,
            lease: record.map(|r| r.id.clone()),
            parent: record.and_then(|r| r.parent.clone()),
            run: record.and_then(|r| r.run.clone()),
            ..Event::default()
        }
    }

    /// Sets the process the event happened for.
    pub fn process(mut self, process: &Process) -> Event {
        self.pid = process.pid;
        self.command.clone_from(&process.command);
        self.argc = process.argc;
        self.client.clone_from(&process.client);
        self
    }
}

/// A process as the trail names it: pid, argv[0] and the number of arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Process {
    /// Its pid, when known (a broker's client over TCP has none it can see).
    pub pid: Option<u32>,
    /// argv[0].
    pub command: Option<String>,
    /// The number of arguments after argv[0].
    pub argc: Option<usize>,
    /// For a broker's client: its address (`unix:uid=N` or `HOST:PORT`).
    pub client: Option<String>,
}

impl Process {
    /// The process that started this lease (the caller of a subcommand: a tool asking
    /// `lease verify`, a script running `lease issue`).
    pub fn caller() -> Process {
        Process::named(nix::unistd::getppid().as_raw().unsigned_abs())
    }

    /// The caller of process `pid` (its parent), as [`Process::caller`] names its own: for a
    /// broker's client on its unix socket, whose pid the socket tells. `None` once it is gone.
    pub fn caller_of(pid: u32) -> Option<Process> {
        let stat = crate::owner::read_proc(&format!("/proc/{pid}/stat")).ok()?;
        // The command name (field 2) may hold spaces or ')': the fields after the last ')'
        // are the state, then the parent's pid.
        let rest = &stat[stat.rfind(')')? + 1..];
        let parent = rest.split_whitespace().nth(1)?.parse::<u32>().ok()?;
        Some(Process::named(parent))
    }

    /// Process `pid`, with argv[0] and the count of its other arguments.
    fn named(pid: u32) -> Process {
        // At most the first 4 KiB: argv[0] is all that is kept.
        let argv = fs::File::open(format!("/proc/{pid}/cmdline"))
            .and_then(|file| {
                let mut bytes = Vec::new();
                file.take(4096).read_to_end(&mut bytes).map(|_| bytes)
            })
            .unwrap_or_default();
        let mut parts = argv.strip_suffix(&[0]).unwrap_or(&argv).split(|b| *b == 0);
        // argv[0] as it is, never a later argument; a process that rewrote its title may have
        // put its arguments there after a space: only the program is kept, redacted.
        let command = parts.next().filter(|_| !argv.is_empty()).map(|first| {
            let first = String::from_utf8_lossy(first);
            let program = first.split(' ').next().unwrap_or_default();
            crate::token::redact(program).into_owned()
        });
        Process {
            pid: Some(pid),
            argc: command.as_ref().map(|_| parts.count()),
            command,
            client: None,
        }
    }
}

/// The audit log of one state dir.
#[derive(Debug, Clone)]
pub struct Log {
    /// The state dir's handle; `None` when there is no store, and so no trail.
    dir: Option<Arc<OwnedFd>>,
    /// The log's path, for messages.
    path: PathBuf,
    rotated: PathBuf,
    max_bytes: u64,
    /// Whether an unusable log (not a regular file of the user's) was already reported: it is
    /// reported once, not once per event.
    reported: Arc<AtomicBool>,
    /// The log file as the last append left it open, so that a process writing many events
    /// (the broker) does not open and close the file for each one.
    kept: Arc<Mutex<Option<Kept>>>,
}

/// An open log file, and which file it is.
#[derive(Debug)]
struct Kept {
    file: File,
    dev: u64,
    ino: u64,
}

impl Kept {
    /// `file`, whose status is `meta`, and its size.
    fn new(file: File, meta: &fs::Metadata) -> (Kept, u64) {
        let kept = Kept {
            dev: meta.dev(),
            ino: meta.ino(),
            file,
        };
        (kept, meta.len())
    }
}

/// A log file that lease refuses to use: a symlink, FIFO, device, directory or socket, or a
/// file owned by someone else. The message is one line naming the file and what is wrong.
#[derive(Debug)]
pub struct Unusable(String);

impl std::fmt::Display for Unusable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unusable {}

impl Log {
    /// The log in the directory open as `dir` (whose path is `shown`), rotated past
    /// `max_bytes`. Without a directory (no store yet) nothing is recorded and nothing read.
    pub fn new(shown: &Path, dir: Option<Arc<OwnedFd>>, max_bytes: u64) -> Log {
        Log {
            dir,
            path: shown.join(FILE_NAME),
            rotated: shown.join(ROTATED_NAME),
            max_bytes,
            reported: Arc::new(AtomicBool::new(false)),
            kept: Arc::new(Mutex::new(None)),
        }
    }

    /// Appends `event`; a trail that cannot be written is reported on stderr and does not stop
    /// the command.
    pub fn note(&self, event: &Event) {
        if let Err(err) = self.append(event) {
            crate::say!("lease: warning: {err:#}");
        }
    }

    /// Appends one event as one line, in one write.
    ///
    /// A log that is not a regular file of the user's ([`Unusable`]) is not written: the
    /// first time, a one-line warning says so on stderr (here, since some callers do not
    /// report a failed append), and the event is dropped without an error, so that a run with
    /// many events reports its missing trail once and carries on. Without a store there is no
    /// trail, and nothing is written.
    pub fn append(&self, event: &Event) -> Result<()> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        let line = serde_json::to_string(event).context("encoding an audit event")?;
        // Whatever field a token got into (a web server passes on its client's headers), the
        // trail never holds one.
        let mut line = crate::token::redact(&line).into_owned().into_bytes();
        line.push(b'\n');
        let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        let (mut open, size) = match Self::still_named(dir, kept.take()) {
            Some(found) => found,
            None => match self.open_for_append(dir) {
                Ok(opened) => opened,
                Err(err) if err.is::<Unusable>() => {
                    if !self.reported.swap(true, Ordering::SeqCst) {
                        crate::say!("lease: warning: {err:#}");
                    }
                    return Ok(());
                }
                Err(err) => return Err(err),
            },
        };
        if size > 0 && size + line.len() as u64 > self.max_bytes {
            (open, _) = self.rotate(dir, open.file)?;
        }
        open.file
            .write_all(&line)
            .with_context(|| format!("writing the audit log {}", self.path.display()))?;
        *kept = Some(open);
        Ok(())
    }

    /// The kept file and the log's size, if the log's name still leads to that file and it is
    /// still the user's and private: one status call instead of an open, a status and a close.
    /// A log rotated, replaced or opened to others by another process since is opened again
    /// (and checked, and made private, as at first).
    fn still_named(dir: &OwnedFd, kept: Option<Kept>) -> Option<(Kept, u64)> {
        let kept = kept?;
        let named = nix::sys::stat::fstatat(dir, FILE_NAME, AtFlags::AT_SYMLINK_NOFOLLOW).ok()?;
        let same = named.st_ino == kept.ino
            && named.st_dev == kept.dev
            && named.st_uid == crate::owner::euid()
            && named.st_mode & 0o077 == 0;
        same.then(|| (kept, u64::try_from(named.st_size).unwrap_or(0)))
    }

    /// Opens the log to append to, creating it if missing, and checks that it is usable:
    /// the file kept, and its size.
    fn open_for_append(&self, dir: &OwnedFd) -> Result<(Kept, u64)> {
        let opened = nix::fcntl::openat(
            dir,
            FILE_NAME,
            OFlag::O_WRONLY
                | OFlag::O_APPEND
                | OFlag::O_CREAT
                | OFlag::O_NOFOLLOW
                | OFlag::O_NONBLOCK
                | OFlag::O_CLOEXEC,
            Mode::S_IRUSR | Mode::S_IWUSR,
        );
        let file = File::from(opened.map_err(|err| {
            opening_failed(dir, FILE_NAME, &self.path, err, "the trail is not written")
        })?);
        let meta = check_usable(&file, &self.path, "the trail is not written")?;
        // Created under a umask that took the owner's bits (0277: 0400), the trail is made
        // 0600, so that the next append can open it and `lease log` read it.
        if meta.mode() & 0o600 != 0o600 {
            nix::sys::stat::fchmod(&file, Mode::S_IRUSR | Mode::S_IWUSR).with_context(|| {
                format!(
                    "the audit log {} cannot be made readable and writable by you",
                    self.path.display()
                )
            })?;
        }
        Ok(Kept::new(file, &meta))
    }

    /// Moves a full log aside, once: under the log's lock, and only if no other writer has
    /// rotated it meanwhile. Returns a file to append to. A lock held by someone else for
    /// longer than [`LOCK_WAIT`] is not waited for: the event goes to the log unrotated.
    fn rotate(&self, dir: &OwnedFd, file: File) -> Result<(Kept, u64)> {
        let deadline = Instant::now() + LOCK_WAIT;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(fs::TryLockError::WouldBlock) => {
                    let meta = file.metadata().context("reading the audit log")?;
                    return Ok(Kept::new(file, &meta));
                }
                Err(fs::TryLockError::Error(err)) => {
                    return Err(err)
                        .with_context(|| format!("locking the audit log {}", self.path.display()));
                }
            }
        }
        let locked = file.metadata().context("reading the audit log")?;
        let current = nix::sys::stat::fstatat(dir, FILE_NAME, AtFlags::AT_SYMLINK_NOFOLLOW);
        let still_ours =
            current.is_ok_and(|m| m.st_ino == locked.ino() && m.st_dev == locked.dev());
        if still_ours && locked.len() > 0 {
            // Renamed over the previous rotation's file in one step, so that a reader always
            // finds the rotated events in one of the two files (removing the old file first
            // would spare ext4's flush of the log, `auto_da_alloc`, but open a moment where a
            // reader sees neither).
            nix::fcntl::renameat(dir, FILE_NAME, dir, ROTATED_NAME)
                .map_err(io::Error::from)
                .with_context(|| format!("rotating the audit log {}", self.path.display()))?;
        }
        drop(file);
        self.open_for_append(dir)
    }

    /// Every event on record, oldest first: the rotated file, then the current one. Lines that
    /// do not parse (there should be none) are skipped. A file that is not a regular file of
    /// the user's is an error ([`Unusable`]); of a file larger than the rotation limit plus
    /// [`READ_SLACK`], only that much, its newest part, is read (with a warning).
    pub fn read(&self) -> Result<Vec<Event>> {
        let mut events = Vec::new();
        let Some(dir) = &self.dir else {
            return Ok(events);
        };
        for (name, path) in [(ROTATED_NAME, &self.rotated), (FILE_NAME, &self.path)] {
            let Some(text) = self.read_file(dir, name, path)? else {
                continue;
            };
            let text = String::from_utf8_lossy(&text);
            events.extend(text.lines().filter_map(|l| serde_json::from_str(l).ok()));
        }
        Ok(events)
    }

    /// The bytes of one log file (whole lines only), or `None` if it does not exist.
    fn read_file(&self, dir: &OwnedFd, name: &str, path: &Path) -> Result<Option<Vec<u8>>> {
        let opened = nix::fcntl::openat(
            dir,
            name,
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            Mode::empty(),
        );
        let mut file = match opened {
            Ok(fd) => File::from(fd),
            Err(Errno::ENOENT) => return Ok(None),
            Err(err) => return Err(opening_failed(dir, name, path, err, "it is not read")),
        };
        let meta = check_usable(&file, path, "it is not read")?;
        let limit = self.max_bytes.saturating_add(READ_SLACK);
        let skip = meta.len().saturating_sub(limit);
        if skip > 0 {
            crate::say!(
                "lease: warning: the audit log {} is larger than {limit} bytes: only its last {limit} bytes are read",
                path.display()
            );
            file.seek(SeekFrom::Start(skip))
                .with_context(|| format!("reading {}", path.display()))?;
        }
        let mut bytes = Vec::new();
        file.take(limit)
            .read_to_end(&mut bytes)
            .with_context(|| format!("reading {}", path.display()))?;
        if skip > 0 {
            // The first line was cut by the seek.
            let start = bytes
                .iter()
                .position(|b| *b == b'\n')
                .map_or(bytes.len(), |n| n + 1);
            bytes.drain(..start);
        }
        Ok(Some(bytes))
    }
}

/// The error for a log file that could not be opened: [`Unusable`] when what is there is not a
/// regular file (a symlink gives `ELOOP` under `O_NOFOLLOW`; a FIFO without a reader, `ENXIO`).
fn opening_failed(
    dir: &OwnedFd,
    name: &str,
    path: &Path,
    err: Errno,
    consequence: &str,
) -> anyhow::Error {
    let unusable = matches!(
        err,
        Errno::ELOOP | Errno::ENXIO | Errno::EISDIR | Errno::ENODEV
    );
    if unusable && let Ok(st) = nix::sys::stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        return Unusable(format!(
            "the audit log {} is {}, not a regular file: {consequence}",
            path.display(),
            kind(st.st_mode)
        ))
        .into();
    }
    anyhow::Error::new(io::Error::from(err))
        .context(format!("opening the audit log {}", path.display()))
}

/// Checks that an open log file is a regular file owned by the user.
fn check_usable(file: &File, path: &Path, consequence: &str) -> Result<fs::Metadata> {
    let meta = file
        .metadata()
        .with_context(|| format!("reading the audit log {}", path.display()))?;
    if !meta.is_file() {
        return Err(Unusable(format!(
            "the audit log {} is {}, not a regular file: {consequence}",
            path.display(),
            kind(meta.mode())
        ))
        .into());
    }
    let me = crate::owner::euid();
    if meta.uid() != me {
        return Err(Unusable(format!(
            "the audit log {} is owned by uid {}, not by you (uid {me}): {consequence}",
            path.display(),
            meta.uid()
        ))
        .into());
    }
    // The trail is private, as every file lease writes: one made readable by others (by hand,
    // or by a tool that rotated it) is made 0600 again before it is written to.
    if meta.mode() & 0o077 != 0 {
        nix::sys::stat::fchmod(file, Mode::from_bits_truncate(0o600)).with_context(|| {
            format!(
                "the audit log {} is open to others and cannot be made private",
                path.display()
            )
        })?;
    }
    Ok(meta)
}

/// What a file that is not a regular file is, for a message.
fn kind(mode: u32) -> &'static str {
    let kind = SFlag::from_bits_truncate(mode) & SFlag::S_IFMT;
    if kind == SFlag::S_IFLNK {
        "a symbolic link"
    } else if kind == SFlag::S_IFIFO {
        "a FIFO"
    } else if kind == SFlag::S_IFDIR {
        "a directory"
    } else if kind == SFlag::S_IFSOCK {
        "a socket"
    } else if kind == SFlag::S_IFCHR || kind == SFlag::S_IFBLK {
        "a device"
    } else {
        "an unknown kind of file"
    }
}

/// Milliseconds in a duration, for `duration_ms`.
pub fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_is_kept_redacted_and_cut_to_its_bound() {
        assert_eq!(path_shown("/files/a.txt"), "/files/a.txt");
        let long = format!("/x{}", "é".repeat(MAX_PATH));
        let shown = path_shown(&long);
        assert!(shown.len() <= MAX_PATH + "…".len(), "{}", shown.len());
        assert!(shown.ends_with('…') && long.starts_with(shown.trim_end_matches('…')));
        // A token that the cut would halve is redacted whole first.
        let token = crate::token::Token::mint().expect("a token");
        let path = format!("/{}{}", "p".repeat(MAX_PATH - 20), token.expose());
        let shown = path_shown(&path);
        assert!(!shown.contains(&token.expose()[..12]), "{shown}");
        assert!(shown.len() <= MAX_PATH + "…".len());
    }

    fn open_dir(path: &Path) -> Arc<OwnedFd> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        Arc::new(nix::fcntl::open(path, flags, Mode::empty()).expect("dir opened"))
    }

    fn event(n: usize) -> Event {
        Event {
            event: EventKind::Granted,
            action: Some(format!("action:{n}")),
            ..Event::default()
        }
    }

    #[test]
    fn reading_takes_at_most_the_limit_plus_slack_from_a_file_the_newest_part() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = Log::new(dir.path(), Some(open_dir(dir.path())), 1024);
        let mut text = Vec::new();
        let mut count = 0;
        while text.len() as u64 <= 3 * READ_SLACK {
            let mut line = serde_json::to_vec(&event(count)).expect("encoded");
            line.push(b'\n');
            text.extend(line);
            count += 1;
        }
        fs::write(dir.path().join(FILE_NAME), &text).expect("log written");
        let events = log.read().expect("read");
        let line_len = text.len() / count;
        assert!(
            events.len() * line_len <= usize::try_from(1024 + READ_SLACK).expect("small"),
            "{} events read",
            events.len()
        );
        assert!(events.len() > 1000, "{} events read", events.len());
        assert_eq!(events.last(), Some(&event(count - 1)), "the newest is read");
    }

    #[test]
    fn a_log_owned_by_someone_else_is_refused() {
        if !nix::unistd::geteuid().is_root() {
            return; // only root can give a file away
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join(FILE_NAME);
        fs::write(&path, b"").expect("log written");
        std::os::unix::fs::chown(&path, Some(65534), None).expect("chown");
        let log = Log::new(dir.path(), Some(open_dir(dir.path())), 1024);
        let err = log.read().expect_err("refused");
        assert_eq!(
            err.to_string(),
            format!(
                "the audit log {} is owned by uid 65534, not by you (uid 0): it is not read",
                path.display()
            )
        );
        // Appending is refused too, with no error (the warning is printed once).
        log.append(&event(1)).expect("carries on");
        assert_eq!(fs::metadata(&path).expect("still there").len(), 0);
    }

    /// The events in one log file, in order.
    fn events_in(path: &Path) -> Vec<Event> {
        let text = fs::read_to_string(path).expect("log read");
        text.lines()
            .map(|l| serde_json::from_str(l).expect("an event"))
            .collect()
    }

    /// Whatever field a token got into, the line written holds `agt_***` in its place.
    #[test]
    fn no_line_of_the_trail_holds_a_token() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = Log::new(dir.path(), Some(open_dir(dir.path())), 1 << 20);
        let token = crate::token::Token::mint().expect("minted");
        let token = token.expose();
        let mut event = Event::new(EventKind::Denied, None);
        event.upstream = Some(format!("up-{token}"));
        event.route = Some(format!("GET /{token}/**"));
        event.command = Some(token.to_owned());
        log.append(&event).expect("appended");
        let text = fs::read_to_string(dir.path().join(FILE_NAME)).expect("the trail");
        assert!(!text.contains(token), "{text}");
        let [written] = &events_in(&dir.path().join(FILE_NAME))[..] else {
            panic!("{text}");
        };
        assert_eq!(written.upstream.as_deref(), Some("up-agt_***"));
        assert_eq!(written.route.as_deref(), Some("GET /agt_***/**"));
        assert_eq!(written.command.as_deref(), Some("agt_***"));
        // A path or a method is shown with the token redacted, even percent-encoded.
        assert_eq!(path_shown(&format!("/x/{token}")), "/x/agt_***");
        // Encoded in whole or only past the first characters of its body, which the
        // redaction of plain text would cut in two, leaving the rest.
        for encoded in [
            format!("/x/agt%5F{}", &token[4..]),
            format!("%61gt_{}", &token[4..]),
            format!(
                "/x/{}%{:02X}{}",
                &token[..12],
                token.as_bytes()[12],
                &token[13..]
            ),
        ] {
            assert_eq!(path_shown(&encoded), ENCODED_TOKEN_LEFT_OUT);
            assert_eq!(method_shown(&encoded), ENCODED_TOKEN_LEFT_OUT);
        }
        assert!(ENCODED_TOKEN_LEFT_OUT.len() <= MAX_METHOD);
        assert_eq!(path_shown("/x/agt%5Ftools"), "/x/agt%5Ftools");
    }

    #[test]
    fn a_log_kept_open_follows_its_name_when_another_process_moves_or_replaces_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join(FILE_NAME);
        let log = Log::new(dir.path(), Some(open_dir(dir.path())), 1 << 20);
        log.append(&event(1)).expect("appended");
        log.append(&event(2)).expect("appended");
        assert_eq!(events_in(&path), [event(1), event(2)]);
        // Another writer rotates it: the next event goes to the new log, not the moved one.
        fs::rename(&path, dir.path().join(ROTATED_NAME)).expect("moved");
        log.append(&event(3)).expect("appended");
        assert_eq!(events_in(&path), [event(3)]);
        // Replaced by another file of the same size: still the name's file that is written.
        let other = dir.path().join("other");
        fs::copy(&path, &other).expect("copied");
        fs::rename(&other, &path).expect("replaced");
        log.append(&event(4)).expect("appended");
        assert_eq!(events_in(&path), [event(3), event(4)]);
        assert_eq!(
            events_in(&dir.path().join(ROTATED_NAME)),
            [event(1), event(2)]
        );
        // Removed: created again.
        fs::remove_file(&path).expect("removed");
        log.append(&event(5)).expect("appended");
        assert_eq!(events_in(&path), [event(5)]);
    }

    #[test]
    fn a_log_kept_open_is_not_written_once_it_is_given_away() {
        if !nix::unistd::geteuid().is_root() {
            return; // only root can give a file away
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join(FILE_NAME);
        let log = Log::new(dir.path(), Some(open_dir(dir.path())), 1 << 20);
        log.append(&event(1)).expect("appended");
        std::os::unix::fs::chown(&path, Some(65534), None).expect("chown");
        log.append(&event(2)).expect("carries on");
        assert_eq!(events_in(&path), [event(1)]);
    }

    #[test]
    fn a_log_kept_open_is_still_rotated_at_its_limit() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join(FILE_NAME);
        let line = serde_json::to_vec(&event(0)).expect("encoded").len() as u64 + 1;
        let log = Log::new(dir.path(), Some(open_dir(dir.path())), 2 * line);
        for n in 0..5 {
            log.append(&event(n)).expect("appended");
        }
        assert_eq!(events_in(&path), [event(4)]);
        assert_eq!(
            events_in(&dir.path().join(ROTATED_NAME)),
            [event(2), event(3)]
        );
    }
}
