//! One module per subcommand, and what they share: the loaded config, the store, minting.

pub(crate) mod console;
mod gc;
mod issue;
mod list;
mod log;
pub mod remote;
mod renew;
pub(crate) mod revoke;
mod run;
mod run_through;
mod serve;
mod shell;
mod status;
mod suggest;
mod verify;

pub use verify::print_undecided;

use std::path::PathBuf;
use std::time::SystemTime;

use anyhow::{Context as _, Result, bail};

use crate::config::Config;
use crate::endpoint::Endpoint;
use crate::exit::Exit;
use crate::policy::{self, Asked, Plan};
use crate::request::{Command, Globals, Invocation};
use crate::store::{Open, Store};
use crate::token::Token;

/// Runs a validated invocation.
pub fn dispatch(invocation: Invocation) -> Result<Exit> {
    // Completions and the man page describe lease itself: they read no config and no store.
    let setup = || Setup::new(invocation.globals);
    match invocation.command {
        Command::Completions(shell) => shell::completions(shell),
        Command::Man(page) => shell::man(&page),
        Command::Serve {
            listen,
            insecure_http,
            store,
        } => serve::serve(&setup()?, &listen, insecure_http, store.as_ref()),
        Command::Verify(request) => match setup() {
            Ok(setup) => verify::verify(&setup, &request),
            Err(err) => Err(verify::undecided(&request, err)),
        },
        Command::Issue(request) => issue::issue(&setup()?, request),
        Command::Run(request) => {
            let setup = setup()?;
            match &setup.broker {
                Some(broker) => run_through::run_through(&setup, broker, request),
                None => run::run(&setup, request),
            }
        }
        command => local(&setup()?, command),
    }
}

/// The subcommands that work on the local store only (for now): with a broker set they fail
/// closed, naming the broker, rather than reach past it into a store.
fn local(setup: &Setup, command: Command) -> Result<Exit> {
    if let Some(broker) = &setup.broker {
        return remote_through(setup, broker, command);
    }
    match command {
        Command::List { all, json } => list::list(setup, all, json),
        Command::Revoke(target) => revoke::revoke(setup, target, &crate::audit::Process::caller()),
        Command::Renew(request) => renew::renew(setup, &request),
        Command::Log { id, since, json } => {
            let about = id.as_deref().map_or(log::About::All, log::About::Id);
            log::log(setup, about, since, json)
        }
        Command::Suggest { id, json } => suggest::suggest(setup, &id, json),
        Command::Status { source, json } => status::status(setup, &source, json),
        Command::Gc => gc::gc(setup),
        Command::Completions(_)
        | Command::Man(_)
        | Command::Serve { .. }
        | Command::Verify(_)
        | Command::Issue(_)
        | Command::Run(_) => {
            bail!("internal error: this subcommand is dispatched before the local ones")
        }
    }
}

/// What every subcommand may need: the config and where the store is.
#[derive(Debug)]
pub struct Setup {
    config: Config,
    state_dir: Option<PathBuf>,
    verbose: bool,
    /// The broker to go through: `--broker`/`LEASE_BROKER`, else `broker` in the config.
    broker: Option<Endpoint>,
    /// The store a broker opened on its config's `store` (etcd), for the subcommands it runs.
    remote: Option<std::sync::Arc<dyn crate::store::Backend>>,
    /// Whether messages may say where the store is: not to a broker's token holders, whom its
    /// path (or its etcd's address) does not concern.
    shows_store: bool,
    /// The config chosen with `--config` or `LEASE_CONFIG`, as an absolute path: a local run
    /// hands it to its command, so that nested runs follow the same policy wherever they `cd`.
    chosen_config: Option<PathBuf>,
}

impl Setup {
    fn new(globals: Globals) -> Result<Setup> {
        let config = Config::load(globals.config.as_deref())?;
        let broker = globals.broker.or_else(|| config.broker.clone());
        // (A relative path whose directory is gone is left out: it was read already, and the
        // command cannot follow it anyway.)
        let chosen_config = globals
            .config
            .as_deref()
            .and_then(|path| std::path::absolute(path).ok());
        Ok(Setup {
            config,
            state_dir: globals.state_dir,
            verbose: globals.verbose,
            broker,
            remote: None,
            shows_store: true,
            chosen_config,
        })
    }

    /// Where `store` is, for a message: its state dir (or etcd's address), or, to a broker's
    /// token holder, only that it is the broker's.
    fn store_shown(&self, store: &Store) -> String {
        if self.shows_store {
            store.shown()
        } else {
            "the broker's store".to_owned()
        }
    }

    /// `--state-dir`/`LEASE_STATE_DIR`, or the XDG state dir.
    fn state_dir(&self) -> Result<PathBuf> {
        match &self.state_dir {
            Some(dir) => Ok(dir.clone()),
            None => default_state_dir(),
        }
    }

    /// Opens the store in [`Setup::state_dir`], or, in a broker on etcd, its store there.
    fn store(&self, mode: Open) -> Result<Store> {
        let store = match (&self.remote, &self.config.store) {
            (Some(remote), _) => Store::remote(std::sync::Arc::clone(remote), &self.state_dir()?)?,
            (None, Some(url)) => bail!(
                "the store is on etcd ({url}, the config's store), which only a broker opens: start `lease serve` with this config and set LEASE_BROKER (or --broker) to reach it"
            ),
            (None, None) => Store::open(&self.state_dir()?, mode)?,
        };
        Ok(store.with_audit_limit(self.config.audit_max_bytes))
    }
}

