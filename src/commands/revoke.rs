//! `lease revoke ID... | --self | --all`: end leases now.

use std::collections::HashMap;

use anyhow::{Context as _, Result, bail};

use super::Setup;
use crate::audit::Process;
use crate::exit::Exit;
use crate::request::{RevokeTarget, TokenSource};
use crate::store::{Loaded, Open, Store};
use crate::token::{LeaseId, Token};

pub fn revoke(setup: &Setup, target: RevokeTarget, caller: &Process) -> Result<Exit> {
    let store = setup.store(Open::ExistingOnly)?;
    match target {
        RevokeTarget::All => {
            // One bad entry must not keep the good leases alive: it is reported and skipped.
            let mut skipped = super::Skipped::default();
            for id in store.ids()? {
                match crate::lease::revoke(&store, &id, "revoke --all", caller) {
                    Ok(Loaded::Found(_) | Loaded::Missing) => {}
                    Ok(Loaded::Corrupt(why)) => skipped.entry(&id, &why),
                    Err(err) => skipped.entry(&id, &format!("{err:#}")),
                }
            }
            skipped.into_result("revoked")
        }
        RevokeTarget::Own(source) => revoke_own(setup, &store, &source, caller),
        RevokeTarget::Ids(ids) => {
            // As with --all, one lease that cannot be revoked keeps none of the others alive:
            // each is tried, and what failed is said.
            let mut unknown = Vec::new();
            let mut skipped = super::Skipped::default();
            for text in &ids {
                let Some(id) = LeaseId::parse(text) else {
                    unknown.push(text.escape_debug().to_string());
                    continue;
                };
                match crate::lease::revoke(&store, &id, "revoke", caller) {
                    Ok(Loaded::Found(_)) => {}
                    Ok(Loaded::Missing) => unknown.push(text.escape_debug().to_string()),
                    Ok(Loaded::Corrupt(why)) => skipped.entry(&id, &why),
                    Err(err) => skipped.entry(&id, &format!("{err:#}")),
                }
            }
            if !unknown.is_empty() {
                let plural = if unknown.len() == 1 { "" } else { "s" };
                super::console::note!(
                    "lease: unknown lease id{plural}: {}: see 'lease list --all' for the ids on record",
                    unknown.join(", ")
                );
            }
            skipped.into_result("revoked")?;
            Ok(if unknown.is_empty() {
                Exit::Success
            } else {
                Exit::Denied
            })
        }
    }
}

/// `revoke --self`: the lease of the presented token, then every lease nested under it. A lease
/// that already ended is left as it is, and that is success: this is a CI job's always-run
/// last step, which may run after the lease expired or after an earlier attempt.
fn revoke_own(
    setup: &Setup,
    store: &Store,
    source: &TokenSource,
    caller: &Process,
) -> Result<Exit> {
    let token =
        super::verify::read_token(source, &setup.config.token_env).context("cannot revoke")?;
    // Here, unlike on a broker, the state dir is the caller's to choose.
    let hint = ": pass the state dir it was issued in (--state-dir or LEASE_STATE_DIR)";
    revoke_token(store, &token, caller, &setup.store_shown(store), hint)
}

/// `revoke --self` for `token` (also what the broker runs for a token holder); the refusal of
/// a token no lease in the store matches names the store as `store_shown`, then gives `hint`.
pub fn revoke_token(
    store: &Store,
    token: &Token,
    caller: &Process,
    store_shown: &str,
    hint: &str,
) -> Result<Exit> {
    const WHY: &str = "revoke --self";
    if !token.is_well_formed() {
        bail!(
            "cannot revoke: the token presented is not a lease token (mistyped or truncated?): present the one `lease issue` printed or `lease run` set"
        );
    }
    let hash = token.hash();
    let id = hash.id();
    match store.load(&id)? {
        Loaded::Found(record) if hash.matches_hex(&record.token_sha256) => {}
        Loaded::Corrupt(why) => bail!("cannot revoke lease {id}: {why}"),
        Loaded::Found(_) | Loaded::Missing => {
            bail!("cannot revoke: no lease in {store_shown} matches the token{hint}")
        }
    }
    // The lease first: from then on nothing nested under it grants, and no new lease can be
    // nested under it, so the walk below finds every lease there will ever be in its tree.
    crate::lease::revoke(store, &id, WHY, caller)?;
    for nested in descendants(store, &id)? {
        crate::lease::revoke(store, &nested, WHY, caller)?;
    }
    Ok(Exit::Success)
}

/// The leases nested under `root`, at any depth: those whose chain of parents leads to it.
/// Records that cannot be read are skipped (with a warning): they grant nothing.
fn descendants(store: &Store, root: &LeaseId) -> Result<Vec<LeaseId>> {
    let mut children: HashMap<LeaseId, Vec<LeaseId>> = HashMap::new();
    for record in super::list::load_all(store)? {
        if let Some(parent) = record.parent {
            children.entry(parent).or_default().push(record.id);
        }
    }
    let mut found = Vec::new();
    let mut next = vec![root.clone()];
    // Each parent's children are taken once, so even a loop (only a tampered store has one)
    // ends.
    while let Some(id) = next.pop() {
        for child in children.remove(&id).unwrap_or_default() {
            if child != *root {
                found.push(child.clone());
                next.push(child);
            }
        }
    }
    Ok(found)
}
