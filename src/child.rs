//! Starting the child: its command, the lease variables in its environment, and the signal
//! state it inherits.
#![allow(unsafe_code)]

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

use nix::libc::c_int;

use crate::exit::{Exit, ExitError};

/// What to run, in which environment.
#[derive(Debug)]
pub struct Spec<'a> {
    /// The program (looked up on `PATH` when it has no slash).
    pub program: &'a OsStr,
    /// Its arguments.
    pub args: &'a [OsString],
    /// Its complete environment (see [`environment`]).
    pub env: Vec<(OsString, OsString)>,
    /// Whether its stdout and stderr are pipes to lease (`--mask`) instead of lease's own.
    pub mask: bool,
}

/// How the command's environment is made from lease's own.
#[derive(Debug, Default)]
pub struct EnvRules<'a> {
    /// Start from nothing but `keep` (`--clean-env`).
    pub clean: bool,
    /// Variables kept by `--clean-env`.
    pub keep: &'a [String],
    /// Variables removed by name pattern (`--scrub`, `scrub_env`).
    pub scrub: Vec<&'a glob::Pattern>,
    /// Variables removed by name (an inherited token under the usual names).
    pub remove: Vec<&'a str>,
}

impl EnvRules<'_> {
    fn passes(&self, name: &OsStr) -> bool {
        let text = name.to_string_lossy();
        if self.clean {
            return self.keep.iter().any(|k| *k == text);
        }
        !self.remove.iter().any(|r| *r == text) && !self.scrub.iter().any(|p| p.matches(&text))
    }
}

/// The command's environment: what `rules` let through of `inherited`, then the lease's own
/// variables (which no rule removes), sorted by name.
pub fn environment(
    inherited: impl IntoIterator<Item = (OsString, OsString)>,
    rules: &EnvRules<'_>,
    lease: Vec<(OsString, OsString)>,
) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = inherited
        .into_iter()
        .filter(|(name, _)| rules.passes(name))
        .filter(|(name, _)| !lease.iter().any(|(own, _)| own == name))
        .collect();
    env.extend(lease);
    env.sort();
    env
}

/// Starts the child. It stays in lease's process group and session, so it keeps the terminal;
/// its signal mask is empty (the standard library resets it) and `ignore` lists the signals
/// that must be ignored again because they were when lease started.
///
/// On Linux the child is told when lease dies: `PR_SET_PDEATHSIG` sends it SIGTERM (SIGKILL if
/// lease started with SIGTERM ignored) if lease is killed (even with SIGKILL) before it, so a
/// killed wrapper leaves no unnoticed child. The signal is armed after lease's handlers are
/// removed in the child, so that it ends the child even before exec. Call from the main
/// thread: the kernel ties the death signal to the thread that forked.
///
/// A program that is not found gives exit 127; one that cannot be executed, 126.
pub fn spawn(spec: Spec<'_>, ignore: &[c_int]) -> anyhow::Result<Child> {
    let mut command = Command::new(spec.program);
    command.args(spec.args).env_clear().envs(spec.env);
    if spec.mask {
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
    }
    let ignore = ignore.to_vec();
    let lease_pid = nix::unistd::getpid();
    // Debug builds only: lets the test suite kill lease while the child sits between arming
    // the death signal and exec, the window a random kill rarely hits.
    #[cfg(debug_assertions)]
    let hold_before_exec = std::env::var_os("LEASE_DEBUG_HOLD_BEFORE_EXEC").is_some();
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe system
    // calls (sigaction, prctl, getppid, nanosleep); it allocates nothing (`ignore` was built
    // before the fork, and the error it may return is a raw OS error).
    unsafe {
        command.pre_exec(move || {
            // lease's handlers are still installed in the fork: a death signal arriving before
            // exec would run one of them and exec would go ahead. Back to the defaults first.
            restore_default_handlers();
            crate::signals::ignore_after_fork(&ignore);
            die_with(lease_pid)?;
            #[cfg(debug_assertions)]
            if hold_before_exec {
                hold_while_parent_is(lease_pid);
            }
            Ok(())
        });
    }
    command.spawn().map_err(|err| {
        let program = spec.program.to_string_lossy();
        let (exit, why) = match err.kind() {
            io::ErrorKind::NotFound => (Exit::NotFound, "command not found".to_owned()),
            io::ErrorKind::PermissionDenied => {
                (Exit::CannotExecute, "permission denied".to_owned())
            }
            _ => (Exit::CannotExecute, err.to_string()),
        };
        ExitError::new(exit, format!("cannot run '{program}': {why}")).into()
    })
}

