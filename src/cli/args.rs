//! The clap definitions of lease's command line, and nothing else: what each subcommand and
//! flag is called, its help, and which value parser turns its text into a domain value.
//! [`super::translate`] turns the parsed structs into requests.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::{Args, Parser, Subcommand};

use super::values::{
    OnExpiryValues, parse_env_name, parse_glob, parse_listen, parse_token_env, parse_ttl,
    parse_uses,
};
use crate::config::OnExpiry;
use crate::endpoint::Listen;

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
pub(super) struct Cli {
    /// Where leases are recorded [default: $XDG_STATE_HOME/lease, i.e. ~/.local/state/lease]
    #[arg(long, global = true, env = "LEASE_STATE_DIR", value_name = "DIR", value_parser = path_or_empty())]
    pub(super) state_dir: Option<PathBuf>,

    /// Config file [default: $XDG_CONFIG_HOME/lease/config.toml, if it exists]
    #[arg(long, global = true, env = "LEASE_CONFIG", value_name = "FILE", value_parser = path_or_empty())]
    pub(super) config: Option<PathBuf>,

    /// Also print notes on stderr, such as a nested lease's expiry capped at its parent's
    /// (without it, lease prints nothing of its own unless something fails)
    #[arg(short, long, global = true)]
    pub(super) verbose: bool,

    /// Go through this broker (`lease serve`): unix:/path, http://HOST:PORT or
    /// https://HOST:PORT (its CA: the PEM file in LEASE_BROKER_CA, else the system's)
    /// [default: broker in the config]
    #[arg(long, global = true, env = "LEASE_BROKER", value_name = "URL")]
    pub(super) broker: Option<String>,

    #[command(subcommand)]
    pub(super) command: Sub,
}

#[derive(Debug, Subcommand)]
#[command(defer = true)]
pub(super) enum Sub {
    /// Run a command with a fresh token that is revoked when the command exits
    ///
    /// The command gets LEASE_TOKEN (the secret; under another name with --env, which
    /// LEASE_TOKEN_ENV then names), LEASE_ID, LEASE_SCOPE, LEASE_EXPIRES_AT and LEASE_STATE_DIR
    /// (LEASE_BROKER instead, through a broker) in its environment. lease exits with the
    /// command's status, forwards signals to it, and revokes the token on every path, however
    /// the command ends.
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

    /// Remove records that can never grant again: expired leases, leases whose run is gone
    /// without having revoked them (owner gone), and revoked leases once past their expiry
    ///
    /// A revoked lease is kept until its expiry, so that `verify` says `revoked` rather than
    /// `unknown`; gc removes it once it has expired.
    #[command(after_help = "\
Examples:
  lease gc
  lease --state-dir /tmp/ci-leases gc")]
    Gc,

    /// Run the broker: the one process that holds the store and the policy, and answers
    /// clients and web servers over HTTP
    ///
    /// It stays in the foreground and logs one line per event on stderr (never a token).
    /// SIGTERM or SIGINT stop it gracefully; SIGHUP reloads the config. Clients reach it
    /// through LEASE_BROKER, --broker or broker in their config; web servers ask /v1/auth
    /// (docs/api.md).
    #[command(after_help = "\
Examples:
  lease serve
  lease serve --listen unix:/run/lease/broker.sock --listen 127.0.0.1:7070
  LEASE_BROKER=unix:$HOME/.local/state/lease/broker.sock lease verify read:articles")]
    Serve(ServeArgs),

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
pub(super) struct ManArgs {
    /// The subcommand whose page to print, e.g. run for lease-run(1) [default: lease(1)]
    #[arg(value_name = "SUBCOMMAND", value_parser = parse_subcommand, conflicts_with = "dir")]
    pub(super) subcommand: Option<String>,

    /// Write every page (lease.1, lease-run.1, ...) into DIR instead, creating it if needed
    #[arg(long, value_name = "DIR")]
    pub(super) dir: Option<PathBuf>,
}

// What a new lease grants: shared by `run` and `issue`. A plain comment: with the
// subcommands deferred, a doc comment here would replace their about text.
#[derive(Debug, Args)]
pub(super) struct MintArgs {
    /// Take scope, ttl and the other settings from this profile in the config file
    #[arg(long, value_name = "NAME")]
    pub(super) profile: Option<String>,

    /// Scopes to grant, comma-separated; repeatable (e.g. read:articles,write:draft or read:*);
    /// SCOPE=N allows N granted verifies of that scope
    #[arg(long, value_name = "S[,S...]")]
    pub(super) scope: Vec<String>,

    /// Lifetime: whole seconds (300) or a duration (5m, 1h30m) [default: 600, or default_ttl]
    #[arg(long, value_name = "DURATION", value_parser = parse_ttl, allow_hyphen_values = true)]
    pub(super) ttl: Option<Duration>,

