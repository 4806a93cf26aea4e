//! `lease status`: the caller's own lease, from inside `lease run`.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::SystemTime;

use anyhow::{Context as _, Result};
use serde::Serialize;

use super::{Setup, print_json};
use crate::authorize::{self, Denial, Reason, Standing};
use crate::exit::Exit;
use crate::record::{Record, rfc3339};
use crate::request::TokenSource;
use crate::store::Open;
use crate::token::Token;
use crate::ttl;

#[derive(Serialize)]
struct Status<'a> {
    /// `null` when no lease matches the token (`state` says why: `unknown`, `malformed`).
    id: Option<&'a str>,
    valid: bool,
    state: &'a str,
    scope: Vec<&'a str>,
    expires_at: Option<String>,
    seconds_left: u64,
    uses_left: Option<u64>,
    scope_uses_left: &'a BTreeMap<String, u64>,
    parent: Option<&'a str>,
    run: Option<&'a str>,
}

pub fn status(setup: &Setup, source: &TokenSource, json: bool) -> Result<Exit> {
    let token = super::verify::read_token(source, &setup.config.token_env)
        .map_err(|err| without_token(json, err))
        .context("cannot show the lease's status")?;
    status_of(setup, &token, json)
}

/// `err`, which kept status from reading the token, after `--json`'s object for it (state
/// `no token`, or `error`), so that a caller reading the JSON always has one to read.
pub fn without_token(json: bool, err: anyhow::Error) -> anyhow::Error {
    if json && let Err(printing) = print_no_lease(super::verify::undecided_reason(&err)) {
        return printing;
    }
    err
}

/// The object `--json` prints when there is no lease to show (every field empty).
fn print_no_lease(reason: Reason) -> Result<()> {
    let empty = BTreeMap::new();
    print_json(&Status {
        id: None,
        valid: false,
        state: reason.as_str(),
        scope: Vec::new(),
        expires_at: None,
        seconds_left: 0,
        uses_left: None,
        scope_uses_left: &empty,
        parent: None,
        run: None,
    })
}

/// The status of `token`'s lease (also what the broker runs for a token holder).
pub fn status_of(setup: &Setup, token: &Token, json: bool) -> Result<Exit> {
    // No lease to show: with --json, still an object to read (every field empty).
    let no_lease = |reason: Reason| -> Result<Exit> {
        if json {
            print_no_lease(reason)?;
        }
        Ok(Exit::Denied)
    };
    if !token.is_well_formed() {
        super::console::note!("lease: no valid lease: {}", crate::token::MALFORMED);
        return no_lease(Reason::Malformed);
    }
    let store = setup.store(Open::ExistingOnly)?;
    let now = SystemTime::now();
    let (record, reason, detail) = match authorize::standing(&store, token, now)? {
        Standing::Dead(Denial {
            reason: Reason::Unknown,
            ..
        }) => {
            super::console::note!(
                "lease: no valid lease: unknown: no lease in {} matches the token",
                setup.store_shown(&store)
            );
            return no_lease(Reason::Unknown);
        }
        Standing::Dead(Denial {
            reason,
            detail,
            leaf: Some(leaf),
        }) => (leaf, Some(reason), detail),
        Standing::Dead(Denial {
            reason,
            detail,
            leaf: None,
        }) => {
            super::console::note!("lease: no valid lease: {reason}: {detail}");
            return no_lease(reason);
        }
        Standing::Live(records) => match authorize::spent(&records) {
            Some(denial) => (records[0].clone(), Some(denial.reason), denial.detail),
            None => (records[0].clone(), None, String::new()),
        },
    };
    let state = authorize::state_word(reason);
    let left = record.expires_at.duration_since(now).unwrap_or_default();
    let status = Status {
        id: Some(&record.id),
        valid: reason.is_none(),
        state,
        scope: record.scope.iter().map(|s| s.as_str()).collect(),
        expires_at: Some(rfc3339::format(record.expires_at)),
        seconds_left: if reason.is_none() { left.as_secs() } else { 0 },
        uses_left: record.uses_left,
        scope_uses_left: &record.scope_uses_left,
        parent: record.parent.as_deref(),
        run: record.run.as_deref(),
    };
    if json {
        print_json(&status)?;
    } else {
        print_human(&status, &record).context("writing to standard output")?;
    }
    if status.valid {
        Ok(Exit::Success)
    } else {
        super::console::note!(
            "lease: lease {} is no longer valid: {state}: {detail}",
            record.id
        );
        Ok(Exit::Denied)
    }
}

/// Why a live chain can grant nothing more, if so: the lease or an ancestor has no uses left
/// (`--uses`), or none of its scopes has (every scope budgeted, every budget spent).
fn print_human(status: &Status<'_>, record: &Record) -> std::io::Result<()> {
    let mut out = super::console::Out;
    writeln!(out, "lease:     {} ({})", record.id, status.state)?;
    writeln!(out, "scope:     {}", record.scope_with_uses_left())?;
    let left = if status.valid {
        format!(
            " (in {})",
            ttl::human(std::time::Duration::from_secs(status.seconds_left))
        )
    } else {
        String::new()
    };
    writeln!(
        out,
        "expires:   {}{left}",
        rfc3339::format(record.expires_at)
    )?;
    let uses = status
        .uses_left
        .map_or_else(|| "unlimited".to_owned(), |n| n.to_string());
    writeln!(out, "uses left: {uses}")?;
    writeln!(out, "parent:    {}", status.parent.unwrap_or("-"))?;
    Ok(())
}
