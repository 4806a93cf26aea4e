//! Scopes: what a lease grants, and whether an action falls inside it.
//!
//! A scope is 1 to 128 characters of `A-Z a-z 0-9 : . _ / -`, optionally ending in `*`. An
//! action is granted by a scope equal to it, or by a scope `P*` when the action starts with `P`.
//! On the command line a scope may carry a use budget, `write:draft=1`: a [`Grant`].

use std::fmt;

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

/// The longest scope (or action) accepted, in characters.
pub const MAX_LEN: usize = 128;
/// The most scopes one lease may hold; keeps the child's environment and the record small.
pub const MAX_SCOPES: usize = 256;

/// One validated scope, such as `read:articles` or `read:*`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Scope(String);

impl TryFrom<String> for Scope {
    type Error = anyhow::Error;

    fn try_from(text: String) -> Result<Scope> {
        validate(&text, "scope")?;
        Ok(Scope(text))
    }
}

impl From<Scope> for String {
    fn from(scope: Scope) -> String {
        scope.0
    }
}

impl Scope {
    /// Parses one scope item, naming the problem when it is not valid.
    pub fn parse(text: &str) -> Result<Scope> {
        validate(text, "scope")?;
        Ok(Scope(text.to_owned()))
    }

    /// Whether this scope grants `action`.
    pub fn grants(&self, action: &Action) -> bool {
        match self.0.strip_suffix('*') {
            Some(prefix) => action.0.starts_with(prefix),
            None => self.0 == action.0,
        }
    }

    /// Whether everything `other` grants, this scope grants too: `read:*` covers `read:a`
    /// and `read:a*`, but not `read*` or `*`; an exact scope covers only itself.
    pub fn covers(&self, other: &Scope) -> bool {
        match self.0.strip_suffix('*') {
            Some(prefix) => other
                .0
                .strip_suffix('*')
                .unwrap_or(&other.0)
                .starts_with(prefix),
            None => self.0 == other.0,
        }
    }

    /// The scope as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The action a tool asks `lease verify` about, such as `write:draft`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action(String);

impl Action {
    /// Parses an action; it uses the same alphabet as a scope.
    pub fn parse(text: &str) -> Result<Action> {
        validate(text, "action")?;
        Ok(Action(text.to_owned()))
    }

