//! Configuration, read the way oslo.config reads it.
//!
//! * Files: `--config-file` (repeatable, later files win) then every `*.conf`
//!   of each `--config-dir` in name order. With neither flag,
//!   `/etc/ekko/ekko.conf` and `/etc/ekko/ekko.conf.d/` are used when present;
//!   with nothing at all, the defaults give the single-machine configuration
//!   (SQLite, a local directory store, the in-process queue).
//! * Environment: `EKKO__<SECTION>__<KEY>` overrides any file, e.g.
//!   `EKKO__DEFAULT__DEBUG=true`, `EKKO__DATABASE__CONNECTION=…`; so does
//!   oslo.config's `OS_<SECTION>__<KEY>` (`EKKO__` wins over `OS_`).
//! * `$name`, `${name}` and `${section.name}` refer to other options (oslo's
//!   substitution); `$$` is a literal `$`.
//! * Everything is checked at start-up: an unknown section or key, or a bad
//!   value, is an error that names the file (or variable), section and key.
//!   Sections and keys other OpenStack libraries own (oslo.log,
//!   oslo.messaging, keystonemiddleware), which deployment tools write into
//!   every service's file, are ignored with a warning
//!   ([`EkkoConfig::ignored`]); `ekko-manage config check --strict` refuses
//!   them too.

mod checks;
#[macro_use]
mod declare;
mod foreign;
pub mod ini;
pub mod options;
pub mod sample;
pub mod types;
pub mod urls;

pub use urls::redact_url;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use foreign::{foreign_key, FOREIGN_SECTIONS};

pub use options::{
    all_options, ApiOptions, AuthStrategy, BackupOptions, DatabaseOptions, DefaultOptions,
    EncryptionMode, EncryptionOptions, ExportOptions, GlanceOptions, HealthcheckOptions,
    InstanceSource, KeystoneAuthtokenOptions, LibvirtOptions, LocalStoreOptions, MetricsOptions,
    OptionInfo, OsloMiddlewareOptions, OsloPolicyOptions, QuotaOptions, ReplicaBackend,
    ReplicaLocalStoreOptions, ReplicaS3Options, ReplicationOptions, RetentionOptions, S3Options,
    S3UrlStyle, StorageBackend, StorageOptions, SwiftOptions,
};
pub use types::{ByteSize, CommaList, Secret};

/// Prefix of environment overrides: `EKKO__SECTION__KEY`.
pub const ENV_PREFIX: &str = "EKKO";
const ENV_SEPARATOR: &str = "__";
const DEFAULT_CONFIG_FILE: &str = "/etc/ekko/ekko.conf";
const DEFAULT_CONFIG_DIR: &str = "/etc/ekko/ekko.conf.d";

/// Note an environment override of `[table] key`: where it came from,
/// and its value under one spelling (`EKKO__TABLE__KEY`), so an `EKKO__`
/// variable replaces an `OS_` one.
fn record(
    origins: &mut BTreeMap<(String, String), String>,
    env_vars: &mut BTreeMap<String, String>,
    name: &str,
    table: &str,
    key: &str,
    value: String,
) {
    origins.insert(
        (table.to_string(), key.to_string()),
        format!("environment variable {name}"),
    );
    env_vars.insert(
        format!(
            "{ENV_PREFIX}{ENV_SEPARATOR}{}{ENV_SEPARATOR}{}",
            table.to_ascii_uppercase(),
            key.to_ascii_uppercase()
        ),
        value,
    );
}

/// Prefix of oslo.config's environment overrides: `OS_SECTION__KEY`.
const OSLO_ENV_PREFIX: &str = "OS_";

/// The whole configuration, one field per section.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EkkoConfig {
    #[serde(rename = "default")]
    pub default: DefaultOptions,
    pub api: ApiOptions,
    pub database: DatabaseOptions,
    pub keystone_authtoken: KeystoneAuthtokenOptions,
    pub oslo_policy: OsloPolicyOptions,
    pub storage: StorageOptions,
    pub swift: SwiftOptions,
    pub s3: S3Options,
    pub local_store: LocalStoreOptions,
    pub replication: ReplicationOptions,
    pub replica_local_store: ReplicaLocalStoreOptions,
    pub replica_s3: ReplicaS3Options,
    pub glance: GlanceOptions,
    pub export: ExportOptions,
    pub backup: BackupOptions,
    pub libvirt: LibvirtOptions,
    pub retention: RetentionOptions,
    pub quota: QuotaOptions,
    pub encryption: EncryptionOptions,
    pub oslo_middleware: OsloMiddlewareOptions,
    pub healthcheck: HealthcheckOptions,
    pub metrics: MetricsOptions,
    /// The files that were read, in order (for locating `policy_file`).
    #[serde(skip)]
    pub loaded_files: Vec<PathBuf>,
    /// What was read but is not Ekko's (another library's section or key,
    /// an `OS_…` variable of no option), one line each, logged at start.
    #[serde(skip)]
    pub ignored: Vec<String>,
}