    /// Allow at most N granted verifies in all
    #[arg(long, value_name = "N", value_parser = parse_uses)]
    pub(super) uses: Option<u64>,

    /// Mint a root lease even though a parent lease's token is in the environment
    /// (only where the config sets allow_orphans = true)
    #[arg(long)]
    pub(super) no_parent: bool,
}

#[derive(Debug, Args)]
pub(super) struct RunArgs {
    #[command(flatten)]
    pub(super) mint: MintArgs,

    /// Put the token in this variable instead of LEASE_TOKEN (not PATH, LD_*, DYLD_*, the other
    /// LEASE_* variables, nor a name programs read as a path or a setting, or run: HOME, LC_*,
    /// BASH_ENV, EDITOR and the like; README lists them)
    #[arg(long, value_name = "NAME", value_parser = parse_token_env)]
    pub(super) env: Option<String>,

    /// At expiry: keep the command running (the token just stops working), or end it with
    /// SIGTERM (then SIGKILL after --grace) or SIGKILL; lease then exits 124
    #[arg(
        long,
        value_name = "keep|term|kill",
        value_parser = OnExpiryValues,
        hide_possible_values = true
    )]
    pub(super) on_expiry: Option<OnExpiry>,

    /// How long a command ended with --on-expiry term has before SIGKILL [default: 10s]
    #[arg(long, value_name = "DURATION", value_parser = parse_ttl, allow_hyphen_values = true)]
    pub(super) grace: Option<Duration>,

    /// Remove variables whose names match this glob from the command's environment
    /// (repeatable; e.g. '*_TOKEN', 'AWS_*'); adds to scrub_env in the config
    #[arg(long, value_name = "PATTERN", value_parser = parse_glob)]
    pub(super) scrub: Vec<glob::Pattern>,

    /// Reach this upstream of the broker (repeatable): the command gets its base URL through
    /// the broker and the lease token in place of the API key, in the variables the
    /// upstream's child_env names; the key itself stays in the broker
    #[arg(long, value_name = "NAME")]
    pub(super) upstream: Vec<String>,

    /// Start the command from an empty environment: only the lease variables, PATH-less,
    /// plus each --keep NAME
    #[arg(long)]
    pub(super) clean_env: bool,

    /// With --clean-env, keep this variable (repeatable)
    #[arg(long, value_name = "NAME", requires = "clean_env", value_parser = parse_env_name)]
    pub(super) keep: Vec<String>,

    /// Print the environment the command would get (the token hidden) and exit; mints nothing
    /// and runs nothing, even when a command is given
    #[arg(long, conflicts_with_all = ["mask", "receipt", "on_expiry", "grace"])]
    pub(super) print_env: bool,

    /// Replace the token with *** in the command's stdout and stderr (for CI logs); the
    /// command's output then goes through lease as it comes (only a tail that could begin
    /// the token waits for the next bytes)
    #[arg(long)]
    pub(super) mask: bool,

    /// When the run ends, write a JSON receipt to FILE: the lease, every verify decision, the
    /// exit and the duration
    #[arg(long, value_name = "FILE")]
    pub(super) receipt: Option<PathBuf>,

    /// The command to run, after `--`
    #[arg(last = true, required_unless_present = "print_env", value_name = "CMD", num_args = 1.., value_parser = clap::value_parser!(OsString))]
    pub(super) command: Vec<OsString>,
}

#[derive(Debug, Args)]
pub(super) struct ServeArgs {
    /// Where to listen: unix:PATH or HOST:PORT (repeatable)
    /// [default: unix:$STATE_DIR/broker.sock]
    #[arg(long, value_name = "ADDR", value_parser = parse_listen)]
    pub(super) listen: Vec<Listen>,

    /// Allow plain HTTP on an address that is not loopback (only behind a TLS proxy or on a
    /// private network: tokens travel in clear)
    #[arg(long)]
    pub(super) insecure_http: bool,

    /// Keep the leases on etcd, shared with other brokers:
    /// etcd://HOST:PORT[,HOST:PORT...][/PREFIX] or etcd+https://... [default: the config's
    /// store, else the state dir]
    // Parsed after clap (cli/translate.rs): clap's own error would echo a refused value, and
    // a URL may carry a password.
    #[arg(long, value_name = "URL")]
    pub(super) store: Option<String>,
}

#[derive(Debug, Args)]
pub(super) struct VerifyArgs {
    /// The action to check, e.g. write:draft
    #[arg(value_name = "ACTION")]
    pub(super) action: String,

    /// Read the token from standard input (one line)
    #[arg(long, conflicts_with = "token_env")]
    pub(super) token_stdin: bool,