    /// The action as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A scope a new lease asks for, with the number of granted verifies it may spend, if limited
/// (`write:draft=1`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The scope.
    pub scope: Scope,
    /// How many granted verifies this scope allows; `None` for no limit.
    pub uses: Option<u64>,
}

/// A use budget as given (`--uses N`, `SCOPE=N`): digits only (no sign, no blank), at least 1.
pub fn parse_uses(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u64>().ok().filter(|n| *n >= 1)
}

impl Grant {
    /// Parses `SCOPE` or `SCOPE=N` (N at least 1).
    pub fn parse(text: &str) -> Result<Grant> {
        let (scope, uses) = match text.split_once('=') {
            Some((scope, count)) => match parse_uses(count) {
                Some(n) => (scope, Some(n)),
                None => bail!(
                    "invalid use budget in '{}': after '=' comes a whole number of uses, at least 1",
                    text.escape_debug()
                ),
            },
            None => (text, None),
        };
        Ok(Grant {
            scope: Scope::parse(scope)?,
            uses,
        })
    }
}

/// Parses a list of `--scope` values, each of which may hold several comma-separated items
/// (with optional budgets), keeping the order given and dropping repeats.
pub fn parse_grants<S: AsRef<str>>(values: &[S]) -> Result<Vec<Grant>> {
    let mut grants: Vec<Grant> = Vec::new();
    for value in values {
        for item in value.as_ref().split(',') {
            let grant = Grant::parse(item)?;
            match grants.iter().find(|g| g.scope == grant.scope) {
                Some(seen) if seen.uses != grant.uses => {
                    bail!(
                        "scope '{}' is given twice with different budgets",
                        grant.scope
                    )
                }
                Some(_) => {}
                None => grants.push(grant),
            }
        }
    }
    if grants.is_empty() {
        bail!("no scope given: pass --scope, e.g. --scope read:articles");
    }
    if grants.len() > MAX_SCOPES {
        bail!(
            "too many scopes: {} given, at most {MAX_SCOPES} allowed",
            grants.len()
        );
    }
    Ok(grants)
}

/// Parses a list of scopes without budgets (as `allowed_scopes` holds them).
pub fn parse_list<S: AsRef<str>>(values: &[S]) -> Result<Vec<Scope>> {
    let grants = parse_grants(values)?;
    if let Some(limited) = grants.iter().find(|g| g.uses.is_some()) {
        bail!("scope '{}' cannot carry a use budget here", limited.scope);
    }
    Ok(grants.into_iter().map(|g| g.scope).collect())
}

/// Whether any of `scopes` grants `action`.
pub fn any_grants(scopes: &[Scope], action: &Action) -> bool {
    scopes.iter().any(|scope| scope.grants(action))
}

/// Joins scopes with commas, as `LEASE_SCOPE` carries them.
pub fn join(scopes: &[Scope]) -> String {
    let parts: Vec<&str> = scopes.iter().map(Scope::as_str).collect();
    parts.join(",")
}

fn validate(text: &str, what: &str) -> Result<()> {
    if text.is_empty() {
        bail!("invalid {what} '': it is empty (check for a stray or doubled comma)");
    }
    // A token where a scope or an action goes (a scope a token holder could then read back in
    // `lease list`, an action quoted in a denial and the trail): refused, and not quoted.
    if crate::token::is_token_shaped(text) {
        let article = if what.starts_with('a') { "an" } else { "a" };
        bail!("invalid {what}: that is a token, not {article} {what}");
    }
    let len = text.chars().count();
    if len > MAX_LEN {
        bail!("invalid {what}: {len} characters long, at most {MAX_LEN} allowed");
    }
    let body = text.strip_suffix('*').unwrap_or(text);
    if let Some(bad) = body.chars().find(|c| !allowed(*c)) {
        let shown = text.escape_debug();
        if bad == '*' {
            bail!("invalid {what} '{shown}': '*' is only allowed as the last character");
        }
        bail!(
            "invalid {what} '{shown}': character '{}' is not allowed (use A-Z a-z 0-9 : . _ / -, and an optional trailing *)",
            bad.escape_debug()
        );
    }
    Ok(())
}

fn allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, ':' | '.' | '_' | '/' | '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grants(scope: &str, action: &str) -> bool {
        Scope::parse(scope)
            .expect("valid scope")
            .grants(&Action::parse(action).expect("valid action"))
    }

    #[test]
    fn a_token_is_neither_a_scope_nor_an_action_and_is_not_quoted() {
        let token = format!("agt_{}", "Zq9".repeat(14));
        for text in [token.clone(), format!("read:{token}"), format!("{token}*")] {
            let err = Action::parse(&text).expect_err("a token is no action");
            assert_eq!(
                err.to_string(),
                "invalid action: that is a token, not an action"
            );
            let err = Scope::parse(&text).expect_err("a token is no scope");
            assert_eq!(
                err.to_string(),
                "invalid scope: that is a token, not a scope"
            );
            let err = parse_grants(&[format!("read:a,{text}=2")]).expect_err("nor a grant");
            assert!(!format!("{err:#}").contains(&token), "{err:#}");
        }
    }

    #[test]
    fn exact_and_wildcard_matching() {
        assert!(grants("read:articles", "read:articles"));
        assert!(!grants("read:articles", "read:articles2"));
        assert!(!grants("read:articles", "read"));
        assert!(grants("read:*", "read:anything/at/all"));
        assert!(grants("read:*", "read:"));
        assert!(!grants("read:*", "write:x"));
        assert!(!grants("read:*", "rea"));
        assert!(grants("*", "deploy:prod"));
    }

    #[test]
    fn rejects_bad_scopes() {
        for bad in [
            "",
            "a b",
            "read:*x",
            "a*b",
            "é",
            "a,b",
            "x\ny",
            &"a".repeat(129),
        ] {
            assert!(Scope::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(Scope::parse(&"a".repeat(128)).is_ok());
    }

    #[test]
    fn covers_means_grants_everything_the_other_grants() {
        let covers = |a: &str, b: &str| {
            Scope::parse(a)
                .expect("a")
                .covers(&Scope::parse(b).expect("b"))
        };
        assert!(covers("read:*", "read:a"));
        assert!(covers("read:*", "read:a*"));
        assert!(covers("read:*", "read:*"));
        assert!(!covers("read:*", "read*"));
        assert!(!covers("read:*", "*"));
        assert!(covers("*", "anything"));
        assert!(covers("read:a", "read:a"));
        assert!(!covers("read:a", "read:a*"));
        assert!(!covers("read:a", "read:b"));
    }

    #[test]
    fn grants_carry_optional_budgets() {
        let grants = parse_grants(&["write:draft=1,read:*", "deploy=3"]).expect("valid");
        let uses: Vec<Option<u64>> = grants.iter().map(|g| g.uses).collect();
        assert_eq!(uses, [Some(1), None, Some(3)]);
        for bad in [
            "a=0", "a=", "a=x", "a=-1", "a=+1", "a= 1", "a=1 ", "=3", "a=1=2",
        ] {
            assert!(parse_grants(&[bad]).is_err(), "{bad}");
        }
        assert!(parse_grants(&["a=1,a=2"]).is_err());
        assert!(parse_list(&["a=1"]).is_err());
    }

    #[test]
    fn list_keeps_order_and_drops_repeats() {
        let scopes = parse_list(&["b:1,a:2", "b:1", "c:*"]).expect("valid");
        assert_eq!(join(&scopes), "b:1,a:2,c:*");
        assert!(parse_list(&["a,,b"]).is_err());
        assert!(parse_list::<&str>(&[]).is_err());
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::*;

        const BODY: &str = "[A-Za-z0-9:._/-]{1,100}";

        proptest! {
            #[test]
            fn valid_scopes_parse_to_themselves(scope in "[A-Za-z0-9:._/-]{1,127}\\*?") {
                let parsed = Scope::parse(&scope).expect("valid");
                prop_assert_eq!(parsed.as_str(), scope.as_str());
            }

            #[test]
            fn anything_parses_or_is_refused_without_panicking(text in "\\PC{0,140}") {
                if let Ok(scope) = Scope::parse(&text) {
                    let body = scope.as_str().strip_suffix('*').unwrap_or(scope.as_str());
                    prop_assert!(body.chars().all(allowed));
                    prop_assert!((1..=MAX_LEN).contains(&text.chars().count()));
                }
            }

            #[test]
            fn a_wildcard_grants_exactly_its_prefix(prefix in BODY, suffix in "[A-Za-z0-9:._/-]{0,20}", other in BODY) {
                let wildcard = Scope::parse(&format!("{prefix}*")).expect("valid");
                let action = Action::parse(&format!("{prefix}{suffix}")).expect("valid");
                prop_assert!(wildcard.grants(&action));
                let unrelated = Action::parse(&other).expect("valid");
                prop_assert_eq!(wildcard.grants(&unrelated), other.starts_with(&prefix));
            }

            #[test]
            fn an_exact_scope_grants_only_itself(scope in BODY, action in BODY) {
                let exact = Scope::parse(&scope).expect("valid");
                prop_assert_eq!(exact.grants(&Action::parse(&action).expect("valid")), scope == action);
                prop_assert!(exact.grants(&Action::parse(&scope).expect("valid")));
            }

            #[test]
            fn lists_join_back_in_order(items in proptest::collection::vec(BODY, 1..20)) {
                let scopes = parse_list(&[items.join(",")]).expect("valid");
                let mut unique: Vec<&String> = Vec::new();
                for item in &items {
                    if !unique.contains(&item) {
                        unique.push(item);
                    }
                }
                let expected: Vec<&str> = unique.iter().map(|s| s.as_str()).collect();
                prop_assert_eq!(join(&scopes), expected.join(","));
            }
        }
    }
}
