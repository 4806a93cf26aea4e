//! `lease run --receipt FILE`: what a run hands back when it ends: its lease, every verify
//! decision of the run (nested leases included), the exit and the duration.

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::SystemTime;

use anyhow::{Context as _, Result};
use serde::Serialize;

use crate::audit::Event;
use crate::record::{Record, rfc3339};
use crate::signals::Waited;
use crate::store::Store;

/// What `--receipt FILE` holds: the lease, every verify decision of the run, the exit.
#[derive(Debug, Serialize)]
pub struct Receipt {
    lease: ReceiptLease,
    decisions: Vec<Decision>,
    /// Whether `decisions` are all the run's: false when the trail could not be read, or no
    /// longer reaches back to the lease's start (rotated past it, see `audit_max_bytes`).
    decisions_complete: bool,
    exit: ReceiptExit,
    started_at: String,
    ended_at: String,
    duration_ms: u64,
}

#[derive(Debug, Serialize)]
struct ReceiptLease {
    id: String,
    scope: Vec<String>,
    issued_at: String,
    expires_at: String,
    parent: Option<String>,
}

/// A decision of the run: a verify, or a request proxied through the broker, which also has
/// what the trail has of it (upstream, method, path, the upstream's status, bytes each way and
/// how long it took). The lease's parent and run, the route and the client are there when the
/// trail has them (a decision of the broker's).
#[derive(Debug, Serialize)]
struct Decision {
    time: String,
    lease: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    run: Option<String>,
    action: Option<String>,
    granted: bool,
    reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    route: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes_up: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes_down: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    duration_ms: Option<u64>,
}

#[derive(Debug, Serialize)]
struct ReceiptExit {
    code: Option<i32>,
    signal: Option<i32>,
    ended_at_expiry: bool,
}

impl Receipt {
    /// The receipt of the run whose lease is `record`, from the trail in `store`.
    pub fn new(
        store: &Store,
        record: &Record,
        waited: &Waited,
        started_at: SystemTime,
        duration_ms: u64,
    ) -> Receipt {
        let lease = ReceiptLease {
            id: record.id.to_string(),
            scope: record.scope.iter().map(|s| s.to_string()).collect(),
            issued_at: rfc3339::format(record.issued_at),
            expires_at: rfc3339::format(record.expires_at),
            parent: record.parent.as_deref().map(str::to_owned),
        };
        // A trail that cannot be read is an empty one: the receipt then says it is incomplete.
        let trail = store.audit().read().unwrap_or_default();
        Receipt::from_trail(lease, trail, waited, started_at, duration_ms)
    }

    /// The receipt of a run whose lease the broker holds: the lease as it was told of it,
    /// and the trail the broker sent back.
    pub fn of_held_run(
        lease: &crate::wire::Started,
        trail: Vec<Event>,
        waited: &Waited,
        started_at: SystemTime,
        duration_ms: u64,
    ) -> Receipt {
        let lease = ReceiptLease {
            id: lease.lease.id.clone(),
            scope: lease.lease.scope.clone(),
            issued_at: lease.issued_at.clone(),
            expires_at: lease.lease.expires_at.clone(),
            parent: lease.parent.clone(),
        };
        Receipt::from_trail(lease, trail, waited, started_at, duration_ms)
    }

    fn from_trail(
        lease: ReceiptLease,
        trail: Vec<Event>,
        waited: &Waited,
        started_at: SystemTime,
        duration_ms: u64,
    ) -> Receipt {
        let decisions_complete = crate::audit::reaches_back_to(&trail, &lease.id);
        // Decisions about this lease and any lease nested in it (at any depth) during the run:
        // the trail names each lease's parent when it is issued, before it is used.
        let mut ours = crate::audit::Tree::new(&lease.id);
        let decisions = trail
            .into_iter()
            .filter(|e| ours.holds(e))
            .filter_map(|e| Some((e.decided()?, e)))
            .map(|(granted, e)| Decision {
                granted,
                time: e.time,
                lease: e.lease.map(String::from),
                parent: e.parent.map(String::from),
                run: e.run.map(String::from),
                action: e.action,
                reason: e.reason,
                route: e.route,
                client: e.client,
                upstream: e.upstream,
                method: e.method,
                path: e.path,
                status: e.status,
                bytes_up: e.bytes_up,
                bytes_down: e.bytes_down,
                duration_ms: e.duration_ms,
            })
            .collect();
        Receipt {
            lease,
            decisions,
            decisions_complete,
            exit: ReceiptExit {
                code: waited.status.code(),
                signal: waited.status.signal(),
                ended_at_expiry: waited.ended_at_expiry,
            },
            started_at: rfc3339::format(started_at),
            ended_at: rfc3339::format(SystemTime::now()),
            duration_ms,
        }
    }

