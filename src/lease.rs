//! A lease comes into being: minting a token and recording its lease as the policy planned it,
//! and the variables that hand it to a command. The `LEASE_*` names are written here, once.

use std::ffi::OsString;

use anyhow::{Result, bail};

use crate::audit::{Event, EventKind, Process};
use crate::config::TOKEN_ENV_VAR;
use crate::owner::Owner;
use crate::policy::Plan;
use crate::record::{Record, rfc3339};
use crate::scope;
use crate::store::Store;
use crate::token::Token;

/// The lease id, in a command's environment.
pub const ID_VAR: &str = "LEASE_ID";
/// The granted scopes, comma-joined.
pub const SCOPE_VAR: &str = "LEASE_SCOPE";
/// The expiry, RFC 3339.
pub const EXPIRES_AT_VAR: &str = "LEASE_EXPIRES_AT";
/// The store, so that nested runs and `verify` find it.
pub const STATE_DIR_VAR: &str = "LEASE_STATE_DIR";

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

/// The lease's variables for the child: its id, scope, expiry, store, the token and the name of
/// the variable that holds it (so that nested runs and `verify` find it under any name).
pub fn variables(
    store: &Store,
    plan: &Plan,
    id: &str,
    scope: &str,
    token: &str,
) -> Vec<(OsString, OsString)> {
    vec![
        (ID_VAR.into(), id.into()),
        (SCOPE_VAR.into(), scope.into()),
        (
            EXPIRES_AT_VAR.into(),
            rfc3339::format(plan.expires_at).into(),
        ),
        (STATE_DIR_VAR.into(), store.dir().as_os_str().to_owned()),
        (TOKEN_ENV_VAR.into(), plan.token_env.clone().into()),
        (plan.token_env.clone().into(), token.into()),
    ]
}

/// The scopes the plan grants, comma-joined, as `LEASE_SCOPE` shows them.
pub fn scope_of(plan: &Plan) -> String {
    let scope: Vec<_> = plan.grants.iter().map(|g| g.scope.clone()).collect();
    scope::join(&scope)
}
