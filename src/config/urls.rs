//! The URLs of `[database] connection` and `[DEFAULT] transport_url`,
//! parsed once when the configuration loads (so a typo stops start-up, not
//! the first query) and handed to the catalog and the bus.

use std::fmt;

/// A URL that cannot work, with what is wrong (passwords hidden).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UrlError(pub String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
/// Which database server a catalog URL names.
pub enum Backend {
    Mysql,
    Sqlite,
}

/// A parsed `[database] connection` URL.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl {
    pub backend: Backend,
    /// What diesel's `establish` takes: a `mysql://` URL or a file path.
    pub target: String,
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl DatabaseUrl {
    /// Accepts the SQLAlchemy forms OpenStack deployments use:
    /// `mysql+pymysql://u:p@host[:port]/db?charset=utf8`, `mysql://…`,
    /// `sqlite:////absolute/path` and `sqlite:///relative/path`.
    pub fn parse(raw: &str) -> Result<DatabaseUrl, UrlError> {
        let (scheme, rest) = raw.split_once("://").ok_or_else(|| {
            UrlError(format!(
                "{raw:?} has no scheme; expected mysql+pymysql://… or sqlite:///…"
            ))
        })?;
        let dialect = scheme.split('+').next().unwrap_or(scheme);
        match dialect {
            "mysql" | "mariadb" => {
                let mut url = url::Url::parse(&format!("mysql://{rest}"))
                    .map_err(|e| UrlError(format!("{}: {e}", redact_url(raw))))?;
                if url.host_str().unwrap_or("").is_empty() {
                    return Err(UrlError(format!("{}: no host", redact_url(raw))));
                }
                if url.path().trim_matches('/').is_empty() {
                    return Err(UrlError(format!("{}: no database name", redact_url(raw))));
                }
                // Keep only the query parameters diesel's MySQL driver knows;
                // drop SQLAlchemy ones such as charset=utf8.
                let keep: Vec<(String, String)> = url
                    .query_pairs()
                    .filter(|(k, _)| matches!(k.as_ref(), "unix_socket" | "ssl_mode" | "ssl_ca"))
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect();
                url.set_query(None);
                if !keep.is_empty() {
                    url.query_pairs_mut().extend_pairs(keep);
                }
                Ok(DatabaseUrl {
                    backend: Backend::Mysql,
                    target: url.to_string(),
                })
            }
            "sqlite" => {
                // sqlite:///relative or sqlite:////absolute (SQLAlchemy).
                let path = rest
                    .strip_prefix('/')
                    .ok_or_else(|| UrlError(format!("{raw:?}: expected sqlite:///path")))?;
                if path.is_empty() {
                    return Err(UrlError(
                        "in-memory SQLite (sqlite://) is not supported; give a file path".into(),
                    ));
                }
                Ok(DatabaseUrl {
                    backend: Backend::Sqlite,
                    target: path.to_string(),
                })
            }
            other => Err(UrlError(format!(
                "unsupported database {other:?}: expected mysql+pymysql://…, mysql://… or sqlite:///…"
            ))),
        }
    }

    /// The URL with any password hidden, for logs and errors (a SQLite
    /// file's path as it is: it holds none).
    pub fn redacted(&self) -> String {
        match self.backend {
            Backend::Sqlite => format!("sqlite:///{}", self.target),
            Backend::Mysql => redact_url(&self.target),
        }
    }
}

/// A parsed `[DEFAULT] transport_url`.
#[derive(Clone, PartialEq, Eq)]
pub enum TransportUrl {
    /// `memory://`: the in-process broker.
    Memory,
    /// `rabbit://` (oslo.messaging) or `amqp://`: one AMQP URI per host, tried in order.
    Rabbit(Vec<String>),
}

impl std::fmt::Debug for TransportUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TransportUrl::Memory => f.write_str("memory://"),
            TransportUrl::Rabbit(hosts) => {
                let shown: Vec<String> = hosts.iter().map(|h| redact_url(h)).collect();
                write!(f, "{}", shown.join(","))
            }
        }
    }
}

impl TransportUrl {
    /// oslo.messaging's form: `rabbit://user:pass@host1:5672,user:pass@host2:5672/vhost`.
    pub fn parse(raw: &str) -> Result<TransportUrl, UrlError> {
        let (scheme, rest) = raw.split_once("://").ok_or_else(|| {
            UrlError(format!(
                "{raw:?} has no scheme; expected rabbit://… or memory://"
            ))
        })?;
        match scheme {
            "memory" => Ok(TransportUrl::Memory),
            "rabbit" | "amqp" | "amqps" => {
                let (hosts, vhost) = match rest.split_once('/') {
                    Some((h, v)) => (h, v),
                    None => (rest, ""),
                };
                let vhost = vhost.split('?').next().unwrap_or("");
                // oslo: an empty vhost is RabbitMQ's default "/".
                let vhost = if vhost.is_empty() { "%2f" } else { vhost };
                let amqp = if scheme == "amqps" { "amqps" } else { "amqp" };
                let uris: Vec<String> = hosts
                    .split(',')
                    .filter(|h| !h.is_empty())
                    .map(|h| format!("{amqp}://{h}/{vhost}"))
                    .collect();
                if uris.is_empty() {
                    return Err(UrlError(format!("{}: no host", redact_url(raw))));
                }
                for u in &uris {
                    url::Url::parse(u).map_err(|e| UrlError(format!("{}: {e}", redact_url(u))))?;
                }
                Ok(TransportUrl::Rabbit(uris))
            }
            other => Err(UrlError(format!(
                "unsupported transport {other:?}: expected rabbit://… or memory://"
            ))),
        }
    }
}

