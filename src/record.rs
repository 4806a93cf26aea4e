//! The record of one lease, as stored in `leases/<id>.toml`, and the status derived from it.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::owner::{Owner, OwnerState};
use crate::scope::{Action, Scope};
use crate::token::{LeaseId, TokenHash};

/// What a record says about its lease. `Active` is the only state that can grant anything,
/// and a record never goes back to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Not revoked, and not yet found past its expiry.
    Active,
    /// Revoked by `lease revoke` or by its `lease run` ending; kept until its expiry.
    Revoked,
    /// Found past its expiry by `verify`; stays expired even if the clock is set back.
    Expired,
    /// Its run's connection to the broker closed, or went silent, before the run said it
    /// ended: the broker ended the lease (`owner gone`).
    #[serde(rename = "owner_gone")]
    OwnerGone,
}

/// One lease as the store keeps it. The token itself is never here, only its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// The lease id (the first 12 hex digits of `token_sha256`).
    pub id: LeaseId,
    /// SHA-256 of the token, lower-case hex.
    pub token_sha256: String,
    /// The granted scopes, in the order given.
    pub scope: Vec<Scope>,
    /// When the lease was minted.
    #[serde(with = "rfc3339")]
    pub issued_at: SystemTime,
    /// When the lease stops working, whatever else happens.
    #[serde(with = "rfc3339")]
    pub expires_at: SystemTime,
    /// Active, revoked or expired.
    pub state: State,
    /// When the lease was revoked, if it was.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "rfc3339::option"
    )]
    pub revoked_at: Option<SystemTime>,
    /// The furthest `renew` may push `expires_at` (the first issue plus `max_ttl`, and never
    /// past the parent's); absent in records that cannot be renewed.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "rfc3339::option"
    )]
    pub renewable_until: Option<SystemTime>,
    /// The id of the parent lease, for a nested lease; it is only valid while the parent is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<LeaseId>,
    /// The lease of the `lease run` this lease belongs to: its own id when a run made it, else
    /// its parent's run (used to group the audit trail by run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<LeaseId>,
    /// Granted verifies left, when `--uses` limits them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uses_left: Option<u64>,
    /// Granted verifies left for scopes with a budget (`--scope write:draft=1`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub scope_uses_left: BTreeMap<String, u64>,
    /// The `lease run` process that owns the lease; `None` for a detached lease from `issue`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,
}

/// What one granted verify takes from a lease's budgets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    /// One of the lease-wide uses (`--uses`).
    pub use_of_lease: bool,
    /// One use of this budgeted scope.
    pub use_of_scope: Option<String>,
}

impl Charge {
    /// Whether the verify costs nothing, so no lock is needed.
    pub fn is_free(&self) -> bool {
        !self.use_of_lease && self.use_of_scope.is_none()
    }
}

/// Where a lease stands right now, all things considered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// It grants its scopes.
    Active,
    /// Past its expiry, or marked expired.
    Expired,
    /// Revoked.
    Revoked,
    /// Its owning `lease run` process is gone.
    OwnerGone,
}

impl Status {
    /// The word used for this status by `verify` reasons and `list`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Expired => "expired",
            Status::Revoked => "revoked",
            Status::OwnerGone => "owner gone",
        }
    }
}

impl Record {
    /// A new active record.
    pub fn new(
        hash: TokenHash,
        scope: Vec<Scope>,
        issued_at: SystemTime,
        expires_at: SystemTime,
        owner: Option<Owner>,
    ) -> Record {
        Record {
            id: hash.id(),
            token_sha256: hash.to_hex(),
            scope,
            issued_at,
            expires_at,
            state: State::Active,
            revoked_at: None,
            renewable_until: None,
            parent: None,
            run: None,
            uses_left: None,
            scope_uses_left: BTreeMap::new(),
            owner,
        }
    }

    /// Whether the expiry time has passed at `now`.
    pub fn is_past_expiry(&self, now: SystemTime) -> bool {
        now >= self.expires_at
    }

    /// The lease's status at `now`. Revoked wins over expired, expired over a gone owner,
    /// so that the reason a user sees is the most specific one.
    pub fn status(&self, now: SystemTime) -> Status {
        match self.state {
            State::Revoked => Status::Revoked,
            State::Expired => Status::Expired,
            State::OwnerGone => Status::OwnerGone,
            State::Active if self.is_past_expiry(now) => Status::Expired,
            State::Active => match &self.owner {
                Some(owner) if owner.state() == OwnerState::Gone => Status::OwnerGone,
                _ => Status::Active,
            },
        }
    }

    /// Marks the lease revoked at `now`; returns whether anything changed (a lease that is
    /// already revoked or expired stays as it is).
    pub fn revoke(&mut self, now: SystemTime) -> bool {
        if self.state != State::Active {
            return false;
        }
        self.state = State::Revoked;
        self.revoked_at = Some(now);
        true
    }

    /// Marks an active lease as ended with its owner (a broker's run whose connection is
    /// gone) at `now`; returns whether anything changed.
    pub fn mark_owner_gone(&mut self, now: SystemTime) -> bool {
        if self.state != State::Active {
            return false;
        }
        self.state = State::OwnerGone;
        self.revoked_at = Some(now);
        true
    }

