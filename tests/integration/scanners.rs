//! The secret-scanner rules shipped in docs/secret-scanning match a real lease token and not
//! its near misses. gitleaks and trufflehog use Go's RE2 syntax, which the `regex` crate shares.

use std::path::Path;

use regex::Regex;

use crate::harness::Sandbox;

fn doc(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docs/secret-scanning")
        .join(name);
    std::fs::read_to_string(path).unwrap()
}

fn gitleaks_rule() -> Regex {
    let config: toml::Table = doc("gitleaks.toml").parse().unwrap();
    let rules = config["rules"].as_array().unwrap();
    let rule = rules
        .iter()
        .find(|r| r["id"].as_str() == Some("lease-token"))
        .unwrap();
    assert_eq!(rule["secretGroup"].as_integer(), Some(1));
    Regex::new(rule["regex"].as_str().unwrap()).unwrap()
}

fn trufflehog_rule() -> Regex {
    let text = doc("trufflehog.yaml");
    let line = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("token: "))
        .unwrap();
    Regex::new(line.trim_matches('\'')).unwrap()
}

/// The token the rule captures in `text`, if any.
fn found(rule: &Regex, text: &str) -> Option<String> {
    rule.captures(text).map(|c| c[1].to_owned())
}

#[test]
fn scanner_rules_match_a_real_token_and_not_near_misses() {
    let token = Sandbox::new().issue("a");
    for rule in [gitleaks_rule(), trufflehog_rule()] {
        for context in [
            "{}",
            "LEASE_TOKEN={}\n",
            "export T=\"{}\"",
            "token: '{}'",
            "Authorization: Bearer {}",
        ] {
            let text = context.replace("{}", &token);
            assert_eq!(
                found(&rule, &text).as_deref(),
                Some(token.as_str()),
                "{rule} in {text:?}"
            );
        }
        let body = &token[4..];
        for near_miss in [
            token[..token.len() - 1].to_owned(), // one character short
            format!("{token}A"),                 // one character long
            format!("agx_{body}"),               // another prefix
            format!("xagt_{body}"),              // part of a longer word
            format!("AGT_{body}"),               // case matters
            format!(
                "agt_{}",
                &body.replace(|c: char| c.is_ascii_alphanumeric(), ".")
            ), // not base64url
        ] {
            assert_eq!(
                found(&rule, &near_miss),
                None,
                "{rule} matched {near_miss:?}"
            );
        }
    }
}
