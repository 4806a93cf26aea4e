//! `lease run` through a broker: the broker mints the run's lease and holds it by one
//! connection, which this process keeps open (a keepalive thread, re-attaching after a broker
//! restart) for as long as the command runs; the command's end is told to the broker, which
//! revokes the lease. If this process dies, its connection closes and the broker ends the
//! lease at once (`owner gone`).

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use super::Setup;
use super::run::{
    env_rules, exit_of, never_started, print_planned_env, program_name, say_expired,
    say_unwritten_receipt, spawn, start_and_wait,
};
use crate::client::{Hold, Keeper, Kept};
use crate::config::OnExpiry;
use crate::endpoint::Endpoint;
use crate::exit::Exit;
use crate::lease::{self, Authority, Told};
use crate::request::{RunMode, RunRequest};
use crate::signals::Forwarder;
use crate::token::Token;
use crate::wire::{Exited, FromBroker, FromRun, MintBody, Planned};

pub fn run_through(setup: &Setup, broker: &Endpoint, request: RunRequest) -> Result<Exit> {
    let (program, args) = match request.mode {
        RunMode::PrintEnv => return print_env(setup, broker, &request),
        RunMode::Exec { program, args } => (program, args),
    };
    // A receipt that could not be written must stop the run before it starts, not after.
    if let Some(path) = &request.receipt {
        crate::receipt::can_be_written(path, None)?;
    }
    let inherited = super::inherited_token(setup)?;
    let mut body = MintBody::from_asked(&request.asked);
    body.command = Some(program_name(&program));
    body.pid = Some(std::process::id());
    body.argv0 = Some(program.to_string_lossy().into_owned());
    body.argc = Some(args.len());
    // Named first, so that an upstream the broker lacks stops the run before a lease exists.
    body.upstreams.clone_from(&request.upstreams);
    // A refusal reads as it does locally; a broker that cannot be reached says so.
    let (hold, started) = Hold::start(broker, inherited.as_ref(), &body).map_err(|err| {
        if err.is::<crate::client::Refusal>() {
            err
        } else {
            err.context("cannot start the run")
        }
    })?;
    if setup.verbose {
        for note in &started.notes {
            crate::say!("lease: note: {note}");
        }
    }
    let token = Token::presented(started.lease.token.clone());
    // The wrapper's proof for re-attaching: kept here, never in the command's environment.
    let secret = Token::presented(started.hold.clone());
    let on_expiry: OnExpiry = started.on_expiry.parse()?;
    let expires_at = humantime::parse_rfc3339(&started.lease.expires_at)
        .context("the broker answered a bad expiry")?;
    let owner_timeout = Duration::from_secs(started.owner_timeout.max(1));
    // The broker names where the token goes: never where it would steer the command (PATH,
    // the dynamic loader's variables) or stand for one of lease's own. (An error drops the
    // connection, and the broker ends the lease.)
    crate::config::validate_token_env(&started.token_env)
        .with_context(|| format!("broker {broker} answered a variable the command cannot get"))?;

    let inherited_at = super::verify::token_env_in_use(&setup.config.token_env).ok();
    // The command reaches the broker, never a local store or policy.
    let rules = env_rules(
        setup,
        &request.env,
        inherited_at.as_deref(),
        &started.token_env,
        &[lease::STATE_DIR_VAR, lease::CONFIG_VAR],
    );
    let ends_at_expiry = on_expiry != OnExpiry::Keep;
    let mut forwarder = Forwarder::install(ends_at_expiry).context("watching signals")?;
    let child_signals = forwarder.child_signals();
    let vars = lease::variables(
        Authority::Broker(broker),
        Told {
            id: &started.lease.id,
            scope: &started.lease.scope.join(","),
            expires_at,
            token_env: &started.token_env,
            token: token.expose(),
        },
    );
    // Every way out from here tells the broker the run is over (were this process to die, its
    // connection would close, and the broker would end the lease as `owner gone`).
    let tell_end =
        |kept: Kept, end: FromRun| finish(kept, broker, (&token, &secret), owner_timeout, end);
    let mut vars = vars;
    // Each upstream once, whether named twice on the command line or by the profile as well.
    let mut upstreams: Vec<&String> = Vec::new();
    for name in request.upstreams.iter().chain(&started.upstreams) {
        if !upstreams.contains(&name) {
            upstreams.push(name);
        }
    }
    for name in &upstreams {
        match upstream_vars(broker, &token, name) {
            Ok(more) => vars.extend(more),
            Err(err) => {
                tell_end(hold_end(Some(hold)), FromRun::NoExit);
                return Err(err.context(format!("cannot reach upstream {name}")));
            }
        }
    }
    if let Some(twice) = named_twice(&vars) {
        tell_end(hold_end(Some(hold)), FromRun::NoExit);
        bail!(
            "{} would be set twice for the command: the token's variable (--env, token_env) and the upstreams' child_env in the broker's config must all have different names",
            twice.to_string_lossy()
        );
    }
    let held = match spawn(&program, &args, &rules, vars, request.mask, &child_signals) {
        Ok(held) => held,
        Err(err) => {
            tell_end(hold_end(Some(hold)), FromRun::NoExit);
            return Err(err);
        }
    };
    #[cfg(debug_assertions)]
    crate::signals::debug_signal_before_start();
    if let Some(signal) = forwarder.arrived_before_start() {
        drop(held);
        tell_end(hold_end(Some(hold)), FromRun::NoExit);
        return Ok(Exit::Signal(signal));
    }
    let started_at = Instant::now();
    let started_wall = std::time::SystemTime::now();
    let keeper = Keeper::start(hold, token.clone(), secret.clone(), owner_timeout)?;
    // The expiry is asked of the broker again when it comes, since `lease renew` may have
    // moved it; if the broker cannot say, the expiry known stands.
    let mut current_expiry = || current_expiry(broker, &token).unwrap_or(expires_at);
    let waited = start_and_wait(
        held,
        || (),
        forwarder,
        request.mask.then(|| token.clone()),
        (on_expiry, Duration::from_secs(started.grace)),
        &mut current_expiry,
    );
    let (waited, masker) = match waited {
        Ok(waited) => waited,
        Err(err) => {
            // The command never ran (127, 126) or could not be waited for: the run is over.
            tell_end(keeper.finish(), FromRun::NoExit);
            if let (Some(path), Some(waited)) = (&request.receipt, never_started(&err)) {
                let duration_ms = crate::audit::millis(started_at.elapsed());
                let written = held_trail(broker, &token).and_then(|trail| {
                    crate::receipt::Receipt::of_held_run(
                        &started,
                        trail,
                        &waited,
                        started_wall,
                        duration_ms,
                    )
                    .write(path)
                });
                say_unwritten_receipt(written);
            }
            return Err(err);
        }
    };
    let exited = Exited {
        code: std::os::unix::process::ExitStatusExt::signal(&waited.status)
            .is_none()
            .then(|| waited.status.code())
            .flatten(),
        signal: std::os::unix::process::ExitStatusExt::signal(&waited.status),
        duration_ms: crate::audit::millis(started_at.elapsed()),
        ended_at_expiry: waited
            .ended_at_expiry
            .then(|| on_expiry.as_str().to_owned()),
        sent_at_expiry: waited.sent_at_expiry,
    };
    let duration_ms = exited.duration_ms;
    // The lease ends with the command, before what the masking still has to pass on: a reader
    // that is slow or stopped must not keep the token alive.
    tell_end(keeper.finish(), FromRun::Exit(exited));
    if let Some(masker) = masker {
        masker.finish();
    }
    let outcome = if waited.ended_at_expiry {
        say_expired(&started.lease.id, &waited, on_expiry);
        Exit::Expired
    } else {
        exit_of(waited.status)
    };
    if let Some(path) = &request.receipt {
        let written = held_trail(broker, &token).and_then(|trail| {
            let receipt = crate::receipt::Receipt::of_held_run(
                &started,
                trail,
                &waited,
                started_wall,
                duration_ms,
            );
            receipt.write(path)
        });
        if let Err(err) = written {
            if outcome == Exit::Child(0) {
                bail!("the command succeeded, but its receipt could not be written: {err:#}");
            }
            crate::say!("lease: the command failed, and its receipt could not be written: {err:#}");
        }
    }
    Ok(outcome)
}

