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
mod proxy;
mod runs;
mod stall;

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};

use crate::config::Config;
use crate::endpoint::Listen;
use crate::exit::Exit;
use crate::store::{Open, Store};
use crate::token::LeaseId;

use metrics::Metrics;

/// How long a shutdown waits for requests in flight before it exits anyway.
pub const DRAIN: Duration = Duration::from_secs(10);
/// How long a client may take to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest request head a client may send: a larger one is answered `431`.
const MAX_HEAD: usize = 64 * 1024;
/// The most a connection buffers while it reads a head: past it, the HTTP library answers
/// `431` itself (it may read up to twice this before it looks), so that a head just over
/// [`MAX_HEAD`] is read whole and refused by [`head_size`]'s count.
const MAX_BUFFER: usize = 2 * MAX_HEAD;
/// Threads for the store's work that may wait for a lock (budget charges, expiry marks, mints,
/// revocations): a few more than the cores, so that one waiting on a record's lock (at most
/// 2 s) does not stall the rest, without the hand-offs between dozens of threads that an
/// unbounded pool grows to under load. Decisions that only read are made on the runtime's
/// threads.
const BLOCKING_THREADS: usize = 8;
/// Decisions made at once on a thread that may block (on a remote store, or of a deep chain),
/// and reads of a lease's standing there (a request no route allows, the proxy's watch of a
/// lease): fewer than [`BLOCKING_THREADS`], so that mints and commands still find a thread
/// while the store is slow to answer or chains are deep.
const REMOTE_DECISIONS: usize = BLOCKING_THREADS - 2;
/// Long paths routed at once, on threads that may block beyond [`BLOCKING_THREADS`] (anyone
/// may send one: they wait on each other, not on decisions, mints or runs' ends).
const LONG_PATHS: usize = 2;
/// Connections served at once on the unix sockets, and apart from them on TCP (TLS handshakes
/// included); more are closed as they come. Counted apart, so that a flood over TCP cannot take
/// the connections that operators and local runs on the socket need.
const MAX_CONNECTIONS: usize = 1024;
/// The most connections one uid other than an operator's holds on the unix sockets: an agent
/// in `socket_group` cannot take them all from the web server, the runs and the operators.
const MAX_CONNECTIONS_PER_UID: usize = MAX_CONNECTIONS / 2;
/// Connections on the unix sockets kept for operators alone, past [`MAX_CONNECTIONS`]: an
/// operator gets in however many others hold.
const OPERATOR_CONNECTIONS: usize = 64;

/// Raises the soft limit on open descriptors towards the hard one, to hold both pools of
/// [`MAX_CONNECTIONS`] and what the broker opens beside them (the store, upstreams). Past the
/// hard limit an accept fails, is logged, and is retried after a pause.
fn open_files_for_every_connection() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let wanted = 2 * MAX_CONNECTIONS as u64 + OPERATOR_CONNECTIONS as u64 + 1024;
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < wanted
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, wanted.min(hard), hard);
    }
}

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
    /// `--store`: the store on etcd, over the config's `store`.
    pub store: Option<crate::store::etcd::Url>,
}

