//! `lease issue`: mint a detached lease and print its token.

use std::io::Write;

use anyhow::{Context as _, Result};
use serde::Serialize;

use super::{Setup, print_json};
use crate::audit::Process;
use crate::exit::Exit;
use crate::record::rfc3339;
use crate::request::IssueRequest;
use crate::store::Open;

#[derive(Serialize)]
struct Issued<'a> {
    id: &'a str,
    token: &'a str,
    scope: Vec<&'a str>,
    expires_at: String,
}

pub fn issue(setup: &Setup, request: IssueRequest) -> Result<Exit> {
    let store = setup.store(Open::CreateIfMissing)?;
    let plan = super::plan(setup, request.asked, &store)?;
    let (token, record, ()) =
        crate::lease::mint(&store, &plan, &Process::caller(), |_| Ok((None, ())))?;
    if request.json {
        print_json(&Issued {
            id: &record.id,
            token: token.expose(),
            scope: record.scope.iter().map(|s| s.as_str()).collect(),
            expires_at: rfc3339::format(record.expires_at),
        })?;
    } else {
        writeln!(std::io::stdout().lock(), "{}", token.expose())
            .context("writing to standard output")?;
    }
    Ok(Exit::Success)
}
