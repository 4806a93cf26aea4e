//! The store on etcd, shared by several brokers (`store = "etcd://HOST:PORT,.../PREFIX"`).
//!
//! Layout, under `PREFIX` (default `lease`):
//! - `PREFIX/leases/<id>`: the record, the same TOML as a file of the local store, attached to
//!   an etcd lease that ends [`RETAIN`] after the record's expiry, so that etcd removes an
//!   ended lease's keys on its own (a renewal moves the record to a longer etcd lease).
//! - `PREFIX/leases/<id>/held`: while a broker holds the run's connection, attached to that
//!   broker's session (one etcd lease per broker, kept alive while the broker runs, TTL
//!   `owner_timeout`). The broker dies: its session expires, the holds of its runs go with it,
//!   and every broker sees those runs as `owner gone`. One read of the range `<id>` to
//!   `<id>0` (`0` follows `/`) gets a record and its hold at once.
//!
//! Every read is linearizable (etcd's default), so no grant comes from a stale read; every
//! write compares the revisions it read (a record changed meanwhile is read again and the
//! change made again), so budgets are exact across brokers; every call has a deadline, and a
//! store without quorum fails each decision closed. Only the broker opens this store: its
//! client (tonic, on a runtime of its own) never reaches the `lease` binary.

use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, Result, anyhow, bail};
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, KeyValue,
    PutOptions, TlsOptions, Txn, TxnOp, TxnOpResponse,
};

use super::{Backend, Charged, Loaded, Updated, decode};
use crate::owner::{Held, Owner};
use crate::record::{Charge, Record, State};
use crate::token::LeaseId;

/// How long etcd keeps an ended lease's keys past its expiry, so that `verify` and `status`
/// can still say why it ended; then etcd removes them (`lease gc` removes them sooner).
pub const RETAIN: Duration = Duration::from_secs(60);
/// The deadline of every call to etcd.
const CALL: Duration = Duration::from_secs(3);
/// How long one attempt at a read may take before it is made again: a member that accepts a
/// connection and then does not answer (frozen, partitioned with its socket open) would
/// otherwise hold each read that lands on it for the whole [`CALL`], and fail it.
const READ_ATTEMPT: Duration = Duration::from_millis(750);
/// How many times a write is made again after another writer changed what it read.
const RETRIES: usize = 200;
/// Records read per page when listing.
const PAGE: i64 = 500;
/// What a hold key's name adds to its record's.
const HOLD: &str = "/held";
/// How long one write (an update, a charge, a removal) may take in all, retries included.
const WRITE_PATIENCE: Duration = Duration::from_secs(3);
/// Stripes of the local write locks (see [`Etcd::writing`]).
const STRIPES: usize = 64;

/// Where the store is: `etcd://HOST:PORT[,HOST:PORT...][/PREFIX]`, or `etcd+https://...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// `HOST:PORT` of each member.
    pub endpoints: Vec<String>,
    /// TLS to the members (`etcd+https://`).
    pub tls: bool,
    /// The key prefix, without slashes at either end.
    pub prefix: String,
}

impl Url {
    /// Parses a store URL; the error says what is wrong and what is expected.
    pub fn parse(text: &str) -> Result<Url> {
        const EXPECTED: &str =
            "expected etcd://HOST:PORT[,HOST:PORT...][/PREFIX] or etcd+https://...";
        let (tls, rest) = if let Some(rest) = text.strip_prefix("etcd://") {
            (false, rest)
        } else if let Some(rest) = text.strip_prefix("etcd+https://") {
            (true, rest)
        } else {
            // Not echoed, here or below: a URL may carry a password.
            bail!("not a store URL: {EXPECTED} (the local store is the default)");
        };
        if rest.contains(['@', '?', '#'])
            || rest.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            bail!(
                "a store URL holds hosts, ports and a prefix only (no user, password, query or fragment): {EXPECTED}"
            );
        }
        let (hosts, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let prefix = prefix.trim_end_matches('/');
        let prefix = if prefix.is_empty() { "lease" } else { prefix };
        if prefix
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..")
            || !prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
        {
            bail!(
                "the store's prefix may hold letters, digits, '-', '_', '.' and '/' between names"
            );
        }
        let mut endpoints = Vec::new();
        for host in hosts.split(',') {
            let port = host
                .rsplit_once(':')
                .map(|(name, port)| (name, port.parse::<u16>()));
            match port {
                Some((name, Ok(port))) if !name.is_empty() && port != 0 => {
                    endpoints.push(host.to_owned());
                }
                _ => bail!("{host:?} is not HOST:PORT: {EXPECTED}"),
            }
        }
        Ok(Url {
            endpoints,
            tls,
            prefix: prefix.to_owned(),
        })
    }
}

