//! The `timestamp` of a state message: RFC 3339 in UTC with milliseconds,
//! written straight into the payload buffer (it is formatted for every
//! state message; going through `fmt` cost more than the rest of a small
//! payload's framing).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Latest timestamp written (end of year 9999); later times are written as it.
pub(crate) const MAX_TIMESTAMP_SECS: u64 = 253_402_300_799;

/// Appends `at` as `YYYY-MM-DDTHH:MM:SS.mmmZ`, exactly as
/// `humantime::format_rfc3339_millis` formats it after clamping `at` to
/// 1970-01-01T00:00:00Z ..= 9999-12-31T23:59:59Z.
pub(crate) fn push_rfc3339_millis(buf: &mut Vec<u8>, at: SystemTime) {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let since = since.min(Duration::from_secs(MAX_TIMESTAMP_SECS));
    let secs = since.as_secs();
    let millis = since.subsec_millis();
    let (year, month, day) = civil_from_days(secs / 86_400);
    let of_day = secs % 86_400;
    let (hour, minute, second) = (of_day / 3600, of_day / 60 % 60, of_day % 60);

    let mut out = *b"0000-00-00T00:00:00.000Z";
    let mut put = |at: usize, digits: usize, mut v: u64| {
        for i in (at..at + digits).rev() {
            out[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, year);
    put(5, 2, month);
    put(8, 2, day);
    put(11, 2, hour);
    put(14, 2, minute);
    put(17, 2, second);
    put(20, 3, u64::from(millis));
    buf.extend_from_slice(&out);
}

/// Year, month (1..=12) and day (1..=31) of the day `days` after 1970-01-01
/// (proleptic Gregorian; H. Hinnant's `civil_from_days` for days ≥ 0).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ours(at: SystemTime) -> String {
        let mut buf = Vec::new();
        push_rfc3339_millis(&mut buf, at);
        String::from_utf8(buf).unwrap()
    }

    fn humantime_clamped(at: SystemTime) -> String {
        let at = at.clamp(
            UNIX_EPOCH,
            UNIX_EPOCH + Duration::from_secs(MAX_TIMESTAMP_SECS),
        );
        humantime::format_rfc3339_millis(at).to_string()
    }

    #[test]
    fn known_instants() {
        let t = |s: u64, ms: u64| UNIX_EPOCH + Duration::from_secs(s) + Duration::from_millis(ms);
        assert_eq!(ours(t(0, 0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(ours(t(951_782_400, 5)), "2000-02-29T00:00:00.005Z");
        assert_eq!(ours(t(1_795_305_600, 123)), "2026-11-22T00:00:00.123Z");
        assert_eq!(
            ours(t(MAX_TIMESTAMP_SECS, 999)),
            "9999-12-31T23:59:59.000Z",
            "clamped like the old formatter"
        );
        assert_eq!(
            ours(UNIX_EPOCH - Duration::from_secs(5)),
            "1970-01-01T00:00:00.000Z"
        );
    }

    #[test]
    fn same_text_as_humantime_across_the_range() {
        // Day boundaries around every leap rule, then a pseudo-random sweep.
        let mut instants: Vec<SystemTime> = [
            0u64,
            86_399,
            86_400,
            951_782_399,    // 2000-02-28T23:59:59
            951_868_800,    // 2000-03-01
            4_107_542_400,  // 2100-03-01 (2100 is not a leap year)
            4_107_455_999,  // 2100-02-28T23:59:59
            13_574_563_200, // 2400-02-29
            MAX_TIMESTAMP_SECS,
        ]
        .iter()
        .map(|s| UNIX_EPOCH + Duration::from_secs(*s))
        .collect();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let secs = x % (MAX_TIMESTAMP_SECS + 1000);
            let nanos = (x >> 20) as u32 % 1_000_000_000;
            instants.push(UNIX_EPOCH + Duration::new(secs, nanos));
        }
        for at in instants {
            assert_eq!(ours(at), humantime_clamped(at), "{at:?}");
        }
    }
}
