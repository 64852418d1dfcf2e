//! `/api/telemetry/report`: the rollups of a range, grouped by day, week or month.

use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Json, Response};
use jiff::Timestamp;

use super::request::{date_error, parse_dates};
use super::{ApiError, AppState, read_or_unavailable};
use crate::model::DayRange;
use crate::report::{
    DEFAULT_REPORT_DAYS, Grouping, MAX_HOUR_REPORT_DAYS, ReportRequest, telemetry_report,
};

/// `GET /api/telemetry/report?startDate=D&endDate=D&by=week&event=a&event=b`.
pub(super) async fn report(State(state): State<AppState>, RawQuery(query): RawQuery) -> Response {
    match parse(&state, query.as_deref().unwrap_or("")) {
        Ok(request) => {
            let read = telemetry_report(state.launcher.store(), &request);
            match read_or_unavailable(&state, read).await {
                Ok(report) => Json(report).into_response(),
                Err(error) => error.into_response(),
            }
        }
        Err(error) => error.into_response(),
    }
}

fn parse(state: &AppState, query: &str) -> Result<ReportRequest, ApiError> {
    let (mut start, mut end, mut by) = (None, None, None);
    let mut events = Vec::new();
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        let slot = match key.as_ref() {
            "startDate" => &mut start,
            "endDate" => &mut end,
            "by" => &mut by,
            "event" if !value.is_empty() => {
                // Stored names hold U+FFFD where their events held a NUL (which
                // PostgreSQL's text cannot hold): a name is asked for as it is stored.
                events.push(value.replace('\0', "\u{FFFD}"));
                continue;
            }
            "event" => {
                return Err(ApiError::bad_request(
                    "invalid_event",
                    "event must not be empty",
                ));
            }
            other => {
                return Err(ApiError::bad_request(
                    "unknown_field",
                    format!(
                        "unknown parameter '{}'; expected startDate, endDate, by or event",
                        other.escape_debug()
                    ),
                ));
            }
        };
        if slot.replace(value.into_owned()).is_some() {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("'{key}' is given more than once"),
            ));
        }
    }
    let by: Grouping = by
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(|message: String| ApiError::bad_request("invalid_by", message))?
        .unwrap_or_default();
    let job = state.launcher.job();
    let range = match parse_dates(start.as_deref(), end.as_deref())? {
        Some(range) => range,
        None => DayRange::ending_today(Timestamp::now(), &job.timezone, DEFAULT_REPORT_DAYS)
            .map_err(date_error)?,
    };
    let max_days = match by {
        Grouping::Hour => MAX_HOUR_REPORT_DAYS.min(i64::from(state.max_range_days)),
        _ => i64::from(state.max_range_days),
    };
    if range.len_days() > max_days {
        return Err(ApiError::bad_request(
            "range_too_long",
            format!(
                "the range {range} has {} days; at most {max_days} are allowed{}",
                range.len_days(),
                if by == Grouping::Hour { " by hour" } else { "" }
            ),
        ));
    }
    events.sort_unstable();
    events.dedup();
    Ok(ReportRequest {
        range,
        by,
        events,
        top_k: job.meta_top_k,
        timezone: job.timezone.clone(),
    })
}
