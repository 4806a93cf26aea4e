//! What travels between a client and the broker, as JSON: one type per body, shared by both
//! sides so that they cannot drift apart (docs/api.md shows each).

use std::time::Duration;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::authorize::Reason;
use crate::config::Profile;
use crate::policy::Asked;
use crate::scope;

/// `body` as a `T`, which is a JSON object: serde would also take a struct's fields as an
/// array in order (`["read:x"]` for `{"action": "read:x"}`), which no client of the API sends
/// and docs/api.md does not allow.
pub fn from_object<T: serde::de::DeserializeOwned>(body: &[u8]) -> serde_json::Result<T> {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => serde_json::from_slice(body),
        _ => Err(serde::de::Error::custom("expected a JSON object")),
    }
}

/// The answer of `POST /v1/verify`: `lease verify --json`'s object, and the sentence a denial
/// prints.
#[derive(Debug, Serialize, Deserialize)]
pub struct VerifyAnswer {
    /// Whether the action is granted.
    pub granted: bool,
    /// `granted`, or why not.
    pub reason: Reason,
    /// The lease id, when a lease was found.
    pub id: Option<String>,
    /// The lease's expiry (RFC 3339), when a lease was found.
    pub expires_at: Option<String>,
    /// Why not, for people (empty when granted).
    pub detail: String,
}

/// The body of `POST /v1/leases`: what `lease issue` was asked for.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MintBody {
    /// Scopes, each `SCOPE` or `SCOPE=N` (a use budget), as `--scope` takes them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scope: Vec<String>,
    /// Lifetime in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u64>,
    /// Total granted verifies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uses: Option<u64>,
    /// A profile of the broker's config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// A root lease even with a bearer token (an operator's right).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_parent: bool,
    /// For a run: the variable the token goes in (`--env`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    /// For a run: `--on-expiry`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_expiry: Option<String>,
    /// For a run: `--grace`, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace: Option<u64>,
    /// For a run: the program it runs (argv[0] only), for the record and the trail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// For a run: its wrapper's pid, as its own host sees it (for `list`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// For a run: argv[0] as given (for the trail).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argv0: Option<String>,
    /// For a run: the number of arguments after argv[0] (for the trail).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argc: Option<usize>,
    /// Plan only (`lease run --print-env`): answer [`Planned`], mint nothing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    /// With `dry_run`: the upstreams the run would reach (`--upstream`), whose variables
    /// [`Planned`] then names as well as the profile's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upstreams: Vec<String>,
}

impl MintBody {
    /// The body for what the command line asked.
    pub fn from_asked(asked: &Asked) -> MintBody {
        MintBody {
            scope: asked
                .flags
                .scope
                .iter()
                .flatten()
                .map(|grant| match grant.uses {
                    Some(n) => format!("{}={n}", grant.scope),
                    None => grant.scope.to_string(),
                })
                .collect(),
            ttl: asked.flags.ttl.map(|ttl| ttl.as_secs()),
            uses: asked.flags.uses,
            profile: asked.profile.clone(),
            no_parent: asked.no_parent,
            env: asked.flags.env.clone(),
            on_expiry: asked.flags.on_expiry.map(|o| o.as_str().to_owned()),
            grace: asked.flags.grace.map(|grace| grace.as_secs()),
            dry_run: false,
            ..MintBody::default()
        }
    }

    /// What the broker plans from: the same `Asked` the command line would have made.
    pub fn into_asked(self) -> Result<Asked> {
        let scope = if self.scope.is_empty() {
            None
        } else {
            Some(scope::parse_grants(&self.scope)?)
        };
        if self.uses == Some(0) {
            anyhow::bail!("uses must be at least 1");
        }
        let seconds = |value: Option<u64>| -> Result<Option<Duration>> {
            value
                .map(|seconds| crate::ttl::parse(&seconds.to_string()))
                .transpose()
        };
        if let Some(env) = &self.env {
            crate::config::validate_token_env(env)?;
        }
        let on_expiry = self
            .on_expiry
            .as_deref()
            .map(str::parse::<crate::config::OnExpiry>)
            .transpose()?;
        Ok(Asked {
            profile: self.profile,
            flags: Profile {
                scope,
                ttl: seconds(self.ttl)?,
                uses: self.uses,
                env: self.env,
                on_expiry,
                grace: seconds(self.grace)?,
                upstreams: Vec::new(),
            },
            no_parent: self.no_parent,
        })
    }
}

