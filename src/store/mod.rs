//! The store: where leases are recorded, behind one interface that every decision uses.
//!
//! Today there is one backend, [`files::Files`] (a private state dir on this machine); a remote
//! store or a broker client is another variant of [`Store`], implementing the same operations
//! with the same guarantees: read a lease by id or by its token's hash, insert one without
//! clobbering, change one atomically with a closure that returns a value, list, remove, and
//! charge a use along a chain of leases in one atomic step.

use std::path::Path;
use std::time::SystemTime;

use anyhow::Result;

use crate::record::{Charge, Record};
use crate::token::{LeaseId, TokenHash};

pub mod files;

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

/// The lease store.
#[derive(Debug)]
pub enum Store {
    /// A private state dir on this machine.
    Files(files::Files),
}

impl Store {
    /// Opens the local store in `dir` (see [`files::Files::open`]).
    pub fn open(dir: &Path, mode: Open) -> Result<Store> {
        Ok(Store::Files(files::Files::open(dir, mode)?))
    }

    /// Where the store is, for messages and for `LEASE_STATE_DIR`.
    pub fn dir(&self) -> &Path {
        match self {
            Store::Files(files) => files.dir(),
        }
    }

    /// The audit trail kept beside the records.
    pub fn audit(&self) -> &crate::audit::Log {
        match self {
            Store::Files(files) => files.audit(),
        }
    }

    /// Rotates the audit trail past `max_bytes` instead of the default.
    pub fn with_audit_limit(self, max_bytes: u64) -> Store {
        match self {
            Store::Files(files) => Store::Files(files.with_audit_limit(max_bytes)),
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
        }
    }

    /// Records a new lease. Returns `false`, writing nothing, if its id is already taken (the
    /// caller mints another token).
    pub fn insert(&self, record: &Record) -> Result<bool> {
        match self {
            Store::Files(files) => files.insert(record),
        }
    }

    /// Changes one lease atomically: `change` gets the record as it stands and says whether to
    /// write it back, with a value that is handed back beside the record.
    pub fn update<T>(
        &self,
        id: &LeaseId,
        change: impl FnOnce(&mut Record) -> Change<T>,
    ) -> Result<Updated<T>> {
        match self {
            Store::Files(files) => files.update(id, change),
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
        }
    }

    /// The ids of every lease on record, in no particular order.
    pub fn ids(&self) -> Result<Vec<LeaseId>> {
        match self {
            Store::Files(files) => files.ids(),
        }
    }

    /// Every readable record, in no particular order; each record that cannot be read as one
    /// is passed to `skipped` with why, and left out.
    pub fn records(&self, mut skipped: impl FnMut(&LeaseId, &str)) -> Result<Vec<Record>> {
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
        should_remove: impl FnOnce(&Loaded) -> bool,
    ) -> Result<bool> {
        match self {
            Store::Files(files) => files.remove_if(id, should_remove),
        }
    }

    /// Removes what writers that died mid-write left behind; returns how many.
    pub fn remove_stale_temp_files(&self, now: SystemTime) -> Result<usize> {
        match self {
            Store::Files(files) => files.remove_stale_temp_files(now),
        }
    }
}
