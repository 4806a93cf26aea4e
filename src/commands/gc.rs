//! `lease gc`: remove records that can never grant anything again.

use std::io::Write;
use std::time::SystemTime;

use anyhow::{Context as _, Result};

use super::Context;
use crate::exit::Exit;
use crate::store::{Loaded, Open};

pub fn gc(context: &Context) -> Result<Exit> {
    let store = context.store(Open::ExistingOnly)?;
    let now = SystemTime::now();
    let mut removed = 0usize;
    for id in store.ids()? {
        let garbage = |loaded: &Loaded| match loaded {
            Loaded::Found(record) => record.is_garbage(now),
            Loaded::Corrupt(why) => {
                eprintln!("lease: warning: removing unreadable lease {id}: {why}");
                true
            }
            Loaded::Missing => false,
        };
        if store.remove_if(&id, garbage)? {
            removed += 1;
        }
    }
    store.remove_stale_temp_files(now)?;
    let plural = if removed == 1 { "" } else { "s" };
    writeln!(std::io::stdout().lock(), "removed {removed} lease{plural}")
        .context("writing to standard output")?;
    Ok(Exit::Success)
}