/// The config and the store in force; replaced whole on a reload.
struct Live {
    config: Config,
    store: Store,
    /// The upstreams of the config, with their keys loaded.
    upstreams: std::collections::BTreeMap<String, Arc<proxy::Upstream>>,
    /// The TLS side of the TCP listeners, from `tls_cert` and `tls_key` as last read (a
    /// reload reads renewed certificates).
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("config", &self.config)
            .field("store", &self.store)
            .field("upstreams", &self.upstreams)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// What every connection shares.
#[derive(Debug)]
struct Shared {
    live: RwLock<Arc<Live>>,
    /// `http(s)://ADDRESS` of each TCP listener, for the base URLs of upstreams.
    bases: Vec<String>,
    /// `http(s)://ADDRESS` of each upstream's own listener, by upstream (bound at start: a
    /// `listen` changed on SIGHUP takes a restart).
    own: HashMap<String, String>,
    /// A reload is running; another was asked for meanwhile.
    reloading: std::sync::atomic::AtomicBool,
    reload_again: std::sync::atomic::AtomicBool,
    metrics: Metrics,
    request: ServeRequest,
    /// Set when the broker stops: connections finish, held runs let go of their connection.
    stopping: watch::Sender<bool>,
    /// Cloned by every connection and held run; dropped at shutdown, so that the broker knows
    /// when the last one is done.
    guard: Mutex<Option<mpsc::Sender<()>>>,
    /// The runs whose connection is here now: lease id to the serial of that connection.
    attached: Mutex<HashMap<LeaseId, u64>>,
    /// The runs whose end could not be recorded when it came, to be made again
    /// ([`runs::retry_ends`]), in the order they came.
    unended: Mutex<Vec<(LeaseId, runs::Unended)>>,
    serial: AtomicU64,
    /// Permits for [`MAX_CONNECTIONS`] on the unix sockets.
    socket_connections: Arc<tokio::sync::Semaphore>,
    /// Permits for [`OPERATOR_CONNECTIONS`], taken when the unix sockets' are all taken.
    operator_connections: Arc<tokio::sync::Semaphore>,
    /// Connections held on the unix sockets, by the peer's uid (operators' not counted).
    by_uid: ByUid,
    /// Permits for [`MAX_CONNECTIONS`] on TCP.
    tcp_connections: Arc<tokio::sync::Semaphore>,
    /// Permits for [`REMOTE_DECISIONS`].
    remote_decisions: Arc<tokio::sync::Semaphore>,
    /// Permits for [`LONG_PATHS`].
    long_paths: Arc<tokio::sync::Semaphore>,
    /// The one permit to count the active leases for `/metrics` (every record read, on a
    /// thread that may block), held by the count itself: scrapes take turns, so a flood of
    /// them holds one such thread, not all, even from clients that leave before the answer.
    metrics_scan: Arc<tokio::sync::Semaphore>,
    /// The cut of each lease with proxied requests in flight, by its token's hash: one
    /// watcher per lease, however many requests it has open ([`proxy`]).
    cuts: Mutex<HashMap<String, std::sync::Weak<proxy::Cut>>>,
}

impl Shared {
    /// The config and store in force now (a reload does not disturb a request that has them).
    fn live(&self) -> Arc<Live> {
        match self.live.read() {
            Ok(live) => Arc::clone(&live),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// A token that keeps the shutdown waiting while it lives; `None` once the broker stops.
    fn hold_guard(&self) -> Option<mpsc::Sender<()>> {
        lock(&self.guard).clone()
    }

    /// Records that this connection holds run `id` now; its serial.
    fn attach(&self, id: &LeaseId) -> u64 {
        let serial = self.serial.fetch_add(1, Ordering::Relaxed);
        lock(&self.attached).insert(id.clone(), serial);
        serial
    }

    /// Forgets the connection `serial` of run `id`; whether it was the one holding the run.
    fn detach(&self, id: &LeaseId, serial: u64) -> bool {
        let mut attached = lock(&self.attached);
        if attached.get(id) == Some(&serial) {
            attached.remove(id);
            true
        } else {
            false
        }
    }

    fn is_attached(&self, id: &LeaseId) -> bool {
        lock(&self.attached).contains_key(id)
    }

    /// Remembers that run `id`'s end could not be recorded (a run ended counts over one gone).
    fn unended(&self, id: &LeaseId, how: runs::Unended) {
        let mut unended = lock(&self.unended);
        match unended.iter_mut().find(|(other, _)| other == id) {
            Some(entry) if how == runs::Unended::Ran => entry.1 = how,
            Some(_) => {}
            None => unended.push((id.clone(), how)),
        }
    }

    /// The ends still to be made, oldest first.
    fn unended_now(&self) -> Vec<(LeaseId, runs::Unended)> {
        lock(&self.unended).clone()
    }

    /// Forgets run `id`'s end: made, or no longer to be made.
    fn ended(&self, id: &LeaseId) {
        lock(&self.unended).retain(|(other, _)| other != id);
    }

    /// Reads the config again, one reload at a time: a SIGHUP during a reload makes it read
    /// once more when it ends, so that the newest config is the one in force.
    fn reload_now(&self) {
        if self.reloading.swap(true, Ordering::SeqCst) {
            self.reload_again.store(true, Ordering::SeqCst);
            return;
        }
        loop {
            self.reload_again.store(false, Ordering::SeqCst);
            self.reload();
            if !self.reload_again.load(Ordering::SeqCst) {
                break;
            }
        }
        self.reloading.store(false, Ordering::SeqCst);
    }

    /// Reads the config again; a bad one is reported and the old one kept.
    fn reload(&self) {
        let loaded = load(&self.request, Some(&self.live())).and_then(|live| {
            // The listeners were bound as TLS or plain: a reload cannot turn that over.
            if live.tls.is_some() != self.live().tls.is_some() {
                bail!("tls_cert and tls_key can be changed by a reload, not added or removed: restart the broker for that");
            }
            Ok(live)
        });
        match loaded {
            Ok(live) => {
                let before = self.live();
                if live.config.socket_group != before.config.socket_group {
                    log("a changed socket_group takes effect at the next start");
                }
                if live.config.workers != before.config.workers {
                    log("a changed workers takes effect at the next start");
                }
                for (name, spec) in &live.config.upstreams {
                    let was = before
                        .config
                        .upstreams
                        .get(name)
                        .and_then(|s| s.listen.as_ref());
                    if spec.listen.as_ref() != was {
                        log(&format!(
                            "upstream {name}: a changed listen takes effect at the next start"
                        ));
                    }
                }
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

    /// Who asked through the peer, as a local subcommand names its caller in the trail: on a
    /// unix socket, the parent of the peer (the tool that ran `lease verify`, the script that
    /// ran `lease renew`); over TCP, only the address.
    fn caller(&self) -> crate::audit::Process {
        let mut caller = self
            .pid
            .and_then(crate::audit::Process::caller_of)
            .unwrap_or_default();
        caller.client = Some(self.shown.clone());
        caller
    }

    /// The peer as the trail names who an event happened for.
    fn process(&self) -> crate::audit::Process {
        crate::audit::Process {
            pid: self.pid,
            command: None,
            argc: None,
            client: Some(self.shown.clone()),
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
            None => uid == crate::owner::euid(),
        }
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

/// A mutex's guard, whether or not a thread panicked while holding it (the data are plain
/// maps, consistent at every step).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `name=value` for a log line: a value a client chose (a path, a method) is quoted, with
/// escapes, when it is empty or holds a space, a quote, an `=` or a control character, so that
/// it cannot pass for more fields of the line (`path=/x lease=... granted`).
pub(crate) fn field(name: &str, value: &str) -> String {
    let plain = |c: char| !(c.is_whitespace() || c.is_control() || c == '"' || c == '=');
    if !value.is_empty() && value.chars().all(plain) {
        format!("{name}={value}")
    } else {
        format!("{name}={value:?}")
    }
}

/// One line on stderr: what the broker did. Callers never pass a token.
fn log(line: &str) {
    use std::io::Write as _;
    // One write per line (eprintln! writes the newline apart).
    let line = format!("lease serve: {}\n", crate::one_line(line));
    let _ = std::io::stderr().write_all(line.as_bytes());
}

/// Reads the config and opens the store; on a reload (`before`), a store on etcd is the one
/// already open (its session holds the runs this broker holds), and cannot be changed.
fn load(request: &ServeRequest, before: Option<&Live>) -> Result<Live> {
    let mut config = Config::load(request.config.as_deref())?;
    if let Some(url) = &request.store {
        config.store = Some(url.clone());
    }
    let kept =
        before.filter(|b| b.config.store == config.store && b.config.etcd_tls == config.etcd_tls);
    if before.is_some() && kept.is_none() {
        bail!("the store (store, [etcd]) can be changed by a restart, not by a reload");
    }
    let store = match (&config.store, kept.and_then(|b| b.store.backend())) {
        (None, _) => Store::open(&request.state_dir, Open::CreateIfMissing)?,
        (Some(_), Some(backend)) => Store::remote(backend, &request.state_dir)?,
        (Some(url), None) => {
            let etcd =
                crate::store::etcd::Etcd::open(url, &config.etcd_tls, config.owner_timeout, log)
                    .with_context(|| format!("cannot open the store {url}"))?;
            Store::remote(Arc::new(etcd), &request.state_dir)?
        }
    }
    .with_audit_limit(config.audit_max_bytes);
    // What a secret_command does not get: every variable that holds a key (named by this
    // config or the one it replaces, still in the broker's environment), and systemd's
    // hand-over of sockets and readiness, which are the broker's.
    let keys = |config: &Config| -> Vec<String> {
        let named = config.upstreams.values().filter_map(|s| s.secret_env());
        named.map(str::to_owned).collect()
    };
    let mut hidden: Vec<String> = keys(&config);
    hidden.extend(before.map(|b| keys(&b.config)).unwrap_or_default());
    hidden.extend(
        [
            "LISTEN_FDS",
            "LISTEN_PID",
            "LISTEN_FDNAMES",
            "NOTIFY_SOCKET",
        ]
        .map(str::to_owned),
    );
    let hidden: Vec<&str> = hidden.iter().map(String::as_str).collect();
    let mut upstreams = std::collections::BTreeMap::new();
    for (name, spec) in &config.upstreams {
        upstreams.insert(
            name.clone(),
            Arc::new(proxy::Upstream::load(spec, &hidden)?),
        );
    }
    let tls = match &config.tls {
        Some((cert, key)) => Some(tls_acceptor(cert, key)?),
        None => None,
    };
    Ok(Live {
        config,
        store,
        upstreams,
        tls,
    })
}

/// A bound listener, before the runtime takes it over.
#[derive(Debug)]
enum Bound {
    /// A unix socket, and its path when the broker made it (and removes it when it stops); a
    /// socket systemd passed is systemd's to remove.
    Unix(std::os::unix::net::UnixListener, Option<PathBuf>),
    /// A TCP listener; with a name, an upstream's own (`listen` in `[upstream.NAME]`), where
    /// every request goes to that upstream.
    Tcp(std::net::TcpListener, Option<Arc<str>>),
}

/// Runs the broker until SIGTERM or SIGINT.
pub fn serve(request: ServeRequest) -> Result<Exit> {
    // The broker holds tokens and the upstreams' keys in memory: no core dump, and no ptrace
    // or /proc/PID/mem, environ reads by other processes of its user.
    #[cfg(target_os = "linux")]
    let _ = nix::sys::prctl::set_dumpable(false);
    // SIGTERM, SIGINT and SIGHUP are blocked from here until `run` watches them, and every
    // thread started meanwhile (the runtimes', etcd's, a secret_command's reader) is born with
    // them blocked, so that one sent meanwhile waits for its watcher (the registry installs a
    // handler a moment before the action that keeps the signal, and one in between was
    // dropped: a SIGTERM then left the broker running). After, this thread alone takes them.
    nix::sys::signal::pthread_sigmask(
        nix::sys::signal::SigmaskHow::SIG_BLOCK,
        Some(&stopping_signals()),
        None,
    )
    .context("blocking signals")?;
    #[cfg(debug_assertions)]
    crate::signals::debug_raise("LEASE_DEBUG_SIGNAL_DURING_INSTALL");
    open_files_for_every_connection();
    // First, before anything starts a process (a secret_command) that could inherit them.
    let activated = activated().context("socket activation")?;
    let live = match load(&request, None) {
        Ok(live) => live,
        // Nothing is served yet, so nothing is in flight: a graceful stop is the exit itself.
        Err(err) if err.downcast_ref::<crate::upstream::Stopped>().is_some() => {
            log(&format!("stopped before it was ready: {err:#}"));
            return Ok(Exit::Success);
        }
        Err(err) => return Err(err),
    };
    let listen = if request.listen.is_empty() && activated.is_empty() {
        vec![Listen::Unix(request.state_dir.join("broker.sock"))]
    } else {
        request.listen.clone()
    };
    // Everything is bound before the runtime starts: an address in use or refused is an error
    // before the broker says it is ready, and the umask dance below sees no other thread.
    let tls = live.tls.is_some();
    let plain_ok = request.insecure_http || tls;
    let mut bound = Vec::new();
    if live.config.socket_group.is_some() && activated.iter().any(|s| matches!(s, Bound::Unix(..)))
    {
        log(
            "warning: socket_group does not apply to the sockets systemd passes: set SocketGroup= and SocketMode=0660 in the .socket unit",
        );
    }
    for socket in activated {
        if let Bound::Tcp(listener, _) = &socket
            && let Ok(address) = listener.local_addr()
            && !address.ip().is_loopback()
            && !plain_ok
        {
            bail!(
                "socket activation: {address} is not a loopback address, and plain HTTP would \
                 carry tokens in clear: set tls_cert and tls_key in the config, or pass \
                 --insecure-http if a TLS proxy or a private network stands in front"
            );
        }
        bound.push(socket);
    }
    for address in &listen {
        bound.push(bind(address, plain_ok, live.config.socket_group)?);
    }
    // Each upstream with a `listen` of its own: a TCP listener where every path is its own.
    let mut own = HashMap::new();
    for (name, spec) in &live.config.upstreams {
        let Some(address) = &spec.listen else {
            continue;
        };
        let Bound::Tcp(listener, _) = bind(&Listen::Tcp(address.clone()), plain_ok, None)
            .with_context(|| format!("upstream {name}"))?
        else {
            continue;
        };
        let scheme = if tls { "https" } else { "http" };
        if let Ok(at) = listener.local_addr() {
            own.insert(name.clone(), format!("{scheme}://{}", reachable(at)));
        }
        bound.push(Bound::Tcp(listener, Some(Arc::from(name.as_str()))));
    }
    let scheme = if tls { "https" } else { "http" };
    let bases = bound
        .iter()
        .filter_map(|b| match b {
            Bound::Tcp(listener, None) => listener.local_addr().ok(),
            Bound::Tcp(_, Some(_)) => None,
            Bound::Unix(..) => None,
        })
        .map(|address| format!("{scheme}://{}", reachable(address)))
        .collect();
    let (guard, done) = mpsc::channel(1);
    let shared = Arc::new(Shared {
        bases,
        own,
        reloading: std::sync::atomic::AtomicBool::new(false),
        reload_again: std::sync::atomic::AtomicBool::new(false),
        live: RwLock::new(Arc::new(live)),
        metrics: Metrics::default(),
        request,
        stopping: watch::Sender::new(false),
        guard: Mutex::new(Some(guard)),
        attached: Mutex::new(HashMap::new()),
        unended: Mutex::new(Vec::new()),
        serial: AtomicU64::new(0),
        socket_connections: Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS)),
        operator_connections: Arc::new(tokio::sync::Semaphore::new(OPERATOR_CONNECTIONS)),
        by_uid: Arc::new(Mutex::new(HashMap::new())),
        tcp_connections: Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS)),
        remote_decisions: Arc::new(tokio::sync::Semaphore::new(REMOTE_DECISIONS)),
        long_paths: Arc::new(tokio::sync::Semaphore::new(LONG_PATHS)),
        metrics_scan: Arc::new(tokio::sync::Semaphore::new(1)),
        cuts: Mutex::new(HashMap::new()),
    });
    // One thread answers every request by default: on a few cores shared with the web server
    // and the clients, a second worker costs more in wake-ups between the two than it adds
    // (docs/performance.md, eighteenth session). `workers = N` spreads them over N threads.
    let mut runtime = match shared.live().config.workers {
        1 => tokio::runtime::Builder::new_current_thread(),
        workers => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(workers);
            builder
        }
    };
    let runtime = runtime
        .enable_all()
        .thread_name("lease-serve")
        .max_blocking_threads(BLOCKING_THREADS + LONG_PATHS)
        .build()
        .context("starting the broker's runtime")?;
    let sockets: Vec<PathBuf> = bound
        .iter()
        .filter_map(|b| match b {
            Bound::Unix(_, path) => path.clone(),
            Bound::Tcp(..) => None,
        })
        .collect();
    let result = runtime.block_on(run(shared, bound, done));
    for path in sockets {
        let _ = std::fs::remove_file(path);
    }
    result.map(|()| Exit::Success)
}

/// `address` as a client on this host reaches it: on loopback when it is bound to every
/// address.
fn reachable(mut address: SocketAddr) -> SocketAddr {
    if address.ip().is_unspecified() {
        address.set_ip(match address {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    address
}

/// The listening sockets systemd passed (socket activation: `LISTEN_PID` names this process,
/// `LISTEN_FDS` counts them from descriptor 3): each a unix socket or a TCP port.
fn activated() -> Result<Vec<Bound>> {
    use nix::sys::socket::{AddressFamily, SockaddrLike, SockaddrStorage};
    use std::os::fd::{FromRawFd, OwnedFd};
    let ours = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|pid| pid.parse::<u32>().ok())
        == Some(std::process::id());
    let count: i32 = match std::env::var("LISTEN_FDS") {
        Ok(count) if ours => count
            .parse()
            .ok()
            .filter(|n| (0..=64).contains(n))
            .ok_or_else(|| anyhow!("LISTEN_FDS={count} is not a count of sockets"))?,
        _ => return Ok(Vec::new()),
    };
    let mut bound = Vec::new();
    for fd in 3..3 + count {
        let family = nix::sys::socket::getsockname::<SockaddrStorage>(fd)
            .with_context(|| format!("descriptor {fd} is not a socket"))?
            .family();
        #[allow(unsafe_code)]
        // SAFETY: under socket activation, descriptors 3 to 3 + LISTEN_FDS - 1 are sockets
        // handed to this process, and this runs first in `serve`, before anything in it opens
        // a descriptor or starts a process or thread, so nothing else owns or closes them
        // (getsockname above proved each open); each is taken over once, here.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        // Not passed on to anything the broker starts (a secret_command).
        nix::fcntl::fcntl(
            &owned,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )?;
        // A stream socket that listens: a datagram socket, or a connection passed with
        // Accept=yes, would fail every accept.
        use nix::sys::socket::{SockType, getsockopt, sockopt};
        let listening = getsockopt(&owned, sockopt::AcceptConn).unwrap_or(false);
        let stream = getsockopt(&owned, sockopt::SockType).is_ok_and(|t| t == SockType::Stream);
        if !listening || !stream {
            bail!(
                "descriptor {fd} is not a listening stream socket: the unit needs ListenStream= and Accept=no"
            );
        }
        match family {
            Some(AddressFamily::Unix) => {
                let listener = std::os::unix::net::UnixListener::from(owned);
                listener.set_nonblocking(true)?;
                bound.push(Bound::Unix(listener, None));
            }
            Some(AddressFamily::Inet | AddressFamily::Inet6) => {
                let listener = std::net::TcpListener::from(owned);
                listener.set_nonblocking(true)?;
                bound.push(Bound::Tcp(listener, None));
            }
            _ => bail!("descriptor {fd} is neither a unix socket nor a TCP port"),
        }
    }
    Ok(bound)
}

/// Binds one address: a unix socket created 0600 (a stale socket from a dead broker is
/// replaced; a live one is an error), or a TCP port, refused off loopback without
/// `--insecure-http`.
fn bind(address: &Listen, off_loopback_ok: bool, group: Option<u32>) -> Result<Bound> {
    match address {
        Listen::Unix(path) => {
            let listener =
                bind_unix(path, group).with_context(|| format!("cannot listen on {address}"))?;
            Ok(Bound::Unix(listener, Some(path.clone())))
        }
        Listen::Tcp(text) => {
            let addrs: Vec<SocketAddr> = text
                .to_socket_addrs()
                .with_context(|| format!("cannot listen on {address}: cannot resolve it"))?
                .collect();
            if let Some(open) = addrs.iter().find(|a| !a.ip().is_loopback())
                && !off_loopback_ok
            {
                bail!(
                    "cannot listen on {address}: {} is not a loopback address, and plain HTTP \
                     would carry tokens in clear: set tls_cert and tls_key in the config, or \
                     pass --insecure-http if a TLS proxy or a private network stands in front",
                    open.ip()
                );
            }
            let listener =
                bind_tcp(&addrs).with_context(|| format!("cannot listen on {address}"))?;
            Ok(Bound::Tcp(listener, None))
        }
    }
}

/// Listens on the first of `addrs` that can be bound (as `TcpListener::bind` does), with room
/// for [`MAX_CONNECTIONS`] connections waiting to be accepted: std's 128 drops the handshakes
/// of a burst (runs starting at once, a web server opening its pool), which then wait a
/// second or more to retry.
fn bind_tcp(addrs: &[SocketAddr]) -> std::io::Result<std::net::TcpListener> {
    use nix::sys::socket::{
        AddressFamily, Backlog, SockFlag, SockType, SockaddrIn, SockaddrIn6, bind, listen,
        setsockopt, socket, sockopt,
    };
    let mut last = std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address");
    for address in addrs {
        let family = match address {
            SocketAddr::V4(_) => AddressFamily::Inet,
            SocketAddr::V6(_) => AddressFamily::Inet6,
        };
        let flags = SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK;
        let bound = socket(family, SockType::Stream, flags, None).and_then(|fd| {
            setsockopt(&fd, sockopt::ReuseAddr, &true)?;
            let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
            match address {
                SocketAddr::V4(v4) => bind(raw, &SockaddrIn::from(*v4))?,
                SocketAddr::V6(v6) => bind(raw, &SockaddrIn6::from(*v6))?,
            }
            listen(&fd, Backlog::new(MAX_CONNECTIONS as i32)?)?;
            Ok(fd)
        });
        match bound {
            Ok(fd) => return Ok(std::net::TcpListener::from(fd)),
            Err(errno) => last = errno.into(),
        }
    }
    Err(last)
}

/// The first directory above `path` that members of group `gid` cannot pass (no search right
/// for that group if it owns the directory, else none for others), with its mode.
fn closed_to_group(path: &Path, gid: u32) -> Option<(PathBuf, u32)> {
    use std::os::unix::fs::MetadataExt;
    path.ancestors().skip(1).find_map(|dir| {
        let meta = std::fs::metadata(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        })
        .ok()?;
        let mode = meta.mode() & 0o7777;
        let passes = if meta.gid() == gid {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        };
        (!passes).then(|| (dir.to_path_buf(), mode))
    })
}

fn bind_unix(path: &Path, group: Option<u32>) -> Result<std::os::unix::net::UnixListener> {
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
    if let Some(gid) = group {
        // Given to the group first, opened to it second: never wider than meant. A socket that
        // cannot be given is not left behind.
        let given = nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(gid)))
            .map_err(|err| {
                anyhow!(
                    "giving the socket to socket_group (gid {gid}): {err}: the broker's user must be in that group (SupplementaryGroups= in its systemd unit, or usermod -aG GROUP USER)"
                )
            })
            .and_then(|()| {
                std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o660))
                    .context("opening the socket to socket_group")
            });
        if let Err(err) = given {
            let _ = std::fs::remove_file(path);
            return Err(err);
        }
        if let Some(closed) = closed_to_group(path, gid) {
            log(&format!(
                "warning: socket_group cannot reach {}: {} (mode {:o}) keeps the group out; listen in a directory its members can pass (/run/lease, 0755, under examples/lease-broker.service)",
                path.display(),
                closed.0.display(),
                closed.1
            ));
        }
    }
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// The TLS side of the TCP listeners, from the PEM files of `tls_cert` and `tls_key`. Session
/// tickets are off: a held run's connection then carries nothing after the handshake but the
/// run's lines, so a readable socket means data or a close.
fn tls_acceptor(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let pem = crate::config::read_pem(cert)
        .map_err(|err| anyhow!("tls_cert {}: {err}", cert.display()))?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| anyhow!("tls_cert {}: {err}", cert.display()))?;
    let pem = crate::config::read_private_pem(key)
        .map_err(|err| anyhow!("tls_key {}: {err}", key.display()))?;
    let key_der = PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|err| anyhow!("tls_key {}: {err}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|err| anyhow!("tls_cert and tls_key do not make a certificate: {err}"))?;
    config.send_tls13_tickets = 0;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// A connection accepted on one of the listeners.
#[derive(Debug)]
enum Accepted {
    Unix(UnixStream),
    Tcp(TcpStream, SocketAddr, Option<Arc<str>>),
}

/// The signals that stop (TERM, INT) or reload (HUP) the broker.
fn stopping_signals() -> nix::sys::signal::SigSet {
    use nix::sys::signal::Signal;
    let mut set = nix::sys::signal::SigSet::empty();
    for signal in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        set.add(signal);
    }
    set
}

async fn run(shared: Arc<Shared>, bound: Vec<Bound>, mut done: mpsc::Receiver<()>) -> Result<()> {
    // Whether the TCP listeners speak TLS is fixed at start; the certificate is the live
    // config's, so that a reload serves a renewed one to the next connection.
    let tls = shared.live().tls.is_some();
    let mut terminate = signal(SignalKind::terminate()).context("watching SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("watching SIGINT")?;
    let mut hangup = signal(SignalKind::hangup()).context("watching SIGHUP")?;
    // `serve` blocked them until now; this is its thread (`block_on` polls this future there
    // until its first wait).
    nix::sys::signal::pthread_sigmask(
        nix::sys::signal::SigmaskHow::SIG_UNBLOCK,
        Some(&stopping_signals()),
        None,
    )
    .context("unblocking signals")?;
    let (tx, mut accepted) = mpsc::channel::<Accepted>(64);
    let mut acceptors = Vec::new();
    for listener in bound {
        let tx = tx.clone();
        match listener {
            Bound::Unix(std, path) => {
                let listener = UnixListener::from_std(std)?;
                let shown = match (&path, listener.local_addr()) {
                    (Some(path), _) => format!("unix:{}", path.display()),
                    (None, Ok(address)) => match address.as_pathname() {
                        Some(path) => format!("unix:{} (from systemd)", path.display()),
                        None => "a unix socket from systemd".to_owned(),
                    },
                    (None, Err(_)) => "a unix socket from systemd".to_owned(),
                };
                log(&format!("listening on {shown}"));
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
            Bound::Tcp(std, only) => {
                let listener = TcpListener::from_std(std)?;
                let scheme = if tls { "https" } else { "http" };
                let upstream = only
                    .as_ref()
                    .map(|name| format!(" for upstream {name}"))
                    .unwrap_or_default();
                log(&format!(
                    "listening on {} ({scheme}){upstream}",
                    listener.local_addr()?
                ));
                acceptors.push(tokio::spawn(async move {
                    loop {
                        match listener.accept().await {
                            Ok((stream, peer)) => {
                                let _ = stream.set_nodelay(true);
                                let accepted = Accepted::Tcp(stream, peer, only.clone());
                                if tx.send(accepted).await.is_err() {
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
    // Runs held by a broker that stopped come back to this one; those that do not within
    // owner_timeout are ended.
    // Every owner_timeout: runs held by a broker that stopped and did not come back to this
    // one, and this broker's runs left without a connection, are ended.
    // Every second: the ends of runs that could not be recorded when they came.
    let retrier = {
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                runs::retry_ends(&shared).await;
            }
        })
    };
    let sweeper = {
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let mut suspects = std::collections::HashSet::new();
            loop {
                tokio::time::sleep(shared.live().config.owner_timeout).await;
                let live = shared.live();
                let attached = lock(&shared.attached).keys().cloned().collect();
                let was = std::mem::take(&mut suspects);
                let swept =
                    tokio::task::spawn_blocking(move || runs::sweep(&live, &attached, &was)).await;
                if let Ok((ended, next)) = swept {
                    suspects = next;
                    if ended > 0 {
                        log(&format!(
                            "ended {ended} run lease(s) left without a connection"
                        ));
                    }
                }
            }
        })
    };
    let why = loop {
        tokio::select! {
            _ = terminate.recv() => break "SIGTERM",
            _ = interrupt.recv() => break "SIGINT",
            _ = hangup.recv() => {
                // A reload reads files and may run secret_command: off the runtime's threads.
                let shared = Arc::clone(&shared);
                tokio::task::spawn_blocking(move || shared.reload_now());
            }
            connection = accepted.recv() => match connection {
                // A connection past its pool's bound is dropped: it closes at once.
                Some(Accepted::Unix(stream)) => {
                    let peer = Peer::unix(&stream);
                    if let Some(slot) = shared.socket_slot(&peer) {
                        connect(&shared, stream, peer, slot, None);
                    }
                }
                Some(Accepted::Tcp(stream, address, only)) => {
                    let Ok(permit) = Arc::clone(&shared.tcp_connections).try_acquire_owned() else {
                        refused(&format!(
                            "all {MAX_CONNECTIONS} connections over TCP are taken (client={address})"
                        ));
                        continue;
                    };
                    let permit = Slot::from(permit);
                    match shared.live().tls.clone() {
                        Some(acceptor) => {
                            // The handshake runs in a task of its own, bounded like a request
                            // head.
                            let shared = Arc::clone(&shared);
                            tokio::spawn(async move {
                                let handshake = acceptor.accept(stream);
                                match tokio::time::timeout(HEADER_TIMEOUT, handshake).await {
                                    Ok(Ok(stream)) => {
                                        let peer = Peer::tcp(address);
                                        connect(&shared, stream, peer, permit, only);
                                    }
                                    _ => log(&format!("TLS handshake failed: client={address}")),
                                }
                            });
                        }
                        None => connect(&shared, stream, Peer::tcp(address), permit, only),
                    }
                }
                None => break "no listener left",
            },
        }
    };
    for acceptor in &acceptors {
        acceptor.abort();
    }
    sweeper.abort();
    retrier.abort();
    log(&format!(
        "{why}: stopped accepting; finishing the requests in flight"
    ));
    shared.stopping.send_replace(true);
    lock(&shared.guard).take();
    if tokio::time::timeout(DRAIN, done.recv()).await.is_err() {
        log(&format!(
            "connections still open after {}s: closing them",
            DRAIN.as_secs()
        ));
    }
    // On a shared store, let go of the runs this broker held at once: their wrappers come
    // back to another broker, and a run that does not is owner gone now, not at the end of
    // this broker's session.
    if let Some(backend) = shared.live().store.backend() {
        let _ = tokio::task::spawn_blocking(move || backend.stop()).await;
    }
    log("stopped");
    Ok(())
}

/// The size of `request`'s head as it came: the request line and every header line.
fn head_size<B>(request: &hyper::Request<B>) -> usize {
    let uri = request.uri();
    let target = uri.path_and_query().map_or(1, |p| p.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len());
    let line = request.method().as_str().len() + target + 12;
    request.headers().iter().fold(line, |size, (name, value)| {
        size + name.as_str().len() + value.len() + 4
    })
}

/// An accept that failed (out of descriptors, say): logged, and retried after a pause so that
/// a persistent failure does not spin.
async fn accept_failed(err: &std::io::Error) {
    log(&format!("accept failed: {err}"));
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// How many connections each uid holds on the unix sockets.
type ByUid = Arc<Mutex<HashMap<u32, usize>>>;

/// Says that a connection was refused, and why: at most once a second (a flood of refused
/// connections would flood the log), with the first reason of that second.
fn refused(why: &str) {
    static SAID: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    if SAID.swap(now, Ordering::Relaxed) != now {
        log(&format!("refused a connection: {why}"));
    }
}

/// A connection's place in its pool, given back when the connection ends: when hyper is done
/// with it, and, for a run's connection, when the run's hold on the upgraded socket ends too
/// (each holds one of these).
#[derive(Debug, Clone)]
pub(super) struct Occupied {
    _slot: Arc<Slot>,
}

/// A connection's place in its pool, given back when the connection ends.
#[derive(Debug)]
struct Slot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    /// The uid whose count of connections on the unix sockets this one is in.
    counted: Option<(ByUid, u32)>,
}

impl From<tokio::sync::OwnedSemaphorePermit> for Slot {
    fn from(permit: tokio::sync::OwnedSemaphorePermit) -> Slot {
        Slot {
            _permit: permit,
            counted: None,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some((by_uid, uid)) = &self.counted {
            let mut by_uid = lock(by_uid);
            if let Some(count) = by_uid.get_mut(uid) {
                *count -= 1;
                if *count == 0 {
                    by_uid.remove(uid);
                }
            }
        }
    }
}

impl Shared {
    /// A place on the unix sockets for `peer`: from their pool, then, for an operator, from the
    /// operators' own; for anyone else, only while its uid holds fewer than
    /// [`MAX_CONNECTIONS_PER_UID`].
    fn socket_slot(&self, peer: &Peer) -> Option<Slot> {
        if peer.is_operator(&self.live().config) {
            let permit = Arc::clone(&self.socket_connections)
                .try_acquire_owned()
                .or_else(|_| Arc::clone(&self.operator_connections).try_acquire_owned());
            let Ok(permit) = permit else {
                refused(&format!(
                    "every connection kept for operators is taken ({peer})"
                ));
                return None;
            };
            return Some(Slot::from(permit));
        }
        // A peer without credentials counts as one uid, which no account has.
        let uid = peer.uid.unwrap_or(u32::MAX);
        let mut by_uid = lock(&self.by_uid);
        if by_uid
            .get(&uid)
            .is_some_and(|held| *held >= MAX_CONNECTIONS_PER_UID)
        {
            refused(&format!(
                "{peer} holds {MAX_CONNECTIONS_PER_UID} connections, the most one uid may"
            ));
            return None;
        }
        let Ok(permit) = Arc::clone(&self.socket_connections).try_acquire_owned() else {
            refused(&format!(
                "all {MAX_CONNECTIONS} connections are taken ({peer})"
            ));
            return None;
        };
        *by_uid.entry(uid).or_insert(0) += 1;
        Some(Slot {
            _permit: permit,
            counted: Some((Arc::clone(&self.by_uid), uid)),
        })
    }
}

/// Serves one connection (HTTP/1.1, keep-alive, upgrades for held runs) until it closes or
/// the broker stops: then the request in flight is answered and the connection closed.
fn connect<IO>(shared: &Arc<Shared>, io: IO, peer: Peer, permit: Slot, only: Option<Arc<str>>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Some(guard) = shared.hold_guard() else {
        return;
    };
    let mut stopping = shared.stopping.subscribe();
    let peer = Arc::new(peer);
    let occupied = Occupied {
        _slot: Arc::new(permit),
    };
    let service = {
        let shared = Arc::clone(shared);
        let occupied = occupied.clone();
        service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            let shared = Arc::clone(&shared);
            let peer = Arc::clone(&peer);
            let only = only.clone();
            // A run's connection outlives hyper's, upgraded: it keeps its place in the pool.
            if request.uri().path().starts_with("/v1/runs") {
                request.extensions_mut().insert(occupied.clone());
            }
            async move {
                let reply = if head_size(&request) > MAX_HEAD {
                    let why = format!("the request's head is over {} KiB", MAX_HEAD / 1024);
                    api::error(hyper::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, &why)
                        .map(http_body_util::Either::Left)
                } else if let Some(name) = only {
                    proxy::handle(&shared, &peer, request, Some(&name)).await
                } else if request.uri().path().starts_with("/u/") {
                    proxy::handle(&shared, &peer, request, None).await
                } else {
                    api::handle(&shared, &peer, request)
                        .await
                        .map(http_body_util::Either::Left)
                };
                Ok::<_, std::convert::Infallible>(reply)
            }
        })
    };
    tokio::spawn(async move {
        let _guard = guard;
        let _occupied = occupied;
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .max_buf_size(MAX_BUFFER)
            .serve_connection(TokioIo::new(stall::Stall::new(io, stall::STALL)), service)
            .with_upgrades();
        tokio::pin!(connection);
        tokio::select! {
            _ = connection.as_mut() => {}
            _ = async { stopping.wait_for(|stopping| *stopping).await.map(|_| ()) } => {
                connection.as_mut().graceful_shutdown();
                let _ = connection.await;
            }
        }
    });
}
