//! The emulator's clock and the time formats Graph and the identity platform use.
//!
//! The clock is the wall clock plus an offset that tests move forward through the control
//! API (`POST /_emulator/clock/advance`): token expiry, authorization-code expiry, presence
//! session expiry and fading, subscription expiry and the throttling window all read it,
//! so a test sees an hour pass without waiting for it.

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A point in emulator time: the duration since the Unix epoch.
pub(crate) type Instant = Duration;

/// Wall clock plus a test-controlled offset.
#[derive(Debug, Default)]
pub(crate) struct Clock {
    offset: Mutex<Duration>,
}

impl Clock {
    /// Now, in emulator time.
    pub(crate) fn now(&self) -> Instant {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        wall + self.offset()
    }

    /// How far the clock has been moved ahead of the wall clock.
    pub(crate) fn offset(&self) -> Duration {
        self.offset.lock().map(|o| *o).unwrap_or_default()
    }

    /// Moves the clock forward.
    pub(crate) fn advance(&self, by: Duration) {
        if let Ok(mut offset) = self.offset.lock() {
            *offset = offset.saturating_add(by);
        }
    }
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// (year, month, day) → days since 1970-01-01.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn split(at: Instant) -> (i64, u32, u32, u64, u64, u64) {
    let secs = at.as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, mo, d) = civil_from_days(days);
    (y, mo, d, rem / 3600, (rem % 3600) / 60, rem % 60)
}

/// Graph's `DateTimeOffset` form, seven fraction digits: `2023-09-14T10:00:00.0000000Z`.
pub(crate) fn graph_datetime(at: Instant) -> String {
    let (y, mo, d, h, mi, s) = split(at);
    let frac = at.subsec_nanos() / 100;
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{frac:07}Z")
}

/// The identity platform's error timestamp form: `2016-01-09 02:02:12Z`.
pub(crate) fn aad_timestamp(at: Instant) -> String {
    let (y, mo, d, h, mi, s) = split(at);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}Z")
}

/// Graph's `innerError.date` form: `2020-08-18T12:51:51`.
pub(crate) fn inner_error_date(at: Instant) -> String {
    let (y, mo, d, h, mi, s) = split(at);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}")
}

/// Parses an RFC 3339 / ISO 8601 date-time with a `Z` or `±hh:mm` offset and up to nine
/// fraction digits, as Graph accepts in `expirationDateTime`.
pub(crate) fn parse_datetime(text: &str) -> Option<Instant> {
    let text = text.trim();
    let (date, rest) = text.split_once(['T', 't'])?;
    let mut date_parts = date.split('-');
    let y: i64 = date_parts.next()?.parse().ok()?;
    let mo: u32 = date_parts.next()?.parse().ok()?;
    let d: u32 = date_parts.next()?.parse().ok()?;
    if date_parts.next().is_some() || !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return None;
    }
    let (time, offset_secs) = if let Some(t) = rest.strip_suffix(['Z', 'z']) {
        (t, 0i64)
    } else {
        let pos = rest.rfind(['+', '-'])?;
        let (t, off) = rest.split_at(pos);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let (oh, om) = off.get(1..)?.split_once(':')?;
        let oh: i64 = oh.parse().ok()?;
        let om: i64 = om.parse().ok()?;
        (t, sign * (oh * 3600 + om * 60))
    };
    let (hms, frac) = match time.split_once('.') {
        Some((hms, frac)) => (hms, frac),
        None => (time, ""),
    };
    let mut hms_parts = hms.split(':');
    let h: u64 = hms_parts.next()?.parse().ok()?;
    let mi: u64 = hms_parts.next()?.parse().ok()?;
    let s: u64 = hms_parts.next().unwrap_or("0").parse().ok()?;
    if h > 23 || mi > 59 || s > 60 || hms_parts.next().is_some() {
        return None;
    }
    let mut nanos: u32 = 0;
    if !frac.is_empty() {
        if !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let digits: String = frac.chars().take(9).collect();
        let padded = format!("{digits:0<9}");
        nanos = padded.parse().ok()?;
    }
    let days = days_from_civil(y, mo, d);
    let secs = days * 86_400 + (h * 3600 + mi * 60 + s) as i64 - offset_secs;
    let secs = u64::try_from(secs).ok()?;
    Some(Duration::new(secs, nanos))
}

/// Parses an ISO 8601 duration as Graph's `expirationDuration` uses it (`PT5M`, `PT1H`,
/// `P1DT2H`, `PT0.5S`); years and months are refused (no fixed length).
pub(crate) fn parse_iso_duration(text: &str) -> Option<Duration> {
    let rest = text.trim().strip_prefix(['P', 'p'])?;
    if rest.is_empty() {
        return None;
    }
    let (date, time) = match rest.split_once(['T', 't']) {
        Some((d, t)) => {
            if t.is_empty() {
                return None;
            }
            (d, t)
        }
        None => (rest, ""),
    };
    let mut total = 0f64;
    let mut parse_part = |part: &str, units: &[(char, f64)]| -> Option<()> {
        let mut number = String::new();
        let mut unit_index = 0;
        for c in part.chars() {
            if c.is_ascii_digit() || c == '.' || c == ',' {
                number.push(if c == ',' { '.' } else { c });
            } else {
                let c = c.to_ascii_uppercase();
                let pos = units.iter().skip(unit_index).position(|(u, _)| *u == c)?;
                unit_index += pos;
                let value: f64 = number.parse().ok()?;
                total += value * units[unit_index].1;
                unit_index += 1;
                number.clear();
            }
        }
        number.is_empty().then_some(())
    };
    parse_part(date, &[('W', 604_800.0), ('D', 86_400.0)])?;
    parse_part(time, &[('H', 3600.0), ('M', 60.0), ('S', 1.0)])?;
    if !total.is_finite() || !(0.0..=1.0e12).contains(&total) {
        return None;
    }
    Some(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datetime_round_trip() {
        let at = Duration::new(1_694_685_600, 0);
        assert_eq!(graph_datetime(at), "2023-09-14T10:00:00.0000000Z");
        assert_eq!(parse_datetime("2023-09-14T10:00:00.0000000Z"), Some(at));
        assert_eq!(parse_datetime("2023-09-14T12:00:00+02:00"), Some(at));
        assert_eq!(aad_timestamp(at), "2023-09-14 10:00:00Z");
        assert_eq!(parse_datetime("not a date"), None);
    }

    #[test]
    fn iso_durations() {
        assert_eq!(parse_iso_duration("PT5M"), Some(Duration::from_secs(300)));
        assert_eq!(
            parse_iso_duration("PT4H"),
            Some(Duration::from_secs(14_400))
        );
        assert_eq!(
            parse_iso_duration("P1DT1H"),
            Some(Duration::from_secs(90_000))
        );
        assert_eq!(parse_iso_duration("PT"), None);
        assert_eq!(parse_iso_duration("5M"), None);
        assert_eq!(parse_iso_duration("PT5X"), None);
        assert_eq!(parse_iso_duration("P1Y"), None);
    }
}
