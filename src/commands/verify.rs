//! `lease verify ACTION`: is the presented token valid, and does it grant the action?
//!
//! The token is looked up by its hash: one record is read, whatever the store holds. Anything
//! that cannot be confirmed denies (fail closed).

use std::io::{self, Read};
use std::time::SystemTime;

use anyhow::{Context as _, Result, bail};
use serde::Serialize;

use super::{Context, print_json};
use crate::cli::{TokenSource, VerifyRequest};
use crate::exit::Exit;
use crate::record::{Record, Status, rfc3339};
use crate::scope::Action;
use crate::store::{Loaded, Open, Store};
use crate::token::{BODY_LEN, PREFIX, Token};

/// Longest token read from standard input; a real token is 47 bytes.
const MAX_STDIN_BYTES: u64 = 4096;

/// The answer, as printed by `--json`.
#[derive(Debug, Serialize)]
pub struct Decision {
    /// Whether the action is granted.
    pub granted: bool,
    /// `granted`, or why not: `unknown`, `expired`, `revoked`, `out of scope`, ...
    pub reason: &'static str,
    /// The lease id, when a lease was found.
    pub id: Option<String>,
    /// The lease's expiry (RFC 3339), when a lease was found.
    pub expires_at: Option<String>,
    /// A sentence for people, printed after the reason on a denial.
    #[serde(skip)]
    pub detail: String,
}

impl Decision {
    fn deny(reason: &'static str, detail: String, record: Option<&Record>) -> Decision {
        Decision {
            granted: false,
            reason,
            id: record.map(|r| r.id.clone()),
            expires_at: record.map(|r| rfc3339::format(r.expires_at)),
            detail,
        }
    }
}

/// `lease verify`: prints the decision (a line on stderr when denied; JSON if asked) and
/// returns exit 0 (granted) or 1 (denied); errors mean it cannot decide (exit 2).
pub fn verify(context: &Context, request: &VerifyRequest) -> Result<Exit> {
    let decision = match decide(context, request) {
        Ok(decision) => decision,
        Err(err) => {
            if request.json {
                let reason = if err.is::<NoToken>() {
                    "no token"
                } else {
                    "error"
                };
                print_json(&Decision::deny(reason, String::new(), None))?;
            }
            return Err(err.context("cannot verify"));
        }
    };
    if request.json {
        print_json(&decision)?;
    }
    if decision.granted {
        Ok(Exit::Success)
    } else {
        eprintln!("lease: denied: {}: {}", decision.reason, decision.detail);
        Ok(Exit::Denied)
    }
}

fn decide(context: &Context, request: &VerifyRequest) -> Result<Decision> {
    let token = read_token(&request.source, &context.config.token_env)?;
    // A mistyped or truncated token is refused before the store is touched.
    if !token.is_well_formed() {
        let detail = format!(
            "not a lease token (expected {PREFIX} and {BODY_LEN} characters with a valid checksum)"
        );
        return Ok(Decision::deny("malformed", detail, None));
    }
    let store = context.store(Open::ExistingOnly)?;
    authorize(&store, &token, &request.action, SystemTime::now())
}

/// Decides whether a well-formed `token` grants `action` at `now`, reading one record.
pub fn authorize(
    store: &Store,
    token: &Token,
    action: &Action,
    now: SystemTime,
) -> Result<Decision> {
    let hash = token.hash();
    let id = hash.id();
    let record = match store.load(&id)? {
        Loaded::Found(record) if hash.matches_hex(&record.token_sha256) => record,
        Loaded::Found(_) | Loaded::Missing => {
            return Ok(Decision::deny(
                "unknown",
                "no lease matches this token".into(),
                None,
            ));
        }
        Loaded::Corrupt(why) => {
            return Ok(Decision::deny(
                "corrupt record",
                format!("lease {id}: {why}"),
                None,
            ));
        }
    };
    let status = record.status(now);
    if status == Status::Expired {
        // Record the expiry once, so the lease stays expired if the clock is set back. The
        // answer is a denial either way, so a store that cannot be written changes nothing.
        let _ = store.update(&id, |r| r.mark_expired(now));
    }
    let at = |time| rfc3339::format(time);
    let decision = match status {
        Status::Revoked => {
            let when = record
                .revoked_at
                .map(|t| format!(" at {}", at(t)))
                .unwrap_or_default();
            Decision::deny(
                "revoked",
                format!("lease {id} was revoked{when}"),
                Some(&record),
            )
        }
        Status::Expired => {
            let detail = format!("lease {id} expired at {}", at(record.expires_at));
            Decision::deny("expired", detail, Some(&record))
        }
        Status::OwnerGone => {
            let pid = record.owner.as_ref().map_or(0, |o| o.pid);
            let detail = format!("the lease run (pid {pid}) that owned lease {id} has ended");
            Decision::deny("owner gone", detail, Some(&record))
        }
        Status::Active if !record.grants(action) => {
            let granted = crate::scope::join(&record.scope);
            let detail = format!("lease {id} grants {granted}, not {}", action.as_str());
            Decision::deny("out of scope", detail, Some(&record))
        }
        Status::Active => Decision {
            granted: true,
            reason: "granted",
            id: Some(record.id.clone()),
            expires_at: Some(at(record.expires_at)),
            detail: String::new(),
        },
    };
    Ok(decision)
}

/// No token was presented: verify cannot decide (exit 2).
#[derive(Debug)]
struct NoToken(String);

impl std::fmt::Display for NoToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NoToken {}

fn read_token(source: &TokenSource, default_env: &str) -> Result<Token> {
    let text = match source {
        TokenSource::Env(name) => {
            let name = name.as_deref().unwrap_or(default_env);
            let value = std::env::var_os(name).unwrap_or_default();
            if value.is_empty() {
                return Err(NoToken(format!(
                    "no token: ${name} is not set; run this inside `lease run`, or pass --token-env NAME or --token-stdin"
                ))
                .into());
            }
            value.to_string_lossy().into_owned()
        }
        TokenSource::Stdin => {
            let mut bytes = Vec::new();
            io::stdin()
                .take(MAX_STDIN_BYTES + 1)
                .read_to_end(&mut bytes)
                .context("reading the token from standard input")?;
            if bytes.len() as u64 > MAX_STDIN_BYTES {
                bail!("the token on standard input is longer than {MAX_STDIN_BYTES} bytes");
            }
            let text = String::from_utf8_lossy(&bytes);
            let line = text.lines().next().unwrap_or("").trim().to_owned();
            if line.is_empty() {
                return Err(NoToken("no token: standard input is empty".into()).into());
            }
            line
        }
    };
    Ok(Token::presented(text))
}
