//! The local backend of the store: the state dir, one TOML record per lease, private permissions, atomic writes.
//!
//! Layout: `<state dir>/leases/<id>.toml`, where the id is derived from the token's hash, so
//! `verify` reads exactly one file whatever the number of leases. Every write goes to a
//! temporary file in the same directory and is renamed into place (an update is exchanged with
//! the old record, which is then removed), so a reader sees either the old record or the new
//! one, never a torn one. The file a write fills is, where one is ready, a file created
//! beforehand ([`Files::prepare`]): creating a file is most of what a write costs on ext4.
//! Updates lock the one record they change (and
//! check, after locking, that the file they locked is still the one in place), so concurrent
//! runs never serialise on a global lock.
//!
//! The state dir is opened once, after every directory above it was checked (OpenSSH's
//! StrictModes rules), and checked through that handle; the leases dir is opened relative to it,
//! and every record operation after that works relative to the leases dir's handle (`openat`,
//! `renameat`, `unlinkat`, `fstatat`). Whoever renames directories on the path afterwards changes
//! nothing for an open store.

use crate::owner::OpenToOthers;
use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, RenameFlags};
use nix::sys::stat::Mode;

use super::{Change, Charged, Loaded, Open, Updated};
use crate::record::{Charge, Record};
use crate::token::LeaseId;

use super::MAX_RECORD_BYTES;
/// Prefix of the temporary files that writes go through.
const TEMP_PREFIX: &str = ".tmp-";
/// The empty file that [`Files::prepare`] leaves in the leases dir for the next process that
/// writes: it takes the file by renaming it to a temporary name of its own (so only one can),
/// and fills it instead of creating one.
const SPARE: &str = ".spare";
/// The space [`Files::prepare`] reserves in the file of a run's revoke: a page, more than any
/// record of a few scopes needs.
const RESERVED_FOR_THE_REVOKE: i64 = 4096;
/// The directory of the records in the state dir.
const LEASES: &str = "leases";
/// How long lease waits for a record's lock before giving up: a lock is held for a read and a
/// write, so only a stuck or hostile process holds one longer.
const LOCK_PATIENCE: Duration = Duration::from_secs(2);
/// A temporary file older than this belongs to a writer that died (even if its pid has been
/// reused since); `gc` removes it.
const STALE_TEMP_AGE: Duration = Duration::from_secs(60);
/// How many symbolic links resolving the state dir may pass through (the kernel's own limit).
const MAX_SYMLINKS: usize = 40;

/// The lease store in one state dir on this machine.
#[derive(Debug)]
pub struct Files {
    dir: PathBuf,
    /// The state dir, opened once and checked; `None` if it does not exist (and was not to be
    /// created).
    state: Option<Arc<OwnedFd>>,
    /// `leases` in the state dir, opened relative to `state` and checked; `None` if missing.
    leases: Option<OwnedFd>,
    audit: crate::audit::Log,
    /// A temporary file created by [`Files::prepare`] for this process's next write. Taken
    /// with `try_lock` only: a write never waits for it, it creates a file instead.
    prepared: std::sync::Mutex<Option<Blank>>,
    /// The record this process inserted last, as written, decoded by [`Files::prepare`]: a
    /// read of the same bytes under the same id (a run's revoke, when nothing changed the
    /// record while its command ran) takes it instead of decoding them again.
    inserted: std::sync::Mutex<Option<Inserted>>,
}

/// See [`Files::inserted`].
#[derive(Debug)]
struct Inserted {
    id: LeaseId,
    text: String,
    decoded: Option<Record>,
}

/// An empty private file in the leases dir, under a temporary name of this process's.
#[derive(Debug)]
struct Blank {
    name: String,
    file: File,
    /// For a file made ahead (prepared, or the spare): its device and inode, as checked. Its
    /// name was in the leases dir for a while, so before it is renamed into place the name is
    /// checked to still lead to this file.
    ahead: Option<(u64, u64)>,
    /// How far the file reached when checked: the bytes it held (none, for a file just
    /// created), or, for the revoke's file on a file system of blocks smaller than the space
    /// reserved in it, that space. A record shorter than this is cut to its length once
    /// written.
    held: u64,
}

impl Blank {
    /// Closes the file and removes its name, whatever the name leads to now (not a directory).
    fn discard(self, leases: &OwnedFd) {
        let _ = nix::unistd::unlinkat(
            leases,
            self.name.as_str(),
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        );
    }
}

impl Files {
    /// Opens the store in `dir`, refusing a directory that is not private to this user or that
    /// lies under a directory someone else could change (see [`resolve`]). The state dir and
    /// its `leases` dir are opened once here; everything after works relative to those handles,
    /// so what was checked is what is used, whatever happens to the paths meanwhile.
    pub fn open(dir: &Path, mode: Open) -> Result<Files> {
        let dir = std::path::absolute(dir)
            .with_context(|| format!("resolving state dir {}", dir.display()))?;
        let mut store = Files {
            audit: crate::audit::Log::new(&dir, None, crate::audit::DEFAULT_MAX_BYTES),
            dir,
            state: None,
            leases: None,
            prepared: std::sync::Mutex::new(None),
            inserted: std::sync::Mutex::new(None),
        };
        let Some(real) = resolve(&store.dir, mode)? else {
            return Ok(store);
        };
        let Some(state) = open_private_dir(None, &real, &store.dir, "state dir", mode)? else {
            return Ok(store);
        };
        let state = Arc::new(state);
        let leases_shown = store.dir.join(LEASES);
        store.leases = open_private_dir(
            Some(&state),
            Path::new(LEASES),
            &leases_shown,
            "lease dir",
            mode,
        )?;
        store.audit = crate::audit::Log::new(
            &store.dir,
            Some(state.clone()),
            crate::audit::DEFAULT_MAX_BYTES,
        );
        store.state = Some(state);
        Ok(store)
    }

    /// The absolute path of the state dir, as it was given (for messages and for
    /// `LEASE_STATE_DIR`); the store itself is used through the handle opened by [`Files::open`].
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The audit trail kept beside the records.
    pub fn audit(&self) -> &crate::audit::Log {
        &self.audit
    }

    /// Rotates the audit trail past `max_bytes` instead of the default.
    pub fn with_audit_limit(mut self, max_bytes: u64) -> Files {
        self.audit = crate::audit::Log::new(&self.dir, self.state.clone(), max_bytes);
        self
    }

    /// The leases dir, or an error saying it is missing (only a store opened with
    /// [`Open::ExistingOnly`] can lack it, and such a store is only read).
    fn leases(&self) -> Result<&OwnedFd> {
        self.leases.as_ref().with_context(|| {
            format!(
                "writing a record in {}: the lease dir does not exist",
                self.leases_shown().display()
            )
        })
    }

    fn leases_shown(&self) -> PathBuf {
        self.dir.join(LEASES)
    }

    /// The path of a record file in messages (the file itself is always reached through the
    /// leases dir's handle).
    fn shown(&self, name: &str) -> PathBuf {
        self.leases_shown().join(name)
    }

    /// Writes a new record. Returns `false`, writing nothing, if a record with the same id
    /// already exists (the caller mints another token).
    pub fn insert(&self, record: &Record) -> Result<bool> {
        let id = &record.id;
        let text = toml::to_string(record).context("encoding the lease record")?;
        let leases = self.leases()?;
        let name = record_name(id);
        let placed = self.placed(&text, |temp| {
            match nix::fcntl::renameat2(
                leases,
                temp.name.as_str(),
                leases,
                name.as_str(),
                RenameFlags::RENAME_NOREPLACE,
            ) {
                Ok(()) => {
                    temp.renamed();
                    Ok(())
                }
                // A file system without RENAME_NOREPLACE: a hard link does not clobber either
                // (the temporary name is then removed on drop).
                Err(Errno::EINVAL | Errno::ENOSYS) => nix::unistd::linkat(
                    leases,
                    temp.name.as_str(),
                    leases,
                    name.as_str(),
                    AtFlags::empty(),
                ),
                failed => failed,
            }
        })?;
        match placed {
            Ok(()) => {
                if let Ok(mut inserted) = self.inserted.try_lock() {
                    *inserted = Some(Inserted {
                        id: id.clone(),
                        text,
                        decoded: None,
                    });
                }
                Ok(true)
            }
            Err(Errno::EEXIST) => Ok(false),
            Err(err) => Err(io::Error::from(err)).with_context(|| {
                format!("recording the lease in {}", self.leases_shown().display())
            }),
        }
    }

    /// Reads one record. Symlinks are not followed; anything that is not a small regular file
    /// of the user's, private to them, holding a valid record for this id is `Corrupt`.
    pub fn load(&self, id: &LeaseId) -> Result<Loaded> {
        let Some(leases) = &self.leases else {
            return Ok(Loaded::Missing);
        };
        let name = record_name(id);
        let mut file = match open_record(leases, &name) {
            Ok(file) => file,
            Err(Errno::ENOENT) => return Ok(Loaded::Missing),
            Err(Errno::ELOOP) => return Ok(Loaded::Corrupt("record is a symlink".into())),
            Err(err) => {
                return Err(io::Error::from(err))
                    .with_context(|| format!("reading {}", self.shown(&name).display()));
            }
        };
        read_record(&mut file, &self.shown(&name), |bytes| {
            self.decode(bytes, id)
        })
    }