impl std::fmt::Display for Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "etcd+https" } else { "etcd" };
        write!(f, "{scheme}://{}/{}", self.endpoints.join(","), self.prefix)
    }
}

/// The files of `etcd+https://` (`[etcd]` in the config).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA that signed the members' certificates (else the system's roots).
    pub ca_file: Option<std::path::PathBuf>,
    /// A client certificate, for members that ask for one, with its key.
    pub cert_file: Option<std::path::PathBuf>,
    pub key_file: Option<std::path::PathBuf>,
}

/// The runtime the etcd client runs on: one of its own, so that the store's operations are
/// plain blocking calls from any thread, the broker's blocking threads among them.
fn runtime() -> Result<&'static tokio::runtime::Runtime> {
    static RUNTIME: OnceLock<std::result::Result<tokio::runtime::Runtime, String>> =
        OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("lease-etcd")
                .enable_all()
                .build()
                .map_err(|err| err.to_string())
        })
        .as_ref()
        .map_err(|err| anyhow!("cannot start the etcd client's threads: {err}"))
}

/// This broker's session: the etcd lease its runs' holds are attached to; 0 while it has none
/// (lost, and not yet granted again).
#[derive(Debug)]
struct Session {
    id: AtomicI64,
    ttl: i64,
    /// Counts the sessions opened after the first: a change tells the broker that the runs it
    /// held lost their holds with the old one.
    renewed: tokio::sync::watch::Sender<u64>,
}

/// The store on etcd.
pub struct Etcd {
    shown: String,
    /// `PREFIX/leases/`.
    keys: String,
    client: Client,
    session: Arc<Session>,
    /// This broker as a run's owner (pid, start time, boot id).
    me: Owner,
    /// Local locks, striped by lease id, held by this broker's writes from their read to their
    /// commit; a read waits for a write of the same lease in flight here. So a decision made
    /// here after this broker began to end a lease (its run's connection closed) sees the
    /// lease ended, as on the local store, and writes here to one lease queue up instead of
    /// conflicting in etcd. Each is held for at most [`WRITE_PATIENCE`] plus one call.
    writing: [Stripe; STRIPES],
}

/// A lock that is waited for until a deadline (std's `Mutex` waits without one).
#[derive(Debug, Default)]
struct Stripe {
    taken: std::sync::Mutex<bool>,
    freed: std::sync::Condvar,
}

/// A [`Stripe`] held; let go when dropped.
struct Taken<'a>(&'a Stripe);

impl Stripe {
    /// Takes the stripe, waiting until `deadline` at most.
    fn take(&self, deadline: std::time::Instant) -> Option<Taken<'_>> {
        let mut taken = self
            .taken
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while *taken {
            let left = deadline.checked_duration_since(std::time::Instant::now())?;
            taken = self
                .freed
                .wait_timeout(taken, left)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        *taken = true;
        Some(Taken(self))
    }
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        *self
            .0
            .taken
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = false;
        self.0.freed.notify_one();
    }
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd")
            .field("shown", &self.shown)
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

/// How a written record's key is attached to etcd leases.
enum Attach {
    /// To the etcd lease it is on.
    Keep,
    /// To this one (a new record, or a renewed expiry).
    To(i64),
}

/// A record as read, with what a write compares.
struct Read {
    loaded: Loaded,
    /// The record key's revision (0: missing).
    revision: i64,
    /// The hold key's revision (0: no hold).
    hold_revision: i64,
}

impl Etcd {
    /// Connects to etcd and opens this broker's session (TTL `owner_timeout`), kept alive
    /// until the process ends; `log` reports a lost session.
    pub fn open(url: &Url, tls: &TlsFiles, owner_timeout: Duration, log: fn(&str)) -> Result<Etcd> {
        let shown = url.to_string();
        let scheme = if url.tls { "https" } else { "http" };
        let endpoints: Vec<String> = url
            .endpoints
            .iter()
            .map(|e| format!("{scheme}://{e}"))
            .collect();
        let mut options = ConnectOptions::new()
            .with_connect_timeout(CALL)
            .with_timeout(CALL)
            .with_keep_alive(Duration::from_secs(2), CALL)
            .with_require_leader(true);
        if url.tls {
            options = options.with_tls(tls_options(tls)?);
        } else if tls != &TlsFiles::default() {
            bail!(
                "[etcd] ca_file, cert_file and key_file are for an etcd+https:// store, and {shown} is plain etcd://"
            );
        }
        let rt = runtime()?;
        let client = block(rt, &shown, Kind::Write, move || {
            let (endpoints, options) = (endpoints.clone(), options.clone());
            async move { Client::connect(endpoints, Some(options)).await }
        })?;
        let ttl = i64::try_from(owner_timeout.as_secs().max(2)).unwrap_or(3600);
        let granting = client.clone();
        let granted = block(rt, &shown, Kind::Write, move || {
            let mut client = granting.clone();
            async move { client.lease_grant(ttl, None).await }
        })
        .context("opening this broker's session")?;
        let session = Arc::new(Session {
            id: AtomicI64::new(granted.id()),
            ttl,
            renewed: tokio::sync::watch::Sender::new(0),
        });
        rt.spawn(keep_session(
            client.clone(),
            Arc::clone(&session),
            shown.clone(),
            log,
        ));
        Ok(Etcd {
            keys: format!("{}/leases/", url.prefix),
            shown,
            client,
            session,
            me: Owner::broker(String::new())?,
            writing: std::array::from_fn(|_| Stripe::default()),
        })
    }

