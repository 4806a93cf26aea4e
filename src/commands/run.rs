//! `lease run`: mint, start the child, forward signals, wait, revoke; and what goes with it:
//! the child's environment, masking, the receipt.

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;
use std::time::{Instant, SystemTime};

use anyhow::{Context as _, Result};

use super::Setup;
use crate::audit::{self, Event, EventKind, Process};
use crate::child::{self, EnvRules, Spec};
use crate::config::DEFAULT_TOKEN_ENV;
use crate::config::OnExpiry;
use crate::exit::Exit;
use crate::lease;
use crate::mask::Masker;
use crate::owner::Owner;
use crate::policy::Plan;
use crate::receipt::{self, Receipt};
use crate::record::Record;
use crate::request::{RunMode, RunRequest};
use crate::signals::{Deadline, Forwarder, Waited};
use crate::store::{Loaded, Open, Store};
use crate::token::LeaseId;

pub fn run(setup: &Setup, request: RunRequest) -> Result<Exit> {
    if let Some(name) = request.upstreams.first() {
        anyhow::bail!(
            "--upstream {name} needs a broker: upstreams and their keys live in the broker's config; set LEASE_BROKER or --broker"
        );
    }
    // `--print-env` creates nothing: it reads a parent lease, if there is one, and mints nothing.
    let store = setup.store(match request.mode {
        RunMode::PrintEnv => Open::ExistingOnly,
        RunMode::Exec { .. } => Open::CreateIfMissing,
    })?;
    let plan = super::plan(setup, request.asked, &store)?;
    if let Some(name) = plan.upstreams.first() {
        anyhow::bail!(
            "the profile's upstream {name} needs a broker: upstreams and their keys live in the broker's config; set LEASE_BROKER or --broker"
        );
    }
    let inherited_at = super::verify::token_env_in_use(&setup.config.token_env).ok();
    let rules = env_rules(
        setup,
        &request.env,
        inherited_at.as_deref(),
        &plan.token_env,
        &[],
    );
    let (program, args) = match request.mode {
        RunMode::PrintEnv => return print_env(setup, &plan, &rules, &store),
        RunMode::Exec { program, args } => (program, args),
    };
    // A receipt that could not be written must stop the run before it starts, not after.
    if let Some(path) = &request.receipt {
        receipt::can_be_written(path, Some(store.dir()))?;
    }

    let ends_at_expiry = plan.on_expiry != OnExpiry::Keep;
    // Watch signals before minting, so that none arriving from here on is lost.
    let mut forwarder = Forwarder::install(ends_at_expiry).context("watching signals")?;
    let process = Process {
        pid: Some(std::process::id()),
        command: Some(program.to_string_lossy().into_owned()),
        argc: Some(args.len()),
        client: None,
    };
    let child_signals = forwarder.child_signals();
    // The command is started and held just before its exec while its lease is recorded, with
    // the command's own pid and start time: from its first instruction on, `verify` can tell
    // whether it still runs, whatever becomes of lease.
    let (token, record, held) = lease::mint(&store, &plan, &process, |token| {
        let vars = lease::variables(
            lease::Authority::Store(store.dir(), setup.chosen_config.as_deref()),
            lease::Told {
                id: token.hash().id().as_str(),
                scope: &lease::scope_of(&plan),
                expires_at: plan.expires_at,
                token_env: &plan.token_env,
                token: token.expose(),
            },
        );
        let held = spawn(&program, &args, &rules, vars, request.mask, &child_signals)?;
        let owner = Owner::current(program_name(&program))?.running(held.pid());
        match owner {
            Ok(owner) => Ok((Some(owner), held)),
            Err(err) => Err(held.gone(err)),
        }
    })?;
    let id = token.hash().id();
    let lease = RevokeOnExit::new(&store, id.clone(), &process);

    // Debug builds only: lets the test suite prove that a panic still revokes the lease.
    #[cfg(debug_assertions)]
    if std::env::var_os("LEASE_DEBUG_PANIC_AFTER_MINT").is_some() {
        panic!("LEASE_DEBUG_PANIC_AFTER_MINT is set");
    }

    #[cfg(debug_assertions)]
    crate::signals::debug_signal_before_start();
    if let Some(signal) = forwarder.arrived_before_start() {
        drop(held);
        lease.revoke()?;
        return Ok(Exit::Signal(signal));
    }

    let started_at = SystemTime::now();
    let started = Instant::now();
    // The expiry is read again when it comes, since `lease renew` may have moved it.
    let mut current_expiry = || match store.load(&id) {
        Ok(Loaded::Found(record)) => record.expires_at,
        _ => SystemTime::now(),
    };
    // Here the token is dead the moment the command is (verify checks its owner): the output
    // can be passed on first.
    let started_and_waited = start_and_wait(
        held,
        // The revoke's file, and the next run's, are made while the command execs.
        || store.prepare(),
        forwarder,
        request.mask.then_some(token),
        (plan.on_expiry, plan.grace),
        &mut current_expiry,
    );
    let (waited, masker) = match started_and_waited {
        Ok(waited) => waited,
        Err(err) => {
            // A command that could not be run (127, 126) still leaves its receipt, written
            // after the revocation as a run's is: the lease was minted, and the exit says why
            // nothing used it.
            if let (Some(path), Some(waited)) = (&request.receipt, never_started(&err)) {
                if let Err(revoking) = lease.revoke() {
                    crate::say!("lease: revoking the lease failed: {revoking:#}");
                }
                let duration_ms = audit::millis(started.elapsed());
                let receipt = Receipt::new(&store, &record, &waited, started_at, duration_ms);
                say_unwritten_receipt(receipt.write(path));
            }
            return Err(err);
        }
    };
    if let Some(masker) = masker {
        masker.finish();
    }
    let duration_ms = audit::millis(started.elapsed());
    let outcome = record_exit(&store, &record, &plan, &process, &waited, duration_ms);

    let mut problems = Vec::new();
    if let Err(err) = lease.revoke() {
        problems.push(format!("its lease could not be revoked: {err:#}"));
    }
    if let Some(path) = &request.receipt {
        let receipt = Receipt::new(&store, &record, &waited, started_at, duration_ms);
        if let Err(err) = receipt.write(path) {
            problems.push(format!("its receipt could not be written: {err:#}"));
        }
    }
    if problems.is_empty() {
        return Ok(outcome);
    }
    let problems = problems.join("; and ");
    if outcome == Exit::Child(0) {
        anyhow::bail!("the command succeeded, but {problems}");
    }
    // The command's failure is the more useful exit status; still say what went wrong.
    crate::say!("lease: the command failed, and {problems}");
    Ok(outcome)
}

