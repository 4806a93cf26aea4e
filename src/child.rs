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

/// The command's environment: what `rules` let through of `inherited`, less anything holding a
/// lease token, then the lease's own variables (which no rule removes), sorted by name.
pub fn environment(
    inherited: impl IntoIterator<Item = (OsString, OsString)>,
    rules: &EnvRules<'_>,
    lease: Vec<(OsString, OsString)>,
) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = inherited
        .into_iter()
        .filter(|(name, _)| rules.passes(name))
        // The command gets one lease token, its own: any other (a parent's, copied under
        // another name) stays behind.
        .filter(|(_, value)| !value.to_str().is_some_and(crate::token::is_token_shaped))
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
/// On Linux the child is told when lease dies: `PR_SET_PDEATHSIG` sends it SIGTERM if lease is
/// killed (even with SIGKILL) before it, so a killed wrapper leaves no unnoticed child. Call
/// from the main thread: the kernel ties the death signal to the thread that forked.
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
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe system
    // calls (sigaction, prctl, getppid); it allocates nothing (`ignore` was built before the
    // fork, and the error it may return is a raw OS error).
    unsafe {
        command.pre_exec(move || {
            crate::signals::ignore_after_fork(&ignore);
            die_with(lease_pid)
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

/// Asks the kernel to send SIGTERM to this (forked) process when lease dies, then closes the
/// race where lease died before the request: the parent is then no longer `lease_pid`, and the
/// command is not started at all.
#[cfg(target_os = "linux")]
fn die_with(lease_pid: nix::unistd::Pid) -> io::Result<()> {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)?;
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
