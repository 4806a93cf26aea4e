//! The broker's HTTP API (docs/api.md): `POST /v1/verify`, forward-auth on `/v1/auth`,
//! `GET /healthz` and `GET /metrics`.
//!
//! Every decision is [`crate::authorize::authorize`], the one `lease verify` makes; this
//! module only reads the request, maps the decision to a status code and writes the trail.
//! Status codes: 200 granted; 401 (with `WWW-Authenticate: Bearer`) when the token is
//! missing, malformed, unknown, expired, revoked or its owner is gone; 403 when the lease is
//! alive but does not grant the action (out of scope, used up, a parent's, no route); 503 when
//! the store cannot be read. A token never appears in a response, a log line or the trail.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};

use super::{Live, Peer, Shared, log};
use crate::audit::{Event, EventKind, Process};
use crate::authorize::{Assessed, Decision, Denial, Reason, Standing};
use crate::commands::remote::Refused;
use crate::policy;
use crate::record::Record;
use crate::scope::Action;
use crate::token::{BODY_LEN, PREFIX, Token};
use crate::wire::{
    ErrorBody, Issued, MintBody, Minted, Planned, Remote, UpstreamAsk, UpstreamEnv, VerifyAnswer,
};

/// The largest request body read: a verify body is a few dozen bytes, the largest mint the
/// limits allow (256 scopes of 128 characters, each with a budget) about 40 KiB
/// (`policy::the_largest_lease_the_limits_allow_is_granted_and_revoked` mints one through a
/// broker).
const MAX_BODY: usize = 64 * 1024;
/// How long a client may take to send a request's body.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

type Answer = Response<Full<Bytes>>;

/// Answers one request, and counts it.
pub(super) async fn handle(
    shared: &Arc<Shared>,
    peer: &Peer,
    request: Request<Incoming>,
) -> Answer {
    let started = Instant::now();
    let answer = dispatch(shared, peer, request).await;
    shared.metrics.answered(started.elapsed());
    answer
}

async fn dispatch(shared: &Arc<Shared>, peer: &Peer, request: Request<Incoming>) -> Answer {
    let path = request.uri().path();
    let forward = path == "/v1/auth" || path.starts_with("/v1/auth/");
    // Two credentials: which one counts would be a guess, and taking neither would make a
    // request meant to be nested a root one. A verify takes neither: its answer to no token,
    // a denial in its own shape.
    if repeated(request.headers(), header::AUTHORIZATION) && path != "/v1/verify" {
        log(&format!(
            "refused: Authorization sent more than once: client={peer}"
        ));
        if forward {
            // A decision, as any forward-auth answer is: counted as one without a token.
            shared.metrics.decided(Reason::NoToken);
            return bare(StatusCode::UNAUTHORIZED);
        }
        let mut answer = error(
            StatusCode::UNAUTHORIZED,
            "Authorization sent more than once: send one",
        );
        challenge(answer.headers_mut());
        return answer;
    }
    if forward {
        return forward_auth(shared, peer, request).await;
    }
    match (request.method(), path) {
        (&Method::GET | &Method::HEAD, "/healthz") => plain(StatusCode::OK, "ok\n"),
        (&Method::GET | &Method::HEAD, "/metrics") => metrics(shared).await,
        (&Method::POST, "/v1/verify") => verify(shared, peer, request).await,
        (&Method::POST, "/v1/leases") => mint(shared, peer, request).await,
        (&Method::POST, "/v1/commands") => command(shared, peer, request).await,
        (&Method::POST, "/v1/upstreams") => upstream_env(shared, peer, request).await,
        (&Method::POST, "/v1/runs") => super::runs::upgrade(shared, peer, request, false),
        (&Method::POST, "/v1/runs/attach") => super::runs::upgrade(shared, peer, request, true),
        (_, "/healthz") => not_allowed("GET, HEAD"),
        (_, "/metrics") => not_allowed("GET, HEAD"),
        (
            _,
            "/v1/verify" | "/v1/leases" | "/v1/commands" | "/v1/runs" | "/v1/runs/attach"
            | "/v1/upstreams",
        ) => not_allowed("POST"),
        _ => error(StatusCode::NOT_FOUND, "no such endpoint: see docs/api.md"),
    }
}

/// `POST /v1/upstreams`: for a live lease's holder, where its command reaches an upstream
/// through this broker: a TCP listener (unmodified clients speak TCP), as the client reached
/// it if it came over TCP.
async fn upstream_env(shared: &Arc<Shared>, peer: &Peer, request: Request<Incoming>) -> Answer {
    let token = bearer(request.headers());
    let host = header_text(request.headers(), "host").map(str::to_owned);
    let body = match read_body(request).await {
        Ok(body) => body,
        Err(answer) => return answer,
    };
    let asked: UpstreamAsk = match crate::wire::from_object(&body) {
        Ok(asked) => asked,
        Err(err) => {
            let why = format!("the body must be {{\"name\": \"UPSTREAM\"}}: {err}");
            return error(StatusCode::BAD_REQUEST, &why);
        }
    };
    let live = shared.live();
    let Some(token) = token else {
        let mut answer = error(
            StatusCode::UNAUTHORIZED,
            "no token: an upstream is for a lease's holder",
        );
        challenge(answer.headers_mut());
        return answer;
    };
    if let Err(refusal) = holder_off_runtime(shared, &live, token).await {
        return refusal.answer();
    }
    match upstream_env_for(shared, &live, peer, host.as_deref(), &asked.name) {
        Ok(env) => json(StatusCode::OK, &env),
        Err(refusal) => refusal.answer(),
    }
}

/// Why `name` is no upstream of this broker, naming those it has.
pub(super) fn no_such_upstream(live: &Live, name: &str) -> String {
    let mut known: Vec<&str> = live.upstreams.keys().map(String::as_str).collect();
    known.sort_unstable();
    if known.is_empty() {
        format!("no upstream '{}': the broker has none", name.escape_debug())
    } else {
        format!(
            "no upstream '{}': the broker has {}",
            name.escape_debug(),
            known.join(", ")
        )
    }
}

