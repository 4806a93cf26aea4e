//! Deciding whether a token grants an action: the lease, its ancestors, and its budgets.
//!
//! A token's record is found by the id derived from its hash: one read. A nested lease is valid
//! only while every ancestor is, so the chain up to the root is read too (one record per level).
//! Leases with use budgets are charged under their records' locks, so concurrent verifies never
//! grant more than the budget. Anything that cannot be confirmed denies: fail closed.

use std::collections::{HashMap, HashSet};
use std::time::SystemTime;

use anyhow::Result;
use serde::Serialize;

use crate::audit::{Event, EventKind};
use crate::record::{Record, Status, rfc3339};
use crate::scope::Action;
use crate::store::{Change, Charged, Loaded, Store, Updated};
use crate::token::{LeaseId, Token};

/// The deepest chain of nested leases that is followed; a longer one (or a loop, which only a
/// tampered store can hold) fails closed.
pub const MAX_DEPTH: usize = 10_000;

/// Why a lease grants an action, or why not: the words `verify` prints, `--json` carries, the
/// trail records and `list` shows. The one vocabulary every decision is made in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The action is granted.
    Granted,
    /// No lease in the store matches the token.
    Unknown,
    /// Not a lease token at all (its checksum fails): the store is not consulted.
    Malformed,
    /// The lease is past its expiry.
    Expired,
    /// The lease was revoked.
    Revoked,
    /// Its `lease run`, or the command it started, is gone.
    OwnerGone,
    /// The lease (or an ancestor) does not grant the action.
    OutOfScope,
    /// A use budget on the way is spent.
    UsedUp,
    /// An ancestor was revoked.
    ParentRevoked,
    /// An ancestor is past its expiry.
    ParentExpired,
    /// An ancestor's `lease run` is gone.
    ParentOwnerGone,
    /// An ancestor is no longer on record.
    ParentGone,
    /// A record on the way cannot be read as a record.
    CorruptRecord,
    /// No token was presented (verify cannot decide).
    NoToken,
    /// Something else went wrong (verify cannot decide).
    Error,
}

impl Reason {
    /// Every reason, in the order of the enum.
    pub const ALL: [Reason; 15] = [
        Reason::Granted,
        Reason::Unknown,
        Reason::Malformed,
        Reason::Expired,
        Reason::Revoked,
        Reason::OwnerGone,
        Reason::OutOfScope,
        Reason::UsedUp,
        Reason::ParentRevoked,
        Reason::ParentExpired,
        Reason::ParentOwnerGone,
        Reason::ParentGone,
        Reason::CorruptRecord,
        Reason::NoToken,
        Reason::Error,
    ];

