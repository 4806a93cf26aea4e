//! `lease verify ACTION`: is the presented token valid, and does it grant the action?
//!
//! The decision itself is [`crate::authorize`]'s; this reads the token and prints the answer.

use std::io;
use std::os::fd::AsFd;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, Result, anyhow, bail};

use super::{Setup, print_json};
use crate::audit::{Event, EventKind, Process};
use crate::authorize::{Decision, Reason, authorize};
use crate::client;
use crate::config::TOKEN_ENV_VAR;
use crate::endpoint::Endpoint;
use crate::exit::Exit;
use crate::request::{TokenSource, VerifyRequest};
use crate::scope::Action;
use crate::store::{Open, Store};
use crate::token::{BODY_LEN, LeaseId, PREFIX, Token};
use crate::wire::VerifyAnswer;

/// Longest token read from standard input; a real token is 52 bytes.
const MAX_STDIN_BYTES: usize = 4096;
/// How long `--token-stdin` waits on a silent input for the token's line: a pipe whose writer
/// neither writes nor closes it is an error, not a wait without end.
const STDIN_WAIT: Duration = Duration::from_secs(30);

/// `lease verify`: prints the decision (a line on stderr when denied; JSON if asked) and
/// returns exit 0 (granted) or 1 (denied); errors mean it cannot decide (exit 2).
/// `err`, which kept verify from deciding (a config, a store or a broker that cannot be read,
/// no token), after `--json`'s answer for it: `"reason": "no token"` or `"error"`, so that a
/// caller reading the JSON always has an answer to read.
pub fn undecided(request: &VerifyRequest, err: anyhow::Error) -> anyhow::Error {
    if request.json
        && let Err(printing) = print_undecided(undecided_reason(&err))
    {
        return printing;
    }
    err
}

/// The reason `--json` gives for `err`, which kept a command from deciding: `no token`, or
/// `error`.
pub(super) fn undecided_reason(err: &anyhow::Error) -> Reason {
    if err.is::<NoToken>() {
        Reason::NoToken
    } else {
        Reason::Error
    }
}

/// `--json`'s answer when verify could not decide, for `reason` (`no token` or `error`).
pub fn print_undecided(reason: Reason) -> Result<()> {
    print_json(&Decision::deny(reason, String::new(), None))
}

pub fn verify(setup: &Setup, request: &VerifyRequest) -> Result<Exit> {
    let (decision, store) = match decide(setup, request) {
        Ok(decided) => decided,
        Err(err) => return Err(undecided(request, err.context("cannot verify"))),
    };
    if request.json {
        print_json(&decision)?;
    }
    if !decision.granted {
        crate::say!("lease: denied: {}: {}", decision.reason, decision.detail);
    }
    // The trail is written after the answer is given, so that a trail that cannot be written
    // is reported after (and never instead of) the answer.
    if let Some(store) = store {
        let kind = if decision.granted {
            EventKind::Granted
        } else {
            EventKind::Denied
        };
        let mut event = Event::new(kind, None).process(&Process::caller());
        event.lease.clone_from(&decision.id);
        event.parent.clone_from(&decision.parent);
        event.run.clone_from(&decision.run);
        event.action = Some(request.action.as_str().to_owned());
        event.reason = Some(decision.reason.to_string());
        store.audit().note(&event);
    }
    Ok(if decision.granted {
        Exit::Success
    } else {
        Exit::Denied
    })
}

/// The decision, and the store it was read from (none for a malformed token).
fn decide(setup: &Setup, request: &VerifyRequest) -> Result<(Decision, Option<Store>)> {
    let token = read_token(&request.source, &setup.config.token_env)?;
    // A mistyped or truncated token is refused before the store is touched.
    if !token.is_well_formed() {
        let detail = format!(
            "not a lease token (expected {PREFIX} and {BODY_LEN} characters with a valid checksum)"
        );
        return Ok((Decision::deny(Reason::Malformed, detail, None), None));
    }
    if let Some(broker) = &setup.broker {
        // The broker decides and writes the trail; nothing here touches a store.
        return Ok((ask_broker(broker, &token, &request.action)?, None));
    }
    let store = setup.store(Open::ExistingOnly)?;
    let decision = authorize(&store, &token, &request.action, SystemTime::now())?;
    Ok((decision, Some(store)))
}

