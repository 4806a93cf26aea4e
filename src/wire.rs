//! What travels between a client and the broker, as JSON: one type per body, shared by both
//! sides so that they cannot drift apart (docs/api.md shows each).

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::authorize::Reason;
use crate::config::Profile;
use crate::policy::Asked;
use crate::scope;

/// The answer of `POST /v1/verify`: `lease verify --json`'s object, and the sentence a denial
/// prints.
#[derive(Debug, Serialize, Deserialize)]
pub struct VerifyAnswer {
    /// Whether the action is granted.
    pub granted: bool,
    /// `granted`, or why not.
    pub reason: Reason,
    /// The lease id, when a lease was found.
    pub id: Option<String>,
    /// The lease's expiry (RFC 3339), when a lease was found.
    pub expires_at: Option<String>,
    /// Why not, for people (empty when granted).
    pub detail: String,
}

/// The body of `POST /v1/leases`: what `lease issue` was asked for.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MintBody {
    /// Scopes, each `SCOPE` or `SCOPE=N` (a use budget), as `--scope` takes them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scope: Vec<String>,
    /// Lifetime in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u64>,
    /// Total granted verifies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uses: Option<u64>,
    /// A profile of the broker's config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// A root lease even with a bearer token (an operator's right).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_parent: bool,
}

impl MintBody {
    /// The body for what the command line asked.
    pub fn from_asked(asked: &Asked) -> MintBody {
        MintBody {
            scope: asked
                .flags
                .scope
                .iter()
                .flatten()
                .map(|grant| match grant.uses {
                    Some(n) => format!("{}={n}", grant.scope),
                    None => grant.scope.to_string(),
                })
                .collect(),
            ttl: asked.flags.ttl.map(|ttl| ttl.as_secs()),
            uses: asked.flags.uses,
            profile: asked.profile.clone(),
            no_parent: asked.no_parent,
        }
    }

    /// What the broker plans from: the same `Asked` the command line would have made.
    pub fn into_asked(self) -> Result<Asked> {
        let scope = if self.scope.is_empty() {
            None
        } else {
            Some(scope::parse_grants(&self.scope)?)
        };
        if self.uses == Some(0) {
            anyhow::bail!("uses must be at least 1");
        }
        let ttl = match self.ttl {
            Some(seconds) => Some(crate::ttl::parse(&seconds.to_string())?),
            None => None,
        };
        Ok(Asked {
            profile: self.profile,
            flags: Profile {
                scope,
                ttl,
                uses: self.uses,
                ..Profile::default()
            },
            no_parent: self.no_parent,
        })
    }
}

/// The answer of `POST /v1/leases`: `lease issue --json`'s object. The only answer that holds
/// a token: the new lease's, for the client that asked for it; zeroed when dropped.
#[derive(Debug, Serialize, Deserialize)]
pub struct Minted {
    /// The new lease's id.
    pub id: String,
    /// Its token.
    pub token: String,
    /// Its scopes.
    pub scope: Vec<String>,
    /// Its expiry (RFC 3339).
    pub expires_at: String,
}

impl Drop for Minted {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.token);
    }
}

/// `{"error": "..."}`: why a request was refused or failed.
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    /// One line, redacted of anything shaped like a token.
    pub error: String,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_mint_body_carries_what_the_command_line_asked() {
        let asked = Asked {
            profile: Some("deploy".into()),
            flags: Profile {
                scope: Some(scope::parse_grants(&["read:a,write:b=3"]).expect("valid")),
                ttl: Some(Duration::from_secs(300)),
                uses: Some(7),
                ..Profile::default()
            },
            no_parent: true,
        };
        let body = MintBody::from_asked(&asked);
        let text = serde_json::to_string(&body).expect("json");
        assert_eq!(
            text,
            r#"{"scope":["read:a","write:b=3"],"ttl":300,"uses":7,"profile":"deploy","no_parent":true}"#
        );
        let back: MintBody = serde_json::from_str(&text).expect("json");
        let again = back.into_asked().expect("valid");
        assert_eq!(again.flags.scope, asked.flags.scope);
        assert_eq!(again.flags.ttl, asked.flags.ttl);
        assert_eq!(again.flags.uses, Some(7));
        assert_eq!(again.profile.as_deref(), Some("deploy"));
        assert!(again.no_parent);
    }

    #[test]
    fn a_bad_mint_body_is_refused() {
        for text in [
            r#"{"scope":["no spaces"]}"#,
            r#"{"scope":["a:b=0"]}"#,
            r#"{"uses":0}"#,
            r#"{"ttl":999999999999}"#,
        ] {
            let body: MintBody = serde_json::from_str(text).expect("json");
            assert!(body.into_asked().is_err(), "{text}");
        }
        assert!(serde_json::from_str::<MintBody>(r#"{"scopes":[]}"#).is_err());
    }
}
