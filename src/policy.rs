//! Policy: what a new lease may be. Combines the command line, a profile, the config's limits
//! (`max_ttl`, `allowed_scopes`) and the parent lease (a live token in the environment), and
//! refuses anything the policy does not allow before a lease exists.

use std::time::{Duration, SystemTime};

use anyhow::{Result, anyhow, bail};

use crate::authorize::{self, Denial, Reason, Standing};
use crate::config::{Config, OnExpiry, Profile};
use crate::record::{Record, rfc3339};
use crate::scope::{Grant, Scope};
use crate::store::Store;
use crate::token::Token;
use crate::ttl;

/// The grace between SIGTERM and SIGKILL when `--grace` is not given.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);

/// What the command line asked for, before the profile and the config fill in the rest.
#[derive(Debug, Default, Clone)]
pub struct Asked {
    /// `--profile`.
    pub profile: Option<String>,
    /// The settings given as flags (`--scope`, `--ttl`, `--env`, ...): each overrides the
    /// profile's.
    pub flags: Profile,
    /// `--no-parent`.
    pub no_parent: bool,
}

/// A new lease as the policy allows it.
#[derive(Debug)]
pub struct Plan {
    /// Scopes with their budgets, in order.
    pub grants: Vec<Grant>,
    /// When the lease ends (capped at the parent's expiry).
    pub expires_at: SystemTime,
    /// The furthest `renew` may push `expires_at`: the first issue plus `max_ttl`.
    pub renewable_until: SystemTime,
    /// The variable the token goes in.
    pub token_env: String,
    /// What happens to the command at expiry.
    pub on_expiry: OnExpiry,
    /// Grace between SIGTERM and SIGKILL.
    pub grace: Duration,
    /// Total granted verifies, if limited.
    pub uses: Option<u64>,
    /// The parent lease, if this lease is nested.
    pub parent: Option<Record>,
    /// When the lease is issued (whole seconds).
    pub issued_at: SystemTime,
    /// The profile's upstreams, which a run reaches through the broker.
    pub upstreams: Vec<String>,
}

/// Works out the lease `asked` for, or says why the policy refuses it. `inherited` is the token
/// found in the environment, if any: when it is a live lease of this store, the new lease is
/// its child. Notes for the user (a capped expiry) are returned for the caller to print.
pub fn plan(
    config: &Config,
    asked: Asked,
    store: &Store,
    inherited: Option<&Token>,
    now: SystemTime,
) -> Result<(Plan, Vec<String>)> {
    let profile = match &asked.profile {
        Some(name) => config.profile(name)?.clone(),
        None => Default::default(),
    };
    let flags = asked.flags;
    let Some(grants) = flags.scope.or(profile.scope) else {
        bail!("no scope given: pass --scope (e.g. --scope read:articles) or --profile NAME");
    };
    let ttl = flags.ttl.or(profile.ttl).unwrap_or(config.default_ttl);
    check_ttl(config, ttl)?;
    for grant in &grants {
        check_allowed(config, &grant.scope)?;
    }
    let issued_at = whole_seconds_floor(now)?;
    let mut expires_at = whole_seconds_ceil(later(now, ttl)?)?;
    let mut renewable_until = later(issued_at, config.max_ttl)?;
    let mut notes = Vec::new();

    let parent = match inherited {
        // A root lease asked for, and allowed: the lease in the environment, dead or alive,
        // is no parent, and has no say.
        Some(_) if asked.no_parent && config.allow_orphans => None,
        Some(token) => live_parent(store, token, now)?,
        None => None,
    };
    let parent = match parent {
        Some(_) if asked.no_parent && !config.allow_orphans => bail!(
            "--no-parent is refused while a parent lease's token is in ${}: {}",
            config.token_env,
            match &config.path {
                Some(path) => format!("set allow_orphans = true in {} to allow it", path.display()),
                None => "set allow_orphans = true in the config file to allow it".to_owned(),
            }
        ),
        Some(_) if asked.no_parent => None,
        other => other,
    };
    if let Some(parent) = &parent {
        for grant in &grants {
            if !parent.scope.iter().any(|s| s.covers(&grant.scope)) {
                bail!(
                    "scope '{}' is not granted by the parent lease {} (it has {})",
                    grant.scope,
                    parent.id,
                    crate::scope::join(&parent.scope)
                );
            }
        }
        if expires_at > parent.expires_at {
            expires_at = parent.expires_at;
            notes.push(format!(
                "the lease expires at {}, with its parent lease {}",
                rfc3339::format(expires_at),
                parent.id
            ));
        }
        renewable_until = renewable_until.min(parent.renewable_until.unwrap_or(parent.expires_at));
    }
    Ok((
        Plan {
            grants,
            expires_at,
            renewable_until,
            token_env: flags
                .env
                .or(profile.env)
                .unwrap_or_else(|| config.token_env.clone()),
            on_expiry: flags.on_expiry.or(profile.on_expiry).unwrap_or_default(),
            grace: flags.grace.or(profile.grace).unwrap_or(DEFAULT_GRACE),
            uses: flags.uses.or(profile.uses),
            parent,
            issued_at,
            upstreams: profile.upstreams,
        },
        notes,
    ))
}

