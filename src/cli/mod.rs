//! The command line: clap definitions ([`args`]), their translation into validated requests
//! ([`translate`], [`values`]), and clap's errors rewritten into one line ([`errors`]). The
//! usual lines of `run` and `verify` are read without clap ([`fast`]), into the same structs.
//!
//! Nothing clap-specific leaves this module: [`parse`] returns an [`Invocation`] of domain
//! values (scopes, durations, actions, see [`crate::request`]) that the commands use without
//! checking again.

mod args;
pub mod docs;
mod errors;
mod fast;
mod translate;
mod values;

use std::ffi::OsString;

use clap::{CommandFactory, FromArgMatches};

use args::Cli;
use errors::reject;
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
    /// The same for `verify --json`, whose caller reads an answer on stdout whatever happens:
    /// `{"granted": false, "reason": "error", ...}` goes there first.
    UsageInJson(String, Exit),
}

/// Why an empty `flag` (or its variable, `from_env`) is refused.
fn empty_path(flag: &str, from_env: bool) -> String {
    let (variable, what) = match flag {
        "--state-dir" => ("LEASE_STATE_DIR", "a directory"),
        _ => ("LEASE_CONFIG", "a file"),
    };
    if from_env {
        format!("{variable} is set but empty: unset it, or give {what}")
    } else {
        format!("{flag} is empty: give {what}, or leave {flag} out")
    }
}

/// Parses and validates the command line.
pub fn parse(args: Vec<OsString>) -> Result<Invocation, Rejected> {
    parse_args(&args).map_err(|rejected| match rejected {
        Rejected::Usage(message, exit) if errors::asks_verify_json(&args) => {
            Rejected::UsageInJson(message, exit)
        }
        other => other,
    })
}

fn parse_args(args: &[OsString]) -> Result<Invocation, Rejected> {
    if args.len() <= 1 {
        return Err(Rejected::Help(
            Cli::command().render_help().to_string(),
            failure_exit(None),
        ));
    }
    // An empty path, on the command line (`--config "$UNSET"`) or in LEASE_STATE_DIR or
    // LEASE_CONFIG, names nothing: refused (no fallback to the default, which could be another
    // policy or store), naming where it came from.
    let (cli, failure, empty_given) = match fast::parse(args) {
        Some(cli) => {
            let failure = failure_exit(match cli.command {
                args::Sub::Run(_) => Some("run"),
                args::Sub::Verify(_) => Some("verify"),
                _ => None,
            });
            // The fast parse leaves every empty path, given or in a variable, to clap.
            (cli, failure, None)
        }
        None => {
            let mut definition = Cli::command();
            let mut matches = definition
                .try_get_matches_from_mut(args)
                .map_err(|err| reject(&err, args))?;
            // Freeing the definition's few hundred small allocations cost 4-7% of a short
            // run's instructions (callgrind); lease exits soon or waits on its command, so it
            // is left to the end of the process.
            std::mem::forget(definition);
            let failure = failure_exit(matches.subcommand_name());
            let given = [("state_dir", "--state-dir"), ("config", "--config")]
                .into_iter()
                .find(|(id, _)| {
                    matches
                        .get_one::<std::path::PathBuf>(id)
                        .is_some_and(|p| p.as_os_str().is_empty())
                })
                .map(|(id, flag)| {
                    let from_env =
                        matches.value_source(id) == Some(clap::parser::ValueSource::EnvVariable);
                    empty_path(flag, from_env)
                })
                // An empty LEASE_BROKER means no broker (`env LEASE_BROKER= lease ...` leaves
                // one); an empty `--broker` on the command line is a mistake (`--broker
                // "$UNSET"`), which must not fall back to the local store.
                .or_else(|| {
                    let empty = matches
                        .get_one::<String>("broker")
                        .is_some_and(String::is_empty);
                    let given = matches.value_source("broker")
                        == Some(clap::parser::ValueSource::CommandLine);
                    (empty && given).then(|| {
                        "--broker is empty: give a broker's URL (unix:/path, http://HOST:PORT, https://HOST:PORT), or leave --broker out".to_owned()
                    })
                });
            let cli = Cli::from_arg_matches_mut(&mut matches).map_err(|err| reject(&err, args))?;
            (cli, failure, given)
        }
    };
    if let Some(why) = empty_given {
        return Err(Rejected::Usage(why, failure));
    }
    let usage = |err: anyhow::Error| Rejected::Usage(format!("{err:#}"), failure);
    for path in [&cli.state_dir, &cli.config].into_iter().flatten() {
        values::not_a_whole_token(
            &path.to_string_lossy(),
            "a path",
            "--state-dir, --config, LEASE_STATE_DIR and LEASE_CONFIG name a directory or a file",
        )
        .map_err(usage)?;
    }
    let broker = match cli.broker.as_deref().filter(|b| !b.is_empty()) {
        Some(text) => Some(
            crate::endpoint::Endpoint::parse(text)
                .map_err(|err| anyhow::anyhow!("--broker/LEASE_BROKER: {err:#}"))
                .map_err(usage)?,
        ),
        None => None,
    };
    let globals = Globals {
        state_dir: cli.state_dir.filter(|p| !p.as_os_str().is_empty()),
        config: cli.config.filter(|p| !p.as_os_str().is_empty()),
        verbose: cli.verbose,
        broker,
    };
    let command = validate(cli.command).map_err(usage)?;
    Ok(Invocation {
        globals,
        command,
        failure,
    })
}

/// How lease exits when it fails for the subcommand clap found (`None`: no subcommand):
/// `run` reports its own failures with 125, so that they cannot be mistaken for the
/// command's; every other subcommand uses 2.
fn failure_exit(subcommand: Option<&str>) -> Exit {
    if subcommand == Some("run") {
        Exit::RunFailure
    } else {
        Exit::Failure
    }
}

/// The full clap command, for completions and the man page.
pub fn command() -> clap::Command {
    Cli::command()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn failures_exit_as_the_subcommand_clap_found_past_global_options() {
        let exit = |list: &[&str]| match parse(args(list)) {
            Err(Rejected::Usage(_, exit) | Rejected::Help(_, exit)) => exit,
            other => panic!("{list:?} gave {other:?}"),
        };
        assert_eq!(
            exit(&["lease", "--state-dir", "run", "verify", "a b"]),
            Exit::Failure
        );
        assert_eq!(
            exit(&["lease", "--state-dir=/x", "run", "--bogus"]),
            Exit::RunFailure
        );
        assert_eq!(
            exit(&["lease", "-v", "--config", "c", "run", "--scope", "a"]),
            Exit::RunFailure
        );
        assert_eq!(exit(&["lease", "--state-dir", "run"]), Exit::Failure);
        assert_eq!(exit(&["lease"]), Exit::Failure);
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