/// Where a command reaches upstream `name` through this broker, and the variables that say
/// so (its `child_env`): the upstream's own listener, or a TCP listener of the broker's
/// (unmodified clients speak TCP), as the client reached it (`host`) if it came over TCP.
fn upstream_env_for(
    shared: &Shared,
    live: &Live,
    peer: &Peer,
    host: Option<&str>,
    name: &str,
) -> Result<UpstreamEnv, Refusal> {
    let Some(upstream) = live.upstreams.get(name) else {
        return Err(Refusal(StatusCode::NOT_FOUND, no_such_upstream(live, name)));
    };
    let spec = upstream.spec();
    if let Some(own) = shared.own.get(&spec.name) {
        return Ok(UpstreamEnv {
            base_url: own.clone(),
            base_url_env: spec.child_env.base_url.clone(),
            token_env: spec.child_env.token.clone(),
        });
    }
    let base = match (peer.uid, host) {
        (None, Some(host))
            if !peer.shown.starts_with("unix")
                && host.parse::<hyper::http::uri::Authority>().is_ok() =>
        {
            let scheme = shared
                .bases
                .first()
                .and_then(|b| b.split_once("://"))
                .map_or("http", |(s, _)| s);
            format!("{scheme}://{host}")
        }
        _ => match shared.bases.first() {
            Some(base) => base.clone(),
            None => {
                return Err(Refusal(
                    StatusCode::CONFLICT,
                    format!(
                        "upstream {} is served on the broker's TCP listeners, and it has none: start it with --listen 127.0.0.1:PORT as well",
                        spec.name
                    ),
                ));
            }
        },
    };
    Ok(UpstreamEnv {
        base_url: format!("{base}/u/{}", spec.name),
        base_url_env: spec.child_env.base_url.clone(),
        token_env: spec.child_env.token.clone(),
    })
}

/// The body of `POST /v1/verify`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyBody {
    action: String,
}

async fn verify(shared: &Arc<Shared>, peer: &Peer, request: Request<Incoming>) -> Answer {
    let token = bearer(request.headers());
    let body = match read_body(request).await {
        Ok(body) => body,
        Err(answer) => return answer,
    };
    let action = match crate::wire::from_object::<VerifyBody>(&body) {
        Ok(body) => match Action::parse(&body.action) {
            Ok(action) => action,
            Err(err) => return error(StatusCode::BAD_REQUEST, &format!("action: {err:#}")),
        },
        Err(err) => {
            let why = format!("the body must be {{\"action\": \"verb:thing\"}}: {err}");
            return error(StatusCode::BAD_REQUEST, &why);
        }
    };
    let noted = Trailed::Noted(Noted {
        caller: peer.caller(),
        forwarded_for: None,
    });
    let decision = match decide(shared, token, &action, peer, None, noted).await {
        Ok(decision) => decision,
        Err(answer) => return answer,
    };
    let status = status_of(decision.reason);
    let answer = VerifyAnswer {
        granted: decision.granted,
        reason: decision.reason,
        id: decision.id.as_ref().map(|id| id.to_string()),
        expires_at: decision.expires_at.clone(),
        detail: crate::token::redact(&decision.detail).into_owned(),
    };
    let mut response = json(status, &answer);
    if status == StatusCode::UNAUTHORIZED {
        challenge(response.headers_mut());
    }
    response
}

/// Forward-auth for nginx `auth_request`, Caddy `forward_auth`, Traefik ForwardAuth and
/// Envoy `ext_authz`: only 200, 401 or 403 for a decision (503 if the store cannot be read).
async fn forward_auth(shared: &Arc<Shared>, peer: &Peer, request: Request<Incoming>) -> Answer {
    let headers = request.headers();
    let token = bearer(headers);
    let live = shared.live();
    let (method, uri, agreed) = original(&request);
    let (method, uri) = (method.as_ref(), uri.as_ref());
    // The action the web server names (`Some`), or the route's. One named twice, or that is no
    // action, is `Some(None)`: it allows nothing (the web server's config is wrong, or the
    // client added its own).
    let named: Option<Option<Action>> = if repeated(headers, "x-lease-action") {
        log(&format!(
            "denied: client={peer}: X-Lease-Action sent more than once"
        ));
        Some(None)
    } else {
        header_text(headers, "x-lease-action").map(|text| {
            Action::parse(text)
                .map_err(|err| log(&format!("denied: client={peer}: X-Lease-Action: {err:#}")))
                .ok()
        })
    };
    let found = match named {
        Some(action) => action.map(|action| (action, None)),
        None if agreed => match route_of(shared, &live, auth_routes, method, uri).await {
            Ok(at) => at.map(|at| {
                let route = &live.config.routes[at];
                (route.action.clone(), Some(route.describe()))
            }),
            Err(Refusal(status, why)) => {
                log(&format!("cannot route: client={peer}: {why}"));
                return bare(status);
            }
        },
        None => None,
    };
    let Some((action, route)) = found else {
        // Deny by default, a decision like any other: counted, and in the lease's trail. A
        // missing or dead token is still told what to do (401).
        let mut event = Event::new(EventKind::Denied, None);
        event.method = Some(crate::audit::method_shown(method));
        let path = uri.split(['?', '#']).next().unwrap_or("");
        event.path = Some(crate::audit::path_shown(path));
        event.client = Some(peer.shown.clone());
        event.forwarded_for = forwarded_for(headers);
        return match no_route(shared, &live, token, event).await {
            Ok(()) => empty(StatusCode::FORBIDDEN),
            Err(Refusal(status, _)) => bare(status),
        };
    };
    // The web server is the client; who it asked for is `forwarded_for`, not its parent.
    let noted = Trailed::Noted(Noted {
        caller: crate::audit::Process {
            client: Some(peer.shown.clone()),
            ..crate::audit::Process::default()
        },
        forwarded_for: forwarded_for(request.headers()),
    });
    let decision = match decide(shared, token, &action, peer, route.as_deref(), noted).await {
        Ok(decision) => decision,
        Err(answer) => return answer,
    };
    let mut answer = bare(status_of(decision.reason));
    if decision.granted {
        let headers = answer.headers_mut();
        if let Some(id) = &decision.id
            && let Ok(value) = HeaderValue::from_str(id)
        {
            headers.insert("x-lease-id", value);
        }
        if let Some(scope) = &decision.scope
            && let Ok(value) = HeaderValue::from_str(scope)
        {
            headers.insert("x-lease-scope", value);
        }
    }
    answer
}

