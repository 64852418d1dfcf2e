//! What a request asks for: a range and whether to dry-run, from a query string or
//! a JSON body, validated into the job's types.

use jiff::civil::Date;
use serde_json::Value;

use super::error::ApiError;
use crate::model::{DateError, DayRange, parse_date};

/// A validated request to run the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RunRequest {
    /// `None`: the default range.
    pub range: Option<DayRange>,
    /// Read and aggregate only.
    pub dry_run: bool,
}

const FIELDS: [&str; 4] = ["date", "startDate", "endDate", "dryRun"];

impl RunRequest {
    /// Reads `date` (one day, as `--date`), `startDate`, `endDate` and `dryRun` from a
    /// query string.
    ///
    /// # Errors
    ///
    /// [`ApiError::BadRequest`] for an unknown or repeated parameter, a malformed
    /// date or `dryRun`, or a bad range.
    pub fn from_query(query: &str, max_days: u32) -> Result<Self, ApiError> {
        let (mut day, mut start, mut end, mut dry_run) = (None, None, None, None);
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            let slot = match key.as_ref() {
                "date" => &mut day,
                "startDate" => &mut start,
                "endDate" => &mut end,
                "dryRun" => &mut dry_run,
                other => return Err(unknown_field(other)),
            };
            if slot.replace(value.into_owned()).is_some() {
                return Err(ApiError::bad_request(
                    "invalid_query",
                    format!("'{key}' is given more than once"),
                ));
            }
        }
        let dry_run = match dry_run.as_deref() {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => {
                return Err(ApiError::bad_request(
                    "invalid_dry_run",
                    format!(
                        "dryRun must be true or false, not '{}'",
                        other.escape_debug()
                    ),
                ));
            }
        };
        let (start, end) = one_day_or_range(day.as_deref(), start.as_deref(), end.as_deref())?;
        Self::new(start, end, dry_run, max_days)
    }

    /// Reads the JSON body `{"date", "startDate", "endDate", "dryRun"}`, every field
    /// optional (`date` is one day, and excludes the other two dates);
    /// an empty (or all-whitespace) body means the default range.
    ///
    /// # Errors
    ///
    /// [`ApiError::BadRequest`] for malformed JSON, an unknown field, a field of the
    /// wrong type, a malformed date or a bad range.
    pub fn from_json(body: &[u8], max_days: u32) -> Result<Self, ApiError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self::default());
        }
        let Fields(fields) = serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(
                "invalid_json",
                format!("the body is not a JSON object: {e}"),
            )
        })?;
        if let Some(unknown) = fields.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(unknown_field(unknown));
        }
        let date = |name: &'static str| match fields.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(ApiError::bad_request(
                "invalid_date",
                format!("{name} must be a YYYY-MM-DD string"),
            )),
        };
        let dry_run = match fields.get("dryRun") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(ApiError::bad_request(
                    "invalid_dry_run",
                    "dryRun must be true or false",
                ));
            }
        };
        let (start, end) = one_day_or_range(date("date")?, date("startDate")?, date("endDate")?)?;
        Self::new(start, end, dry_run, max_days)
    }

    fn new(
        start: Option<&str>,
        end: Option<&str>,
        dry_run: bool,
        max_days: u32,
    ) -> Result<Self, ApiError> {
        let range = parse_dates(start, end)?;
        if let Some(range) = range
            && range.len_days() > i64::from(max_days)
        {
            return Err(ApiError::bad_request(
                "range_too_long",
                format!(
                    "the range {range} has {} days; at most {max_days} are allowed",
                    range.len_days()
                ),
            ));
        }
        Ok(Self { range, dry_run })
    }
}

/// A JSON object's fields, refusing a key given twice (which `serde_json::Value`
/// would silently resolve to the last).
pub(super) struct Fields(pub(super) serde_json::Map<String, Value>);

impl<'de> serde::Deserialize<'de> for Fields {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldsVisitor;
        impl<'de> serde::de::Visitor<'de> for FieldsVisitor {
            type Value = Fields;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Fields, A::Error> {
                let mut fields = serde_json::Map::new();
                while let Some(key) = map.next_key::<String>()? {
                    let value = map.next_value::<Value>()?;
                    if fields.contains_key(&key) {
                        return Err(serde::de::Error::custom(format!(
                            "'{}' is given more than once",
                            key.escape_debug()
                        )));
                    }
                    fields.insert(key, value);
                }
                Ok(Fields(fields))
            }
        }
        deserializer.deserialize_map(FieldsVisitor)
    }
}

fn unknown_field(name: &str) -> ApiError {
    ApiError::bad_request(
        "unknown_field",
        format!(
            "unknown field '{}'; expected date, startDate, endDate or dryRun",
            name.escape_debug()
        ),
    )
}

/// `date` as the range of that one day, or `startDate` and `endDate` as they are;
/// `date` with either of the others is refused, as `--date` is on the command line.
fn one_day_or_range<'a>(
    day: Option<&'a str>,
    start: Option<&'a str>,
    end: Option<&'a str>,
) -> Result<(Option<&'a str>, Option<&'a str>), ApiError> {
    if let Some(day) = day {
        // Checked here so that an error names the field the caller gave.
        parse_date("date", day).map_err(date_error)?;
    }
    match (day, start, end) {
        (Some(_), None, None) => Ok((day, day)),
        (Some(_), _, _) => Err(ApiError::bad_request(
            "invalid_range",
            "date is one day; give either date or startDate (and endDate), not both",
        )),
        (None, start, end) => Ok((start, end)),
    }
}

