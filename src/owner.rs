//! Who owns a lease, and whether that owner is still alive.
//!
//! A lease made by `lease run` belongs to that process. Its record holds the owner's pid, the
//! pid's start time (so a recycled pid is not mistaken for the owner) and the boot id (so a
//! record from before a reboot is never mistaken for a live one). `verify` denies a lease whose
//! owner is gone, which is how a wrapper killed with SIGKILL leaves no live token behind.

use std::fs;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// The process that owns a lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Owner {
    /// The pid of the `lease run` process.
    pub pid: u32,
    /// The process start time, in clock ticks since boot (field 22 of `/proc/PID/stat`).
    pub start_time: u64,
    /// The kernel's boot id at the time the lease was made.
    pub boot_id: String,
    /// The program the lease was made for (argv[0] only: arguments may hold secrets).
    pub command: String,
    /// The pid of that command, the process `lease run` started (recorded before it runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_pid: Option<u32>,
    /// The command's start time, as for `start_time`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_start_time: Option<u64>,
    /// The owner is a broker (`lease serve`) holding the run's connection: `pid` and
    /// `start_time` are the broker's, and the run (maybe on another host) is alive while its
    /// connection is.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub broker: bool,
    /// For a broker's run: the SHA-256 of the secret its wrapper (and only its wrapper: the
    /// command never sees it) proves to re-attach the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_sha256: Option<String>,
    /// For a broker's run: the pid of its wrapper (`lease run`), as the broker saw it on its
    /// socket or the wrapper said it over TCP (a pid on the wrapper's host). What `list`
    /// shows, as it shows a local run's; never used to tell whether the run is alive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_pid: Option<u32>,
    /// For a broker's run on a store shared by several brokers: whether a broker holds the run
    /// now, as the store tells it (set when the record is read, never stored). `None`: ask
    /// this machine's process table.
    #[serde(skip)]
    pub held: Option<Held>,
}

/// Who holds a broker's run, as a store shared by several brokers tells it: the run's hold,
/// which dies with the holding broker's session in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// This broker holds it.
    Here,
    /// Another broker holds it (alive as far as the store knows).
    Elsewhere,
    /// No broker: the one that held it stopped (its session expired) or let it go.
    Nowhere,
}

/// What of a lease's owner is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gone {
    /// The machine restarted since the lease was made.
    Rebooted,
    /// The `lease run` process (or what the record says of the command cannot be checked).
    Wrapper,
    /// The command the lease was made for, with its pid.
    Command(u32),
    /// No broker holds the run any more (a store shared by several brokers says so).
    Unheld,
}

/// Whether the owner of a lease is still running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnerState {
    /// The owning process is running.
    Alive,
    /// The owning process has exited, or the machine has rebooted since.
    Gone,
}

impl Owner {
    /// The pid of the `lease run` that owns the lease: this one's, or for a broker's run its
    /// wrapper's.
    pub fn run_pid(&self) -> u32 {
        match self.run_pid {
            Some(pid) if self.broker => pid,
            _ => self.pid,
        }
    }

    /// Describes the current process as the owner of a lease made for `command`.
    pub fn current(command: String) -> Result<Owner> {
        let pid = std::process::id();
        let start_time = start_time(pid)
            .with_context(|| format!("reading the start time of process {pid}"))?
            .context("the current process has no /proc entry")?;
        Ok(Owner {
            pid,
            start_time,
            boot_id: boot_id()?,
            command,
            command_pid: None,
            command_start_time: None,
            broker: false,
            hold_sha256: None,
            run_pid: None,
            held: None,
        })
    }

    /// The current process (a broker) as the owner of a run it holds the connection of.
    pub fn broker(command: String) -> Result<Owner> {
        Ok(Owner {
            broker: true,
            ..Owner::current(command)?
        })
    }

    /// Whether this owner is the current process (on a shared store: this broker holds the
    /// run).
    pub fn is_current(&self) -> bool {
        if let Some(held) = self.held {
            return held == Held::Here;
        }
        self.pid == std::process::id()
            && start_time(self.pid).is_ok_and(|t| t == Some(self.start_time))
    }

    /// The same owner, running the command with this pid (started, and not yet reaped).
    pub fn running(mut self, command_pid: u32) -> Result<Owner> {
        let start_time = start_time(command_pid)
            .with_context(|| format!("reading the start time of process {command_pid}"))?
            .with_context(|| format!("the command (pid {command_pid}) is already gone"))?;
        self.command_pid = Some(command_pid);
        self.command_start_time = Some(start_time);
        Ok(self)
    }

