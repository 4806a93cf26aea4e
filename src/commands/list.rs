//! `lease list`: the leases on record, as a table or JSON.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::time::SystemTime;

use anyhow::{Context as _, Result};
use serde::Serialize;

use super::{Context, print_json};
use crate::authorize;
use crate::exit::Exit;
use crate::record::{Record, rfc3339};
use crate::store::{Loaded, Open, Store};
use crate::token::LeaseId;
use crate::ttl;

#[derive(Serialize)]
struct Listed<'a> {
    id: &'a str,
    scope: Vec<&'a str>,
    issued_at: String,
    expires_at: String,
    pid: Option<u32>,
    command: Option<&'a str>,
    state: &'static str,
    parent: Option<&'a str>,
    uses_left: Option<u64>,
    scope_uses_left: &'a BTreeMap<String, u64>,
}

pub fn list(context: &Context, all: bool, json: bool) -> Result<Exit> {
    let store = context.store(Open::ExistingOnly)?;
    let now = SystemTime::now();
    let mut leases = states(load_all(&store)?, now);
    leases.retain(|(_, state)| all || *state == "active");
    leases.sort_by(|(a, _), (b, _)| a.issued_at.cmp(&b.issued_at).then_with(|| a.id.cmp(&b.id)));

    if json {
        let listed: Vec<Listed<'_>> = leases
            .iter()
            .map(|(record, state)| Listed {
                id: &record.id,
                scope: record.scope.iter().map(|s| s.as_str()).collect(),
                issued_at: rfc3339::format(record.issued_at),
                expires_at: rfc3339::format(record.expires_at),
                pid: record.owner.as_ref().map(|o| o.pid),
                command: record.owner.as_ref().map(|o| o.command.as_str()),
                state,
                parent: record.parent.as_deref(),
                uses_left: record.uses_left,
                scope_uses_left: &record.scope_uses_left,
            })
            .collect();
        print_json(&listed)?;
    } else if !leases.is_empty() {
        print_table(&leases, now).context("writing to standard output")?;
    }
    Ok(Exit::Success)
}

/// Every record with its state, the way verify sees it: `active`, or why not (a nested lease
/// whose parent was revoked is `parent revoked`).
///
/// Each record's chain is resolved once and remembered, so a record's state comes from its own
/// and its parent's: linear in the number of records, however deep they nest (walking every
/// chain from its leaf, as verify does for one token, is quadratic in the depth). The result is
/// what [`authorize::walk`] gives for each record; the tests check the two agree.
fn states(records: Vec<Record>, now: SystemTime) -> Vec<(Record, &'static str)> {
    let index: HashMap<&str, usize> = records
        .iter()
        .enumerate()
        .map(|(i, r)| (r.id.as_str(), i))
        .collect();
    let mut resolved: Vec<Option<Resolved>> = vec![None; records.len()];
    let mut waiting = vec![false; records.len()];
    for start in 0..records.len() {
        // The records whose state waits on their parent's, leaf first.
        let mut pending: Vec<usize> = Vec::new();
        let mut at = start;
        let mut found = loop {
            if let Some(done) = resolved[at] {
                break done;
            }
            let record = &records[at];
            if let Some(reason) = own_reason(record, now) {
                break Resolved::dead_at(reason, 0);
            }
            let parent = match &record.parent {
                None => break Resolved::live(0),
                Some(parent) if LeaseId::parse(parent).is_none() => {
                    break Resolved::broken("corrupt record", 0);
                }
                Some(parent) => index.get(parent.as_str()).copied(),
            };
            let Some(parent) = parent else {
                break Resolved::broken("parent gone", 0);
            };
            // A parent that is already waiting closes a loop: only a tampered store holds one.
            if parent == at || waiting[parent] {
                break Resolved::broken("corrupt record", 0);
            }
            pending.push(at);
            waiting[at] = true;
            at = parent;
        };
        resolved[at] = Some(found);
        while let Some(child) = pending.pop() {
            found = found.child();
            resolved[child] = Some(found);
            waiting[child] = false;
        }
    }
    let states = resolved
        .into_iter()
        .map(|r| r.map_or("corrupt record", Resolved::state));
    records.into_iter().zip(states).collect()
}

/// How a record's chain ends, counted from the record: what [`authorize::walk`] finds.
#[derive(Debug, Clone, Copy)]
struct Resolved {
    /// The reason word for this record, or `None` while every lease up to `steps` is live.
    reason: Option<&'static str>,
    /// How many parents up the deciding lease is.
    steps: usize,
    /// Whether the reason comes from following the deciding lease's parent link (a parent that
    /// is gone, a loop) rather than from the lease itself.
    from_link: bool,
}

impl Resolved {
    fn live(steps: usize) -> Resolved {
        Resolved {
            reason: None,
            steps,
            from_link: false,
        }
    }

    fn dead_at(reason: &'static str, steps: usize) -> Resolved {
        Resolved {
            reason: Some(reason),
            steps,
            from_link: false,
        }
    }

    fn broken(reason: &'static str, steps: usize) -> Resolved {
        Resolved {
            reason: Some(reason),
            steps,
            from_link: true,
        }
    }

    /// The same chain seen from the child one step further down.
    fn child(self) -> Resolved {
        let reason = match self.reason {
            Some(reason) if !self.from_link => Some(authorize::parent_reason(reason)),
            other => other,
        };
        Resolved {
            reason,
            steps: self.steps + 1,
            from_link: self.from_link,
        }
    }