/// Where to read configuration from (the oslo command-line flags).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConfigArgs {
    /// Configuration file; repeat it to layer files (later ones win).
    #[arg(long = "config-file", value_name = "PATH", global = true)]
    pub config_file: Vec<PathBuf>,
    /// Directory whose `*.conf` files are read after the config files.
    #[arg(long = "config-dir", value_name = "DIR", global = true)]
    pub config_dir: Vec<PathBuf>,
    /// Log at debug level (`[DEFAULT] debug`).
    #[arg(long, global = true)]
    pub debug: bool,
    /// Log to this file (`[DEFAULT] log_file`; SIGHUP reopens it).
    #[arg(long = "log-file", value_name = "PATH", global = true)]
    pub log_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Syntax {
        path: PathBuf,
        source: ini::IniError,
    },
    #[error("{origin}: unknown section [{section}]")]
    UnknownSection { origin: String, section: String },
    #[error("{origin}: unknown option {key:?} in section [{section}]")]
    UnknownKey {
        origin: String,
        section: String,
        key: String,
    },
    #[error("{origin}: invalid value for [{section}] {key}: {message}")]
    Invalid {
        origin: String,
        section: String,
        key: String,
        message: String,
    },
    #[error("invalid configuration: {0}")]
    Other(String),
}

/// A raw value and where it came from.
#[derive(Debug, Clone)]
struct Raw {
    value: String,
    origin: String,
}

impl ConfigArgs {
    /// The files to read, in order: explicit files, then config dirs; or the
    /// system defaults when no flag was given.
    pub fn files(&self) -> Result<Vec<PathBuf>, ConfigError> {
        let (mut files, dirs) = if self.config_file.is_empty() && self.config_dir.is_empty() {
            let file = PathBuf::from(DEFAULT_CONFIG_FILE);
            let dir = PathBuf::from(DEFAULT_CONFIG_DIR);
            (
                if file.is_file() { vec![file] } else { vec![] },
                if dir.is_dir() { vec![dir] } else { vec![] },
            )
        } else {
            (self.config_file.clone(), self.config_dir.clone())
        };
        for dir in dirs {
            let read = std::fs::read_dir(&dir).map_err(|source| ConfigError::Read {
                path: dir.clone(),
                source,
            })?;
            let mut in_dir: Vec<PathBuf> = read
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "conf") && p.is_file())
                .collect();
            in_dir.sort();
            files.extend(in_dir);
        }
        Ok(files)
    }

    pub fn load(&self) -> Result<EkkoConfig, ConfigError> {
        self.load_with_env(std::env::vars())
    }

    pub fn load_with_env(
        &self,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<EkkoConfig, ConfigError> {
        let mut config = EkkoConfig::load(&self.files()?, env)?;
        // The command line wins over files and environment, as in oslo.
        if self.debug {
            config.default.debug = true;
        }
        if let Some(file) = &self.log_file {
            config.default.log_file = Some(file.display().to_string());
        }
        Ok(config)
    }

    /// As [`ConfigArgs::load`], refusing other libraries' sections and
    /// keys too (`ekko-manage config check --strict`).
    pub fn load_strict(&self) -> Result<EkkoConfig, ConfigError> {
        EkkoConfig::load_checked(&self.files()?, std::env::vars(), Strictness::Strict)
    }
}

/// Whether what other OpenStack libraries own is ignored or refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strictness {
    /// Ignored with a warning (the services: deployment tools write it).
    Tolerant,
    /// An error (a configuration check).
    Strict,
}

