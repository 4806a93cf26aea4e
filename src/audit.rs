//! The audit trail: `audit.jsonl` in the state dir, one JSON event per line, append-only.
//!
//! Every event is one `write` of one whole line to a file opened with `O_APPEND`, so concurrent
//! writers never interleave partial lines. The file is rotated to `audit.jsonl.1` when it would
//! grow past `audit_max_bytes` (one rotated file is kept). The token is never part of an event;
//! commands are recorded as argv[0] and an argument count, never their arguments.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::record::{Record, rfc3339};

/// The log's file name in the state dir.
pub const FILE_NAME: &str = "audit.jsonl";
/// Where the previous log goes when the log is rotated.
pub const ROTATED_NAME: &str = "audit.jsonl.1";
/// The size past which the log is rotated when the config says nothing.
pub const DEFAULT_MAX_BYTES: u64 = 10 * 1024 * 1024;

/// One event of the trail.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// When it happened (RFC 3339, UTC).
    pub time: String,
    /// `issued`, `granted`, `denied`, `revoked`, `expired`, `owner_gone`, `child_exit` or
    /// `renewed`.
    pub event: String,
    /// The lease it concerns, if one was found.
    pub lease: Option<String>,
    /// That lease's parent, for a nested lease.
    pub parent: Option<String>,
    /// The lease of the `lease run` this event belongs to (a run's own lease, or the nearest
    /// ancestor made by a run); `null` outside any run.
    pub run: Option<String>,
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
    /// The signal the command died of (`child_exit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// How long the command ran, in milliseconds (`child_exit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
}

impl Event {
    /// An event of kind `event` about `record` (if any), now.
    pub fn new(event: &str, record: Option<&Record>) -> Event {
        Event {
            time: rfc3339::format(SystemTime::now()),
            event: event.to_owned(),
            lease: record.map(|r| r.id.clone()),
            parent: record.and_then(|r| r.parent.clone()),
            run: record.and_then(|r| r.run.clone()),
            ..Event::default()
        }
    }

    /// Sets the process the event happened for.
    pub fn process(mut self, process: &Process) -> Event {
        self.pid = Some(process.pid);
        self.command.clone_from(&process.command);
        self.argc = process.argc;
        self
    }
}

/// A process as the trail names it: pid, argv[0] and the number of arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Process {
    /// Its pid.
    pub pid: u32,
    /// argv[0].
    pub command: Option<String>,
    /// The number of arguments after argv[0].
    pub argc: Option<usize>,
}

impl Process {
    /// The process that started this lease (the caller of a subcommand: a tool asking
    /// `lease verify`, a script running `lease issue`).
    pub fn caller() -> Process {
        let pid = nix::unistd::getppid().as_raw().unsigned_abs();
        let argv = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let mut parts = argv.split(|b| *b == 0).filter(|p| !p.is_empty());
        let command = parts
            .next()
            .map(|p| String::from_utf8_lossy(p).into_owned());
        Process {
            pid,
            argc: command.as_ref().map(|_| parts.count()),
            command,
        }
    }
}

/// The audit log of one state dir.
#[derive(Debug, Clone)]
pub struct Log {
    path: PathBuf,
    rotated: PathBuf,
    max_bytes: u64,
}

impl Log {
    /// The log in `dir`, rotated past `max_bytes`.
    pub fn new(dir: &Path, max_bytes: u64) -> Log {
        Log {
            path: dir.join(FILE_NAME),
            rotated: dir.join(ROTATED_NAME),
            max_bytes,
        }
    }

    /// Appends one event as one line, in one write.
    pub fn append(&self, event: &Event) -> Result<()> {
        let mut line = serde_json::to_vec(event).context("encoding an audit event")?;
        line.push(b'\n');
        let mut file = self.open()?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        if size > 0 && size + line.len() as u64 > self.max_bytes {
            file = self.rotate(file)?;
        }
        file.write_all(&line)
            .with_context(|| format!("writing the audit log {}", self.path.display()))
    }

    fn open(&self) -> Result<File> {
        OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&self.path)
            .with_context(|| format!("opening the audit log {}", self.path.display()))
    }

    /// Moves a full log aside, once: under the log's lock, and only if no other writer has
    /// rotated it meanwhile. Returns a file to append to.
    fn rotate(&self, file: File) -> Result<File> {
        file.lock()
            .with_context(|| format!("locking the audit log {}", self.path.display()))?;
        let locked = file.metadata().context("reading the audit log")?;
        let current = fs::symlink_metadata(&self.path);
        let still_ours = current.is_ok_and(|m| m.ino() == locked.ino() && m.dev() == locked.dev());
        if still_ours && locked.len() > 0 {
            fs::rename(&self.path, &self.rotated)
                .with_context(|| format!("rotating the audit log {}", self.path.display()))?;
        }
        drop(file);
        self.open()
    }

    /// Every event on record, oldest first: the rotated file, then the current one. Lines that
    /// do not parse (there should be none) are skipped.
    pub fn read(&self) -> Result<Vec<Event>> {
        let mut events = Vec::new();
        for path in [&self.rotated, &self.path] {
            let text = match fs::read_to_string(path) {
                Ok(text) => text,
                Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                Err(err) => {
                    return Err(err).with_context(|| format!("reading {}", path.display()));
                }
            };
            events.extend(text.lines().filter_map(|l| serde_json::from_str(l).ok()));
        }
        Ok(events)
    }
}

/// Milliseconds in a duration, for `duration_ms`.
pub fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
