//! Runs held by a connection (`POST /v1/runs`, `POST /v1/runs/attach`): `lease run` through a
//! broker keeps one connection open for the whole run, upgraded from HTTP to a stream of JSON
//! lines ([`crate::wire::FromRun`], [`crate::wire::FromBroker`]).
//!
//! - The connection closes before the run said it ended (the wrapper was SIGKILLed, its host
//!   went away): the broker ends the lease at once, `owner gone`; nested leases die with it
//!   (their chain says `parent owner gone`).
//! - The connection goes silent: after `owner_timeout` without a line, the same.
//! - The broker stops (SIGTERM, a crash): the connection drops and the lease stays as it is.
//!   Its owner is the broker process, which is gone, so nothing grants it until the run
//!   re-attaches to the next broker with proof that it holds the token; a lease not back within
//!   `owner_timeout` of that broker's start is ended as `owner gone`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

use super::api::{Refusal, bearer, error, mint_for};
use super::{Live, Peer, Shared, log};
use crate::audit::{Event, EventKind, Process};
use crate::owner::Owner;
use crate::record::{Record, State, rfc3339};
use crate::store::Loaded;
use crate::token::{LeaseId, Token};
use crate::wire::{FromBroker, FromRun, MintBody, Minted, Started};

/// The protocol name in `Upgrade:`.
pub const PROTOCOL: &str = "lease-run";
/// The longest line either side sends.
const MAX_LINE: u64 = 64 * 1024;
/// How long a run has to send its first line after the upgrade.
const FIRST_LINE: Duration = Duration::from_secs(10);

/// Answers `POST /v1/runs` (`attach` false) or `/v1/runs/attach` with `101 Switching
/// Protocols`, and holds the run on the upgraded connection in a task of its own.
pub(super) fn upgrade(
    shared: &Arc<Shared>,
    peer: &Peer,
    mut request: Request<Incoming>,
    attach: bool,
) -> Response<Full<Bytes>> {
    let asks_for_us = request
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(PROTOCOL));
    if !asks_for_us {
        return error(
            StatusCode::BAD_REQUEST,
            &format!(
                "a run holds its connection: send Connection: Upgrade and Upgrade: {PROTOCOL}"
            ),
        );
    }
    let Some(guard) = shared.hold_guard() else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the broker is stopping");
    };
    let token = bearer(request.headers());
    let secret = request
        .headers()
        .get("x-lease-hold")
        .and_then(|v| v.to_str().ok())
        .map(|v| Token::presented(v.trim().to_owned()));
    let upgraded = hyper::upgrade::on(&mut request);
    let occupied = request.extensions_mut().remove::<super::Occupied>();
    let shared = Arc::clone(shared);
    let peer = peer.clone();
    tokio::spawn(async move {
        let _guard = guard;
        // The connection's place in its pool, kept while the run holds it.
        let _occupied = occupied;
        match upgraded.await {
            Ok(io) => {
                let proof = Proof { token, secret };
                hold(&shared, &peer, proof, TokioIo::new(io), attach).await;
            }
            Err(err) => log(&format!("a run's upgrade failed: client={peer}: {err}")),
        }
    });
    let mut answer = Response::new(Full::new(Bytes::new()));
    *answer.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    answer
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    answer
        .headers_mut()
        .insert(header::UPGRADE, HeaderValue::from_static(PROTOCOL));
    answer
}

/// What a connection presents: the run's token, and, to re-attach, the wrapper's secret.
struct Proof {
    token: Option<Token>,
    secret: Option<Token>,
}

