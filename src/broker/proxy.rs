//! `/u/NAME/...`: the broker forwards a run's request to upstream NAME with the strong key on
//! it, after checking the run's lease against the upstream's routes (docs/api.md, "Upstreams").
//!
//! The lease token comes where a client sends its credential (`Authorization: Bearer`, the
//! password of `Authorization: Basic`, or the upstream's `token_header`); it never goes
//! upstream. The key is added by the broker; the request's headers cannot choose where or how.
//! Bodies stream both ways; the key's bytes are masked in the response's headers and body,
//! across chunk boundaries ([`Redactor`]). One trail event per request (`proxied`).

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow};
use base64::Engine;
use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use zeroize::Zeroizing;

use super::api::{
    Refusal, Trailed, decide, error, holder_off_runtime, no_route, route_of, status_of, turned_away,
};
use super::{Live, Peer, Shared, log};
use crate::audit::{Event, EventKind};
use crate::authorize::Decision;
use crate::token::Token;
use crate::upstream::{Redactor, Secret, Spec};

/// A streamed answer, or a small one made by the broker.
pub(super) type Reply = Response<Either<Full<Bytes>, Streamed>>;

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// An upstream as the broker holds it: its config, its key, and its pool of connections.
pub(super) struct Upstream {
    spec: Spec,
    secret: Secret,
    client: Client<Connector, Counted>,
}

/// An upstream's routes, for [`route_of`].
fn routes_of(upstream: &Upstream) -> &[crate::route::Route] {
    &upstream.spec.routes
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.spec.name)
            .field("secret", &self.secret)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    /// Loads the key and builds the connection pool for `spec`. Errors name the upstream.
    /// `hidden`: the variables that hold keys, which a `secret_command` does not get.
    pub(super) fn load(spec: &Spec, hidden: &[&str]) -> Result<Upstream> {
        let name = &spec.name;
        let secret = spec
            .load_secret(hidden)
            .with_context(|| format!("upstream {name}"))?;
        let client = client(spec).with_context(|| format!("upstream {name}"))?;
        Ok(Upstream {
            spec: spec.clone(),
            secret,
            client,
        })
    }

    pub(super) fn spec(&self) -> &Spec {
        &self.spec
    }
}

/// The pool of connections to one upstream: TLS with the system's roots and `ca_file`.
fn client(spec: &Spec) -> Result<Client<Connector, Counted>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    if spec.scheme == "https" {
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
    }
    if let Some(path) = &spec.ca_file {
        let pem = crate::config::read_pem(path)
            .map_err(|err| anyhow!("ca_file {}: {err}", path.display()))?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| anyhow!("ca_file {}: {err}", path.display()))?;
        for cert in certs {
            roots
                .add(cert)
                .map_err(|err| anyhow!("ca_file {}: {err}", path.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(spec.timeout));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .build(connector))
}

/// Headers never forwarded either way: hop-by-hop (RFC 9110 7.6.1) or set by the proxy.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    // HTTP/2's settings for an `Upgrade: h2c` (RFC 7540 3.2.1), an offer that is declined.
    "http2-settings",
];

/// Request headers that some servers and frameworks take as the method or the path.
const METHOD_OR_PATH_OVERRIDES: &[&str] = &[
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-url",
    "x-rewrite-url",
];

/// Whether an answer's body is encoded in a way other than chunked framing: any coding but
/// `identity` in any `Content-Encoding` line, or [`transfer_coded`]. The key could not be found
/// in such a body to be masked.
fn encoded(headers: &HeaderMap) -> bool {
    codings(headers, header::CONTENT_ENCODING).any(|c| !c.eq_ignore_ascii_case(b"identity"))
        || transfer_coded(headers)
}

/// Whether a message's body has a transfer coding other than `chunked` in any
/// `Transfer-Encoding` line: hyper undoes only the chunking, so passed on, the body would lose
/// the rest of its coding.
fn transfer_coded(headers: &HeaderMap) -> bool {
    codings(headers, header::TRANSFER_ENCODING).any(|c| !c.eq_ignore_ascii_case(b"chunked"))
}

/// The codings every `name` line lists. An empty one is a coding too (unknown, so not
/// `identity`): where the masking is concerned, what cannot be read is refused.
fn codings(headers: &HeaderMap, name: HeaderName) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(name)
        .into_iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
}

/// Masks the key where an answer's header names hold it (an upstream that echoes a request's
/// headers as its own): `x-KEY: 1` goes out as `x-***: 1`, which is still a header name. Names
/// come lower-cased, so the key is looked for lower-cased: a key with its case lost is still
/// most of the key.
fn mask_header_names(headers: &mut HeaderMap, needles: &[Zeroizing<Vec<u8>>]) {
    let lower = needles
        .iter()
        .map(|needle| Zeroizing::new(needle.to_ascii_lowercase()))
        .collect();
    let redactor = Redactor::new(lower);
    let named: Vec<(HeaderName, Vec<u8>)> = headers
        .keys()
        .filter_map(|name| {
            redactor
                .redact_whole(name.as_str().as_bytes())
                .map(|masked| (name.clone(), masked))
        })
        .collect();
    for (name, masked) in named {
        let values: Vec<HeaderValue> = headers.get_all(&name).iter().cloned().collect();
        headers.remove(&name);
        let masked = HeaderName::from_bytes(&masked).unwrap_or(HeaderName::from_static("x-masked"));
        for value in values {
            headers.append(masked.clone(), value);
        }
    }
}

/// Removes the hop-by-hop headers, and those `Connection` names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Read as bytes: a name past a byte that is not ASCII is a name all the same.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .filter_map(|n| HeaderName::from_bytes(n.trim_ascii()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
}

/// Whether the request asks to switch to a protocol other than HTTP/2 in clear (`h2c`, an offer
/// a server may decline by answering in HTTP/1.1).
fn upgrades_to_more_than_h2c(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::UPGRADE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .any(|protocol| !protocol.trim_ascii().eq_ignore_ascii_case(b"h2c"))
}