    /// A record's bytes, read under the name of `id`, as a record: the one decoded ahead if
    /// they are the bytes this process inserted under that id, else decoded now.
    fn decode(&self, bytes: &[u8], id: &LeaseId) -> Loaded {
        if let Ok(inserted) = self.inserted.try_lock()
            && let Some(Inserted {
                id: inserted_id,
                text,
                decoded: Some(record),
            }) = inserted.as_ref()
            && inserted_id == id
            && text.as_bytes() == bytes
        {
            return Loaded::Found(record.clone());
        }
        super::decode(bytes, id)
    }

    /// See [`super::Store::update`]: under the record's lock.
    pub fn update<T>(
        &self,
        id: &LeaseId,
        change: impl FnOnce(&mut Record) -> Change<T>,
    ) -> Result<Updated<T>> {
        let Some(mut locked) = self.lock(id)? else {
            return Ok(Updated::Missing);
        };
        let mut record = match locked.read()? {
            Loaded::Found(record) => record,
            Loaded::Missing => return Ok(Updated::Missing),
            Loaded::Corrupt(why) => return Ok(Updated::Corrupt(why)),
        };
        let value = match change(&mut record) {
            Change::Write(value) => {
                locked.write(&record)?;
                value
            }
            Change::Keep(value) => value,
        };
        Ok(Updated::Found(record, value))
    }

    /// See [`super::Store::charge`]: every record is locked, from the lease towards its root
    /// (the order every locker keeps, so that two never wait for each other), read under its
    /// lock and checked; only if every check passes is every charge paid.
    pub fn charge<E>(
        &self,
        chain: &[LeaseId],
        mut check: impl FnMut(&Record) -> std::result::Result<Charge, E>,
    ) -> Result<Charged<E>> {
        let mut locked = Vec::with_capacity(chain.len());
        for id in chain {
            let Some(mut lock) = self.lock(id)? else {
                return Ok(Charged::Missing(id.clone()));
            };
            let current = match lock.read()? {
                Loaded::Found(current) => current,
                Loaded::Missing => return Ok(Charged::Missing(id.clone())),
                Loaded::Corrupt(why) => return Ok(Charged::Corrupt(id.clone(), why)),
            };
            match check(&current) {
                Ok(charge) => locked.push((lock, current, charge)),
                Err(refused) => return Ok(Charged::Refused(refused)),
            }
        }
        // Debug builds only: lets the test suite hold two verifies here at once, to prove that
        // budgets are charged under the locks, on the records read under them.
        #[cfg(debug_assertions)]
        debug_charge_barrier();
        for (lock, record, charge) in &mut locked {
            record.spend(charge);
            lock.write(record)?;
        }
        Ok(Charged::Paid)
    }

