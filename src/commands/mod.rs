//! One module per subcommand, and what they share: the loaded config, the store, minting.

mod gc;
mod issue;
mod list;
mod revoke;
mod run;
pub mod verify;

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail};

use crate::cli::{Command, Globals, Invocation};
use crate::config::Config;
use crate::exit::Exit;
use crate::owner::Owner;
use crate::record::Record;
use crate::scope::Scope;
use crate::store::{Open, Store};
use crate::token::Token;

/// Runs a validated invocation.
pub fn dispatch(invocation: Invocation) -> Result<Exit> {
    let context = Context::new(invocation.globals)?;
    match invocation.command {
        Command::Run(request) => run::run(&context, request),
        Command::Verify(request) => verify::verify(&context, &request),
        Command::Issue(request) => issue::issue(&context, request),
        Command::List { all, json } => list::list(&context, all, json),
        Command::Revoke(target) => revoke::revoke(&context, target),
        Command::Gc => gc::gc(&context),
    }
}

/// What every subcommand may need: the config and where the store is.
#[derive(Debug)]
pub struct Context {
    config: Config,
    state_dir: Option<PathBuf>,
}

impl Context {
    fn new(globals: Globals) -> Result<Context> {
        Ok(Context {
            config: Config::load(globals.config.as_deref())?,
            state_dir: globals.state_dir,
        })
    }

    /// Opens the store in `--state-dir`/`LEASE_STATE_DIR`, or in the XDG state dir.
    fn store(&self, mode: Open) -> Result<Store> {
        let dir = match &self.state_dir {
            Some(dir) => dir.clone(),
            None => default_state_dir()?,
        };
        Store::open(&dir, mode)
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

/// Mints a token and records its lease.
fn mint(
    store: &Store,
    scope: Vec<Scope>,
    ttl: Duration,
    owner: Option<Owner>,
) -> Result<(Token, Record)> {
    // Records keep whole seconds: issued_at rounds down and expires_at up, so a lease lives at
    // least its ttl (and less than a second more), and the expiry in LEASE_EXPIRES_AT is exact.
    let now = SystemTime::now();
    let since_epoch = now
        .duration_since(UNIX_EPOCH)
        .context("the clock is before 1970")?;
    let issued_at = UNIX_EPOCH + Duration::from_secs(since_epoch.as_secs());
    let end = since_epoch + ttl;
    let end_secs = end.as_secs() + u64::from(end.subsec_nanos() > 0);
    let expires_at = UNIX_EPOCH
        .checked_add(Duration::from_secs(end_secs))
        .context("the ttl reaches past the end of time")?;
    for _ in 0..MINT_ATTEMPTS {
        let token = Token::mint()?;
        let record = Record::new(
            token.hash(),
            scope.clone(),
            issued_at,
            expires_at,
            owner.clone(),
        );
        if store.insert(&record)? {
            return Ok((token, record));
        }
    }
    bail!("could not find a free lease id after {MINT_ATTEMPTS} attempts")
}

/// Prints one JSON document on its own line.
fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    use std::io::Write;
    let text = serde_json::to_string(value).context("encoding JSON")?;
    writeln!(std::io::stdout().lock(), "{text}").context("writing to standard output")
}
