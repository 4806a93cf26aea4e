//! `lease revoke ID... | --all`: end leases now.

use std::time::SystemTime;

use anyhow::{Result, bail};

use super::Context;
use crate::audit::{Event, Process};
use crate::cli::RevokeTarget;
use crate::exit::Exit;
use crate::store::{Loaded, Open, Store};
use crate::token::LeaseId;

pub fn revoke(context: &Context, target: RevokeTarget) -> Result<Exit> {
    let store = context.store(Open::ExistingOnly)?;
    let caller = Process::caller();
    match target {
        RevokeTarget::All => {
            for id in store.ids()? {
                // A record that cannot be read grants nothing; there is nothing to revoke.
                revoke_one(&store, &id, "revoke --all", &caller)?;
            }
            Ok(Exit::Success)
        }
        RevokeTarget::Ids(ids) => {
            let mut unknown = Vec::new();
            for text in &ids {
                let loaded = match LeaseId::parse(text) {
                    Some(id) => revoke_one(&store, &id, "revoke", &caller)?,
                    None => Loaded::Missing,
                };
                match loaded {
                    Loaded::Found(_) => {}
                    Loaded::Missing => unknown.push(text.escape_debug().to_string()),
                    Loaded::Corrupt(why) => bail!("cannot revoke lease {text}: {why}"),
                }
            }
            if unknown.is_empty() {
                return Ok(Exit::Success);
            }
            let plural = if unknown.len() == 1 { "" } else { "s" };
            eprintln!(
                "lease: unknown lease id{plural}: {}: see 'lease list --all' for the ids on record",
                unknown.join(", ")
            );
            Ok(Exit::Denied)
        }
    }
}

/// Revokes one lease (a lease already revoked or expired stays as it is) and, when this call
/// revoked it, records a `revoked` event saying `why`.
pub(super) fn revoke_one(
    store: &Store,
    id: &LeaseId,
    why: &str,
    process: &Process,
) -> Result<Loaded> {
    let now = SystemTime::now();
    let mut changed = false;
    let loaded = store.update(id, |record| {
        changed = record.revoke(now);
        changed
    })?;
    if let (true, Loaded::Found(record)) = (changed, &loaded) {
        let mut event = Event::new("revoked", Some(record)).process(process);
        event.reason = Some(why.to_owned());
        super::log(store, &event);
    }
    Ok(loaded)
}