    /// Locks one record for a read-modify-write, or `None` if there is no such record. The lock
    /// is held until the returned value is dropped. Whoever locks several records locks them
    /// from a lease towards its root, so that two lockers never wait for each other.
    fn lock(&self, id: &LeaseId) -> Result<Option<Locked<'_>>> {
        let Some(leases) = &self.leases else {
            return Ok(None);
        };
        let name = record_name(id);
        Ok(self.lock_record(leases, &name)?.map(|file| Locked {
            store: self,
            file,
            id: id.clone(),
            name,
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
        if !should_remove(&loaded) {
            return Ok(false);
        }
        let leases = self.leases()?;
        match nix::unistd::unlinkat(
            leases,
            locked.name.as_str(),
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        ) {
            Ok(()) => Ok(true),
            Err(Errno::ENOENT) => Ok(false),
            Err(err) => Err(io::Error::from(err))
                .with_context(|| format!("removing {}", self.shown(&locked.name).display())),
        }
    }

    /// The ids of all records in the store, in no particular order. Files that are not
    /// records (temporary files among them) are left out.
    pub fn ids(&self) -> Result<Vec<LeaseId>> {
        let names = self.names()?;
        Ok(names
            .iter()
            .filter_map(|n| n.to_str()?.strip_suffix(".toml").and_then(LeaseId::parse))
            .collect())
    }

    /// Removes temporary files left by writers that died mid-write: those whose writer (named
    /// by the pid in the file name) is gone, or that are older than a minute. Returns how many.
    pub fn remove_stale_temp_files(&self, now: SystemTime) -> Result<usize> {
        let Some(leases) = &self.leases else {
            return Ok(0);
        };
        let mut removed = 0;
        for name in self.names()? {
            let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(TEMP_PREFIX)) else {
                continue;
            };
            let writer_gone = rest
                .split('-')
                .next()
                .and_then(|pid| pid.parse::<u32>().ok())
                .is_none_or(|pid| !crate::owner::is_running(pid));
            let old =
                nix::sys::stat::fstatat(leases, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
                    .ok()
                    .and_then(|st| u64::try_from(st.st_mtime).ok())
                    .map(|secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
                    .is_some_and(|modified| {
                        now.duration_since(modified)
                            .is_ok_and(|age| age > STALE_TEMP_AGE)
                    });
            // A directory under a temporary name (planted as the spare) goes too, if empty.
            let gone = || {
                let remove = |how| nix::unistd::unlinkat(leases, name.as_os_str(), how);
                match remove(nix::unistd::UnlinkatFlags::NoRemoveDir) {
                    Err(Errno::EISDIR | Errno::EPERM) => {
                        remove(nix::unistd::UnlinkatFlags::RemoveDir).is_ok()
                    }
                    removed => removed.is_ok(),
                }
            };
            if (writer_gone || old) && gone() {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// The names in the leases dir (none if it is missing), read through its handle.
    fn names(&self) -> Result<Vec<OsString>> {
        use std::os::unix::ffi::OsStrExt;
        let Some(leases) = &self.leases else {
            return Ok(Vec::new());
        };
        let listing = || format!("listing {}", self.leases_shown().display());
        // A new handle on the same directory, so each listing starts at its beginning.
        let mut dir = nix::dir::Dir::openat(
            leases,
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(io::Error::from)
        .with_context(listing)?;
        let mut names = Vec::new();
        for entry in dir.iter() {
            let entry = entry.map_err(io::Error::from).with_context(listing)?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                names.push(OsStr::from_bytes(name).to_owned());
            }
        }
        Ok(names)
    }

    /// Gets the files of the next writes ready while there is time to spare: a run calls this
    /// while its command execs on another core. It creates a temporary file for this process's
    /// next write (a run's revoke) and, if there is none, the spare file that the next process
    /// to write (the next run's insert) takes. Creating a file is most of what a write costs
    /// on ext4 (finding a free inode: 35 to 120 us on this project's machines, against about
    /// 10 us for the rest of the write; docs/performance.md), and done here it is no longer
    /// between the command's exit and lease's, or between lease's start and the command's.
    /// Nothing here is needed: a write without a file ready creates one, so failures are
    /// ignored.
    pub fn prepare(&self) {
        // The record just inserted, decoded for the revoke that reads it back (a cold decode
        // was about a fifth of the instructions between a command's exit and lease's).
        if let Ok(mut inserted) = self.inserted.try_lock()
            && let Some(inserted) = inserted.as_mut()
            && inserted.decoded.is_none()
            && let Loaded::Found(record) = super::decode(inserted.text.as_bytes(), &inserted.id)
        {
            inserted.decoded = Some(record);
        }
        let Some(leases) = &self.leases else {
            return;
        };
        if let Ok(mut prepared) = self.prepared.try_lock()
            && prepared.is_none()
        {
            *prepared = create_blank(leases).ok();
            // Space for the revoke, taken now: a command that fills the disk does not leave
            // its lease unrevoked (a record is a few hundred bytes: on blocks smaller than
            // this, the cut after the write gives back what it does not use).
            if let Some(blank) = prepared.as_ref() {
                let _ = nix::fcntl::fallocate(
                    &blank.file,
                    nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
                    0,
                    RESERVED_FOR_THE_REVOKE,
                );
            }
        }
        // Created empty under its final name: whoever takes it renames it away first, so no
        // one ever writes to it under this name.
        if let Ok(spare) = nix::fcntl::openat(
            leases,
            SPARE,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::S_IRUSR | Mode::S_IWUSR,
        ) {
            let _ = private(&File::from(spare));
        }
    }

    /// Writes `text` to a temporary file (see [`Files::write_temp`]) and has `place` rename it
    /// into place. A file made ahead can be removed before it is placed: a run's revoke file
    /// waits as long as its command runs, and gc removes temporary files older than a minute
    /// (or whose writer it cannot see, from another pid namespace). If `place` fails and the
    /// temporary file is gone, the write is made once more, through a file created for it.
    fn placed<T>(
        &self,
        text: &str,
        mut place: impl FnMut(&mut Temp<'_>) -> nix::Result<T>,
    ) -> Result<nix::Result<T>> {
        let mut temp = self.write_temp(text, true)?;
        if !temp.leads_to_its_file() {
            // Its name now leads elsewhere (or nowhere): written again, through a new file.
            let mut temp = self.write_temp(text, false)?;
            return Ok(place(&mut temp));
        }
        let placed = place(&mut temp);
        if placed.is_err() && temp.is_gone() {
            let mut temp = self.write_temp(text, false)?;
            return Ok(place(&mut temp));
        }
        Ok(placed)
    }

    /// A private temporary file in the leases dir holding `text`, to be renamed into place. Its
    /// name carries the writer's pid, so gc can tell a write in progress from one whose writer
    /// died. With `ahead`, the file is the one [`Files::prepare`] made for this process if
    /// there is one, else the spare file if this process can take it; otherwise, a new one.
    fn write_temp(&self, text: &str, ahead: bool) -> Result<Temp<'_>> {
        let leases = self.leases()?;
        let writing = || format!("writing a record in {}", self.leases_shown().display());
        let prepared = match self.prepared.try_lock() {
            _ if !ahead => None,
            Ok(mut prepared) => prepared.take(),
            Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner().take(),
            Err(std::sync::TryLockError::WouldBlock) => None,
        };
        // The prepared file's name was in the leases dir while the command ran: it is filled
        // only if it is still what `prepare` made (another name given to it meanwhile, or its
        // mode changed, and a new file is made instead, and the name is removed: what is
        // there now is no file of lease's).
        let prepared = prepared.and_then(|mut blank| match nix::sys::stat::fstat(&blank.file) {
            Ok(st) if fit_to_fill(&st) => {
                blank.ahead = Some((st.st_dev, st.st_ino));
                blank.held = u64::try_from(st.st_size).unwrap_or(u64::MAX);
                // The space reserved is one block of 4 KiB, which a record of a few hundred
                // bytes occupies anyway; of smaller blocks, the cut gives back the rest.
                if st.st_blksize < RESERVED_FOR_THE_REVOKE {
                    blank.held = blank.held.max(RESERVED_FOR_THE_REVOKE.unsigned_abs());
                }
                Some(blank)
            }
            _ => {
                blank.discard(leases);
                None
            }
        });
        let blank = match prepared {
            Some(blank) => blank,
            None if ahead => match take_spare(leases) {
                Some(taken) => taken,
                None => create_blank(leases).with_context(writing)?,
            },
            None => create_blank(leases).with_context(writing)?,
        };
        let Blank {
            name,
            mut file,
            ahead,
            held,
        } = blank;
        let temp = Temp {
            leases,
            name,
            gone: false,
            ahead,
        };
        file.write_all(text.as_bytes()).with_context(writing)?;
        // A file made ahead may have held bytes (written to it meanwhile, or the spare's
        // maker's): cut where the record ends if they reach past it. (A file that held none
        // needs no cut: the record's one write fills it. A process of the user's writing into
        // it at the same moment could also write the record itself.)
        if held > text.len() as u64 {
            file.set_len(text.len() as u64).with_context(writing)?;
        }
        Ok(temp)
    }

    /// Opens and locks the record `name`, making sure the locked file is still the one in
    /// place (a concurrent update may have renamed a new one over it while we waited).
    fn lock_record(&self, leases: &OwnedFd, name: &str) -> Result<Option<File>> {
        let shown = || self.shown(name).display().to_string();
        // One deadline for every attempt: a record replaced again and again while we wait
        // must not keep us here.
        let deadline = Instant::now() + LOCK_PATIENCE;
        loop {
            let file = match open_record(leases, name) {
                Ok(file) => file,
                Err(Errno::ENOENT) => return Ok(None),
                Err(err) => {
                    return Err(io::Error::from(err))
                        .with_context(|| format!("opening {}", shown()));
                }
            };
            let patience = deadline.saturating_duration_since(Instant::now());
            lock_within(&file, patience).with_context(|| format!("locking {}", shown()))?;
            let locked = file
                .metadata()
                .with_context(|| format!("reading {}", shown()))?;
            match nix::sys::stat::fstatat(leases, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(current) if current.st_ino == locked.ino() && current.st_dev == locked.dev() => {
                    return Ok(Some(file));
                }
                Ok(_) => continue,
                Err(Errno::ENOENT) => return Ok(None),
                Err(err) => {
                    return Err(io::Error::from(err))
                        .with_context(|| format!("reading {}", shown()));
                }
            }
        }
    }
}

impl Drop for Files {
    /// Removes the file [`Files::prepare`] made if no write used it.
    fn drop(&mut self) {
        let prepared = self
            .prepared
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let (Some(blank), Some(leases)) = (prepared, &self.leases) {
            blank.discard(leases);
        }
    }
}

/// A name for a temporary file: pid and 64 random bits, a name no other writer has or can
/// guess, so an existing file under it is never expected.
fn temp_name() -> Result<String> {
    Ok(format!(
        "{TEMP_PREFIX}{}-{:016x}",
        std::process::id(),
        random_u64()?
    ))
}

/// Creates an empty private file under a new temporary name; a file already there under that
/// name is an error (O_EXCL), not a file to write through.
fn create_blank(leases: &OwnedFd) -> Result<Blank> {
    let name = temp_name()?;
    let fd = nix::fcntl::openat(
        leases,
        name.as_str(),
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::S_IRUSR | Mode::S_IWUSR,
    )
    .map_err(io::Error::from)?;
    let file = File::from(fd);
    private(&file)?;
    Ok(Blank {
        name,
        file,
        ahead: None,
        held: 0,
    })
}

/// Makes a file lease created 0600 whatever the umask (a umask of 0277 would leave a record
/// lease itself cannot read).
fn private(file: &File) -> io::Result<()> {
    nix::sys::stat::fchmod(file, Mode::S_IRUSR | Mode::S_IWUSR).map_err(io::Error::from)
}

/// Whether a file is what lease leaves as a file to write a record in: a regular file of the
/// user's, 0600 exactly, with no other name.
fn fit_to_fill(st: &nix::sys::stat::FileStat) -> bool {
    let kind =
        nix::sys::stat::SFlag::from_bits_truncate(st.st_mode) & nix::sys::stat::SFlag::S_IFMT;
    kind == nix::sys::stat::SFlag::S_IFREG
        && st.st_uid == crate::owner::euid()
        && st.st_mode & 0o7777 == 0o600
        && st.st_nlink == 1
}

/// Takes the spare file, if there is one and this process gets it: renamed to a temporary name
/// of this process's (an atomic step only one process wins), then checked to be what lease
/// leaves there (a regular file of the user's, private, with no other name) before it is opened,
/// and again once open. Anything else found there is removed (a directory only if empty), and
/// `None` returned: the caller creates a file. Returns the file and how many bytes it already
/// holds.
fn take_spare(leases: &OwnedFd) -> Option<Blank> {
    let name = temp_name().ok()?;
    nix::fcntl::renameat2(
        leases,
        SPARE,
        leases,
        name.as_str(),
        RenameFlags::RENAME_NOREPLACE,
    )
    .ok()?;
    let found = nix::sys::stat::fstatat(leases, name.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW);
    let opened = found.ok().filter(fit_to_fill).and_then(|checked| {
        let file = nix::fcntl::openat(
            leases,
            name.as_str(),
            OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map(File::from)
        .ok()?;
        let st = nix::sys::stat::fstat(&file).ok()?;
        let same = (st.st_dev, st.st_ino) == (checked.st_dev, checked.st_ino);
        (same && fit_to_fill(&st)).then_some((file, st))
    });
    match opened {
        Some((file, st)) => Some(Blank {
            name,
            file,
            ahead: Some((st.st_dev, st.st_ino)),
            held: u64::try_from(st.st_size).unwrap_or(u64::MAX),
        }),
        None => {
            let dir = found.is_ok_and(|st| {
                nix::sys::stat::SFlag::from_bits_truncate(st.st_mode)
                    & nix::sys::stat::SFlag::S_IFMT
                    == nix::sys::stat::SFlag::S_IFDIR
            });
            let how = if dir {
                nix::unistd::UnlinkatFlags::RemoveDir
            } else {
                nix::unistd::UnlinkatFlags::NoRemoveDir
            };
            let _ = nix::unistd::unlinkat(leases, name.as_str(), how);
            None
        }
    }
}

/// A temporary file in the leases dir, removed when dropped unless it was renamed away.
struct Temp<'a> {
    leases: &'a OwnedFd,
    name: String,
    /// Renamed into place: the name is gone, and there is nothing to remove.
    gone: bool,
    /// See [`Blank::ahead`].
    ahead: Option<(u64, u64)>,
}

impl Temp<'_> {
    /// Tells the guard that the file was renamed into place: there is nothing to remove.
    fn renamed(&mut self) {
        self.gone = true;
    }

    /// Whether the temporary name still leads to the file written (always, for a file this
    /// write created; checked for one made ahead).
    fn leads_to_its_file(&self) -> bool {
        let Some(identity) = self.ahead else {
            return true;
        };
        nix::sys::stat::fstatat(
            self.leases,
            self.name.as_str(),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .is_ok_and(|st| (st.st_dev, st.st_ino) == identity)
    }

    /// Whether nothing is under the temporary name any more (someone removed it).
    fn is_gone(&self) -> bool {
        nix::sys::stat::fstatat(
            self.leases,
            self.name.as_str(),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        ) == Err(Errno::ENOENT)
    }
}

impl Drop for Temp<'_> {
    fn drop(&mut self) {
        if self.gone {
            return;
        }
        let _ = nix::unistd::unlinkat(
            self.leases,
            self.name.as_str(),
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        );
    }
}

/// A record locked by [`Files::lock`].
#[derive(Debug)]
struct Locked<'a> {
    store: &'a Files,
    file: File,
    id: LeaseId,
    name: String,
}

impl Locked<'_> {
    /// The record as it stands under the lock.
    fn read(&mut self) -> Result<Loaded> {
        // Read once, from the start, where the lock opened it; `read_record` refuses a FIFO or
        // a device before reading from it.
        let (store, id) = (self.store, &self.id);
        read_record(&mut self.file, &store.shown(&self.name), |bytes| {
            store.decode(bytes, id)
        })
    }

    /// Replaces the record (atomically); the lock stays held on the old file, which is what
    /// concurrent lockers wait on and then find replaced.
    ///
    /// The new file is exchanged with the old one (`RENAME_EXCHANGE`), and the old one, now under
    /// the temporary name, is removed when `temp` drops. A plain rename over the old file would
    /// do as well for readers, but ext4 (`auto_da_alloc`) then starts writing the new file's data
    /// to the disk before the rename returns: about 85 us a write on this project's machines,
    /// against about 10 us for the exchange and the removal (docs/performance.md). A file
    /// system without the exchange, or a record gone meanwhile, gets the plain rename.
    fn write(&mut self, record: &Record) -> Result<()> {
        let text = toml::to_string(record).context("encoding the lease record")?;
        let leases = self.store.leases()?;
        let to = self.name.as_str();
        self.store
            .placed(&text, |temp| {
                let from = temp.name.as_str();
                match nix::fcntl::renameat2(leases, from, leases, to, RenameFlags::RENAME_EXCHANGE)
                {
                    // `temp` now names the old record, and removes it on drop.
                    Ok(()) => return Ok(()),
                    Err(Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP | Errno::ENOENT) => {}
                    Err(err) => return Err(err),
                }
                nix::fcntl::renameat(leases, from, leases, to)?;
                temp.renamed();
                Ok(())
            })?
            .map_err(io::Error::from)
            .with_context(|| format!("updating {}", self.store.shown(to).display()))
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
                        // The whole wait, of which `patience` may be what was left.
                        format!(
                            "another process has held it locked for {} s",
                            LOCK_PATIENCE.as_secs()
                        ),
                    ));
                }
                std::thread::sleep(pause.min(left));
                pause = (pause * 2).min(Duration::from_millis(20));
            }
        }
    }
}

