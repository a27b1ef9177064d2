//! `ekko-manage`: database and administrative tasks (the binary only calls
//! [`main`]).

use std::path::PathBuf;

use crate::config::ConfigArgs;
use crate::db::Db;
use crate::ekko::Catalog;
use crate::Ekko;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "ekko-manage", version, about = "Ekko database and admin tasks")]
pub struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Database schema tasks.
    Db {
        #[command(subcommand)]
        action: DbAction,
    },
    /// Catalog tasks.
    Catalog {
        #[command(subcommand)]
        action: CatalogAction,
    },
    /// Second copies (`[replication]`).
    Replication {
        #[command(subcommand)]
        action: ReplicationAction,
    },
    /// Policy tasks.
    Policy {
        #[command(subcommand)]
        action: PolicyAction,
    },
    /// Configuration tasks.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Encryption key tasks.
    Key {
        #[command(subcommand)]
        action: KeyAction,
    },
}

#[derive(Subcommand)]
pub enum KeyAction {
    /// Write a new random master key file (mode 0600; never overwrites).
    Generate {
        /// The key file to create.
        #[arg(long)]
        output: PathBuf,
    },
    /// Check that the configured master key opens every project key.
    Check,
    /// Rewrap every project key under a new master key (data is not
    /// touched); then point [encryption] master_key_file at the new file.
    Rotate {
        /// The new master key (`ekko-manage key generate`).
        #[arg(long)]
        new_master_key_file: PathBuf,
    },
}

#[derive(Subcommand)]
pub enum DbAction {
    /// Apply pending migrations (idempotent).
    Sync,
    /// Show whether the schema is up to date.
    Version,
    /// Revert the latest migration (to go back one release; take a
    /// database backup first).
    Revert,
}

#[derive(Subcommand)]
pub enum ReplicationAction {
    /// Where the second store of `[replication]` stands: backups it holds
    /// and still lacks, how far behind it is, objects and bytes held.
    Status,
    /// Run one replication pass now (as ekko-retention does every
    /// `[replication] interval`) and print what it copied.
    Run,
}

#[derive(Subcommand)]
pub enum CatalogAction {
    /// Recreate a lost catalog from the manifests and segments in the
    /// object store (into an empty, synced database).
    Rebuild {
        /// Read the second store of `[replication]` instead (the first is
        /// lost too): the catalog then records the backups it holds there,
        /// and restores read them with `source` = `replica` or `auto`.
        #[arg(long)]
        from_replica: bool,
    },
}