/// The decision of the broker at `broker` (`POST /v1/verify`): the same [`Decision`] a local
/// verify makes. Anything but a decision (unreachable, 503, garbage) is an error: fail closed.
fn ask_broker(broker: &Endpoint, token: &Token, action: &Action) -> Result<Decision> {
    let body = serde_json::to_vec(&serde_json::json!({ "action": action.as_str() }))?;
    let answer = client::request(broker, "POST", "/v1/verify", Some(token), Some(&body))?;
    // 503 carries a decision only for a record that cannot be read (`corrupt record`, a
    // denial, as locally); otherwise it is the broker failing, and nothing is decided.
    let is_decision = matches!(answer.status, 200 | 401 | 403)
        || (answer.status == 503
            && serde_json::from_slice::<VerifyAnswer>(&answer.body)
                .is_ok_and(|d| d.reason == Reason::CorruptRecord));
    if !is_decision {
        match answer.reason() {
            Some(why) => bail!("broker {broker} answered {}: {why}", answer.status),
            None => bail!("{}", answer.unexpected(broker)),
        }
    }
    let decided: VerifyAnswer = serde_json::from_slice(&answer.body)
        .with_context(|| format!("broker {broker} answered something that is not a decision"))?;
    if decided.granted != (decided.reason == Reason::Granted)
        || (answer.status == 200) != decided.granted
    {
        bail!("broker {broker} answered a decision that contradicts itself");
    }
    let id = match decided.id {
        Some(id) => Some(
            LeaseId::try_from(id)
                .map_err(|_| anyhow!("broker {broker} answered a bad lease id"))?,
        ),
        None => None,
    };
    Ok(Decision {
        granted: decided.granted,
        reason: decided.reason,
        id,
        expires_at: decided.expires_at,
        detail: decided.detail,
        parent: None,
        run: None,
        scope: None,
    })
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

/// The variable the token is in when no `--token-env` is given: the one `LEASE_TOKEN_ENV` names
/// (set by `lease run` for its command), else `default_env` (the config's `token_env`).
pub(super) fn token_env_in_use(default_env: &str) -> Result<String> {
    match std::env::var(TOKEN_ENV_VAR) {
        Ok(name) if !name.is_empty() => {
            // Where a token may be put, as `--env` and `token_env` allow (not PATH, LD_*, ...):
            // a nested run drops the variable from its command's environment.
            crate::config::validate_token_env(&name).with_context(|| {
                format!("${TOKEN_ENV_VAR} does not name a variable a token may be in")
            })?;
            Ok(name)
        }
        _ => Ok(default_env.to_owned()),
    }
}

pub(super) fn read_token(source: &TokenSource, default_env: &str) -> Result<Token> {
    let text = match source {
        TokenSource::Env(name) => {
            let name = match name {
                Some(name) => name.clone(),
                None => token_env_in_use(default_env)?,
            };
            let value = std::env::var_os(&name).unwrap_or_default();
            if value.is_empty() {
                return Err(NoToken(format!(
                    "no token: ${name} is not set; run this inside `lease run`, or pass --token-env NAME or --token-stdin"
                ))
                .into());
            }
            value.to_string_lossy().into_owned()
        }
        TokenSource::Stdin => {
            let bytes = first_line_of_stdin(STDIN_WAIT)?;
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

/// The first line of standard input (or all of it, up to its end, without a line break), read
/// as it arrives: the answer comes as soon as the line ends, whether or not the writer then
/// closes its end of the pipe. Fails once the input has been silent for `silence` (a writer
/// may take its time, as a password manager waiting for its user does, but not for ever), or
/// past [`MAX_STDIN_BYTES`].
fn first_line_of_stdin(silence: Duration) -> Result<Vec<u8>> {
    let stdin = io::stdin();
    let fd = stdin.as_fd();
    let mut deadline = Instant::now() + silence;
    let mut line = Vec::new();
    let mut chunk = [0u8; 512];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let millis = i32::try_from(left.as_millis()).unwrap_or(i32::MAX);
        let mut fds = [nix::poll::PollFd::new(fd, nix::poll::PollFlags::POLLIN)];
        match nix::poll::poll(
            &mut fds,
            nix::poll::PollTimeout::try_from(millis).unwrap_or(nix::poll::PollTimeout::MAX),
        ) {
            Ok(0) => {
                let what = if line.is_empty() {
                    "nothing came on standard input"
                } else {
                    "part of a line came on standard input, then nothing"
                };
                return Err(NoToken(format!(
                    "no token: {what} for {} s; pipe the token to --token-stdin, followed by a line break or the end of the input",
                    silence.as_secs()
                ))
                .into());
            }
            // A signal: poll again, with what is left of the wait.
            Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(err) => {
                return Err(io::Error::from(err)).context("reading the token from standard input");
            }
        }
        // Only what was there (at most one line's worth is kept).
        let read = match nix::unistd::read(fd, &mut chunk) {
            Ok(read) => read,
            Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => continue,
            Err(err) => {
                return Err(io::Error::from(err)).context("reading the token from standard input");
            }
        };
        let got = &chunk[..read];
        let end = got.iter().position(|&b| b == b'\n');
        line.extend_from_slice(&got[..end.unwrap_or(read)]);
        zeroize::Zeroize::zeroize(&mut chunk[..read]);
        if line.len() > MAX_STDIN_BYTES {
            bail!("the token on standard input is longer than {MAX_STDIN_BYTES} bytes");
        }
        if read == 0 || end.is_some() {
            return Ok(line);
        }
        deadline = Instant::now() + silence;
    }
}