    /// The state word. walk checks a lease before the depth, and the depth before the link to
    /// the parent; past [`authorize::MAX_DEPTH`] a chain fails closed.
    fn state(self) -> &'static str {
        let within = if self.reason.is_some() && !self.from_link {
            self.steps <= authorize::MAX_DEPTH
        } else {
            self.steps < authorize::MAX_DEPTH
        };
        match self.reason {
            _ if !within => "corrupt record",
            Some(reason) => reason,
            None => "active",
        }
    }
}

/// Why this lease on its own cannot grant anything, if so.
fn own_reason(record: &Record, now: SystemTime) -> Option<&'static str> {
    Some(authorize::own_state(record, now)).filter(|state| *state != "active")
}

/// Every readable record; unreadable ones are skipped with a warning.
pub(super) fn load_all(store: &Store) -> Result<Vec<Record>> {
    let mut records = Vec::new();
    for id in store.ids()? {
        match store.load(&id)? {
            Loaded::Found(record) => records.push(record),
            Loaded::Missing => {}
            Loaded::Corrupt(why) => eprintln!("lease: warning: skipping lease {id}: {why}"),
        }
    }
    Ok(records)
}

fn print_table(leases: &[(Record, &'static str)], now: SystemTime) -> std::io::Result<()> {
    let rows: Vec<[String; 8]> = leases
        .iter()
        .map(|(record, state)| {
            let left = match record.expires_at.duration_since(now) {
                Ok(left) if *state == "active" => ttl::human(left),
                _ => "-".to_owned(),
            };
            let (pid, command) = match &record.owner {
                Some(owner) => (owner.pid.to_string(), owner.command.clone()),
                None => ("-".to_owned(), "(detached)".to_owned()),
            };
            [
                record.id.clone(),
                (*state).to_owned(),
                left,
                pid,
                command,
                record.parent.clone().unwrap_or_else(|| "-".to_owned()),
                record
                    .uses_left
                    .map_or_else(|| "-".to_owned(), |n| n.to_string()),
                record.scope_with_uses_left(),
            ]
        })
        .collect();
    let header = [
        "ID",
        "STATE",
        "EXPIRES IN",
        "PID",
        "COMMAND",
        "PARENT",
        "USES",
        "SCOPE",
    ]
    .map(str::to_owned);
    let mut widths = [0usize; 8];
    for row in std::iter::once(&header).chain(&rows) {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = std::io::stdout().lock();
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  "));
            }
        }
        writeln!(out, "{line}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use proptest::prelude::*;

    use super::*;
    use crate::authorize::Chain;
    use crate::record::State;
    use crate::scope::Scope;
    use crate::token::Token;

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn id(n: usize) -> String {
        format!("{n:012x}")
    }

    /// A detached record with id `n`; `parent` is its parent's id, as written.
    fn record(n: usize, parent: Option<String>, state: State, expired: bool) -> Record {
        let hash = Token::mint().expect("mint").hash();
        let scope = vec![Scope::parse("a").expect("scope")];
        let expires = if expired {
            now() - Duration::from_secs(1)
        } else {
            now() + Duration::from_secs(60)
        };
        let mut record = Record::new(hash, scope, now() - Duration::from_secs(60), expires, None);
        record.id = id(n);
        record.parent = parent;
        record.state = state;
        record
    }

    /// Each record's state as verify sees it: its chain walked from the record.
    fn walked(records: &[Record], which: usize) -> &'static str {
        let by_id: HashMap<&str, &Record> = records.iter().map(|r| (r.id.as_str(), r)).collect();
        let lookup = |id: &LeaseId| {
            Ok(by_id
                .get(id.as_str())
                .map_or(Loaded::Missing, |r| Loaded::Found((*r).clone())))
        };
        match authorize::walk(records[which].clone(), now(), lookup)
            .expect("walk")
            .0
        {
            Chain::Live(_) => "active",
            Chain::Dead { reason, .. } => reason,
            Chain::Unknown => "unknown",
        }
    }

    fn listed(records: &[Record]) -> Vec<&'static str> {
        states(records.to_vec(), now())
            .into_iter()
            .map(|(_, state)| state)
            .collect()
    }

    #[test]
    fn a_chain_past_the_deepest_verify_follows_is_corrupt_as_verify_says() {
        let depth = authorize::MAX_DEPTH + 3;
        for revoked_root in [false, true] {
            let records: Vec<Record> = (0..depth)
                .map(|n| {
                    let parent = n.checked_sub(1).map(id);
                    let state = if revoked_root && n == 0 {
                        State::Revoked
                    } else {
                        State::Active
                    };
                    record(n, parent, state, false)
                })
                .collect();
            let states = listed(&records);
            for which in [0, 1, depth - 4, depth - 3, depth - 2, depth - 1] {
                assert_eq!(states[which], walked(&records, which), "record {which}");
            }
        }
    }

    proptest! {
        #[test]
        fn every_state_is_what_walking_its_chain_gives(
            shapes in prop::collection::vec((0u8..4, any::<bool>(), 0usize..14), 1..12),
        ) {
            let count = shapes.len();
            let records: Vec<Record> = shapes
                .iter()
                .enumerate()
                .map(|(n, (state, expired, parent))| {
                    let parent = match *parent {
                        p if p < count => Some(id(p)),
                        12 => Some(id(999)),
                        13 => Some("not-an-id".to_owned()),
                        _ => None,
                    };
                    let state = match state {
                        0 => State::Revoked,
                        1 => State::Expired,
                        _ => State::Active,
                    };
                    record(n, parent, state, *expired)
                })
                .collect();
            let states = listed(&records);
            for (which, state) in states.iter().enumerate() {
                prop_assert_eq!(*state, walked(&records, which), "record {}", which);
            }
        }
    }
}
