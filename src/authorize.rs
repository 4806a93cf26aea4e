//! Deciding whether a token grants an action: the lease, its ancestors, and its budgets.
//!
//! A token's record is found by the id derived from its hash: one read. A nested lease is valid
//! only while every ancestor is, so the chain up to the root is read too (one record per level).
//! Leases with use budgets are charged under their records' locks, so concurrent verifies never
//! grant more than the budget. Anything that cannot be confirmed denies: fail closed.

use std::time::SystemTime;

use anyhow::Result;
use serde::Serialize;

use crate::audit::Event;
use crate::record::{Charge, Record, Status, rfc3339};
use crate::scope::Action;
use crate::store::{Loaded, Store};
use crate::token::{LeaseId, Token};

/// The deepest chain of nested leases that is followed; a longer one (or a loop, which only a
/// tampered store can hold) fails closed.
pub const MAX_DEPTH: usize = 10_000;

/// The answer, as `verify --json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    /// Whether the action is granted.
    pub granted: bool,
    /// `granted`, or why not: `unknown`, `malformed`, `expired`, `revoked`, `owner gone`,
    /// `out of scope`, `used up`, `parent revoked` (or another `parent ...`), `corrupt record`.
    pub reason: &'static str,
    /// The lease id, when a lease was found.
    pub id: Option<String>,
    /// The lease's expiry (RFC 3339), when a lease was found.
    pub expires_at: Option<String>,
    /// A sentence for people, printed after the reason on a denial.
    #[serde(skip)]
    pub detail: String,
    /// The lease's parent, for the audit trail.
    #[serde(skip)]
    pub parent: Option<String>,
    /// The lease's run, for the audit trail.
    #[serde(skip)]
    pub run: Option<String>,
}

impl Decision {
    /// A denial, naming the lease if one was found.
    pub fn deny(reason: &'static str, detail: String, record: Option<&Record>) -> Decision {
        Decision {
            granted: false,
            reason,
            id: record.map(|r| r.id.clone()),
            expires_at: record.map(|r| rfc3339::format(r.expires_at)),
            detail,
            parent: record.and_then(|r| r.parent.clone()),
            run: record.and_then(|r| r.run.clone()),
        }
    }

    fn grant(record: &Record) -> Decision {
        Decision {
            granted: true,
            reason: "granted",
            id: Some(record.id.clone()),
            expires_at: Some(rfc3339::format(record.expires_at)),
            detail: String::new(),
            parent: record.parent.clone(),
            run: record.run.clone(),
        }
    }
}

/// A token's lease and its ancestors.
// Returned once per decision and matched at once; boxing would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Chain {
    /// No lease in this store matches the token.
    Unknown,
    /// The lease and every ancestor can grant: the lease first, then its parent, up to the root.
    Live(Vec<Record>),
    /// The lease cannot grant anything.
    Dead {
        /// The reason word, as verify prints it.
        reason: &'static str,
        /// A sentence for people.
        detail: String,
        /// The token's own lease, if it was found.
        leaf: Option<Record>,
    },
}

/// Finds the lease of `token` and its ancestors, and whether all of them are live at `now`.
/// A lease found past its expiry is marked `expired` on the spot, so that it stays expired even
/// if the clock is set back.
pub fn chain(store: &Store, token: &Token, now: SystemTime) -> Result<Chain> {
    let hash = token.hash();
    let id = hash.id();
    let leaf = match store.load(&id)? {
        Loaded::Found(record) if hash.matches_hex(&record.token_sha256) => record,
        Loaded::Found(_) | Loaded::Missing => return Ok(Chain::Unknown),
        Loaded::Corrupt(why) => {
            return Ok(Chain::Dead {
                reason: "corrupt record",
                detail: format!("lease {id}: {why}"),
                leaf: None,
            });
        }
    };
    let (chain, expired) = walk(leaf, now, |id| store.load(id))?;
    if let Some(record) = &expired
        && let Some(id) = record.lease_id()
    {
        // The answer is a denial either way: a store that cannot be written changes nothing.
        let mut marked = false;
        let _ = store.update(&id, |r| {
            marked = r.mark_expired(now);
            marked
        });
        if marked {
            let mut event = Event::new("expired", Some(record));
            event.reason = Some("ttl".to_owned());
            let _ = store.audit().append(&event);
        }
    }
    Ok(chain)
}