/// The lease token where a client sends its credential: `Authorization: Bearer`, the password
/// of `Authorization: Basic`, or else (no `Authorization`, one sent twice, or one that cannot
/// be read as either) the upstream's `token_header`.
fn token_of(headers: &HeaderMap, token_header: Option<&str>) -> Option<Token> {
    if let Some(token) = super::api::bearer(headers).or_else(|| basic_password(headers)) {
        return Some(token);
    }
    let name = token_header?;
    let value = super::api::single(headers, name)?.to_str().ok()?.trim();
    let value = value.strip_prefix("Bearer ").unwrap_or(value);
    Some(Token::presented(value.to_owned()))
}

/// The password of `Authorization: Basic`, if that is what the one `Authorization` is.
fn basic_password(headers: &HeaderMap) -> Option<Token> {
    let value = super::api::single(headers, header::AUTHORIZATION)?;
    let decoded = basic_credentials(value.as_bytes())?;
    let text = std::str::from_utf8(&decoded).ok()?;
    let (_, password) = text.split_once(':')?;
    Some(Token::presented(password.to_owned()))
}

/// The decoded credentials of a `Basic` header value (`user:password`), if that is what it is:
/// read leniently (any blank after the scheme; base64 standard or URL-safe, padded or not), as
/// some servers read it.
fn basic_credentials(value: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let text = std::str::from_utf8(value).ok()?;
    let (scheme, encoded) = text.trim().split_once(|c: char| c.is_ascii_whitespace())?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let encoded = encoded.trim();
    [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(encoded).ok())
        .map(Zeroizing::new)
}

/// Whether a header's value carries a lease token: the request's own as it was sent, or any
/// whole token, plain, percent-encoded or in `Basic` credentials. Such a header never reaches
/// the upstream, whatever its name (a cookie, a custom header, a second credential).
fn carries_a_token(value: &[u8], own: &[u8]) -> bool {
    contains(value, own)
        || crate::token::holds_whole_token(value)
        || basic_credentials(value).is_some_and(|decoded| crate::token::holds_whole_token(&decoded))
}

/// Answers a request under `/u/NAME/`, or, on upstream `only`'s own listener, any request.
pub(super) async fn handle(
    shared: &Arc<Shared>,
    peer: &Peer,
    request: Request<Incoming>,
    only: Option<&str>,
) -> Reply {
    let started = Instant::now();
    let reply = forward(shared, peer, request, only).await;
    shared.metrics.answered(started.elapsed());
    reply
}