    /// The local write lock of `id`'s stripe.
    fn stripe(&self, id: &LeaseId) -> usize {
        // FNV-1a: ids are random already; this only spreads them over the stripes.
        let hash = id.as_str().bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        usize::try_from(hash % STRIPES as u64).unwrap_or(0)
    }

    /// Holds the local write locks of `ids` (in stripe order, so two writers never wait for
    /// each other).
    /// Waits at most [`CALL`] in all: a lease written here for longer than that fails the
    /// waiter closed.
    fn lock(&self, ids: &[LeaseId]) -> Result<Vec<Taken<'_>>> {
        let mut stripes: Vec<usize> = ids.iter().map(|id| self.stripe(id)).collect();
        stripes.sort_unstable();
        stripes.dedup();
        let deadline = std::time::Instant::now() + CALL;
        let mut held = Vec::with_capacity(stripes.len());
        for i in stripes {
            match self.writing[i].take(deadline) {
                Some(guard) => held.push(guard),
                None => bail!(
                    "the store {}: a write of the same lease here took longer than {} s",
                    self.shown,
                    CALL.as_secs()
                ),
            }
        }
        Ok(held)
    }

    fn key(&self, id: &LeaseId) -> String {
        format!("{}{id}", self.keys)
    }

    /// Runs one call to etcd within [`CALL`]: `make` makes it with a client (again, if a
    /// member could not be reached and another may be).
    fn call<T, F, M>(&self, make: M) -> Result<T>
    where
        T: Send + 'static,
        F: Future<Output = std::result::Result<T, etcd_client::Error>> + Send + 'static,
        M: Fn(Client) -> F + Send + 'static,
    {
        let client = self.client.clone();
        block(runtime()?, &self.shown, Kind::Write, move || {
            make(client.clone())
        })
    }

    /// [`Etcd::call`] for a read (a [`Kind::Read`], or a page: [`Kind::Scan`]), which is made
    /// again on any member that cannot answer now (no leader yet, unreachable) while the
    /// deadline allows: a read changes nothing.
    fn call_read<T, F, M>(&self, kind: Kind, make: M) -> Result<T>
    where
        T: Send + 'static,
        F: Future<Output = std::result::Result<T, etcd_client::Error>> + Send + 'static,
        M: Fn(Client) -> F + Send + 'static,
    {
        let client = self.client.clone();
        block(runtime()?, &self.shown, kind, move || make(client.clone()))
    }

    /// Reads a record and its hold, after any write of it in flight here.
    fn read_settled(&self, id: &LeaseId) -> Result<Read> {
        drop(self.lock(std::slice::from_ref(id))?);
        self.read(id)
    }

    /// Reads a record and its hold.
    fn read(&self, id: &LeaseId) -> Result<Read> {
        let key = self.key(id);
        let end = format!("{key}0");
        let mut got = self.call_read(Kind::Read, move |mut client| {
            let (key, end) = (key.clone(), end.clone());
            async move {
                client
                    .get(key, Some(GetOptions::new().with_range(end)))
                    .await
            }
        })?;
        Ok(self.parse(id, &got.take_kvs()))
    }

    /// A record and its hold from the keys of its range.
    fn parse(&self, id: &LeaseId, kvs: &[KeyValue]) -> Read {
        let key = self.key(id);
        let Some(stored) = kvs.iter().find(|kv| kv.key() == key.as_bytes()) else {
            return Read {
                loaded: Loaded::Missing,
                revision: 0,
                hold_revision: 0,
            };
        };
        let hold_key = format!("{key}{HOLD}");
        let hold = kvs.iter().find(|kv| kv.key() == hold_key.as_bytes());
        let mut loaded = decode(stored.value(), id);
        if let Loaded::Found(record) = &mut loaded {
            self.mark_held(record, hold.map(KeyValue::lease));
        }
        Read {
            loaded,
            revision: stored.mod_revision(),
            hold_revision: hold.map_or(0, KeyValue::mod_revision),
        }
    }

    /// Says on a broker's run who holds it, from its hold key's etcd lease (`None`: no hold).
    fn mark_held(&self, record: &mut Record, hold: Option<i64>) {
        if let Some(owner) = record.owner.as_mut().filter(|o| o.broker) {
            let session = self.session.id.load(Ordering::SeqCst);
            owner.held = Some(match hold {
                None => Held::Nowhere,
                Some(lease) if lease == session && session != 0 => Held::Here,
                Some(_) => Held::Elsewhere,
            });
        }
    }

    /// The writes that store `record`: the record, and its hold taken (a run this broker now
    /// holds) or dropped (an ended lease).
    fn writes(&self, record: &Record, attach: Attach) -> Result<Vec<TxnOp>> {
        let key = self.key(&record.id);
        let text = toml::to_string(record).context("encoding the lease record")?;
        let options = match attach {
            Attach::Keep => PutOptions::new().with_ignore_lease(),
            Attach::To(lease) => PutOptions::new().with_lease(lease),
        };
        let hold_key = format!("{key}{HOLD}");
        let mut ops = vec![TxnOp::put(key, text, Some(options))];
        if record.state != State::Active {
            ops.push(TxnOp::delete(hold_key, None));
        } else if let Some(owner) = &record.owner
            && owner.broker
            && owner.held.is_none()
            && self.is_me(owner)
        {
            let session = self.session.id.load(Ordering::SeqCst);
            if session == 0 {
                bail!(
                    "the store {}: this broker has lost its session and not yet opened another",
                    self.shown
                );
            }
            let hold = PutOptions::new().with_lease(session);
            ops.push(TxnOp::put(hold_key, session.to_string(), Some(hold)));
        }
        Ok(ops)
    }

    fn is_me(&self, owner: &Owner) -> bool {
        owner.pid == self.me.pid
            && owner.start_time == self.me.start_time
            && owner.boot_id == self.me.boot_id
    }

    /// Grants an etcd lease that ends [`RETAIN`] after `expires_at`.
    fn grant_until(&self, expires_at: SystemTime) -> Result<i64> {
        let left = expires_at
            .duration_since(SystemTime::now())
            .unwrap_or_default()
            + RETAIN;
        let ttl = i64::try_from(left.as_secs() + 1).unwrap_or(i64::MAX);
        let granted =
            self.call(move |mut client| async move { client.lease_grant(ttl, None).await });
        Ok(granted?.id())
    }

    /// Gives back an etcd lease granted for a write that did not happen (best effort: it
    /// expires on its own anyway).
    fn give_back(&self, lease: i64) {
        let _ = self.call(move |mut client| async move { client.lease_revoke(lease).await });
    }

    /// Runs a transaction: whether its comparisons held (and so its writes were made).
    fn commit(&self, compares: Vec<Compare>, ops: Vec<TxnOp>) -> Result<bool> {
        let txn = Txn::new().when(compares).and_then(ops);
        let done = self.call(move |mut client| {
            let txn = txn.clone();
            async move { client.txn(txn).await }
        });
        Ok(done?.succeeded())
    }

    /// Makes a write: `attempt` reads, decides and commits, and says `None` when another writer
    /// changed what it read (it is made again, on a fresh read), under the local write locks of
    /// `ids`, for at most [`WRITE_PATIENCE`] (then fails closed).
    fn retrying<T>(
        &self,
        ids: &[LeaseId],
        mut attempt: impl FnMut() -> Result<Option<T>>,
    ) -> Result<T> {
        let _writing = self.lock(ids)?;
        let began = std::time::Instant::now();
        for _ in 0..RETRIES {
            if began.elapsed() > WRITE_PATIENCE {
                break;
            }
            if let Some(done) = attempt()? {
                return Ok(done);
            }
        }
        let ids: Vec<&str> = ids.iter().map(LeaseId::as_str).collect();
        bail!(
            "the store {}: lease {} kept changing under every attempt to write it for {} s",
            self.shown,
            ids.join(", "),
            WRITE_PATIENCE.as_secs()
        )
    }

    /// Reads a range page by page, at the revision of the first page (one consistent view).
    fn pages(&self, keys_only: bool, mut each: impl FnMut(&KeyValue)) -> Result<()> {
        let end = range_end(&self.keys);
        let mut from = self.keys.clone().into_bytes();
        let mut revision = 0;
        loop {
            let mut options = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
            if keys_only {
                options = options.with_keys_only();
            }
            if revision != 0 {
                options = options.with_revision(revision);
            }
            let key = from.clone();
            let mut page = self.call_read(Kind::Scan, move |mut client| {
                let (key, options) = (key.clone(), options.clone());
                async move { client.get(key, Some(options)).await }
            })?;
            if revision == 0 {
                revision = page.header().map_or(0, |h| h.revision());
            }
            let more = page.more();
            let kvs = page.take_kvs();
            for kv in &kvs {
                each(kv);
            }
            match kvs.last() {
                Some(last) if more => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => return Ok(()),
            }
        }
    }

    /// The lease id of a record's key (`None` for a hold key or a stranger).
    fn id_of(&self, key: &[u8]) -> Option<LeaseId> {
        let name = std::str::from_utf8(key).ok()?.strip_prefix(&self.keys)?;
        LeaseId::parse(name)
    }
}

