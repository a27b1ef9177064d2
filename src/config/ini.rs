//! An INI reader that reads files the way oslo.config does
//! (`oslo_config/iniparser.py`), so an operator's `ekko.conf` means the same
//! thing to Ekko as to any other OpenStack service:
//!
//! * `key = value` or `key: value`, whichever separator comes first;
//! * `#` and `;` start a comment only at the beginning of a line, so
//!   `password = p@ss#word` keeps its `#`;
//! * no backslash escapes (`C:\temp\new` stays as written);
//! * an indented line continues the previous value, joined with `\n`;
//! * one pair of matching surrounding quotes is stripped;
//! * a key repeated in a file: the last one wins.
//!
//! [`OsloIni`] plugs this reader into the `config` crate as a
//! [`config::Format`]. `[DEFAULT]` is stored as the table `default`, so that
//! environment overrides (`EKKO__DEFAULT__DEBUG=true`), which the `config`
//! crate lowercases, reach it.

use std::collections::BTreeMap;
use std::fmt;

/// One `key = value` assignment with the line it started on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IniEntry {
    pub section: String,
    pub key: String,
    pub value: String,
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IniError {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for IniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for IniError {}

/// Parse INI text into its assignments, in file order.
pub fn parse(text: &str) -> Result<Vec<IniEntry>, IniError> {
    let mut entries: Vec<IniEntry> = Vec::new();
    let mut section: Option<String> = None;
    // Index into `entries` of the assignment an indented line continues.
    let mut continuing: Option<usize> = None;

    for (idx, raw) in text.lines().enumerate() {
        let line_no = idx + 1;
        let line = raw.trim_end_matches('\r');
        if line.trim().is_empty() {
            continuing = None;
            continue;
        }
        let first = line.chars().next().unwrap_or(' ');
        if first == '#' || first == ';' {
            continue;
        }
        if first.is_whitespace() {
            // Continuation of the previous value (oslo appends lstripped lines).
            match continuing {
                Some(i) => {
                    let entry = &mut entries[i];
                    entry.value.push('\n');
                    entry.value.push_str(line.trim());
                    continue;
                }
                None => {
                    return Err(IniError {
                        line: line_no,
                        message: "unexpected continuation line".into(),
                    })
                }
            }
        }
        if first == '[' {
            let Some(end) = line.find(']') else {
                return Err(IniError {
                    line: line_no,
                    message: format!("invalid section header {line:?}"),
                });
            };
            let name = line[1..end].trim();
            if name.is_empty() {
                return Err(IniError {
                    line: line_no,
                    message: "empty section name".into(),
                });
            }
            section = Some(name.to_string());
            continuing = None;
            continue;
        }
        let Some(current) = section.clone() else {
            return Err(IniError {
                line: line_no,
                message: "assignment before any [section] header".into(),
            });
        };
        let (key, value) = split_key_value(line).ok_or_else(|| IniError {
            line: line_no,
            message: format!("expected 'key = value', found {line:?}"),
        })?;
        if key.is_empty() {
            return Err(IniError {
                line: line_no,
                message: "empty key".into(),
            });
        }
        entries.push(IniEntry {
            section: current,
            key,
            value,
            line: line_no,
        });
        continuing = Some(entries.len() - 1);
    }
    Ok(entries)
}

fn split_key_value(line: &str) -> Option<(String, String)> {
    let colon = line.find(':');
    let equal = line.find('=');
    let at = match (colon, equal) {
        (None, None) => return None,
        (Some(c), None) => c,
        (None, Some(e)) => e,
        (Some(c), Some(e)) => c.min(e),
    };
    let key = line[..at].trim().to_string();
    let mut value = line[at + 1..].trim();
    if value.len() >= 2 {
        let bytes = value.as_bytes();
        let (first, last) = (bytes[0], bytes[value.len() - 1]);
        if first == last && (first == b'"' || first == b'\'') {
            value = &value[1..value.len() - 1];
        }
    }
    Some((key, value.to_string()))
}

/// The table name a section is stored under in the `config` crate.
pub fn table_name(section: &str) -> String {
    if section == "DEFAULT" {
        "default".to_string()
    } else {
        section.to_string()
    }
}

/// The `config` crate format for oslo-style INI files.
#[derive(Debug, Clone, Copy)]
pub struct OsloIni;

impl config::Format for OsloIni {
    fn parse(
        &self,
        uri: Option<&String>,
        text: &str,
    ) -> Result<config::Map<String, config::Value>, Box<dyn std::error::Error + Send + Sync>> {
        let mut tables: BTreeMap<String, config::Map<String, config::Value>> = BTreeMap::new();
        for entry in parse(text)? {
            tables
                .entry(table_name(&entry.section))
                .or_default()
                .insert(
                    entry.key,
                    config::Value::new(uri, config::ValueKind::String(entry.value)),
                );
        }
        Ok(tables
            .into_iter()
            .map(|(name, table)| {
                (
                    name,
                    config::Value::new(uri, config::ValueKind::Table(table)),
                )
            })
            .collect())
    }
}

impl config::FileStoredFormat for OsloIni {
    fn file_extensions(&self) -> &'static [&'static str] {
        &["conf", "ini"]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> IniEntry {
        let mut v = parse(text).expect("parses");
        assert_eq!(v.len(), 1, "{v:?}");
        v.remove(0)
    }

    #[test]
    fn keeps_backslashes_and_hashes() {
        let e = one("[DEFAULT]\npath = C:\\temp\\new\n");
        assert_eq!(e.value, "C:\\temp\\new");
        let e = one("[x]\npassword = p@ss#word;x\n");
        assert_eq!(e.value, "p@ss#word;x");
    }

    #[test]
    fn continuation_lines_join_with_newline() {
        let v = parse("[a]\nk = first\n   second\n\n[b]\nz = 1\n").unwrap();
        assert_eq!(v[0].value, "first\nsecond");
        assert_eq!(v[1].section, "b");
        assert_eq!(v[1].line, 6);
    }

    #[test]
    fn first_separator_wins_and_quotes_are_stripped() {
        let e = one("[database]\nconnection = mysql+pymysql://u:p@h/db\n");
        assert_eq!(e.key, "connection");
        assert_eq!(e.value, "mysql+pymysql://u:p@h/db");
        let e = one("[a]\nkey: \"quoted = value\"\n");
        assert_eq!(e.key, "key");
        assert_eq!(e.value, "quoted = value");
    }

    #[test]
    fn errors_name_the_line() {
        let err = parse("[a]\nno separator here\n").unwrap_err();
        assert_eq!(err.line, 2);
        let err = parse("key = before section\n").unwrap_err();
        assert_eq!(err.line, 1);
        let err = parse("[broken\n").unwrap_err();
        assert!(err.message.contains("section"));
    }
}