async fn forward(
    shared: &Arc<Shared>,
    peer: &Peer,
    request: Request<Incoming>,
    only: Option<&str>,
) -> Reply {
    let started = Instant::now();
    let live = shared.live();
    let (name, path) = match only {
        Some(name) => (name, request.uri().path()),
        None => {
            let rest = request.uri().path().strip_prefix("/u/").unwrap_or_default();
            match rest.find('/') {
                Some(at) => (&rest[..at], &rest[at..]),
                None => (rest, "/"),
            }
        }
    };
    let Some(upstream) = live.upstreams.get(name) else {
        return small(error(
            StatusCode::NOT_FOUND,
            "no such upstream: see docs/api.md",
        ));
    };
    let upstream = Arc::clone(upstream);
    let spec = &upstream.spec;
    let method = request.method().clone();
    let query = request.uri().query().map(str::to_owned);
    let path = path.to_owned();
    let token = token_of(request.headers(), spec.token_header.as_deref());
    let mut event = Event::new(EventKind::Proxied, None);
    event.upstream = Some(spec.name.clone());
    event.method = Some(crate::audit::method_shown(method.as_str()));
    // A token put in the path by mistake stays out of the trail, as out of the log.
    event.path = Some(crate::audit::path_shown(&path));
    event.client = Some(peer.shown.clone());
    // A tunnel or a loop-back of the request is never proxied, whatever the routes say. An
    // offer of HTTP/2 in clear (`Upgrade: h2c`, as `curl --http2` sends) is only an offer: it
    // is declined by going on in HTTP/1.1 (the header, hop-by-hop, goes no further).
    if method == hyper::Method::CONNECT
        || method == hyper::Method::TRACE
        || upgrades_to_more_than_h2c(request.headers())
    {
        let mut answer = error(
            StatusCode::METHOD_NOT_ALLOWED,
            "CONNECT, TRACE and protocol upgrades are not proxied",
        );
        answer.headers_mut().insert(
            header::ALLOW,
            HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
        );
        return small(answer);
    }
    // A body with a transfer coding hyper does not undo would go out stripped of it.
    if transfer_coded(request.headers()) {
        return small(error(
            StatusCode::NOT_IMPLEMENTED,
            "a Transfer-Encoding other than chunked is not proxied: send the body chunked or with a Content-Length",
        ));
    }
    // A token in the URL would reach the upstream (and its logs): it goes in a header.
    if crate::token::holds_whole_token(path.as_bytes())
        || query
            .as_deref()
            .is_some_and(|q| crate::token::holds_whole_token(q.as_bytes()))
    {
        log(&format!(
            "refused: a lease token in the URL: upstream={} client={peer}",
            spec.name
        ));
        return small(error(
            StatusCode::BAD_REQUEST,
            "the URL holds a lease token, which would reach the upstream and its logs: send it as Authorization: Bearer TOKEN or as the password of Basic auth, never in the URL",
        ));
    }
    let Some(token) = token else {
        let header = spec
            .token_header
            .as_ref()
            .map(|name| format!(", or in {name}"))
            .unwrap_or_default();
        let why = format!(
            "no token: send the lease token as Authorization: Bearer TOKEN, or as the password of Basic auth{header}"
        );
        let what = format!(
            "upstream={} {} {} client={peer}",
            spec.name,
            super::field("method", event.method.as_deref().unwrap_or("")),
            super::field("path", event.path.as_deref().unwrap_or(""))
        );
        turned_away(shared, crate::authorize::Reason::NoToken, &what);
        return small(refused(StatusCode::UNAUTHORIZED, &why));
    };
    let at = match route_of(shared, &upstream, routes_of, method.as_str(), &path).await {
        Ok(at) => at,
        Err(Refusal(status, why)) => {
            log(&format!(
                "cannot route: upstream={} client={peer}: {why}",
                spec.name
            ));
            return small(error(status, &why));
        }
    };
    let Some(route) = at.map(|at| &spec.routes[at]) else {
        // No route: deny by default, and never contact the upstream. A token that opens
        // nothing is told so first (401), as on a route; a live lease's request that no route
        // allows is a 403, and goes to its trail.
        if let Err(Refusal(status, why)) = no_route(shared, &live, Some(token), event).await {
            return small(refused(status, &why));
        }
        return small(error(
            StatusCode::FORBIDDEN,
            &format!("no route of upstream {} allows {method} {path}", spec.name),
        ));
    };
    let action = route.action.clone();
    let described = format!("{} {}", spec.name, route.describe());
    event.action = Some(action.as_str().to_owned());
    event.route = Some(route.describe());
    // A client gone before its decision was made: the request's event, upstream not reached.
    let abandoned = {
        let (live, mut event) = (Arc::clone(&live), event.clone());
        Trailed::Abandoned(Box::new(move |decision: &Decision| {
            decided_event(&mut event, decision);
            if decision.id.is_some() {
                live.store.audit().note(&event);
            }
        }))
    };
    let token_sent = Some(token.clone());
    let decision = match decide(
        shared,
        token_sent,
        &action,
        peer,
        Some(&described),
        abandoned,
    )
    .await
    {
        Ok(decision) => decision,
        Err(answer) => return small(answer),
    };
    decided_event(&mut event, &decision);
    if !decision.granted {
        if decision.id.is_some() {
            live.store.audit().note(&event);
        }
        let why = format!("{}: {}", decision.reason, decision.detail);
        return small(refused(status_of(decision.reason), &why));
    }
    let (parts, body) = request.into_parts();
    let up = Arc::new(AtomicU64::new(0));
    // From here on a use may have been charged and the upstream may be reached: the request's
    // event is written whatever happens next, the client leaving included ([`Trail`]'s drop).
    let trail = Trail {
        live: Arc::clone(&live),
        event,
        started,
        up: Arc::clone(&up),
        written: false,
    };
    let progress = Progress::new();
    let cut = Cut::watch(shared, &live, &token);
    let outgoing = match outgoing(&upstream, parts, &path, query.as_deref(), &token) {
        Ok(builder) => builder.body(Counted {
            inner: body,
            count: Arc::clone(&up),
            progress: progress.clone(),
            cut: cut.stream(),
        }),
        Err(err) => return small(error(StatusCode::BAD_REQUEST, &format!("{err:#}"))),
    };
    let outgoing = match outgoing {
        Ok(outgoing) => outgoing,
        Err(err) => return small(error(StatusCode::BAD_REQUEST, &format!("{err}"))),
    };
    let answered = progress
        .bound(spec.timeout, upstream.client.request(outgoing))
        .await;
    let response = match answered {
        Ok(Ok(response)) => response,
        Ok(Err(err)) => {
            let why = format!("the upstream {} failed: {}", spec.name, cause(&err));
            log(&format!("{why} client={peer}"));
            trail.write(None, 0);
            return small(error(StatusCode::BAD_GATEWAY, &why));
        }
        Err(_) => {
            let why = format!(
                "the upstream {} did not answer within {} s",
                spec.name,
                spec.timeout.as_secs()
            );
            log(&format!("{why} client={peer}"));
            trail.write(None, 0);
            return small(error(StatusCode::GATEWAY_TIMEOUT, &why));
        }
    };
    let (mut parts, body) = response.into_parts();
    if encoded(&parts.headers) {
        // Asked for `identity`, it compressed anyway: the key could not be masked in it.
        let why = format!(
            "the upstream {} answered with a compressed body, which the broker cannot check for its key",
            spec.name
        );
        log(&format!("{why} client={peer}"));
        trail.write(Some(parts.status.as_u16()), 0);
        return small(error(StatusCode::BAD_GATEWAY, &why));
    }
    // A reason phrase of the upstream's own would go out as it is, unmasked.
    parts.extensions.remove::<hyper::ext::ReasonPhrase>();
    strip_hop_by_hop(&mut parts.headers);
    // A redirect within the upstream stays within the broker: its client would otherwise go
    // to the upstream directly, without the key.
    if let Some(location) = parts.headers.get(header::LOCATION)
        && let Some(moved) = within_broker(spec, location.as_bytes(), only.is_some())
        && let Ok(value) = HeaderValue::from_str(&moved)
    {
        parts.headers.insert(header::LOCATION, value);
    }
    let redactor = masked_headers(spec, &upstream.secret, &mut parts.headers, only.is_some());
    // Masking may change the body's length: a body goes out chunked. A HEAD, 204 or 304
    // answer has no body, and its length describes another one.
    let bodiless = method == hyper::Method::HEAD
        || parts.status == StatusCode::NO_CONTENT
        || parts.status == StatusCode::NOT_MODIFIED;
    if !bodiless {
        parts.headers.remove(header::CONTENT_LENGTH);
    }
    let streamed = Streamed {
        inner: body,
        redactor,
        idle_for: spec.idle_timeout,
        idle: Box::pin(tokio::time::sleep(spec.idle_timeout)),
        done: false,
        down: 0,
        status: parts.status.as_u16(),
        trail: Some(trail),
        pending: None,
        cut: cut.stream(),
    };
    Response::from_parts(parts, Either::Right(streamed))
}

/// A refusal as the proxy answers it: `{"error": ...}`; a `401` asks for Bearer and for Basic
/// (git, and other clients on libcurl, send a Basic password only when asked for one).
fn refused(status: StatusCode, why: &str) -> Response<Full<Bytes>> {
    let mut answer = Refusal(status, why.to_owned()).answer();
    if status == StatusCode::UNAUTHORIZED {
        answer.headers_mut().append(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"lease\""),
        );
    }
    answer
}

