//! A ClickHouse source's URL read: where its HTTP interface is, which database, who
//! reads it, and the URL without its password for messages.

use url::Url;

use super::super::StoreError;

/// Where a ClickHouse source answers and who reads it.
#[derive(Debug, Clone)]
pub(super) struct Endpoint {
    /// `http(s)://host:port/?database=…&wait_end_of_query=1` and the URL's own
    /// settings.
    pub(super) url: Url,
    pub(super) https: bool,
    pub(super) user: String,
    pub(super) password: Option<String>,
    /// The URL without its password, for messages.
    pub(super) target: String,
}

impl Endpoint {
    /// The endpoint `url` names (`clickhouse://[user[:password]@]host[:port]/database`,
    /// `clickhouses://` for HTTPS; query parameters are passed on as settings).
    pub(super) fn parse(url: &str) -> Result<Self, StoreError> {
        let target = super::super::redact_url(url);
        let invalid = |why: String| StoreError::InvalidSourceUrl(format!("'{target}': {why}"));
        let parsed = Url::parse(url).map_err(|e| invalid(e.to_string()))?;
        let (scheme, default_port) = match parsed.scheme() {
            "clickhouse" => ("http", 8123),
            "clickhouses" => ("https", 8443),
            other => {
                return Err(invalid(format!(
                    "the scheme is {other}://, not clickhouse:// or clickhouses://"
                )));
            }
        };
        let host = parsed
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| invalid("it names no host".into()))?;
        let database = parsed.path().trim_start_matches('/');
        if database.is_empty() || database.contains('/') {
            return Err(invalid(
                "it names no database (clickhouse://host:8123/DATABASE)".into(),
            ));
        }
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|s| s.into_owned())
                .map_err(|_| invalid("its user or password is not UTF-8 once decoded".into()))
        };
        let user = match parsed.username() {
            "" => "default".to_owned(),
            user => decode(user)?,
        };
        let password = parsed.password().map(decode).transpose()?;
        let database = decode(database)?;
        let port = parsed.port().unwrap_or(default_port);
        let mut endpoint = Url::parse(&format!("{scheme}://{host}:{port}/"))
            .map_err(|e| invalid(e.to_string()))?;
        endpoint
            .query_pairs_mut()
            .extend_pairs(parsed.query_pairs())
            .append_pair("database", &database)
            .append_pair("wait_end_of_query", "1");
        Ok(Self {
            url: endpoint,
            https: scheme == "https",
            user,
            password,
            target,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_the_server_database_and_user() {
        let source =
            Endpoint::parse("clickhouse://reader:p%40ss@ch.internal/analytics?max_threads=4")
                .unwrap();
        assert_eq!(
            source.url.as_str(),
            "http://ch.internal:8123/?max_threads=4&database=analytics&wait_end_of_query=1"
        );
        assert_eq!(source.user, "reader");
        assert_eq!(source.password.as_deref(), Some("p@ss"));
        assert_eq!(
            source.target,
            "clickhouse://reader:***@ch.internal/analytics?max_threads=4"
        );
        let tls = Endpoint::parse("clickhouses://ch:9440/db").unwrap();
        assert_eq!(
            tls.url.as_str(),
            "https://ch:9440/?database=db&wait_end_of_query=1"
        );
        assert_eq!(tls.user, "default");
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        for (url, says) in [
            ("postgres://h/db", "not clickhouse:// or clickhouses://"),
            ("clickhouse://h:8123", "names no database"),
            ("clickhouse://h/a/b", "names no database"),
            ("clickhouse://:pw@/db", "empty host"),
            ("clickhouse://h:99999/db", "invalid port"),
        ] {
            let error = Endpoint::parse(url).unwrap_err().to_string();
            assert!(error.contains(says), "{url}: {error}");
            assert!(!error.contains("pw@"), "{error}");
        }
    }
}