/// The method and URI of the request a web server asks about: from nginx's
/// `X-Original-Method`/`X-Original-URI` or Traefik's and Caddy's `X-Forwarded-Method`/
/// `X-Forwarded-Uri`; where neither pair is there, from Envoy's `ext_authz`, which asks with
/// the original method and the original path under `/v1/auth` (its `path_prefix`). The web
/// server sends one pair; the other may be the client's, passed on untouched: where the two
/// disagree (paths compared without their query strings), someone is lying, and no route may
/// match (the `bool` is false; the first method and URI given are still what the trail shows).
fn original(request: &Request<Incoming>) -> (Cow<'_, str>, Cow<'_, str>, bool) {
    let headers = request.headers();
    // Every line of both names: a second line (a client's, which a web server appended to
    // rather than replaced) that says otherwise makes the request match no route.
    let all = |names: [&str; 2]| -> Vec<Cow<'_, str>> {
        names
            .iter()
            .flat_map(|name| headers.get_all(*name))
            .map(|value| ascii_or_encoded(value.as_bytes()))
            .collect()
    };
    let methods = all(["x-original-method", "x-forwarded-method"]);
    let uris = all(["x-original-uri", "x-forwarded-uri"]);
    if methods.is_empty() && uris.is_empty() {
        let path = request.uri().path().strip_prefix("/v1/auth").unwrap_or("");
        return (
            Cow::Borrowed(request.method().as_str()),
            Cow::Borrowed(path),
            !path.is_empty(),
        );
    }
    // A pair half there (a method with no URI from the same server, or the reverse) is a
    // header the client added: no route.
    let half = |method: &str, uri: &str| headers.contains_key(method) != headers.contains_key(uri);
    let whole = !half("x-original-method", "x-original-uri")
        && !half("x-forwarded-method", "x-forwarded-uri");
    let method = agreed(&methods, |method| method);
    let uri = agreed(&uris, |uri| uri.split(['?', '#']).next().unwrap_or(""));
    let agreed = whole && method && uri;
    let method = methods.into_iter().next().unwrap_or_default();
    let uri = uris.into_iter().next().unwrap_or_default();
    (method, uri, agreed)
}

/// Whether every one of `values` is the same as the first by `key`.
fn agreed(values: &[Cow<'_, str>], key: fn(&str) -> &str) -> bool {
    values
        .split_first()
        .is_some_and(|(first, rest)| rest.iter().all(|value| key(value) == key(first)))
}

/// A header's bytes as text: as they are when ASCII; otherwise each byte past ASCII
/// percent-encoded (nginx passes a path's UTF-8 as it came), so that `café` is routed as
/// `caf%C3%A9` is, bytes that are not UTF-8 match no route once decoded, and the trail shows
/// what came.
fn ascii_or_encoded(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) if text.is_ascii() => Cow::Borrowed(text),
        _ => Cow::Owned(
            bytes
                .iter()
                .map(|&b| {
                    if b.is_ascii() {
                        char::from(b).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect(),
        ),
    }
}

/// Why a request was refused: the status and the line the client prints after `lease: `.
#[derive(Debug)]
pub(super) struct Refusal(pub(super) StatusCode, pub(super) String);

impl Refusal {
    /// The answer: `{"error": ...}`, and the challenge with a `401`.
    pub(super) fn answer(self) -> Answer {
        let Refusal(status, why) = self;
        let mut answer = error(status, &why);
        if status == StatusCode::UNAUTHORIZED {
            challenge(answer.headers_mut());
        }
        answer
    }
}

/// `POST /v1/leases`: mints a lease as `lease issue` does. With a bearer token, a lease nested
/// in the token's (any token holder may narrow its own lease); without one, or with
/// `no_parent`, a root lease, which only an operator may mint.
async fn mint(shared: &Arc<Shared>, peer: &Peer, request: Request<Incoming>) -> Answer {
    let token = bearer(request.headers());
    let host = header_text(request.headers(), "host").map(str::to_owned);
    let body = match read_body(request).await {
        Ok(body) => body,
        Err(answer) => return answer,
    };
    let (asked, dry_run, mut upstreams) = match crate::wire::from_object::<MintBody>(&body)
        .map_err(anyhow::Error::from)
        .and_then(|mut body| {
            let (dry_run, upstreams) = (body.dry_run, std::mem::take(&mut body.upstreams));
            Ok((body.into_asked()?, dry_run, upstreams))
        }) {
        Ok(asked) => asked,
        Err(err) => return error(StatusCode::BAD_REQUEST, &format!("{err:#}")),
    };
    let live = shared.live();
    let operator = peer.is_operator(&live.config);
    let process = peer.caller();
    if dry_run {
        let planning = Arc::clone(&live);
        let planned = tokio::task::spawn_blocking(move || {
            plan_for(&planning, operator, token.as_ref(), asked).map(|(plan, _)| plan)
        })
        .await;
        let plan = match planned {
            Ok(Ok(plan)) => plan,
            Ok(Err(refusal)) => return refusal.answer(),
            Err(err) => {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("the broker failed: {err}"),
                );
            }
        };
        for name in &plan.upstreams {
            if !upstreams.contains(name) {
                upstreams.push(name.clone());
            }
        }
        let mut envs = Vec::new();
        for name in &upstreams {
            match upstream_env_for(shared, &live, peer, host.as_deref(), name) {
                Ok(env) => envs.push(env),
                Err(refusal) => return refusal.answer(),
            }
        }
        return json(
            StatusCode::OK,
            &Planned {
                scope: plan.grants.iter().map(|g| g.scope.to_string()).collect(),
                expires_at: crate::record::rfc3339::format(plan.expires_at),
                token_env: plan.token_env,
                upstreams: envs,
            },
        );
    }
    let outcome = tokio::task::spawn_blocking(move || -> Result<Issued, Refusal> {
        let (token, record, _plan, notes) =
            mint_for(&live, (operator, token), asked, &[], &process, None)?;
        Ok(Issued {
            lease: Minted {
                id: record.id.to_string(),
                token: token.expose().to_owned(),
                scope: record.scope.iter().map(ToString::to_string).collect(),
                expires_at: crate::record::rfc3339::format(record.expires_at),
            },
            notes,
        })
    })
    .await;
    match outcome {
        Ok(Ok(issued)) => {
            log(&format!(
                "issued lease={} scope={} client={peer}",
                issued.lease.id,
                issued.lease.scope.join(",")
            ));
            json(StatusCode::OK, &issued)
        }
        Ok(Err(refusal)) => {
            log(&format!("refused to issue: {} client={peer}", refusal.1));
            refusal.answer()
        }
        Err(err) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("the broker failed: {err}"),
        ),
    }
}