impl Backend for Etcd {
    fn shown(&self) -> &str {
        &self.shown
    }

    fn load(&self, id: &LeaseId) -> Result<Loaded> {
        Ok(self.read_settled(id)?.loaded)
    }

    fn insert(&self, record: &Record) -> Result<bool> {
        let lease = self.grant_until(record.expires_at)?;
        let ops = self.writes(record, Attach::To(lease))?;
        let key = self.key(&record.id);
        let fresh = Compare::create_revision(key, CompareOp::Equal, 0);
        let placed = self.commit(vec![fresh], ops);
        if !matches!(placed, Ok(true)) {
            self.give_back(lease);
        }
        placed
    }

    fn update(
        &self,
        id: &LeaseId,
        change: &mut dyn FnMut(&mut Record) -> bool,
    ) -> Result<Updated<()>> {
        self.retrying(std::slice::from_ref(id), || {
            let Read {
                loaded, revision, ..
            } = self.read(id)?;
            let mut record = match loaded {
                Loaded::Found(record) => record,
                Loaded::Missing => return Ok(Some(Updated::Missing)),
                Loaded::Corrupt(why) => return Ok(Some(Updated::Corrupt(why))),
            };
            let expired_at = record.expires_at;
            if !change(&mut record) {
                return Ok(Some(Updated::Found(record, ())));
            }
            let (attach, granted) = if record.expires_at > expired_at {
                let lease = self.grant_until(record.expires_at)?;
                (Attach::To(lease), Some(lease))
            } else {
                (Attach::Keep, None)
            };
            let ops = self.writes(&record, attach)?;
            let same = Compare::mod_revision(self.key(id), CompareOp::Equal, revision);
            if self.commit(vec![same], ops)? {
                return Ok(Some(Updated::Found(record, ())));
            }
            if let Some(lease) = granted {
                self.give_back(lease);
            }
            Ok(None)
        })
    }