    /// Whether the owner is still running, and the command it started too (once that command
    /// has exited, its lease is over even if `lease run` could not yet say so: it may be
    /// stopped, or blocked by a lock another process holds). Anything that cannot be confirmed
    /// counts as gone, so that verify fails closed.
    pub fn state(&self) -> OwnerState {
        if self.gone().is_none() {
            OwnerState::Alive
        } else {
            OwnerState::Gone
        }
    }

    /// Whether the run is ending: its command has exited, and its `lease run`, which revokes
    /// the lease next, still runs. The lease is over (`state` says gone), but its record is
    /// not gc's to remove: the run's revoke is on its way.
    pub fn ending(&self) -> bool {
        matches!(self.gone(), Some(Gone::Command(_)))
    }

    /// Why the owner counts as gone, as a sentence about lease `id`; `None` while it runs.
    pub fn gone_because(&self, id: &str) -> Option<String> {
        let pid = self.pid;
        Some(match self.gone()? {
            Gone::Rebooted => format!(
                "the lease run (pid {pid}) that owned lease {id} ran before the machine restarted"
            ),
            Gone::Wrapper if self.broker => format!(
                "the broker (pid {pid}) that held lease {id}'s run has stopped, and the run has not come back to it"
            ),
            Gone::Wrapper => format!("the lease run (pid {pid}) that owned lease {id} has ended"),
            Gone::Unheld => format!(
                "no broker holds lease {id}'s run any more: its broker stopped, and the run has not come back to another"
            ),
            Gone::Command(command) => {
                format!("the command (pid {command}) that lease {id} was made for has exited")
            }
        })
    }

    fn gone(&self) -> Option<Gone> {
        // On a shared store the run's hold is the truth: the broker may be on another host.
        if let Some(held) = self.held.filter(|_| self.broker) {
            return (held == Held::Nowhere).then_some(Gone::Unheld);
        }
        let alive = |pid, started| matches!(start_time(pid), Ok(Some(t)) if t == started);
        if !boot_id().is_ok_and(|id| id == self.boot_id) {
            return Some(Gone::Rebooted);
        }
        if !alive(self.pid, self.start_time) {
            return Some(Gone::Wrapper);
        }
        match (self.command_pid, self.command_start_time) {
            (Some(pid), Some(started)) if !alive(pid, started) => Some(Gone::Command(pid)),
            (Some(_), None) | (None, Some(_)) => Some(Gone::Wrapper),
            _ => None,
        }
    }
}

/// The effective uid lease runs as, read once: lease never changes it, and the store checks it
/// against every file it opens.
pub fn euid() -> u32 {
    static EUID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *EUID.get_or_init(|| nix::unistd::geteuid().as_raw())
}

/// A small file of /proc, whole: in two reads (the text, then its end). `fs::read_to_string`
/// asks first for a size, which /proc files do not have, then reads in pieces from 32 bytes
/// up: six reads and a `statx` for a process's `stat`, three times in every run.
pub fn read_proc(path: &str) -> std::io::Result<String> {
    use std::io::Read as _;
    let mut file = fs::File::open(path)?;
    let mut text = Vec::new();
    let mut piece = [0u8; 1024];
    loop {
        match file.read(&mut piece)? {
            0 => break,
            read => text.extend_from_slice(&piece[..read]),
        }
    }
    String::from_utf8(text).map_err(|err| std::io::Error::new(std::io::ErrorKind::InvalidData, err))
}

/// How someone other than the user could change a file or directory, by OpenSSH's StrictModes
/// rule: it belongs to another user than the user or root, or group or others may write it
/// (a sticky directory excepted, as `/tmp` is: there others cannot replace what is not theirs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenToOthers {
    /// Owned by this uid.
    Owner(u32),
    /// Writable by group or others, with these permission bits.
    Writable(u32),
}

/// Whether someone other than the user could change what `meta` describes.
pub fn open_to_others(meta: &fs::Metadata) -> Option<OpenToOthers> {
    use std::os::unix::fs::MetadataExt;
    let me = euid();
    if meta.uid() != me && meta.uid() != 0 {
        return Some(OpenToOthers::Owner(meta.uid()));
    }
    let perms = meta.mode() & 0o7777;
    let sticky_dir = meta.is_dir() && perms & 0o1000 != 0;
    (perms & 0o022 != 0 && !sticky_dir).then_some(OpenToOthers::Writable(perms))
}

