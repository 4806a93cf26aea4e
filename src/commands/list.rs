//! `lease list`: the leases on record, as a table or JSON.

use std::io::Write;
use std::time::SystemTime;

use anyhow::{Context as _, Result};
use serde::Serialize;

use super::{Context, print_json};
use crate::exit::Exit;
use crate::record::{Record, Status, rfc3339};
use crate::store::{Loaded, Open, Store};
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
}

pub fn list(context: &Context, all: bool, json: bool) -> Result<Exit> {
    let store = context.store(Open::ExistingOnly)?;
    let now = SystemTime::now();
    let mut leases: Vec<(Record, Status)> = load_all(&store)?
        .into_iter()
        .map(|record| {
            let status = record.status(now);
            (record, status)
        })
        .filter(|(_, status)| all || *status == Status::Active)
        .collect();
    leases.sort_by(|(a, _), (b, _)| a.issued_at.cmp(&b.issued_at).then_with(|| a.id.cmp(&b.id)));

    if json {
        let listed: Vec<Listed<'_>> = leases
            .iter()
            .map(|(record, status)| Listed {
                id: &record.id,
                scope: record.scope.iter().map(|s| s.as_str()).collect(),
                issued_at: rfc3339::format(record.issued_at),
                expires_at: rfc3339::format(record.expires_at),
                pid: record.owner.as_ref().map(|o| o.pid),
                command: record.owner.as_ref().map(|o| o.command.as_str()),
                state: status.as_str(),
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

fn print_table(leases: &[(Record, Status)], now: SystemTime) -> std::io::Result<()> {
    let rows: Vec<[String; 6]> = leases
        .iter()
        .map(|(record, status)| {
            let left = match record.expires_at.duration_since(now) {
                Ok(left) if *status == Status::Active => ttl::human(left),
                _ => "-".to_owned(),
            };
            let (pid, command) = match &record.owner {
                Some(owner) => (owner.pid.to_string(), owner.command.clone()),
                None => ("-".to_owned(), "(detached)".to_owned()),
            };
            let scope = crate::scope::join(&record.scope);
            [
                record.id.clone(),
                status.as_str().to_owned(),
                left,
                pid,
                command,
                scope,
            ]
        })
        .collect();
    let header = ["ID", "STATE", "EXPIRES IN", "PID", "COMMAND", "SCOPE"].map(str::to_owned);
    let mut widths = [0usize; 6];
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
