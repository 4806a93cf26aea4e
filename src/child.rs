//! Starting the child: its command, the lease variables in its environment, and the signal
//! state it inherits.
#![allow(unsafe_code)]

use std::ffi::OsString;
use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};

use nix::libc::c_int;

use crate::exit::{Exit, ExitError};

/// What to run and what to add to its environment.
#[derive(Debug)]
pub struct Spec<'a> {
    /// The program (looked up on `PATH` when it has no slash).
    pub program: &'a OsString,
    /// Its arguments.
    pub args: &'a [OsString],
    /// Variables to set.
    pub set: Vec<(String, String)>,
    /// Variables to remove.
    pub remove: Vec<String>,
}

/// Starts the child. It stays in lease's process group and session, so it keeps the terminal;
/// its signal mask is empty (the standard library resets it) and `ignore` lists the signals
/// that must be ignored again because they were when lease started.
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
    let ignore = ignore.to_vec();
    // SAFETY: the closure runs between fork and exec and only calls sigaction, which is
    // async-signal-safe; it allocates nothing (`ignore` was built before the fork).
    unsafe {
        command.pre_exec(move || {
            crate::signals::ignore_after_fork(&ignore);
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