/// The request to send upstream: the client's, with the upstream's URL, without the lease
/// token or any hop-by-hop header, and with the key added by the broker.
fn outgoing(
    upstream: &Upstream,
    parts: hyper::http::request::Parts,
    path: &str,
    query: Option<&str>,
    token: &Token,
) -> Result<hyper::http::request::Builder> {
    let spec = &upstream.spec;
    let target = match query {
        Some(query) => format!("{}{path}?{query}", spec.base_path),
        None => format!("{}{path}", spec.base_path),
    };
    let uri = Uri::builder()
        .scheme(spec.scheme.as_str())
        .authority(spec.authority.as_str())
        .path_and_query(target)
        .build()
        .context("the request's path")?;
    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers);
    for name in [header::HOST, header::AUTHORIZATION, header::EXPECT] {
        headers.remove(name);
    }
    // Headers some servers take as another method or path than the one the route allowed.
    for name in METHOD_OR_PATH_OVERRIDES {
        headers.remove(*name);
    }
    // A compressed answer would hide the key from the masking: ask for none.
    headers.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    if let Some(name) = &spec.token_header {
        headers.remove(name.as_str());
    }
    // No token goes upstream, whatever header a client put it in.
    let secret = token.expose().as_bytes();
    let carrying: Vec<HeaderName> = headers
        .iter()
        .filter(|(_, v)| carries_a_token(v.as_bytes(), secret))
        .map(|(n, _)| n.clone())
        .collect();
    for name in carrying {
        headers.remove(name);
    }
    let (name, value) = spec.inject.header(&upstream.secret);
    let mut value = HeaderValue::from_bytes(&value).context("the key does not fit in a header")?;
    value.set_sensitive(true);
    headers.insert(
        HeaderName::from_bytes(name.as_bytes()).context("the key's header")?,
        value,
    );
    let mut builder = Request::builder().method(parts.method).uri(uri);
    if let Some(slot) = builder.headers_mut() {
        *slot = headers;
    }
    Ok(builder)
}

/// A `Location` under the upstream's URL (absolute, scheme-relative, or a path under its base
/// path), as the same place under the broker's `/u/NAME` (or at the root of the upstream's own
/// listener, `own`): a path the client resolves against the broker. `None` for anywhere else,
/// which goes out as it is.
fn within_broker(spec: &Spec, location: &[u8], own: bool) -> Option<String> {
    let location = std::str::from_utf8(location).ok()?;
    // `//host/path` is on the scheme of the request the upstream answered: the broker's to it.
    let with_scheme;
    let location = if location.starts_with("//") {
        with_scheme = format!("{}:{location}", spec.scheme);
        with_scheme.as_str()
    } else {
        location
    };
    let absolute = format!("{}://{}", spec.scheme, spec.authority);
    let path = match location.get(..absolute.len()) {
        // The upstream's own origin, and not a longer host, a port or a user that begins the
        // same (`https://api.example.com.evil.net`, `:8443`, `@other`).
        Some(start)
            if start.eq_ignore_ascii_case(&absolute)
                && location[absolute.len()..].starts_with(['/', '?', '#']) =>
        {
            &location[absolute.len()..]
        }
        Some(start)
            if start.eq_ignore_ascii_case(&absolute) && location.len() == absolute.len() =>
        {
            ""
        }
        _ if location.starts_with('/') && !location.starts_with("//") => location,
        _ => return None,
    };
    // A client resolves `%2e` as `.` and `\\` as `/` (WHATWG URLs): such a path is left as it is
    // rather than resolved here otherwise than the client will.
    if path.contains('\\') || path.to_ascii_lowercase().contains("%2e") {
        return None;
    }
    // Where the client will go: `/v2/../admin` is `/admin`, not under `/v2`.
    let end = path.find(['?', '#']).unwrap_or(path.len());
    let path = match &path[..end] {
        "" => path.to_owned(),
        resolved => format!("{}{}", without_dot_segments(resolved), &path[end..]),
    };
    let rest = path.strip_prefix(spec.base_path.as_str())?;
    if !(rest.is_empty() || rest.starts_with(['/', '?', '#'])) {
        return None;
    }
    if own {
        return Some(if rest.starts_with('/') {
            rest.to_owned()
        } else {
            format!("/{rest}")
        });
    }
    Some(format!("/u/{}{rest}", spec.name))
}

/// The answer's headers with the key masked in their names and values, then its cookies kept
/// to the upstream ([`scope_cookies`]); the mask for the body.
fn masked_headers(spec: &Spec, secret: &Secret, headers: &mut HeaderMap, own: bool) -> Redactor {
    let needles = spec.inject.needles(secret);
    mask_header_names(headers, &needles);
    let redactor = Redactor::new(needles);
    for value in headers.values_mut() {
        if let Some(masked) = redactor.redact_whole(value.as_bytes()) {
            *value = HeaderValue::from_bytes(&masked).unwrap_or(HeaderValue::from_static("***"));
        }
    }
    // After the mask: scoping rewrites a cookie's attributes (`;` and the blanks around it),
    // which would change the bytes of a key that holds a `;` before the mask looked for them.
    scope_cookies(spec, headers, own);
    redactor
}

/// Keeps each cookie an upstream sets to that upstream: every upstream shares the broker's
/// origin, so a cookie left at `Path=/` would go with the run's requests to every other
/// upstream. Its `Path` becomes the same place under `/u/NAME` (a path outside the
/// upstream's base path, or none, becomes `/u/NAME` itself), and its `Domain` goes (the
/// cookie is then the broker's host's alone). On the upstream's own listener, where every
/// path is the upstream's, the path loses the base path only. A `Set-Cookie` that is not text
/// is dropped.
fn scope_cookies(spec: &Spec, headers: &mut HeaderMap, own: bool) {
    let set: Vec<HeaderValue> = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .cloned()
        .collect();
    if set.is_empty() {
        return;
    }
    headers.remove(header::SET_COOKIE);
    for value in set {
        let Some(scoped) = value
            .to_str()
            .ok()
            .map(|cookie| scoped_cookie(spec, cookie, own))
            .and_then(|cookie| HeaderValue::from_str(&cookie).ok())
        else {
            continue;
        };
        headers.append(header::SET_COOKIE, scoped);
    }
}

