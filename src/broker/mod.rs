//! `lease serve`: the broker. One process holds the store and the policy; clients and web
//! servers ask it over HTTP/1.1 on a unix socket or TCP ([`api`] has the endpoints).
//!
//! It runs in the foreground: one line per event on stderr (never a token), SIGTERM or SIGINT
//! stop accepting, answer what is in flight (at most [`DRAIN`]) and exit 0; SIGHUP reloads the
//! config, keeping the old one when the new one is bad.
//!
//! Only this module and [`api`] start an async runtime, and only `lease serve` calls them: the
//! local subcommands stay free of it.

mod api;
mod metrics;

use std::net::{SocketAddr, ToSocketAddrs};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use crate::config::Config;
use crate::endpoint::Listen;
use crate::exit::Exit;
use crate::store::{Open, Store};

use metrics::Metrics;

/// How long a shutdown waits for requests in flight before it exits anyway.
pub const DRAIN: Duration = Duration::from_secs(10);
/// How long a client may take to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest request head (and buffered body) a connection may send.
const MAX_BUFFER: usize = 64 * 1024;

/// What `lease serve` was asked to do.
#[derive(Debug, Clone)]
pub struct ServeRequest {
    /// The store the broker alone opens.
    pub state_dir: PathBuf,
    /// The config file (policy, routes), reloaded on SIGHUP.
    pub config: Option<PathBuf>,
    /// Where to listen; empty means `unix:$STATE_DIR/broker.sock`.
    pub listen: Vec<Listen>,
    /// Allow plain HTTP on an address that is not loopback.
    pub insecure_http: bool,
}

/// The config and the store in force; replaced whole on a reload.
#[derive(Debug)]
struct Live {
    config: Config,
    store: Store,
}

/// What every connection shares.
#[derive(Debug)]
struct Shared {
    live: RwLock<Arc<Live>>,
    metrics: Metrics,
    request: ServeRequest,
}