    /// The word for this reason.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Granted => "granted",
            Reason::Unknown => "unknown",
            Reason::Malformed => "malformed",
            Reason::Expired => "expired",
            Reason::Revoked => "revoked",
            Reason::OwnerGone => "owner gone",
            Reason::OutOfScope => "out of scope",
            Reason::UsedUp => "used up",
            Reason::ParentRevoked => "parent revoked",
            Reason::ParentExpired => "parent expired",
            Reason::ParentOwnerGone => "parent owner gone",
            Reason::ParentGone => "parent gone",
            Reason::CorruptRecord => "corrupt record",
            Reason::NoToken => "no token",
            Reason::Error => "error",
        }
    }

    /// Whether the token itself is no credential (none, not a token, no lease, or its lease
    /// ended): what HTTP answers `401` for, where a live lease refused is a `403`.
    pub fn is_no_credential(self) -> bool {
        matches!(
            self,
            Reason::Unknown
                | Reason::Malformed
                | Reason::Expired
                | Reason::Revoked
                | Reason::OwnerGone
                | Reason::NoToken
        )
    }

    /// The reason a nested lease gets when an ancestor is dead for this reason.
    pub fn of_parent(self) -> Reason {
        match self {
            Reason::Revoked => Reason::ParentRevoked,
            Reason::Expired => Reason::ParentExpired,
            Reason::OwnerGone => Reason::ParentOwnerGone,
            other => other,
        }
    }

    /// The reason a record's own status gives, if it cannot grant.
    pub fn of_status(status: Status) -> Option<Reason> {
        match status {
            Status::Active => None,
            Status::Expired => Some(Reason::Expired),
            Status::Revoked => Some(Reason::Revoked),
            Status::OwnerGone => Some(Reason::OwnerGone),
        }
    }

    /// The reason for the lease `dead` when it is the leaf itself (depth 0) or an ancestor.
    fn at_depth(self, depth: usize) -> Reason {
        if depth == 0 { self } else { self.of_parent() }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Reason {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl std::str::FromStr for Reason {
    type Err = anyhow::Error;

    fn from_str(word: &str) -> Result<Reason> {
        Reason::ALL
            .into_iter()
            .find(|reason| reason.as_str() == word)
            .ok_or_else(|| anyhow::anyhow!("'{}' is not a reason", word.escape_debug()))
    }
}

impl<'de> serde::Deserialize<'de> for Reason {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Reason, D::Error> {
        let word = String::deserialize(deserializer)?;
        word.parse().map_err(serde::de::Error::custom)
    }
}

/// Why a token's lease cannot grant anything: the reason, a sentence for people, and the
/// token's own record when it was found.
#[derive(Debug, Clone)]
pub struct Denial {
    /// The reason.
    pub reason: Reason,
    /// A sentence for people, printed after the reason.
    pub detail: String,
    /// The token's own lease, if it was found.
    pub leaf: Option<Record>,
}

impl Denial {
    fn new(reason: Reason, detail: String, leaf: Option<&Record>) -> Denial {
        Denial {
            reason,
            detail,
            leaf: leaf.cloned(),
        }
    }
}

/// Where a token's lease stands, all things considered but an action: what verify, status,
/// renew and a nested lease's planning all start from.
// Returned once per decision and matched at once; boxing would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Standing {
    /// The lease and every ancestor can grant: the lease first, then its parent, up to the root.
    Live(Vec<Record>),
    /// The lease cannot grant anything (including: no lease matches the token).
    Dead(Denial),
}

/// The answer, as `verify --json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    /// Whether the action is granted.
    pub granted: bool,
    /// `granted`, or why not.
    pub reason: Reason,
    /// The lease id, when a lease was found.
    pub id: Option<LeaseId>,
    /// The lease's expiry (RFC 3339), when a lease was found.
    pub expires_at: Option<String>,
    /// A sentence for people, printed after the reason on a denial.
    #[serde(skip)]
    pub detail: String,
    /// The lease's parent, for the audit trail.
    #[serde(skip)]
    pub parent: Option<LeaseId>,
    /// The lease's run, for the audit trail.
    #[serde(skip)]
    pub run: Option<LeaseId>,
    /// The granted lease's scopes, comma-joined (the broker's `X-Lease-Scope`); never on a
    /// denial.
    #[serde(skip)]
    pub scope: Option<String>,
}

impl Decision {
    /// A denial, naming the lease if one was found.
    pub fn deny(reason: Reason, detail: String, record: Option<&Record>) -> Decision {
        Decision::about(record, reason, detail)
    }

    fn grant(record: &Record) -> Decision {
        Decision {
            scope: Some(crate::scope::join(&record.scope)),
            ..Decision::about(Some(record), Reason::Granted, String::new())
        }
    }

    fn about(record: Option<&Record>, reason: Reason, detail: String) -> Decision {
        Decision {
            granted: reason == Reason::Granted,
            reason,
            id: record.map(|r| r.id.clone()),
            expires_at: record.map(|r| rfc3339::format(r.expires_at)),
            detail,
            parent: record.and_then(|r| r.parent.clone()),
            run: record.and_then(|r| r.run.clone()),
            scope: None,
        }
    }
}

impl From<Denial> for Decision {
    fn from(denial: Denial) -> Decision {
        Decision::deny(denial.reason, denial.detail, denial.leaf.as_ref())
    }
}

/// Finds the lease of `token` and its ancestors, and whether all of them are live at `now`.
/// A lease found past its expiry is marked `expired` on the spot, so that it stays expired even
/// if the clock is set back.
pub fn standing(store: &Store, token: &Token, now: SystemTime) -> Result<Standing> {
    let (standing, expired) = read_standing(store, token, now)?;
    if let Some(record) = &expired {
        mark_expired(store, record, now);
    }
    Ok(standing)
}

/// [`standing`] without writing: also returns the lease found past its expiry, which is still
/// to be marked.
fn read_standing(
    store: &Store,
    token: &Token,
    now: SystemTime,
) -> Result<(Standing, Option<Record>)> {
    read_standing_within(store, token, now, usize::MAX)
}