    fn charge(
        &self,
        chain: &[LeaseId],
        check: &mut dyn FnMut(&Record) -> Option<Charge>,
    ) -> Result<Charged<()>> {
        if chain.is_empty() {
            return Ok(Charged::Paid);
        }
        self.retrying(chain, || {
            // The whole chain in one round trip: a transaction of reads only.
            let reads: Vec<TxnOp> = chain
                .iter()
                .map(|id| {
                    let key = self.key(id);
                    let end = format!("{key}0");
                    TxnOp::get(key, Some(GetOptions::new().with_range(end)))
                })
                .collect();
            let reads = Txn::new().and_then(reads);
            let answer = self.call_read(Kind::Read, move |mut client| {
                let reads = reads.clone();
                async move { client.txn(reads).await }
            })?;
            let mut compares = Vec::with_capacity(chain.len());
            let mut ops = Vec::with_capacity(chain.len());
            for (id, response) in chain.iter().zip(answer.op_responses()) {
                let TxnOpResponse::Get(got) = response else {
                    bail!("the store {}: an unexpected answer to a read", self.shown);
                };
                let Read {
                    loaded,
                    revision,
                    hold_revision,
                } = self.parse(id, got.kvs());
                let mut record = match loaded {
                    Loaded::Found(record) => record,
                    Loaded::Missing => return Ok(Some(Charged::Missing(id.clone()))),
                    Loaded::Corrupt(why) => return Ok(Some(Charged::Corrupt(id.clone(), why))),
                };
                let Some(charge) = check(&record) else {
                    return Ok(Some(Charged::Refused(())));
                };
                record.spend(&charge);
                let key = self.key(id);
                // A run's hold too: a run whose broker's session ended meanwhile is owner gone,
                // and is read again.
                if record.owner.as_ref().is_some_and(|o| o.broker) {
                    let hold = format!("{key}{HOLD}");
                    compares.push(Compare::mod_revision(hold, CompareOp::Equal, hold_revision));
                }
                compares.push(Compare::mod_revision(key, CompareOp::Equal, revision));
                ops.extend(self.writes(&record, Attach::Keep)?);
            }
            Ok(self.commit(compares, ops)?.then_some(Charged::Paid))
        })
    }