/// The range `startDate` and `endDate` name; `None` when neither is given.
pub(super) fn parse_dates(
    start: Option<&str>,
    end: Option<&str>,
) -> Result<Option<DayRange>, ApiError> {
    let parse = |field, value: Option<&str>| -> Result<Option<Date>, ApiError> {
        value
            .map(|v| parse_date(field, v))
            .transpose()
            .map_err(date_error)
    };
    DayRange::from_bounds(parse("startDate", start)?, parse("endDate", end)?).map_err(date_error)
}

pub(super) fn date_error(error: DateError) -> ApiError {
    let code = match error {
        DateError::Malformed { .. }
        | DateError::NoSuchDay { .. }
        | DateError::OutOfRange { .. } => "invalid_date",
        DateError::EndBeforeStart { .. } | DateError::EndWithoutStart => "invalid_range",
        DateError::NotBegun { .. } => "future_date",
    };
    let message = match error {
        DateError::EndWithoutStart => "endDate needs startDate".to_owned(),
        other => other.to_string(),
    };
    ApiError::bad_request(code, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::date;

    fn code(result: Result<RunRequest, ApiError>) -> &'static str {
        result.unwrap_err().code()
    }

    #[test]
    fn date_is_one_day_and_excludes_the_range_fields() {
        let day = Some(DayRange::new(date(2024, 1, 5), date(2024, 1, 5)).unwrap());
        assert_eq!(
            RunRequest::from_query("date=2024-01-05", 366)
                .unwrap()
                .range,
            day
        );
        assert_eq!(
            RunRequest::from_json(br#"{"date": "2024-01-05", "dryRun": true}"#, 366)
                .unwrap()
                .range,
            day
        );
        for query in [
            "date=2024-01-05&startDate=2024-01-01",
            "date=2024-01-05&endDate=2024-01-09",
        ] {
            assert_eq!(
                code(RunRequest::from_query(query, 366)),
                "invalid_range",
                "{query}"
            );
        }
        assert_eq!(
            code(RunRequest::from_json(
                br#"{"date": "2024-01-05", "startDate": "2024-01-01"}"#,
                366
            )),
            "invalid_range"
        );
        assert_eq!(
            code(RunRequest::from_query("date=2024-02-30", 366)),
            "invalid_date"
        );
    }

    #[test]
    fn query_strings_follow_the_contract() {
        assert_eq!(RunRequest::from_query("", 366), Ok(RunRequest::default()));
        let request =
            RunRequest::from_query("startDate=2024-01-01&endDate=2024-01-03&dryRun=true", 366)
                .unwrap();
        assert_eq!(
            request.range,
            Some(DayRange::new(date(2024, 1, 1), date(2024, 1, 3)).unwrap())
        );
        assert!(request.dry_run);
        assert_eq!(
            code(RunRequest::from_query("dryRun=yes", 366)),
            "invalid_dry_run"
        );
        assert_eq!(
            code(RunRequest::from_query("startDate=2024-1-1", 366)),
            "invalid_date"
        );
        assert_eq!(
            code(RunRequest::from_query("endDate=2024-01-01", 366)),
            "invalid_range"
        );
        assert_eq!(
            code(RunRequest::from_query(
                "startDate=2024-01-02&endDate=2024-01-01",
                366
            )),
            "invalid_range"
        );
        assert_eq!(
            code(RunRequest::from_query(
                "startDate=2024-01-01&endDate=2025-01-01",
                366
            )),
            "range_too_long"
        );
        assert_eq!(
            code(RunRequest::from_query("startdate=2024-01-01", 366)),
            "unknown_field"
        );
    }

    #[test]
    fn json_bodies_follow_the_contract() {
        assert_eq!(RunRequest::from_json(b"", 366), Ok(RunRequest::default()));
        assert_eq!(RunRequest::from_json(b"{}", 366), Ok(RunRequest::default()));
        let request =
            RunRequest::from_json(br#"{"startDate":"2024-01-01","dryRun":true}"#, 366).unwrap();
        assert_eq!(request.range, Some(DayRange::single(date(2024, 1, 1))));
        assert_eq!(code(RunRequest::from_json(b"{", 366)), "invalid_json");
        assert_eq!(code(RunRequest::from_json(b"[]", 366)), "invalid_json");
        let repeated = RunRequest::from_json(br#"{"dryRun":true,"dryRun":false}"#, 366);
        assert_eq!(code(repeated.clone()), "invalid_json");
        assert!(
            repeated
                .unwrap_err()
                .to_string()
                .contains("'dryRun' is given more than once")
        );
        assert_eq!(
            code(RunRequest::from_json(br#"{"start":"2024-01-01"}"#, 366)),
            "unknown_field"
        );
        assert_eq!(
            code(RunRequest::from_json(br#"{"dryRun":"true"}"#, 366)),
            "invalid_dry_run"
        );
        assert_eq!(
            code(RunRequest::from_json(br#"{"startDate":20240101}"#, 366)),
            "invalid_date"
        );
    }
}
