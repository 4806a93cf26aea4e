//! Lifetimes: parsing `--ttl` and config durations, and the limits they must respect.

use std::time::Duration;

use anyhow::{Result, bail};

/// The lifetime a lease gets when neither `--ttl` nor `default_ttl` says otherwise.
pub const DEFAULT_TTL: Duration = Duration::from_secs(600);
/// The longest lifetime allowed when the config sets no `max_ttl`.
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// Parses a duration given as whole seconds (`300`) or in human form (`5m`, `1h30m`).
///
/// The result must be a positive whole number of seconds.
pub fn parse(text: &str) -> Result<Duration> {
    let trimmed = text.trim();
    let duration = if !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit()) {
        match trimmed.parse::<u64>() {
            Ok(seconds) => Duration::from_secs(seconds),
            Err(_) => bail!("invalid duration '{}': too large", text.escape_debug()),
        }
    } else {
        match humantime::parse_duration(trimmed) {
            Ok(duration) => duration,
            Err(err) => bail!(
                "invalid duration '{}': {err} (use seconds like 300, or 5m, 1h30m)",
                text.escape_debug()
            ),
        }
    };
    if duration.is_zero() {
        bail!(
            "invalid duration '{}': it must be more than 0",
            text.escape_debug()
        );
    }
    if duration.subsec_nanos() != 0 {
        bail!(
            "invalid duration '{}': it must be a whole number of seconds",
            text.escape_debug()
        );
    }
    Ok(duration)
}

/// Formats a duration for people in whole seconds, e.g. `4m 58s` or `24h`.
pub fn human(duration: Duration) -> String {
    let total = duration.as_secs();
    let parts = [
        (total / 3600, "h"),
        (total / 60 % 60, "m"),
        (total % 60, "s"),
    ];
    let shown: Vec<String> = parts
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, unit)| format!("{n}{unit}"))
        .collect();
    if shown.is_empty() {
        "0s".to_owned()
    } else {
        shown.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_seconds_and_human_forms() {
        assert_eq!(parse("300").expect("ok"), Duration::from_secs(300));
        assert_eq!(parse("5m").expect("ok"), Duration::from_secs(300));
        assert_eq!(parse("1h30m").expect("ok"), Duration::from_secs(5400));
        assert_eq!(parse("2h 5s").expect("ok"), Duration::from_secs(7205));
    }

    #[test]
    fn formats_for_people() {
        assert_eq!(human(Duration::from_secs(298)), "4m 58s");
        assert_eq!(human(Duration::from_secs(86400)), "24h");
        assert_eq!(human(Duration::from_millis(400)), "0s");
    }

    #[test]
    fn rejects_zero_fractions_and_garbage() {
        for bad in [
            "0",
            "0s",
            "",
            "-5",
            "1.5s",
            "500ms",
            "5 parsecs",
            "abc",
            "99999999999999999999999",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::*;

        proptest! {
            #[test]
            fn whole_seconds_parse_exactly(seconds in 1u64..10_000_000_000) {
                prop_assert_eq!(parse(&seconds.to_string()).expect("valid"), Duration::from_secs(seconds));
            }

            #[test]
            fn hours_minutes_seconds_add_up(h in 0u64..1000, m in 0u64..600, s in 0u64..600) {
                let text = format!("{h}h{m}m{s}s");
                let total = h * 3600 + m * 60 + s;
                match parse(&text) {
                    Ok(duration) => prop_assert_eq!(duration, Duration::from_secs(total)),
                    Err(_) => prop_assert_eq!(total, 0),
                }
            }

            #[test]
            fn human_form_parses_back(seconds in 1u64..100_000_000) {
                let duration = Duration::from_secs(seconds);
                prop_assert_eq!(parse(&human(duration)).expect("valid"), duration);
            }

            #[test]
            fn anything_parses_to_positive_whole_seconds_or_is_refused(text in "\\PC{0,30}") {
                if let Ok(duration) = parse(&text) {
                    prop_assert!(!duration.is_zero());
                    prop_assert_eq!(duration.subsec_nanos(), 0);
                }
            }
        }
    }
}