/// One `Set-Cookie` value scoped as [`scope_cookies`] says.
fn scoped_cookie(spec: &Spec, cookie: &str, own: bool) -> String {
    let mut parts = cookie.split(';');
    let mut kept = vec![parts.next().unwrap_or_default().trim().to_owned()];
    // RFC 6265 5.3: the last `Path` counts, and one that is not absolute is no path.
    let mut path = None;
    for attribute in parts {
        let attribute = attribute.trim();
        let (name, value) = attribute.split_once('=').unwrap_or((attribute, ""));
        match name.trim().to_ascii_lowercase().as_str() {
            "domain" => {}
            "path" => path = Some(value.trim().to_owned()).filter(|p| p.starts_with('/')),
            _ if attribute.is_empty() => {}
            _ => kept.push(attribute.to_owned()),
        }
    }
    let rest = path.as_deref().and_then(|path| {
        let rest = path.strip_prefix(spec.base_path.as_str())?;
        (rest.is_empty() || rest.starts_with('/')).then_some(rest)
    });
    let scoped = match (own, rest) {
        (false, rest) => Some(format!("/u/{}{}", spec.name, rest.unwrap_or_default())),
        (true, Some("")) => Some("/".to_owned()),
        (true, Some(rest)) => Some(rest.to_owned()),
        // Outside the base path, no path of the listener is the upstream's any less.
        (true, None) if path.is_some() => Some("/".to_owned()),
        // No path: the client's default, the request's own directory, is already the same.
        (true, None) => None,
    };
    if let Some(scoped) = scoped {
        kept.push(format!("Path={scoped}"));
    }
    kept.join("; ")
}

/// An absolute path with its `.` and `..` segments resolved, as a client resolves a URL's
/// (RFC 3986, 5.2.4).
fn without_dot_segments(path: &str) -> String {
    let mut kept: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    for (at, segment) in segments.iter().enumerate() {
        let last = at + 1 == segments.len();
        match *segment {
            "." | ".." => {
                if *segment == ".." {
                    kept.pop();
                }
                // A dot segment at the end leaves the path ending in a slash.
                if last {
                    kept.push("");
                }
            }
            other => kept.push(other),
        }
    }
    format!("/{}", kept.join("/"))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && memchr::memmem::find(haystack, needle).is_some()
}

/// The innermost cause of a client error, for a 502's message (names no header or body).
fn cause(err: &(dyn StdError + 'static)) -> String {
    let mut source: &(dyn StdError + 'static) = err;
    while let Some(next) = source.source() {
        source = next;
    }
    crate::token::redact(&source.to_string()).into_owned()
}

/// The event's lease fields from the decision.
fn named(event: &mut Event, decision: &Decision) {
    event.lease.clone_from(&decision.id);
    event.parent.clone_from(&decision.parent);
    event.run.clone_from(&decision.run);
}

/// A proxied request's event once its decision is made: its reason and its lease.
fn decided_event(event: &mut Event, decision: &Decision) {
    event.reason = Some(decision.reason.to_string());
    named(event, decision);
}

fn small(answer: Response<Full<Bytes>>) -> Reply {
    answer.map(Either::Left)
}

/// How often the lease of a request whose bodies still stream is checked again.
const RECHECK: Duration = Duration::from_secs(1);

/// Ends a proxied request's bodies, both ways, when its lease stops granting while they
/// stream (its run ended, it was revoked, it expired): a watcher checks the lease every
/// [`RECHECK`] for as long as a body is open, one watcher for all the requests of a lease. A
/// lease that is merely used up keeps the request that used it; a store that cannot be read
/// cuts nothing.
pub(super) struct Cut {
    ended: AtomicBool,
    woken: Arc<tokio::sync::Notify>,
}

impl Cut {
    /// The cut for a request made with `token`: the one its lease's other requests in flight
    /// share, or a new one and its watcher.
    fn watch(shared: &Arc<Shared>, live: &Arc<Live>, token: &Token) -> Arc<Cut> {
        let key = token.hash().to_hex();
        let mut cuts = super::lock(&shared.cuts);
        if let Some(cut) = cuts.get(&key).and_then(std::sync::Weak::upgrade) {
            return cut;
        }
        let cut = Arc::new(Cut {
            ended: AtomicBool::new(false),
            woken: Arc::new(tokio::sync::Notify::new()),
        });
        let watched = Arc::downgrade(&cut);
        cuts.insert(key.clone(), watched.clone());
        drop(cuts);
        let (shared, live, token) = (Arc::clone(shared), Arc::clone(live), token.clone());
        tokio::spawn(async move {
            // Gone from the map when the watcher ends, unless a newer cut took its place.
            let forget = || {
                let mut cuts = super::lock(&shared.cuts);
                if cuts.get(&key).is_some_and(|cut| cut.ptr_eq(&watched)) {
                    cuts.remove(&key);
                }
            };
            loop {
                tokio::time::sleep(RECHECK).await;
                if watched.strong_count() == 0 {
                    forget();
                    return;
                }
                let Err(Refusal(status, why)) =
                    holder_off_runtime(&shared, &live, token.clone()).await
                else {
                    continue;
                };
                if status == StatusCode::SERVICE_UNAVAILABLE {
                    continue;
                }
                if let Some(cut) = watched.upgrade() {
                    cut.ended.store(true, Ordering::Release);
                    cut.woken.notify_waiters();
                    log(&format!(
                        "cut a proxied request in flight: {}",
                        crate::token::redact(&why)
                    ));
                }
                forget();
                return;
            }
        });
        cut
    }

    /// One body's view of the cut.
    fn stream(self: &Arc<Cut>) -> CutSeen {
        CutSeen {
            cut: Arc::clone(self),
            woken: Box::pin(Arc::clone(&self.woken).notified_owned()),
        }
    }
}

/// A body's view of its [`Cut`]: asked at each poll, which also asks to be woken by it.
struct CutSeen {
    cut: Arc<Cut>,
    woken: Pin<Box<tokio::sync::futures::OwnedNotified>>,
}

impl CutSeen {
    /// Whether the body is cut; if not, `cx` is woken when it is.
    fn poll_cut(&mut self, cx: &mut Context<'_>) -> bool {
        // Registered first, then the flag read: a cut between the two still wakes `cx`.
        self.woken.as_mut().poll(cx).is_ready() || self.cut.ended.load(Ordering::Acquire)
    }
}

impl std::fmt::Debug for CutSeen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ended = self.cut.ended.load(Ordering::Relaxed);
        f.debug_struct("CutSeen").field("ended", &ended).finish()
    }
}

