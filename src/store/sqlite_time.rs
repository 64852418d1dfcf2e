//! `created_at` as SQLite holds it: text, compared as text to find a day's rows.
//!
//! The source table's `created_at` may be in three forms (the contract's):
//!
//! - RFC 3339 in UTC, `2024-01-15T10:00:00.000Z` (any number of fractional digits,
//!   0 to 9): text order is time order, so a day is one range of the index;
//! - RFC 3339 with an offset, `2024-01-15T05:00:00-05:00`;
//! - SQLite's own `2024-01-15 10:00:00[.SSS]` (what `CURRENT_TIMESTAMP` writes), or
//!   the same with a `T`, read as UTC.
//!
//! A day is read in two parts. The range of the UTC form (`day_bounds`) holds the
//! day's `…Z` rows; it may hold other text too, which is placed by its instant or, if
//! it is no instant at all, counted as `invalid_created_at`. Rows in the other forms
//! do not sort where their instant is, so a second query reads the rows that do not
//! end in `Z` within a band of dates wide enough to hold any of the day's
//! (`band_bounds`), through a partial index of just those rows, and keeps those whose
//! instant falls in the day.

use jiff::Timestamp;
use jiff::civil::Date;

use crate::model::day_number;

/// The expression of the partial index on the rows not in the UTC form: the side
/// query's `WHERE` repeats it word for word, which is how SQLite knows it may use it.
pub(super) const NOT_UTC_FORM: &str = "substr(created_at, -1) <> 'Z'";

/// An instant in the source table's text form, e.g. `2024-01-15T10:00:00.000Z`.
pub fn sqlite_timestamp(at: Timestamp) -> String {
    at.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// A window bound as the text `created_at` is compared with: the instant rounded up
/// to a whole second, without fraction or zone, e.g. `2024-01-15T00:00:00`.
///
/// Every text form of an instant in that second (`…:00Z`, `…:00.000Z`,
/// `…:00.000000000Z`) starts with this text, so it sorts at or after it, and every
/// earlier second sorts before it: the comparison is right whatever the number of
/// fractional digits. A bound inside a second would not be (`.5Z` sorts after `.51`),
/// hence the rounding; windows that share a bound still share it after rounding, so
/// no event falls between them or into both.
pub fn sqlite_bound(at: Timestamp) -> String {
    // `as_second` truncates towards zero: the ceiling for instants before 1970.
    let second = at.as_second() + i64::from(at.subsec_nanosecond() > 0);
    // Within a second of jiff's limits no day ends; keep the bound as it is there.
    let whole = Timestamp::from_second(second).unwrap_or(at);
    whole.strftime("%Y-%m-%dT%H:%M:%S").to_string()
}

/// The text band that holds every row of `[start, end)` in a form other than UTC's:
/// from the date a day before `start` to the date two days after `end`, as
/// `YYYY-MM-DD` (a date alone sorts before every time of that date). Offsets reach at
/// most 23:59 either way, and SQLite's form is UTC, so a day and one either side hold
/// them all.
pub(super) fn band_bounds(start: Timestamp, end: Timestamp) -> (String, String) {
    let day = jiff::SignedDuration::from_hours(24);
    let utc_date = |at: Timestamp| at.to_zoned_datetime(jiff::tz::TimeZone::UTC).date();
    let low = start
        .checked_sub(day)
        .map(|at| utc_date(at).to_string())
        .unwrap_or_default();
    let high = end
        .checked_add(day)
        .ok()
        .and_then(|at| utc_date(at).tomorrow().ok())
        .map_or_else(|| "A".to_owned(), |date| date.to_string());
    (low, high)
}

/// Where a row read for a window belongs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Placement {
    /// In the window, at this instant: aggregated.
    Inside(Timestamp),
    /// An instant of another window (or one the other query reads): left out.
    Elsewhere,
    /// No instant in any allowed form: skipped whole, counted as `invalid_created_at`.
    Invalid,
}

