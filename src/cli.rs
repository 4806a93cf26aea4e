//! The command line: clap definitions, and their translation into validated requests.
//!
//! Nothing clap-specific leaves this module: [`parse`] returns an [`Invocation`] of domain
//! values (scopes, durations, actions) that the commands use without checking again.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::error::ErrorKind;
use clap::{Args, Parser, Subcommand};

use crate::config::OnExpiry;
use crate::config::Profile;
use crate::exit::Exit;
use crate::policy::Asked;
use crate::scope::{self, Action};
use crate::{config, ttl};

const EXAMPLES: &str = "\
Examples:
  Launch an agent with a token that can only read articles and write drafts, for 30 minutes,
  and keep a receipt of what it did:
    lease run --scope read:articles,write:draft --ttl 30m --receipt agent.json -- ./agent.sh

  In a CI job step, with the token masked in the log and the step ended when the lease expires:
    lease run --scope deploy:staging --ttl 10m --mask --on-expiry term -- ./deploy.sh staging

  In a Makefile target:
    publish: ; lease run --scope write:site -- ./publish.sh

  A one-off command, without the long-lived secrets in its environment, given its token in
  DEPLOY_TOKEN (a lease token: the command's tools check it with `lease verify`; it is not a
  credential for GitHub or any other service):
    lease run --scope deploy:staging --scrub '*_TOKEN' --env DEPLOY_TOKEN -- ./deploy.sh

  Inside the command, a tool asks whether the token grants an action:
    lease verify write:draft && echo allowed";

/// Short-lived, narrowly scoped credentials for each command, CI step or agent run.
///
/// lease mints a random token for one run, hands it to the command in its environment, and
/// revokes it when the command exits. Tools the command calls ask `lease verify ACTION`
/// whether the token is still valid and grants that action.
#[derive(Debug, Parser)]
#[command(name = "lease", version, after_help = EXAMPLES, propagate_version = true)]
#[command(max_term_width = 100)]
struct Cli {
    /// Where leases are recorded [default: $XDG_STATE_HOME/lease, i.e. ~/.local/state/lease]
    #[arg(long, global = true, env = "LEASE_STATE_DIR", value_name = "DIR")]
    state_dir: Option<PathBuf>,

    /// Config file [default: $XDG_CONFIG_HOME/lease/config.toml, if it exists]
    #[arg(long, global = true, env = "LEASE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    /// Also print notes on stderr, such as a nested lease's expiry capped at its parent's
    /// (without it, `lease run` prints nothing of its own unless something fails)
    #[arg(short, long, global = true)]
    verbose: bool,

    #[command(subcommand)]
    command: Sub,
}

#[derive(Debug, Subcommand)]
enum Sub {
    /// Run a command with a fresh token that is revoked when the command exits
    ///
    /// The command gets LEASE_TOKEN (the secret), LEASE_ID, LEASE_SCOPE, LEASE_EXPIRES_AT and
    /// LEASE_STATE_DIR in its environment. lease exits with the command's status, forwards
    /// signals to it, and revokes the token on every path, however the command ends.
    #[command(after_help = "\
Examples:
  lease run --scope read:articles,write:draft --ttl 300 -- ./agent.sh
  lease run --scope 'read:*' --scrub '*_TOKEN' -- make test
  lease run --scope deploy:staging --ttl 5m -- sh -c 'lease verify deploy:staging && ./deploy.sh'")]
    Run(RunArgs),

    /// Check that the presented token is valid and grants ACTION (exit 0 yes, 1 no, 2 unsure)
    ///
    /// The token is read from $LEASE_TOKEN, from the variable named by --token-env, or from
    /// standard input with --token-stdin; never from the command line.
    #[command(after_help = "\
Examples:
  lease verify write:draft
  lease verify deploy:staging --token-env DEPLOY_TOKEN
  printf '%s' \"$TOKEN\" | lease verify read:articles --token-stdin --json")]
    Verify(VerifyArgs),

    /// Mint a detached lease (no owning process) and print its token
    ///
    /// For work that spans several CI steps: the lease ends at its TTL or with `lease revoke`.
    #[command(after_help = "\
Examples:
  token=$(lease issue --scope deploy:staging --ttl 30m)
  lease issue --scope 'read:*' --json")]
    Issue(IssueArgs),

    /// List active leases (--all: also revoked and expired ones still on record)
    #[command(after_help = "\
