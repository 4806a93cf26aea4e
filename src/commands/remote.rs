//! The subcommands a client runs through a broker (`POST /v1/commands`): who may ask for each,
//! and running it on the broker's store and policy with what it prints captured, so that the
//! client prints exactly what a local run would have.

use std::path::PathBuf;
use std::time::Duration;

use super::{Setup, console, gc, list, log, renew, revoke, status, suggest};
use crate::audit::Process;
use crate::config::Config;
use crate::exit::{Exit, ExitError};
use crate::request::RevokeTarget;
use crate::store::Open;
use crate::token::Token;
use crate::wire::{Printed, Remote};

/// Why the broker will not run a subcommand: unauthenticated (401) or not allowed (403).
#[derive(Debug)]
pub enum Refused {
    /// No usable token where one is needed.
    NoToken(String),
    /// The caller may not do this.
    NotAllowed(String),
    /// The store cannot be read to tell (503): what the client is told, and what the broker's
    /// log says (the store's place, which a token holder is not told).
    Unavailable { told: String, logged: String },
}

/// What a subcommand run for a client printed, and whether it failed because the token it was
/// about is no credential at all (HTTP's `401`: malformed, unknown, expired, revoked, owner
/// gone), though the command, as locally, said so in its own words.
#[derive(Debug)]
pub struct Ran {
    pub printed: Printed,
    pub no_credential: bool,
}