/// The answer of `POST /v1/leases`: `lease issue --json`'s object. The only answer that holds
/// a token: the new lease's, for the client that asked for it; zeroed when dropped.
#[derive(Debug, Serialize, Deserialize)]
pub struct Minted {
    /// The new lease's id.
    pub id: String,
    /// Its token.
    pub token: String,
    /// Its scopes.
    pub scope: Vec<String>,
    /// Its expiry (RFC 3339).
    pub expires_at: String,
}

/// The answer of `POST /v1/leases`: the lease, and the policy's notes (`--verbose` prints
/// them), if any.
#[derive(Debug, Serialize, Deserialize)]
pub struct Issued {
    /// The lease, as `lease issue --json` prints it.
    #[serde(flatten)]
    pub lease: Minted,
    /// Notes such as an expiry capped at the parent's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl Drop for Started {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.hold);
    }
}

impl Drop for Minted {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.token);
    }
}

/// The answer of a dry run of `POST /v1/leases`: the lease the policy would mint.
#[derive(Debug, Serialize, Deserialize)]
pub struct Planned {
    /// Its scopes.
    pub scope: Vec<String>,
    /// Its expiry (RFC 3339), were it minted now.
    pub expires_at: String,
    /// The variable its token would go in.
    pub token_env: String,
    /// The variables of the upstreams it would reach (`--upstream`, and the profile's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upstreams: Vec<UpstreamEnv>,
}

/// What the broker tells a run on its held connection (`/v1/runs`), one JSON line each.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FromBroker {
    /// The run's lease is minted and held by this connection.
    Started(Box<Started>),
    /// The connection holds the run's lease again (after a reconnect).
    Attached,
    /// The run's end is recorded and its lease revoked.
    Ended,
    /// Refused, or failed: the line the client prints after `lease: `.
    Error(String),
}

/// A run's lease, as the broker minted it, with what the run needs from the broker's policy.
#[derive(Debug, Serialize, Deserialize)]
pub struct Started {
    /// The lease, as for `issue`.
    #[serde(flatten)]
    pub lease: Minted,
    /// The variable the token goes in.
    pub token_env: String,
    /// `keep`, `term` or `kill`.
    pub on_expiry: String,
    /// Seconds between SIGTERM and SIGKILL at expiry.
    pub grace: u64,
    /// Seconds the broker waits for a silent run: the run sends `ping` well within it.
    pub owner_timeout: u64,
    /// When the lease was minted (RFC 3339), for the receipt.
    pub issued_at: String,
    /// Its parent lease, if it is nested.
    pub parent: Option<String>,
    /// The policy's notes (`--verbose` prints them), if any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// The secret that re-attaches the run (`X-Lease-Hold`), for the wrapper alone: the
    /// command gets the token, never this, so it cannot take its own run over.
    pub hold: String,
    /// The upstreams the profile asked for (`upstreams` in `[profile.NAME]`), which the run
    /// reaches besides those of `--upstream`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upstreams: Vec<String>,
}

/// What a run tells the broker on its held connection after the first line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FromRun {
    /// Still here (sent every third of `owner_timeout`).
    Ping,
    /// The command ended: record it and revoke the lease.
    Exit(Exited),
    /// The run is over with no exit to record (its command was not found or could not be
    /// executed, a stopping signal came before it started, or it could not be waited for):
    /// revoke the lease, with no `child_exit` in the trail, as a local run does.
    NoExit,
}

/// How a run's command ended, for the trail.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Exited {
    /// Its exit code, if it exited.
    pub code: Option<i32>,
    /// The signal it died of, if it did.
    pub signal: Option<i32>,
    /// How long it ran.
    pub duration_ms: u64,
    /// If lease ended it because its lease expired: `--on-expiry`'s value (`term`, `kill`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at_expiry: Option<String>,
    /// The last signal lease sent it at expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at_expiry: Option<i32>,
}

/// A subcommand a client asks the broker to run for it (`POST /v1/commands`): the broker runs
/// the same code a local run would, on its own store and policy, and sends back what it printed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case", deny_unknown_fields)]
pub enum Remote {
    /// `lease status` of the bearer token's lease.
    Status {
        /// `--json`.
        json: bool,
    },
    /// The bearer token's lease's expiry as it stands (a held run asks when its expiry
    /// comes, since a renew may have moved it); changes nothing.
    Expiry,
    /// `lease renew` of the bearer token's lease.
    Renew {
        /// `--ttl`, in seconds.
        ttl: Option<u64>,
    },
    /// `lease revoke --self`: the bearer token's lease and its descendants.
    RevokeSelf,
    /// `lease revoke ID...` (operators only).
    Revoke {
        /// The ids as given.
        ids: Vec<String>,
    },
    /// `lease revoke --all` (operators only).
    RevokeAll,
    /// `lease list` (operators only).
    List {
        /// `--all`.
        all: bool,
        /// `--json`.
        json: bool,
    },
    /// `lease log`: any lease's for operators, a token holder's own otherwise.
    Log {
        /// Only this lease (or run).
        id: Option<String>,
        /// Only this recent, in seconds.
        since: Option<u64>,
        /// `--json`.
        json: bool,
    },
    /// `lease suggest ID`: any lease's for operators, a token holder's own otherwise.
    Suggest {
        /// The lease.
        id: String,
        /// `--json`.
        json: bool,
    },
    /// `lease gc` (operators only).
    Gc,
}

