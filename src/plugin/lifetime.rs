//! Extending an environment: the `spec.ttl` that moves its expiry later by a given
//! duration, within its class's maximum, written as a Go duration. Pure.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

/// The TTL to write and the expiry it gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extension {
    pub ttl: Duration,
    pub expires_at: Timestamp,
}

/// The TTL that makes an environment created at `created`, now expiring at
/// `expires_at`, expire `by` later; refused, naming the field, above `max`.
pub fn extend(
    created: Timestamp,
    expires_at: Timestamp,
    by: Duration,
    max: Duration,
    class: &str,
) -> Result<Extension, String> {
    let lived = expires_at.duration_since(created).max(SignedDuration::ZERO);
    let current = Duration::try_from(lived).unwrap_or_default();
    // Whole seconds, rounded up, so the new expiry is never before the one asked for.
    let asked = current + by;
    let ttl = Duration::from_secs(asked.as_secs() + u64::from(asked.subsec_nanos() > 0));
    if ttl > max {
        let latest = created + SignedDuration::try_from(max).unwrap_or(SignedDuration::MAX);
        return Err(format!(
            "spec.ttl: extending by {} would make the TTL {}, over the maximum {} of class {class}; \
             the environment can live until {latest} at most",
            go_duration(by),
            go_duration(ttl),
            go_duration(max),
        ));
    }
    let expires_at = created + SignedDuration::try_from(ttl).unwrap_or(SignedDuration::MAX);
    Ok(Extension { ttl, expires_at })
}

/// A whole-second duration as Go prints it without its zero parts (`9h30m`, `45s`,
/// `1h0m5s` becomes `1h5s`), which `parse_duration` and the CRD pattern accept.
pub fn go_duration(d: Duration) -> String {
    let total = d.as_secs();
    let (h, m, s) = (total / 3600, total / 60 % 60, total % 60);
    let mut out = String::new();
    for (value, unit) in [(h, "h"), (m, "m"), (s, "s")] {
        if value > 0 {
            out.push_str(&format!("{value}{unit}"));
        }
    }
    if out.is_empty() { "0s".to_owned() } else { out }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::duration::parse_duration;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn extending_moves_the_expiry_by_exactly_the_duration() {
        let created = at("2026-12-03T08:00:00Z");
        let ext = extend(
            created,
            at("2026-12-03T16:00:00Z"),
            Duration::from_secs(2 * 3600),
            Duration::from_secs(24 * 3600),
            "standard",
        )
        .unwrap();
        assert_eq!(ext.ttl, Duration::from_secs(10 * 3600));
        assert_eq!(ext.expires_at, at("2026-12-03T18:00:00Z"));
        assert_eq!(go_duration(ext.ttl), "10h");
    }

    #[test]
    fn past_the_class_maximum_is_refused_naming_the_field() {
        let created = at("2026-12-03T08:00:00Z");
        let err = extend(
            created,
            at("2026-12-03T16:00:00Z"),
            Duration::from_secs(20 * 3600),
            Duration::from_secs(24 * 3600),
            "standard",
        )
        .unwrap_err();
        assert!(err.starts_with("spec.ttl:"), "{err}");
        assert!(
            err.contains("28h") && err.contains("24h") && err.contains("standard"),
            "{err}"
        );
        assert!(err.contains("2026-12-04T08:00:00Z"), "{err}");
    }

    #[test]
    fn fractions_of_a_second_round_up() {
        let created = at("2026-12-03T08:00:00.250Z");
        let ext = extend(
            created,
            at("2026-12-03T09:00:00Z"),
            Duration::from_secs(60),
            Duration::from_secs(86400),
            "c",
        )
        .unwrap();
        assert_eq!(go_duration(ext.ttl), "1h1m");
        assert!(ext.expires_at >= at("2026-12-03T09:01:00Z"));
    }

    #[test]
    fn go_durations_round_trip_through_the_parser() {
        for (secs, text) in [
            (0, "0s"),
            (45, "45s"),
            (3605, "1h5s"),
            (34200, "9h30m"),
            (90061, "25h1m1s"),
        ] {
            assert_eq!(go_duration(Duration::from_secs(secs)), text);
            assert_eq!(parse_duration(text).unwrap(), Duration::from_secs(secs));
        }
    }
}
