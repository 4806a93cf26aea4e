//! The store: where leases are recorded, behind one interface that every decision uses.
//!
//! Two backends: [`files::Files`] (a private state dir on this machine, the default) and a
//! [`Backend`] behind a trait object ([`etcd::Etcd`], which only the broker opens), with the same
//! guarantees: read a lease by id or by its token's hash, insert one without clobbering,
//! change one atomically with a closure that returns a value, list, remove, and charge a use
//! along a chain of leases in one atomic step. The remote backend is reached through a trait
//! object so that the `lease` binary, which never opens one, does not link its client.

use std::path::Path;
use std::time::SystemTime;

use anyhow::Result;

use crate::record::{Charge, Record};
use crate::token::{LeaseId, TokenHash};

pub mod etcd;
pub mod files;

/// Records larger than this are not read. The largest record lease writes (256 scopes of 128
/// characters, each with the largest budget) is under a third of it
/// (`policy::the_largest_lease_the_limits_allow_is_granted_and_revoked`).
pub const MAX_RECORD_BYTES: u64 = 256 * 1024;

/// A record from its stored bytes (TOML), checked to belong under `id`.
pub fn decode(bytes: &[u8], id: &LeaseId) -> Loaded {
    if bytes.len() as u64 > MAX_RECORD_BYTES {
        return Loaded::Corrupt(format!("record is too large ({} bytes)", bytes.len()));
    }
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Loaded::Corrupt("record is not UTF-8 text".into());
    };
    let record: Record = match toml::from_str(text) {
        Ok(record) => record,
        Err(err) => {
            return Loaded::Corrupt(format!("record does not parse: {}", err.message()));
        }
    };
    if record.id != *id || !record.token_sha256.starts_with(id.as_str()) {
        return Loaded::Corrupt("record does not belong under this id".into());
    }
    Loaded::Found(record)
}

/// What reading one record found.
// Returned once per read and matched at once; boxing the record would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Loaded {
    /// No record with that id.
    Missing,
    /// The record.
    Found(Record),
    /// A file is there but is not a valid record; the text says why.
    Corrupt(String),
}

/// Whether the store may be created when it does not exist yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Open {
    /// Create the state dir (0700) if it is missing: for commands that mint leases.
    CreateIfMissing,
    /// Use it only if it exists; a missing store simply holds no leases.
    ExistingOnly,
}

/// What an update's closure decided: write the changed record, or keep it as it was; either
/// way with a value for the caller.
#[derive(Debug)]
pub enum Change<T> {
    /// The record was changed: write it.
    Write(T),
    /// Leave the record as it is.
    Keep(T),
}

impl Change<bool> {
    /// `Write(true)` if `changed`, else `Keep(false)`: for a closure whose answer is whether it
    /// changed the record.
    pub fn when(changed: bool) -> Change<bool> {
        if changed {
            Change::Write(true)
        } else {
            Change::Keep(false)
        }
    }
}

/// What an update found.
// Returned once per update and matched at once; boxing the record would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Updated<T> {
    /// The record as it now stands, and what the closure returned.
    Found(Record, T),
    /// No record with that id.
    Missing,
    /// A record is there but cannot be read; the text says why.
    Corrupt(String),
}

/// What charging a chain came to.
#[derive(Debug)]
pub enum Charged<E> {
    /// Every check passed and every charge was paid.
    Paid,
    /// A check refused (nothing was paid): what it said.
    Refused(E),
    /// A lease of the chain is no longer on record (nothing was paid).
    Missing(LeaseId),
    /// A lease of the chain cannot be read (nothing was paid).
    Corrupt(LeaseId, String),
}

