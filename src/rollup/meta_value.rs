//! One top-level value of an event's `meta`, as both ways of reading it (the fast
//! scan and serde_json) give it.

use std::borrow::Cow;

/// One top-level value of an event's `meta` object.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue<'a> {
    /// JSON `null`: ignored by the summary.
    Null,
    /// `true` or `false`: counted in `values` as `"true"` or `"false"`.
    Bool(bool),
    /// Any number: summed, and its minimum and maximum kept.
    Number(f64),
    /// A string: counted in `values`.
    Text(Cow<'a, str>),
    /// An array or object: counted in `values` as compact JSON with sorted keys.
    Nested(String),
}