/// The lease the broker's policy would mint for this caller: nested in the bearer token's
/// lease, or a root lease for an operator only.
pub(super) fn plan_for(
    live: &Live,
    operator: bool,
    bearer: Option<&Token>,
    asked: policy::Asked,
) -> Result<(policy::Plan, Vec<String>), Refusal> {
    let now = SystemTime::now();
    // An operator's token is handled as `lease issue` handles it locally (an unknown one is no
    // parent). Anyone else's must be a live lease's: it is their only right.
    if let Some(parent) = bearer.filter(|_| !operator) {
        match standing(live, parent, now)? {
            Standing::Live(_) => {}
            // No lease here (401), or a record that cannot be read (503).
            Standing::Dead(denial)
                if matches!(denial.reason, Reason::Unknown | Reason::Malformed)
                    || status_of(denial.reason) == StatusCode::SERVICE_UNAVAILABLE =>
            {
                return Err(refusal_of(&denial));
            }
            // A lease on record that can no longer grant: the policy refuses a child of it
            // below, in the words of a local `lease issue` (403).
            Standing::Dead(_) => {}
        }
    }
    let root_needs_an_operator = || {
        Refusal(
            StatusCode::FORBIDDEN,
            "not allowed: minting a root lease needs an operator (a uid in operators, on the broker's unix socket); a token holder may mint leases nested in its own".to_owned(),
        )
    };
    // `no_parent` asks for a root lease, whatever `allow_orphans` says.
    if asked.no_parent && !operator {
        return Err(root_needs_an_operator());
    }
    // The policy sees the token as a local issue sees the inherited one: `no_parent` with a
    // parent's token is refused unless `allow_orphans`. A token holder is told of the config
    // as "the broker's config": where it lives is none of its concern.
    let config = if operator {
        Cow::Borrowed(&live.config)
    } else {
        Cow::Owned(live.config.told_to_a_holder())
    };
    let (plan, notes) = policy::plan(&config, asked, &live.store, bearer, now)
        .map_err(|err| Refusal(StatusCode::FORBIDDEN, format!("{err:#}")))?;
    if plan.parent.is_none() && !operator {
        return Err(root_needs_an_operator());
    }
    Ok((plan, notes))
}

/// Mints a lease as `lease issue` (or, with an `owner`, a held run) would: nested in the
/// bearer token's lease, or a root lease for an operator only; under the broker's policy.
pub(super) fn mint_for(
    live: &Live,
    (operator, bearer): (bool, Option<Token>),
    asked: policy::Asked,
    upstreams: &[String],
    process: &Process,
    owner: Option<crate::owner::Owner>,
) -> Result<(Token, Record, policy::Plan, Vec<String>), Refusal> {
    let (plan, notes) = plan_for(live, operator, bearer.as_ref(), asked)?;
    // An upstream the run names and this broker lacks stops it before a lease exists; named
    // with those the broker has only now that the caller may mint at all.
    if let Some(name) = upstreams.iter().find(|n| !live.upstreams.contains_key(*n)) {
        let why = format!(
            "cannot reach upstream {name}: {}",
            no_such_upstream(live, name)
        );
        return Err(Refusal(StatusCode::NOT_FOUND, why));
    }
    let (token, record, ()) =
        crate::lease::mint(&live.store, &plan, process, |_| Ok((owner.clone(), ())))
            .map_err(|err| Refusal(StatusCode::SERVICE_UNAVAILABLE, format!("{err:#}")))?;
    Ok((token, record, plan, notes))
}

/// `POST /v1/commands`: runs a subcommand for the client on the broker's store and policy (see
/// [`crate::commands::remote`]) and answers what it printed.
async fn command(shared: &Arc<Shared>, peer: &Peer, request: Request<Incoming>) -> Answer {
    let token = bearer(request.headers());
    let body = match read_body(request).await {
        Ok(body) => body,
        Err(answer) => return answer,
    };
    let asked: Remote = match crate::wire::from_object(&body) {
        Ok(asked) => asked,
        Err(err) => return error(StatusCode::BAD_REQUEST, &format!("not a command: {err}")),
    };
    // As on the command line: a token where an id goes is refused, and never quoted.
    if asked
        .ids()
        .iter()
        .any(|id| crate::token::is_token_shaped(id))
    {
        return error(
            StatusCode::BAD_REQUEST,
            "that is a token, not a lease id: pass the 12-digit id shown by `lease list --all`",
        );
    }
    let live = shared.live();
    let operator = peer.is_operator(&live.config);
    let process = peer.caller();
    let state_dir = shared.request.state_dir.clone();
    let what = asked.name();
    let outcome = tokio::task::spawn_blocking(move || {
        crate::commands::remote::on_broker(
            if operator {
                live.config.clone()
            } else {
                live.config.told_to_a_holder()
            },
            state_dir,
            live.store.backend(),
            asked,
            token,
            operator,
            &process,
        )
    })
    .await;
    match outcome {
        Ok(Ok(crate::commands::remote::Ran {
            mut printed,
            no_credential,
        })) => {
            log(&format!("ran {what}: exit {} client={peer}", printed.exit));
            // What a command prints quotes what it was given (`no lease 'X'`): never a token.
            for text in [&mut printed.stdout, &mut printed.stderr] {
                if let Cow::Owned(redacted) = crate::token::redact(text) {
                    *text = redacted;
                }
            }
            // A token that is no credential is a 401, as for every endpoint; the body is still
            // what the command printed, for the client to print as a local run would.
            if no_credential {
                // With `error` too, as every refusal has it, for clients that read only that.
                #[derive(serde::Serialize)]
                struct Refused<'a> {
                    #[serde(flatten)]
                    printed: &'a crate::wire::Printed,
                    error: &'a str,
                }
                let error = printed.stderr.lines().next().unwrap_or("no valid lease");
                let error = error.strip_prefix("lease: ").unwrap_or(error);
                let body = Refused {
                    printed: &printed,
                    error,
                };
                let mut answer = json(StatusCode::UNAUTHORIZED, &body);
                challenge(answer.headers_mut());
                answer
            } else {
                json(StatusCode::OK, &printed)
            }
        }
        Ok(Err(Refused::NoToken(why))) => {
            let mut answer = error(StatusCode::UNAUTHORIZED, &why);
            challenge(answer.headers_mut());
            answer
        }
        Ok(Err(Refused::Unavailable { told, logged })) => {
            log(&format!("cannot run {what}: client={peer}: {logged}"));
            error(StatusCode::SERVICE_UNAVAILABLE, &told)
        }
        Ok(Err(Refused::NotAllowed(why))) => {
            log(&format!("refused {what}: not allowed: client={peer}"));
            error(StatusCode::FORBIDDEN, &why)
        }
        Err(err) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("the broker failed: {err}"),
        ),
    }
}