/// Holds one run: starts (or re-attaches) its lease, then reads its lines until it ends, its
/// connection drops or goes silent, or the broker stops.
async fn hold<IO>(shared: &Arc<Shared>, peer: &Peer, proof: Proof, io: IO, attach: bool)
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let (read, mut write) = tokio::io::split(io);
    let mut lines = BufReader::new(read);
    let live = shared.live();
    let timeout = live.config.owner_timeout;
    let peer_process = peer.process();
    let started = if attach {
        reattach(shared, &live, proof, &peer_process).await
    } else {
        match tokio::time::timeout(FIRST_LINE, read_line(&mut lines)).await {
            Ok(Ok(Some(line))) => start(&live, peer, proof.token, &line, &peer_process).await,
            _ => Err("the run sent no first line".to_owned()),
        }
    };
    // Every event of the run names it as its first line did: its pid, argv[0] and argc.
    let (id, first, process) = match started {
        Ok(started) => started,
        Err(why) => {
            log(&format!("refused a run: {why} client={peer}"));
            let _ = send(&mut write, &FromBroker::Error(why)).await;
            return;
        }
    };
    if send(&mut write, &first).await.is_err() {
        // The run is gone before it heard of its lease: end the lease now.
        owner_gone(shared, &live, &id, &process, peer).await;
        return;
    }
    let serial = shared.attach(&id);
    let mut stopping = shared.stopping.subscribe();
    let mut sessions = live.store.sessions();
    loop {
        let line = tokio::select! {
            _ = stopping.changed() => {
                // The lease stays: its run comes back to the next broker.
                shared.detach(&id, serial);
                return;
            }
            Some(Ok(())) = async { match sessions.as_mut() {
                Some(sessions) => Some(sessions.changed().await),
                None => None,
            } } => {
                // The hold died with this broker's old session in the store: let the run go,
                // so that its wrapper re-attaches (here or elsewhere) under a live session.
                log(&format!("run's hold lost with this broker's session: letting it re-attach: lease={id}"));
                shared.detach(&id, serial);
                return;
            }
            line = tokio::time::timeout(timeout, read_line(&mut lines)) => line,
        };
        match line.map(|read| read.map(|line| line.map(|l| serde_json::from_slice::<FromRun>(&l))))
        {
            Ok(Ok(Some(Ok(FromRun::Ping)))) => {}
            Ok(Ok(Some(Ok(end_of_run @ (FromRun::Exit(_) | FromRun::NoExit))))) => {
                let exited = match end_of_run {
                    FromRun::Exit(exited) => Some(exited),
                    _ => None,
                };
                let ended = end(&live, &id, exited, &process).await;
                if ended {
                    log(&format!("run ended: lease={id} client={peer}"));
                    let _ = send(&mut write, &FromBroker::Ended).await;
                } else {
                    // The store cannot be written now: the end is made again until it can.
                    log(&format!(
                        "could not end a run's lease yet, retrying: lease={id} client={peer}"
                    ));
                    shared.unended(&id, Unended::Ran);
                }
                shared.detach(&id, serial);
                return;
            }
            other => {
                let why = match other {
                    Err(_) => "went silent",
                    Ok(Ok(None)) | Ok(Err(_)) => "closed its connection",
                    Ok(Ok(Some(Err(_)))) => "sent garbage",
                    Ok(Ok(Some(Ok(_)))) => "sent garbage",
                };
                // Only the connection that holds the lease now may end it: a run that came
                // back on a new connection has replaced this one.
                if shared.detach(&id, serial) {
                    // Logged once the lease is ended: whoever reads the line may rely on it.
                    owner_gone(shared, &live, &id, &process, peer).await;
                    log(&format!("run {why}: lease={id} client={peer}"));
                }
                return;
            }
        }
    }
}