    fn records(&self, skipped: &mut dyn FnMut(&LeaseId, &str)) -> Result<Vec<Record>> {
        let mut records: Vec<(Record, Option<i64>)> = Vec::new();
        self.pages(false, |kv| {
            if let Some(id) = self.id_of(kv.key()) {
                match decode(kv.value(), &id) {
                    Loaded::Found(record) => records.push((record, None)),
                    Loaded::Corrupt(why) => skipped(&id, &why),
                    Loaded::Missing => {}
                }
            } else if let Some(record) = std::str::from_utf8(kv.key())
                .ok()
                .and_then(|k| k.strip_suffix(HOLD))
                .and_then(|k| self.id_of(k.as_bytes()))
                .and_then(|id| records.last_mut().filter(|(r, _)| r.id == id))
            {
                // A hold comes right after its record.
                record.1 = Some(kv.lease());
            }
        })?;
        Ok(records
            .into_iter()
            .map(|(mut record, hold)| {
                self.mark_held(&mut record, hold);
                record
            })
            .collect())
    }

    fn ids(&self) -> Result<Vec<LeaseId>> {
        let mut ids = Vec::new();
        self.pages(true, |kv| ids.extend(self.id_of(kv.key())))?;
        Ok(ids)
    }

    fn sessions(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.session.renewed.subscribe())
    }

    fn stop(&self) {
        let session = self.session.id.swap(0, Ordering::SeqCst);
        if session != 0 {
            let _ = self.call(move |mut client| async move { client.lease_revoke(session).await });
        }
    }

    fn remove_if(
        &self,
        id: &LeaseId,
        should_remove: &mut dyn FnMut(&Loaded) -> bool,
    ) -> Result<bool> {
        self.retrying(std::slice::from_ref(id), || {
            let Read {
                loaded, revision, ..
            } = self.read(id)?;
            if matches!(loaded, Loaded::Missing) || !should_remove(&loaded) {
                return Ok(Some(false));
            }
            // The record and its hold, by name: nothing else under the prefix.
            let key = self.key(id);
            let hold = format!("{key}{HOLD}");
            let same = Compare::mod_revision(key.clone(), CompareOp::Equal, revision);
            let deletes = vec![TxnOp::delete(key, None), TxnOp::delete(hold, None)];
            Ok(self.commit(vec![same], deletes)?.then_some(true))
        })
    }
}

/// The key after every key that starts with `prefix`.
fn range_end(prefix: &str) -> String {
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    String::from_utf8_lossy(&end).into_owned()
}

/// What a call to etcd is, for how it is made again (see [`block`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// It changes something: made again only where it certainly never reached raft.
    Write,
    /// It reads a few keys: made again on any `Unavailable`, and after [`READ_ATTEMPT`].
    Read,
    /// It reads a page of up to [`PAGE`] records: made again on any `Unavailable` only (a
    /// large page may take a while to answer; asking again would only add load).
    Scan,
}

/// Runs the call `make` makes on the etcd runtime within [`CALL`], and waits for it on this
/// thread. A call that could not connect to its member (so the request never reached etcd) is
/// made again while the deadline allows, so that another member answers it, and so is one that
/// a member without a leader refused; any other failure is final (a write that failed otherwise
/// may have been applied), except for a read, which is made again on any `Unavailable`, and a
/// [`Kind::Read`] also after [`READ_ATTEMPT`] without an answer (the client balances over the
/// members: usually on another).
fn block<T, F, M>(rt: &tokio::runtime::Runtime, shown: &str, kind: Kind, make: M) -> Result<T>
where
    T: Send + 'static,
    F: Future<Output = std::result::Result<T, etcd_client::Error>> + Send + 'static,
    M: Fn() -> F + Send + 'static,
{
    let (done, answer) = std::sync::mpsc::sync_channel(1);
    rt.spawn(async move {
        let deadline = tokio::time::Instant::now() + CALL;
        let again = Duration::from_millis(50);
        // The error that made the call be made again: if the deadline cuts the next attempt
        // short (one started just before it, say), that error is said too (the attempt cut
        // may have been applied: it is not said to have failed as the one before did).
        let mut last = None;
        let answered = loop {
            // Asked again only while another whole attempt fits; the last one has what is left.
            let now = tokio::time::Instant::now();
            let attempt = if kind == Kind::Read && now + 2 * READ_ATTEMPT <= deadline {
                now + READ_ATTEMPT
            } else {
                deadline
            };
            match tokio::time::timeout_at(attempt, make()).await {
                Ok(Err(etcd_client::Error::GRpcStatus(status)))
                    if status.code() == tonic::Code::Unavailable
                        && (kind != Kind::Write || never_proposed(status.message()))
                        && tokio::time::Instant::now() + again < deadline =>
                {
                    last = Some(etcd_client::Error::GRpcStatus(status));
                    tokio::time::sleep(again).await;
                }
                Err(_) if tokio::time::Instant::now() + again < deadline => {}
                other => break other,
            }
        };
        let _ = done.send((answered, last));
    });
    let late = format!(
        "the store {shown} did not answer within {} s",
        CALL.as_secs()
    );
    match answer.recv_timeout(CALL + Duration::from_secs(1)) {
        Ok((Ok(Ok(value)), _)) => Ok(value),
        Ok((Ok(Err(err)), _)) => Err(anyhow!("the store {shown}: {}", one_line(&err))),
        Ok((Err(_), Some(before))) => Err(anyhow!("{late} (before that: {})", one_line(&before))),
        Ok((Err(_), None)) | Err(_) => Err(anyhow!("{late}")),
    }
}