/// The run's trail, as the broker keeps it: its own lease's events and its nested leases'
/// (`lease log --json` through the broker, which a token holder may ask about its own lease).
fn held_trail(broker: &Endpoint, token: &Token) -> Result<Vec<crate::audit::Event>> {
    let asked = crate::wire::Remote::Log {
        id: None,
        since: None,
        json: true,
    };
    let printed: crate::wire::Printed =
        crate::client::call(broker, "/v1/commands", Some(token), &asked, "the trail")?;
    if printed.exit != 0 {
        bail!(
            "broker {broker} could not read the trail: {}",
            printed.stderr.trim()
        );
    }
    printed
        .stdout
        .lines()
        .map(|line| serde_json::from_str(line).context("an event of the trail"))
        .collect()
}

fn hold_end(hold: Option<Hold>) -> Kept {
    Kept { hold, lost: None }
}

/// Tells the broker the run ended, so that it revokes the lease: on the connection the keeper
/// handed back, or, if that is gone, on a new one, for at most `owner_timeout` in all (the
/// telling runs on a thread of its own, which is left behind past that: a name to resolve, a
/// broker that answers each step slowly). If the broker cannot be told, says so; the broker
/// ends the lease by itself when the connection is gone.
fn finish(
    kept: Kept,
    broker: &Endpoint,
    (token, secret): (&Token, &Token),
    owner_timeout: Duration,
    end: FromRun,
) {
    let (told, outcome) = std::sync::mpsc::channel();
    let (broker_for, token, secret) = (broker.clone(), token.clone(), secret.clone());
    let telling = std::thread::Builder::new()
        .name("lease-end".into())
        .spawn(move || {
            let last = tell_end_within(kept, &broker_for, (&token, &secret), owner_timeout, &end);
            let _ = told.send(last);
        });
    let last = match telling {
        Ok(_) => match outcome.recv_timeout(owner_timeout + Duration::from_millis(100)) {
            Ok(None) => return,
            Ok(Some(last)) => last,
            Err(_) => format!("no answer within {}s", owner_timeout.as_secs()),
        },
        Err(err) => format!("cannot start a thread: {err}"),
    };
    crate::say!(
        "lease: could not tell the broker that the run ended: {last}; it ends the lease itself within {}s",
        owner_timeout.as_secs()
    );
}