/// A connection URL with its passwords hidden, for logs and errors; also
/// oslo.messaging's several-host form (`rabbit://u:p@h1:5672,u:p@h2:5672/`),
/// which is no single URL. Whatever it cannot read is hidden whole.
pub fn redact_url(raw: &str) -> String {
    // Several hosts: `url` would read all but the last as a user name.
    let single = url::Url::parse(raw).ok().filter(|_| !raw.contains(','));
    if let Some(mut u) = single {
        if u.password().is_some() {
            let _ = u.set_password(Some("****"));
        }
        return u.to_string();
    }
    let Some((scheme, rest)) = raw.split_once("://") else {
        return "<unreadable URL>".to_string();
    };
    // Hosts end at the first '/' after the last '@' (a password may hold
    // '/' or ',').
    let last_at = rest.rfind('@');
    let from = last_at.unwrap_or(0);
    let split = rest[from..].find('/').map_or(rest.len(), |p| from + p);
    let (hosts, path) = rest.split_at(split);
    let pieces: Vec<&str> = hosts.split(',').collect();
    // A piece without '@' before one with it: a ',' inside a password.
    let ambiguous = pieces
        .iter()
        .enumerate()
        .any(|(i, p)| !p.contains('@') && pieces[i + 1..].iter().any(|q| q.contains('@')));
    if ambiguous {
        let at = last_at.unwrap_or(0);
        return format!("{scheme}://****{}", &rest[at..]);
    }
    let redacted: Vec<String> = pieces
        .iter()
        .map(|h| match (h.rfind('@'), h.find(':')) {
            (Some(at), Some(colon)) if colon < at => format!("{}:****{}", &h[..colon], &h[at..]),
            (Some(at), _) => format!("****{}", &h[at..]),
            _ => h.to_string(),
        })
        .collect();
    format!("{scheme}://{}{path}", redacted.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_in_openstack_forms() {
        let u = DatabaseUrl::parse("mysql+pymysql://ekko:s3cret@db.example:3306/ekko?charset=utf8")
            .unwrap();
        assert_eq!(u.backend, Backend::Mysql);
        assert_eq!(u.target, "mysql://ekko:s3cret@db.example:3306/ekko");
        assert!(!format!("{u:?}").contains("s3cret"));
        let u =
            DatabaseUrl::parse("mysql://ekko@127.0.0.1/ekko?unix_socket=/run/mysqld/mysqld.sock")
                .unwrap();
        assert!(u.target.contains("unix_socket="));
        let u = DatabaseUrl::parse("sqlite:////var/lib/ekko/ekko.sqlite").unwrap();
        assert_eq!(
            (u.backend, u.target.as_str()),
            (Backend::Sqlite, "/var/lib/ekko/ekko.sqlite")
        );
        // Logged as the URL it was given (it was "<unreadable URL>").
        assert_eq!(u.redacted(), "sqlite:////var/lib/ekko/ekko.sqlite");
        assert_eq!(
            DatabaseUrl::parse("mysql://ekko:pw@db/ekko")
                .unwrap()
                .redacted(),
            "mysql://ekko:****@db/ekko"
        );
        let u = DatabaseUrl::parse("sqlite:///ekko.sqlite").unwrap();
        assert_eq!(u.target, "ekko.sqlite");
        for bad in [
            "postgresql://x/y",
            "sqlite://",
            "mysql://host",
            "nonsense",
            "mysql:///db",
        ] {
            assert!(DatabaseUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn oslo_transport_urls() {
        assert_eq!(
            TransportUrl::parse("memory://").unwrap(),
            TransportUrl::Memory
        );
        let t =
            TransportUrl::parse("rabbit://ekko:pw@10.0.0.1:5672,ekko:pw@10.0.0.2:5672/").unwrap();
        assert_eq!(
            t,
            TransportUrl::Rabbit(vec![
                "amqp://ekko:pw@10.0.0.1:5672/%2f".into(),
                "amqp://ekko:pw@10.0.0.2:5672/%2f".into()
            ])
        );
        assert!(!format!("{t:?}").contains("pw"));
        let t = TransportUrl::parse("rabbit://u:p@h:5672/ekko").unwrap();
        assert_eq!(
            t,
            TransportUrl::Rabbit(vec!["amqp://u:p@h:5672/ekko".into()])
        );
        assert!(TransportUrl::parse("kafka://h").is_err());
        assert!(TransportUrl::parse("rabbit:///").is_err());
    }
}
