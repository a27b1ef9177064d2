//! Value types for configuration options: how each is parsed from the INI
//! text, how it is named and shown in the sample file.

use serde::{Deserialize, Deserializer};
use std::fmt;

/// What every option type tells the validator and the sample generator.
pub trait OptionType: Sized {
    /// The kind shown in the sample, in oslo-config-generator's words.
    const KIND: &'static str;
    /// Parse the raw INI text (after `$var` substitution).
    fn parse_value(raw: &str) -> Result<Self, String>;
    /// The default as it is written in the sample file.
    fn render(&self) -> String;
    /// The allowed values, for options that are a choice.
    fn choices() -> &'static [&'static str] {
        &[]
    }
}

impl OptionType for String {
    const KIND: &'static str = "string value";
    fn parse_value(raw: &str) -> Result<Self, String> {
        Ok(raw.to_string())
    }
    fn render(&self) -> String {
        self.clone()
    }
}

impl OptionType for Option<String> {
    const KIND: &'static str = "string value";
    fn parse_value(raw: &str) -> Result<Self, String> {
        Ok(if raw.is_empty() {
            None
        } else {
            Some(raw.to_string())
        })
    }
    fn render(&self) -> String {
        self.clone().unwrap_or_default()
    }
}

/// oslo.config's boolean spellings.
pub fn parse_bool(raw: &str) -> Result<bool, String> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "on" | "yes" => Ok(true),
        "false" | "0" | "off" | "no" => Ok(false),
        _ => Err(format!("expected a boolean (true/false), found {raw:?}")),
    }
}

impl OptionType for bool {
    const KIND: &'static str = "boolean value";
    fn parse_value(raw: &str) -> Result<Self, String> {
        parse_bool(raw)
    }
    fn render(&self) -> String {
        self.to_string()
    }
}

macro_rules! integer_option {
    ($($t:ty),*) => {$(
        impl OptionType for $t {
            const KIND: &'static str = "integer value";
            fn parse_value(raw: &str) -> Result<Self, String> {
                raw.trim().parse::<$t>().map_err(|_| {
                    format!("expected an integer between {} and {}, found {raw:?}", <$t>::MIN, <$t>::MAX)
                })
            }
            fn render(&self) -> String {
                self.to_string()
            }
        }
    )*};
}
integer_option!(u16, u32, u64, i64);

impl OptionType for f64 {
    const KIND: &'static str = "floating point value";
    fn parse_value(raw: &str) -> Result<Self, String> {
        raw.trim()
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .ok_or_else(|| format!("expected a number, found {raw:?}"))
    }
    fn render(&self) -> String {
        self.to_string()
    }
}

/// A comma-separated list (oslo `ListOpt`); blanks are dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommaList(pub Vec<String>);

impl CommaList {
    pub fn from_strs(items: &[&str]) -> Self {
        CommaList(items.iter().map(|s| s.to_string()).collect())
    }
}

impl OptionType for CommaList {
    const KIND: &'static str = "list value";
    fn parse_value(raw: &str) -> Result<Self, String> {
        Ok(CommaList(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
        ))
    }
    fn render(&self) -> String {
        self.0.join(",")
    }
}

/// A size in bytes; accepts a plain number or a K/M/G/T suffix (powers of
/// 1024, with or without `iB`), e.g. `256K`, `32MiB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub const fn kib(n: u64) -> Self {
        ByteSize(n * 1024)
    }
    pub const fn mib(n: u64) -> Self {
        ByteSize(n * 1024 * 1024)
    }
    pub const fn gib(n: u64) -> Self {
        ByteSize(n * 1024 * 1024 * 1024)
    }
    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl OptionType for ByteSize {
    const KIND: &'static str = "size value (bytes; K, M, G, T suffixes allowed)";
    fn parse_value(raw: &str) -> Result<Self, String> {
        let s = raw.trim();
        let bad = || format!("expected a size such as 4194304, 256K or 32M, found {raw:?}");
        let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(digits_end);
        let n: u64 = num.parse().map_err(|_| bad())?;
        let shift = match unit.trim().to_ascii_uppercase().as_str() {
            "" | "B" => 0,
            "K" | "KB" | "KIB" => 10,
            "M" | "MB" | "MIB" => 20,
            "G" | "GB" | "GIB" => 30,
            "T" | "TB" | "TIB" => 40,
            _ => return Err(bad()),
        };
        n.checked_mul(1u64 << shift).map(ByteSize).ok_or_else(bad)
    }
    fn render(&self) -> String {
        let n = self.0;
        for (shift, unit) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
            if n != 0 && n % (1u64 << shift) == 0 {
                return format!("{}{unit}", n >> shift);
            }
        }
        n.to_string()
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render())
    }
}

/// A secret (passwords): never printed by `Debug`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(pub String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "\"\""
        } else {
            "\"****\""
        })
    }
}

impl OptionType for Secret {
    const KIND: &'static str = "string value (secret)";
    fn parse_value(raw: &str) -> Result<Self, String> {
        Ok(Secret(raw.to_string()))
    }
    fn render(&self) -> String {
        self.0.clone()
    }
}

/// Deserialize any [`OptionType`] from the string the `config` crate holds.
/// Every value reaches serde as a string, so parsing stays in one place.
pub fn deserialize_option<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: OptionType,
{
    let raw = String::deserialize(d)?;
    T::parse_value(&raw).map_err(serde::de::Error::custom)
}

/// Declare an enum option: its variants, their INI spellings, and the
/// choices listed in the sample.
#[macro_export]
macro_rules! choice_option {
    ($(#[$meta:meta])* $vis:vis enum $name:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        $vis enum $name { $($variant),+ }

        impl $name {
            pub const CHOICES: &'static [&'static str] = &[$($text),+];
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl $crate::config::types::OptionType for $name {
            const KIND: &'static str = "string value";
            fn parse_value(raw: &str) -> Result<Self, String> {
                match raw.trim() {
                    $($text => Ok($name::$variant),)+
                    other => Err(format!(
                        "expected one of {}, found {other:?}",
                        Self::CHOICES.join(", ")
                    )),
                }
            }
            fn render(&self) -> String {
                self.as_str().to_string()
            }
            fn choices() -> &'static [&'static str] {
                Self::CHOICES
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_render() {
        assert_eq!(ByteSize::parse_value("256K").unwrap(), ByteSize::kib(256));
        assert_eq!(ByteSize::parse_value("32MiB").unwrap(), ByteSize::mib(32));
        assert_eq!(ByteSize::parse_value("4096").unwrap(), ByteSize(4096));
        assert!(ByteSize::parse_value("12Q").is_err());
        assert!(ByteSize::parse_value("M").is_err());
        assert_eq!(ByteSize::mib(32).render(), "32M");
        assert_eq!(ByteSize(1000).render(), "1000");
    }

    #[test]
    fn booleans_follow_oslo() {
        for t in ["True", "yes", "1", "ON"] {
            assert!(parse_bool(t).unwrap());
        }
        for f in ["False", "no", "0", "off"] {
            assert!(!parse_bool(f).unwrap());
        }
        assert!(parse_bool("maybe").is_err());
    }

    #[test]
    fn lists_drop_blanks() {
        let l = CommaList::parse_value(" a, b ,,c ").unwrap();
        assert_eq!(l.0, vec!["a", "b", "c"]);
        assert_eq!(CommaList::parse_value("").unwrap().0.len(), 0);
    }

    #[test]
    fn secrets_do_not_print() {
        assert_eq!(format!("{:?}", Secret("hunter2".into())), "\"****\"");
    }
}