/// [`finish`]'s attempts, each step waiting at most what is left of `owner_timeout`: `None`
/// once the broker has been told (or had ended the lease already), else the last error.
fn tell_end_within(
    kept: Kept,
    broker: &Endpoint,
    (token, secret): (&Token, &Token),
    owner_timeout: Duration,
    end: &FromRun,
) -> Option<String> {
    let tell = |hold: &mut Hold| -> Result<()> {
        hold.send(end)?;
        match hold.receive()? {
            FromBroker::Ended => Ok(()),
            FromBroker::Error(why) => bail!("{why}"),
            _ => bail!("broker {broker}: answered the end of the run with something else"),
        }
    };
    let deadline = Instant::now() + owner_timeout;
    let left = || deadline.saturating_duration_since(Instant::now());
    let mut last = kept.lost.unwrap_or_default();
    if let Some(mut hold) = kept.hold {
        match hold
            .limit_waits(left(), deadline)
            .and_then(|()| tell(&mut hold))
        {
            Ok(()) => return None,
            Err(err) => last = format!("{err:#}"),
        }
    }
    while !left().is_zero() {
        let attached = Hold::attach(broker, token, secret, left()).and_then(|mut hold| {
            hold.limit_waits(left(), deadline)?;
            tell(&mut hold)
        });
        match attached {
            Ok(()) => return None,
            // Ended meanwhile (by the broker, which saw the connection go): nothing to tell.
            Err(err) if crate::client::lease_has_ended(&err) => return None,
            Err(err) => last = format!("{err:#}"),
        }
        std::thread::sleep(Duration::from_millis(200).min(left()));
    }
    Some(last)
}

