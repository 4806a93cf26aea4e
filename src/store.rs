//! The state dir: one TOML record per lease, private permissions, atomic writes.
//!
//! Layout: `<state dir>/leases/<id>.toml`, where the id is derived from the token's hash, so
//! `verify` reads exactly one file whatever the number of leases. Every write goes to a
//! temporary file in the same directory and is renamed into place, so a reader sees either the
//! old record or the new one, never a torn one. Updates lock the one record they change (and
//! check, after locking, that the file they locked is still the one in place), so concurrent
//! runs never serialise on a global lock.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};

use crate::record::Record;
use crate::token::LeaseId;

/// Records larger than this are not read: no real record comes near it.
const MAX_RECORD_BYTES: u64 = 64 * 1024;
/// Prefix of the temporary files that writes go through.
const TEMP_PREFIX: &str = ".tmp-";
/// How long lease waits for a record's lock before giving up: a lock is held for a read and a
/// write, so only a stuck or hostile process holds one longer.
const LOCK_PATIENCE: Duration = Duration::from_secs(2);
/// A temporary file older than this belongs to a writer that died (even if its pid has been
/// reused since); `gc` removes it.
const STALE_TEMP_AGE: Duration = Duration::from_secs(60);

/// The lease store in one state dir.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
    leases: PathBuf,
    audit: crate::audit::Log,
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

impl Store {
    /// Opens the store in `dir`, refusing a directory that is not private to this user.
    pub fn open(dir: &Path, mode: Open) -> Result<Store> {
        let dir = std::path::absolute(dir)
            .with_context(|| format!("resolving state dir {}", dir.display()))?;
        let leases = dir.join("leases");
        let audit = crate::audit::Log::new(&dir, crate::audit::DEFAULT_MAX_BYTES);
        let store = Store { dir, leases, audit };
        let exists = match fs::metadata(&store.dir) {
            Ok(_) => true,
            Err(err) if err.kind() == io::ErrorKind::NotFound => false,
            Err(err) => {
                return Err(err)
                    .with_context(|| format!("reading state dir {}", store.dir.display()));
            }
        };
        if exists || mode == Open::CreateIfMissing {
            ensure_private_dir(&store.dir, "state dir", mode)?;
            if mode == Open::CreateIfMissing || store.leases.exists() {
                ensure_private_dir(&store.leases, "lease dir", Open::CreateIfMissing)?;
            }
        }
        Ok(store)
    }

    /// The absolute path of the state dir.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The audit trail kept beside the records.
    pub fn audit(&self) -> &crate::audit::Log {
        &self.audit
    }

    /// Rotates the audit trail past `max_bytes` instead of the default.
    pub fn with_audit_limit(mut self, max_bytes: u64) -> Store {
        self.audit = crate::audit::Log::new(&self.dir, max_bytes);
        self
    }

    fn path(&self, id: &LeaseId) -> PathBuf {
        self.leases.join(format!("{id}.toml"))
    }

    /// Writes a new record. Returns `false`, writing nothing, if a record with the same id
    /// already exists (the caller mints another token).
    pub fn insert(&self, record: &Record) -> Result<bool> {
        let id = record.lease_id().context("record has an invalid id")?;
        let text = toml::to_string(record).context("encoding the lease record")?;
        let temp = self.write_temp(&text)?;
        match temp.persist_noclobber(self.path(&id)) {
            Ok(_) => Ok(true),
            Err(err) if err.error.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(err) => Err(err.error)
                .with_context(|| format!("recording the lease in {}", self.leases.display())),
        }
    }