/// Checks a lifetime against `max_ttl`.
pub fn check_ttl(config: &Config, ttl: Duration) -> Result<()> {
    if ttl > config.max_ttl {
        bail!(
            "ttl {} is too long: {} allows at most {}; ask for less with --ttl",
            ttl::human(ttl),
            config.source("max_ttl", config.max_ttl_set),
            ttl::human(config.max_ttl)
        );
    }
    Ok(())
}

/// Checks that `scope` may be minted under `allowed_scopes`.
pub fn check_allowed(config: &Config, scope: &Scope) -> Result<()> {
    match &config.allowed_scopes {
        Some(allowed) if allowed.is_empty() => bail!(
            "scope '{scope}' is not allowed: {} is empty, so it permits no scope",
            config.source("allowed_scopes", true),
        ),
        Some(allowed) if !allowed.iter().any(|a| a.covers(scope)) => bail!(
            "scope '{scope}' is not allowed: {} permits only {}",
            config.source("allowed_scopes", true),
            crate::scope::join(allowed)
        ),
        _ => Ok(()),
    }
}

/// The lease behind an inherited token, if it is one of this store's. A token this store does
/// not know (another store's, or not a lease token) is no parent; a known one that can no longer
/// grant anything refuses the new lease, which would be dead on arrival.
fn live_parent(store: &Store, token: &Token, now: SystemTime) -> Result<Option<Record>> {
    if !token.is_well_formed() {
        return Ok(None);
    }
    match authorize::standing(store, token, now)? {
        Standing::Dead(denial) if denial.reason == Reason::Unknown => Ok(None),
        Standing::Live(records) if records.len() >= authorize::MAX_DEPTH => Err(anyhow!(
            "the parent lease in the environment is nested {} deep, as deep as leases nest: a child of it could never be used",
            records.len()
        )),
        // Alive, but with every use spent (its own or an ancestor's): as dead to a child.
        Standing::Live(records) => match authorize::spent(&records) {
            Some(denial) => Err(dead_parent(&denial)),
            None => Ok(records.into_iter().next()),
        },
        Standing::Dead(denial) => Err(dead_parent(&denial)),
    }
}

/// Why no lease may be nested in a parent that can grant nothing any more.
fn dead_parent(Denial { reason, detail, .. }: &Denial) -> anyhow::Error {
    anyhow!(
        "the parent lease in the environment is {reason}: {detail}; a child of it could never be used"
    )
}

/// `time + by`; durations are at most [`ttl::MAX`], so this fails only with a clock set
/// thousands of years ahead.
fn later(time: SystemTime, by: Duration) -> Result<SystemTime> {
    ttl::after(time, by).ok_or_else(|| {
        anyhow!("the system clock is too far ahead: a lease from now would end after the year 9999")
    })
}

fn whole_seconds_floor(time: SystemTime) -> Result<SystemTime> {
    let since = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(|_| anyhow!("the clock is before 1970"))?;
    Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(since.as_secs()))
}

fn whole_seconds_ceil(time: SystemTime) -> Result<SystemTime> {
    let since = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(|_| anyhow!("the clock is before 1970"))?;
    let seconds = since
        .as_secs()
        .saturating_add(u64::from(since.subsec_nanos() > 0));
    Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_limits_ttls_and_scopes() {
        // The example in the README's Policy section, so that the documentation stays true.
        let readme = include_str!("../README.md");
        let policy = &readme[readme.find("## Policy").expect("a Policy section")..];
        let start = policy.find("```toml\n").expect("a toml block") + "```toml\n".len();
        let example = &policy[start..start + policy[start..].find("```").expect("its end")];
        let config = Config::parse(example, std::path::Path::new("config.toml")).expect("valid");
        let allowed = |s: &str| check_allowed(&config, &Scope::parse(s).expect("scope")).is_ok();
        assert!(allowed("read:articles") && allowed("read:*") && allowed("write:draft"));
        assert!(!allowed("write:prod") && !allowed("*") && !allowed("read*"));
        assert!(check_ttl(&config, config.max_ttl).is_ok());
        assert!(check_ttl(&config, config.max_ttl + Duration::from_secs(1)).is_err());
    }
}
