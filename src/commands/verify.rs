//! `lease verify ACTION`: is the presented token valid, and does it grant the action?
//!
//! The decision itself is [`crate::authorize`]'s; this reads the token and prints the answer.

use std::io::{self, Read};
use std::time::SystemTime;

use anyhow::{Context as _, Result, bail};

use super::{Context, print_json};
use crate::authorize::{Decision, authorize};
use crate::cli::{TokenSource, VerifyRequest};
use crate::exit::Exit;
use crate::store::Open;
use crate::token::{BODY_LEN, PREFIX, Token};

/// Longest token read from standard input; a real token is 47 bytes.
const MAX_STDIN_BYTES: u64 = 4096;

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

/// No token was presented: verify cannot decide (exit 2).
#[derive(Debug)]
struct NoToken(String);

impl std::fmt::Display for NoToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NoToken {}

pub(super) fn read_token(source: &TokenSource, default_env: &str) -> Result<Token> {
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