/// The error of a walk that would read more than the ancestors it was allowed.
#[derive(Debug)]
struct Deeper;

impl std::fmt::Display for Deeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the chain is deeper than this walk reads")
    }
}

impl std::error::Error for Deeper {}

/// [`read_standing`], reading at most `ancestors` records past the leaf (else [`Deeper`]).
fn read_standing_within(
    store: &Store,
    token: &Token,
    now: SystemTime,
    mut ancestors: usize,
) -> Result<(Standing, Option<Record>)> {
    let hash = token.hash();
    let id = hash.id();
    let leaf = match store.find(&hash)? {
        Loaded::Found(record) => record,
        Loaded::Missing => {
            let detail = "no lease matches this token".to_owned();
            return Ok((
                Standing::Dead(Denial::new(Reason::Unknown, detail, None)),
                None,
            ));
        }
        Loaded::Corrupt(why) => {
            let detail = format!("lease {id}: {why}");
            let denial = Denial::new(Reason::CorruptRecord, detail, None);
            return Ok((Standing::Dead(denial), None));
        }
    };
    walk(leaf, now, |id| {
        ancestors = ancestors.checked_sub(1).ok_or(Deeper)?;
        store.load(id)
    })
}

/// Marks a lease found past its expiry `expired`, once, and records that in the trail. The
/// answer is a denial either way: a store that cannot be written changes nothing.
fn mark_expired(store: &Store, record: &Record, now: SystemTime) {
    let marked = store.update(&record.id, |r| Change::when(r.mark_expired(now)));
    if matches!(marked, Ok(Updated::Found(_, true))) {
        let mut event = Event::new(EventKind::Expired, Some(record));
        event.reason = Some("ttl".to_owned());
        let _ = store.audit().append(&event);
    }
}

/// Follows `leaf` up to its root through `load`, and says whether every lease on the way is
/// live at `now`. Also returns the lease found past its expiry, if that is what ended the chain.
pub fn walk(
    leaf: Record,
    now: SystemTime,
    mut load: impl FnMut(&LeaseId) -> Result<Loaded>,
) -> Result<(Standing, Option<Record>)> {
    let mut records: Vec<Record> = Vec::new();
    // The ids on the chain so far: a loop is found in one look, not by reading them all at
    // each step (a chain thousands deep would take millions).
    let mut seen: HashSet<LeaseId> = HashSet::new();
    let mut next = Some(leaf);
    while let Some(record) = next.take() {
        let depth = records.len();
        let leaf = records.first().unwrap_or(&record);
        let dead = |reason, detail| Standing::Dead(Denial::new(reason, detail, Some(leaf)));
        if let Some((reason, detail)) = why_dead(&record, now) {
            let culprit = (reason == Reason::Expired).then(|| record.clone());
            let detail = if depth == 0 {
                detail
            } else {
                format!("{detail}, and lease {} is nested in it", leaf.id)
            };
            return Ok((dead(reason.at_depth(depth), detail), culprit));
        }
        if depth >= MAX_DEPTH {
            let detail = format!("lease {} is nested too deep", record.id);
            return Ok((dead(Reason::CorruptRecord, detail), None));
        }
        if let Some(parent_id) = &record.parent {
            match load(parent_id)? {
                Loaded::Found(parent) if parent.id == *parent_id => {
                    if parent.id == record.id || seen.contains(&parent.id) {
                        let detail = format!("lease {} is its own ancestor", record.id);
                        return Ok((dead(Reason::CorruptRecord, detail), None));
                    }
                    next = Some(parent);
                }
                Loaded::Corrupt(why) => {
                    let detail = format!("parent lease {parent_id}: {why}");
                    return Ok((dead(Reason::CorruptRecord, detail), None));
                }
                _ => {
                    let detail = format!(
                        "parent lease {parent_id} of lease {} is no longer on record",
                        record.id
                    );
                    return Ok((dead(Reason::ParentGone, detail), None));
                }
            }
        }
        seen.insert(record.id.clone());
        records.push(record);
    }
    Ok((Standing::Live(records), None))
}

/// Why a lease on its own (ignoring its ancestors) cannot grant anything at `now`, if so.
pub fn own_reason(record: &Record, now: SystemTime) -> Option<Reason> {
    Reason::of_status(record.status(now))
}

