//! Table names taken from configuration.

use std::fmt;

/// A table name taken from configuration: validated, then always used quoted.
///
/// Accepts `name` or `schema.name`, each part an ASCII letter or underscore followed
/// by letters, digits or underscores, at most 63 bytes (PostgreSQL's limit). Nothing
/// else can reach SQL, so no configuration value can inject any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableName {
    parts: Vec<String>,
}

impl TableName {
    /// Validates `value`.
    ///
    /// # Errors
    ///
    /// A message naming what is wrong with the value.
    pub fn parse(value: &str) -> Result<Self, String> {
        let parts: Vec<&str> = value.split('.').collect();
        if parts.len() > 2 {
            return Err(format!("'{}' has more than one '.'", value.escape_debug()));
        }
        for part in &parts {
            let valid_start = part
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
            let valid_rest = part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid_start || !valid_rest || part.len() > 63 {
                return Err(format!(
                    "'{}' is not a plain SQL identifier (letters, digits and _, not starting with a digit, at most 63 bytes, optionally schema.table)",
                    value.escape_debug()
                ));
            }
        }
        Ok(Self {
            parts: parts.into_iter().map(str::to_owned).collect(),
        })
    }

    /// The name quoted for SQL, e.g. `"public"."events"`.
    pub fn quoted(&self) -> String {
        let quoted: Vec<String> = self.parts.iter().map(|p| format!("\"{p}\"")).collect();
        quoted.join(".")
    }

    /// The unqualified table name.
    pub fn table(&self) -> &str {
        // `parse` always yields one or two non-empty parts.
        self.parts.last().map_or("", String::as_str)
    }

    /// The schema part of `schema.name`, if given.
    pub fn schema(&self) -> Option<&str> {
        (self.parts.len() == 2).then(|| self.parts[0].as_str())
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.parts.join("."))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_validated_and_quoted() {
        assert_eq!(TableName::parse("events").unwrap().quoted(), "\"events\"");
        let qualified = TableName::parse("app.events_2").unwrap();
        assert_eq!(qualified.quoted(), "\"app\".\"events_2\"");
        assert_eq!(
            (qualified.schema(), qualified.table()),
            (Some("app"), "events_2")
        );
        for hostile in [
            "events; DROP TABLE x",
            "ev\"ents",
            "events--",
            "a.b.c",
            "1events",
            "",
            "évènements",
            "events/*",
            &"x".repeat(64),
        ] {
            assert!(
                TableName::parse(hostile).is_err(),
                "{hostile} must be refused"
            );
        }
    }
}
