//! clap's errors rewritten into one line: what is wrong, and how to fix it.

use std::ffi::OsString;

use clap::CommandFactory;
use clap::error::ErrorKind;

use super::args::Cli;
use super::{Rejected, failure_exit};

/// Turns a clap error into one line: what is wrong, and how to fix it.
pub(super) fn reject(err: &clap::Error, args: &[OsString]) -> Rejected {
    if matches!(
        err.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
    ) {
        return Rejected::Info(err.render().to_string());
    }
    let found = failed_subcommand(args);
    let failure = failure_exit(found.as_deref());
    if err.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        return Rejected::Help(err.render().to_string(), failure);
    }
    let rendered = err.render().to_string();
    let mut lines = rendered.lines().map(str::trim).filter(|l| !l.is_empty());
    let what = lines
        .next()
        .map(|l| l.strip_prefix("error: ").unwrap_or(l))
        .unwrap_or("invalid arguments")
        .trim_end_matches(':');
    let detail: Vec<&str> = lines
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .map(|l| l.strip_prefix("tip: ").unwrap_or(l))
        // clap's "use '-- --x' to pass it as a value" would make it lease's command.
        .filter(|l| !l.starts_with("to pass '"))
        .collect();
    let sub = found.as_deref().filter(|s| Cli::command_has(s));
    let help = match sub {
        Some(sub) => format!("see 'lease {sub} --help'"),
        None => "see 'lease --help'".to_owned(),
    };
    let what = if detail.is_empty() {
        what.to_owned()
    } else {
        format!("{what}: {}", detail.join(" "))
    };
    let message = if sub == Some("run") && lacks_separator(err, args) {
        format!(
            "{what}: put `--` before the command, e.g. lease run --scope read:x -- CMD [ARG...]"
        )
    } else {
        format!("{what}; {help}")
    };
    Rejected::Usage(message, failure)
}

/// Whether a `run` error comes from a command given without `--` before it: an unexpected
/// word that is not an option, or no command at all.
fn lacks_separator(err: &clap::Error, args: &[OsString]) -> bool {
    use clap::error::{ContextKind, ContextValue};
    if args.iter().any(|a| a == "--") {
        return false;
    }
    let invalid = match err.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(arg)) => arg.clone(),
        Some(ContextValue::Strings(args)) => args.join(" "),
        _ => return false,
    };
    match err.kind() {
        ErrorKind::UnknownArgument => !invalid.starts_with('-'),
        ErrorKind::MissingRequiredArgument => invalid.contains("CMD"),
        _ => false,
    }
}

/// Whether `args` ask `lease verify` for its answer in JSON (`--json` before any `--`).
pub(super) fn asks_verify_json(args: &[OsString]) -> bool {
    args.iter()
        .skip(1)
        .take_while(|arg| *arg != "--")
        .any(|arg| arg == "--json")
        && failed_subcommand(args).as_deref() == Some("verify")
}

/// The subcommand of a command line clap refused, as clap itself found it: parsed again with
/// errors ignored, clap goes on into the subcommand whose arguments failed and records it.
/// `None` when the error came before any subcommand (`lease --bogus run`).
fn failed_subcommand(args: &[OsString]) -> Option<String> {
    let matches = Cli::command()
        .ignore_errors(true)
        .try_get_matches_from(args)
        .ok()?;
    matches.subcommand_name().map(str::to_owned)
}
