//! `lease revoke ID... | --all`: end leases now.

use std::time::SystemTime;

use anyhow::{Result, bail};

use super::Context;
use crate::cli::RevokeTarget;
use crate::exit::Exit;
use crate::store::{Loaded, Open};
use crate::token::LeaseId;

pub fn revoke(context: &Context, target: RevokeTarget) -> Result<Exit> {
    let store = context.store(Open::ExistingOnly)?;
    let now = SystemTime::now();
    match target {
        RevokeTarget::All => {
            for id in store.ids()? {
                // A record that cannot be read grants nothing; there is nothing to revoke.
                store.update(&id, |record| record.revoke(now))?;
            }
            Ok(Exit::Success)
        }
        RevokeTarget::Ids(ids) => {
            let mut unknown = Vec::new();
            for text in &ids {
                let loaded = match LeaseId::parse(text) {
                    Some(id) => store.update(&id, |record| record.revoke(now))?,
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