/// Places a row the UTC range of `[start, end)` returned. Its `…Z` rows are in the
/// window by their text order; a row in another form is left to the band's query,
/// which reads every one of them; text that is no instant is this window's to count.
pub(super) fn place_in_utc_range(created_at: Option<&[u8]>) -> Placement {
    let Some(text) = created_at else {
        return Placement::Elsewhere;
    };
    match parse_created_at(text) {
        Some(at) if text.last() == Some(&b'Z') => Placement::Inside(at),
        Some(_) => Placement::Elsewhere,
        None => Placement::Invalid,
    }
}

/// Places a row the band's query returned (a row not ending in `Z`): inside when its
/// instant is in `[start, end)`. Text that is no instant is counted by the window whose
/// UTC range holds it, not here.
pub(super) fn place_in_band(
    created_at: Option<&[u8]>,
    start: Timestamp,
    end: Timestamp,
) -> Placement {
    match created_at.and_then(parse_created_at) {
        Some(at) if start <= at && at < end => Placement::Inside(at),
        _ => Placement::Elsewhere,
    }
}

/// The instant `text` names, when it is in one of the allowed forms:
/// `YYYY-MM-DD`, `T` or a space, `HH:MM:SS`, an optional fraction of 1 to 9 digits,
/// then `Z` (after a `T` only), `+HH:MM` or `-HH:MM`, or nothing (UTC).
pub(super) fn parse_created_at(text: &[u8]) -> Option<Timestamp> {
    let digits = |range: std::ops::Range<usize>| -> Option<i64> {
        let bytes = text.get(range)?;
        bytes.iter().try_fold(0i64, |n, b| {
            b.is_ascii_digit().then(|| n * 10 + i64::from(b - b'0'))
        })
    };
    let punctuation_ok = text.get(4) == Some(&b'-')
        && text.get(7) == Some(&b'-')
        && matches!(text.get(10), Some(b'T' | b' '))
        && text.get(13) == Some(&b':')
        && text.get(16) == Some(&b':');
    if !punctuation_ok {
        return None;
    }
    let date = Date::new(
        i16::try_from(digits(0..4)?).ok()?,
        i8::try_from(digits(5..7)?).ok()?,
        i8::try_from(digits(8..10)?).ok()?,
    )
    .ok()?;
    let (hour, minute, second) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let mut rest = &text[19..];
    let mut nanos = 0i64;
    if let Some(fraction) = rest.strip_prefix(b".") {
        let len = fraction.iter().take_while(|b| b.is_ascii_digit()).count();
        if !(1..=9).contains(&len) {
            return None;
        }
        let value = fraction[..len]
            .iter()
            .fold(0i64, |n, b| n * 10 + i64::from(b - b'0'));
        nanos = value * 10i64.pow(9 - len as u32);
        rest = &fraction[len..];
    }
    let offset_seconds = match rest {
        [] => 0,
        [b'Z'] if text[10] == b'T' => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let field = |a: u8, b: u8| {
                (a.is_ascii_digit() && b.is_ascii_digit())
                    .then(|| i64::from(a - b'0') * 10 + i64::from(b - b'0'))
            };
            let (hours, minutes) = (field(*h1, *h2)?, field(*m1, *m2)?);
            if hours > 23 || minutes > 59 {
                return None;
            }
            let seconds = hours * 3600 + minutes * 60;
            if *sign == b'-' { -seconds } else { seconds }
        }
        _ => return None,
    };
    let seconds = day_number(date) * 86_400 + hour * 3600 + minute * 60 + second - offset_seconds;
    Timestamp::new(seconds, i32::try_from(nanos).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Option<String> {
        parse_created_at(text.as_bytes()).map(|t| t.to_string())
    }

    #[test]
    fn every_allowed_form_gives_its_instant() {
        assert_eq!(
            at("2024-03-10T05:00:00.000Z").as_deref(),
            Some("2024-03-10T05:00:00Z")
        );
        assert_eq!(
            at("2024-03-10T05:00:00Z").as_deref(),
            Some("2024-03-10T05:00:00Z")
        );
        assert_eq!(
            at("2024-03-10T05:00:00.123456789Z").as_deref(),
            Some("2024-03-10T05:00:00.123456789Z")
        );
        // SQLite's own form, and the same with a T, are UTC.
        assert_eq!(
            at("2024-03-10 05:00:00").as_deref(),
            Some("2024-03-10T05:00:00Z")
        );
        assert_eq!(
            at("2024-03-10 05:00:00.5").as_deref(),
            Some("2024-03-10T05:00:00.5Z")
        );
        assert_eq!(
            at("2024-03-10T05:00:00").as_deref(),
            Some("2024-03-10T05:00:00Z")
        );
        // Offsets are subtracted: local time minus offset is UTC.
        assert_eq!(
            at("2024-03-10T00:30:00+05:30").as_deref(),
            Some("2024-03-09T19:00:00Z")
        );
        assert_eq!(
            at("2024-03-09T23:00:00-05:00").as_deref(),
            Some("2024-03-10T04:00:00Z")
        );
        assert_eq!(
            at("2024-03-10 05:00:00+00:00").as_deref(),
            Some("2024-03-10T05:00:00Z")
        );
    }

    #[test]
    fn text_in_no_allowed_form_is_no_instant() {
        for text in [
            "",
            "yesterday",
            "2024-03-10",
            "2024-03-10T05:00Z",
            "2024-03-10 05:00:00Z",
            "2024-02-30T05:00:00Z",
            "2024-03-10T24:00:00Z",
            "2024-03-10T05:00:60Z",
            "2024-03-10T05:00:00.Z",
            "2024-03-10T05:00:00.1234567890Z",
            "2024-03-10T05:00:00+5:00",
            "2024-03-10T05:00:00+24:00",
            "2024-03-10t05:00:00z",
            "2024-03-10T05:00:00Z ",
            "１２３４-03-10T05:00:00Z",
        ] {
            assert_eq!(at(text), None, "{text:?}");
        }
    }

    #[test]
    fn rows_of_the_utc_range_are_placed_by_their_form() {
        assert_eq!(
            place_in_utc_range(Some(b"2024-03-10T05:00:00Z")),
            Placement::Inside("2024-03-10T05:00:00Z".parse().unwrap())
        );
        // The band's query reads every row in another form, wherever it sorts.
        assert_eq!(
            place_in_utc_range(Some(b"2024-03-10T05:00:00+02:00")),
            Placement::Elsewhere
        );
        assert_eq!(
            place_in_utc_range(Some(b"2024-03-10Tjunk")),
            Placement::Invalid
        );
        assert_eq!(
            place_in_utc_range(Some(b"2024-03-10Tjunk Z")),
            Placement::Invalid
        );
        assert_eq!(place_in_utc_range(None), Placement::Elsewhere);
    }

    #[test]
    fn rows_of_the_band_are_kept_only_inside_the_window() {
        let start: Timestamp = "2024-03-10T00:00:00Z".parse().unwrap();
        let end: Timestamp = "2024-03-11T00:00:00Z".parse().unwrap();
        let place = |text: &str| place_in_band(Some(text.as_bytes()), start, end);
        let inside = |at: &str| Placement::Inside(at.parse().unwrap());
        assert_eq!(place("2024-03-10 05:00:00"), inside("2024-03-10T05:00:00Z"));
        assert_eq!(place("2024-03-09 23:59:59.999"), Placement::Elsewhere);
        assert_eq!(
            place("2024-03-09T20:00:00-05:00"),
            inside("2024-03-10T01:00:00Z")
        );
        assert_eq!(
            place("2024-03-11T01:00:00+02:00"),
            inside("2024-03-10T23:00:00Z")
        );
        assert_eq!(place("2024-03-11T02:00:00+02:00"), Placement::Elsewhere);
        // Text that is no instant is counted by the UTC range that holds it.
        assert_eq!(place("2024-03-10 junk"), Placement::Elsewhere);
    }

    #[test]
    fn the_band_holds_every_form_of_the_windows_instants() {
        let start: Timestamp = "2024-03-10T05:00:00Z".parse().unwrap();
        let end: Timestamp = "2024-03-11T05:00:00Z".parse().unwrap();
        let (low, high) = band_bounds(start, end);
        assert_eq!((low.as_str(), high.as_str()), ("2024-03-09", "2024-03-13"));
        for text in [
            "2024-03-10 05:00:00",
            "2024-03-09T05:01:00-23:59",
            "2024-03-12T04:58:00+23:59",
        ] {
            assert!(low.as_str() <= text && text < high.as_str(), "{text}");
        }
    }
}