/// Mints the run's lease, held by this broker.
async fn start(
    live: &Arc<Live>,
    peer: &Peer,
    token: Option<Token>,
    line: &[u8],
    process: &Process,
) -> Result<(LeaseId, FromBroker, Process), String> {
    let mut body: MintBody = crate::wire::from_object(line)
        .map_err(|err| format!("the first line is not a run: {err}"))?;
    let upstreams = std::mem::take(&mut body.upstreams);
    let command = body.command.clone().unwrap_or_else(|| "?".to_owned());
    // The trail names the run's wrapper as a local run's does: its pid (the socket's word for
    // it, else the wrapper's), argv[0] and the count of arguments.
    let mut process = process.clone();
    process.pid = process.pid.or(body.pid);
    process.command = body.argv0.as_deref().map(crate::audit::path_shown);
    process.argc = body.argc;
    let named = process.clone();
    let asked = body.into_asked().map_err(|err| format!("{err:#}"))?;
    let operator = peer.is_operator(&live.config);
    let live = Arc::clone(live);
    let owner_timeout = live.config.owner_timeout.as_secs();
    let minted = tokio::task::spawn_blocking(move || {
        let unavailable =
            |err: anyhow::Error| Refusal(StatusCode::SERVICE_UNAVAILABLE, format!("{err:#}"));
        let secret = Token::mint().map_err(unavailable)?;
        let mut owner =
            Owner::broker(crate::token::redact(&command).into_owned()).map_err(unavailable)?;
        owner.hold_sha256 = Some(secret.hash().to_hex());
        owner.run_pid = process.pid;
        let (token, record, plan, notes) = mint_for(
            &live,
            (operator, token),
            asked,
            &upstreams,
            &process,
            Some(owner),
        )?;
        Ok::<_, Refusal>(Started {
            lease: Minted {
                id: record.id.to_string(),
                token: token.expose().to_owned(),
                scope: record.scope.iter().map(ToString::to_string).collect(),
                expires_at: rfc3339::format(record.expires_at),
            },
            token_env: plan.token_env.clone(),
            on_expiry: plan.on_expiry.as_str().to_owned(),
            grace: plan.grace.as_secs(),
            owner_timeout,
            issued_at: rfc3339::format(record.issued_at),
            parent: record.parent.as_ref().map(ToString::to_string),
            notes,
            hold: secret.expose().to_owned(),
            upstreams: plan.upstreams.clone(),
        })
    })
    .await
    .map_err(|err| format!("the broker failed: {err}"))?
    .map_err(|Refusal(_, why)| why)?;
    let id = LeaseId::try_from(minted.lease.id.clone()).map_err(|_| "bad lease id".to_owned())?;
    log(&format!(
        "run started: lease={id} scope={} client={peer}",
        minted.lease.scope.join(",")
    ));
    Ok((id, FromBroker::Started(Box::new(minted)), named))
}

/// Takes a run's lease back after a reconnect: the token must be a broker-held run's, still
/// active, held by no live connection (its broker is gone, or it is this one).
async fn reattach(
    shared: &Arc<Shared>,
    live: &Arc<Live>,
    proof: Proof,
    peer: &Process,
) -> Result<(LeaseId, FromBroker, Process), String> {
    let token = proof
        .token
        .ok_or("no token: a run re-attaches with its token")?;
    let secret = proof.secret.ok_or(
        "not allowed: no hold secret: only the run's wrapper may re-attach it (X-Lease-Hold)",
    )?;
    if !token.is_well_formed() {
        return Err(crate::token::MALFORMED.to_owned());
    }
    let live = Arc::clone(live);
    let id = tokio::task::spawn_blocking(move || -> Result<(LeaseId, Owner), String> {
        let record = match live
            .store
            .find(&token.hash())
            .map_err(|e| format!("{e:#}"))?
        {
            Loaded::Found(record) => record,
            Loaded::Missing => return Err("unknown: no lease matches the token".to_owned()),
            Loaded::Corrupt(why) => return Err(format!("corrupt record: {why}")),
        };
        reattachable(&record)?;
        let held_by = record.owner.as_ref().and_then(|o| o.hold_sha256.clone());
        if !held_by.is_some_and(|hash| secret.hash().matches_hex(&hash)) {
            return Err(format!(
                "not allowed: lease {} is re-attached only by its run's wrapper",
                record.id
            ));
        }
        let now = SystemTime::now();
        let mut owner = Owner::broker(
            record
                .owner
                .as_ref()
                .map_or_else(|| "?".to_owned(), |o| o.command.clone()),
        )
        .map_err(|e| format!("{e:#}"))?;
        owner.hold_sha256 = record.owner.as_ref().and_then(|o| o.hold_sha256.clone());
        owner.run_pid = record.owner.as_ref().and_then(|o| o.run_pid);
        let updated = live.store.update(&record.id, |current| {
            let ok = reattachable(current).is_ok() && !current.is_past_expiry(now);
            if ok {
                current.owner = Some(owner.clone());
            }
            crate::store::Change::when(ok)
        });
        match updated {
            Ok(crate::store::Updated::Found(current, true)) => Ok((current.id, owner)),
            Ok(_) => Err("the lease ended meanwhile".to_owned()),
            Err(err) => Err(format!("{err:#}")),
        }
    })
    .await
    .map_err(|err| format!("the broker failed: {err}"))??;
    let (id, owner) = id;
    // The run as its record names it (its first line's argv[0] and argc are not kept).
    let process = Process {
        pid: peer.pid.or(owner.run_pid),
        command: Some(owner.command),
        ..peer.clone()
    };
    if shared.is_attached(&id) {
        log(&format!(
            "run re-attached, replacing its old connection: lease={id}"
        ));
    } else {
        log(&format!("run re-attached: lease={id}"));
    }
    Ok((id, FromBroker::Attached, process))
}

