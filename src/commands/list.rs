//! `lease list`: the leases on record, as a table or JSON.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::SystemTime;

use anyhow::{Context as _, Result};
use serde::Serialize;

use super::{Setup, print_json};
use crate::authorize::{self, Reason};
use crate::exit::Exit;
use crate::record::{Record, rfc3339};
use crate::store::{Open, Store};
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

pub fn list(setup: &Setup, all: bool, json: bool) -> Result<Exit> {
    let store = setup.store(Open::ExistingOnly)?;
    let now = SystemTime::now();
    let mut leases = authorize::standings(load_all(&store)?, now);
    leases.retain(|(_, reason)| all || reason.is_none());
    leases.sort_by(|(a, _), (b, _)| a.issued_at.cmp(&b.issued_at).then_with(|| a.id.cmp(&b.id)));

    if json {
        let listed: Vec<Listed<'_>> = leases
            .iter()
            .map(|(record, reason)| Listed {
                id: &record.id,
                scope: record.scope.iter().map(|s| s.as_str()).collect(),
                issued_at: rfc3339::format(record.issued_at),
                expires_at: rfc3339::format(record.expires_at),
                pid: record.owner.as_ref().map(crate::owner::Owner::run_pid),
                command: record.owner.as_ref().map(|o| o.command.as_str()),
                state: authorize::state_word(*reason),
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

/// Every readable record; unreadable ones are skipped with a warning.
pub(super) fn load_all(store: &Store) -> Result<Vec<Record>> {
    store.records(|id, why| super::console::note!("lease: warning: skipping lease {id}: {why}"))
}

/// The longest command name the table shows, in characters.
const MAX_COMMAND_SHOWN: usize = 64;

/// `text` cut to [`MAX_COMMAND_SHOWN`] characters, `…` ending what was cut.
fn cut(text: &str) -> String {
    match text.char_indices().nth(MAX_COMMAND_SHOWN) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

fn print_table(leases: &[(Record, Option<Reason>)], now: SystemTime) -> std::io::Result<()> {
    let rows: Vec<[String; 8]> = leases
        .iter()
        .map(|(record, reason)| {
            let left = match record.expires_at.duration_since(now) {
                Ok(left) if reason.is_none() => ttl::human(left),
                _ => "-".to_owned(),
            };
            let (pid, command) = match &record.owner {
                // One lease, one row: a name with a line break in it is shown escaped.
                // A long one is cut: the table stays a table (`--json` has it whole).
                Some(owner) => (
                    owner.run_pid().to_string(),
                    cut(&owner.command.escape_debug().to_string()),
                ),
                None => ("-".to_owned(), "(detached)".to_owned()),
            };
            [
                record.id.to_string(),
                authorize::state_word(*reason).to_owned(),
                left,
                pid,
                command,
                record.parent.as_deref().unwrap_or("-").to_owned(),
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
    let mut out = super::console::Out;
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(widths).enumerate() {
            line.push_str(cell);
            if i + 1 < row.len() {
                let pad = width - cell.chars().count() + 2;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        writeln!(out, "{line}")?;
    }
    Ok(())
}