/// Follows `leaf` up to its root through `load`, and says whether every lease on the way is
/// live at `now`. Also returns the lease found past its expiry, if that is what ended the chain.
pub fn walk(
    leaf: Record,
    now: SystemTime,
    mut load: impl FnMut(&LeaseId) -> Result<Loaded>,
) -> Result<(Chain, Option<Record>)> {
    let mut records: Vec<Record> = Vec::new();
    let mut next = Some(leaf);
    while let Some(record) = next.take() {
        let depth = records.len();
        let dead = |reason, detail, leaf: Option<&Record>| Chain::Dead {
            reason,
            detail,
            leaf: leaf.cloned(),
        };
        let leaf = records.first().unwrap_or(&record);
        if let Some((reason, detail)) = why_dead(&record, now) {
            let culprit = (reason == "expired").then(|| record.clone());
            let reason = if depth == 0 {
                reason
            } else {
                parent_reason(reason)
            };
            return Ok((dead(reason, detail, Some(leaf)), culprit));
        }
        if depth >= MAX_DEPTH {
            let detail = format!("lease {} is nested too deep", record.id);
            return Ok((dead("corrupt record", detail, Some(leaf)), None));
        }
        if let Some(parent_id) = &record.parent {
            let loaded = match LeaseId::parse(parent_id) {
                Some(id) => load(&id)?,
                None => Loaded::Corrupt("the parent id is not a lease id".into()),
            };
            match loaded {
                Loaded::Found(parent) if parent.id == *parent_id => {
                    if parent.id == record.id || records.iter().any(|r| r.id == parent.id) {
                        let detail = format!("lease {} is its own ancestor", record.id);
                        return Ok((dead("corrupt record", detail, Some(leaf)), None));
                    }
                    next = Some(parent);
                }
                Loaded::Corrupt(why) => {
                    let detail = format!("parent lease {parent_id}: {why}");
                    return Ok((dead("corrupt record", detail, Some(leaf)), None));
                }
                _ => {
                    let detail = format!(
                        "parent lease {parent_id} of lease {} is no longer on record",
                        record.id
                    );
                    return Ok((dead("parent gone", detail, Some(leaf)), None));
                }
            }
        }
        records.push(record);
    }
    Ok((Chain::Live(records), None))
}

/// The state of one lease on its own (ignoring its ancestors): `active`, or why it cannot grant.
pub fn own_state(record: &Record, now: SystemTime) -> &'static str {
    why_dead(record, now).map_or("active", |(reason, _)| reason)
}

/// Why a lease cannot grant anything at `now`, if so: its reason word and a sentence.
fn why_dead(record: &Record, now: SystemTime) -> Option<(&'static str, String)> {
    let id = &record.id;
    let at = rfc3339::format;
    match record.status(now) {
        Status::Active => None,
        Status::Revoked => {
            let when = record
                .revoked_at
                .map(|t| format!(" at {}", at(t)))
                .unwrap_or_default();
            Some(("revoked", format!("lease {id} was revoked{when}")))
        }
        Status::Expired => Some((
            "expired",
            format!("lease {id} expired at {}", at(record.expires_at)),
        )),
        Status::OwnerGone => {
            let pid = record.owner.as_ref().map_or(0, |o| o.pid);
            Some((
                "owner gone",
                format!("the lease run (pid {pid}) that owned lease {id} has ended"),
            ))
        }
    }
}