/// The error a cut body ends with.
fn cut_short() -> Box<dyn StdError + Send + Sync> {
    "the lease ended while the request was in flight".into()
}

/// When a request last moved: its start, or the last part of its body sent upstream.
#[derive(Debug, Clone)]
struct Progress {
    start: tokio::time::Instant,
    /// Milliseconds from `start` to the last move.
    last: Arc<AtomicU64>,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            start: tokio::time::Instant::now(),
            last: Arc::new(AtomicU64::new(0)),
        }
    }

    fn moved(&self) {
        let millis = crate::audit::millis(self.start.elapsed());
        self.last.fetch_max(millis, Ordering::Relaxed);
    }

    fn last(&self) -> tokio::time::Instant {
        self.start + Duration::from_millis(self.last.load(Ordering::Relaxed))
    }

    /// `answer`, unless `limit` passes with no move: connecting, the TLS handshake, each pause
    /// of the upload and the wait for the answer's head after it are each bounded by `limit`,
    /// while an upload that keeps moving may take as long as it needs. `Err` when it ran out.
    async fn bound<F: Future>(&self, limit: Duration, answer: F) -> Result<F::Output, ()> {
        tokio::pin!(answer);
        loop {
            let deadline = self.last() + limit;
            tokio::select! {
                // The answer first: after a pause of the thread longer than `limit`, an answer
                // that came meanwhile is taken, not timed out.
                biased;
                answered = &mut answer => return Ok(answered),
                () = tokio::time::sleep_until(deadline) => {
                    if self.last() + limit <= tokio::time::Instant::now() {
                        return Err(());
                    }
                }
            }
        }
    }
}

/// A request body on its way upstream, counted.
#[derive(Debug)]
pub(super) struct Counted {
    inner: Incoming,
    count: Arc<AtomicU64>,
    progress: Progress,
    cut: CutSeen,
}

impl Body for Counted {
    type Data = Bytes;
    type Error = Box<dyn StdError + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.cut.poll_cut(cx) {
            return Poll::Ready(Some(Err(cut_short())));
        }
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            self.progress.moved();
            if let Some(data) = frame.data_ref() {
                self.count.fetch_add(data.len() as u64, Ordering::Relaxed);
            }
        }
        polled.map(|frame| frame.map(|result| result.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The trail event of one forwarded request, written once: when its response ends, or when it
/// is dropped (the client gone before the upstream answered: no `status`).
struct Trail {
    live: Arc<Live>,
    event: Event,
    started: Instant,
    up: Arc<AtomicU64>,
    written: bool,
}

impl Trail {
    fn write(mut self, status: Option<u16>, down: u64) {
        self.note(status, down);
    }

    fn note(&mut self, status: Option<u16>, down: u64) {
        if std::mem::replace(&mut self.written, true) {
            return;
        }
        self.event.status = status;
        self.event.bytes_up = Some(self.up.load(Ordering::Relaxed));
        self.event.bytes_down = Some(down);
        self.event.duration_ms = Some(crate::audit::millis(self.started.elapsed()));
        self.live.store.audit().note(&self.event);
    }
}

impl Drop for Trail {
    fn drop(&mut self) {
        self.note(None, 0);
    }
}

/// A response body on its way to the client: the key masked, a silence longer than the
/// upstream's `idle_timeout` ended, and the trail written at its end.
pub(super) struct Streamed {
    inner: Incoming,
    redactor: Redactor,
    idle_for: Duration,
    idle: Pin<Box<tokio::time::Sleep>>,
    done: bool,
    down: u64,
    status: u16,
    trail: Option<Trail>,
    /// Data that goes out next, after what went out last.
    pending: Option<Bytes>,
    cut: CutSeen,
}

impl std::fmt::Debug for Streamed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streamed")
            .field("down", &self.down)
            .finish_non_exhaustive()
    }
}

impl Streamed {
    fn end(&mut self) {
        self.done = true;
        if let Some(trail) = self.trail.take() {
            trail.write(Some(self.status), self.down);
        }
    }
}

impl Drop for Streamed {
    fn drop(&mut self) {
        self.end();
    }
}