/// Starts the command and holds it before its exec (see [`child::Held`]).
pub(super) fn spawn(
    program: &std::ffi::OsStr,
    args: &[std::ffi::OsString],
    rules: &EnvRules<'_>,
    vars: Vec<(std::ffi::OsString, std::ffi::OsString)>,
    mask: bool,
    signals: &crate::signals::SignalPlan,
) -> Result<child::Held> {
    let spec = Spec {
        program,
        args,
        env: child::environment(std::env::vars_os(), rules, vars),
        mask,
    };
    child::spawn(spec, signals)
}

/// Lets the held command run and waits for it: signals forwarded, the command ended at expiry
/// as `on_expiry` says (with its grace), its output masked of `mask`'s token if given. The
/// masking may still have output to pass on (to a reader that is slow, or stopped): the
/// [`Masker`] is handed back, to be finished once the lease is ended. `meanwhile` runs while
/// the command execs (see [`child::Held::start`]).
pub(super) fn start_and_wait(
    mut held: child::Held,
    meanwhile: impl FnOnce(),
    mut forwarder: Forwarder,
    mask: Option<crate::token::Token>,
    (on_expiry, grace): (OnExpiry, std::time::Duration),
    expires_at: &mut dyn FnMut() -> SystemTime,
) -> Result<(Waited, Option<Masker>)> {
    let (stdout, stderr) = (held.stdout.take(), held.stderr.take());
    let child = held.start(meanwhile)?;
    let masker = mask.map(|token| Masker::start(stdout, stderr, token.expose().as_bytes()));
    let deadline = (on_expiry != OnExpiry::Keep).then(|| Deadline {
        kill_at_once: on_expiry == OnExpiry::Kill,
        grace,
        expires_at,
    });
    let waited = forwarder
        .wait(child, deadline)
        .context("waiting for the command")?;
    forwarder.finishing();
    Ok((waited, masker))
}