Examples:
  lease list
  lease list --all --json | jq '.[] | select(.state == \"active\") | .id'")]
    List(ListArgs),

    /// Revoke leases by id, your own lease with --self, or all of them with --all
    ///
    /// --self revokes the lease whose token is in $LEASE_TOKEN (or in the variable named by
    /// --token-env, or on standard input with --token-stdin) and every lease nested under it:
    /// the always-run last step of a CI job that issued its own lease, which leaves the
    /// leases of other jobs sharing the store alone. It succeeds when the lease is already
    /// revoked or expired, and exits 2 when there is no token or no lease matches it.
    #[command(after_help = "\
Examples:
  lease revoke 3f9a2b1c4d5e
  lease revoke --self         # e.g. in a CI job's always-run last step
  lease revoke --self --token-env DEPLOY_TOKEN
  lease revoke --all")]
    Revoke(RevokeArgs),

    /// Extend the lease of the token in the environment (from inside `lease run`)
    #[command(after_help = "\
Examples:
  lease renew --ttl 10m
  lease renew --token-env DEPLOY_TOKEN
  printf '%s' \"$TOKEN\" | lease renew --token-stdin")]
    Renew(RenewArgs),

    /// Show the lease of the token in the environment: scopes, expiry, uses left, parent
    #[command(after_help = "\
Examples:
  lease run --scope read:x -- lease status
  lease status --json
  printf '%s' \"$TOKEN\" | lease status --token-stdin")]
    Status(StatusArgs),

    /// Show the audit trail: who was granted or denied what, and how each run ended
    #[command(after_help = "\
Examples:
  lease log --since 1h
  lease log --id 3f9a2b1c4d5e --json")]
    Log(LogArgs),

    /// Suggest the narrowest --scope list a lease needed, from its trail (so far, if it has not
    /// ended yet)
    #[command(after_help = "\
Examples:
  lease suggest 3f9a2b1c4d5e
  lease suggest 3f9a2b1c4d5e --json")]
    Suggest(SuggestArgs),

    /// Remove records that can never grant again: expired leases, leases whose run has ended,
    /// and revoked leases once past their expiry
    ///
    /// A revoked lease is kept until its expiry, so that `verify` says `revoked` rather than
    /// `unknown`; gc removes it once it has expired.
    #[command(after_help = "\
Examples:
  lease gc
  lease --state-dir /tmp/ci-leases gc")]
    Gc,

    /// Print a shell completion script (bash, zsh or fish)
    #[command(after_help = "\
Examples:
  lease completions bash > ~/.local/share/bash-completion/completions/lease
  lease completions zsh > ~/.zfunc/_lease
  lease completions fish > ~/.config/fish/completions/lease.fish")]
    Completions(CompletionsArgs),

    /// Print a man page (roff): lease(1), or lease-SUBCOMMAND(1); --dir writes them all
    #[command(after_help = "\
Examples:
  lease man | man -l -
  lease man run | man -l -
  lease man --dir ~/.local/share/man/man1")]
    Man(ManArgs),
}

#[derive(Debug, Args)]
struct ManArgs {
    /// The subcommand whose page to print, e.g. run for lease-run(1) [default: lease(1)]
    #[arg(value_name = "SUBCOMMAND", value_parser = parse_subcommand, conflicts_with = "dir")]
    subcommand: Option<String>,

    /// Write every page (lease.1, lease-run.1, ...) into DIR instead, creating it if needed
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

/// What a new lease grants: shared by `run` and `issue`.
#[derive(Debug, Args)]
struct MintArgs {
    /// Take scope, ttl and the other settings from this profile in the config file
    #[arg(long, value_name = "NAME")]
    profile: Option<String>,

    /// Scopes to grant, comma-separated; repeatable (e.g. read:articles,write:draft or read:*);
    /// SCOPE=N allows N granted verifies of that scope
    #[arg(long, value_name = "S[,S...]")]
    scope: Vec<String>,

    /// Lifetime: whole seconds (300) or a duration (5m, 1h30m) [default: 600, or default_ttl]
    #[arg(long, value_name = "DURATION", value_parser = parse_ttl, allow_hyphen_values = true)]
    ttl: Option<Duration>,

    /// Allow at most N granted verifies in all
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    uses: Option<u64>,

    /// Mint a root lease even though a parent lease's token is in the environment
    /// (only where the config sets allow_orphans = true)
    #[arg(long)]
    no_parent: bool,
}

#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    mint: MintArgs,

