//! The wall clock, in milliseconds since the Unix epoch: the one place that reads it for
//! records, deadlines and expiries; and RFC 3339 timestamps to and from Unix seconds.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 for a clock set before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Whole seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    now_ms() / 1000
}

/// Seconds since the Unix epoch of an RFC 3339 date-time (`2026-06-23T10:11:12.345Z`,
/// `…+02:00`; fractions of a second are dropped), or `None` when `text` is not one or is
/// before 1970.
pub fn parse_rfc3339(text: &str) -> Option<u64> {
    let t =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    u64::try_from(t.unix_timestamp()).ok()
}

/// `YYYY-MM-DDTHH:MM:SSZ` for `secs` since the Unix epoch.
pub fn format_rfc3339(secs: u64) -> String {
    let t = i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_timestamps_with_and_without_fractions_parse() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339("2026-06-23T10:11:12.345Z"),
            Some(1_782_209_472)
        );
        assert_eq!(parse_rfc3339("2000-02-29T23:59:59z"), Some(951_868_799));
    }

    #[test]
    fn offsets_are_applied() {
        assert_eq!(
            parse_rfc3339("2026-06-23T12:11:12+02:00"),
            parse_rfc3339("2026-06-23T10:11:12Z")
        );
        assert_eq!(
            parse_rfc3339("2026-06-23T05:11:12.1-05:00"),
            parse_rfc3339("2026-06-23T10:11:12Z")
        );
    }

    #[test]
    fn malformed_or_pre_epoch_timestamps_are_refused() {
        for bad in [
            "",
            "2026-06-23",
            "2026-13-01T00:00:00Z",
            "2026-02-30T00:00:00Z",
            "2026-06-23T10:11:12",
            "1969-12-31T23:59:59Z",
            "2026-06-23T10:11:12.Z",
            "2026-06-23T10:11:12+2:00",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn formatting_round_trips() {
        for secs in [0, 951_868_799, 1_782_209_472, 4_102_444_800] {
            assert_eq!(parse_rfc3339(&format_rfc3339(secs)), Some(secs));
        }
        assert_eq!(format_rfc3339(1_782_209_472), "2026-06-23T10:11:12Z");
    }
}
