//! Wall-clock time as Lodge stores and shows it, in one place (jiff).
//!
//! Stored times are RFC 3339 text in UTC with milliseconds
//! (`2026-11-30T05:30:00.123Z`), which sorts as time does in both databases;
//! usage is keyed by UTC hour (`2026-11-30T05`). A leaf module.

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};

/// Now, as RFC 3339 with milliseconds, UTC.
pub fn now_rfc3339() -> String {
    format!("{:.3}", Timestamp::now())
}

/// Today's date, `YYYY-MM-DD` UTC.
pub fn today() -> String {
    Timestamp::now().to_zoned(TimeZone::UTC).date().to_string()
}

/// The hour key (`YYYY-MM-DDTHH`, UTC) of `at`: what usage is stored under.
pub fn hour_key(at: Timestamp) -> String {
    at.to_zoned(TimeZone::UTC)
        .strftime("%Y-%m-%dT%H")
        .to_string()
}

/// This hour's key, `YYYY-MM-DDTHH` UTC.
pub fn this_hour() -> String {
    hour_key(Timestamp::now())
}

/// The hour key `days` days ago at midnight UTC (`YYYY-MM-DDT00`).
pub fn days_ago(days: i64) -> String {
    let then = Timestamp::now() - SignedDuration::from_hours(days.saturating_mul(24));
    format!("{}T00", then.to_zoned(TimeZone::UTC).date())
}

/// Reads a date (`YYYY-MM-DD`) or hour (`YYYY-MM-DDTHH`) in UTC as an hour
/// key; a bare date stands for its first hour, or its last when `end`.
/// `None` for anything else (an impossible date, a minute, a zone).
pub fn parse_hour_key(value: &str, end: bool) -> Option<String> {
    let (date, hour) = match value.split_once('T') {
        Some((date, hour)) => (date, Some(hour)),
        None => (value, None),
    };
    let date = Date::strptime("%Y-%m-%d", date).ok()?;
    let hour: i8 = match hour {
        Some(h) if h.len() == 2 && h.bytes().all(|b| b.is_ascii_digit()) => h.parse().ok()?,
        Some(_) => return None,
        None if end => 23,
        None => 0,
    };
    let time = jiff::civil::Time::new(hour, 0, 0, 0).ok()?;
    let at = date.to_datetime(time).to_zoned(TimeZone::UTC).ok()?;
    Some(at.strftime("%Y-%m-%dT%H").to_string())
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    Timestamp::now().as_millisecond()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_written_as_stored() {
        let now = now_rfc3339();
        assert_eq!(now.len(), "2026-11-30T05:30:00.123Z".len(), "{now}");
        assert!(now.ends_with('Z') && now.as_bytes()[19] == b'.', "{now}");
        assert_eq!(now[..10], today());
        assert_eq!(now[..13], this_hour());
        let at: Timestamp = "2024-02-29T23:59:59Z".parse().expect("timestamp");
        assert_eq!(hour_key(at), "2024-02-29T23");
    }

    #[test]
    fn usage_periods_are_read_strictly() {
        assert_eq!(
            parse_hour_key("2024-02-29", false).as_deref(),
            Some("2024-02-29T00")
        );
        assert_eq!(
            parse_hour_key("2024-02-29", true).as_deref(),
            Some("2024-02-29T23")
        );
        assert_eq!(
            parse_hour_key("2024-02-29T07", true).as_deref(),
            Some("2024-02-29T07")
        );
        for bad in [
            "2023-02-29",
            "2024-13-01",
            "2024-01-01T24",
            "2024-01-01T7",
            "2024-01-01T07:00",
            "yesterday",
            "",
        ] {
            assert_eq!(parse_hour_key(bad, false), None, "{bad}");
        }
    }
}