/// Why a lease cannot grant anything at `now`, if so: its reason and a sentence.
fn why_dead(record: &Record, now: SystemTime) -> Option<(Reason, String)> {
    let id = &record.id;
    let at = rfc3339::format;
    let reason = own_reason(record, now)?;
    let detail = match reason {
        Reason::Revoked => {
            let when = record
                .revoked_at
                .map(|t| format!(" at {}", at(t)))
                .unwrap_or_default();
            format!("lease {id} was revoked{when}")
        }
        Reason::Expired => format!("lease {id} expired at {}", at(record.expires_at)),
        Reason::OwnerGone if record.state == crate::record::State::OwnerGone => {
            let when = record
                .revoked_at
                .map(|t| format!(" at {}", at(t)))
                .unwrap_or_default();
            format!("the run of lease {id} lost its connection to the broker{when}")
        }
        _ => record
            .owner
            .as_ref()
            .and_then(|owner| owner.gone_because(id))
            .unwrap_or_else(|| format!("the lease run that owned lease {id} has ended")),
    };
    Some((reason, detail))
}

/// "lease" or "its parent lease": how a denial names the lease on the chain that decided it.
fn whose(decider: &Record, leaf: &Record) -> &'static str {
    if decider.id == leaf.id {
        "lease"
    } else {
        "its parent lease"
    }
}

/// Whether every use of the chain is spent (a lease-wide budget at zero, or every scope's
/// budget at zero, on the lease or an ancestor): such a lease can grant nothing any more.
pub fn spent(records: &[Record]) -> Option<Denial> {
    let leaf = records.first()?;
    let spent = records.iter().find(|r| is_spent(r))?;
    let detail = format!("{} {} has no uses left", whose(spent, leaf), spent.id);
    Some(Denial::new(Reason::UsedUp, detail, Some(leaf)))
}

/// Whether every use of `record` itself is spent: its lease-wide budget, or every scope's.
fn is_spent(record: &Record) -> bool {
    record.uses_left == Some(0)
        || !record.scope.is_empty()
            && record
                .scope
                .iter()
                .all(|s| record.scope_uses_left.get(s.as_str()) == Some(&0))
}

/// Every record with its standing, the way verify sees it: `None` while it can grant, or why
/// not (a nested lease whose parent was revoked is `parent revoked`). For `list`.
///
/// Each record's chain is resolved once and remembered, so a record's state comes from its own
/// and its parent's: linear in the number of records, however deep they nest (walking every
/// chain from its leaf, as verify does for one token, is quadratic in the depth). The result is
/// what [`walk`] gives for each record; the tests check the two agree.
pub fn standings(records: Vec<Record>, now: SystemTime) -> Vec<(Record, Option<Reason>)> {
    let index: HashMap<&str, usize> = records
        .iter()
        .enumerate()
        .map(|(i, r)| (r.id.as_str(), i))
        .collect();
    let mut resolved: Vec<Option<Resolved>> = vec![None; records.len()];
    let mut waiting = vec![false; records.len()];
    for start in 0..records.len() {
        // The records whose state waits on their parent's, leaf first.
        let mut pending: Vec<usize> = Vec::new();
        let mut at = start;
        let mut found = loop {
            if let Some(done) = resolved[at] {
                break done;
            }
            let record = &records[at];
            if let Some(reason) = own_reason(record, now) {
                break Resolved::dead_at(reason, 0);
            }
            let parent = match &record.parent {
                None => break Resolved::live(0),
                Some(parent) => index.get(parent.as_str()).copied(),
            };
            let Some(parent) = parent else {
                break Resolved::broken(Reason::ParentGone, 0);
            };
            // A parent that is already waiting closes a loop: only a tampered store holds one.
            if parent == at || waiting[parent] {
                break Resolved::broken(Reason::CorruptRecord, 0);
            }
            pending.push(at);
            waiting[at] = true;
            at = parent;
        };
        resolved[at] = Some(found);
        while let Some(child) = pending.pop() {
            found = found.child();
            resolved[child] = Some(found);
            waiting[child] = false;
        }
    }
    let mut states: Vec<Option<Reason>> = resolved
        .into_iter()
        .map(|r| r.map_or(Some(Reason::CorruptRecord), Resolved::reason))
        .collect();
    // As verify: a live chain with every use of a lease on it spent grants nothing (`used up`).
    // Each record's answer is its own or its parent's, remembered: linear again.
    let mut spent: Vec<Option<bool>> = vec![None; records.len()];
    for start in 0..records.len() {
        let mut pending = Vec::new();
        let mut at = start;
        let found = loop {
            if let Some(done) = spent[at] {
                break done;
            }
            if states[at].is_some() || is_spent(&records[at]) {
                break states[at].is_none();
            }
            pending.push(at);
            // Live, so its chain is on record, live and free of loops up to a root.
            match records[at].parent.as_deref().and_then(|p| index.get(p)) {
                Some(&parent) => at = parent,
                None => break false,
            }
        };
        spent[at] = Some(found);
        while let Some(child) = pending.pop() {
            spent[child] = Some(found);
        }
    }
    for (state, spent) in states.iter_mut().zip(spent) {
        if state.is_none() && spent == Some(true) {
            *state = Some(Reason::UsedUp);
        }
    }
    records.into_iter().zip(states).collect()
}

