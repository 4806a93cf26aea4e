//! What a user asked lease to do, as domain types: the command line's validated result, which
//! every command reads without checking again. No clap type appears here.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use crate::endpoint::{Endpoint, Listen};
use crate::exit::Exit;
use crate::policy::Asked;
use crate::scope::Action;

/// A parsed, validated command line.
#[derive(Debug)]
pub struct Invocation {
    /// Options that apply to every subcommand.
    pub globals: Globals,
    /// The subcommand and its validated arguments.
    pub command: Command,
    /// How lease exits when it fails: 125 for `run`, 2 for the other subcommands.
    pub failure: Exit,
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
    /// `--broker` or `LEASE_BROKER`: go through this broker.
    pub broker: Option<Endpoint>,
}

/// A subcommand with validated arguments.
#[derive(Debug)]
pub enum Command {
    /// `lease serve`.
    Serve {
        /// Where to listen; empty for the default socket.
        listen: Vec<Listen>,
        /// Allow plain HTTP off loopback.
        insecure_http: bool,
        /// `--store`: the store on etcd, over the config's.
        store: Option<crate::store::etcd::Url>,
    },
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
    /// `--upstream` names: upstreams of the broker the command reaches through it.
    pub upstreams: Vec<String>,
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

/// Shells `lease completions` writes for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shell {
    /// bash (with bash-completion)
    Bash,
    /// zsh
    Zsh,
    /// fish
    Fish,
}