#[derive(Subcommand)]
pub enum PolicyAction {
    /// Print every policy rule with its default (or write it to --output).
    Sample {
        /// Write it to this file instead of standard output.
        #[arg(long)]
        output: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum ConfigAction {
    /// Print the sample configuration (or write it to --output).
    Sample {
        /// Write it to this file instead of standard output.
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Load and validate the configuration, then print the effective values.
    Check {
        /// Refuse what Ekko ignores with a warning at start-up: other
        /// libraries' sections and keys (oslo.log, keystonemiddleware...)
        /// and `OS_<SECTION>__<KEY>` variables of no option.
        #[arg(long)]
        strict: bool,
    },
}

/// Parse the command line and run the command.
pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Config {
            action: ConfigAction::Sample { output },
        } => write_or_print(output, &crate::config::sample::generate())?,
        Command::Policy {
            action: PolicyAction::Sample { output },
        } => write_or_print(output, &crate::policy::sample())?,
        Command::Config {
            action: ConfigAction::Check { strict },
        } => {
            let config = super::start(&cli.config)?;
            if strict {
                cli.config.load_strict()?;
            }
            println!(
                "configuration is valid ({} file(s) read)",
                config.loaded_files.len()
            );
            println!("{config:#?}");
        }
        Command::Catalog {
            action: CatalogAction::Rebuild { from_replica },
        } => {
            let config = super::start(&cli.config)?;
            let runtime = tokio::runtime::Runtime::new()?;
            let report = runtime.block_on(async {
                let ekko = Ekko::connect(config, Catalog::Required).await?;
                if from_replica {
                    crate::rebuild::rebuild_from_replica(&ekko).await
                } else {
                    crate::rebuild::rebuild(&ekko).await
                }
            })?;
            println!(
                "rebuilt {} backup(s) of {} project(s): {} segment(s) referenced, {} unreferenced (left to the orphan sweep)",
                report.backups, report.projects, report.segments, report.unreferenced_segments
            );
            for (what, why) in &report.skipped {
                println!("  skipped {what}: {why}");
            }
        }
        Command::Replication { action } => {
            let config = super::start(&cli.config)?;
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(async {
                let ekko = Ekko::connect(config, Catalog::Required).await?;
                match action {
                    ReplicationAction::Status => {
                        let Some(s) = crate::replication::store_status(&ekko).await? else {
                            anyhow::bail!("no second store is configured ([replication] backend = none)");
                        };
                        println!(
                            "{} ({}): {} backups held, {} pending, {} s behind; {} objects, {} bytes",
                            s.name, s.key, s.backups_replicated, s.backups_pending, s.lag_seconds,
                            s.objects, s.bytes
                        );
                    }
                    ReplicationAction::Run => {
                        anyhow::ensure!(
                            ekko.replica.is_some(),
                            "no second store is configured ([replication] backend = none)"
                        );
                        let report = crate::replication::run_pass(&ekko).await?;
                        anyhow::ensure!(
                            !report.busy,
                            "no pass run: another process is running this store's pass (wait for it)"
                        );
                        println!("{report}");
                        anyhow::ensure!(report.backups_failed == 0, "some backups were not replicated (see the log)");
                    }
                }
                anyhow::Ok(())
            })?;
        }
        Command::Key {
            action: KeyAction::Generate { output },
        } => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&output)
                .map_err(|e| anyhow::anyhow!("{}: {e}", output.display()))?;
            writeln!(f, "{}", crate::crypto::MasterKey::generate_hex()?)?;
            let key = crate::crypto::MasterKey::load(&output)?;
            println!("wrote master key {} to {}", key.id(), output.display());
        }
        Command::Key { action } => {
            let config = super::start(&cli.config)?;
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(async {
                // Connecting runs the key check: a wrong master key stops here.
                let ekko = Ekko::connect(config, Catalog::Required).await?;
                match action {
                    KeyAction::Check => {
                        let n = ekko.keyring.check_all().await?;
                        let id = ekko.keyring.master_key().map(|k| k.id().to_string());
                        println!(
                            "master key {}: opens the keys of {n} encrypted project(s)",
                            id.as_deref().unwrap_or("(none configured)"),
                        );
                    }
                    KeyAction::Rotate {
                        new_master_key_file,
                    } => {
                        let new = crate::crypto::MasterKey::load(&new_master_key_file)?;
                        let n = ekko.keyring.rotate(&new).await?;
                        println!(
                            "rewrapped {n} project key(s) under master key {}; now set [encryption] master_key_file = {}",
                            new.id(),
                            new_master_key_file.display()
                        );
                    }
                    KeyAction::Generate { .. } => unreachable!("handled above"),
                }
                Ok::<(), anyhow::Error>(())
            })?;
        }
        Command::Db { action } => {
            let config = super::start(&cli.config)?;
            let db = Db::open(&config.database)?;
            match action {
                DbAction::Sync => {
                    let applied = db.sync()?;
                    if applied.is_empty() {
                        println!("database {} is up to date", db.url.redacted());
                    } else {
                        println!("applied to {}: {}", db.url.redacted(), applied.join(", "));
                    }
                }
                DbAction::Version => {
                    let pending = db.pending_migrations()?;
                    if pending.is_empty() {
                        println!("database {} is up to date", db.url.redacted());
                    } else {
                        println!("pending migrations: {}", pending.join(", "));
                        std::process::exit(3);
                    }
                }
                DbAction::Revert => {
                    let reverted = db.revert_last()?;
                    println!("reverted {reverted} in {}", db.url.redacted());
                }
            }
        }
    }
    Ok(())
}

fn write_or_print(output: Option<PathBuf>, text: &str) -> anyhow::Result<()> {
    match output {
        Some(path) => std::fs::write(&path, text)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display())),
        None => {
            print!("{text}");
            Ok(())
        }
    }
}
