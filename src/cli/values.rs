//! Each flag's text turned into a domain value, for clap's value parsers and for
//! [`super::translate`]; and the refusal of token-shaped text where something else is expected.

use std::time::Duration;

use anyhow::{Result, bail};

use crate::config::OnExpiry;
use crate::endpoint::Listen;
use crate::{config, ttl};

pub(super) fn parse_ttl(text: &str) -> Result<Duration> {
    ttl::parse(text)
}

pub(super) fn parse_uses(text: &str) -> Result<u64> {
    match crate::scope::parse_uses(text) {
        Some(uses) => Ok(uses),
        None => bail!("a whole number of uses, from 1 to {}", u64::MAX),
    }
}

pub(super) fn parse_glob(text: &str) -> Result<glob::Pattern> {
    not_a_token(
        text,
        "a variable name pattern",
        "pass a pattern such as '*_TOKEN'",
    )?;
    crate::config::scrub_pattern(text).map_err(anyhow::Error::msg)
}

pub(super) fn parse_listen(text: &str) -> Result<Listen> {
    not_a_token(text, "an address", "pass unix:PATH or HOST:PORT")?;
    Listen::parse(text)
}

/// `--store`: its errors never echo the value (a URL may carry a password).
pub(super) fn store_arg(text: &str) -> Result<crate::store::etcd::Url> {
    not_a_token(text, "a store URL", "pass etcd://HOST:PORT")?;
    crate::store::etcd::Url::parse(text).map_err(|err| anyhow::anyhow!("invalid --store: {err:#}"))
}

pub(super) fn parse_on_expiry(text: &str) -> Result<OnExpiry> {
    text.parse()
}

/// `--on-expiry`'s parser: [`parse_on_expiry`], whose words are also offered to shell
/// completion (the help names them already).
#[derive(Debug, Clone, Copy)]
pub(super) struct OnExpiryValues;

impl clap::builder::TypedValueParser for OnExpiryValues {
    type Value = OnExpiry;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<OnExpiry, clap::Error> {
        let parse: fn(&str) -> Result<OnExpiry> = parse_on_expiry;
        parse.parse_ref(cmd, arg, value)
    }

    fn possible_values(
        &self,
    ) -> Option<Box<dyn Iterator<Item = clap::builder::PossibleValue> + '_>> {
        let words = [OnExpiry::Keep, OnExpiry::Term, OnExpiry::Kill];
        Some(Box::new(words.into_iter().map(|word| {
            clap::builder::PossibleValue::new(word.as_str())
        })))
    }
}

pub(super) fn parse_env_name(text: &str) -> Result<String> {
    config::validate_env_name(text)?;
    Ok(text.to_owned())
}

pub(super) fn parse_token_env(text: &str) -> Result<String> {
    config::validate_token_env(text)?;
    Ok(text.to_owned())
}

/// Refuses text shaped like a token where `what` is expected, without quoting it: a token
/// typed in the wrong place must not be echoed back or logged.
pub(super) fn not_a_token(text: &str, what: &str, fix: &str) -> Result<()> {
    refused_as_token(crate::token::is_token_shaped(text), what, fix)
}

/// [`not_a_token`] for a path, where a whole token would be a slip that puts it on every
/// command line and in `ps`, but text merely shaped like one is a legitimate name (a program
/// or a file in a directory called `agt_workspace`): only a token whose checksum holds is
/// refused.
pub(super) fn not_a_whole_token(text: &str, what: &str, fix: &str) -> Result<()> {
    refused_as_token(crate::token::holds_whole_token(text.as_bytes()), what, fix)
}

fn refused_as_token(is_token: bool, what: &str, fix: &str) -> Result<()> {
    if is_token {
        bail!("that is a token, not {what}: {fix}");
    }
    Ok(())
}

/// A lease id given by a user, refused if it is a token.
pub(super) fn lease_id_arg(text: String) -> Result<String> {
    not_a_token(
        &text,
        "a lease id",
        "pass the 12-digit id shown by `lease list --all`, or use `lease revoke --self` to end the lease of a token",
    )?;
    // `lease revoke "$(cat id-file)"` of a file left empty: a mistake, not an unknown id.
    if text.trim().is_empty() {
        bail!(
            "an empty lease id: pass the 12-digit id shown by `lease list --all` (is the variable or file it came from empty?)"
        );
    }
    Ok(text)
}