/// How the command ended when it could not be run at all (its program not found: 127; not
/// executable: 126), as the receipt shows it; `None` for any other failure to start or wait.
pub(super) fn never_started(err: &anyhow::Error) -> Option<Waited> {
    let exit = err.downcast_ref::<crate::exit::ExitError>()?.exit();
    matches!(exit, Exit::NotFound | Exit::CannotExecute).then(|| Waited {
        status: ExitStatus::from_raw(exit.code() << 8),
        ended_at_expiry: false,
        sent_at_expiry: None,
    })
}

/// Says so on stderr when the receipt of a command that could not be run was not written
/// (the error that ends lease is the command's).
pub(super) fn say_unwritten_receipt(written: Result<()>) {
    if let Err(err) = written {
        crate::say!(
            "lease: the command could not be run, and its receipt could not be written: {err:#}"
        );
    }
}

/// What the command's environment keeps of lease's. An inherited token must not ride along
/// beside the new one: the variables that name one go (`inherited_at` is where the parent's
/// token is), and so does every other variable holding something shaped like a token; so do
/// the names in `also_remove`.
pub(super) fn env_rules<'a>(
    setup: &'a Setup,
    env: &'a crate::request::EnvRequest,
    inherited_at: Option<&'a str>,
    token_env: &'a str,
    also_remove: &[&'a str],
) -> EnvRules<'a> {
    let scrub: Vec<&glob::Pattern> = setup.config.scrub_env.iter().chain(&env.scrub).collect();
    let remove = [DEFAULT_TOKEN_ENV, setup.config.token_env.as_str()]
        .into_iter()
        .chain(inherited_at)
        .filter(|name| *name != token_env)
        .chain(also_remove.iter().copied())
        .collect();
    EnvRules {
        clean: env.clean,
        keep: &env.keep,
        scrub,
        remove,
    }
}

/// `--print-env`: the environment the command would get, with the secret and the id (which do
/// not exist yet) shown as placeholders. Nothing is minted and nothing is run.
fn print_env(setup: &Setup, plan: &Plan, rules: &EnvRules<'_>, store: &Store) -> Result<Exit> {
    let scope = lease::scope_of(plan);
    let planned = (scope.as_str(), plan.expires_at, plan.token_env.as_str());
    print_planned_env(
        lease::Authority::Store(store.dir(), setup.chosen_config.as_deref()),
        planned,
        rules,
        Vec::new(),
    )
}

/// What `--print-env` shows where the token will be.
pub(super) const TOKEN_PLACEHOLDER: &str = "<token: minted when the command starts>";

/// The environment a command would get for a lease planned with this (scope, expiry, token
/// variable), with placeholders for the id and the token, and `more` (an upstream's).
pub(super) fn print_planned_env(
    authority: lease::Authority<'_>,
    (scope, expires_at, token_env): (&str, SystemTime, &str),
    rules: &EnvRules<'_>,
    more: Vec<(std::ffi::OsString, std::ffi::OsString)>,
) -> Result<Exit> {
    let mut vars = lease::variables(
        authority,
        lease::Told {
            id: "<minted when the command starts>",
            scope,
            expires_at,
            token_env,
            token: TOKEN_PLACEHOLDER,
        },
    );
    vars.extend(more);
    let mut out = std::io::stdout().lock();
    for (name, value) in child::environment(std::env::vars_os(), rules, vars) {
        let mut line = name.into_encoded_bytes();
        line.push(b'=');
        line.extend_from_slice(value.as_encoded_bytes());
        line.push(b'\n');
        out.write_all(&line).context("writing to standard output")?;
    }
    Ok(Exit::Success)
}