    /// Reads one record. Symlinks are not followed; anything that is not a small regular file
    /// holding a valid record for this id is `Corrupt`.
    pub fn load(&self, id: &LeaseId) -> Result<Loaded> {
        let path = self.path(id);
        let mut file = match open_nofollow(&path) {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Loaded::Missing),
            Err(err) if is_symlink_error(&err) => {
                return Ok(Loaded::Corrupt("record is a symlink".into()));
            }
            Err(err) => {
                return Err(err).with_context(|| format!("reading {}", path.display()));
            }
        };
        read_record(&mut file, id, &path)
    }

    /// Changes one record under its lock: `change` gets the current record and returns whether
    /// it changed it; only then is the record rewritten. Returns the record as it now stands,
    /// or `Loaded::Missing`/`Loaded::Corrupt` (unchanged) when there is no valid record.
    pub fn update(&self, id: &LeaseId, change: impl FnOnce(&mut Record) -> bool) -> Result<Loaded> {
        let Some(mut locked) = self.lock(id)? else {
            return Ok(Loaded::Missing);
        };
        let mut record = match locked.read()? {
            Loaded::Found(record) => record,
            other => return Ok(other),
        };
        if change(&mut record) {
            locked.write(&record)?;
        }
        Ok(Loaded::Found(record))
    }

    /// Locks one record for a read-modify-write, or `None` if there is no such record. The lock
    /// is held until the returned value is dropped. Whoever locks several records locks them
    /// from a lease towards its root, so that two lockers never wait for each other.
    pub fn lock(&self, id: &LeaseId) -> Result<Option<Locked<'_>>> {
        let path = self.path(id);
        Ok(self.lock_path(&path)?.map(|file| Locked {
            store: self,
            file,
            id: id.clone(),
            path,
        }))
    }

    /// Removes a record if `should_remove` says so, under the record's lock.
    pub fn remove_if(
        &self,
        id: &LeaseId,
        should_remove: impl FnOnce(&Loaded) -> bool,
    ) -> Result<bool> {
        let Some(mut locked) = self.lock(id)? else {
            return Ok(false);
        };
        let loaded = locked.read()?;
        let path = locked.path.clone();
        if !should_remove(&loaded) {
            return Ok(false);
        }
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(err) => Err(err).with_context(|| format!("removing {}", path.display())),
        }
    }

    /// The ids of all records in the store, in no particular order. Files that are not
    /// records (temporary files among them) are left out.
    pub fn ids(&self) -> Result<Vec<LeaseId>> {
        let entries = match fs::read_dir(&self.leases) {
            Ok(entries) => entries,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => {
                return Err(err).with_context(|| format!("listing {}", self.leases.display()));
            }
        };
        let mut ids = Vec::new();
        for entry in entries {
            let entry = entry.with_context(|| format!("listing {}", self.leases.display()))?;
            let name = entry.file_name();
            let id = name
                .to_str()
                .and_then(|n| n.strip_suffix(".toml"))
                .and_then(LeaseId::parse);
            ids.extend(id);
        }
        Ok(ids)
    }

    /// Removes temporary files left by writers that died mid-write: those whose writer (named
    /// by the pid in the file name) is gone, or that are older than a minute. Returns how many.
    pub fn remove_stale_temp_files(&self, now: SystemTime) -> Result<usize> {
        let entries = match fs::read_dir(&self.leases) {
            Ok(entries) => entries,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(err) => {
                return Err(err).with_context(|| format!("listing {}", self.leases.display()));
            }
        };
        let mut removed = 0;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(TEMP_PREFIX)) else {
                continue;
            };
            let writer_gone = rest
                .split('-')
                .next()
                .and_then(|pid| pid.parse::<u32>().ok())
                .is_none_or(|pid| !crate::owner::is_running(pid));
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|modified| {
                    now.duration_since(modified)
                        .is_ok_and(|age| age > STALE_TEMP_AGE)
                });
            if (writer_gone || old) && fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn write_temp(&self, text: &str) -> Result<tempfile::NamedTempFile> {
        // The writer's pid is in the name, so gc can tell a write in progress from one whose
        // writer died.
        let prefix = format!("{TEMP_PREFIX}{}-", std::process::id());
        let mut temp = tempfile::Builder::new()
            .prefix(&prefix)
            .permissions(fs::Permissions::from_mode(0o600))
            .tempfile_in(&self.leases)
            .with_context(|| format!("writing a record in {}", self.leases.display()))?;
        temp.write_all(text.as_bytes())
            .with_context(|| format!("writing a record in {}", self.leases.display()))?;
        Ok(temp)
    }

    /// Opens and locks the record at `path`, making sure the locked file is still the one in
    /// place (a concurrent update may have renamed a new one over it while we waited).
    fn lock_path(&self, path: &Path) -> Result<Option<File>> {
        loop {
            let file = match open_nofollow(path) {
                Ok(file) => file,
                Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(err) => return Err(err).with_context(|| format!("opening {}", path.display())),
            };
            lock_within(&file, LOCK_PATIENCE)
                .with_context(|| format!("locking {}", path.display()))?;
            let locked = file
                .metadata()
                .with_context(|| format!("reading {}", path.display()))?;
            match fs::symlink_metadata(path) {
                Ok(current) if current.ino() == locked.ino() && current.dev() == locked.dev() => {
                    return Ok(Some(file));
                }
                Ok(_) => continue,
                Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
            }
        }
    }
}