    /// Writes the receipt (0600, replaced atomically) to `path`: as a new regular file in its
    /// directory, renamed into place only over nothing or over a regular file.
    pub fn write(&self, path: &Path) -> Result<()> {
        let mut text = serde_json::to_vec_pretty(self).context("encoding the receipt")?;
        text.push(b'\n');
        let shown = path.display();
        let mut temp = receipt_temp_file(path)?;
        // 0600 whatever the umask (which may take the owner's bits, or leave none at all).
        use std::os::unix::fs::PermissionsExt as _;
        temp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("writing the receipt {shown}"))?;
        temp.write_all(&text)
            .with_context(|| format!("writing the receipt {shown}"))?;
        refuse_non_regular(path)?;
        temp.persist(path)
            .map_err(|e| e.error)
            .with_context(|| format!("writing the receipt {shown}"))?;
        if !self.decisions_complete {
            crate::say!(
                "lease: the receipt {shown} may lack decisions of the run: the audit trail does not reach back to the lease's start (rotated past it: raise audit_max_bytes; or kept by another broker, or unreadable); its decisions_complete is false"
            );
        }
        Ok(())
    }
}

/// Checks, before anything is minted, that the receipt can be written: its directory takes a
/// new file, and `path` is not something other than a regular file.
pub fn can_be_written(path: &Path, state_dir: Option<&Path>) -> Result<()> {
    refuse_not_a_file_name(path)?;
    refuse_non_regular(path)?;
    if let Some(state_dir) = state_dir {
        refuse_inside(path, state_dir)?;
    }
    receipt_temp_file(path).map(drop)
}

/// Refuses a path that cannot name a file, whatever is there: one that ends in `/`, `.` or
/// `..` (the file would be written in the directory above it, then fail to take its name).
fn refuse_not_a_file_name(path: &Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    let last = bytes.rsplit(|&b| b == b'/').next().unwrap_or_default();
    if matches!(last, b"" | b"." | b"..") {
        anyhow::bail!(
            "cannot write the receipt {}: the path names a directory, not a file; give a file name, such as {}",
            path.display(),
            Path::new(path).join("receipt.json").display()
        );
    }
    Ok(())
}

/// Refuses a receipt in the state dir or below it: its files are lease's own (a receipt
/// renamed over `audit.jsonl` would replace the trail, over a record a lease).
fn refuse_inside(path: &Path, state_dir: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let (Ok(dir), Ok(state_dir)) = (dir.canonicalize(), state_dir.canonicalize()) else {
        return Ok(());
    };
    if dir.starts_with(&state_dir) {
        anyhow::bail!(
            "cannot write the receipt {}: it is inside the state dir {}, whose files are lease's own; choose a path outside it",
            path.display(),
            state_dir.display()
        );
    }
    Ok(())
}

/// A new private temporary file beside `path` (removed when dropped unless persisted).
fn receipt_temp_file(path: &Path) -> Result<tempfile::NamedTempFile> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    tempfile::Builder::new()
        .prefix(".lease-receipt-")
        .tempfile_in(dir)
        .map_err(|err| {
            // The temporary file's random name (which tempfile adds) tells the user nothing.
            let why = err.to_string();
            let why = why.split(" at path ").next().unwrap_or_default().to_owned();
            anyhow::anyhow!(
                "cannot write the receipt {}: its directory {} does not take new files: {why}",
                path.display(),
                dir.display()
            )
        })
}

/// Refuses a receipt path that exists as anything but a regular file (a device, a FIFO, a
/// directory, a symlink): a receipt never replaces one.
fn refuse_non_regular(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_file() => anyhow::bail!(
            "cannot write the receipt {}: it exists and is not a regular file; choose a new file name",
            path.display()
        ),
        _ => Ok(()),
    }
}
