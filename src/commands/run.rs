//! `lease run`: mint, start the child, forward signals, wait, revoke.

use std::ffi::OsStr;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;
use std::time::{Instant, SystemTime};

use anyhow::{Context as _, Result};

use super::Context;
use crate::audit::{self, Event, Process};
use crate::child::{self, Spec};
use crate::cli::RunRequest;
use crate::config::DEFAULT_TOKEN_ENV;
use crate::exit::Exit;
use crate::owner::Owner;
use crate::policy::OnExpiry;
use crate::record::rfc3339;
use crate::scope;
use crate::signals::{Deadline, Forwarder};
use crate::store::{Loaded, Open, Store};
use crate::token::LeaseId;

pub fn run(context: &Context, request: RunRequest) -> Result<Exit> {
    let store = context.store(Open::CreateIfMissing)?;
    let plan = super::plan(context, request.asked, &store)?;
    let ends_at_expiry = plan.on_expiry != OnExpiry::Keep;
    // Watch signals before minting, so that none arriving from here on is lost.
    let mut forwarder = Forwarder::install(ends_at_expiry).context("watching signals")?;
    let owner = Owner::current(program_name(&request.program))?;
    let process = Process {
        pid: std::process::id(),
        command: Some(request.program.to_string_lossy().into_owned()),
        argc: Some(request.args.len()),
    };
    let (token, record) = super::mint(&store, &plan, Some(owner), &process)?;
    let id = token.hash().id();
    let lease = RevokeOnExit::new(&store, id.clone(), &process);

    if let Some(signal) = forwarder.arrived_before_start() {
        lease.revoke()?;
        return Ok(Exit::Signal(signal));
    }

    let token_env = plan.token_env.as_str();
    // An inherited token under the usual names must not ride along beside the new one.
    let remove = [DEFAULT_TOKEN_ENV, context.config.token_env.as_str()]
        .into_iter()
        .filter(|name| *name != token_env)
        .map(str::to_owned)
        .collect();
    let scope_list = scope::join(&record.scope);
    let expires_at = rfc3339::format(record.expires_at);
    let spec = Spec {
        program: &request.program,
        args: &request.args,
        secret: (token_env, &token),
        set: vec![
            ("LEASE_ID", OsStr::new(&record.id)),
            ("LEASE_SCOPE", OsStr::new(&scope_list)),
            ("LEASE_EXPIRES_AT", OsStr::new(&expires_at)),
            ("LEASE_STATE_DIR", store.dir().as_os_str()),
        ],
        remove,
    };
    let mut child = child::spawn(spec, forwarder.ignore_in_child())?;
    let started = Instant::now();
    // The expiry is read again when it comes, since `lease renew` may have moved it.
    let mut current_expiry = || match store.load(&id) {
        Ok(Loaded::Found(record)) => record.expires_at,
        _ => SystemTime::now(),
    };
    let deadline = ends_at_expiry.then(|| Deadline {
        kill_at_once: plan.on_expiry == OnExpiry::Kill,
        grace: plan.grace,
        expires_at: &mut current_expiry,
    });
    let waited = forwarder
        .wait(&mut child, deadline)
        .context("waiting for the command")?;
    let mut exited = Event::new("child_exit", Some(&record)).process(&process);
    exited.exit_code = waited.status.code();
    exited.signal = waited.status.signal();
    exited.duration_ms = Some(audit::millis(started.elapsed()));
    super::log(&store, &exited);
    let outcome = if waited.ended_at_expiry {
        let mut expired = Event::new("expired", Some(&record)).process(&process);
        expired.reason = Some(format!("on-expiry {}", plan.on_expiry.as_str()));
        super::log(&store, &expired);
        let how = if plan.on_expiry == OnExpiry::Kill {
            "SIGKILL"
        } else {
            "SIGTERM"
        };
        eprintln!(
            "lease: lease {id} expired: the command was ended with {how} (--on-expiry {})",
            plan.on_expiry.as_str()
        );
        Exit::Expired
    } else {
        exit_of(waited.status)
    };

    match lease.revoke() {
        Ok(()) => Ok(outcome),
        Err(err) if outcome == Exit::Child(0) => {
            Err(err.context("the command succeeded, but its lease could not be revoked"))
        }
        Err(err) => {
            // The child's failure is the more useful exit status; still say what happened.
            eprintln!("lease: revoking the lease failed: {err:#}");
            Ok(outcome)
        }
    }
}

/// The status lease should end with, given how the child ended.
fn exit_of(status: ExitStatus) -> Exit {
    match (status.code(), status.signal()) {
        (Some(code), _) => Exit::Child(code),
        (None, Some(signal)) => Exit::Signal(signal),
        (None, None) => Exit::RunFailure,
    }
}

/// The program's name as recorded in the lease (argv[0] only: arguments may hold secrets).
fn program_name(program: &std::ffi::OsStr) -> String {
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
        super::revoke::revoke_one(self.store, &self.id, "run ended", self.process)
            .with_context(|| format!("revoking lease {}", self.id))
            .map(|_| ())
    }
}

impl Drop for RevokeOnExit<'_> {
    fn drop(&mut self) {
        if !self.done
            && let Err(err) = self.revoke_now()
        {
            eprintln!("lease: revoking the lease failed: {err:#}");
        }
    }
}