/// Whether a write that failed with `Unavailable` and this message certainly never reached
/// raft: it could not connect, or the member had no leader to propose it to (`require_leader`).
fn never_proposed(message: &str) -> bool {
    message.contains("connect") || message.contains("no leader")
}

/// An etcd error on one line (gRPC statuses carry their details on several), with its causes:
/// a failed connection says only "transport error" until its source says why (a refused
/// connection, a CA that did not sign the member's, a key that is not the certificate's).
fn one_line(err: &etcd_client::Error) -> String {
    use std::error::Error as _;
    // (etcd_client::Error has no source of its own: the causes are its variants' errors'.)
    let (mut text, mut cause) = match err {
        etcd_client::Error::GRpcStatus(status) => (status.message().to_owned(), status.source()),
        etcd_client::Error::TransportError(transport) => (err.to_string(), transport.source()),
        etcd_client::Error::IoError(io) => (err.to_string(), io.source()),
        other => (other.to_string(), None),
    };
    while let Some(error) = cause {
        let said = error.to_string();
        if !text.contains(&said) {
            text = format!("{text}: {said}");
        }
        cause = error.source();
    }
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn tls_options(files: &TlsFiles) -> Result<TlsOptions> {
    // (tonic copies what it is given; the copy read here is zeroed when dropped.)
    let read = |path: &std::path::Path| {
        crate::config::read_pem(path).with_context(|| format!("reading {}", path.display()))
    };
    let mut options = TlsOptions::new();
    if let Some(ca) = &files.ca_file {
        options = options.ca_certificate(Certificate::from_pem(read(ca)?));
    } else {
        options = options.with_native_roots();
    }
    match (&files.cert_file, &files.key_file) {
        (Some(cert), Some(key)) => {
            let key_pem = crate::config::read_private_pem(key)
                .with_context(|| format!("reading {}", key.display()))?;
            options = options.identity(Identity::from_pem(read(cert)?, key_pem));
        }
        (None, None) => {}
        _ => bail!("[etcd] cert_file and key_file go together"),
    }
    Ok(options)
}

/// Keeps this broker's session alive; when etcd says it is gone (the broker could not reach
/// etcd for longer than its TTL), opens another. The runs it held are `owner gone` by then,
/// for every broker.
async fn keep_session(mut client: Client, session: Arc<Session>, shown: String, log: fn(&str)) {
    let every = Duration::from_secs(u64::try_from(session.ttl).unwrap_or(3) / 3)
        .max(Duration::from_millis(500));
    loop {
        let id = session.id.load(Ordering::SeqCst);
        if id == 0 {
            match tokio::time::timeout(CALL, client.lease_grant(session.ttl, None)).await {
                Ok(Ok(granted)) => {
                    session.id.store(granted.id(), Ordering::SeqCst);
                    session.renewed.send_modify(|n| *n += 1);
                    log(&format!("opened a new session on the store {shown}"));
                }
                _ => tokio::time::sleep(every).await,
            }
            continue;
        }
        let lost = || {
            session.id.store(0, Ordering::SeqCst);
            log(&format!(
                "lost its session on the store {shown}: the runs it held are owner gone"
            ));
        };
        let Ok(Ok((mut keeper, mut answers))) =
            tokio::time::timeout(CALL, client.lease_keep_alive(id)).await
        else {
            // A keep-alive cannot start on a session etcd has let go (the client says so only
            // in an error's words): asked plainly, etcd answers a TTL of -1 for it.
            if session_gone(&mut client, id).await {
                lost();
            } else {
                tokio::time::sleep(every).await;
            }
            continue;
        };
        loop {
            if !matches!(
                tokio::time::timeout(CALL, keeper.keep_alive()).await,
                Ok(Ok(()))
            ) {
                break;
            }
            match tokio::time::timeout(CALL, answers.message()).await {
                Ok(Ok(Some(answer))) if answer.ttl() > 0 => {}
                Ok(Ok(Some(_))) => {
                    lost();
                    break;
                }
                _ => break,
            }
            tokio::time::sleep(every).await;
        }
        // The stream ended: open another, not at once.
        tokio::time::sleep(every).await;
    }
}

/// Whether etcd says the session `id` is gone (expired, revoked): not when it cannot be asked.
async fn session_gone(client: &mut Client, id: i64) -> bool {
    match tokio::time::timeout(CALL, client.lease_time_to_live(id, None)).await {
        // -1: no such lease. A live one with under a second left answers 0.
        Ok(Ok(answer)) => answer.ttl() < 0,
        Ok(Err(err)) => err.to_string().contains("requested lease not found"),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_url_names_members_and_a_prefix() {
        let url = Url::parse("etcd://127.0.0.1:2379,[::1]:2380/team/a").expect("parses");
        assert_eq!(url.endpoints, ["127.0.0.1:2379", "[::1]:2380"]);
        assert_eq!(url.prefix, "team/a");
        assert!(!url.tls);
        assert_eq!(url.to_string(), "etcd://127.0.0.1:2379,[::1]:2380/team/a");
        let url = Url::parse("etcd+https://e1:2379").expect("parses");
        assert!(url.tls);
        assert_eq!(url.prefix, "lease");
    }

    #[test]
    fn a_bad_store_url_is_refused_with_what_is_expected() {
        for bad in [
            "redis://h:1",
            "https://root:pw@h:2379",
            "etcd://",
            "etcd://h",
            "etcd://h:0",
            "etcd://h:99999",
            "etcd://user:pw@h:1",
            "etcd://h:1?x=1",
            "etcd://h:1/a/../b",
            "etcd://h:1//a",
            "etcd://h:1,",
        ] {
            let err = Url::parse(bad).expect_err(bad).to_string();
            assert!(
                err.contains("etcd://HOST:PORT") || err.contains("prefix"),
                "{bad}: {err}"
            );
            assert!(!err.contains("pw"), "{bad}: {err}");
        }
    }

    /// A read that a member holds without an answer is made again before the call's deadline
    /// (here the second attempt answers); a write is not (it may have been applied), nor a
    /// page of a list: they wait for their answer until the deadline.
    #[test]
    fn a_read_left_unanswered_is_made_again_and_a_write_is_not() {
        use std::sync::atomic::AtomicUsize;
        let rt = runtime().expect("runtime");
        let attempts = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&attempts);
        let started = std::time::Instant::now();
        let answered = block(rt, "etcd://test", Kind::Read, move || {
            let first = counted.fetch_add(1, Ordering::SeqCst) == 0;
            async move {
                if first {
                    std::future::pending::<()>().await;
                }
                Ok::<u8, etcd_client::Error>(7)
            }
        });
        assert_eq!(answered.expect("answered"), 7);
        assert_eq!(attempts.load(Ordering::SeqCst), 2);
        assert!(started.elapsed() < CALL, "{:?}", started.elapsed());
        // A write, and a page of a list (slow to answer when large), wait for their answer.
        let waits: Vec<_> = [Kind::Write, Kind::Scan]
            .into_iter()
            .map(|kind| {
                std::thread::spawn(move || {
                    let attempts = Arc::new(AtomicUsize::new(0));
                    let counted = Arc::clone(&attempts);
                    let answer = block(rt, "etcd://test", kind, move || {
                        counted.fetch_add(1, Ordering::SeqCst);
                        async move {
                            std::future::pending::<()>().await;
                            Ok::<u8, etcd_client::Error>(7)
                        }
                    });
                    (kind, answer, attempts.load(Ordering::SeqCst))
                })
            })
            .collect();
        for wait in waits {
            let (kind, answer, attempts) = wait.join().expect("joined");
            assert_eq!(
                answer.expect_err("no answer").to_string(),
                "the store etcd://test did not answer within 3 s",
                "{kind:?}"
            );
            assert_eq!(attempts, 1, "{kind:?}");
        }
    }

    /// A call refused a connection, then made again and cut short by the deadline (as one
    /// started just before it is): the refusal is said too, not only that nothing answered in
    /// time (and not as the outcome: the attempt cut short may have been applied).
    #[test]
    fn a_call_held_after_a_refused_connection_gives_the_refusal_as_its_reason() {
        use std::sync::atomic::AtomicUsize;
        let rt = runtime().expect("runtime");
        let attempts = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&attempts);
        let answer = block(rt, "etcd://test", Kind::Write, move || {
            let first = counted.fetch_add(1, Ordering::SeqCst) == 0;
            async move {
                if first {
                    return Err(etcd_client::Error::GRpcStatus(tonic::Status::unavailable(
                        "tcp connect error: Connection refused (os error 111)",
                    )));
                }
                std::future::pending::<()>().await;
                Ok::<u8, etcd_client::Error>(7)
            }
        });
        assert_eq!(
            answer.expect_err("refused").to_string(),
            "the store etcd://test did not answer within 3 s (before that: tcp connect error: Connection refused (os error 111))"
        );
        assert_eq!(attempts.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn the_range_of_a_prefix_ends_after_every_key_in_it() {
        assert_eq!(range_end("lease/leases/"), "lease/leases0");
    }
}