impl EkkoConfig {
    /// Read `files` in order and the `EKKO__…` variables of `env`, check
    /// everything, and build the typed configuration.
    pub fn load(
        files: &[PathBuf],
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<EkkoConfig, ConfigError> {
        Self::load_checked(files, env, Strictness::Tolerant)
    }

    /// [`EkkoConfig::load`], with other libraries' sections and keys
    /// ignored or refused as `strictness` says.
    pub fn load_checked(
        files: &[PathBuf],
        env: impl IntoIterator<Item = (String, String)>,
        strictness: Strictness,
    ) -> Result<EkkoConfig, ConfigError> {
        let tolerant = strictness == Strictness::Tolerant;
        let mut ignored = Vec::new();
        let registry: BTreeMap<(String, String), OptionInfo> = all_options()
            .into_iter()
            .map(|o| ((ini::table_name(o.section), o.name.to_string()), o))
            .collect();
        let known_section = |table: &str| registry.keys().any(|(s, _)| s == table);

        // Check each file on its own first, so errors can name file and line.
        let mut builder = config::Config::builder();
        // Where the winning value of each option was set (later files win,
        // the environment wins over files).
        let mut origins: BTreeMap<(String, String), String> = BTreeMap::new();
        for path in files {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            let entries = ini::parse(&text).map_err(|source| ConfigError::Syntax {
                path: path.clone(),
                source,
            })?;
            for e in &entries {
                let origin = format!("{}:{}", path.display(), e.line);
                let table = ini::table_name(&e.section);
                if !known_section(&table) {
                    if tolerant && FOREIGN_SECTIONS.contains(&e.section.as_str()) {
                        ignored.push(format!(
                            "{origin}: [{}] {} ignored: the section belongs to another library",
                            e.section, e.key
                        ));
                        continue;
                    }
                    return Err(ConfigError::UnknownSection {
                        origin,
                        section: e.section.clone(),
                    });
                }
                if !registry.contains_key(&(table.clone(), e.key.clone())) {
                    if tolerant && foreign_key(&e.section, &e.key) {
                        ignored.push(format!(
                            "{origin}: [{}] {} ignored: Ekko does not use this option of another library",
                            e.section, e.key
                        ));
                        continue;
                    }
                    return Err(ConfigError::UnknownKey {
                        origin,
                        section: e.section.clone(),
                        key: e.key.clone(),
                    });
                }
                origins.insert((table, e.key.clone()), origin);
            }
            let foreign: Vec<String> = FOREIGN_SECTIONS.iter().map(|s| s.to_string()).collect();
            let filtered = strip_sections(&text, &foreign);
            builder =
                builder.add_source(config::File::from_str(&filtered, ini::OsloIni).required(true));
        }

        // Environment overrides; unknown EKKO__ names are errors too.
        // oslo.config's OS_SECTION__KEY come first, so EKKO__ wins; an OS_
        // variable of no option (other services share that namespace) is
        // ignored with a warning.
        let mut env_vars: BTreeMap<String, String> = BTreeMap::new();
        let (mut ekko_env, mut oslo_env) = (Vec::new(), Vec::new());
        for (name, value) in env {
            if name.starts_with(&format!("{ENV_PREFIX}{ENV_SEPARATOR}")) {
                ekko_env.push((name, value));
            } else if let Some(rest) = name.strip_prefix(OSLO_ENV_PREFIX) {
                // OS_AUTH_URL and friends (the openstack CLI's) have no `__`.
                if let Some((section, key)) = rest.split_once(ENV_SEPARATOR) {
                    oslo_env.push((name.clone(), section.to_string(), key.to_string(), value));
                }
            }
        }
        oslo_env.sort();
        for (name, section, key, value) in oslo_env {
            let (table, key) = (section.to_ascii_lowercase(), key.to_ascii_lowercase());
            if !registry.contains_key(&(table.clone(), key.clone())) {
                if tolerant {
                    ignored.push(format!(
                        "environment variable {name} ignored: no such option"
                    ));
                    continue;
                }
                return Err(ConfigError::UnknownKey {
                    origin: format!("environment variable {name}"),
                    section,
                    key,
                });
            }
            record(&mut origins, &mut env_vars, &name, &table, &key, value);
        }
        for (name, value) in ekko_env {
            let Some(rest) = name.strip_prefix(&format!("{ENV_PREFIX}{ENV_SEPARATOR}")) else {
                continue;
            };
            let Some((section, key)) = rest.split_once(ENV_SEPARATOR) else {
                return Err(ConfigError::Other(format!(
                    "environment variable {name}: expected {ENV_PREFIX}__<SECTION>__<KEY>"
                )));
            };
            let (table, key) = (section.to_ascii_lowercase(), key.to_ascii_lowercase());
            if !registry.contains_key(&(table.clone(), key.clone())) {
                return Err(ConfigError::UnknownKey {
                    origin: format!("environment variable {name}"),
                    section: section.to_string(),
                    key,
                });
            }
            record(
                &mut origins,
                &mut env_vars,
                &name,
                &table,
                &key,
                value.clone(),
            );
        }
        builder = builder.add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator(ENV_SEPARATOR)
                .separator(ENV_SEPARATOR)
                .source(Some(env_vars.into_iter().collect())),
        );
        let merged = builder
            .build()
            .map_err(|e| ConfigError::Other(e.to_string()))?;

        // Raw strings of every option: defaults overlaid by files and env.
        let mut raw: BTreeMap<(String, String), Raw> = BTreeMap::new();
        for ((table, key), info) in &registry {
            let entry = match merged.get::<config::Value>(&format!("{table}.{key}")) {
                Ok(v) => Raw {
                    origin: origins
                        .get(&(table.clone(), key.clone()))
                        .cloned()
                        .unwrap_or_else(|| "configuration".to_string()),
                    value: v.into_string().map_err(|e| ConfigError::Invalid {
                        origin: "configuration".into(),
                        section: info.section.into(),
                        key: key.clone(),
                        message: e.to_string(),
                    })?,
                },
                Err(_) => Raw {
                    value: info.default.clone(),
                    origin: "default".to_string(),
                },
            };
            raw.insert((table.clone(), key.clone()), entry);
        }

        // Substitute $references, then check every value against its type.
        let substituted = substitute_all(&raw)?;
        let mut typed = config::Config::builder();
        for ((table, key), value) in &substituted {
            let info = &registry[&(table.clone(), key.clone())];
            (info.check)(value).map_err(|message| ConfigError::Invalid {
                origin: raw[&(table.clone(), key.clone())].origin.clone(),
                section: info.section.to_string(),
                key: key.clone(),
                message,
            })?;
            typed = typed
                .set_override(format!("{table}.{key}"), value.clone())
                .map_err(|e| ConfigError::Other(e.to_string()))?;
        }
        let mut cfg: EkkoConfig = typed
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| ConfigError::Other(e.to_string()))?;
        cfg.loaded_files = files.to_vec();
        cfg.ignored = ignored;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks that involve several options or facts beyond one value.
    fn validate(&mut self) -> Result<(), ConfigError> {
        let invalid = |section: &str, key: &str, message: String| ConfigError::Invalid {
            origin: "configuration".into(),
            section: section.into(),
            key: key.into(),
            message,
        };
        if self.default.host.is_empty() {
            self.default.host = hostname();
        }
        let chunk = self.backup.chunk_size.bytes();
        if !chunk.is_power_of_two()
            || !(crate::format::MIN_CHUNK_SIZE..=crate::format::MAX_CHUNK_SIZE).contains(&chunk)
        {
            return Err(invalid(
                "backup",
                "chunk_size",
                format!("must be a power of two between 4K and 16M, found {chunk}"),
            ));
        }
        if self.backup.segment_size.bytes() < chunk {
            return Err(invalid(
                "backup",
                "segment_size",
                "must be at least chunk_size".into(),
            ));
        }
        if !(-7..=22).contains(&self.backup.compression_level) {
            return Err(invalid(
                "backup",
                "compression_level",
                "zstd levels go from -7 to 22".into(),
            ));
        }
        if !(0.0..=1.0).contains(&self.retention.compaction_threshold) {
            return Err(invalid(
                "retention",
                "compaction_threshold",
                "must be between 0 and 1".into(),
            ));
        }
        if !(0.0..=100.0).contains(&self.retention.scrub_percentage) {
            return Err(invalid(
                "retention",
                "scrub_percentage",
                "must be between 0 and 100".into(),
            ));
        }
        // The orphan sweep and GC wait `gc_grace_period` for writers; a job
        // may write for `job_timeout` plus a stall before it is failed.
        let longest_job = self
            .backup
            .job_timeout
            .saturating_add(self.backup.job_stall_timeout);
        if self.retention.gc_grace_period < longest_job {
            return Err(invalid(
                "retention",
                "gc_grace_period",
                format!(
                    "{} s is shorter than the longest job ([backup] job_timeout {} s + job_stall_timeout {} s): segments of a running job could be swept",
                    self.retention.gc_grace_period, self.backup.job_timeout, self.backup.job_stall_timeout
                ),
            ));
        }
        // A disk is retired once unreported for `retire_after`: never
        // because of a few missed inventories or a job that outlived it.
        let unreported =
            longest_job.saturating_add(self.backup.heartbeat_interval.saturating_mul(3));
        if self.retention.retire_after < unreported {
            return Err(invalid(
                "retention",
                "retire_after",
                format!(
                    "{} s is shorter than the longest job plus three heartbeats ({unreported} s): a disk could be retired while its host still serves it",
                    self.retention.retire_after
                ),
            ));
        }
        for (key, listen) in [
            ("api_listen", &self.metrics.api_listen),
            ("backup_listen", &self.metrics.backup_listen),
            ("retention_listen", &self.metrics.retention_listen),
        ] {
            if !listen.is_empty() && listen.parse::<std::net::SocketAddr>().is_err() {
                return Err(invalid(
                    "metrics",
                    key,
                    format!("{listen:?} is not an address and port (e.g. 127.0.0.1:9680)"),
                ));
            }
        }
        checks::replication(self)?;
        urls::DatabaseUrl::parse(&self.database.connection)
            .map_err(|e| invalid("database", "connection", e.to_string()))?;
        urls::TransportUrl::parse(&self.default.transport_url)
            .map_err(|e| invalid("DEFAULT", "transport_url", e.to_string()))?;
        Ok(())
    }