/// The live lease at the bottom of `standing` (the token's own record), or the refusal of its
/// denial: `401` naming the reason its lease cannot grant (`403` for a parent's).
fn leaf_of(standing: Standing) -> Result<Record, Refusal> {
    match standing {
        Standing::Live(records) => records
            .into_iter()
            .next()
            .ok_or_else(|| Refusal(StatusCode::SERVICE_UNAVAILABLE, "an empty chain".to_owned())),
        Standing::Dead(denial) => Err(refusal_of(&denial)),
    }
}

/// A denial as an answer: its status, and `REASON: DETAIL`.
fn refusal_of(denial: &Denial) -> Refusal {
    Refusal(
        status_of(denial.reason),
        format!("{}: {}", denial.reason, denial.detail),
    )
}

/// Whether `token`'s lease and its ancestors can grant (a token that is not a lease token is
/// denied as `malformed`, the store unread); `503` when the store cannot be read.
fn standing(live: &Live, token: &Token, now: SystemTime) -> Result<Standing, Refusal> {
    if !token.is_well_formed() {
        return Ok(Standing::Dead(Denial {
            reason: Reason::Malformed,
            detail: crate::token::MALFORMED_DETAIL.to_owned(),
            leaf: None,
        }));
    }
    crate::authorize::standing(&live.store, token, now)
        .map_err(|err| Refusal(StatusCode::SERVICE_UNAVAILABLE, format!("{err:#}")))
}

/// [`standing`], on a thread that may block (the store may wait on a lock or the network, and
/// a chain may be thousands deep), in its turn ([`in_turn`]): a flood of them leaves mints and
/// runs' ends a thread.
async fn standing_off_runtime(
    shared: &Shared,
    live: &Arc<Live>,
    token: Token,
) -> Result<Standing, Refusal> {
    let live = Arc::clone(live);
    let now = SystemTime::now();
    let late = ("no answer", "the store is too slow, or cannot be reached");
    in_turn(&shared.remote_decisions, late, move || {
        standing(&live, &token, now)
    })
    .await?
}

/// What did not happen within REMOTE_DECISION, and why: `late`'s words.
fn late_by((what, why): (&str, &str)) -> String {
    format!("{what} within {} s: {why}", REMOTE_DECISION.as_secs())
}

/// `work` on a thread that may block, taking a turn of `turns` (the decisions' or the long
/// paths'), and its result within REMOTE_DECISION, its wait for a turn included; past it a
/// `503` that says `late` (what did not happen within it, and why).
async fn in_turn<T: Send + 'static>(
    turns: &Arc<tokio::sync::Semaphore>,
    late: (&str, &str),
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Refusal> {
    let deadline = tokio::time::Instant::now() + REMOTE_DECISION;
    let late = || Refusal(StatusCode::SERVICE_UNAVAILABLE, late_by(late));
    let turn = Arc::clone(turns).acquire_owned();
    let Ok(Ok(turn)) = tokio::time::timeout_at(deadline, turn).await else {
        return Err(late());
    };
    let work = tokio::task::spawn_blocking(move || {
        // Held until the work ends, past a 503 given meanwhile.
        let _turn = turn;
        work()
    });
    match tokio::time::timeout_at(deadline, work).await {
        Ok(Ok(done)) => Ok(done),
        Ok(Err(err)) => Err(Refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the broker failed: {err}"),
        )),
        Err(_) => Err(late()),
    }
}

/// The live lease of `token` (its own record), or why there is none (see [`leaf_of`]; `503`
/// when the store cannot be read), from a thread that may block.
pub(super) async fn holder_off_runtime(
    shared: &Shared,
    live: &Arc<Live>,
    token: Token,
) -> Result<Record, Refusal> {
    leaf_of(standing_off_runtime(shared, live, token).await?)
}

/// A request turned away before a lease could decide it (no token, or one that opens
/// nothing): counted under the token's reason and logged, as a verify's denial is, and kept
/// out of the trail (anyone can send those by the thousand). `what` names the request.
pub(super) fn turned_away(shared: &Shared, reason: Reason, what: &str) {
    shared.metrics.decided(reason);
    log(&format!("denied: {what}: {reason}"));
}