/// How a record's chain ends, counted from the record: what [`walk`] finds.
#[derive(Debug, Clone, Copy)]
struct Resolved {
    /// The reason for this record, or `None` while every lease up to `steps` is live.
    found: Option<Reason>,
    /// How many parents up the deciding lease is.
    steps: usize,
    /// Whether the reason comes from following the deciding lease's parent link (a parent that
    /// is gone, a loop) rather than from the lease itself.
    from_link: bool,
}

impl Resolved {
    fn live(steps: usize) -> Resolved {
        Resolved {
            found: None,
            steps,
            from_link: false,
        }
    }

    fn dead_at(reason: Reason, steps: usize) -> Resolved {
        Resolved {
            found: Some(reason),
            steps,
            from_link: false,
        }
    }

    fn broken(reason: Reason, steps: usize) -> Resolved {
        Resolved {
            found: Some(reason),
            steps,
            from_link: true,
        }
    }

    /// The same chain seen from the child one step further down.
    fn child(self) -> Resolved {
        let found = match self.found {
            Some(reason) if !self.from_link => Some(reason.of_parent()),
            other => other,
        };
        Resolved {
            found,
            steps: self.steps + 1,
            from_link: self.from_link,
        }
    }

    /// The reason, if any. walk checks a lease before the depth, and the depth before the
    /// link to the parent; past [`MAX_DEPTH`] a chain fails closed.
    fn reason(self) -> Option<Reason> {
        let within = if self.found.is_some() && !self.from_link {
            self.steps <= MAX_DEPTH
        } else {
            self.steps < MAX_DEPTH
        };
        if within {
            self.found
        } else {
            Some(Reason::CorruptRecord)
        }
    }
}

/// The word `list` and `status` show for a lease's standing: `active`, or the reason.
pub fn state_word(reason: Option<Reason>) -> &'static str {
    reason.map_or("active", Reason::as_str)
}

/// Decides whether a well-formed `token` grants `action` at `now`, spending one use from every
/// budget on the way (the lease's and its ancestors') when it does.
pub fn authorize(
    store: &Store,
    token: &Token,
    action: &Action,
    now: SystemTime,
) -> Result<Decision> {
    match assess(store, token, action, now)? {
        Assessed::Decided(decision) => Ok(decision),
        Assessed::Pending(pending) => pending.settle(store, action, now),
    }
}

/// A decision read from the store, or what is left to write before it is made.
#[derive(Debug)]
pub enum Assessed {
    /// Made by reading alone.
    Decided(Decision),
    /// Needs a write, which may wait for a lock: see [`Pending::settle`].
    Pending(Pending),
}

/// The part of a decision that writes the store: marking a lease found past its expiry, or
/// charging budgets along the chain under the records' locks.
#[derive(Debug)]
pub struct Pending(Box<Write>);

#[derive(Debug)]
#[expect(clippy::large_enum_variant, reason = "only ever boxed, in a Pending")]
enum Write {
    /// The denial is made; the lease that ended the chain is still to be marked expired.
    MarkExpired(Denial, Record),
    /// Every budget on the chain (`chain`, leaf first) is charged, or the action is denied.
    Charge { leaf: Record, chain: Vec<LeaseId> },
}