    /// Where `[oslo_policy] policy_file` is: absolute, or next to the last
    /// configuration file that was read (oslo looks in the config dirs).
    pub fn policy_file_path(&self) -> Option<PathBuf> {
        let p = Path::new(&self.oslo_policy.policy_file);
        if p.is_absolute() {
            return Some(p.to_path_buf());
        }
        self.loaded_files
            .iter()
            .rev()
            .filter_map(|f| f.parent().map(|d| d.join(p)))
            .chain(std::iter::once(Path::new("/etc/ekko").join(p)))
            .find(|c| c.is_file())
    }
}

/// Remove whole sections from INI text (used for sections Ekko ignores).
fn strip_sections(text: &str, sections: &[String]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut skipping = false;
    for line in text.lines() {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.split(']').next()) {
            skipping = sections.iter().any(|s| s == name.trim());
        }
        if !skipping {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

fn substitute_all(
    raw: &BTreeMap<(String, String), Raw>,
) -> Result<BTreeMap<(String, String), String>, ConfigError> {
    let mut out = BTreeMap::new();
    for ((table, key), entry) in raw {
        let value =
            substitute(raw, table, &entry.value, 0).map_err(|message| ConfigError::Invalid {
                origin: entry.origin.clone(),
                section: table.clone(),
                key: key.clone(),
                message,
            })?;
        out.insert((table.clone(), key.clone()), value);
    }
    Ok(out)
}

/// oslo.config substitution: `$name` / `${name}` look in the same section,
/// then in `[DEFAULT]`; `${section.name}` names the section; `$$` is `$`.
fn substitute(
    raw: &BTreeMap<(String, String), Raw>,
    table: &str,
    value: &str,
    depth: usize,
) -> Result<String, String> {
    if depth > 10 {
        return Err("substitution nests too deep (a reference loop?)".into());
    }
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
            continue;
        }
        let (name, tail) = if let Some(inner) = after.strip_prefix('{') {
            let end = inner
                .find('}')
                .ok_or_else(|| format!("unclosed ${{ in {value:?}"))?;
            (&inner[..end], &inner[end + 1..])
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        if name.is_empty() {
            out.push('$');
            rest = after;
            continue;
        }
        let (sect, key) = match name.split_once('.') {
            Some((s, k)) => (ini::table_name(s), k.to_string()),
            None => (table.to_string(), name.to_string()),
        };
        let found = raw
            .get(&(sect.clone(), key.clone()))
            .or_else(|| raw.get(&("default".to_string(), key.clone())))
            .ok_or_else(|| format!("${name} refers to no known option"))?;
        out.push_str(&substitute(raw, &sect, &found.value, depth + 1)?);
        rest = tail;
    }
    out.push_str(rest);
    Ok(out)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_string())
}

#[cfg(test)]
mod tests;