/// A request no route allows, from the holder of `token`, as forward-auth and the proxy both
/// deny it: logged, counted, and `event` (what the request was) written to the trail with the
/// lease and the reason `no route`. `Err` for a missing token or one that opens nothing (401,
/// not a word about the routes), counted and logged by the token's reason as a verify is but
/// kept out of the trail (anyone can send those by the thousand), or for a store that cannot be
/// read (503).
pub(super) async fn no_route(
    shared: &Shared,
    live: &Arc<Live>,
    token: Option<Token>,
    mut event: Event,
) -> Result<(), Refusal> {
    let field = |name: &str, value: &Option<String>| {
        value
            .as_deref()
            .map(|v| format!("{} ", super::field(name, v)))
            .unwrap_or_default()
    };
    let what = format!(
        "{}{}{}",
        field("upstream", &event.upstream),
        field("method", &event.method),
        field("path", &event.path),
    );
    let client = field("client", &event.client);
    let client = client.trim_end();
    let refused = |reason: Reason, refusal: Refusal| {
        turned_away(shared, reason, &format!("no route: {what}{client}"));
        Err(refusal)
    };
    let Some(token) = token else {
        let why = "no token: send the lease token as Authorization: Bearer TOKEN".to_owned();
        return refused(Reason::NoToken, Refusal(StatusCode::UNAUTHORIZED, why));
    };
    let leaf = match standing_off_runtime(shared, live, token).await? {
        Standing::Dead(denial) => return refused(denial.reason, refusal_of(&denial)),
        standing @ Standing::Live(_) => leaf_of(standing)?,
    };
    shared.metrics.no_route();
    log(&format!(
        "denied: no route: {what}lease={} {client}",
        leaf.id
    ));
    event.lease = Some(leaf.id.clone());
    event.parent.clone_from(&leaf.parent);
    event.run.clone_from(&leaf.run);
    event.reason = Some("no route".to_owned());
    live.store.audit().note(&event);
    Ok(())
}

/// The longest request path routed on the runtime's thread. Matching is linear in the path,
/// but a path of tens of KiB, read in each way a server may read it and against every route,
/// takes milliseconds: that would hold every other request as long, and anyone may send one
/// (a path is routed before its token is read). A path with `%` or past ASCII counts eight
/// times its length: decoded and normalized, a few bytes may become many (NFKC makes 33 of
/// `%EF%B7%BA`).
const INLINE_PATH: usize = 4096;

/// [`crate::route::position`] of `uri` in the routes `routes` finds in `owner`: a long path
/// ([`INLINE_PATH`]) on a thread that may block, in a turn of the long paths' own
/// ([`in_turn`]): a flood of them waits on itself, not on decisions, mints or a proxied
/// lease's watch.
pub(super) async fn route_of<T: Send + Sync + 'static>(
    shared: &Shared,
    owner: &Arc<T>,
    routes: fn(&T) -> &[crate::route::Route],
    method: &str,
    uri: &str,
) -> Result<Option<usize>, Refusal> {
    // The query string is never routed.
    let path = uri.split('?').next().unwrap_or("");
    let plain = path.bytes().all(|byte| byte.is_ascii() && byte != b'%');
    let weight = if plain { 1 } else { 8 };
    if path.len() * weight <= INLINE_PATH {
        return Ok(crate::route::position(routes(owner), method, uri));
    }
    let (owner, method, uri) = (Arc::clone(owner), method.to_owned(), uri.to_owned());
    let late = ("the path could not be routed", "the broker is busy");
    in_turn(&shared.long_paths, late, move || {
        crate::route::position(routes(&owner), &method, &uri)
    })
    .await
}

/// The routes of `/v1/auth`, for [`route_of`].
fn auth_routes(live: &Live) -> &[crate::route::Route] {
    &live.config.routes
}

/// The longest a decision on a remote store is waited for, its wait for a thread included
/// (each call to etcd has a deadline of 3 s; a decision makes one or a few).
const REMOTE_DECISION: std::time::Duration = std::time::Duration::from_secs(5);

/// Who a decision's trail event names besides the decision, as `lease verify` writes it
/// ([`note`]).
pub(super) struct Noted {
    pub(super) caller: crate::audit::Process,
    pub(super) forwarded_for: Option<String>,
}

/// What becomes of a decision's trail event.
pub(super) enum Trailed {
    /// Written with the decision.
    Noted(Noted),
    /// The caller writes its own event once it has the decision (the proxy's `proxied`); if
    /// the request is gone by then, this writes it instead.
    Abandoned(Box<dyn FnOnce(&Decision) + Send>),
}

/// Makes the decision `lease verify` makes, logs it (with `route`, if any), and sees to its
/// trail event. `Err` is the 503 to answer.
///
/// A decision that charges a use or marks an expiry (a write, on a thread that may block), or
/// that a remote store makes, is made in a task of its own: a client that leaves meanwhile
/// takes neither the decision nor its trail event with it (a use charged is always in the
/// trail).
pub(super) async fn decide(
    shared: &Arc<Shared>,
    token: Option<Token>,
    action: &Action,
    peer: &Peer,
    route: Option<&str>,
    trail: Trailed,
) -> Result<Decision, Answer> {
    let live = shared.live();
    let now = SystemTime::now();
    let (noted, abandoned) = match trail {
        Trailed::Noted(noted) => (Some(noted), None),
        Trailed::Abandoned(write) => (None, Some(write)),
    };
    // Reading the chain decides most requests here, on the runtime's thread (a few small files
    // on a local disk). Only a write, which may wait for a record's lock (a budget to charge,
    // an expiry to mark), goes to a thread that may block; on a remote store, every read too,
    // and a chain deeper than INLINE_ANCESTORS, which could hold the runtime's thread for as
    // long as thousands of reads take.
    let inline = if live.store.is_remote() {
        None
    } else {
        assess_within(&live, token.as_ref(), action, now).transpose()
    };
    let pending = match inline {
        None => None,
        Some(inline) => match inline {
            Ok(Assessed::Pending(pending)) => Some(pending),
            Ok(Assessed::Decided(decision)) => {
                let client = (peer.shown.as_str(), route);
                return decided(shared, &live, Ok(decision), action, client, noted)
                    .map_err(unavailable);
            }
            Err(err) => {
                let client = (peer.shown.as_str(), route);
                return decided(shared, &live, Err(err), action, client, noted)
                    .map_err(unavailable);
            }
        },
    };
    let (sent, received) = tokio::sync::oneshot::channel();
    let shared = Arc::clone(shared);
    let (action, client, route) = (action.clone(), peer.shown.clone(), route.map(str::to_owned));
    tokio::spawn(async move {
        let made = match pending {
            Some(pending) => {
                let (live, action) = (Arc::clone(&live), action.clone());
                off_runtime(move || pending.settle(&live.store, &action, now)).await
            }
            None => whole_off_runtime(&shared, &live, token, &action, now).await,
        };
        let answer = decided(
            &shared,
            &live,
            made,
            &action,
            (&client, route.as_deref()),
            noted,
        );
        if let Err(Ok(decision)) = sent.send(answer)
            && let Some(write) = abandoned
        {
            write(&decision);
        }
    });
    received
        .await
        .unwrap_or_else(|_| Err("the decision failed; nothing is granted".to_owned()))
        .map_err(unavailable)
}