/// A record locked by [`Store::lock`].
#[derive(Debug)]
pub struct Locked<'a> {
    store: &'a Store,
    file: File,
    id: LeaseId,
    path: PathBuf,
}

impl Locked<'_> {
    /// The record as it stands under the lock.
    pub fn read(&mut self) -> Result<Loaded> {
        use std::io::Seek;
        // A FIFO or a device cannot be rewound; it is no record either way.
        if !self.file.metadata().is_ok_and(|m| m.is_file()) {
            return Ok(Loaded::Corrupt("record is not a regular file".into()));
        }
        self.file
            .rewind()
            .with_context(|| format!("reading {}", self.path.display()))?;
        read_record(&mut self.file, &self.id, &self.path)
    }

    /// Replaces the record (atomically); the lock stays held on the old file, which is what
    /// concurrent lockers wait on and then find replaced.
    pub fn write(&mut self, record: &Record) -> Result<()> {
        let text = toml::to_string(record).context("encoding the lease record")?;
        self.store
            .write_temp(&text)?
            .persist(&self.path)
            .map_err(|err| err.error)
            .with_context(|| format!("updating {}", self.path.display()))?;
        Ok(())
    }
}

/// Takes `file`'s exclusive lock, or fails once `patience` has passed. `flock` has no timeout,
/// so the lock is tried again after pauses that grow from half a millisecond to 20 ms.
fn lock_within(file: &File, patience: Duration) -> io::Result<()> {
    let deadline = Instant::now() + patience;
    let mut pause = Duration::from_micros(500);
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(()),
            Err(fs::TryLockError::Error(err)) => return Err(err),
            Err(fs::TryLockError::WouldBlock) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(io::Error::new(
                        io::ErrorKind::WouldBlock,
                        format!(
                            "another process has held it locked for {} s",
                            patience.as_secs()
                        ),
                    ));
                }
                std::thread::sleep(pause.min(left));
                pause = (pause * 2).min(Duration::from_millis(20));
            }
        }
    }
}

fn open_nofollow(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
}

fn is_symlink_error(err: &io::Error) -> bool {
    err.raw_os_error() == Some(nix::libc::ELOOP)
}

