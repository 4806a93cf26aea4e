//! `lease gc`: remove records that can never grant anything again.

use std::io::Write;
use std::time::SystemTime;

use anyhow::{Context as _, Result};

use super::Setup;
use crate::audit::{Event, EventKind};
use crate::exit::Exit;
use crate::record::{State, Status};
use crate::store::{Loaded, Open};

pub fn gc(setup: &Setup) -> Result<Exit> {
    let store = setup.store(Open::ExistingOnly)?;
    let now = SystemTime::now();
    let mut removed = 0usize;
    let mut skipped = super::Skipped::default();
    for id in store.ids()? {
        let mut event = None;
        let mut unreadable = None;
        let garbage = |loaded: &Loaded| match loaded {
            Loaded::Found(record) => {
                let garbage = record.is_garbage(now);
                // The trail records how an active lease ended, if nothing did before.
                event = match (garbage, record.state, record.status(now)) {
                    (true, State::Active, Status::OwnerGone) => {
                        Some(Event::new(EventKind::OwnerGone, Some(record)))
                    }
                    (true, State::Active, Status::Expired) => {
                        Some(Event::new(EventKind::Expired, Some(record)))
                    }
                    _ => None,
                };
                garbage
            }
            Loaded::Corrupt(why) => {
                unreadable = Some(why.clone());
                true
            }
            Loaded::Missing => false,
        };
        let removed_it = match store.remove_if(&id, garbage) {
            Ok(removed_it) => removed_it,
            Err(err) => {
                skipped.entry(&id, &format!("{err:#}"));
                false
            }
        };
        if removed_it {
            removed += 1;
            if let Some(why) = unreadable {
                super::console::note!("lease: warning: removed unreadable lease {id}: {why}");
            }
            if let Some(mut event) = event {
                event.reason = Some("gc".to_owned());
                store.audit().note(&event);
            }
        }
    }
    store.remove_stale_temp_files(now)?;
    let plural = if removed == 1 { "" } else { "s" };
    writeln!(super::console::Out, "removed {removed} lease{plural}")
        .context("writing to standard output")?;
    skipped.into_result("collected")
}
