//! Every way lease can end, and the exit status each one gives.
//!
//! One enum so that the mapping from outcome to status lives in one place: the numbers are
//! part of lease's public contract (see the README's "Exit codes" table).

use std::process;

/// How a lease invocation ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: success, or `verify` granted the action.
    Success,
    /// 1: `verify` denied the action, or `revoke` was given an unknown id.
    Denied,
    /// 2: a subcommand other than `run` failed or was used wrongly; `verify` cannot decide.
    Failure,
    /// 124: `lease run --on-expiry term|kill` ended the command because its lease expired.
    Expired,
    /// 125: `lease run` failed before (or instead of) running the command.
    RunFailure,
    /// 126: the command exists but cannot be executed.
    CannotExecute,
    /// 127: the command was not found.
    NotFound,
    /// The child exited with this code; lease exits with the same one.
    Child(i32),
    /// lease dies of this signal after cleaning up: the child died of it, or it arrived
    /// before the child could start.
    Signal(i32),
}

impl Exit {
    /// The numeric status a shell sees (`128 + N` for a death by signal N).
    pub fn code(self) -> i32 {
        match self {
            Exit::Success => 0,
            Exit::Denied => 1,
            Exit::Failure => 2,
            Exit::Expired => 124,
            Exit::RunFailure => 125,
            Exit::CannotExecute => 126,
            Exit::NotFound => 127,
            Exit::Child(code) => code,
            Exit::Signal(signal) => 128 + signal,
        }
    }

    /// Ends the process with this outcome. A child's death by signal is re-raised so that the
    /// caller sees a real signal death, not just the number 128 + N.
    pub fn terminate(self) -> ! {
        if let Exit::Signal(signal) = self {
            crate::signals::die_of(signal);
        }
        process::exit(self.code())
    }
}

/// An error that decides lease's exit status itself, such as a command that is not found
/// (127). Other errors exit 125 from `run` and 2 from every other subcommand.
#[derive(Debug)]
pub struct ExitError {
    exit: Exit,
    message: String,
}

impl ExitError {
    /// An error with its own exit status.
    pub fn new(exit: Exit, message: impl Into<String>) -> ExitError {
        ExitError {
            exit,
            message: message.into(),
        }
    }

    /// The status this error ends lease with.
    pub fn exit(&self) -> Exit {
        self.exit
    }
}

impl std::fmt::Display for ExitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ExitError {}

#[cfg(test)]
mod tests {
    use super::Exit;

    #[test]
    fn each_outcome_has_its_documented_status() {
        let statuses = [
            (Exit::Success, 0),
            (Exit::Denied, 1),
            (Exit::Failure, 2),
            (Exit::Expired, 124),
            (Exit::RunFailure, 125),
            (Exit::CannotExecute, 126),
            (Exit::NotFound, 127),
            (Exit::Child(3), 3),
            (Exit::Signal(15), 143),
            (Exit::Signal(28), 156),
        ];
        for (exit, status) in statuses {
            assert_eq!(exit.code(), status, "{exit:?}");
        }
    }
}