/// Reads and checks a record from an open file. I/O errors are errors; anything wrong with
/// the content is `Corrupt`, so callers fail closed without stopping.
fn read_record(file: &mut File, id: &LeaseId, path: &Path) -> Result<Loaded> {
    let meta = file
        .metadata()
        .with_context(|| format!("reading {}", path.display()))?;
    if !meta.is_file() {
        return Ok(Loaded::Corrupt("record is not a regular file".into()));
    }
    if meta.len() > MAX_RECORD_BYTES {
        return Ok(Loaded::Corrupt(format!(
            "record is too large ({} bytes)",
            meta.len()
        )));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(MAX_RECORD_BYTES + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {}", path.display()))?;
    let Ok(text) = std::str::from_utf8(&bytes) else {
        return Ok(Loaded::Corrupt("record is not UTF-8 text".into()));
    };
    let record: Record = match toml::from_str(text) {
        Ok(record) => record,
        Err(err) => {
            return Ok(Loaded::Corrupt(format!(
                "record does not parse: {}",
                err.message()
            )));
        }
    };
    if record.id != id.as_str() || !record.token_sha256.starts_with(id.as_str()) {
        return Ok(Loaded::Corrupt(
            "record does not belong under this id".into(),
        ));
    }
    Ok(Loaded::Found(record))
}

/// Creates `path` as a 0700 directory if needed and refuses one that another user owns or
/// that group or others can write: such a directory would let someone else plant records.
fn ensure_private_dir(path: &Path, what: &str, mode: Open) -> Result<()> {
    if mode == Open::CreateIfMissing && fs::symlink_metadata(path).is_err() {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .with_context(|| format!("creating {what} {}", path.display()))?;
    }
    let meta = fs::metadata(path).with_context(|| format!("reading {what} {}", path.display()))?;
    let shown = path.display();
    if !meta.is_dir() {
        bail!(
            "{what} {shown} is not a directory: point --state-dir or LEASE_STATE_DIR at a directory"
        );
    }
    let uid = nix::unistd::geteuid().as_raw();
    if meta.uid() != uid {
        bail!(
            "refusing {what} {shown}: it is owned by uid {}, not by you (uid {uid}): use a directory of your own with --state-dir or LEASE_STATE_DIR",
            meta.uid()
        );
    }
    let perms = meta.mode() & 0o777;
    if perms & 0o022 != 0 {
        bail!(
            "refusing {what} {shown}: it is writable by group or others (mode {perms:o}): run 'chmod 700 {shown}'"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use proptest::prelude::*;

    use super::*;
    use crate::scope::Scope;
    use crate::token::Token;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(&dir.path().join("state"), Open::CreateIfMissing).expect("store");
        (dir, store)
    }

    fn record(token: &Token) -> Record {
        let issued = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let scope = vec![Scope::parse("read:x").expect("valid")];
        Record::new(
            token.hash(),
            scope,
            issued,
            issued + Duration::from_secs(60),
            None,
        )
    }

    #[test]
    fn insert_load_update_and_remove() {
        let (_dir, store) = store();
        let token = Token::mint().expect("mint");
        let id = token.hash().id();
        assert!(store.insert(&record(&token)).expect("insert"));
        assert!(
            !store.insert(&record(&token)).expect("second insert"),
            "no clobbering"
        );
        let now = SystemTime::now();
        assert!(
            matches!(store.update(&id, |r| r.revoke(now)).expect("update"), Loaded::Found(r) if r.state == crate::record::State::Revoked)
        );
        assert!(
            matches!(store.load(&id).expect("load"), Loaded::Found(r) if r.revoked_at.is_some())
        );
        assert_eq!(store.ids().expect("ids"), vec![id.clone()]);
        assert!(store.remove_if(&id, |_| true).expect("remove"));
        assert!(matches!(store.load(&id).expect("load"), Loaded::Missing));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// The record parser never panics and never errors on content: whatever bytes sit in a
        /// record file, the answer is a valid record for that id or `Corrupt`.
        #[test]
        fn any_bytes_in_a_record_file_load_as_found_or_corrupt(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let (_dir, store) = store();
            let token = Token::mint().expect("mint");
            let id = token.hash().id();
            fs::write(store.path(&id), &bytes).expect("write");
            match store.load(&id).expect("no I/O error") {
                Loaded::Found(record) => prop_assert_eq!(record.id, id.as_str()),
                Loaded::Corrupt(_) => {}
                Loaded::Missing => prop_assert!(false, "the file is there"),
            }
        }

        /// Mutations of a real record: any edit either still parses into a record for this id
        /// or fails closed.
        #[test]
        fn edited_records_load_as_found_or_corrupt(position in 0usize..400, byte in any::<u8>(), cut in 0usize..400) {
            let (_dir, store) = store();
            let token = Token::mint().expect("mint");
            let id = token.hash().id();
            let mut text = toml::to_string(&record(&token)).expect("encode").into_bytes();
            if !text.is_empty() {
                let at = position % text.len();
                text[at] = byte;
                text.truncate(cut.max(at));
            }
            fs::write(store.path(&id), &text).expect("write");
            prop_assert!(!matches!(store.load(&id).expect("no I/O error"), Loaded::Missing));
        }
    }
}
