//! Lifetimes: parsing `--ttl` and config durations, and the limits they must respect.

use std::time::{Duration, SystemTime};

use anyhow::{Result, bail};

/// The lifetime a lease gets when neither `--ttl` nor `default_ttl` says otherwise.
pub const DEFAULT_TTL: Duration = Duration::from_secs(600);
/// The longest lifetime allowed when the config sets no `max_ttl`.
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// The longest duration lease accepts anywhere (`--ttl`, `--grace`, `--since`, the config):
/// ten years of 365.25 days, which is what `10y` means. Anything longer is refused where it is
/// read, so that no later time arithmetic can overflow.
pub const MAX: Duration = Duration::from_secs(10 * 31_557_600);

/// The latest time lease stores or prints: the end of year 9999, the last RFC 3339 can write.
const LATEST: Duration = Duration::from_secs(253_402_300_799);

/// Parses a duration given as whole seconds (`300`) or in human form (`5m`, `1h30m`).
///
/// The result must be a positive whole number of seconds, at most [`MAX`].
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
            // humantime's own hint ("for example 1sec or 1ms") names a unit lease refuses.
            Err(err) => bail!(
                "invalid duration '{}': {} (use seconds like 300, or 5m, 1h30m)",
                text.escape_debug(),
                err.to_string().replace(", for example 1sec or 1ms", "")
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
    if duration > MAX {
        bail!(
            "invalid duration '{}': too long: at most 10 years (10y, {} seconds)",
            text.escape_debug(),
            MAX.as_secs()
        );
    }
    Ok(duration)
}

/// `time + by`, or `None` when that is later than any time lease can store (the year 9999).
pub fn after(time: SystemTime, by: Duration) -> Option<SystemTime> {
    let latest = SystemTime::UNIX_EPOCH + LATEST;
    time.checked_add(by).filter(|later| *later <= latest)
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
    fn a_number_without_a_unit_is_told_of_the_units_lease_takes() {
        let err = parse("1.5").expect_err("no unit").to_string();
        assert_eq!(
            err,
            "invalid duration '1.5': time unit needed (use seconds like 300, or 5m, 1h30m)"
        );
    }

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

    #[test]
    fn ten_years_is_the_longest_duration() {
        assert_eq!(parse("10y").expect("ok"), MAX);
        assert_eq!(parse("315576000").expect("ok"), MAX);
        let err = parse("315576001").expect_err("too long");
        assert_eq!(
            format!("{err:#}"),
            "invalid duration '315576001': too long: at most 10 years (10y, 315576000 seconds)"
        );
        for bad in ["18446744073709551615", "99999999y", "100000000y", "11y"] {
            assert!(parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn after_refuses_times_lease_cannot_store() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(
            after(now, Duration::from_secs(60)),
            Some(now + Duration::from_secs(60))
        );
        assert_eq!(after(now, Duration::MAX), None);
        assert_eq!(
            after(SystemTime::UNIX_EPOCH + LATEST, Duration::from_secs(1)),
            None
        );
        assert!(after(SystemTime::UNIX_EPOCH + LATEST - MAX, MAX).is_some());
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::*;

        /// Any u64, with the values around the limits as likely as the rest.
        fn any_count() -> impl Strategy<Value = u64> {
            let max = MAX.as_secs();
            prop_oneof![
                any::<u64>(),
                0u64..1000,
                max - 1000..max + 1000,
                u64::MAX - 1000..=u64::MAX,
            ]
        }

        proptest! {
            #[test]
            fn every_whole_number_of_seconds_is_exact_or_refused_in_one_line(seconds in any_count()) {
                let text = seconds.to_string();
                match parse(&text) {
                    Ok(duration) => {
                        prop_assert!((1..=MAX.as_secs()).contains(&seconds));
                        prop_assert_eq!(duration, Duration::from_secs(seconds));
                    }
                    Err(err) => {
                        prop_assert!(seconds == 0 || seconds > MAX.as_secs());
                        let message = format!("{err:#}");
                        prop_assert!(!message.contains('\n'), "{}", message);
                        prop_assert!(message.starts_with(&format!("invalid duration '{text}': ")), "{}", message);
                    }
                }
            }

            #[test]
            fn every_number_of_each_unit_is_exact_or_refused(
                n in any_count(),
                (unit, seconds_per) in prop_oneof![
                    Just(("s", 1u64)),
                    Just(("m", 60)),
                    Just(("h", 3600)),
                    Just(("d", 86_400)),
                    Just(("w", 604_800)),
                    Just(("y", 31_557_600)),
                ],
            ) {
                let total = n.checked_mul(seconds_per).filter(|t| (1..=MAX.as_secs()).contains(t));
                match (parse(&format!("{n}{unit}")), total) {
                    (Ok(duration), Some(total)) => prop_assert_eq!(duration, Duration::from_secs(total)),
                    (Err(err), None) => {
                        let message = format!("{err:#}");
                        prop_assert!(!message.contains('\n'), "{}", message);
                    }
                    (result, total) => prop_assert!(false, "{}{}: {:?}, expected {:?}", n, unit, result, total),
                }
            }

            #[test]
            fn any_valid_duration_can_be_added_to_any_time_up_to_the_year_9999(
                seconds in 1u64..=MAX.as_secs(),
                since_epoch in 0u64..=LATEST.as_secs(),
            ) {
                let time = SystemTime::UNIX_EPOCH + Duration::from_secs(since_epoch);
                let later = after(time, Duration::from_secs(seconds));
                prop_assert_eq!(later.is_some(), since_epoch + seconds <= LATEST.as_secs());
                if let Some(later) = later {
                    // Whatever `after` returns can be written as RFC 3339.
                    prop_assert!(humantime::format_rfc3339_seconds(later).to_string().len() == 20);
                }
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
                    prop_assert!(!duration.is_zero() && duration <= MAX);
                    prop_assert_eq!(duration.subsec_nanos(), 0);
                }
            }
        }
    }
}
