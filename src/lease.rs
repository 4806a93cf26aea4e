//! A lease comes into being: minting a token and recording its lease as the policy planned it,
//! and the variables that hand it to a command. The `LEASE_*` names are written here, once.

use std::ffi::OsString;
use std::path::Path;
use std::time::SystemTime;

use anyhow::{Result, bail};

use crate::audit::{Event, EventKind, Process};
use crate::config::TOKEN_ENV_VAR;
use crate::endpoint::Endpoint;
use crate::owner::Owner;
use crate::policy::Plan;
use crate::record::{Record, rfc3339};
use crate::scope;
use crate::store::{Change, Loaded, Store, Updated};
use crate::token::{LeaseId, Token};

/// The lease id, in a command's environment.
pub const ID_VAR: &str = "LEASE_ID";
/// The granted scopes, comma-joined.
pub const SCOPE_VAR: &str = "LEASE_SCOPE";
/// The expiry, RFC 3339.
pub const EXPIRES_AT_VAR: &str = "LEASE_EXPIRES_AT";
/// The store, so that nested runs and `verify` find it.
pub const STATE_DIR_VAR: &str = "LEASE_STATE_DIR";
/// The broker, for a run that went through one (instead of `LEASE_STATE_DIR`).
pub const BROKER_VAR: &str = "LEASE_BROKER";
/// The config file a local run's command and its nested runs read, when one was chosen.
pub const CONFIG_VAR: &str = "LEASE_CONFIG";

/// How many times minting retries when a new token's id is already taken (48-bit ids make
/// even one retry vanishingly rare).
const MINT_ATTEMPTS: usize = 4;

/// Mints a token and records its lease as `plan` says; `process` is who it is for. `bind` gets
/// the token before its record exists and says who owns the lease (for `run`, it starts the
/// command held before its exec, and the owner names both); what else it returns is handed
/// back, or dropped if the lease id is taken and another token is minted.
pub fn mint<T>(
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
            store.audit().note(&event);
            return Ok((token, record, bound));
        }
    }
    bail!("could not find a free lease id after {MINT_ATTEMPTS} attempts")
}

/// Where a command's nested runs and `verify` find the authority over its lease.
#[derive(Debug, Clone, Copy)]
pub enum Authority<'a> {
    /// A local store, `LEASE_STATE_DIR`, and the config chosen with `--config` or
    /// `LEASE_CONFIG` (an absolute path), `LEASE_CONFIG`: the policy nested runs follow.
    Store(&'a Path, Option<&'a Path>),
    /// A broker: `LEASE_BROKER`.
    Broker(&'a Endpoint),
}

/// A lease as its command is told of it.
#[derive(Debug, Clone, Copy)]
pub struct Told<'a> {
    /// The lease id (or a placeholder).
    pub id: &'a str,
    /// The scopes, comma-joined.
    pub scope: &'a str,
    /// The expiry.
    pub expires_at: SystemTime,
    /// The variable the token goes in.
    pub token_env: &'a str,
    /// The token (or a placeholder).
    pub token: &'a str,
}

/// The lease's variables for the child: its id, scope, expiry, where its authority is, the
/// token and the name of the variable that holds it (so that nested runs and `verify` find it
/// under any name).
pub fn variables(authority: Authority<'_>, lease: Told<'_>) -> Vec<(OsString, OsString)> {
    let (name, place, config) = match authority {
        Authority::Store(dir, config) => (STATE_DIR_VAR, dir.as_os_str().to_owned(), config),
        Authority::Broker(endpoint) => (BROKER_VAR, endpoint.to_string().into(), None),
    };
    let config = config.map(|path| (CONFIG_VAR.into(), path.as_os_str().to_owned()));
    let mut vars = vec![
        (ID_VAR.into(), lease.id.into()),
        (SCOPE_VAR.into(), lease.scope.into()),
        (
            EXPIRES_AT_VAR.into(),
            rfc3339::format(lease.expires_at).into(),
        ),
        (name.into(), place),
        (TOKEN_ENV_VAR.into(), lease.token_env.into()),
        (lease.token_env.into(), lease.token.into()),
    ];
    vars.extend(config);
    vars
}

/// The scopes the plan grants, comma-joined, as `LEASE_SCOPE` shows them.
pub fn scope_of(plan: &Plan) -> String {
    let scope: Vec<_> = plan.grants.iter().map(|g| g.scope.clone()).collect();
    scope::join(&scope)
}

/// Revokes one lease (a lease already revoked or expired stays as it is) and, when this call
/// revoked it, records a `revoked` event saying `why`.
pub fn revoke(store: &Store, id: &LeaseId, why: &str, process: &Process) -> Result<Loaded> {
    end(
        store,
        id,
        process,
        EventKind::Revoked,
        Some(why),
        Record::revoke,
    )
}

/// Ends, as `owner gone`, the run of a connection that closed or went silent, if this broker
/// still holds it: on a store shared by brokers the run may have come back to another one.
pub fn let_go(store: &Store, id: &LeaseId, process: &Process) -> Result<Loaded> {
    owner_gone_if(store, id, process, |owner| owner.is_current())
}

/// Ends, as `owner gone`, a broker's run that no live broker holds, if that is still so on
/// the record as it now stands (another broker may have taken the run over since it was read).
pub fn end_orphan(store: &Store, id: &LeaseId, process: &Process) -> Result<Loaded> {
    owner_gone_if(store, id, process, |owner| {
        owner.broker && !owner.is_current() && owner.state() == crate::owner::OwnerState::Gone
    })
}

/// Ends a lease as `owner gone` if its owner, on the record as it now stands, is `still` so.
fn owner_gone_if(
    store: &Store,
    id: &LeaseId,
    process: &Process,
    still: fn(&Owner) -> bool,
) -> Result<Loaded> {
    let kind = EventKind::OwnerGone;
    end(store, id, process, kind, None, |record, now| {
        record.owner.as_ref().is_some_and(still) && record.mark_owner_gone(now)
    })
}

fn end(
    store: &Store,
    id: &LeaseId,
    process: &Process,
    kind: EventKind,
    why: Option<&str>,
    change: impl Fn(&mut Record, SystemTime) -> bool,
) -> Result<Loaded> {
    let now = SystemTime::now();
    Ok(
        match store.update(id, |record| Change::when(change(record, now)))? {
            Updated::Found(record, ended_now) => {
                if ended_now {
                    let mut event = Event::new(kind, Some(&record)).process(process);
                    event.reason = why.map(str::to_owned);
                    store.audit().note(&event);
                }
                Loaded::Found(record)
            }
            Updated::Missing => Loaded::Missing,
            Updated::Corrupt(why) => Loaded::Corrupt(why),
        },
    )
}
