//! Starting the child: its command, the lease variables in its environment, and the signal
//! state it inherits.
#![allow(unsafe_code)]

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};

use nix::libc::c_int;

use crate::exit::{Exit, ExitError};
use crate::token::Token;

/// What to run and what to add to its environment.
#[derive(Debug)]
pub struct Spec<'a> {
    /// The program (looked up on `PATH` when it has no slash).
    pub program: &'a OsString,
    /// Its arguments.
    pub args: &'a [OsString],
    /// The variable that carries the token, and the token.
    pub secret: (&'a str, &'a Token),
    /// Other variables to set.
    pub set: Vec<(&'static str, &'a OsStr)>,
    /// Variables to remove.
    pub remove: Vec<String>,
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
    command.args(spec.args);
    for name in &spec.remove {
        command.env_remove(name);
    }
    for (name, value) in &spec.set {
        command.env(name, value);
    }
    let (name, token) = spec.secret;
    command.env(name, token.expose());
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
