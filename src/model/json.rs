//! The canonical form of the JSON the rollups hold: keys sorted, every number in one
//! fixed form, so that the same events always give the same bytes, whichever
//! database's text they came from.

use serde_json::Value;

/// A number as the summary writes it, wherever it appears (sums, minimums, maximums,
/// numbers inside nested values): integral values within 2^53 as integers, others in
/// the shortest form that reads back as the same `f64` (`0.1`, `1.2345e+29`); `null` if
/// not finite. Every number is read as the nearest double first, so `1e1`, `10.0`
/// and `10` are all written `10`, whichever database's text they came from.
pub fn json_number(x: f64) -> Value {
    const EXACT_INT: f64 = 9_007_199_254_740_992.0; // 2^53
    if x.fract() == 0.0 && x.abs() <= EXACT_INT {
        Value::from(x as i64)
    } else {
        serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
    }
}

/// Rewrites a stored summary in canonical form, so that summaries stored by either
/// database compare equal to freshly computed ones exactly when they mean the same.
/// Text that is not JSON is returned as it is (and so compares unequal).
pub fn canonical_json(text: &str) -> String {
    match serde_json::from_str::<Value>(text) {
        Ok(value) => canonical_value(value).to_string(),
        Err(_) => text.to_owned(),
    }
}

/// `value` with every number in the form [`json_number`] writes (keys are already
/// sorted: `serde_json::Map` keeps them so).
pub fn canonical_value(value: Value) -> Value {
    match value {
        Value::Number(n) => n.as_f64().map_or(Value::Number(n), json_number),
        Value::Array(items) => Value::Array(items.into_iter().map(canonical_value).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (k, canonical_value(v)))
                .collect(),
        ),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_normalizes_stored_numbers_and_key_order() {
        assert_eq!(
            canonical_json(r#"{"b": 1.0, "a": 10000000000000000000}"#),
            r#"{"a":1e+19,"b":1}"#
        );
        assert_eq!(canonical_json("not json"), "not json");
    }
}