/// The file name of a record.
fn record_name(id: &LeaseId) -> String {
    format!("{id}.toml")
}

/// Opens a record read-only in the leases dir: never through a symlink, and never blocking
/// (a FIFO planted as a record opens at once and is then refused as not a regular file).
fn open_record(leases: &OwnedFd, name: &str) -> nix::Result<File> {
    nix::fcntl::openat(
        leases,
        name,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map(File::from)
}

/// Reads and checks a record from an open file. I/O errors are errors; anything wrong with
/// the file or its content is `Corrupt`, so callers fail closed without stopping. A record
/// must be a regular file owned by the user with no permission for group or others (lease
/// writes them 0600; a 0400 record is still private and is read).
fn read_record(
    file: &mut File,
    path: &Path,
    decode: impl FnOnce(&[u8]) -> Loaded,
) -> Result<Loaded> {
    let meta = file
        .metadata()
        .with_context(|| format!("reading {}", path.display()))?;
    if !meta.is_file() {
        return Ok(Loaded::Corrupt("record is not a regular file".into()));
    }
    let me = crate::owner::euid();
    if meta.uid() != me {
        return Ok(Loaded::Corrupt(format!(
            "record is owned by uid {}, not by you (uid {me})",
            meta.uid()
        )));
    }
    let perms = meta.mode() & 0o7777;
    if perms & 0o077 != 0 {
        return Ok(Loaded::Corrupt(format!(
            "record is open to group or others (mode {perms:o}, not 600)"
        )));
    }
    if meta.len() > MAX_RECORD_BYTES {
        return Ok(Loaded::Corrupt(format!(
            "record is too large ({} bytes)",
            meta.len()
        )));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    // Bounded even if the file grew since it was measured (records are replaced whole, by
    // rename, and never grow in place).
    file.take(MAX_RECORD_BYTES)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(decode(&bytes))
}

/// One step of resolving a path.
enum Step {
    Root,
    Up,
    Name(OsString),
}

fn steps(path: &Path) -> impl DoubleEndedIterator<Item = Step> + '_ {
    path.components().filter_map(|c| match c {
        Component::RootDir => Some(Step::Root),
        Component::ParentDir => Some(Step::Up),
        Component::Normal(name) => Some(Step::Name(name.to_owned())),
        Component::CurDir | Component::Prefix(_) => None,
    })
}

/// Resolves the absolute path `dir` from `/` down, one `lstat` per component, and checks every
/// directory it passes through as OpenSSH's StrictModes does: owned by root or the user, and
/// not writable by group or others unless sticky (as `/tmp` is). Such a directory's entries
/// cannot be changed by anyone else, so the state dir found under them stays the one found.
/// A symbolic link on the way is followed only if root or the user owns it (the rule the
/// kernel's `protected_symlinks` applies in sticky directories). Missing directories are
/// created 0700 with [`Open::CreateIfMissing`]; with [`Open::ExistingOnly`] a missing one means
/// there is no store (`None`). Returns the state dir's real path; the state dir itself is
/// checked after it is opened (see [`open_private_dir`]).
fn resolve(dir: &Path, mode: Open) -> Result<Option<PathBuf>> {
    let me = crate::owner::euid();
    let mut real = PathBuf::from("/");
    check_ancestor(
        dir,
        &real,
        &fs::symlink_metadata(&real).context("reading /")?,
        me,
    )?;
    let mut pending: VecDeque<Step> = steps(dir).collect();
    let mut detours = 0;
    // The directory created last, and how many times one vanished right after its creation.
    let mut created: Option<PathBuf> = None;
    let mut vanished = 0;
    while let Some(step) = pending.pop_front() {
        let name = match step {
            Step::Root => {
                real = PathBuf::from("/");
                continue;
            }
            Step::Up => {
                real.pop();
                continue;
            }
            Step::Name(name) => name,
        };
        let next = real.join(&name);
        let meta = match fs::symlink_metadata(&next) {
            Ok(meta) => meta,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                if mode == Open::ExistingOnly {
                    return Ok(None);
                }
                if created.as_ref() == Some(&next) {
                    vanished += 1;
                    if vanished > MAX_SYMLINKS {
                        bail!(
                            "creating state dir {}: {} keeps disappearing",
                            dir.display(),
                            next.display()
                        );
                    }
                }
                match mkdir_private(None, &next).map_err(io::Error::from) {
                    Ok(()) => {}
                    Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(err) => {
                        return Err(err)
                            .with_context(|| format!("creating state dir {}", dir.display()));
                    }
                }
                created = Some(next);
                pending.push_front(Step::Name(name));
                continue;
            }
            Err(err) => return Err(err).with_context(|| format!("reading {}", next.display())),
        };
        if meta.file_type().is_symlink() {
            detours += 1;
            if detours > MAX_SYMLINKS {
                bail!(
                    "refusing state dir {}: too many symbolic links on its path",
                    dir.display()
                );
            }
            if meta.uid() != me && meta.uid() != 0 {
                bail!(
                    "refusing state dir {}: the symbolic link {} on its path is owned by uid {}, neither you (uid {me}) nor root: use a directory of your own with --state-dir or LEASE_STATE_DIR",
                    dir.display(),
                    next.display(),
                    meta.uid()
                );
            }
            let target =
                fs::read_link(&next).with_context(|| format!("reading {}", next.display()))?;
            for step in steps(&target).rev() {
                pending.push_front(step);
            }
            continue;
        }
        if pending.is_empty() {
            // The state dir itself: checked once it is open.
            return Ok(Some(next));
        }
        check_ancestor(dir, &next, &meta, me)?;
        real = next;
    }
    Ok(Some(real))
}

/// Refuses `ancestor` of the state dir `dir` if it is not a directory, if someone other than
/// root or the user owns it, or if group or others can write it and it is not sticky.
fn check_ancestor(dir: &Path, ancestor: &Path, meta: &fs::Metadata, me: u32) -> Result<()> {
    let (dir_shown, shown) = (dir.display(), ancestor.display());
    let which = if dir.parent() == Some(ancestor) {
        format!("its parent {shown}")
    } else {
        format!("the directory {shown} above it")
    };
    if !meta.is_dir() {
        bail!(
            "refusing state dir {dir_shown}: {shown} on its path is not a directory: point --state-dir or LEASE_STATE_DIR at a directory"
        );
    }
    match crate::owner::open_to_others(meta) {
        Some(OpenToOthers::Owner(uid)) => bail!(
            "refusing state dir {dir_shown}: {which} is owned by uid {uid}, neither you (uid {me}) nor root: use a directory of your own with --state-dir or LEASE_STATE_DIR"
        ),
        Some(OpenToOthers::Writable(perms)) => bail!(
            "refusing state dir {dir_shown}: {which} is writable by group or others (mode {:o}) and not sticky: run 'chmod go-w {shown}' or choose another --state-dir",
            perms & 0o777
        ),
        None => Ok(()),
    }
}