/// The reason a nested lease is denied when an ancestor is dead for `reason`.
pub fn parent_reason(reason: &'static str) -> &'static str {
    match reason {
        "revoked" => "parent revoked",
        "expired" => "parent expired",
        "owner gone" => "parent owner gone",
        other => other,
    }
}

/// Decides whether a well-formed `token` grants `action` at `now`, spending one use from every
/// budget on the way (the lease's and its ancestors') when it does.
pub fn authorize(
    store: &Store,
    token: &Token,
    action: &Action,
    now: SystemTime,
) -> Result<Decision> {
    let records = match chain(store, token, now)? {
        Chain::Unknown => {
            return Ok(Decision::deny(
                "unknown",
                "no lease matches this token".into(),
                None,
            ));
        }
        Chain::Dead {
            reason,
            detail,
            leaf,
        } => {
            return Ok(Decision::deny(reason, detail, leaf.as_ref()));
        }
        Chain::Live(records) => records,
    };
    let leaf = &records[0];
    if let Some(narrower) = records.iter().find(|r| !r.grants(action)) {
        let granted = crate::scope::join(&narrower.scope);
        let whose = if narrower.id == leaf.id {
            "lease"
        } else {
            "its parent lease"
        };
        let detail = format!(
            "{whose} {} grants {granted}, not {}",
            narrower.id,
            action.as_str()
        );
        return Ok(Decision::deny("out of scope", detail, Some(leaf)));
    }
    let mut charges = Vec::new();
    for record in &records {
        match record.charge(action) {
            Some(charge) if charge.is_free() => {}
            Some(charge) => charges.push((record, charge)),
            None => return Ok(used_up(leaf, record)),
        }
    }
    if charges.is_empty() {
        return Ok(Decision::grant(leaf));
    }
    spend(store, leaf, &charges, action, now)
}

/// Charges every budget under its record's lock, from the lease towards the root; grants only
/// if every charge can be paid, and then pays them all.
fn spend(
    store: &Store,
    leaf: &Record,
    charges: &[(&Record, Charge)],
    action: &Action,
    now: SystemTime,
) -> Result<Decision> {
    let mut locked = Vec::with_capacity(charges.len());
    for (record, _) in charges {
        let Some(id) = record.lease_id() else {
            return Ok(Decision::deny(
                "corrupt record",
                format!("lease {} has a bad id", record.id),
                Some(leaf),
            ));
        };
        let Some(mut lock) = store.lock(&id)? else {
            return Ok(Decision::deny(
                "unknown",
                format!("lease {id} was removed"),
                Some(leaf),
            ));
        };
        let current = match lock.read()? {
            Loaded::Found(current) => current,
            _ => {
                return Ok(Decision::deny(
                    "corrupt record",
                    format!("lease {id} cannot be read"),
                    Some(leaf),
                ));
            }
        };
        let status = current.status(now);
        if status != Status::Active {
            let word = status.as_str();
            let reason = if current.id == leaf.id {
                word
            } else {
                parent_reason(word)
            };
            return Ok(Decision::deny(
                reason,
                format!("lease {id} ended meanwhile"),
                Some(leaf),
            ));
        }
        let Some(charge) = current.charge(action) else {
            return Ok(used_up(leaf, &current));
        };
        locked.push((lock, current, charge));
    }
    // Debug builds only: lets the test suite hold two verifies here at once, to prove that
    // budgets are charged under the locks, on the records read under them.
    #[cfg(debug_assertions)]
    debug_charge_barrier();
    for (lock, record, charge) in &mut locked {
        record.spend(charge);
        lock.write(record)?;
    }
    Ok(Decision::grant(leaf))
}

/// With `LEASE_DEBUG_CHARGE_BARRIER=DIR`, waits (at most 2 s) until two verifies have reached
/// this point, each leaving a file in DIR. Under the record's lock a second verify cannot get
/// here before the first has paid, so the wait runs out; without it, both would pay at once.
#[cfg(debug_assertions)]
fn debug_charge_barrier() {
    let Some(dir) = std::env::var_os("LEASE_DEBUG_CHARGE_BARRIER") else {
        return;
    };
    let dir = std::path::Path::new(&dir);
    let _ = std::fs::write(dir.join(std::process::id().to_string()), "");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while std::time::Instant::now() < deadline {
        if std::fs::read_dir(dir).map_or(0, Iterator::count) >= 2 {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

fn used_up(leaf: &Record, spent: &Record) -> Decision {
    let whose = if spent.id == leaf.id {
        "lease"
    } else {
        "its parent lease"
    };
    Decision::deny(
        "used up",
        format!("{whose} {} has no uses left for this action", spent.id),
        Some(leaf),
    )
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::scope::Scope;

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    /// A live detached record with id `n` whose parent is `parent` (an id, as written).
    fn record(n: u64, parent: Option<u64>) -> Record {
        let hash = Token::mint().expect("mint").hash();
        let scope = vec![Scope::parse("a").expect("scope")];
        let expires = now() + Duration::from_secs(60);
        let mut record = Record::new(hash, scope, now() - Duration::from_secs(60), expires, None);
        record.id = format!("{n:012x}");
        record.parent = parent.map(|p| format!("{p:012x}"));
        record
    }

    /// Walks from `leaf`, loading parents from `store` by the id they are filed under.
    fn walked(leaf: &Record, store: &HashMap<String, Record>) -> Chain {
        let load = |id: &LeaseId| {
            Ok(store
                .get(id.as_str())
                .map_or(Loaded::Missing, |r| Loaded::Found(r.clone())))
        };
        walk(leaf.clone(), now(), load).expect("walk").0
    }

    fn dead(chain: Chain) -> (&'static str, String) {
        match chain {
            Chain::Dead { reason, detail, .. } => (reason, detail),
            other => panic!("not dead: {other:?}"),
        }
    }

    /// Only a tampered store holds a loop: it is corrupt, and the detail says why (not that the
    /// chain is too deep, which is where walking round the loop would end).
    #[test]
    fn a_lease_that_is_its_own_ancestor_is_a_corrupt_record() {
        let own_parent = record(1, Some(1));
        let store = HashMap::from([(own_parent.id.clone(), own_parent.clone())]);
        assert_eq!(
            dead(walked(&own_parent, &store)),
            (
                "corrupt record",
                "lease 000000000001 is its own ancestor".to_owned()
            )
        );
        let (a, b) = (record(2, Some(3)), record(3, Some(2)));
        let store = HashMap::from([(a.id.clone(), a.clone()), (b.id.clone(), b.clone())]);
        assert_eq!(
            dead(walked(&a, &store)),
            (
                "corrupt record",
                "lease 000000000003 is its own ancestor".to_owned()
            )
        );
    }

    /// A record filed under its parent's id but naming another lease is not that parent.
    #[test]
    fn a_parent_found_under_its_id_must_be_that_lease() {
        let child = record(4, Some(5));
        let impostor = record(6, None);
        let store = HashMap::from([("000000000005".to_owned(), impostor)]);
        assert_eq!(dead(walked(&child, &store)).0, "parent gone");
        let parent = record(5, None);
        let store = HashMap::from([(parent.id.clone(), parent)]);
        assert!(matches!(walked(&child, &store), Chain::Live(records) if records.len() == 2));
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
            let charges: Vec<(&Record, Charge)> = [&leaf, &parent]
                .into_iter()
                .map(|r| (r, r.charge(&action).expect("a use left")))
                .collect();
            let revoked = if revoke_leaf { &leaf } else { &parent };
            let id = revoked.lease_id().expect("id");
            store.update(&id, |r| r.revoke(now())).expect("revoke");
            let decision = spend(&store, &leaf, &charges, &action, now()).expect("spend");
            assert!(!decision.granted);
            assert_eq!(decision.reason, word);
            assert_eq!(decision.detail, format!("lease {id} ended meanwhile"));
        }
    }
}