/// Whether a process with this pid is running (not a zombie).
pub fn is_running(pid: u32) -> bool {
    matches!(start_time(pid), Ok(Some(_)))
}

/// The start time of a running process, or `None` if there is no such live process (a zombie
/// counts as gone: it has exited, only its exit status is left).
#[cfg(target_os = "linux")]
fn start_time(pid: u32) -> Result<Option<u64>> {
    let stat = match read_proc(&format!("/proc/{pid}/stat")) {
        Ok(stat) => stat,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err.into()),
    };
    // The command name (field 2) is in parentheses and may hold spaces or ')'; the fields we
    // want come after the last ')'. Field 3 is the state, field 22 the start time.
    let rest = stat
        .rfind(')')
        .map(|end| &stat[end + 1..])
        .context("unexpected /proc stat format")?;
    // The fields are ASCII, one space apart (an ASCII split: the Unicode-aware one cost a run
    // about 30,000 more instructions).
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    // A zombie has exited; but a thread-group leader that called pthread_exit shows as a zombie
    // while its other threads run on (field 20, the thread count, says so): that process runs.
    let threads = fields
        .get(17)
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    if fields
        .first()
        .is_some_and(|state| *state == "X" || (*state == "Z" && threads <= 1))
    {
        return Ok(None);
    }
    match fields.get(19).map(|t| t.parse::<u64>()) {
        Some(Ok(ticks)) => Ok(Some(ticks)),
        _ => bail!("unexpected /proc stat format"),
    }
}

/// Without /proc, a process counts as alive while a signal 0 can reach it; start time is 0.
#[cfg(not(target_os = "linux"))]
fn start_time(pid: u32) -> Result<Option<u64>> {
    use nix::{errno::Errno, sys::signal::kill, unistd::Pid};
    let pid = i32::try_from(pid).context("pid out of range")?;
    match kill(Pid::from_raw(pid), None) {
        Ok(()) | Err(Errno::EPERM) => Ok(Some(0)),
        Err(_) => Ok(None),
    }
}

#[cfg(target_os = "linux")]
fn boot_id() -> Result<String> {
    let id = read_proc("/proc/sys/kernel/random/boot_id")
        .context("reading /proc/sys/kernel/random/boot_id")?;
    Ok(id.trim().to_owned())
}

#[cfg(not(target_os = "linux"))]
fn boot_id() -> Result<String> {
    Ok(String::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_process_is_alive() {
        let owner = Owner::current("test".into()).expect("owner");
        assert_eq!(owner.state(), OwnerState::Alive);
    }

    #[test]
    fn a_lease_whose_command_has_exited_is_gone_and_says_so() {
        let mut command = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn");
        let pid = command.id();
        let owner = Owner::current("test".into())
            .expect("owner")
            .running(pid)
            .expect("the command runs");
        assert_eq!(owner.state(), OwnerState::Alive);
        command.kill().expect("kill");
        command.wait().expect("wait");
        assert_eq!(owner.state(), OwnerState::Gone);
        assert_eq!(
            owner.gone_because("0123456789ab").as_deref(),
            Some(
                format!("the command (pid {pid}) that lease 0123456789ab was made for has exited")
                    .as_str()
            )
        );
        let lease_itself = Owner::current("test".into()).expect("owner");
        assert_eq!(lease_itself.gone_because("0123456789ab"), None);
    }

    #[test]
    fn recycled_pid_or_other_boot_is_gone() {
        let owner = Owner::current("test".into()).expect("owner");
        let recycled = Owner {
            start_time: owner.start_time + 1,
            ..owner.clone()
        };
        assert_eq!(recycled.state(), OwnerState::Gone);
        let rebooted = Owner {
            boot_id: "another-boot".into(),
            ..owner
        };
        assert_eq!(rebooted.state(), OwnerState::Gone);
    }

    /// The boot id recorded is the kernel's, not some constant: a constant would be the same
    /// before and after a reboot, and a record from before one would pass as alive.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_boot_id_recorded_is_the_kernels() {
        let kernels = fs::read_to_string("/proc/sys/kernel/random/boot_id").expect("boot id");
        let owner = Owner::current("test".into()).expect("owner");
        assert_eq!(owner.boot_id, kernels.trim());
        assert_eq!(owner.boot_id.len(), 36, "a UUID: {}", owner.boot_id);
    }
}