impl Shared {
    /// The config and store in force now (a reload does not disturb a request that has them).
    fn live(&self) -> Arc<Live> {
        match self.live.read() {
            Ok(live) => Arc::clone(&live),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Reads the config again; a bad one is reported and the old one kept.
    fn reload(&self) {
        match load(&self.request) {
            Ok(live) => {
                let mut slot = match self.live.write() {
                    Ok(slot) => slot,
                    Err(poisoned) => poisoned.into_inner(),
                };
                *slot = Arc::new(live);
                log("reloaded the config");
            }
            Err(err) => log(&format!(
                "reload failed, keeping the previous config: {err:#}"
            )),
        }
    }
}

/// Who is asking: on a unix socket, the peer's uid and pid (`SO_PEERCRED`); over TCP, only an
/// address.
#[derive(Debug, Clone)]
struct Peer {
    /// The peer's uid, on a unix socket.
    uid: Option<u32>,
    /// The peer's pid, on a unix socket.
    pid: Option<u32>,
    /// How logs and the trail name it: `unix:uid=N` or `HOST:PORT`.
    shown: String,
}

impl Peer {
    fn unix(stream: &UnixStream) -> Peer {
        match stream.peer_cred() {
            Ok(cred) => Peer {
                uid: Some(cred.uid()),
                pid: cred.pid().and_then(|pid| u32::try_from(pid).ok()),
                shown: format!("unix:uid={}", cred.uid()),
            },
            // No credentials: no operator rights, only what a token proves.
            Err(_) => Peer {
                uid: None,
                pid: None,
                shown: "unix".to_owned(),
            },
        }
    }

    fn tcp(address: SocketAddr) -> Peer {
        Peer {
            uid: None,
            pid: None,
            shown: address.to_string(),
        }
    }

    /// Whether this peer may do what only operators may: a uid in `operators` (by default the
    /// broker's own uid), on a unix socket. Over TCP, nobody is an operator.
    fn is_operator(&self, config: &Config) -> bool {
        let Some(uid) = self.uid else {
            return false;
        };
        match &config.operators {
            Some(operators) => operators.contains(&uid),
            None => uid == nix::unistd::geteuid().as_raw(),
        }
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

/// One line on stderr: what the broker did. Callers never pass a token.
fn log(line: &str) {
    eprintln!("lease serve: {}", crate::token::redact(line));
}

fn load(request: &ServeRequest) -> Result<Live> {
    let config = Config::load(request.config.as_deref())?;
    let store = Store::open(&request.state_dir, Open::CreateIfMissing)?
        .with_audit_limit(config.audit_max_bytes);
    Ok(Live { config, store })
}

/// A bound listener, before the runtime takes it over.
#[derive(Debug)]
enum Bound {
    Unix(std::os::unix::net::UnixListener, PathBuf),
    Tcp(std::net::TcpListener),
}

/// Runs the broker until SIGTERM or SIGINT.
pub fn serve(request: ServeRequest) -> Result<Exit> {
    let live = load(&request)?;
    let listen = if request.listen.is_empty() {
        vec![Listen::Unix(request.state_dir.join("broker.sock"))]
    } else {
        request.listen.clone()
    };
    // Everything is bound before the runtime starts: an address in use or refused is an error
    // before the broker says it is ready, and the umask dance below sees no other thread.
    let mut bound = Vec::new();
    for address in &listen {
        bound.push(bind(address, request.insecure_http)?);
    }
    let shared = Arc::new(Shared {
        live: RwLock::new(Arc::new(live)),
        metrics: Metrics::default(),
        request,
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("lease-serve")
        .build()
        .context("starting the broker's runtime")?;
    let sockets: Vec<PathBuf> = bound
        .iter()
        .filter_map(|b| match b {
            Bound::Unix(_, path) => Some(path.clone()),
            Bound::Tcp(_) => None,
        })
        .collect();
    let result = runtime.block_on(run(shared, bound));
    for path in sockets {
        let _ = std::fs::remove_file(path);
    }
    result.map(|()| Exit::Success)
}

/// Binds one address: a unix socket created 0600 (a stale socket from a dead broker is
/// replaced; a live one is an error), or a TCP port, refused off loopback without
/// `--insecure-http`.
fn bind(address: &Listen, insecure_http: bool) -> Result<Bound> {
    match address {
        Listen::Unix(path) => {
            let listener =
                bind_unix(path).with_context(|| format!("cannot listen on {address}"))?;
            Ok(Bound::Unix(listener, path.clone()))
        }
        Listen::Tcp(text) => {
            let addrs: Vec<SocketAddr> = text
                .to_socket_addrs()
                .with_context(|| format!("cannot listen on {address}: cannot resolve it"))?
                .collect();
            if let Some(open) = addrs.iter().find(|a| !a.ip().is_loopback())
                && !insecure_http
            {
                bail!(
                    "cannot listen on {address}: {} is not a loopback address, and plain HTTP \
                     would carry tokens in clear: pass --insecure-http if a TLS proxy or a \
                     private network stands in front (TLS in the broker itself is not \
                     available yet)",
                    open.ip()
                );
            }
            let listener = std::net::TcpListener::bind(&addrs[..])
                .with_context(|| format!("cannot listen on {address}"))?;
            listener.set_nonblocking(true)?;
            Ok(Bound::Tcp(listener))
        }
    }
}

fn bind_unix(path: &Path) -> Result<std::os::unix::net::UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                bail!("another broker is listening there");
            }
            std::fs::remove_file(path).context("removing a stale socket")?;
        }
        Ok(_) => bail!("{} exists and is not a socket", path.display()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(err.into()),
    }
    // Created 0600 from the start: no moment when another user could connect.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let listener = std::os::unix::net::UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = listener?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// A connection accepted on one of the listeners.
#[derive(Debug)]
enum Accepted {
    Unix(UnixStream),
    Tcp(TcpStream, SocketAddr),
}

async fn run(shared: Arc<Shared>, bound: Vec<Bound>) -> Result<()> {
    let mut terminate = signal(SignalKind::terminate()).context("watching SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("watching SIGINT")?;
    let mut hangup = signal(SignalKind::hangup()).context("watching SIGHUP")?;
    let (tx, mut accepted) = mpsc::channel::<Accepted>(64);
    let mut acceptors = Vec::new();
    for listener in bound {
        let tx = tx.clone();
        match listener {
            Bound::Unix(std, path) => {
                let listener = UnixListener::from_std(std)?;
                log(&format!("listening on unix:{}", path.display()));
                acceptors.push(tokio::spawn(async move {
                    loop {
                        match listener.accept().await {
                            Ok((stream, _)) => {
                                if tx.send(Accepted::Unix(stream)).await.is_err() {
                                    break;
                                }
                            }
                            Err(err) => accept_failed(&err).await,
                        }
                    }
                }));
            }
            Bound::Tcp(std) => {
                let listener = TcpListener::from_std(std)?;
                log(&format!("listening on {}", listener.local_addr()?));
                acceptors.push(tokio::spawn(async move {
                    loop {
                        match listener.accept().await {
                            Ok((stream, peer)) => {
                                let _ = stream.set_nodelay(true);
                                if tx.send(Accepted::Tcp(stream, peer)).await.is_err() {
                                    break;
                                }
                            }
                            Err(err) => accept_failed(&err).await,
                        }
                    }
                }));
            }
        }
    }
    drop(tx);
    let graceful = GracefulShutdown::new();
    let why = loop {
        tokio::select! {
            _ = terminate.recv() => break "SIGTERM",
            _ = interrupt.recv() => break "SIGINT",
            _ = hangup.recv() => shared.reload(),
            connection = accepted.recv() => match connection {
                Some(Accepted::Unix(stream)) => {
                    let peer = Peer::unix(&stream);
                    connect(&graceful, &shared, stream, peer);
                }
                Some(Accepted::Tcp(stream, address)) => {
                    connect(&graceful, &shared, stream, Peer::tcp(address));
                }
                None => break "no listener left",
            },
        }
    };
    for acceptor in &acceptors {
        acceptor.abort();
    }
    log(&format!(
        "{why}: stopped accepting; finishing {} connection(s)",
        graceful.count()
    ));
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        log(&format!(
            "connections still open after {}s: closing them",
            DRAIN.as_secs()
        ));
    }
    log("stopped");
    Ok(())
}

/// An accept that failed (out of descriptors, say): logged, and retried after a pause so that
/// a persistent failure does not spin.
async fn accept_failed(err: &std::io::Error) {
    log(&format!("accept failed: {err}"));
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Serves one connection (HTTP/1.1, keep-alive) until it closes or the broker stops.
fn connect<IO>(graceful: &GracefulShutdown, shared: &Arc<Shared>, io: IO, peer: Peer)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let shared = Arc::clone(shared);
    let peer = Arc::new(peer);
    let service = service_fn(move |request| {
        let shared = Arc::clone(&shared);
        let peer = Arc::clone(&peer);
        async move { Ok::<_, std::convert::Infallible>(api::handle(&shared, &peer, request).await) }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_BUFFER)
        .serve_connection(TokioIo::new(io), service);
    let watched = graceful.watch(connection);
    tokio::spawn(async move {
        let _ = watched.await;
    });
}