/// A store elsewhere than this machine's state dir, seen through the same operations as
/// [`Store`], with closures erased so that it is object safe. `update` and `remove_if` may call
/// their closure more than once (a remote store retries when another writer changed the
/// record between its read and its write); the last call is the one that counts.
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// Where the store is, for messages: never holds a secret.
    fn shown(&self) -> &str;
    /// One lease by its id.
    fn load(&self, id: &LeaseId) -> Result<Loaded>;
    /// Records a new lease; `false` if its id is taken.
    fn insert(&self, record: &Record) -> Result<bool>;
    /// Changes one lease atomically; the closure says whether to write.
    fn update(
        &self,
        id: &LeaseId,
        change: &mut dyn FnMut(&mut Record) -> bool,
    ) -> Result<Updated<()>>;
    /// Charges a chain atomically; the closure returns the charge or `None` to refuse.
    fn charge(
        &self,
        chain: &[LeaseId],
        check: &mut dyn FnMut(&Record) -> Option<Charge>,
    ) -> Result<Charged<()>>;
    /// Every readable record, read page by page; the unreadable are passed to `skipped`.
    fn records(&self, skipped: &mut dyn FnMut(&LeaseId, &str)) -> Result<Vec<Record>>;
    /// The ids of every lease on record.
    fn ids(&self) -> Result<Vec<LeaseId>>;
    /// Removes a lease if the closure says so, atomically with the read it is shown.
    fn remove_if(
        &self,
        id: &LeaseId,
        should_remove: &mut dyn FnMut(&Loaded) -> bool,
    ) -> Result<bool>;
    /// The broker stops: lets go of what it holds in the store (bounded, best effort).
    fn stop(&self);
    /// Changes each time the broker's hold on its runs was lost and a new one taken (a store
    /// where runs are held by a session of the broker's).
    fn sessions(&self) -> Option<tokio::sync::watch::Receiver<u64>>;
}

/// The lease store.
#[derive(Debug)]
pub enum Store {
    /// A private state dir on this machine.
    Files(files::Files),
    /// A remote backend; `local` is the broker's own state dir, which keeps its audit trail.
    Remote {
        backend: std::sync::Arc<dyn Backend>,
        local: files::Files,
    },
}

impl Store {
    /// Opens the local store in `dir` (see [`files::Files::open`]).
    pub fn open(dir: &Path, mode: Open) -> Result<Store> {
        Ok(Store::Files(files::Files::open(dir, mode)?))
    }

    /// A remote backend, with the trail kept in the state dir `local`.
    pub fn remote(backend: std::sync::Arc<dyn Backend>, local: &Path) -> Result<Store> {
        let local = files::Files::open(local, Open::CreateIfMissing)?;
        Ok(Store::Remote { backend, local })
    }

    /// The remote backend, if the store is one.
    pub fn backend(&self) -> Option<std::sync::Arc<dyn Backend>> {
        match self {
            Store::Files(_) => None,
            Store::Remote { backend, .. } => Some(std::sync::Arc::clone(backend)),
        }
    }

    /// See [`Backend::sessions`]; `None` for the local store, where nothing is held that way.
    pub fn sessions(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        match self {
            Store::Files(_) => None,
            Store::Remote { backend, .. } => backend.sessions(),
        }
    }

    /// Whether the store is reached over the network (its operations may wait on it, so an
    /// async caller makes them on a thread that may block).
    pub fn is_remote(&self) -> bool {
        matches!(self, Store::Remote { .. })
    }

    /// The state dir (for messages and for `LEASE_STATE_DIR`): the local store's, or the one
    /// where a broker on a remote store keeps its trail.
    pub fn dir(&self) -> &Path {
        match self {
            Store::Files(files) | Store::Remote { local: files, .. } => files.dir(),
        }
    }

    /// Where the records are, for messages: the state dir, or the remote store's address.
    pub fn shown(&self) -> String {
        match self {
            Store::Files(files) => files.dir().display().to_string(),
            Store::Remote { backend, .. } => backend.shown().to_owned(),
        }
    }

    /// The audit trail kept beside the records (a remote store's broker keeps its own).
    pub fn audit(&self) -> &crate::audit::Log {
        match self {
            Store::Files(files) | Store::Remote { local: files, .. } => files.audit(),
        }
    }

    /// Rotates the audit trail past `max_bytes` instead of the default.
    pub fn with_audit_limit(self, max_bytes: u64) -> Store {
        match self {
            Store::Files(files) => Store::Files(files.with_audit_limit(max_bytes)),
            Store::Remote { backend, local } => Store::Remote {
                backend,
                local: local.with_audit_limit(max_bytes),
            },
        }
    }

    /// The lease of a token, found by its hash: `Found` only if the record's full SHA-256 is
    /// the token's (a record filed under the same id for another token is `Missing`).
    pub fn find(&self, hash: &TokenHash) -> Result<Loaded> {
        Ok(match self.load(&hash.id())? {
            Loaded::Found(record) if hash.matches_hex(&record.token_sha256) => {
                Loaded::Found(record)
            }
            Loaded::Found(_) => Loaded::Missing,
            other => other,
        })
    }

    /// One lease by its id.
    pub fn load(&self, id: &LeaseId) -> Result<Loaded> {
        match self {
            Store::Files(files) => files.load(id),
            Store::Remote { backend, .. } => backend.load(id),
        }
    }