    /// Put the token in this variable instead of LEASE_TOKEN (not PATH, LD_*, DYLD_* or the
    /// other LEASE_* variables)
    #[arg(long, value_name = "NAME", value_parser = parse_token_env)]
    env: Option<String>,

    /// At expiry: keep the command running (the token just stops working), or end it with
    /// SIGTERM (then SIGKILL after --grace) or SIGKILL; lease then exits 124
    #[arg(long, value_name = "keep|term|kill", value_parser = parse_on_expiry)]
    on_expiry: Option<OnExpiry>,

    /// How long a command ended with --on-expiry term has before SIGKILL [default: 10s]
    #[arg(long, value_name = "DURATION", value_parser = parse_ttl, allow_hyphen_values = true)]
    grace: Option<Duration>,

    /// Remove variables whose names match this glob from the command's environment
    /// (repeatable; e.g. '*_TOKEN', 'AWS_*'); adds to scrub_env in the config
    #[arg(long, value_name = "PATTERN", value_parser = parse_glob)]
    scrub: Vec<glob::Pattern>,

    /// Start the command from an empty environment: only the lease variables, PATH-less,
    /// plus each --keep NAME
    #[arg(long)]
    clean_env: bool,

    /// With --clean-env, keep this variable (repeatable)
    #[arg(long, value_name = "NAME", requires = "clean_env", value_parser = parse_env_name)]
    keep: Vec<String>,

    /// Print the environment the command would get (the token hidden) and exit; mints nothing
    /// and runs nothing, even when a command is given
    #[arg(long)]
    print_env: bool,

    /// Replace the token with *** in the command's stdout and stderr (for CI logs); the
    /// command's output then goes through lease, line by line
    #[arg(long)]
    mask: bool,

    /// When the run ends, write a JSON receipt to FILE: the lease, every verify decision, the
    /// exit and the duration
    #[arg(long, value_name = "FILE")]
    receipt: Option<PathBuf>,

    /// The command to run, after `--`
    #[arg(last = true, required_unless_present = "print_env", value_name = "CMD", num_args = 1.., value_parser = clap::value_parser!(OsString))]
    command: Vec<OsString>,
}

#[derive(Debug, Args)]
struct VerifyArgs {
    /// The action to check, e.g. write:draft
    #[arg(value_name = "ACTION")]
    action: String,

    /// Read the token from standard input (one line)
    #[arg(long, conflicts_with = "token_env")]
    token_stdin: bool,

    /// Read the token from this variable instead of LEASE_TOKEN
    #[arg(long, value_name = "NAME", value_parser = parse_env_name)]
    token_env: Option<String>,