    /// Read the token from this variable instead of LEASE_TOKEN
    #[arg(long, value_name = "NAME", value_parser = parse_env_name)]
    pub(super) token_env: Option<String>,

    /// Print the decision as JSON: {"granted","reason","id","expires_at"}
    #[arg(long)]
    pub(super) json: bool,
}

#[derive(Debug, Args)]
pub(super) struct IssueArgs {
    #[command(flatten)]
    pub(super) mint: MintArgs,

    /// Print {"id","token","scope","expires_at"} instead of the bare token
    #[arg(long)]
    pub(super) json: bool,
}

#[derive(Debug, Args)]
pub(super) struct LogArgs {
    /// Only events of this lease (or of the run it made)
    #[arg(long, value_name = "ID")]
    pub(super) id: Option<String>,

    /// Only events of the last DURATION (e.g. 1h, 30m)
    #[arg(long, value_name = "DURATION", value_parser = parse_ttl, allow_hyphen_values = true)]
    pub(super) since: Option<Duration>,

    /// Print the events as JSON lines, as they are stored
    #[arg(long)]
    pub(super) json: bool,
}

#[derive(Debug, Args)]
pub(super) struct SuggestArgs {
    /// The lease, as shown by `lease list --all`
    #[arg(value_name = "ID")]
    pub(super) id: String,

    /// Print {"id","ended","suggested","unused","denied","complete"} as JSON
    #[arg(long)]
    pub(super) json: bool,
}

#[derive(Debug, Args)]
pub(super) struct StatusArgs {
    #[command(flatten)]
    pub(super) token: TokenArgs,

    /// Print the status as JSON
    #[arg(long)]
    pub(super) json: bool,
}

#[derive(Debug, Args)]
pub(super) struct CompletionsArgs {
    /// The shell
    #[arg(value_enum)]
    pub(super) shell: Shell,
}

/// Shells `lease completions` writes for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum Shell {
    /// bash (with bash-completion)
    Bash,
    /// zsh
    Zsh,
    /// fish
    Fish,
}

#[derive(Debug, Args)]
pub(super) struct RenewArgs {
    /// How much longer the lease may live [default: default_ttl]; never past max_ttl from its
    /// first issue, nor past its parent's expiry
    #[arg(long, value_name = "DURATION", value_parser = parse_ttl, allow_hyphen_values = true)]
    pub(super) ttl: Option<Duration>,

    #[command(flatten)]
    pub(super) token: TokenArgs,
}

// Where `status` and `renew` read the token (a plain comment, as on MintArgs).
#[derive(Debug, Args)]
pub(super) struct TokenArgs {
    /// Read the token from standard input (one line)
    #[arg(long, conflicts_with = "token_env")]
    pub(super) token_stdin: bool,

    /// Read the token from this variable instead of LEASE_TOKEN
    #[arg(long, value_name = "NAME", value_parser = parse_env_name)]
    pub(super) token_env: Option<String>,
}

#[derive(Debug, Args)]
pub(super) struct ListArgs {
    /// Also show revoked and expired leases still on record
    #[arg(long)]
    pub(super) all: bool,

    /// Print a JSON array instead of a table
    #[arg(long)]
    pub(super) json: bool,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("target").args(["ids", "all", "own"]).required(true))]
pub(super) struct RevokeArgs {
    /// Lease ids, as shown by `lease list`
    #[arg(value_name = "ID")]
    pub(super) ids: Vec<String>,

    /// Revoke every active lease
    #[arg(long)]
    pub(super) all: bool,

    /// Revoke the lease whose token is presented (in $LEASE_TOKEN unless told otherwise), and
    /// every lease nested under it
    #[arg(long = "self", id = "own")]
    pub(super) own: bool,

    /// With --self, read the token from standard input (one line)
    #[arg(long, conflicts_with_all = ["ids", "all", "token_env"])]
    pub(super) token_stdin: bool,

    /// With --self, read the token from this variable instead of LEASE_TOKEN
    #[arg(long, value_name = "NAME", conflicts_with_all = ["ids", "all"], value_parser = parse_env_name)]
    pub(super) token_env: Option<String>,
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

impl Cli {
    pub(super) fn command_has(name: &str) -> bool {
        use clap::CommandFactory;
        Cli::command()
            .get_subcommands()
            .any(|c| c.get_name() == name)
    }
}

/// A path, or the empty text of a variable that is set but empty (which means unset, as for
/// `LEASE_BROKER`); an empty path given on the command line is refused in `cli::parse`.
fn path_or_empty() -> impl clap::builder::TypedValueParser<Value = PathBuf> {
    use clap::builder::TypedValueParser as _;
    clap::builder::OsStringValueParser::new().map(PathBuf::from)
}