/// Sets every signal that has a handler back to its default disposition, as exec would; ignored
/// signals stay ignored. Call between fork and exec only.
fn restore_default_handlers() {
    // Signal numbers run from 1 to 64 on Linux; sigaction refuses the few it reserves
    // (SIGKILL, SIGSTOP, libc's own), which is harmless here.
    for signal in 1..=64 {
        let mut old = std::mem::MaybeUninit::<nix::libc::sigaction>::zeroed();
        // SAFETY: a null new action only reads the disposition into `old`, a valid, writable
        // sigaction; sigaction is async-signal-safe.
        let rc = unsafe { nix::libc::sigaction(signal, std::ptr::null(), old.as_mut_ptr()) };
        // SAFETY: sigaction returned 0, so it filled `old` (which was zeroed to begin with).
        let handler = if rc == 0 {
            unsafe { old.assume_init() }.sa_sigaction
        } else {
            nix::libc::SIG_DFL
        };
        if handler != nix::libc::SIG_DFL && handler != nix::libc::SIG_IGN {
            // SAFETY: an all-zero sigaction is valid: empty mask, no flags, SIG_DFL.
            let default: nix::libc::sigaction = unsafe { std::mem::zeroed() };
            // SAFETY: `default` is a valid sigaction; a null old-action pointer is allowed.
            unsafe { nix::libc::sigaction(signal, &default, std::ptr::null_mut()) };
        }
    }
}

/// The signal that tells the child lease died: SIGTERM, so that it can clean up, unless the
/// child has SIGTERM ignored (lease was started with it ignored): then SIGKILL, since an
/// ignored death signal would leave it running. Call between fork and exec only.
#[cfg(target_os = "linux")]
fn death_signal() -> nix::sys::signal::Signal {
    let mut old = std::mem::MaybeUninit::<nix::libc::sigaction>::zeroed();
    // SAFETY: as in `restore_default_handlers`: a query into a valid, writable sigaction.
    let rc =
        unsafe { nix::libc::sigaction(nix::libc::SIGTERM, std::ptr::null(), old.as_mut_ptr()) };
    // SAFETY: sigaction returned 0, so it filled `old`.
    if rc == 0 && unsafe { old.assume_init() }.sa_sigaction == nix::libc::SIG_IGN {
        nix::sys::signal::Signal::SIGKILL
    } else {
        nix::sys::signal::Signal::SIGTERM
    }
}

/// Asks the kernel to signal this (forked) process when lease dies (see [`death_signal`]),
/// then closes the race where lease died before the request: the parent is then no longer
/// `lease_pid`, and the command is not started at all.
#[cfg(target_os = "linux")]
fn die_with(lease_pid: nix::unistd::Pid) -> io::Result<()> {
    nix::sys::prctl::set_pdeathsig(death_signal())?;
    if nix::unistd::getppid() != lease_pid {
        return Err(io::Error::from_raw_os_error(nix::libc::ESRCH));
    }
    Ok(())
}

/// Elsewhere there is no parent-death signal; the owner check still denies the token of a
/// killed wrapper (see docs/security.md).
#[cfg(not(target_os = "linux"))]
fn die_with(_lease_pid: nix::unistd::Pid) -> io::Result<()> {
    Ok(())
}

/// Debug builds only (`LEASE_DEBUG_HOLD_BEFORE_EXEC`): waits, at most 10 s, until lease is no
/// longer this process's parent, then lets exec go ahead. A child still alive by then has
/// survived its wrapper's death. Call between fork and exec only.
#[cfg(debug_assertions)]
fn hold_while_parent_is(lease_pid: nix::unistd::Pid) {
    for _ in 0..10_000 {
        if nix::unistd::getppid() != lease_pid {
            return;
        }
        // nanosleep, async-signal-safe.
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}