/// `--print-env` through the broker: its policy plans the lease (a dry run of `POST
/// /v1/leases`, which mints nothing), and the environment is printed with placeholders.
fn print_env(setup: &Setup, broker: &Endpoint, request: &RunRequest) -> Result<Exit> {
    let inherited = super::inherited_token(setup)?;
    let mut body = MintBody::from_asked(&request.asked);
    body.dry_run = true;
    body.upstreams.clone_from(&request.upstreams);
    let planned: Planned =
        crate::client::call(broker, "/v1/leases", inherited.as_ref(), &body, "a plan")?;
    let expires_at = humantime::parse_rfc3339(&planned.expires_at)
        .context("the broker answered a bad expiry")?;
    let inherited_at = super::verify::token_env_in_use(&setup.config.token_env).ok();
    let rules = env_rules(
        setup,
        &request.env,
        inherited_at.as_deref(),
        &planned.token_env,
        &[lease::STATE_DIR_VAR, lease::CONFIG_VAR],
    );
    let mut upstreams = Vec::new();
    for env in planned.upstreams {
        upstreams.extend(
            upstream_env_vars(env, super::run::TOKEN_PLACEHOLDER).with_context(|| {
                format!("broker {broker} answered a variable the command cannot get")
            })?,
        );
    }
    print_planned_env(
        Authority::Broker(broker),
        (&planned.scope.join(","), expires_at, &planned.token_env),
        &rules,
        upstreams,
    )
}

/// The variables that point the command at upstream `name` through the broker: its base URL
/// and the lease token where the client expects its key (the upstream's `child_env`).
fn upstream_vars(
    broker: &Endpoint,
    token: &Token,
    name: &str,
) -> Result<Vec<(std::ffi::OsString, std::ffi::OsString)>> {
    let ask = crate::wire::UpstreamAsk {
        name: name.to_owned(),
    };
    let env: crate::wire::UpstreamEnv =
        crate::client::call(broker, "/v1/upstreams", Some(token), &ask, "an upstream")?;
    upstream_env_vars(env, token.expose())
        .with_context(|| format!("broker {broker} answered a variable the command cannot get"))
}

/// The variables `env` sets: the base URL, and `token` where the key would be; refused if
/// the broker named one that steers the command or is one of lease's own.
fn upstream_env_vars(
    env: crate::wire::UpstreamEnv,
    token: &str,
) -> Result<Vec<(std::ffi::OsString, std::ffi::OsString)>> {
    let mut vars = Vec::new();
    if let Some(var) = env.base_url_env {
        crate::config::validate_child_var(&var)?;
        vars.push((var.into(), env.base_url.into()));
    }
    if let Some(var) = env.token_env {
        crate::config::validate_child_var(&var)?;
        vars.push((var.into(), token.into()));
    }
    Ok(vars)
}

/// A variable named more than once among `vars`, if one is.
fn named_twice(vars: &[(std::ffi::OsString, std::ffi::OsString)]) -> Option<&std::ffi::OsString> {
    let mut names: Vec<&std::ffi::OsString> = vars.iter().map(|(name, _)| name).collect();
    names.sort();
    names
        .windows(2)
        .find(|pair| pair[0] == pair[1])
        .map(|pair| pair[0])
}

/// The lease's expiry as the broker has it now (it reads the record, and changes nothing).
fn current_expiry(broker: &Endpoint, token: &Token) -> Result<std::time::SystemTime> {
    let printed: crate::wire::Printed = crate::client::call(
        broker,
        "/v1/commands",
        Some(token),
        &crate::wire::Remote::Expiry,
        "an expiry",
    )?;
    if printed.exit != 0 {
        bail!("the broker has no record of the lease");
    }
    Ok(humantime::parse_rfc3339(printed.stdout.trim())?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::UpstreamEnv;

    #[test]
    fn a_broker_cannot_name_a_variable_that_steers_the_command_or_one_twice() {
        let env = |base: &str, token: &str| UpstreamEnv {
            base_url: "http://127.0.0.1:1/u/x".to_owned(),
            base_url_env: Some(base.to_owned()),
            token_env: Some(token.to_owned()),
        };
        let vars = upstream_env_vars(env("API_URL", "API_KEY"), "agt_x").expect("fine names");
        assert_eq!(vars.len(), 2);
        for (base, token) in [
            ("LD_PRELOAD", "API_KEY"),
            ("API_URL", "DYLD_INSERT_LIBRARIES"),
            ("PATH", "API_KEY"),
            ("API_URL", "LEASE_ID"),
            ("1BAD", "API_KEY"),
        ] {
            assert!(
                upstream_env_vars(env(base, token), "agt_x").is_err(),
                "{base} {token}"
            );
        }
        let twice = vec![
            ("A".into(), "1".into()),
            ("B".into(), "2".into()),
            ("A".into(), "3".into()),
        ];
        assert_eq!(named_twice(&twice), Some(&"A".into()));
        assert_eq!(named_twice(&twice[..2]), None);
    }
}
