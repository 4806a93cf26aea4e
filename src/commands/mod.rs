//! One module per subcommand, and what they share: the loaded config, the store, minting.

mod gc;
mod issue;
mod list;
mod log;
mod renew;
pub(crate) mod revoke;
mod run;
mod shell;
mod status;
mod suggest;
mod verify;

use std::path::PathBuf;
use std::time::SystemTime;

use anyhow::{Context as _, Result, bail};

use crate::audit::{Event, EventKind, Process};
use crate::cli::{Command, Globals, Invocation};
use crate::config::Config;
use crate::exit::Exit;
use crate::owner::Owner;
use crate::policy::{self, Asked, Plan};
use crate::record::{Record, rfc3339};
use crate::store::{Open, Store};
use crate::token::Token;

/// Runs a validated invocation.
pub fn dispatch(invocation: Invocation) -> Result<Exit> {
    // Completions and the man page describe lease itself: they read no config and no store.
    let context = || Context::new(invocation.globals);
    match invocation.command {
        Command::Completions(shell) => shell::completions(shell),
        Command::Man(page) => shell::man(&page),
        Command::Run(request) => run::run(&context()?, request),
        Command::Verify(request) => verify::verify(&context()?, &request),
        Command::Issue(request) => issue::issue(&context()?, request),
        Command::List { all, json } => list::list(&context()?, all, json),
        Command::Revoke(target) => revoke::revoke(&context()?, target),
        Command::Renew(request) => renew::renew(&context()?, &request),
        Command::Log { id, since, json } => log::log(&context()?, id.as_deref(), since, json),
        Command::Suggest { id, json } => suggest::suggest(&context()?, &id, json),
        Command::Status { source, json } => status::status(&context()?, &source, json),
        Command::Gc => gc::gc(&context()?),
    }
}

/// What every subcommand may need: the config and where the store is.
#[derive(Debug)]
pub struct Context {
    config: Config,
    state_dir: Option<PathBuf>,
    verbose: bool,
}

impl Context {
    fn new(globals: Globals) -> Result<Context> {
        Ok(Context {
            config: Config::load(globals.config.as_deref())?,
            state_dir: globals.state_dir,
            verbose: globals.verbose,
        })
    }

    /// Opens the store in `--state-dir`/`LEASE_STATE_DIR`, or in the XDG state dir.
    fn store(&self, mode: Open) -> Result<Store> {
        let dir = match &self.state_dir {
            Some(dir) => dir.clone(),
            None => default_state_dir()?,
        };
        Ok(Store::open(&dir, mode)?.with_audit_limit(self.config.audit_max_bytes))
    }
}

fn default_state_dir() -> Result<PathBuf> {
    let Some(dirs) = directories::BaseDirs::new() else {
        bail!(
            "cannot find a state dir: no home directory is known; set LEASE_STATE_DIR or pass --state-dir"
        );
    };
    let base = dirs.state_dir().unwrap_or_else(|| dirs.data_local_dir());
    Ok(base.join("lease"))
}

/// How many times minting retries when a new token's id is already taken (48-bit ids make
/// even one retry vanishingly rare).
const MINT_ATTEMPTS: usize = 4;

/// Works out the lease `asked` for under the config and any parent lease in the environment,
/// or refuses it. The policy's notes are printed only with `--verbose`: `lease run` is silent.
fn plan(context: &Context, asked: Asked, store: &Store) -> Result<Plan> {
    let at = verify::token_env_in_use(&context.config.token_env)?;
    let inherited = std::env::var(at)
        .ok()
        .filter(|t| !t.is_empty())
        .map(Token::presented);
    let (plan, notes) = policy::plan(
        &context.config,
        asked,
        store,
        inherited.as_ref(),
        SystemTime::now(),
    )?;
    if context.verbose {
        for note in notes {
            eprintln!("lease: note: {note}");
        }
    }
    Ok(plan)
}

/// Appends `event` to the store's audit trail; a trail that cannot be written is reported, and
/// does not stop the command.
fn log(store: &Store, event: &Event) {
    if let Err(err) = store.audit().append(event) {
        eprintln!("lease: warning: {err:#}");
    }
}

/// Mints a token and records its lease as `plan` says; `process` is who it is for. `bind` gets
/// the token before its record exists and says who owns the lease (for `run`, it starts the
/// command held before its exec, and the owner names both); what else it returns is handed
/// back, or dropped if the lease id is taken and another token is minted.
fn mint<T>(
    store: &Store,
    plan: &Plan,
    process: &Process,
    mut bind: impl FnMut(&Token) -> Result<(Option<Owner>, T)>,
) -> Result<(Token, Record, T)> {
    let scope: Vec<_> = plan.grants.iter().map(|g| g.scope.clone()).collect();
    for _ in 0..MINT_ATTEMPTS {
        let token = Token::mint()?;
        let (owner, bound) = bind(&token)?;
        let mut record = Record::new(
            token.hash(),
            scope.clone(),
            plan.issued_at,
            plan.expires_at,
            owner,
        );
        record.renewable_until = Some(plan.renewable_until);
        record.parent = plan.parent.as_ref().map(|p| p.id.clone());
        record.run = if record.owner.is_some() {
            Some(record.id.clone())
        } else {
            plan.parent.as_ref().and_then(|p| p.run.clone())
        };
        record.uses_left = plan.uses;
        record.scope_uses_left = plan
            .grants
            .iter()
            .filter_map(|g| g.uses.map(|n| (g.scope.as_str().to_owned(), n)))
            .collect();
        if store.insert(&record)? {
            let mut event = Event::new(EventKind::Issued, Some(&record)).process(process);
            event.scope = Some(record.scope.iter().map(|s| s.to_string()).collect());
            event.expires_at = Some(rfc3339::format(record.expires_at));
            log(store, &event);
            return Ok((token, record, bound));
        }
    }
    bail!("could not find a free lease id after {MINT_ATTEMPTS} attempts")
}

/// Entries of the store that a pass over every lease (`revoke --all`, `gc`) had to skip: each
/// is reported at once in one warning line, and the pass goes on with the rest.
#[derive(Debug, Default)]
struct Skipped(usize);

impl Skipped {
    fn entry(&mut self, id: &crate::token::LeaseId, why: &str) {
        self.0 += 1;
        eprintln!("lease: warning: skipping the store entry for lease {id}: {why}");
    }

    /// Success if nothing was skipped; otherwise an error (exit 2) saying the rest was `done`.
    fn into_result(self, done: &str) -> Result<Exit> {
        match self.0 {
            0 => Ok(Exit::Success),
            1 => bail!(
                "1 store entry could not be {done} (see the warning above); every other lease was"
            ),
            n => bail!(
                "{n} store entries could not be {done} (see the warnings above); every other lease was"
            ),
        }
    }
}

/// Prints one JSON document on its own line.
fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    use std::io::Write;
    let text = serde_json::to_string(value).context("encoding JSON")?;
    writeln!(std::io::stdout().lock(), "{text}").context("writing to standard output")
}