impl Body for Streamed {
    type Data = Bytes;
    type Error = Box<dyn StdError + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            if this.cut.poll_cut(cx) {
                this.end();
                return Poll::Ready(Some(Err(cut_short())));
            }
            if let Some(data) = this.pending.take() {
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let deadline = tokio::time::Instant::now() + this.idle_for;
                    this.idle.as_mut().reset(deadline);
                    // Trailers are not passed on (`Trailer` is hop-by-hop here): only data.
                    if let Ok(data) = frame.into_data() {
                        this.down += data.len() as u64;
                        let (first, then) = this.redactor.push_bytes(data);
                        match (first.is_empty(), then.is_empty()) {
                            (true, true) => {}
                            (true, false) => return Poll::Ready(Some(Ok(Frame::data(then)))),
                            (false, empty) => {
                                if !empty {
                                    this.pending = Some(then);
                                }
                                return Poll::Ready(Some(Ok(Frame::data(first))));
                            }
                        }
                    }
                }
                Poll::Ready(Some(Err(err))) => {
                    this.end();
                    return Poll::Ready(Some(Err(Box::new(err))));
                }
                Poll::Ready(None) => {
                    let rest = this.redactor.finish();
                    this.end();
                    if rest.is_empty() {
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from(rest)))));
                }
                Poll::Pending => {
                    if this.idle.as_mut().poll(cx).is_ready() {
                        this.end();
                        return Poll::Ready(Some(Err("the upstream went silent".into())));
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header map of `lines`, in order.
    fn headers(lines: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in lines {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).expect("a name"),
                HeaderValue::from_str(value).expect("a value"),
            );
        }
        map
    }

    /// The hop-by-hop headers go, and so does every header a `Connection` names, also one
    /// named after a byte that is not ASCII.
    #[test]
    fn the_headers_a_connection_names_go_whatever_else_it_holds() {
        let mut map = headers(&[
            ("connection", "keep-alive"),
            ("x-foo", "hop"),
            ("x-bar", "hop"),
            ("keep-alive", "timeout=5"),
            ("x-kept", "end to end"),
        ]);
        map.append(
            header::CONNECTION,
            HeaderValue::from_bytes(b"x-foo, x-\xe9, x-bar").expect("a value"),
        );
        strip_hop_by_hop(&mut map);
        let left: Vec<&str> = map.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["x-kept"]);
    }

    /// Where a client puts its credential: Bearer, the password of Basic, the upstream's own
    /// header; one that cannot be read in `Authorization` leaves the upstream's header to
    /// speak, and two of `Authorization` are none.
    #[test]
    fn the_token_is_found_where_the_client_sends_its_credential() {
        let found = |lines: &[(&str, &str)]| {
            token_of(&headers(lines), Some("x-api-key")).map(|t| t.expose().to_owned())
        };
        assert_eq!(
            found(&[("authorization", "Bearer a1")]).as_deref(),
            Some("a1")
        );
        // "x:b2" in base64.
        assert_eq!(
            found(&[("authorization", "Basic eDpiMg==")]).as_deref(),
            Some("b2")
        );
        assert_eq!(found(&[("x-api-key", "c3")]).as_deref(), Some("c3"));
        for unreadable in ["Basic !!!", "Basic eDI=", "Token d4"] {
            let lines = [("authorization", unreadable), ("x-api-key", "c3")];
            assert_eq!(found(&lines).as_deref(), Some("c3"), "{unreadable}");
        }
        let twice = [
            ("authorization", "Bearer a1"),
            ("authorization", "Bearer a1"),
        ];
        assert_eq!(found(&twice), None);
    }

    /// Any lease token in a header keeps that header from the upstream: the request's own as
    /// sent, another lease's, percent-encoded, or as the password of Basic credentials; a name
    /// merely shaped like a token does not.
    #[test]
    fn a_header_carrying_any_lease_token_is_found() {
        use base64::Engine as _;
        let own = crate::token::Token::mint().expect("mint");
        let other = crate::token::Token::mint().expect("mint");
        let own = own.expose().as_bytes();
        let other = other.expose();
        let encoded: String = other.bytes().map(|b| format!("%{b:02X}")).collect();
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("u:{other}"))
        );
        let unpadded =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("u:{other}"));
        for carrying in [
            format!("s={}", String::from_utf8_lossy(own)),
            format!("s={other}; t=1"),
            format!("s={encoded}"),
            basic,
            format!("basic\t{unpadded}"),
        ] {
            assert!(carries_a_token(carrying.as_bytes(), own), "{carrying}");
        }
        for clean in ["agt_workspace", "Basic eDpiMg==", "s=1", ""] {
            assert!(!carries_a_token(clean.as_bytes(), own), "{clean}");
        }
    }

    /// An upstream that echoes the request's headers as its own can put the key in a name.
    #[test]
    fn the_key_in_a_header_name_is_masked_whatever_its_case() {
        let mut headers = HeaderMap::new();
        headers.append("x-sk-live-key123-abc", HeaderValue::from_static("1"));
        headers.append("x-sk-live-key123-abc", HeaderValue::from_static("2"));
        headers.append("x-other", HeaderValue::from_static("3"));
        let needles = vec![Zeroizing::new(b"SK-Live-Key123".to_vec())];
        mask_header_names(&mut headers, &needles);
        let names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["x-other", "x-***-abc"]);
        let values: Vec<&[u8]> = headers
            .get_all("x-***-abc")
            .iter()
            .map(HeaderValue::as_bytes)
            .collect();
        assert_eq!(values, [b"1", b"2"]);
    }

    #[test]
    fn a_body_coded_other_than_chunked_or_identity_counts_as_encoded() {
        for plain in [
            &[][..],
            &[("content-encoding", "identity")],
            &[("content-encoding", "IDENTITY")],
            &[("transfer-encoding", "chunked")],
        ] {
            assert!(!encoded(&headers(plain)), "{plain:?}");
        }
        for coded in [
            &[("content-encoding", "gzip")][..],
            &[("content-encoding", "")],
            &[("content-encoding", "identity, br")],
            &[
                ("content-encoding", "identity"),
                ("content-encoding", "gzip"),
            ],
            &[("transfer-encoding", "gzip, chunked")],
            &[("transfer-encoding", "gzip")],
            &[
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "deflate"),
            ],
        ] {
            assert!(encoded(&headers(coded)), "{coded:?}");
        }
    }

    #[test]
    fn a_redirect_within_the_upstream_stays_within_the_broker() {
        let file: crate::upstream::SpecFile =
            toml::from_str("url = \"https://api.example.com/v2\"\nsecret_env = \"K\"")
                .expect("table");
        let spec = Spec::parse("api", file).expect("spec");
        let moved = |location: &str| within_broker(&spec, location.as_bytes(), false);
        assert_eq!(
            moved("https://api.example.com/v2/a?b=1").as_deref(),
            Some("/u/api/a?b=1")
        );
        assert_eq!(
            moved("HTTPS://API.example.com/v2").as_deref(),
            Some("/u/api")
        );
        assert_eq!(moved("/v2/next").as_deref(), Some("/u/api/next"));
        assert_eq!(moved("/v2x/next"), None, "not under the base path");
        assert_eq!(moved("/other"), None);
        // Scheme-relative: the upstream's own host is the upstream, on the scheme it was asked.
        assert_eq!(moved("//api.example.com/v2/a").as_deref(), Some("/u/api/a"));
        assert_eq!(moved("//API.example.com/v2").as_deref(), Some("/u/api"));
        assert_eq!(moved("//cdn.example.com/v2/a"), None);
        assert_eq!(moved("//api.example.com.evil.net/v2/a"), None);
        assert_eq!(moved("///v2/a"), None);
        // Another port, a longer host, a user: another place, which goes as it is.
        assert_eq!(moved("https://api.example.com:8443/v2/a"), None);
        assert_eq!(moved("https://api.example.com.evil.net/v2/a"), None);
        assert_eq!(moved("https://api.example.com@other/v2/a"), None);
        assert_eq!(
            moved("https://api.example.com?x=1"),
            None,
            "no path: not under /v2"
        );
        // A path a client would resolve otherwise than plain dot segments: as it is.
        assert_eq!(moved("/v2/%2e%2e/x"), None);
        assert_eq!(moved("/v2/%2E/x"), None);
        assert_eq!(moved("/v2\\..\\x"), None);
        // Dot segments, resolved as the client will: out of the base path goes as it is.
        assert_eq!(moved("https://api.example.com/v2/../admin"), None);
        assert_eq!(moved("/v2/a/../b").as_deref(), Some("/u/api/b"));
        assert_eq!(moved("/v2/./a/..").as_deref(), Some("/u/api/"));
        assert_eq!(
            moved("/v2/a/../../v2/c?x=/..").as_deref(),
            Some("/u/api/c?x=/..")
        );
        assert_eq!(
            moved("https://cdn.example.com/v2/a"),
            None,
            "another host goes as it is"
        );
        assert_eq!(moved("http://api.example.com/v2/a"), None, "another scheme");
        // On the upstream's own listener, the same places at its root.
        let own = |location: &str| within_broker(&spec, location.as_bytes(), true);
        assert_eq!(
            own("https://api.example.com/v2/a?b=1").as_deref(),
            Some("/a?b=1")
        );
        assert_eq!(own("/v2/next").as_deref(), Some("/next"));
        assert_eq!(own("/v2").as_deref(), Some("/"));
        assert_eq!(own("/v2?x").as_deref(), Some("/?x"));
        assert_eq!(own("https://cdn.example.com/v2/a"), None);
    }

    /// A cookie an upstream sets goes back to that upstream only: under `/u/NAME`, without a
    /// domain; on the upstream's own listener, at the same place as a redirect would be.
    #[test]
    fn a_cookie_an_upstream_sets_is_kept_to_that_upstream() {
        let file: crate::upstream::SpecFile =
            toml::from_str("url = \"https://api.example.com/v2\"\nsecret_env = \"K\"")
                .expect("table");
        let spec = Spec::parse("api", file).expect("spec");
        for (set, shared, own) in [
            ("s=1; Path=/", "s=1; Path=/u/api", "s=1; Path=/"),
            (
                "s=1; Path=/v2/repos; HttpOnly",
                "s=1; HttpOnly; Path=/u/api/repos",
                "s=1; HttpOnly; Path=/repos",
            ),
            ("s=1", "s=1; Path=/u/api", "s=1"),
            (
                "s=1; domain=.example.com; path=/v2; Secure",
                "s=1; Secure; Path=/u/api",
                "s=1; Secure; Path=/",
            ),
            // A base path's name that goes on is not under it.
            ("s=1; Path=/v20", "s=1; Path=/u/api", "s=1; Path=/"),
            ("s=1; Path=relative", "s=1; Path=/u/api", "s=1"),
            (
                "s=1; Path=/v2/a; Path=/v2/b",
                "s=1; Path=/u/api/b",
                "s=1; Path=/b",
            ),
        ] {
            assert_eq!(scoped_cookie(&spec, set, false), shared, "{set}");
            assert_eq!(scoped_cookie(&spec, set, true), own, "{set} (own)");
        }
        let mut map = headers(&[
            ("set-cookie", "a=1; Path=/"),
            ("set-cookie", "b=2; Domain=example.com"),
            ("x-other", "kept"),
        ]);
        scope_cookies(&spec, &mut map, false);
        let set: Vec<&str> = map
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().expect("text"))
            .collect();
        assert_eq!(set, ["a=1; Path=/u/api", "b=2; Path=/u/api"]);
        assert_eq!(map["x-other"], "kept");
    }

    /// A key with a `;` echoed in a cookie is masked before the cookie is rewritten (which
    /// would turn `ab;cd` into `ab; cd`, out of the mask's sight).
    #[test]
    fn a_key_in_a_cookie_is_masked_before_the_cookie_is_scoped() {
        let file: crate::upstream::SpecFile =
            toml::from_str("url = \"https://api.example.com\"\nsecret_env = \"K\"").expect("table");
        let spec = Spec::parse("api", file).expect("spec");
        let secret = Secret::new(Zeroizing::new(b"k3y;0f;the;key".to_vec())).expect("key");
        let mut map = headers(&[
            ("set-cookie", "s=k3y;0f;the;key; Path=/"),
            ("x-echo", "Bearer k3y;0f;the;key"),
        ]);
        masked_headers(&spec, &secret, &mut map, false);
        for value in map.values() {
            let value = value.to_str().expect("text");
            assert!(!value.contains("k3y"), "{value}");
        }
        assert_eq!(map["set-cookie"], "s=***; Path=/u/api/");
    }
}