impl Pending {
    /// Writes what the decision needs, and makes it.
    pub fn settle(self, store: &Store, action: &Action, now: SystemTime) -> Result<Decision> {
        match *self.0 {
            Write::MarkExpired(denial, record) => {
                mark_expired(store, &record, now);
                Ok(denial.into())
            }
            Write::Charge { leaf, chain } => spend(store, &leaf, &chain, action, now),
        }
    }
}

/// [`authorize`] up to its first write: the broker makes the reading part on its own threads
/// and hands only a [`Pending`] write to a thread that may block.
pub fn assess(store: &Store, token: &Token, action: &Action, now: SystemTime) -> Result<Assessed> {
    assess_from(read_standing(store, token, now)?, token, action)
}

/// [`assess`], if the token's chain has at most `ancestors` leases above its own; `None` for a
/// deeper one, unread past that (the broker makes the decisions it can in a few reads on its
/// runtime's thread, and a deep chain's, which may take thousands, on a thread that may block).
pub fn assess_within(
    store: &Store,
    token: &Token,
    action: &Action,
    now: SystemTime,
    ancestors: usize,
) -> Result<Option<Assessed>> {
    match read_standing_within(store, token, now, ancestors) {
        Ok(standing) => assess_from(standing, token, action).map(Some),
        Err(err) if err.is::<Deeper>() => Ok(None),
        Err(err) => Err(err),
    }
}

/// [`assess`] of a token's standing as read.
fn assess_from(
    standing: (Standing, Option<Record>),
    token: &Token,
    action: &Action,
) -> Result<Assessed> {
    let records = match standing {
        (Standing::Dead(denial), Some(expired)) => {
            let write = Write::MarkExpired(denial, expired);
            return Ok(Assessed::Pending(Pending(Box::new(write))));
        }
        (Standing::Dead(denial), None) => {
            let mut decision = Decision::from(denial);
            // A record that is there but cannot be read is still this token's lease: its id
            // (the hash's) is named, for the operator to find it, as the detail names it.
            if decision.reason == Reason::CorruptRecord && decision.id.is_none() {
                decision.id = Some(token.hash().id());
            }
            return Ok(Assessed::Decided(decision));
        }
        (Standing::Live(records), _) => records,
    };
    let leaf = &records[0];
    if let Some(narrower) = records.iter().find(|r| !r.grants(action)) {
        let granted = crate::scope::join(&narrower.scope);
        let detail = format!(
            "{} {} grants {granted}, not {}",
            whose(narrower, leaf),
            narrower.id,
            action.as_str()
        );
        let denial = Decision::deny(Reason::OutOfScope, detail, Some(leaf));
        return Ok(Assessed::Decided(denial));
    }
    let mut chain = Vec::new();
    for record in &records {
        match record.charge(action) {
            Some(charge) if charge.is_free() => {}
            Some(_) => chain.push(record.id.clone()),
            None => return Ok(Assessed::Decided(used_up(leaf, record))),
        }
    }
    if chain.is_empty() {
        return Ok(Assessed::Decided(Decision::grant(leaf)));
    }
    let leaf = records.into_iter().next().expect("a live chain has a leaf");
    Ok(Assessed::Pending(Pending(Box::new(Write::Charge {
        leaf,
        chain,
    }))))
}

/// Charges every budget on the way in one step of the store (under the records' locks, for
/// the files): each record is checked again as it stands then; grants only if every charge can
/// be paid, and then pays them all.
fn spend(
    store: &Store,
    leaf: &Record,
    chain: &[LeaseId],
    action: &Action,
    now: SystemTime,
) -> Result<Decision> {
    let check = |current: &Record| {
        if let Some(reason) = own_reason(current, now) {
            let reason = if current.id == leaf.id {
                reason
            } else {
                reason.of_parent()
            };
            let detail = format!("lease {} ended meanwhile", current.id);
            return Err(Box::new(Decision::deny(reason, detail, Some(leaf))));
        }
        current
            .charge(action)
            .ok_or_else(|| Box::new(used_up(leaf, current)))
    };
    Ok(match store.charge(chain, check)? {
        Charged::Paid => Decision::grant(leaf),
        Charged::Refused(decision) => *decision,
        Charged::Missing(id) => Decision::deny(
            Reason::Unknown,
            format!("lease {id} was removed"),
            Some(leaf),
        ),
        Charged::Corrupt(id, _) => {
            let detail = format!("lease {id} cannot be read");
            Decision::deny(Reason::CorruptRecord, detail, Some(leaf))
        }
    })
}