/// Whether a run may take `record` back: a broker-held run's lease, still active, whose broker
/// is this one or gone.
fn reattachable(record: &Record) -> Result<(), String> {
    let Some(owner) = record.owner.as_ref().filter(|o| o.broker) else {
        return Err(format!("lease {} is not a run held by a broker", record.id));
    };
    if record.state != State::Active {
        return Err(format!("lease {} has ended", record.id));
    }
    // On a store shared by brokers, the wrapper's proof is enough to take its run over from
    // another broker: a wrapper comes back only when its connection there is gone.
    if owner.held.is_none()
        && !owner.is_current()
        && owner.state() == crate::owner::OwnerState::Alive
    {
        return Err(format!(
            "lease {} is held by another live broker",
            record.id
        ));
    }
    Ok(())
}

/// Records how the run's command ended, if it has an exit, and revokes its lease; whether that
/// worked.
async fn end(
    live: &Arc<Live>,
    id: &LeaseId,
    exited: Option<crate::wire::Exited>,
    process: &Process,
) -> bool {
    let live = Arc::clone(live);
    let id = id.clone();
    let process = process.clone();
    tokio::task::spawn_blocking(move || {
        if let Some(exited) = exited
            && let Ok(Loaded::Found(record)) = live.store.load(&id)
        {
            let mut event = Event::new(EventKind::ChildExit, Some(&record)).process(&process);
            event.exit_code = exited.code;
            event.signal = exited.signal;
            event.duration_ms = Some(exited.duration_ms);
            live.store.audit().note(&event);
            if let Some(on_expiry) = &exited.ended_at_expiry {
                let mut expired = Event::new(EventKind::Expired, Some(&record)).process(&process);
                expired.reason = Some(format!("on-expiry {on_expiry}"));
                expired.signal = exited.sent_at_expiry;
                live.store.audit().note(&expired);
            }
        }
        crate::lease::revoke(&live.store, &id, "run ended", &process).is_ok()
    })
    .await
    .unwrap_or(false)
}

/// Ends the lease of a run whose connection is gone.
async fn owner_gone(
    shared: &Shared,
    live: &Arc<Live>,
    id: &LeaseId,
    process: &Process,
    peer: &Peer,
) {
    if !end_now(live, id, Unended::Gone, process).await {
        log(&format!(
            "could not end a gone run's lease yet, retrying: lease={id} client={peer}"
        ));
        shared.unended(id, Unended::Gone);
    }
}

/// How a run's lease is to be ended, when its end could not be recorded at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Unended {
    /// Its command ended: revoked, `run ended`.
    Ran,
    /// Its connection is gone: `owner gone`, if it is still so (it may have come back).
    Gone,
}