/// The 503 of a decision that could not be made.
fn unavailable(why: String) -> Answer {
    error(StatusCode::SERVICE_UNAVAILABLE, &why)
}

/// A decision on a remote store, where every read may wait on the network, or of a deep chain:
/// the whole of it in one hop, on a thread that may block. While the store does not answer, decisions would pile
/// up behind each other's calls and take every thread that may block (mints and commands
/// too): at most REMOTE_DECISIONS are made at once, and each is answered (503) within
/// REMOTE_DECISION whatever happens, waiting for its turn included.
async fn whole_off_runtime(
    shared: &Arc<Shared>,
    live: &Arc<Live>,
    token: Option<Token>,
    action: &Action,
    now: SystemTime,
) -> anyhow::Result<Decision> {
    // The same moment as the deadline `in_turn` sets, a moment before it (failing closed).
    let cutoff = std::time::Instant::now() + REMOTE_DECISION;
    let late = ("no decision", "the store is too slow, or cannot be reached");
    let (live, action) = (Arc::clone(live), action.clone());
    let made = in_turn(&shared.remote_decisions, late, move || {
        match assess(&live, token.as_ref(), &action, now)? {
            Assessed::Decided(decision) => Ok(decision),
            // Answered 503 already: no use is charged for a grant nobody gets (one charged
            // while the deadline passes is spent, failing closed).
            Assessed::Pending(_) if std::time::Instant::now() >= cutoff => {
                Err(anyhow::anyhow!(late_by(late)))
            }
            Assessed::Pending(pending) => pending.settle(&live.store, &action, now),
        }
    })
    .await;
    made.map_err(|Refusal(_, why)| anyhow::anyhow!(why))?
}

/// A decision made: counted, logged (naming `client` and any route), and written to the trail
/// if `noted` says who asked; or why the store could not be read (the 503's words).
fn decided(
    shared: &Shared,
    live: &Live,
    made: anyhow::Result<Decision>,
    action: &Action,
    (client, route): (&str, Option<&str>),
    noted: Option<Noted>,
) -> Result<Decision, String> {
    let decision = match made {
        Ok(decision) => decision,
        Err(err) => {
            shared.metrics.decided(Reason::Error);
            log(&format!("cannot decide: client={client}: {err:#}"));
            return Err(if live.store.is_remote() {
                format!(
                    "the broker cannot reach its store {}; nothing is granted",
                    live.store.shown()
                )
            } else {
                "the broker cannot read its store; nothing is granted".to_owned()
            });
        }
    };
    shared.metrics.decided(decision.reason);
    let shown_route = route.map(|r| format!(" route=\"{r}\"")).unwrap_or_default();
    let lease = decision
        .id
        .as_ref()
        .map(|id| format!(" lease={id}"))
        .unwrap_or_default();
    log(&format!(
        "{} {}: {}{lease}{shown_route} client={client}",
        if decision.granted {
            "granted"
        } else {
            "denied"
        },
        action.as_str(),
        decision.reason
    ));
    if let Some(Noted {
        caller,
        forwarded_for,
    }) = noted
    {
        note(live, &decision, action, &caller, route, forwarded_for);
    }
    Ok(decision)
}

/// Runs `work` on a thread that may block, and its result (a panic there is an error).
async fn off_runtime<T: Send + 'static>(
    work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|err| Err(anyhow::anyhow!("the decision failed: {err}")))
}

/// The most leases above a token's own that a decision reads on the runtime's thread.
const INLINE_ANCESTORS: usize = 8;

/// [`assess`], unless the token's chain is deeper than [`INLINE_ANCESTORS`] (`None`).
fn assess_within(
    live: &Live,
    token: Option<&Token>,
    action: &Action,
    now: SystemTime,
) -> anyhow::Result<Option<Assessed>> {
    match token.filter(|token| token.is_well_formed()) {
        Some(token) => {
            crate::authorize::assess_within(&live.store, token, action, now, INLINE_ANCESTORS)
        }
        None => assess(live, token, action, now).map(Some),
    }
}

/// What `lease verify` would decide, up to the first write (see [`Assessed`]).
fn assess(
    live: &Live,
    token: Option<&Token>,
    action: &Action,
    now: SystemTime,
) -> anyhow::Result<Assessed> {
    let Some(token) = token else {
        let detail = "no token: send it as Authorization: Bearer TOKEN".to_owned();
        return Ok(Assessed::Decided(Decision::deny(
            Reason::NoToken,
            detail,
            None,
        )));
    };
    if !token.is_well_formed() {
        let detail = format!(
            "not a lease token (expected {PREFIX} and {BODY_LEN} characters with a valid checksum)"
        );
        let denial = Decision::deny(Reason::Malformed, detail, None);
        return Ok(Assessed::Decided(denial));
    }
    crate::authorize::assess(&live.store, token, action, now)
}

/// Writes the decision to the trail, as `lease verify` does, with the route and the client.
/// A decision about no lease (no token, a malformed or unknown one) costs nothing to provoke:
/// it is counted and logged, not written to the trail, which it could flush.
fn note(
    live: &Live,
    decision: &Decision,
    action: &Action,
    caller: &crate::audit::Process,
    route: Option<&str>,
    forwarded_for: Option<String>,
) {
    if decision.id.is_none() {
        return;
    }
    let kind = if decision.granted {
        EventKind::Granted
    } else {
        EventKind::Denied
    };
    let mut event = Event::new(kind, None);
    event.lease.clone_from(&decision.id);
    event.parent.clone_from(&decision.parent);
    event.run.clone_from(&decision.run);
    event.action = Some(action.as_str().to_owned());
    event.reason = Some(decision.reason.to_string());
    event.route = route.map(str::to_owned);
    event.pid = caller.pid;
    event.command.clone_from(&caller.command);
    event.argc = caller.argc;
    event.client.clone_from(&caller.client);
    event.forwarded_for = forwarded_for;
    live.store.audit().note(&event);
}