impl Remote {
    /// Its name on the wire (`"revoke_all"`), for the broker's log.
    pub fn name(&self) -> &'static str {
        match self {
            Remote::Status { .. } => "status",
            Remote::Expiry => "expiry",
            Remote::Renew { .. } => "renew",
            Remote::RevokeSelf => "revoke_self",
            Remote::Revoke { .. } => "revoke",
            Remote::RevokeAll => "revoke_all",
            Remote::List { .. } => "list",
            Remote::Log { .. } => "log",
            Remote::Suggest { .. } => "suggest",
            Remote::Gc => "gc",
        }
    }

    /// The lease ids it names.
    pub fn ids(&self) -> Vec<&str> {
        match self {
            Remote::Revoke { ids } => ids.iter().map(String::as_str).collect(),
            Remote::Log { id, .. } => id.iter().map(String::as_str).collect(),
            Remote::Suggest { id, .. } => vec![id.as_str()],
            _ => Vec::new(),
        }
    }
}

/// What a subcommand the broker ran printed, and how it ended.
#[derive(Debug, Serialize, Deserialize)]
pub struct Printed {
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
    /// Whether it wrote to standard error first (a note before the answer): the client prints
    /// the two in that order. Absent (false) from a broker that does not say.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stderr_first: bool,
    /// Its exit status.
    pub exit: i32,
}

/// `{"error": "..."}`: why a request was refused or failed.
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    /// One line, redacted of anything shaped like a token.
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mint_body_carries_what_the_command_line_asked() {
        let asked = Asked {
            profile: Some("deploy".into()),
            flags: Profile {
                scope: Some(scope::parse_grants(&["read:a,write:b=3"]).expect("valid")),
                ttl: Some(Duration::from_secs(300)),
                uses: Some(7),
                ..Profile::default()
            },
            no_parent: true,
        };
        let body = MintBody::from_asked(&asked);
        let text = serde_json::to_string(&body).expect("json");
        assert_eq!(
            text,
            r#"{"scope":["read:a","write:b=3"],"ttl":300,"uses":7,"profile":"deploy","no_parent":true}"#
        );
        let back: MintBody = serde_json::from_str(&text).expect("json");
        assert!(back.env.is_none() && back.on_expiry.is_none() && back.command.is_none());
        let again = back.into_asked().expect("valid");
        assert_eq!(again.flags.scope, asked.flags.scope);
        assert_eq!(again.flags.ttl, asked.flags.ttl);
        assert_eq!(again.flags.uses, Some(7));
        assert_eq!(again.profile.as_deref(), Some("deploy"));
        assert!(again.no_parent);
    }

    #[test]
    fn a_bad_mint_body_is_refused() {
        for text in [
            r#"{"scope":["no spaces"]}"#,
            r#"{"scope":["a:b=0"]}"#,
            r#"{"uses":0}"#,
            r#"{"ttl":999999999999}"#,
        ] {
            let body: MintBody = serde_json::from_str(text).expect("json");
            assert!(body.into_asked().is_err(), "{text}");
        }
        assert!(serde_json::from_str::<MintBody>(r#"{"scopes":[]}"#).is_err());
    }
}

/// `POST /v1/upstreams`: what `lease run --upstream NAME` asks of the broker.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamAsk {
    /// The upstream's name.
    pub name: String,
}

/// The answer: where the run's command reaches the upstream through the broker, and which
/// variables of its environment say so (`child_env` in the broker's config).
#[derive(Debug, Serialize, Deserialize)]
pub struct UpstreamEnv {
    /// The broker's URL for the upstream, `http(s)://HOST:PORT/u/NAME`.
    pub base_url: String,
    /// The variable that gets `base_url`.
    pub base_url_env: Option<String>,
    /// The variable that gets the run's lease token.
    pub token_env: Option<String>,
}
