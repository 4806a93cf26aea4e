//! `lease suggest ID`: least privilege from the trail. The narrowest `--scope` list that would
//! have granted every action the lease was granted, the scopes it never used, and what it was
//! denied.

use std::io::Write;
use std::time::SystemTime;

use anyhow::{Context as _, Result};
use serde::Serialize;

use super::{Setup, print_json};
use crate::audit::EventKind;
use crate::exit::Exit;
use crate::record::Status;
use crate::scope::{Action, Scope};
use crate::store::{Loaded, Open};
use crate::token::LeaseId;

#[derive(Serialize)]
struct Suggestion {
    id: String,
    /// Whether the lease has ended (revoked, expired, its run over, or no longer on record);
    /// until then the suggestion covers only what it has used so far.
    ended: bool,
    /// Whether the trail reaches back to the lease's start: once rotated past it, actions the
    /// lease used may be missing from `suggested`.
    complete: bool,
    suggested: Vec<String>,
    unused: Vec<String>,
    denied: Vec<Denial>,
}

#[derive(Serialize, PartialEq, Eq)]
struct Denial {
    action: String,
    reason: String,
}

pub fn suggest(setup: &Setup, id: &str, json: bool) -> Result<Exit> {
    let store = setup.store(Open::ExistingOnly)?;
    let trail = store.audit().read()?;
    // The lease and every lease nested in it, as the trail knows them: a nested lease's
    // `issued` event names its parent and comes after the parent's. What a nested lease was
    // granted, the lease it is nested in needed too.
    let mut family: std::collections::HashSet<&str> = std::collections::HashSet::from([id]);
    for event in &trail {
        if event.event == EventKind::Issued
            && let (Some(lease), Some(parent)) = (event.lease.as_deref(), event.parent.as_deref())
            && family.contains(parent)
        {
            family.insert(lease);
        }
    }
    let events: Vec<_> = trail
        .iter()
        .filter(|e| {
            e.lease
                .as_deref()
                .is_some_and(|lease| family.contains(lease))
        })
        .collect();
    // The scopes the lease was given: from its record, or from the trail if gc removed it.
    let (record_scope, ended) = match LeaseId::parse(id)
        .map(|lease| store.load(&lease))
        .transpose()?
    {
        Some(Loaded::Found(record)) => {
            let ended = record.status(SystemTime::now()) != Status::Active;
            (Some(record.scope), ended)
        }
        _ => (None, true),
    };
    let issued_scope = events
        .iter()
        .find(|e| e.event == EventKind::Issued && e.lease.as_deref() == Some(id))
        .and_then(|e| e.scope.clone())
        .map(|items| {
            items
                .iter()
                .filter_map(|s| Scope::parse(s).ok())
                .collect::<Vec<_>>()
        });
    let Some(granted_scope) = record_scope.or(issued_scope) else {
        super::console::note!(
            "lease: unknown lease id: {}: neither the store nor the audit trail knows it",
            id.escape_debug()
        );
        return Ok(Exit::Denied);
    };

    let mut used: Vec<String> = Vec::new();
    let mut denied: Vec<Denial> = Vec::new();
    for event in events {
        let Some(action) = &event.action else {
            continue;
        };
        match event.decided() {
            Some(true) if !used.contains(action) => used.push(action.clone()),
            Some(false) => {
                let denial = Denial {
                    action: action.clone(),
                    reason: event.reason.clone().unwrap_or_default(),
                };
                if !denied.contains(&denial) {
                    denied.push(denial);
                }
            }
            _ => {}
        }
    }
    let actions: Vec<Action> = used.iter().filter_map(|a| Action::parse(a).ok()).collect();
    let unused: Vec<String> = granted_scope
        .iter()
        .filter(|scope| !actions.iter().any(|a| scope.grants(a)))
        .map(|s| s.to_string())
        .collect();
    let complete = crate::audit::reaches_back_to(&trail, id);
    if !complete {
        super::console::note!(
            "lease: the suggestion for lease {} may miss actions: the audit trail does not reach back to the lease's start (rotated past it: raise audit_max_bytes; or kept by another broker)",
            id.escape_debug()
        );
    }
    let suggestion = Suggestion {
        id: id.to_owned(),
        ended,
        complete,
        suggested: used,
        unused,
        denied,
    };
    if json {
        print_json(&suggestion)?;
    } else {
        print_human(&suggestion).context("writing to standard output")?;
    }
    Ok(Exit::Success)
}

fn print_human(s: &Suggestion) -> std::io::Result<()> {
    let mut out = super::console::Out;
    if !s.ended {
        let what = if s.suggested.is_empty() {
            "it has been granted nothing so far"
        } else {
            "this is what it has used so far"
        };
        writeln!(out, "lease {} has not ended yet: {what}", s.id)?;
    }
    if s.suggested.is_empty() && s.ended {
        writeln!(
            out,
            "lease {} was granted nothing: it needs no scope at all",
            s.id
        )?;
    } else if !s.suggested.is_empty() {
        writeln!(out, "--scope {}", s.suggested.join(","))?;
    }
    if !s.unused.is_empty() {
        writeln!(out, "unused: {}", s.unused.join(","))?;
    }
    for denial in &s.denied {
        writeln!(out, "denied: {} ({})", denial.action, denial.reason)?;
    }
    Ok(())
}