/// Records how the command ended in the trail, and returns the status lease ends with.
fn record_exit(
    store: &Store,
    record: &Record,
    plan: &Plan,
    process: &Process,
    waited: &Waited,
    duration_ms: u64,
) -> Exit {
    let mut exited = Event::new(EventKind::ChildExit, Some(record)).process(process);
    exited.exit_code = waited.status.code();
    exited.signal = waited.status.signal();
    exited.duration_ms = Some(duration_ms);
    store.audit().note(&exited);
    if !waited.ended_at_expiry {
        return exit_of(waited.status);
    }
    // What lease sent last: the trail and the receipt report it.
    let mut expired = Event::new(EventKind::Expired, Some(record)).process(process);
    expired.reason = Some(format!("on-expiry {}", plan.on_expiry.as_str()));
    expired.signal = waited.sent_at_expiry;
    store.audit().note(&expired);
    say_expired(&record.id, waited, plan.on_expiry);
    Exit::Expired
}

/// The line that says a command was ended because its lease expired: what lease sent last,
/// and what the command died of (the same, unless it caught the signal and exited).
pub(super) fn say_expired(id: &str, waited: &Waited, on_expiry: OnExpiry) {
    let name =
        |signal: i32| nix::sys::signal::Signal::try_from(signal).map_or("a signal", |s| s.as_str());
    let how = match (waited.status.signal(), waited.sent_at_expiry) {
        (Some(died_of), _) => format!("the command was ended with {}", name(died_of)),
        (None, Some(sent)) => format!("the command was sent {} and exited", name(sent)),
        (None, None) => "the command was ended".to_owned(),
    };
    crate::say!(
        "lease: lease {id} expired: {how} (--on-expiry {})",
        on_expiry.as_str()
    );
}

/// The status lease should end with, given how the child ended.
pub(super) fn exit_of(status: ExitStatus) -> Exit {
    match (status.code(), status.signal()) {
        (Some(code), _) => Exit::Child(code),
        (None, Some(signal)) => Exit::Signal(signal),
        (None, None) => Exit::RunFailure,
    }
}

/// The program's name as recorded in the lease (argv[0] only: arguments may hold secrets).
pub(super) fn program_name(program: &std::ffi::OsStr) -> String {
    let name = Path::new(program).file_name().unwrap_or(program);
    name.to_string_lossy().into_owned()
}

/// Revokes the lease when dropped, so that every way out of `run` (an error, a failed spawn,
/// a panic unwinding) ends the lease. The normal path calls [`RevokeOnExit::revoke`] to learn
/// whether revocation worked.
struct RevokeOnExit<'a> {
    store: &'a Store,
    id: LeaseId,
    process: &'a Process,
    done: bool,
}

impl<'a> RevokeOnExit<'a> {
    fn new(store: &'a Store, id: LeaseId, process: &'a Process) -> RevokeOnExit<'a> {
        RevokeOnExit {
            store,
            id,
            process,
            done: false,
        }
    }

    fn revoke(mut self) -> Result<()> {
        self.done = true;
        self.revoke_now()
    }

    fn revoke_now(&self) -> Result<()> {
        match lease::revoke(self.store, &self.id, "run ended", self.process)
            .with_context(|| format!("revoking lease {}", self.id))?
        {
            // A record the run cannot read back (replaced by its command, say) is not revoked:
            // verify denies it as corrupt, but the run must not end as if all were well.
            Loaded::Corrupt(why) => anyhow::bail!("revoking lease {}: {why}", self.id),
            // Gone: no token of it can be granted any more.
            Loaded::Found(_) | Loaded::Missing => Ok(()),
        }
    }
}

impl Drop for RevokeOnExit<'_> {
    fn drop(&mut self) {
        if !self.done
            && let Err(err) = self.revoke_now()
        {
            crate::say!("lease: revoking the lease failed: {err:#}");
        }
    }
}