    /// Records a new lease. Returns `false`, writing nothing, if its id is already taken (the
    /// caller mints another token).
    pub fn insert(&self, record: &Record) -> Result<bool> {
        match self {
            Store::Files(files) => files.insert(record),
            Store::Remote { backend, .. } => backend.insert(record),
        }
    }

    /// Changes one lease atomically: `change` gets the record as it stands and says whether to
    /// write it back, with a value that is handed back beside the record. A remote store may
    /// call `change` again, on a fresh read, when another writer got there first.
    pub fn update<T>(
        &self,
        id: &LeaseId,
        mut change: impl FnMut(&mut Record) -> Change<T>,
    ) -> Result<Updated<T>> {
        match self {
            Store::Files(files) => files.update(id, change),
            Store::Remote { backend, .. } => {
                let mut value = None;
                let updated = backend.update(id, &mut |record| match change(record) {
                    Change::Write(v) => {
                        value = Some(v);
                        true
                    }
                    Change::Keep(v) => {
                        value = Some(v);
                        false
                    }
                })?;
                Ok(match (updated, value) {
                    (Updated::Found(record, ()), Some(value)) => Updated::Found(record, value),
                    (Updated::Found(..), None) => {
                        anyhow::bail!("the store changed lease {id} without asking")
                    }
                    (Updated::Missing, _) => Updated::Missing,
                    (Updated::Corrupt(why), _) => Updated::Corrupt(why),
                })
            }
        }
    }

    /// Charges one verify along `chain` (a lease first, then its ancestors) in one atomic
    /// step: `check` gets each record as it stands and returns what to charge it, or refuses;
    /// only if every check passes is every charge paid. Concurrent charges never pay more than
    /// a budget holds.
    pub fn charge<E>(
        &self,
        chain: &[LeaseId],
        check: impl FnMut(&Record) -> std::result::Result<Charge, E>,
    ) -> Result<Charged<E>> {
        match self {
            Store::Files(files) => files.charge(chain, check),
            Store::Remote { backend, .. } => {
                let mut check = check;
                let mut refused = None;
                let charged = backend.charge(chain, &mut |record| match check(record) {
                    Ok(charge) => Some(charge),
                    Err(why) => {
                        refused = Some(why);
                        None
                    }
                })?;
                Ok(match (charged, refused) {
                    (Charged::Refused(()), Some(why)) => Charged::Refused(why),
                    (Charged::Refused(()), None) => {
                        anyhow::bail!("the store refused a charge without a reason")
                    }
                    (Charged::Paid, _) => Charged::Paid,
                    (Charged::Missing(id), _) => Charged::Missing(id),
                    (Charged::Corrupt(id, why), _) => Charged::Corrupt(id, why),
                })
            }
        }
    }

    /// The ids of every lease on record, in no particular order.
    pub fn ids(&self) -> Result<Vec<LeaseId>> {
        match self {
            Store::Files(files) => files.ids(),
            Store::Remote { backend, .. } => backend.ids(),
        }
    }

    /// Every readable record, in no particular order; each record that cannot be read as one
    /// is passed to `skipped` with why, and left out.
    pub fn records(&self, mut skipped: impl FnMut(&LeaseId, &str)) -> Result<Vec<Record>> {
        if let Store::Remote { backend, .. } = self {
            return backend.records(&mut skipped);
        }
        let mut records = Vec::new();
        for id in self.ids()? {
            match self.load(&id)? {
                Loaded::Found(record) => records.push(record),
                Loaded::Missing => {}
                Loaded::Corrupt(why) => skipped(&id, &why),
            }
        }
        Ok(records)
    }

    /// Removes a lease if `should_remove` says so, atomically with the read it is shown.
    pub fn remove_if(
        &self,
        id: &LeaseId,
        mut should_remove: impl FnMut(&Loaded) -> bool,
    ) -> Result<bool> {
        match self {
            Store::Files(files) => files.remove_if(id, should_remove),
            Store::Remote { backend, .. } => backend.remove_if(id, &mut should_remove),
        }
    }

    /// Gets the files of the next writes ready (see [`files::Files::prepare`]); a remote store
    /// has nothing to prepare.
    pub fn prepare(&self) {
        if let Store::Files(files) = self {
            files.prepare();
        }
    }

    /// Removes what writers that died mid-write left behind; returns how many.
    pub fn remove_stale_temp_files(&self, now: SystemTime) -> Result<usize> {
        match self {
            Store::Files(files) | Store::Remote { local: files, .. } => {
                files.remove_stale_temp_files(now)
            }
        }
    }
}
