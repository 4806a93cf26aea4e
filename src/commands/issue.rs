//! `lease issue`: mint a detached lease and print its token.

use std::io::Write;

use anyhow::{Context as _, Result, bail};

use super::{Setup, print_json};
use crate::audit::Process;
use crate::client;
use crate::endpoint::Endpoint;
use crate::exit::Exit;
use crate::record::rfc3339;
use crate::request::IssueRequest;
use crate::store::Open;
use crate::token::Token;
use crate::wire::{Issued, MintBody, Minted};

pub fn issue(setup: &Setup, request: IssueRequest) -> Result<Exit> {
    if crate::STDOUT_WAS_CLOSED.load(std::sync::atomic::Ordering::Relaxed) {
        anyhow::bail!(
            "cannot issue: standard output is closed, so the new token could not be shown; nothing was minted"
        );
    }
    let (issued, store) = match &setup.broker {
        Some(broker) => (issue_through(setup, broker, &request)?, None),
        None => {
            let store = setup.store(Open::CreateIfMissing)?;
            let plan = super::plan(setup, request.asked, &store)?;
            let (token, record, ()) =
                crate::lease::mint(&store, &plan, &Process::caller(), |_| Ok((None, ())))?;
            let minted = Minted {
                id: record.id.to_string(),
                token: token.expose().to_owned(),
                scope: record.scope.iter().map(ToString::to_string).collect(),
                expires_at: rfc3339::format(record.expires_at),
            };
            (minted, Some(store))
        }
    };
    // The token's copy in `issued` is zeroed when it is dropped.
    let printed = if request.json {
        print_json(&issued)
    } else {
        writeln!(std::io::stdout().lock(), "{}", issued.token).context("writing to standard output")
    };
    if let Err(err) = printed {
        // Nobody holds a token that was never handed over (a closed pipe, a full disk): its
        // lease would live on until its expiry for no one. It is revoked, and that is an error.
        let why = format!("{err:#}");
        let token = Token::presented(issued.token.clone());
        let revoked = match (&setup.broker, &store) {
            (Some(broker), _) => {
                let asked = crate::wire::Remote::RevokeSelf;
                client::call::<crate::wire::Printed>(
                    broker,
                    "/v1/commands",
                    Some(&token),
                    &asked,
                    "a revocation",
                )
                .map(|_| ())
            }
            (None, Some(store)) => {
                let shown = setup.store_shown(store);
                super::revoke::revoke_token(store, &token, &Process::caller(), &shown, "")
                    .map(|_| ())
            }
            (None, None) => Ok(()),
        };
        match revoked {
            Ok(()) => bail!(
                "cannot hand over the token: {why}: lease {} was revoked, so that none is left that nobody holds",
                issued.id
            ),
            Err(err) => bail!(
                "cannot hand over the token: {why}; and lease {} could not be revoked: {err:#}: it ends at {}",
                issued.id,
                issued.expires_at
            ),
        }
    }
    Ok(Exit::Success)
}

/// Asks the broker to mint the lease (`POST /v1/leases`), nested in the lease whose token is in
/// the environment, if any: the broker decides, with its own policy and store.
fn issue_through(setup: &Setup, broker: &Endpoint, request: &IssueRequest) -> Result<Minted> {
    let inherited = super::inherited_token(setup)?;
    let body = MintBody::from_asked(&request.asked);
    let issued: Issued = client::call(broker, "/v1/leases", inherited.as_ref(), &body, "a lease")?;
    if setup.verbose {
        for note in &issued.notes {
            crate::say!("lease: note: {note}");
        }
    }
    Ok(issued.lease)
}