/// Runs `asked` for a client of the broker: an `operator` (a uid in `operators` on the
/// socket) may run any of them; a token holder (`bearer`) only those about its own lease.
pub fn on_broker(
    config: Config,
    state_dir: PathBuf,
    remote: Option<std::sync::Arc<dyn crate::store::Backend>>,
    asked: Remote,
    bearer: Option<Token>,
    operator: bool,
    process: &Process,
) -> Result<Ran, Refused> {
    let setup = Setup {
        config,
        state_dir: Some(state_dir),
        verbose: false,
        broker: None,
        remote,
        shows_store: operator,
        chosen_config: None,
    };
    // A store that cannot be read is the broker's trouble, not the command's (503, as for every
    // endpoint); a token holder is not told where it is.
    let unavailable = |err: anyhow::Error| Refused::Unavailable {
        told: if operator {
            format!("{err:#}")
        } else {
            "the broker cannot read its store; nothing is changed".to_owned()
        },
        logged: format!("{err:#}"),
    };
    // (Only for a caller that may be told anything at all: the others are refused below.)
    if operator || bearer.is_some() {
        setup.store(Open::ExistingOnly).map_err(unavailable)?;
    }
    let own = |what: &str| -> Result<&Token, Refused> {
        match &bearer {
            Some(token) => Ok(token),
            None => Err(Refused::NoToken(format!(
                "no token: `lease {what}` through the broker is about the lease of a token: set LEASE_TOKEN (over HTTP, send Authorization: Bearer)"
            ))),
        }
    };
    let operators_only = |what: &str| -> Result<(), Refused> {
        if operator {
            Ok(())
        } else {
            Err(Refused::NotAllowed(format!(
                "not allowed: `lease {what}` through the broker needs an operator (a uid in operators, on the broker's unix socket)"
            )))
        }
    };
    // A token holder may act by id only on its own lease and the leases nested in it: the
    // token must be a lease's on record (its whole hash, not just the id it starts with). Any
    // other id, known or not, is refused alike (the answer tells no one which ids exist).
    let own_ids = |ids: Vec<String>, what: &str| -> Result<Vec<String>, Refused> {
        if operator {
            return Ok(ids);
        }
        // Neither an operator nor a token holder: the right it lacks is named.
        let Some(token) = &bearer else {
            return Err(Refused::NotAllowed(format!(
                "not allowed: `lease {what}` through the broker needs an operator (a uid in operators, on the broker's unix socket), or the token of the lease or of one it is nested in (set LEASE_TOKEN)"
            )));
        };
        if !token.is_well_formed() {
            return Err(Refused::NoToken(crate::token::MALFORMED.to_owned()));
        }
        let unknown = || Refused::NoToken("unknown: no lease matches the token".to_owned());
        let store = setup.store(Open::ExistingOnly).map_err(unavailable)?;
        let mine = match store.find(&token.hash()).map_err(unavailable)? {
            crate::store::Loaded::Found(record) => record.id,
            crate::store::Loaded::Corrupt(why) => {
                return Err(unavailable(anyhow::anyhow!(
                    "corrupt record: the token's lease cannot be read: {why}"
                )));
            }
            crate::store::Loaded::Missing => return Err(unknown()),
        };
        if ids.is_empty() {
            return Ok(vec![mine.to_string()]);
        }
        for id in &ids {
            // A malformed id is no lease of the holder's either.
            let ours = match crate::token::LeaseId::parse(id) {
                Some(id) => within(&store, &mine, &id).map_err(unavailable)?,
                None => false,
            };
            if !ours {
                return Err(Refused::NotAllowed(format!(
                    "not allowed: a token holder may `lease {what}` only its own lease ({mine}) and the leases nested in it; '{}' is not one of them, and any other needs an operator",
                    id.escape_debug()
                )));
            }
        }
        Ok(ids)
    };
    // Whether the holder's token is a credential at all, for the commands about its own lease
    // (before they run: `revoke --self` ends it).
    let mut no_credential = false;
    let mut about_own = |token: &Token| no_credential = names_no_lease(&setup, token);
    let run: Box<dyn FnOnce() -> anyhow::Result<Exit>> = match asked {
        Remote::Status { json } => {
            let token = own("status")?.clone();
            about_own(&token);
            Box::new(move || status::status_of(&setup, &token, json))
        }
        Remote::Expiry => {
            let token = own("run")?.clone();
            Box::new(move || {
                let store = setup.store(Open::ExistingOnly)?;
                match store.find(&token.hash())? {
                    crate::store::Loaded::Found(record) => {
                        use std::io::Write as _;
                        let at = crate::record::rfc3339::format(record.expires_at);
                        writeln!(console::Out, "{at}")?;
                        Ok(Exit::Success)
                    }
                    _ => Ok(Exit::Denied),
                }
            })
        }
        Remote::Renew { ttl } => {
            let token = own("renew")?.clone();
            about_own(&token);
            let process = process.clone();
            Box::new(move || {
                renew::renew_with(&setup, &token, ttl.map(Duration::from_secs), &process)
            })
        }
        Remote::RevokeSelf => {
            let token = own("revoke --self")?.clone();
            about_own(&token);
            let process = process.clone();
            Box::new(move || {
                let store = setup.store(Open::ExistingOnly)?;
                revoke::revoke_token(&store, &token, &process, &setup.store_shown(&store), "")
            })
        }
        Remote::Revoke { ids } => {
            if ids.is_empty() {
                operators_only("revoke")?;
            }
            let ids = own_ids(ids, "revoke")?;
            let process = process.clone();
            Box::new(move || revoke::revoke(&setup, RevokeTarget::Ids(ids), &process))
        }
        Remote::RevokeAll => {
            operators_only("revoke --all")?;
            let process = process.clone();
            Box::new(move || revoke::revoke(&setup, RevokeTarget::All, &process))
        }
        Remote::List { all, json } => {
            operators_only("list")?;
            Box::new(move || list::list(&setup, all, json))
        }
        Remote::Log { id, since, json } => {
            // A token holder asking for no lease in particular gets its own tree.
            let tree = id.is_none() && !operator;
            let id = own_ids(id.into_iter().collect(), "log")?.pop();
            Box::new(move || {
                let about = match id.as_deref() {
                    Some(id) if tree => log::About::Tree(id),
                    Some(id) => log::About::Id(id),
                    None => log::About::All,
                };
                log::log(&setup, about, since.map(Duration::from_secs), json)
            })
        }
        Remote::Suggest { id, json } => {
            let id = own_ids(vec![id], "suggest")?.pop().unwrap_or_default();
            Box::new(move || suggest::suggest(&setup, &id, json))
        }
        Remote::Gc => {
            operators_only("gc")?;
            Box::new(move || gc::gc(&setup))
        }
    };
    let (result, printed) = console::captured(|| {
        let result = run();
        if let Err(err) = &result {
            console::note!("lease: {err:#}");
        }
        result
    });
    let exit = match result {
        Ok(exit) => exit,
        Err(err) => err
            .downcast_ref::<ExitError>()
            .map_or(Exit::Failure, ExitError::exit),
    };
    Ok(Ran {
        printed: Printed {
            stdout: String::from_utf8_lossy(&printed.out).into_owned(),
            stderr: String::from_utf8_lossy(&printed.err).into_owned(),
            stderr_first: printed.err_first && !printed.out.is_empty(),
            exit: exit.code(),
        },
        // A command that succeeded all the same (`revoke --self` of a lease revoked already)
        // was answered, not refused.
        no_credential: no_credential && exit != Exit::Success,
    })
}

/// Whether `token` names no lease that could be its holder's credential (see [`Ran`]). A
/// store that cannot be read says nothing here: the command itself says so.
fn names_no_lease(setup: &Setup, token: &Token) -> bool {
    if !token.is_well_formed() {
        return true;
    }
    let Ok(store) = setup.store(Open::ExistingOnly) else {
        return false;
    };
    match crate::authorize::standing(&store, token, std::time::SystemTime::now()) {
        Ok(crate::authorize::Standing::Dead(denial)) => denial.reason.is_no_credential(),
        _ => false,
    }
}

/// Whether `id` is `mine` or nested in it: its chain of parents reaches `mine` (within
/// [`crate::authorize::MAX_DEPTH`] steps, past which no chain is followed).
fn within(
    store: &crate::store::Store,
    mine: &crate::token::LeaseId,
    id: &crate::token::LeaseId,
) -> anyhow::Result<bool> {
    let mut at = id.clone();
    for _ in 0..=crate::authorize::MAX_DEPTH {
        if at == *mine {
            return Ok(true);
        }
        match store.load(&at)? {
            crate::store::Loaded::Found(record) => match record.parent {
                Some(parent) => at = parent,
                None => return Ok(false),
            },
            _ => return Ok(false),
        }
    }
    Ok(false)
}