    /// Marks an active lease found past its expiry as expired, so that it stays expired even
    /// if the clock is later set back; returns whether anything changed.
    pub fn mark_expired(&mut self, now: SystemTime) -> bool {
        if self.state != State::Active || !self.is_past_expiry(now) {
            return false;
        }
        self.state = State::Expired;
        true
    }

    /// Whether `gc` may remove this record: it can no longer grant anything, and it is not a
    /// revoked lease that is still kept (until its expiry) so that `verify` can say `revoked`.
    ///
    /// A run no broker holds on a shared store, still marked active, is not garbage before its
    /// expiry either: it may be on its way to another broker, and the brokers' sweep ends it if
    /// it does not arrive (verify denies it meanwhile).
    pub fn is_garbage(&self, now: SystemTime) -> bool {
        let in_transit = self.state == State::Active
            && self
                .owner
                .as_ref()
                .is_some_and(|o| o.broker && o.held == Some(crate::owner::Held::Nowhere));
        let ending =
            || self.state == State::Active && self.owner.as_ref().is_some_and(Owner::ending);
        match self.status(now) {
            Status::Active => false,
            Status::Revoked => self.is_past_expiry(now),
            Status::OwnerGone if in_transit => self.is_past_expiry(now),
            // Its `lease run` still runs and revokes it next (gc would take its revoke's record).
            Status::OwnerGone if ending() => false,
            Status::Expired | Status::OwnerGone => true,
        }
    }

    /// The scopes as people read them, budgets shown as uses left: `read:*,write:draft=1`.
    pub fn scope_with_uses_left(&self) -> String {
        let items: Vec<String> = self
            .scope
            .iter()
            .map(|s| match self.scope_uses_left.get(s.as_str()) {
                Some(left) => format!("{s}={left}"),
                None => s.to_string(),
            })
            .collect();
        items.join(",")
    }

    /// Whether the lease's scopes grant `action` (regardless of its status and budgets).
    pub fn grants(&self, action: &Action) -> bool {
        crate::scope::any_grants(&self.scope, action)
    }

    /// What granting `action` would take from this lease's budgets, or `None` when a budget it
    /// needs is spent. A scope without a budget that grants the action is preferred over a
    /// budgeted one, so a budget on one scope never limits the others.
    pub fn charge(&self, action: &Action) -> Option<Charge> {
        if self.uses_left == Some(0) {
            return None;
        }
        let matching: Vec<&Scope> = self.scope.iter().filter(|s| s.grants(action)).collect();
        let unlimited = matching
            .iter()
            .any(|s| !self.scope_uses_left.contains_key(s.as_str()));
        let use_of_scope = if unlimited || matching.is_empty() {
            None
        } else {
            let left = |s: &&&Scope| self.scope_uses_left.get(s.as_str()).is_some_and(|n| *n > 0);
            Some(matching.iter().find(left)?.as_str().to_owned())
        };
        Some(Charge {
            use_of_lease: self.uses_left.is_some(),
            use_of_scope,
        })
    }

    /// Takes `charge` from the budgets.
    pub fn spend(&mut self, charge: &Charge) {
        if charge.use_of_lease {
            self.uses_left = self.uses_left.map(|n| n.saturating_sub(1));
        }
        if let Some(scope) = &charge.use_of_scope
            && let Some(left) = self.scope_uses_left.get_mut(scope)
        {
            *left = left.saturating_sub(1);
        }
    }
}

/// RFC 3339 UTC timestamps to whole seconds, e.g. `2026-11-25T22:50:16Z`.
pub mod rfc3339 {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    /// Formats a time as lease prints and stores it.
    pub fn format(time: SystemTime) -> String {
        humantime::format_rfc3339_seconds(time).to_string()
    }