fn used_up(leaf: &Record, spent: &Record) -> Decision {
    Decision::deny(
        Reason::UsedUp,
        format!(
            "{} {} has no uses left for this action",
            whose(spent, leaf),
            spent.id
        ),
        Some(leaf),
    )
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::{Duration, SystemTime};

    use proptest::prelude::*;

    use super::*;
    use crate::record::State;
    use crate::scope::Scope;
    use crate::token::Token;

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn id(n: usize) -> LeaseId {
        LeaseId::parse(&format!("{n:012x}")).expect("an id")
    }

    /// A detached record with id `n`; `parent` is its parent's id.
    fn record(n: usize, parent: Option<LeaseId>, state: State, expired: bool) -> Record {
        let hash = Token::mint().expect("mint").hash();
        let scope = vec![Scope::parse("a").expect("scope")];
        let expires = if expired {
            now() - Duration::from_secs(1)
        } else {
            now() + Duration::from_secs(60)
        };
        let mut record = Record::new(hash, scope, now() - Duration::from_secs(60), expires, None);
        record.id = id(n);
        record.parent = parent;
        record.state = state;
        record
    }

    /// Each record's state as verify sees it: its chain walked from the record, then its
    /// budgets.
    fn walked(records: &[Record], which: usize) -> Option<Reason> {
        let by_id: HashMap<&str, &Record> = records.iter().map(|r| (r.id.as_str(), r)).collect();
        let lookup = |id: &LeaseId| {
            Ok(by_id
                .get(id.as_str())
                .map_or(Loaded::Missing, |r| Loaded::Found((*r).clone())))
        };
        match walk(records[which].clone(), now(), lookup).expect("walk").0 {
            Standing::Live(chain) => spent(&chain).map(|denial| denial.reason),
            Standing::Dead(denial) => Some(denial.reason),
        }
    }

    fn listed(records: &[Record]) -> Vec<Option<Reason>> {
        standings(records.to_vec(), now())
            .into_iter()
            .map(|(_, state)| state)
            .collect()
    }

    #[test]
    fn a_chain_past_the_deepest_verify_follows_is_corrupt_as_verify_says() {
        let depth = MAX_DEPTH + 3;
        for revoked_root in [false, true] {
            let records: Vec<Record> = (0..depth)
                .map(|n| {
                    let parent = n.checked_sub(1).map(id);
                    let state = if revoked_root && n == 0 {
                        State::Revoked
                    } else {
                        State::Active
                    };
                    record(n, parent, state, false)
                })
                .collect();
            let states = listed(&records);
            for which in [0, 1, depth - 4, depth - 3, depth - 2, depth - 1] {
                assert_eq!(states[which], walked(&records, which), "record {which}");
            }
        }
    }

    proptest! {
        #[test]
        fn every_state_is_what_walking_its_chain_gives(
            shapes in prop::collection::vec((0u8..4, any::<bool>(), 0usize..14, 0u8..4), 1..12),
        ) {
            let count = shapes.len();
            let records: Vec<Record> = shapes
                .iter()
                .enumerate()
                .map(|(n, (state, expired, parent, budget))| {
                    let parent = match *parent {
                        p if p < count => Some(id(p)),
                        12 => Some(id(999)),
                        13 => Some(id(998)),
                        _ => None,
                    };
                    let state = match state {
                        0 => State::Revoked,
                        1 => State::Expired,
                        _ => State::Active,
                    };
                    let mut record = record(n, parent, state, *expired);
                    // Budgets: none, a lease-wide one spent, its one scope's spent, or left.
                    match budget {
                        1 => record.uses_left = Some(0),
                        2 => {
                            let scope = record.scope[0].to_string();
                            record.scope_uses_left.insert(scope, 0);
                        }
                        3 => record.uses_left = Some(1),
                        _ => {}
                    }
                    record
                })
                .collect();
            let states = listed(&records);
            for (which, state) in states.iter().enumerate() {
                prop_assert_eq!(*state, walked(&records, which), "record {}", which);
            }
        }
    }

    /// A live detached record with id `n` whose parent is `parent`.
    fn live(n: u64, parent: Option<u64>) -> Record {
        let hash = Token::mint().expect("mint").hash();
        let scope = vec![Scope::parse("a").expect("scope")];
        let expires = now() + Duration::from_secs(60);
        let mut record = Record::new(hash, scope, now() - Duration::from_secs(60), expires, None);
        let small = |n: u64| usize::try_from(n).expect("a small number");
        record.id = id(small(n));
        record.parent = parent.map(|p| id(small(p)));
        record
    }

    /// Walks from `leaf`, loading parents from `store` by the id they are filed under.
    fn walk_from(leaf: &Record, store: &HashMap<String, Record>) -> Standing {
        let load = |id: &LeaseId| {
            Ok(store
                .get(id.as_str())
                .map_or(Loaded::Missing, |r| Loaded::Found(r.clone())))
        };
        walk(leaf.clone(), now(), load).expect("walk").0
    }

    fn dead(standing: Standing) -> (Reason, String) {
        match standing {
            Standing::Dead(denial) => (denial.reason, denial.detail),
            other => panic!("not dead: {other:?}"),
        }
    }

    /// Only a tampered store holds a loop: it is corrupt, and the detail says why (not that the
    /// chain is too deep, which is where walking round the loop would end).
    #[test]
    fn a_lease_that_is_its_own_ancestor_is_a_corrupt_record() {
        let own_parent = live(1, Some(1));
        let store = HashMap::from([(own_parent.id.to_string(), own_parent.clone())]);
        assert_eq!(
            dead(walk_from(&own_parent, &store)),
            (
                Reason::CorruptRecord,
                "lease 000000000001 is its own ancestor".to_owned()
            )
        );
        let (a, b) = (live(2, Some(3)), live(3, Some(2)));
        let store = HashMap::from([(a.id.to_string(), a.clone()), (b.id.to_string(), b.clone())]);
        assert_eq!(
            dead(walk_from(&a, &store)),
            (
                Reason::CorruptRecord,
                "lease 000000000003 is its own ancestor".to_owned()
            )
        );
    }

    /// A record filed under its parent's id but naming another lease is not that parent.
    #[test]
    fn a_parent_found_under_its_id_must_be_that_lease() {
        let child = live(4, Some(5));
        let impostor = live(6, None);
        let store = HashMap::from([("000000000005".to_owned(), impostor)]);
        assert_eq!(dead(walk_from(&child, &store)).0, Reason::ParentGone);
        let parent = live(5, None);
        let store = HashMap::from([(parent.id.to_string(), parent)]);
        assert!(matches!(walk_from(&child, &store), Standing::Live(records) if records.len() == 2));
    }

    /// A budgeted lease, or its parent, revoked after verify read the chain but before it locked
    /// the records to charge them: denied, with the word for whichever lease it was.
    #[test]
    fn a_lease_revoked_between_the_read_and_the_lock_is_denied_with_its_own_word() {
        let action = Action::parse("a").expect("action");
        for (revoke_leaf, word) in [(true, "revoked"), (false, "parent revoked")] {
            let dir = tempfile::tempdir().expect("temp dir");
            let store = Store::open(
                &dir.path().join("state"),
                crate::store::Open::CreateIfMissing,
            )
            .expect("store");
            let budgeted = |parent: Option<&Record>| {
                let scope = vec![Scope::parse("a").expect("scope")];
                let hash = Token::mint().expect("mint").hash();
                let issued = now() - Duration::from_secs(60);
                let mut record =
                    Record::new(hash, scope, issued, now() + Duration::from_secs(60), None);
                record.parent = parent.map(|p| p.id.clone());
                record.uses_left = Some(1);
                assert!(store.insert(&record).expect("insert"));
                record
            };
            let parent = budgeted(None);
            let leaf = budgeted(Some(&parent));
            // What verify read before taking the locks.
            let chain = [leaf.id.clone(), parent.id.clone()];
            let revoked = if revoke_leaf { &leaf } else { &parent };
            let id = revoked.id.clone();
            store
                .update(&id, |r| Change::when(r.revoke(now())))
                .expect("revoke");
            let decision = spend(&store, &leaf, &chain, &action, now()).expect("spend");
            assert!(!decision.granted);
            assert_eq!(decision.reason.as_str(), word);
            assert_eq!(decision.detail, format!("lease {id} ended meanwhile"));
        }
    }
}