/// The address the web server in front says a request came from: the last of
/// `X-Forwarded-For` (the one it added itself), or `X-Real-IP`; only an IP address.
fn forwarded_for(headers: &HeaderMap) -> Option<String> {
    let last = header_text(headers, "x-forwarded-for").and_then(|v| v.rsplit(',').next());
    [last, header_text(headers, "x-real-ip")]
        .into_iter()
        .flatten()
        .find_map(|text| text.trim().parse::<std::net::IpAddr>().ok())
        .map(|ip| ip.to_string())
}

/// The status code a decision is answered with.
pub fn status_of(reason: Reason) -> StatusCode {
    match reason {
        Reason::Granted => StatusCode::OK,
        Reason::Unknown
        | Reason::Malformed
        | Reason::Expired
        | Reason::Revoked
        | Reason::OwnerGone
        | Reason::NoToken => StatusCode::UNAUTHORIZED,
        Reason::OutOfScope
        | Reason::UsedUp
        | Reason::ParentRevoked
        | Reason::ParentExpired
        | Reason::ParentOwnerGone
        | Reason::ParentGone => StatusCode::FORBIDDEN,
        // A record that cannot be read is the store failing: fail closed, and say so.
        Reason::CorruptRecord | Reason::Error => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// The token in `Authorization: Bearer TOKEN`, if any.
pub(super) fn bearer(headers: &HeaderMap) -> Option<Token> {
    let value = single(headers, header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim();
    (!token.is_empty()).then(|| Token::presented(token.to_owned()))
}

/// The one value of `name` in `headers`: none when it is missing or there more than once (of
/// two credentials, which one counts would be a guess).
pub(super) fn single<K: header::AsHeaderName>(
    headers: &HeaderMap,
    name: K,
) -> Option<&HeaderValue> {
    let mut all = headers.get_all(name).iter();
    let first = all.next()?;
    all.next().is_none().then_some(first)
}

/// Whether `name` is in `headers` more than once.
fn repeated<K: header::AsHeaderName>(headers: &HeaderMap, name: K) -> bool {
    headers.get_all(name).iter().nth(1).is_some()
}

pub(super) fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name)?.to_str().ok().filter(|v| !v.is_empty())
}

/// The request body, at most [`MAX_BODY`] bytes within [`BODY_TIMEOUT`].
async fn read_body(request: Request<Incoming>) -> Result<Bytes, Answer> {
    let limited = Limited::new(request.into_body(), MAX_BODY);
    match tokio::time::timeout(BODY_TIMEOUT, limited.collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(err)) if err.is::<http_body_util::LengthLimitError>() => Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("the body is larger than {MAX_BODY} bytes"),
        )),
        // A chunked body that is not (a bad chunk size), or one cut short.
        Ok(Err(_)) => Err(error(
            StatusCode::BAD_REQUEST,
            "the body could not be read: it is malformed or was cut short",
        )),
        Err(_) => Err(error(
            StatusCode::REQUEST_TIMEOUT,
            &format!("the body did not arrive within {}s", BODY_TIMEOUT.as_secs()),
        )),
    }
}

async fn metrics(shared: &Arc<Shared>) -> Answer {
    let live = shared.live();
    // One count at a time (the others wait their turn without a thread); a scrape that waits
    // longer than a decision may leaves the gauge out rather than answer late. The turn is
    // held by the count, not by this request: a client that leaves (its request dropped)
    // does not hand the next one a turn while its count still runs.
    let turn = Arc::clone(&shared.metrics_scan).acquire_owned();
    let Ok(Ok(turn)) = tokio::time::timeout(REMOTE_DECISION, turn).await else {
        return metrics_answer(shared, None);
    };
    let active = tokio::task::spawn_blocking(move || {
        let _turn = turn;
        let records = live.store.records(|_, _| {}).ok()?;
        let now = SystemTime::now();
        let standings = crate::authorize::standings(records, now);
        Some(
            standings
                .iter()
                .filter(|(_, reason)| reason.is_none())
                .count(),
        )
    })
    .await
    .ok()
    .flatten();
    metrics_answer(shared, active)
}

/// `/metrics`'s answer, with the gauge of active leases if they could be counted.
fn metrics_answer(shared: &Shared, active: Option<usize>) -> Answer {
    let mut answer = plain(StatusCode::OK, &shared.metrics.render(active));
    answer.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    answer
}

pub(super) fn challenge(headers: &mut HeaderMap) {
    headers.insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"lease\""),
    );
}

/// An empty answer with `status`, and the challenge with a `401` (forward-auth's answers).
fn bare(status: StatusCode) -> Answer {
    let mut answer = empty(status);
    if status == StatusCode::UNAUTHORIZED {
        challenge(answer.headers_mut());
    }
    answer
}

pub(super) fn empty(status: StatusCode) -> Answer {
    let mut answer = Response::new(Full::new(Bytes::new()));
    *answer.status_mut() = status;
    answer
}

fn plain(status: StatusCode, text: &str) -> Answer {
    let mut answer = Response::new(Full::new(Bytes::from(text.to_owned())));
    *answer.status_mut() = status;
    answer.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    answer
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Answer {
    let mut body = serde_json::to_vec(value).unwrap_or_default();
    body.push(b'\n');
    let mut answer = Response::new(Full::new(Bytes::from(body)));
    *answer.status_mut() = status;
    answer.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    answer
}

/// `{"error": "..."}` with `status`; the message is redacted of anything token-shaped.
pub(super) fn error(status: StatusCode, message: &str) -> Answer {
    json(
        status,
        &ErrorBody {
            error: crate::token::redact(message).into_owned(),
        },
    )
}

fn not_allowed(allow: &'static str) -> Answer {
    let mut answer = error(StatusCode::METHOD_NOT_ALLOWED, &format!("use {allow}"));
    answer
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One truth for what a `401` is: the reasons that say the token is no credential.
    #[test]
    fn a_token_that_is_no_credential_is_401_and_no_other_reason_is() {
        for reason in Reason::ALL {
            assert_eq!(
                status_of(reason) == StatusCode::UNAUTHORIZED,
                reason.is_no_credential(),
                "{reason:?}"
            );
        }
    }
}