/// Opens the directory `path` (relative to `at`, or absolute) once, without following a
/// symlink, creating it 0700 if `mode` says so, and refuses it unless it is a directory owned
/// by the user that group and others cannot write: such a directory would let someone else
/// plant records. `None` if it is missing and may not be created.
fn open_private_dir(
    at: Option<&OwnedFd>,
    path: &Path,
    shown: &Path,
    what: &str,
    mode: Open,
) -> Result<Option<OwnedFd>> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let open = || match at {
        Some(at) => nix::fcntl::openat(at, path, flags, Mode::empty()),
        None => nix::fcntl::openat(nix::fcntl::AT_FDCWD, path, flags, Mode::empty()),
    };
    let shown_text = shown.display();
    let opened = match open() {
        Err(Errno::ENOENT) if mode == Open::CreateIfMissing => match mkdir_private(at, path) {
            Ok(()) | Err(Errno::EEXIST) => open(),
            Err(err) => {
                return Err(io::Error::from(err))
                    .with_context(|| format!("creating {what} {shown_text}"));
            }
        },
        opened => opened,
    };
    let fd = match opened {
        Ok(fd) => fd,
        Err(Errno::ENOENT) if mode == Open::ExistingOnly => return Ok(None),
        Err(Errno::ENOTDIR) => bail!(
            "{what} {shown_text} is not a directory: point --state-dir or LEASE_STATE_DIR at a directory"
        ),
        Err(Errno::ELOOP) => bail!(
            "refusing {what} {shown_text}: it is a symbolic link: point --state-dir or LEASE_STATE_DIR at the directory itself"
        ),
        Err(err) => {
            return Err(io::Error::from(err))
                .with_context(|| format!("opening {what} {shown_text}"));
        }
    };
    let st = nix::sys::stat::fstat(&fd)
        .map_err(io::Error::from)
        .with_context(|| format!("reading {what} {shown_text}"))?;
    let uid = crate::owner::euid();
    if st.st_uid != uid {
        bail!(
            "refusing {what} {shown_text}: it is owned by uid {}, not by you (uid {uid}): use a directory of your own with --state-dir or LEASE_STATE_DIR",
            st.st_uid
        );
    }
    let perms = st.st_mode & 0o777;
    if perms & 0o022 != 0 {
        bail!(
            "refusing {what} {shown_text}: it is writable by group or others (mode {perms:o}): run 'chmod 700 {shown_text}'"
        );
    }
    Ok(Some(fd))
}

/// Creates the directory `path` (relative to `at`, or absolute) 0700 whatever the umask: a
/// umask that takes the owner's bits (0277, 0477) would otherwise leave a directory lease
/// cannot write or even open, as `mkdir -p` makes its parents usable. Such a directory is
/// made 0700 through an `O_PATH` descriptor, which needs no permission on it and follows no
/// link (and the process's umask is never changed: another thread would create with it).
fn mkdir_private(at: Option<&OwnedFd>, path: &Path) -> nix::Result<()> {
    let made = match at {
        Some(at) => nix::sys::stat::mkdirat(at, path, Mode::S_IRWXU),
        None => nix::sys::stat::mkdirat(nix::fcntl::AT_FDCWD, path, Mode::S_IRWXU),
    };
    made?;
    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let dir = match at {
        Some(at) => nix::fcntl::openat(at, path, flags, Mode::empty()),
        None => nix::fcntl::openat(nix::fcntl::AT_FDCWD, path, flags, Mode::empty()),
    }?;
    if nix::sys::stat::fstat(&dir)?.st_mode & 0o700 != 0o700 {
        use std::os::fd::AsRawFd as _;
        let by_descriptor = format!("/proc/self/fd/{}", dir.as_raw_fd());
        nix::sys::stat::fchmodat(
            nix::fcntl::AT_FDCWD,
            by_descriptor.as_str(),
            Mode::S_IRWXU,
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        )?;
    }
    Ok(())
}