fn default_state_dir() -> Result<PathBuf> {
    let Some(base) = crate::account::state_dir() else {
        bail!(
            "cannot find a state dir: no home directory is known; set LEASE_STATE_DIR or pass --state-dir"
        );
    };
    Ok(base.join("lease"))
}

/// Runs a subcommand through the broker (`POST /v1/commands`), with the token it is about as
/// the bearer, and prints exactly what the broker's run of it printed.
fn remote_through(setup: &Setup, broker: &Endpoint, command: Command) -> Result<Exit> {
    use crate::wire::{Printed, Remote};
    let read = |source: &crate::request::TokenSource, what: &str| {
        verify::read_token(source, &setup.config.token_env).with_context(|| what.to_owned())
    };
    let seconds = |d: Option<std::time::Duration>| d.map(|d| d.as_secs());
    let (asked, token) = match command {
        Command::Status { source, json } => (
            Remote::Status { json },
            Some(
                verify::read_token(&source, &setup.config.token_env)
                    .map_err(|err| status::without_token(json, err))
                    .context("cannot show the lease's status")?,
            ),
        ),
        Command::Renew(request) => (
            Remote::Renew {
                ttl: seconds(request.ttl),
            },
            Some(read(&request.source, "cannot renew")?),
        ),
        Command::Revoke(crate::request::RevokeTarget::Own(source)) => {
            (Remote::RevokeSelf, Some(read(&source, "cannot revoke")?))
        }
        // A token holder may revoke its own lease and those nested in it by id: the token
        // it runs under says which those are (an operator needs none).
        Command::Revoke(crate::request::RevokeTarget::Ids(ids)) => {
            (Remote::Revoke { ids }, inherited_token(setup)?)
        }
        Command::Revoke(crate::request::RevokeTarget::All) => (Remote::RevokeAll, None),
        Command::List { all, json } => (Remote::List { all, json }, None),
        Command::Log { id, since, json } => (
            Remote::Log {
                id,
                since: seconds(since),
                json,
            },
            inherited_token(setup)?,
        ),
        Command::Suggest { id, json } => (Remote::Suggest { id, json }, inherited_token(setup)?),
        Command::Gc => (Remote::Gc, None),
        _ => bail!("internal error: this subcommand is dispatched before the remote ones"),
    };
    let printed: Printed = crate::client::run_command(broker, token.as_ref(), &asked)?;
    use std::io::Write as _;
    // In the order a local run prints them: a note before the answer, or the answer first.
    if printed.stderr_first {
        std::io::stderr().write_all(printed.stderr.as_bytes())?;
    }
    std::io::stdout()
        .write_all(printed.stdout.as_bytes())
        .context("writing to standard output")?;
    if !printed.stderr_first {
        std::io::stderr().write_all(printed.stderr.as_bytes())?;
    }
    Ok(match printed.exit {
        0 => Exit::Success,
        1 => Exit::Denied,
        2 => Exit::Failure,
        code => Exit::Child(code),
    })
}

/// Works out the lease `asked` for under the config and any parent lease in the environment,
/// or refuses it. The policy's notes are printed only with `--verbose`: `lease run` is silent.
fn plan(setup: &Setup, asked: Asked, store: &Store) -> Result<Plan> {
    let inherited = inherited_token(setup)?;
    let (plan, notes) = policy::plan(
        &setup.config,
        asked,
        store,
        inherited.as_ref(),
        SystemTime::now(),
    )?;
    if setup.verbose {
        for note in notes {
            console::note!("lease: note: {note}");
        }
    }
    Ok(plan)
}

/// The token of a lease this process runs under, if any (where `verify` looks for it): the
/// parent of a lease minted now.
fn inherited_token(setup: &Setup) -> Result<Option<Token>> {
    let at = verify::token_env_in_use(&setup.config.token_env)?;
    Ok(std::env::var(at)
        .ok()
        .filter(|t| !t.is_empty())
        .map(Token::presented))
}

/// Entries of the store that a pass over every lease (`revoke --all`, `gc`) had to skip: each
/// is reported at once in one warning line, and the pass goes on with the rest.
#[derive(Debug, Default)]
struct Skipped(usize);

impl Skipped {
    fn entry(&mut self, id: &crate::token::LeaseId, why: &str) {
        self.0 += 1;
        console::note!("lease: warning: skipping the store entry for lease {id}: {why}");
    }

    /// Success if nothing was skipped; otherwise an error (exit 2) saying the rest was `done`.
    fn into_result(self, done: &str) -> Result<Exit> {
        match self.0 {
            0 => Ok(Exit::Success),
            1 => bail!(
                "1 store entry could not be {done} (see the warning above); every other lease was {done}"
            ),
            n => bail!(
                "{n} store entries could not be {done} (see the warnings above); every other lease was {done}"
            ),
        }
    }
}

/// Prints one JSON document on its own line.
fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    use std::io::Write;
    let text = serde_json::to_string(value).context("encoding JSON")?;
    writeln!(console::Out, "{text}").context("writing to standard output")
}
