//! `lease renew`: extend the caller's own lease, within `max_ttl` from its first issue and
//! never past its parent's expiry (Vault's explicit max TTL).

use std::io::Write;
use std::time::SystemTime;

use anyhow::{Context as _, Result};

use super::Setup;
use crate::audit::{Event, EventKind, Process};
use crate::authorize::{self, Reason, Standing};
use crate::exit::Exit;
use crate::record::rfc3339;
use crate::request::RenewRequest;
use crate::store::{Change, Open, Updated};
use crate::token::Token;
use crate::ttl;

/// What the update found.
enum Outcome {
    Renewed { until: SystemTime, capped: bool },
    AtLimit(SystemTime),
    Ended(Reason),
}

pub fn renew(setup: &Setup, request: &RenewRequest) -> Result<Exit> {
    let token = super::verify::read_token(&request.source, &setup.config.token_env)
        .context("cannot renew")?;
    renew_with(setup, &token, request.ttl, &Process::caller())
}

/// Renews `token`'s lease by `ttl` (default: `default_ttl`) for `process` (also what the
/// broker runs for a token holder).
pub fn renew_with(
    setup: &Setup,
    token: &Token,
    ttl: Option<std::time::Duration>,
    process: &Process,
) -> Result<Exit> {
    if !token.is_well_formed() {
        return Ok(refuse(Reason::Malformed, "not a lease token"));
    }
    let store = setup.store(Open::ExistingOnly)?;
    let now = SystemTime::now();
    let by = ttl.unwrap_or(setup.config.default_ttl);
    let records = match authorize::standing(&store, token, now)? {
        Standing::Dead(denial) => return Ok(refuse(denial.reason, &denial.detail)),
        Standing::Live(records) => records,
    };
    // A lease whose uses are all spent grants nothing however long it lives, as `status` says.
    if let Some(denial) = authorize::spent(&records) {
        return Ok(refuse(denial.reason, &denial.detail));
    }
    let parent_expiry = records.get(1).map(|parent| parent.expires_at);
    let id = token.hash().id();
    let updated = store.update(&id, |record| {
        if let Some(reason) = authorize::own_reason(record, now) {
            return Change::Keep(Outcome::Ended(reason));
        }
        let mut limit = record.renewable_until.unwrap_or(record.expires_at);
        if let Some(parent) = parent_expiry {
            limit = limit.min(parent);
        }
        // `by` is at most ttl::MAX; past what lease can store is past any limit too.
        let wanted = ttl::after(record.expires_at, by);
        let until = wanted.map_or(limit, |wanted| wanted.min(limit));
        if until <= record.expires_at {
            return Change::Keep(Outcome::AtLimit(limit));
        }
        record.expires_at = until;
        Change::Write(Outcome::Renewed {
            until,
            capped: wanted.is_none_or(|wanted| until < wanted),
        })
    })?;
    let (record, outcome) = match updated {
        Updated::Found(record, outcome) => (record, outcome),
        Updated::Corrupt(why) => return Ok(refuse(Reason::CorruptRecord, &why)),
        Updated::Missing => return Ok(refuse(Reason::Unknown, "the lease was removed meanwhile")),
    };
    match outcome {
        Outcome::Renewed { until, capped } => {
            let mut event = Event::new(EventKind::Renewed, Some(&record)).process(process);
            event.expires_at = Some(rfc3339::format(until));
            store.audit().note(&event);
            if capped {
                super::console::note!(
                    "lease: note: extended only to {}: the lease may not outlive max_ttl from its first issue, nor its parent",
                    rfc3339::format(until)
                );
            }
            writeln!(super::console::Out, "{}", rfc3339::format(until))
                .context("writing to standard output")?;
            Ok(Exit::Success)
        }
        Outcome::AtLimit(limit) => Ok(refuse(
            "max ttl reached",
            &format!(
                "lease {id} already lives until {}, as long as it may (max_ttl {} from its first issue, or its parent's expiry)",
                rfc3339::format(limit),
                ttl::human(setup.config.max_ttl)
            ),
        )),
        Outcome::Ended(reason) => Ok(refuse(reason, &format!("lease {id} ended meanwhile"))),
    }
}

fn refuse(reason: impl std::fmt::Display, detail: &str) -> Exit {
    super::console::note!("lease: renew refused: {reason}: {detail}");
    Exit::Denied
}