/// With `LEASE_DEBUG_CHARGE_BARRIER=DIR`, waits (at most 2 s) until two verifies have reached
/// this point, each leaving a file in DIR. Under the record's lock a second verify cannot get
/// here before the first has paid, so the wait runs out; without it, both would pay at once.
#[cfg(debug_assertions)]
fn debug_charge_barrier() {
    let Some(dir) = std::env::var_os("LEASE_DEBUG_CHARGE_BARRIER") else {
        return;
    };
    let dir = std::path::Path::new(&dir);
    let _ = std::fs::write(dir.join(std::process::id().to_string()), "");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while std::time::Instant::now() < deadline {
        if std::fs::read_dir(dir).map_or(0, Iterator::count) >= 2 {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// 64 random bits from the system (`getrandom`), for a temporary file's name. Not a seeded
/// generator: seeding one asks the CPU what it has (`cpuid`), which costs a virtual machine
/// about 9 µs a question, once per process.
fn random_u64() -> Result<u64> {
    use rand::TryRng as _;
    let mut bytes = [0u8; 8];
    rand::rngs::SysRng
        .try_fill_bytes(&mut bytes)
        .context("reading the system random number generator")?;
    Ok(u64::from_ne_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use proptest::prelude::*;

    use super::*;
    use crate::scope::Scope;
    use crate::token::Token;

    fn store() -> (tempfile::TempDir, Files) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Files::open(&dir.path().join("state"), Open::CreateIfMissing).expect("store");
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

    fn record_path(store: &Files, id: &LeaseId) -> PathBuf {
        store.dir().join(LEASES).join(record_name(id))
    }

    /// Writes a record file by path, as someone editing the store by hand would.
    fn write_record_file(store: &Files, id: &LeaseId, bytes: &[u8], mode: u32) {
        write_record_file_at(&record_path(store, id), bytes, mode);
    }

    /// Writes a file with these bytes and this mode.
    fn write_record_file_at(path: &Path, bytes: &[u8], mode: u32) {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let path = path.to_owned();
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&path)
            .expect("record file");
        file.write_all(bytes).expect("written");
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("mode");
    }

    fn corrupt_reason(loaded: Loaded) -> String {
        match loaded {
            Loaded::Corrupt(why) => why,
            other => panic!("not corrupt: {other:?}"),
        }
    }

    fn leftover_temp_files(store: &Files) -> Vec<OsString> {
        let names = store.names().expect("names");
        names
            .into_iter()
            .filter(|n| n.to_string_lossy().starts_with(TEMP_PREFIX))
            .collect()
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
        let before = File::open(record_path(&store, &id)).expect("the record as inserted");
        let now = SystemTime::now();
        assert!(
            matches!(store.update(&id, |r| Change::when(r.revoke(now))).expect("update"), Updated::Found(r, true) if r.state == crate::record::State::Revoked)
        );
        // The update put a new file in place (exchanged with the old one), and removed the old.
        assert_eq!(before.metadata().expect("old record").nlink(), 0);
        assert_eq!(leftover_temp_files(&store), Vec::<OsString>::new());
        assert!(
            matches!(store.load(&id).expect("load"), Loaded::Found(r) if r.revoked_at.is_some())
        );
        assert_eq!(store.ids().expect("ids"), vec![id.clone()]);
        assert!(store.remove_if(&id, |_| true).expect("remove"));
        assert!(matches!(store.load(&id).expect("load"), Loaded::Missing));
        assert_eq!(leftover_temp_files(&store), Vec::<OsString>::new());
    }

    /// Once open, the store is used through its handles: renaming the state dir away (and
    /// putting something else at its path) changes nothing for the open store.
    #[test]
    fn an_open_store_works_through_its_handles_whatever_happens_to_the_path() {
        let (dir, store) = store();
        let token = Token::mint().expect("mint");
        let id = token.hash().id();
        let moved = dir.path().join("moved");
        fs::rename(store.dir(), &moved).expect("moved");
        fs::create_dir(store.dir()).expect("a decoy at the old path");
        assert!(store.insert(&record(&token)).expect("insert"));
        assert!(moved.join(LEASES).join(record_name(&id)).is_file());
        assert!(matches!(store.load(&id).expect("load"), Loaded::Found(_)));
        let now = SystemTime::now();
        assert!(matches!(
            store
                .update(&id, |r| Change::when(r.revoke(now)))
                .expect("update"),
            Updated::Found(_, true)
        ));
        assert_eq!(store.ids().expect("ids"), vec![id.clone()]);
        store
            .audit()
            .append(&crate::audit::Event::new(
                crate::audit::EventKind::Issued,
                None,
            ))
            .expect("appended");
        assert!(moved.join(crate::audit::FILE_NAME).is_file());
        assert!(store.remove_if(&id, |_| true).expect("remove"));
        assert_eq!(fs::read_dir(store.dir()).expect("decoy").count(), 0);
    }

    /// The descriptors this process has open on `path`.
    fn open_on(path: &std::path::Path) -> usize {
        fs::read_dir("/proc/self/fd")
            .expect("/proc/self/fd")
            .filter_map(|fd| fs::read_link(fd.ok()?.path()).ok())
            .filter(|target| target == path)
            .count()
    }

    #[test]
    fn an_update_waits_for_the_lock_then_works_on_the_record_in_place_by_then() {
        let (_dir, store) = store();
        let token = Token::mint().expect("mint");
        let id = token.hash().id();
        let mut original = record(&token);
        assert!(store.insert(&original).expect("insert"));
        // Canonical, as /proc/self/fd shows it (the temporary dir's path may hold a symlink).
        let path = fs::canonicalize(record_path(&store, &id)).expect("record path");
        // Another writer holds the record's lock...
        let held = File::open(&path).expect("open");
        held.lock().expect("lock");
        std::thread::scope(|scope| {
            let waiting =
                scope.spawn(|| store.update(&id, |record| Change::Keep(record.uses_left)));
            // ...while the update has opened the record and waits for the lock...
            let deadline = Instant::now() + Duration::from_secs(10);
            while open_on(&path) < 2 {
                assert!(
                    Instant::now() < deadline,
                    "the update never opened the record"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            // ...and replaces it, as every write does (a new file put in place of the old one).
            original.uses_left = Some(7);
            let text = toml::to_string(&original).expect("encode");
            let aside = path.with_extension("other");
            fs::write(&aside, text).expect("write");
            let private = std::os::unix::fs::PermissionsExt::from_mode(0o600);
            fs::set_permissions(&aside, private).expect("mode");
            fs::rename(&aside, &path).expect("rename");
            drop(held);
            match waiting.join().expect("update thread").expect("update") {
                Updated::Found(_, seen) => {
                    assert_eq!(seen, Some(7), "the update worked on the replaced record");
                }
                other => panic!("not found: {other:?}"),
            }
        });
    }

    #[test]
    fn errors_name_the_record_or_the_lease_dir_they_are_about() {
        let (_dir, store) = store();
        let token = Token::mint().expect("mint");
        let id = token.hash().id();
        // A socket where the record should be cannot be opened at all (ENXIO).
        let path = record_path(&store, &id);
        let _socket = std::os::unix::net::UnixListener::bind(&path).expect("socket");
        let err = store.load(&id).expect_err("a socket is not a record");
        assert_eq!(
            format!("{err:#}"),
            format!(
                "reading {}: No such device or address (os error 6)",
                path.display()
            )
        );
        // A store read without its lease dir cannot be written to.
        let dir = tempfile::tempdir().expect("temp dir");
        let state = dir.path().join("state");
        fs::create_dir(&state).expect("state dir");
        fs::set_permissions(&state, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .expect("mode");
        let bare = Files::open(&state, Open::ExistingOnly).expect("store");
        let err = bare.insert(&record(&token)).expect_err("no lease dir");
        assert_eq!(
            format!("{err:#}"),
            format!(
                "writing a record in {}: the lease dir does not exist",
                state.join(LEASES).display()
            )
        );
    }

    #[test]
    fn a_fifo_planted_as_a_record_is_corrupt_at_once_and_hangs_nothing() {
        let (_dir, store) = store();
        let id = Token::mint().expect("mint").hash().id();
        nix::unistd::mkfifo(&record_path(&store, &id), Mode::S_IRUSR | Mode::S_IWUSR)
            .expect("mkfifo");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::scope(|scope| {
            scope.spawn(|| tx.send(store.load(&id).map(corrupt_reason)));
            // A blocking open of a FIFO with no writer would never return.
            let loaded = rx.recv_timeout(Duration::from_secs(10));
            if loaded.is_err() {
                // Unblock the open (as a writer) so that the scope can end, then fail.
                let _ = fs::OpenOptions::new()
                    .write(true)
                    .open(record_path(&store, &id));
                panic!("loading a FIFO planted as a record hung");
            }
            let reason = loaded.expect("answer").expect("load");
            assert_eq!(reason, "record is not a regular file");
        });
    }

    #[test]
    fn a_record_whose_hash_does_not_begin_with_its_id_is_corrupt() {
        let (_dir, store) = store();
        let (token, other) = (Token::mint().expect("mint"), Token::mint().expect("mint"));
        let id = token.hash().id();
        let text = toml::to_string(&record(&token))
            .expect("encode")
            .replace(&token.hash().to_hex(), &other.hash().to_hex());
        write_record_file(&store, &id, text.as_bytes(), 0o600);
        assert_eq!(
            corrupt_reason(store.load(&id).expect("load")),
            "record does not belong under this id"
        );
    }

    #[test]
    fn a_state_dir_many_missing_levels_deep_is_created() {
        let dir = tempfile::tempdir().expect("temp dir");
        let deep: PathBuf = (0..=MAX_SYMLINKS + 1).map(|n| format!("d{n}")).collect();
        let state = dir.path().join(deep).join("state");
        let store = Files::open(&state, Open::CreateIfMissing).expect("store");
        assert_eq!(store.dir(), state.as_path());
        assert!(state.join(LEASES).is_dir());
    }

    #[test]
    fn forty_symbolic_links_on_the_way_are_followed_and_one_more_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let base = dir.path();
        fs::create_dir(base.join("real")).expect("dir");
        // link0 -> link1 -> ... -> linkN -> real
        let chain = |links: usize| {
            let _ = fs::remove_dir_all(base.join("c"));
            fs::create_dir(base.join("c")).expect("dir");
            let at = |n: usize| base.join("c").join(format!("link{n}"));
            std::os::unix::fs::symlink(base.join("real"), at(links - 1)).expect("link");
            for n in (0..links - 1).rev() {
                std::os::unix::fs::symlink(at(n + 1), at(n)).expect("link");
            }
            at(0).join("state")
        };
        assert!(Files::open(&chain(MAX_SYMLINKS), Open::CreateIfMissing).is_ok());
        let err = Files::open(&chain(MAX_SYMLINKS + 1), Open::CreateIfMissing)
            .expect_err("one link too many");
        assert!(
            err.to_string()
                .ends_with("too many symbolic links on its path"),
            "{err:#}"
        );
    }

    #[test]
    fn a_state_dir_that_is_a_file_is_refused_as_not_a_directory() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("state");
        fs::write(&file, "").expect("file");
        fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("mode");
        let err = Files::open(&file, Open::CreateIfMissing).expect_err("a file");
        assert_eq!(
            format!("{err:#}"),
            format!(
                "state dir {} is not a directory: point --state-dir or LEASE_STATE_DIR at a directory",
                file.display()
            )
        );
    }

    #[test]
    fn a_state_dir_that_cannot_be_created_says_why() {
        // /sys is root's and read-only to everyone: mkdir there fails, and not because the
        // directory already exists.
        let state = Path::new("/sys/lease-test-no-such-dir/state");
        let err = Files::open(state, Open::CreateIfMissing).expect_err("mkdir in /sys");
        let text = format!("{err:#}");
        assert!(
            text.starts_with("creating state dir /sys/lease-test-no-such-dir/state: ")
                && !text.contains("keeps disappearing"),
            "{text}"
        );
    }

    #[test]
    fn a_path_that_cannot_be_read_is_an_error_reading_it_not_a_missing_dir_to_create() {
        let dir = tempfile::tempdir().expect("temp dir");
        let too_long = dir.path().join("x".repeat(300));
        let err = Files::open(&too_long.join("state"), Open::CreateIfMissing)
            .expect_err("a name too long");
        assert_eq!(
            format!("{err:#}"),
            format!(
                "reading {}: File name too long (os error 36)",
                too_long.display()
            )
        );
    }

    #[test]
    fn a_record_of_up_to_the_limit_is_read_and_a_larger_one_is_corrupt() {
        let (_dir, store) = store();
        let token = Token::mint().expect("mint");
        let id = token.hash().id();
        let toml = toml::to_string(&record(&token)).expect("encode");
        let text = toml.trim_end();
        // Padded with a comment before the record, to the limit and one byte past it: a read
        // cut short anywhere would break the record's last value.
        let padded = |size: usize| format!("#{}\n{text}", "x".repeat(size - text.len() - 2));
        let limit = usize::try_from(MAX_RECORD_BYTES).expect("a size");
        write_record_file(&store, &id, padded(limit).as_bytes(), 0o600);
        assert!(matches!(store.load(&id).expect("load"), Loaded::Found(_)));
        write_record_file(&store, &id, padded(limit + 1).as_bytes(), 0o600);
        assert_eq!(
            corrupt_reason(store.load(&id).expect("load")),
            format!("record is too large ({} bytes)", limit + 1)
        );
    }

    #[test]
    fn a_record_open_to_group_or_others_or_owned_by_someone_else_is_corrupt() {
        let (_dir, store) = store();
        let token = Token::mint().expect("mint");
        let id = token.hash().id();
        let text = toml::to_string(&record(&token)).expect("encode");
        write_record_file(&store, &id, text.as_bytes(), 0o644);
        assert_eq!(
            corrupt_reason(store.load(&id).expect("load")),
            "record is open to group or others (mode 644, not 600)"
        );
        assert!(matches!(
            store
                .update(&id, |r| Change::when(r.revoke(SystemTime::now())))
                .expect("update"),
            Updated::Corrupt(_)
        ));
        // Private but read-only is still private.
        write_record_file(&store, &id, text.as_bytes(), 0o400);
        assert!(matches!(store.load(&id).expect("load"), Loaded::Found(_)));
        if nix::unistd::geteuid().is_root() {
            write_record_file(&store, &id, text.as_bytes(), 0o600);
            std::os::unix::fs::chown(record_path(&store, &id), Some(65534), None).expect("chown");
            assert_eq!(
                corrupt_reason(store.load(&id).expect("load")),
                "record is owned by uid 65534, not by you (uid 0)"
            );
        }
    }

    /// gc removes the temporary files of writers that died mid-write (the pid in the name is
    /// not running, or is no pid at all) and any older than a minute, but keeps a fresh one
    /// whose writer still runs: that is a record being written right now.
    #[test]
    fn stale_temp_files_are_removed_and_a_running_writers_is_kept() {
        let (_dir, store) = store();
        let leases = store.dir().join(LEASES);
        let live = format!("{TEMP_PREFIX}{}-0000000000000001", std::process::id());
        let dead = format!("{TEMP_PREFIX}4000000000-0000000000000002");
        let no_pid = format!("{TEMP_PREFIX}x-0000000000000003");
        for name in [&live, &dead, &no_pid] {
            fs::write(leases.join(name), "").expect("temp file");
        }
        // A directory planted as the spare, taken and left under a dead writer's name.
        let dir = format!("{TEMP_PREFIX}4000000000-0000000000000004");
        fs::create_dir(leases.join(&dir)).expect("dir");
        let now = SystemTime::now();
        assert_eq!(store.remove_stale_temp_files(now).expect("gc"), 3);
        assert_eq!(leftover_temp_files(&store), vec![OsString::from(&live)]);
        // Its age is counted in whole seconds of its mtime: exactly a minute is not stale yet.
        let mtime = fs::metadata(leases.join(&live)).expect("temp file").mtime();
        let written = UNIX_EPOCH + Duration::from_secs(mtime.unsigned_abs());
        let a_minute_on = written + STALE_TEMP_AGE;
        assert_eq!(store.remove_stale_temp_files(a_minute_on).expect("gc"), 0);
        let just_after = a_minute_on + Duration::from_secs(1);
        assert_eq!(store.remove_stale_temp_files(just_after).expect("gc"), 1);
        assert_eq!(leftover_temp_files(&store), Vec::<OsString>::new());
    }

    fn inode(path: &Path) -> u64 {
        fs::symlink_metadata(path).expect("file").ino()
    }

    #[test]
    fn writes_fill_the_files_prepared_for_them_then_create_their_own() {
        let (_dir, store) = store();
        let leases = store.dir().join(LEASES);
        store.prepare();
        let spare = inode(&leases.join(SPARE));
        let prepared = leftover_temp_files(&store);
        assert_eq!(
            prepared.len(),
            1,
            "one file made for this process's next write"
        );
        let prepared = inode(&leases.join(&prepared[0]));
        assert_eq!(fs::metadata(leases.join(SPARE)).expect("spare").len(), 0);

        // The process's own prepared file first, then the spare, then a new file.
        let tokens: Vec<Token> = (0..3).map(|_| Token::mint().expect("mint")).collect();
        for token in &tokens {
            assert!(store.insert(&record(token)).expect("insert"));
        }
        let placed: Vec<u64> = tokens
            .iter()
            .map(|t| inode(&record_path(&store, &t.hash().id())))
            .collect();
        assert_eq!(placed[0], prepared);
        assert_eq!(placed[1], spare);
        assert!(placed[2] != prepared && placed[2] != spare);
        assert!(!leases.join(SPARE).exists(), "the spare was taken");
        assert_eq!(leftover_temp_files(&store), Vec::<OsString>::new());
        for token in &tokens {
            let id = token.hash().id();
            assert!(
                matches!(store.load(&id).expect("load"), Loaded::Found(r) if r.id == id),
                "each record reads back whole"
            );
            let mode = fs::metadata(record_path(&store, &id))
                .expect("record")
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }

        // An update fills the prepared file too; a prepared file no write used goes with the
        // store, and the spare stays for the next process.
        store.prepare();
        let prepared = inode(&leases.join(&leftover_temp_files(&store)[0]));
        let id = tokens[0].hash().id();
        let now = SystemTime::now();
        store
            .update(&id, |r| Change::when(r.revoke(now)))
            .expect("update");
        assert_eq!(inode(&record_path(&store, &id)), prepared);
        assert_eq!(leftover_temp_files(&store), Vec::<OsString>::new());
        store.prepare();
        assert_eq!(leftover_temp_files(&store).len(), 1);
        drop(store);
        let left: Vec<String> = fs::read_dir(&leases)
            .expect("leases dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert_eq!(left, vec![SPARE.to_owned()]);
    }

    #[test]
    fn a_write_whose_file_made_ahead_was_removed_by_gc_is_made_through_a_new_one() {
        let (_dir, store) = store();
        let token = Token::mint().expect("mint");
        let id = token.hash().id();
        assert!(store.insert(&record(&token)).expect("insert"));
        // A command that runs past a minute: gc finds the revoke's file stale and removes it.
        for write in ["update", "insert"] {
            store.prepare();
            let _ = fs::remove_file(store.dir().join(LEASES).join(SPARE));
            let later = SystemTime::now() + STALE_TEMP_AGE + Duration::from_secs(5);
            assert_eq!(store.remove_stale_temp_files(later).expect("gc"), 1);
            match write {
                "update" => {
                    let now = SystemTime::now();
                    let updated = store.update(&id, |r| Change::when(r.revoke(now)));
                    assert!(
                        matches!(updated.expect("update"), Updated::Found(r, true) if r.revoked_at.is_some())
                    );
                    assert!(
                        matches!(store.load(&id).expect("load"), Loaded::Found(r) if r.revoked_at.is_some())
                    );
                }
                _ => {
                    let other = Token::mint().expect("mint");
                    assert!(store.insert(&record(&other)).expect("insert"));
                    assert!(matches!(
                        store.load(&other.hash().id()).expect("load"),
                        Loaded::Found(_)
                    ));
                }
            }
            assert_eq!(leftover_temp_files(&store), Vec::<OsString>::new());
        }
    }

    #[test]
    fn a_prepared_file_changed_while_the_command_ran_is_not_what_the_revoke_writes_through() {
        use std::os::unix::fs::{PermissionsExt, symlink};
        let (dir, store) = store();
        let outside = dir.path().join("outside");
        // Each changes the prepared file (by its name) as a process of the user could while the
        // command runs.
        type Tamper = fn(&Path, &Path);
        let changes: [(&str, Tamper); 5] = [
            ("opened to others", |prepared, _| {
                fs::set_permissions(prepared, fs::Permissions::from_mode(0o644)).expect("chmod");
            }),
            ("given a second name outside", |prepared, outside| {
                fs::remove_file(outside).expect("rm");
                fs::hard_link(prepared, outside).expect("link");
            }),
            ("replaced by a symlink", |prepared, outside| {
                fs::remove_file(prepared).expect("rm");
                symlink(outside, prepared).expect("symlink");
            }),
            (
                "moved away, a symlink left in its place",
                |prepared, outside| {
                    fs::rename(prepared, outside.with_extension("moved")).expect("mv");
                    symlink(outside, prepared).expect("symlink");
                },
            ),
            ("filled with more than a record", |prepared, _| {
                fs::write(prepared, [b'Z'; 3000]).expect("write");
            }),
        ];
        for (what, change) in changes {
            let token = Token::mint().expect("mint");
            let id = token.hash().id();
            assert!(store.insert(&record(&token)).expect("insert"));
            write_record_file_at(&outside, b"untouched", 0o600);
            store.prepare();
            let prepared = store
                .dir()
                .join(LEASES)
                .join(&leftover_temp_files(&store)[0]);
            change(&prepared, &outside);
            let now = SystemTime::now();
            store
                .update(&id, |r| Change::when(r.revoke(now)))
                .expect("update");
            let placed = fs::symlink_metadata(record_path(&store, &id)).expect("record");
            assert!(placed.is_file(), "{what}");
            assert_eq!(placed.mode() & 0o7777, 0o600, "{what}");
            assert_eq!(placed.nlink(), 1, "{what}");
            assert!(
                matches!(store.load(&id).expect("load"), Loaded::Found(r) if r.revoked_at.is_some()),
                "{what}: the revoked record reads back whole"
            );
            // Nothing was written through to the file outside (which, linked, is the empty
            // prepared file itself).
            let expected: &[u8] = if what == "given a second name outside" {
                b""
            } else {
                b"untouched"
            };
            assert_eq!(fs::read(&outside).expect("outside"), expected, "{what}");
            // And the name it had is not left behind.
            assert_eq!(
                leftover_temp_files(&store),
                Vec::<OsString>::new(),
                "{what}"
            );
        }
    }

    #[test]
    fn a_record_decoded_ahead_stands_for_its_own_bytes_under_its_own_id_only() {
        let (_dir, store) = store();
        let token = Token::mint().expect("mint");
        let id = token.hash().id();
        assert!(store.insert(&record(&token)).expect("insert"));
        store.prepare();
        // The same bytes under another id's name are no record of that id.
        let other = Token::mint().expect("mint").hash().id();
        let bytes = fs::read(record_path(&store, &id)).expect("record");
        write_record_file(&store, &other, &bytes, 0o600);
        assert!(
            matches!(store.load(&other).expect("load"), Loaded::Corrupt(why) if why.contains("does not belong")),
            "a copy of the record under another name"
        );
        // Changed on disk by another process (a renew), the record is read as it now stands.
        let elsewhere = Files::open(store.dir(), Open::ExistingOnly).expect("store");
        let later = UNIX_EPOCH + Duration::from_secs(1_900_000_000);
        elsewhere
            .update(&id, |r| {
                r.expires_at = later;
                Change::Write(())
            })
            .expect("renewed");
        let mut seen = None;
        store
            .update(&id, |r| {
                seen = Some(r.expires_at);
                Change::Keep(())
            })
            .expect("read under the lock");
        assert_eq!(seen, Some(later));
        assert!(
            matches!(store.load(&id).expect("load"), Loaded::Found(r) if r.expires_at == later)
        );
        // Unchanged, it reads back as it was written.
        let token = Token::mint().expect("mint");
        let id = token.hash().id();
        assert!(store.insert(&record(&token)).expect("insert"));
        store.prepare();
        assert!(matches!(store.load(&id).expect("load"), Loaded::Found(r) if r == record(&token)));
    }

    #[test]
    fn a_spare_holding_more_than_the_record_is_cut_where_the_record_ends() {
        let (_dir, store) = store();
        let spare = store.dir().join(LEASES).join(SPARE);
        write_record_file_at(&spare, &[b'#'; 3000], 0o600);
        let token = Token::mint().expect("mint");
        let id = token.hash().id();
        assert!(store.insert(&record(&token)).expect("insert"));
        let text = fs::read_to_string(record_path(&store, &id)).expect("record");
        assert!(
            !text.contains('#'),
            "nothing of the spare's bytes is left: {text:?}"
        );
        assert!(matches!(store.load(&id).expect("load"), Loaded::Found(_)));
    }

    #[test]
    fn a_spare_that_is_not_a_private_file_of_ours_alone_is_removed_not_written_through() {
        use std::os::unix::fs::symlink;
        let (dir, store) = store();
        let spare = store.dir().join(LEASES).join(SPARE);
        let outside = dir.path().join("outside");
        // Each plants something at the spare's name (given first), maybe naming `outside`, and
        // returns what must stay open meanwhile.
        type Plant = fn(&Path, &Path) -> Option<File>;
        let plants: [(&str, Plant); 6] = [
            ("a symlink", |spare, outside| {
                symlink(outside, spare).expect("symlink");
                None
            }),
            ("a second name of another file", |spare, outside| {
                fs::hard_link(outside, spare).expect("link");
                None
            }),
            ("a file open to others", |spare, _| {
                write_record_file_at(spare, b"", 0o644);
                None
            }),
            ("a file its owner cannot read (0200)", |spare, _| {
                write_record_file_at(spare, b"", 0o200);
                None
            }),
            ("a FIFO with a reader", |spare, _| {
                nix::unistd::mkfifo(spare, Mode::S_IRUSR | Mode::S_IWUSR).expect("fifo");
                // With a reader, opening it to write would succeed: only the check stops it.
                let reader =
                    nix::fcntl::open(spare, OFlag::O_RDONLY | OFlag::O_NONBLOCK, Mode::empty())
                        .expect("reader");
                Some(File::from(reader))
            }),
            ("a directory", |spare, _| {
                fs::create_dir(spare).expect("dir");
                None
            }),
        ];
        for (what, plant) in plants {
            write_record_file_at(&outside, b"untouched", 0o600);
            let _held = plant(&spare, &outside);
            let token = Token::mint().expect("mint");
            let id = token.hash().id();
            assert!(store.insert(&record(&token)).expect("insert"), "{what}");
            assert!(
                matches!(store.load(&id).expect("load"), Loaded::Found(_)),
                "{what}: the record is written to a file of its own"
            );
            let mode = fs::symlink_metadata(record_path(&store, &id))
                .expect("record")
                .mode();
            assert_eq!(mode & 0o7777, 0o600, "{what}");
            assert_eq!(fs::read(&outside).expect("outside"), b"untouched", "{what}");
            assert!(fs::symlink_metadata(&spare).is_err(), "{what}: removed");
            assert_eq!(
                leftover_temp_files(&store),
                Vec::<OsString>::new(),
                "{what}"
            );
        }
    }

    #[test]
    fn a_missing_store_opened_existing_only_holds_nothing_and_creates_nothing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("a/b/state");
        let store = Files::open(&path, Open::ExistingOnly).expect("store");
        let id = Token::mint().expect("mint").hash().id();
        assert!(matches!(store.load(&id).expect("load"), Loaded::Missing));
        assert!(store.ids().expect("ids").is_empty());
        assert!(store.lock(&id).expect("lock").is_none());
        assert!(store.audit().read().expect("read").is_empty());
        store
            .audit()
            .append(&crate::audit::Event::new(
                crate::audit::EventKind::Denied,
                None,
            ))
            .expect("nothing to append to");
        assert!(!dir.path().join("a").exists());
        // Created, every missing directory on the way is private.
        let store = Files::open(&path, Open::CreateIfMissing).expect("store");
        for made in ["a", "a/b", "a/b/state", "a/b/state/leases"] {
            let mode = fs::metadata(dir.path().join(made)).expect(made).mode() & 0o777;
            assert_eq!(mode, 0o700, "{made}");
        }
        assert_eq!(store.dir(), path);
    }

    /// Opening `state` is refused because of `ancestor`, a directory further up its path.
    fn assert_refused_for(state: &Path, ancestor: &Path) {
        let err = Files::open(state, Open::ExistingOnly).expect_err("refused");
        let named = format!("the directory {} above it", ancestor.display());
        assert!(err.to_string().contains(&named), "{err}");
    }

    #[test]
    fn ancestors_writable_by_others_are_refused_unless_sticky() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("temp dir");
        let shared = dir.path().join("shared");
        fs::create_dir(&shared).expect("shared");
        let state = shared.join("state");
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o777)).expect("chmod");
        for mode in [Open::CreateIfMissing, Open::ExistingOnly] {
            let err = Files::open(&state, mode).expect_err("refused");
            assert_eq!(
                err.to_string(),
                format!(
                    "refusing state dir {}: its parent {} is writable by group or others (mode 777) and not sticky: run 'chmod go-w {}' or choose another --state-dir",
                    state.display(),
                    shared.display(),
                    shared.display()
                ),
                "{mode:?}"
            );
        }
        assert!(!state.exists(), "nothing was created under it");
        // Further up, the message names the directory above.
        let deeper = shared.join("x/state");
        assert_refused_for(&deeper, &shared);
        // Sticky, as /tmp is: others cannot rename or remove what is ours in it.
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o1777)).expect("chmod");
        Files::open(&state, Open::CreateIfMissing).expect("accepted");
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o775)).expect("chmod");
        let err = Files::open(&state, Open::ExistingOnly).expect_err("refused");
        assert!(err.to_string().contains("(mode 775)"), "{err}");
    }

    #[test]
    fn a_symlink_on_the_path_is_followed_and_checked_where_it_leads() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("temp dir");
        let real = dir.path().join("real");
        fs::create_dir(&real).expect("real");
        std::os::unix::fs::symlink("real", dir.path().join("link")).expect("symlink");
        let via_link = dir.path().join("link/state");
        let store = Files::open(&via_link, Open::CreateIfMissing).expect("store");
        assert_eq!(store.dir(), via_link, "the path as given");
        assert!(real.join("state/leases").is_dir());
        // Where the link leads is what is checked.
        fs::set_permissions(&real, fs::Permissions::from_mode(0o777)).expect("chmod");
        assert_refused_for(&via_link, &real);
        // The state dir itself may be a link to a private directory.
        fs::set_permissions(&real, fs::Permissions::from_mode(0o700)).expect("chmod");
        let linked = dir.path().join("linked-state");
        std::os::unix::fs::symlink(real.join("state"), &linked).expect("symlink");
        Files::open(&linked, Open::ExistingOnly).expect("store");
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
            write_record_file(&store, &id, &bytes, 0o600);
            match store.load(&id).expect("no I/O error") {
                Loaded::Found(record) => prop_assert_eq!(record.id, id),
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
            write_record_file(&store, &id, &text, 0o600);
            prop_assert!(!matches!(store.load(&id).expect("no I/O error"), Loaded::Missing));
        }
    }
}