    /// Print the decision as JSON: {"granted","reason","id","expires_at"}
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct IssueArgs {
    #[command(flatten)]
    mint: MintArgs,

    /// Print {"id","token","scope","expires_at"} instead of the bare token
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct LogArgs {
    /// Only events of this lease (or of the run it made)
    #[arg(long, value_name = "ID")]
    id: Option<String>,

    /// Only events of the last DURATION (e.g. 1h, 30m)
    #[arg(long, value_name = "DURATION", value_parser = parse_ttl, allow_hyphen_values = true)]
    since: Option<Duration>,

    /// Print the events as JSON lines, as they are stored
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct SuggestArgs {
    /// The lease, as shown by `lease list --all`
    #[arg(value_name = "ID")]
    id: String,

    /// Print {"id","ended","suggested","unused","denied"} as JSON
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct StatusArgs {
    #[command(flatten)]
    token: TokenArgs,

    /// Print the status as JSON
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct CompletionsArgs {
    /// The shell
    #[arg(value_enum)]
    shell: Shell,
}

/// Shells `lease completions` writes for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shell {
    /// bash (with bash-completion)
    Bash,
    /// zsh
    Zsh,
    /// fish
    Fish,
}

#[derive(Debug, Args)]
struct RenewArgs {
    /// How much longer the lease may live [default: default_ttl]; never past max_ttl from its
    /// first issue, nor past its parent's expiry
    #[arg(long, value_name = "DURATION", value_parser = parse_ttl, allow_hyphen_values = true)]
    ttl: Option<Duration>,

    #[command(flatten)]
    token: TokenArgs,
}

/// Where `status` and `renew` read the token.
#[derive(Debug, Args)]
struct TokenArgs {
    /// Read the token from standard input (one line)
    #[arg(long, conflicts_with = "token_env")]
    token_stdin: bool,

    /// Read the token from this variable instead of LEASE_TOKEN
    #[arg(long, value_name = "NAME", value_parser = parse_env_name)]
    token_env: Option<String>,
}

impl TokenArgs {
    fn source(self) -> TokenSource {
        if self.token_stdin {
            TokenSource::Stdin
        } else {
            TokenSource::Env(self.token_env)
        }
    }
}

#[derive(Debug, Args)]
struct ListArgs {
    /// Also show revoked and expired leases still on record
    #[arg(long)]
    all: bool,

    /// Print a JSON array instead of a table
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("target").args(["ids", "all", "own"]).required(true))]
struct RevokeArgs {
    /// Lease ids, as shown by `lease list`
    #[arg(value_name = "ID")]
    ids: Vec<String>,

    /// Revoke every active lease
    #[arg(long)]
    all: bool,

    /// Revoke the lease whose token is presented (in $LEASE_TOKEN unless told otherwise), and
    /// every lease nested under it
    #[arg(long = "self", id = "own")]
    own: bool,

    /// With --self, read the token from standard input (one line)
    #[arg(long, conflicts_with_all = ["ids", "all", "token_env"])]
    token_stdin: bool,

    /// With --self, read the token from this variable instead of LEASE_TOKEN
    #[arg(long, value_name = "NAME", conflicts_with_all = ["ids", "all"], value_parser = parse_env_name)]
    token_env: Option<String>,
}

fn parse_ttl(text: &str) -> Result<Duration> {
    ttl::parse(text)
}

fn parse_glob(text: &str) -> Result<glob::Pattern> {
    not_a_token(
        text,
        "a variable name pattern",
        "pass a pattern such as '*_TOKEN'",
    )?;
    glob::Pattern::new(text)
        .map_err(|err| anyhow::anyhow!("invalid pattern '{}': {err}", text.escape_debug()))
}

fn parse_on_expiry(text: &str) -> Result<OnExpiry> {
    text.parse()
}

fn parse_subcommand(text: &str) -> Result<String> {
    if Cli::command_has(text) {
        return Ok(text.to_owned());
    }
    use clap::CommandFactory;
    let names: Vec<String> = Cli::command()
        .get_subcommands()
        .map(|c| c.get_name().to_owned())
        .collect();
    bail!(
        "'{}' is not a subcommand: the pages are for {}",
        text.escape_debug(),
        names.join(", ")
    )
}

fn parse_env_name(text: &str) -> Result<String> {
    config::validate_env_name(text)?;
    Ok(text.to_owned())
}

fn parse_token_env(text: &str) -> Result<String> {
    config::validate_token_env(text)?;
    Ok(text.to_owned())
}

/// Refuses text shaped like a token where `what` is expected, without quoting it: a token
/// typed in the wrong place must not be echoed back or logged.
fn not_a_token(text: &str, what: &str, fix: &str) -> Result<()> {
    if crate::token::is_token_shaped(text) {
        bail!("that is a token, not {what}: {fix}");
    }
    Ok(())
}

/// A lease id given by a user, refused if it is a token.
fn lease_id_arg(text: String) -> Result<String> {
    not_a_token(
        &text,
        "a lease id",
        "pass the 12-digit id shown by `lease list --all`, or use `lease revoke --self` to end the lease of a token",
    )?;
    Ok(text)
}

/// A parsed, validated command line.
#[derive(Debug)]
pub struct Invocation {
    /// Options that apply to every subcommand.
    pub globals: Globals,
    /// The subcommand and its validated arguments.
    pub command: Command,
}

/// Options that apply to every subcommand.
#[derive(Debug, Default)]
pub struct Globals {
    /// `--state-dir` or `LEASE_STATE_DIR`.
    pub state_dir: Option<PathBuf>,
    /// `--config` or `LEASE_CONFIG`.
    pub config: Option<PathBuf>,
    /// `-v`/`--verbose`: print notes on stderr.
    pub verbose: bool,
}

/// A subcommand with validated arguments.
#[derive(Debug)]
pub enum Command {
    /// `lease run`.
    Run(RunRequest),
    /// `lease verify`.
    Verify(VerifyRequest),
    /// `lease issue`.
    Issue(IssueRequest),
    /// `lease list`.
    List {
        /// Include revoked and expired leases.
        all: bool,
        /// JSON output.
        json: bool,
    },
    /// `lease revoke`.
    Revoke(RevokeTarget),
    /// `lease renew`.
    Renew(RenewRequest),
    /// `lease log`.
    Log {
        /// Only this lease (or run).
        id: Option<String>,
        /// Only this recent.
        since: Option<Duration>,
        /// JSON lines.
        json: bool,
    },
    /// `lease suggest`.
    Suggest {
        /// The lease.
        id: String,
        /// JSON output.
        json: bool,
    },
    /// `lease status`.
    Status {
        /// Where the token is.
        source: TokenSource,
        /// JSON output.
        json: bool,
    },
    /// `lease completions`.
    Completions(Shell),
    /// `lease man`.
    Man(ManPage),
    /// `lease gc`.
    Gc,
}

/// Which man pages `lease man` produces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManPage {
    /// Print lease(1), or lease-SUBCOMMAND(1) for this subcommand.
    Print(Option<String>),
    /// Write every page into this directory.
    WriteAll(PathBuf),
}

/// What `lease run` was asked to do.
#[derive(Debug)]
pub struct RunRequest {
    /// The lease asked for, before policy.
    pub asked: Asked,
    /// Run a command, or only print the environment it would get.
    pub mode: RunMode,
    /// How the command's environment is built.
    pub env: EnvRequest,
    /// Mask the token in the command's output.
    pub mask: bool,
    /// Where to write the receipt.
    pub receipt: Option<PathBuf>,
}

/// What `lease run` does: one or the other, never both.
#[derive(Debug)]
pub enum RunMode {
    /// `--print-env`: print the environment the command would get; mint nothing, run nothing.
    PrintEnv,
    /// Run this program with these arguments.
    Exec {
        /// The program (looked up on PATH when it has no slash).
        program: OsString,
        /// Its arguments.
        args: Vec<OsString>,
    },
}

/// How the command's environment is built from lease's own.
#[derive(Debug, Default, Clone)]
pub struct EnvRequest {
    /// `--scrub` patterns.
    pub scrub: Vec<glob::Pattern>,
    /// `--clean-env`.
    pub clean: bool,
    /// `--keep` names.
    pub keep: Vec<String>,
}

/// Where `verify`, `status`, `renew` and `revoke --self` read the token from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// A variable: the one named, or the configured default (`LEASE_TOKEN`).
    Env(Option<String>),
    /// One line of standard input.
    Stdin,
}

/// What `lease verify` was asked.
#[derive(Debug)]
pub struct VerifyRequest {
    /// The action to check.
    pub action: Action,
    /// Where the token comes from.
    pub source: TokenSource,
    /// JSON output.
    pub json: bool,
}

/// What `lease issue` was asked to mint.
#[derive(Debug)]
pub struct IssueRequest {
    /// The lease asked for, before policy.
    pub asked: Asked,
    /// JSON output.
    pub json: bool,
}

/// What `lease renew` was asked.
#[derive(Debug)]
pub struct RenewRequest {
    /// How much longer, if given.
    pub ttl: Option<Duration>,
    /// Where the token is.
    pub source: TokenSource,
}

/// Which leases `lease revoke` ends.
#[derive(Debug)]
pub enum RevokeTarget {
    /// These ids, as given.
    Ids(Vec<String>),
    /// Every active lease.
    All,
    /// The lease of the token presented here, and every lease nested under it (`--self`).
    Own(TokenSource),
}

impl Command {
    /// The status for a failure of this subcommand: 125 for `run`, so that lease's own
    /// failures are not mistaken for the command's, and 2 for every other subcommand.
    pub fn failure_exit(&self) -> Exit {
        match self {
            Command::Run(_) => Exit::RunFailure,
            _ => Exit::Failure,
        }
    }
}

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

fn validate(sub: Sub) -> Result<Command> {
    Ok(match sub {
        Sub::Run(args) => {
            let mut command = args.command.into_iter();
            let mode = match command.next() {
                _ if args.print_env => RunMode::PrintEnv,
                Some(program) => RunMode::Exec {
                    program,
                    args: command.collect(),
                },
                None => bail!("no command given: put it after `--`"),
            };
            let mut asked = asked(args.mint)?;
            asked.flags.env = args.env;
            asked.flags.on_expiry = args.on_expiry;
            asked.flags.grace = args.grace;
            Command::Run(RunRequest {
                asked,
                mode,
                env: EnvRequest {
                    scrub: args.scrub,
                    clean: args.clean_env,
                    keep: args.keep,
                },
                mask: args.mask,
                receipt: args.receipt,
            })
        }
        Sub::Verify(args) => Command::Verify(VerifyRequest {
            action: {
                not_a_token(
                    &args.action,
                    "an action",
                    "the token goes in $LEASE_TOKEN, --token-env NAME or --token-stdin; ACTION is what to check, e.g. write:draft",
                )?;
                Action::parse(&args.action)?
            },
            source: token_source(args.token_stdin, args.token_env),
            json: args.json,
        }),
        Sub::Issue(args) => Command::Issue(IssueRequest {
            asked: asked(args.mint)?,
            json: args.json,
        }),
        Sub::Log(args) => Command::Log {
            id: args.id.map(lease_id_arg).transpose()?,
            since: args.since,
            json: args.json,
        },
        Sub::Suggest(args) => Command::Suggest {
            id: lease_id_arg(args.id)?,
            json: args.json,
        },
        Sub::Status(args) => Command::Status {
            source: args.token.source(),
            json: args.json,
        },
        Sub::Completions(args) => Command::Completions(args.shell),
        Sub::Man(args) => Command::Man(match args.dir {
            Some(dir) => ManPage::WriteAll(dir),
            None => ManPage::Print(args.subcommand),
        }),
        Sub::Renew(args) => Command::Renew(RenewRequest {
            ttl: args.ttl,
            source: args.token.source(),
        }),
        Sub::List(args) => Command::List {
            all: args.all,
            json: args.json,
        },
        Sub::Revoke(args) if args.all => Command::Revoke(RevokeTarget::All),
        Sub::Revoke(args) if args.own => Command::Revoke(RevokeTarget::Own(token_source(
            args.token_stdin,
            args.token_env,
        ))),
        Sub::Revoke(args) => Command::Revoke(RevokeTarget::Ids(
            args.ids
                .into_iter()
                .map(lease_id_arg)
                .collect::<Result<_>>()?,
        )),
        Sub::Gc => Command::Gc,
    })
}

/// Where `--token-stdin` and `--token-env NAME` say the token is.
fn token_source(stdin: bool, env: Option<String>) -> TokenSource {
    if stdin {
        TokenSource::Stdin
    } else {
        TokenSource::Env(env)
    }
}

fn asked(args: MintArgs) -> Result<Asked> {
    for text in args.scope.iter().chain(&args.profile) {
        not_a_token(
            text,
            "a scope or a profile",
            "pass what the lease may do, e.g. --scope read:articles",
        )?;
    }
    let scope = if args.scope.is_empty() {
        None
    } else {
        Some(scope::parse_grants(&args.scope)?)
    };
    Ok(Asked {
        profile: args.profile,
        flags: Profile {
            scope,
            ttl: args.ttl,
            uses: args.uses,
            ..Profile::default()
        },
        no_parent: args.no_parent,
    })
}

/// The subcommand named on the command line, skipping global options and their values.
fn subcommand_name(args: &[OsString]) -> Option<&str> {
    let mut rest = args.iter().skip(1).filter_map(|a| a.to_str());
    while let Some(arg) = rest.next() {
        match arg {
            "--state-dir" | "--config" => {
                rest.next();
            }
            _ if arg.starts_with('-') => {}
            _ => return Some(arg),
        }
    }
    None
}

/// `run` reports its own failures with 125, so that they cannot be mistaken for the
/// command's; every other subcommand uses 2.
fn usage_exit(args: &[OsString]) -> Exit {
    if subcommand_name(args) == Some("run") {
        Exit::RunFailure
    } else {
        Exit::Failure
    }
}

/// Turns a clap error into one line: what is wrong, and how to fix it.
fn reject(err: &clap::Error, args: &[OsString], failure: Exit) -> Rejected {
    match err.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            return Rejected::Info(err.render().to_string());
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            return Rejected::Help(err.render().to_string(), failure);
        }
        _ => {}
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
    let sub = subcommand_name(args).filter(|s| Cli::command_has(s));
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

/// The full clap command, for completions and the man page.
pub fn command() -> clap::Command {
    use clap::CommandFactory;
    Cli::command()
}

impl Cli {
    fn command_has(name: &str) -> bool {
        use clap::CommandFactory;
        Cli::command()
            .get_subcommands()
            .any(|c| c.get_name() == name)
    }
}

#[cfg(test)]
mod tests {
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