    /// Serializes a time as RFC 3339.
    pub fn serialize<S: Serializer>(time: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format(*time))
    }

    /// Deserializes an RFC 3339 time.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SystemTime, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_rfc3339(&text).map_err(D::Error::custom)
    }

    /// The same for optional times.
    pub mod option {
        use std::time::SystemTime;

        use serde::{Deserialize, Deserializer, Serializer, de::Error};

        /// Serializes a present time as RFC 3339 (absent ones are skipped by the caller).
        pub fn serialize<S: Serializer>(
            time: &Option<SystemTime>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            match time {
                Some(time) => super::serialize(time, serializer),
                None => serializer.serialize_none(),
            }
        }

        /// Deserializes an optional RFC 3339 time.
        pub fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<SystemTime>, D::Error> {
            let text = Option::<String>::deserialize(deserializer)?;
            text.map(|t| humantime::parse_rfc3339(&t).map_err(D::Error::custom))
                .transpose()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::token::Token;

    const HOUR: Duration = Duration::from_secs(3600);

    /// An active, detached record issued at `at`, expiring an hour later.
    fn record_issued_at(at: SystemTime) -> Record {
        let token = Token::mint().expect("token");
        let scope = vec![Scope::parse("a").expect("scope")];
        Record::new(token.hash(), scope, at, at + HOUR, None)
    }

    #[test]
    fn an_expired_record_stays_expired_when_the_clock_is_set_back() {
        let issued = SystemTime::UNIX_EPOCH + 1000 * HOUR;
        let mut record = record_issued_at(issued);
        assert_eq!(record.status(issued), Status::Active);
        assert!(
            !record.mark_expired(issued + HOUR / 2),
            "not yet past expiry"
        );
        assert_eq!(record.state, State::Active);
        assert!(record.mark_expired(issued + 2 * HOUR));
        assert_eq!(record.state, State::Expired);
        // The clock goes back to before the expiry, even before the issue: still expired.
        for back in [issued + HOUR / 2, issued, issued - HOUR] {
            assert_eq!(record.status(back), Status::Expired, "at {back:?}");
            assert!(!record.mark_expired(back));
            assert!(
                !record.revoke(back),
                "an expired lease is not revoked again"
            );
            assert_eq!(record.state, State::Expired);
        }
    }

    #[test]
    fn a_revoked_record_stays_revoked_at_any_time() {
        let issued = SystemTime::UNIX_EPOCH + 1000 * HOUR;
        let mut record = record_issued_at(issued);
        assert!(record.revoke(issued));
        assert_eq!(record.revoked_at, Some(issued));
        assert!(!record.revoke(issued + HOUR / 2), "revoked once");
        assert!(
            !record.mark_expired(issued + 2 * HOUR),
            "revoked wins over expired"
        );
        for at in [issued - HOUR, issued, issued + 2 * HOUR] {
            assert_eq!(record.status(at), Status::Revoked);
        }
    }

    #[test]
    fn status_is_expired_from_the_expiry_on_even_before_it_is_marked() {
        let issued = SystemTime::UNIX_EPOCH + 1000 * HOUR;
        let record = record_issued_at(issued);
        assert_eq!(
            record.status(issued + HOUR - Duration::from_secs(1)),
            Status::Active
        );
        assert_eq!(record.status(issued + HOUR), Status::Expired);
        assert!(record.is_garbage(issued + HOUR));
        assert!(!record.is_garbage(issued));
    }

    #[test]
    fn status_words_are_the_ones_verify_and_list_print() {
        // `verify` names a budgeted lease that ended between its read and its lock by this
        // word (authorize::spend), a path no integration test reaches on purpose.
        let words = [
            (Status::Active, "active"),
            (Status::Expired, "expired"),
            (Status::Revoked, "revoked"),
            (Status::OwnerGone, "owner gone"),
        ];
        for (status, word) in words {
            assert_eq!(status.as_str(), word);
        }
    }

    #[test]
    fn a_run_no_broker_holds_is_kept_until_its_expiry_for_the_sweep_to_end() {
        let issued = SystemTime::UNIX_EPOCH + 1000 * HOUR;
        let mut record = record_issued_at(issued);
        let mut owner = crate::owner::Owner::broker("agent".to_owned()).expect("owner");
        owner.held = Some(crate::owner::Held::Nowhere);
        record.owner = Some(owner);
        assert_eq!(record.status(issued), Status::OwnerGone);
        assert!(!record.is_garbage(issued + HOUR / 2), "on its way");
        assert!(record.is_garbage(issued + HOUR));
        // Once a sweep has ended it (the record says so), it is garbage at once.
        record.state = State::OwnerGone;
        assert!(record.is_garbage(issued + HOUR / 2));
        // Held elsewhere, it is alive; and a run of a broker on a local store, gone, is garbage.
        record.state = State::Active;
        let mut owner = crate::owner::Owner::broker("agent".to_owned()).expect("owner");
        owner.held = Some(crate::owner::Held::Elsewhere);
        record.owner = Some(owner);
        assert!(!record.is_garbage(issued + HOUR / 2));
    }

    #[test]
    fn a_run_whose_command_exited_is_left_to_its_lease_run_until_that_ends_too() {
        let issued = SystemTime::now();
        let mut record = record_issued_at(issued);
        // This process as the `lease run`, and a command that has exited.
        let mut command = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        let owner = Owner::current("sleep".to_owned())
            .expect("owner")
            .running(command.id())
            .expect("running");
        command.kill().expect("killed");
        command.wait().expect("reaped");
        record.owner = Some(owner.clone());
        assert_eq!(
            record.status(issued),
            Status::OwnerGone,
            "its token is dead"
        );
        assert!(
            !record.is_garbage(issued),
            "its lease run, still running, revokes it next"
        );
        // Once the lease run is gone too, gc takes it.
        record.owner = Some(Owner {
            start_time: owner.start_time + 1,
            ..owner
        });
        assert_eq!(record.status(issued), Status::OwnerGone);
        assert!(record.is_garbage(issued));
    }

    #[test]
    fn a_revoked_record_is_kept_until_its_expiry() {
        let issued = SystemTime::UNIX_EPOCH + 1000 * HOUR;
        let mut record = record_issued_at(issued);
        record.revoke(issued);
        assert!(!record.is_garbage(issued + HOUR / 2));
        assert!(record.is_garbage(issued + HOUR));
    }
}
