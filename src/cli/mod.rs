//! The command line: clap definitions ([`args`]), their translation into validated requests
//! ([`translate`], [`values`]), and clap's errors rewritten into one line ([`errors`]).
//!
//! Nothing clap-specific leaves this module: [`parse`] returns an [`Invocation`] of domain
//! values (scopes, durations, actions, see [`crate::request`]) that the commands use without
//! checking again.

mod args;
mod errors;
mod translate;
mod values;

use std::ffi::OsString;

use clap::Parser;

use args::Cli;
use errors::{reject, usage_exit};
use translate::validate;

use crate::exit::Exit;
pub use crate::request::{
    Command, EnvRequest, Globals, Invocation, IssueRequest, ManPage, RenewRequest, RevokeTarget,
    RunMode, RunRequest, Shell, TokenSource, VerifyRequest,
};

/// Why the command line did not produce an [`Invocation`].
#[derive(Debug)]
pub enum Rejected {
    /// Help or version was asked for: print this on stdout and exit 0.
    Info(String),
    /// Help shown because something is missing: print this on stderr and exit with this status.
    Help(String, Exit),
    /// The arguments are wrong: print this one-line message and exit with this status.
    Usage(String, Exit),
}

/// Parses and validates the command line.
pub fn parse(args: Vec<OsString>) -> Result<Invocation, Rejected> {
    let failure = usage_exit(&args);
    if args.len() <= 1 {
        use clap::CommandFactory;
        return Err(Rejected::Help(
            Cli::command().render_help().to_string(),
            failure,
        ));
    }
    let cli = Cli::try_parse_from(&args).map_err(|err| reject(&err, &args, failure))?;
    let globals = Globals {
        state_dir: cli.state_dir.filter(|p| !p.as_os_str().is_empty()),
        config: cli.config.filter(|p| !p.as_os_str().is_empty()),
        verbose: cli.verbose,
    };
    let command =
        validate(cli.command).map_err(|err| Rejected::Usage(format!("{err:#}"), failure))?;
    Ok(Invocation { globals, command })
}

/// The full clap command, for completions and the man page.
pub fn command() -> clap::Command {
    use clap::CommandFactory;
    Cli::command()
}

#[cfg(test)]
mod tests {
    use super::errors::subcommand_name;
    use super::*;

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn finds_the_subcommand_past_global_options() {
        assert_eq!(
            subcommand_name(&args(&["lease", "--state-dir", "run", "verify", "x"])),
            Some("verify")
        );
        assert_eq!(
            subcommand_name(&args(&["lease", "--state-dir=/x", "run"])),
            Some("run")
        );
        assert_eq!(subcommand_name(&args(&["lease"])), None);
    }

    #[test]
    fn bad_run_arguments_exit_125_in_one_line() {
        for bad in [
            &["lease", "run", "--scope", "a", "echo"][..],
            &["lease", "run", "--scope", "a b", "--", "echo"],
            &["lease", "run", "--scope", "a", "--ttl", "0", "--", "echo"],
            &["lease", "run", "--bogus", "--scope", "a", "--", "echo"],
        ] {
            match parse(args(bad)) {
                Err(Rejected::Usage(message, exit)) => {
                    assert_eq!(exit, Exit::RunFailure, "{bad:?}");
                    assert!(!message.contains('\n'), "{bad:?}: {message}");
                }
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn usage_errors_suggest_the_right_fix() {
        let message = |list: &[&str]| match parse(args(list)) {
            Err(Rejected::Usage(message, _)) => message,
            other => panic!("{list:?} gave {other:?}"),
        };
        let bogus = message(&["lease", "run", "--bogus", "--scope", "a"]);
        assert!(
            !bogus.contains("put `--`") && !bogus.contains("'-- --bogus'"),
            "{bogus}"
        );
        let typo = message(&["lease", "run", "--scop", "a", "--", "true"]);
        assert!(
            typo.contains("a similar argument exists: '--scope'"),
            "{typo}"
        );
        let no_command = message(&["lease", "run", "--scope", "a"]);
        assert!(
            no_command.contains("<CMD>") && no_command.contains("put `--` before the command"),
            "{no_command}"
        );
    }

    #[test]
    fn missing_separator_says_how_to_fix_it() {
        match parse(args(&["lease", "run", "--scope", "a", "echo", "hi"])) {
            Err(Rejected::Usage(message, _)) => {
                assert!(message.contains("put `--` before the command"), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }
}