/// Ends `id` as `how` says; whether the store recorded it (or the lease is no longer there).
async fn end_now(live: &Arc<Live>, id: &LeaseId, how: Unended, process: &Process) -> bool {
    let live = Arc::clone(live);
    let id = id.clone();
    let process = process.clone();
    let done = tokio::task::spawn_blocking(move || match how {
        Unended::Ran => crate::lease::revoke(&live.store, &id, "run ended", &process),
        Unended::Gone => crate::lease::let_go(&live.store, &id, &process),
    });
    matches!(done.await, Ok(Ok(_)))
}

/// Makes again the ends that could not be recorded (the store unreachable, a record's lock held
/// too long), oldest first, until one fails: the store is still down, the rest waits for the
/// next round. A run that came back (attached here again) is no longer to be ended.
pub(super) async fn retry_ends(shared: &Shared) {
    let live = shared.live();
    let process = Process::default();
    for (id, how) in shared.unended_now() {
        if how == Unended::Gone && shared.is_attached(&id) {
            shared.ended(&id);
            continue;
        }
        if !end_now(&live, &id, how, &process).await {
            return;
        }
        shared.ended(&id);
        log(&format!(
            "ended a run's lease once the store could be written: lease={id}"
        ));
    }
}

/// Ends, as `owner gone`, the broker-held runs that have no connection: those whose broker is
/// gone and that did not come back within `owner_timeout` of this broker's start, and those of
/// this broker that were in `suspects` (unattached at the last sweep) and still are not
/// attached (a connection whose end could not be recorded when it closed). Returns how many it
/// ended, and the new suspects.
pub(super) fn sweep(
    live: &Live,
    attached: &std::collections::HashSet<LeaseId>,
    suspects: &std::collections::HashSet<LeaseId>,
) -> (usize, std::collections::HashSet<LeaseId>) {
    let now = SystemTime::now();
    let process = Process::default();
    let mut next = std::collections::HashSet::new();
    let Ok(records) = live.store.records(|_, _| {}) else {
        return (0, next);
    };
    let mut ended = 0;
    for record in records {
        let Some(owner) = record.owner.as_ref().filter(|o| o.broker) else {
            continue;
        };
        if record.state != State::Active
            || record.is_past_expiry(now)
            || attached.contains(&record.id)
        {
            continue;
        }
        // Each end is made only if the record, read again, still says so: a run may come
        // back meanwhile, here or (on a shared store) to another broker.
        let end = if owner.is_current() {
            crate::lease::let_go
        } else if owner.state() == crate::owner::OwnerState::Gone {
            crate::lease::end_orphan
        } else {
            continue;
        };
        // This broker's own runs without a connection, and on a shared store the runs no
        // broker holds (which may be on their way to another): ended at the second sweep
        // that finds them so.
        if (owner.is_current() || owner.held.is_some()) && !suspects.contains(&record.id) {
            next.insert(record.id.clone());
            continue;
        }
        let before = record.state;
        if let Ok(Loaded::Found(now)) = end(&live.store, &record.id, &process)
            && now.state != before
        {
            ended += 1;
        }
    }
    (ended, next)
}

/// Reads one line (without its newline), at most [`MAX_LINE`] bytes; `None` at the end.
async fn read_line<R: AsyncBufReadExt + Unpin>(lines: &mut R) -> std::io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    let read = (&mut *lines)
        .take(MAX_LINE)
        .read_until(b'\n', &mut line)
        .await?;
    if read == 0 {
        return Ok(None);
    }
    if line.pop() != Some(b'\n') {
        return Err(std::io::Error::other("a line too long, or cut short"));
    }
    Ok(Some(line))
}

/// Writes one JSON line.
async fn send<W: AsyncWrite + Unpin>(write: &mut W, message: &FromBroker) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(message).map_err(std::io::Error::other)?;
    line.push(b'\n');
    write.write_all(&line).await?;
    write.flush().await
}
