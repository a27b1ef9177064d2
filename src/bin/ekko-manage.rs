//! ekko-manage: database and administrative tasks.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use ekko::config::ConfigArgs;
use ekko::db::Db;

#[derive(Parser)]
#[command(name = "ekko-manage", version, about = "Ekko database and admin tasks")]
struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
enum KeyAction {
    /// Write a new random master key file (mode 0600; never overwrites).
    Generate {
        #[arg(long)]
        output: PathBuf,
    },
    /// Check that the configured master key opens every project key.
    Check,
    /// Rewrap every project key under a new master key (data is not
    /// touched); then point [encryption] master_key_file at the new file.
    Rotate {
        #[arg(long)]
        new_master_key_file: PathBuf,
    },
}

#[derive(Subcommand)]
enum DbAction {
    /// Apply pending migrations (idempotent).
    Sync,
    /// Show whether the schema is up to date.
    Version,
}

#[derive(Subcommand)]
enum CatalogAction {
    /// Recreate a lost catalog from the manifests and segments in the
    /// object store (into an empty, synced database).
    Rebuild,
}

#[derive(Subcommand)]
enum PolicyAction {
    /// Print every policy rule with its default (or write it to --output).
    Sample {
        #[arg(long)]
        output: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Print the sample configuration (or write it to --output).
    Sample {
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Load and validate the configuration, then print the effective values.
    Check,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Config {
            action: ConfigAction::Sample { output },
        } => write_or_print(output, &ekko::config::sample::generate())?,
        Command::Policy {
            action: PolicyAction::Sample { output },
        } => write_or_print(output, &ekko::policy::sample())?,
        Command::Config {
            action: ConfigAction::Check,
        } => {
            let config = ekko::cli::start(&cli.config)?;
            println!(
                "configuration is valid ({} file(s) read)",
                config.loaded_files.len()
            );
            println!("{config:#?}");
        }
        Command::Catalog {
            action: CatalogAction::Rebuild,
        } => {
            let config = ekko::cli::start(&cli.config)?;
            let runtime = tokio::runtime::Runtime::new()?;
            let report = runtime.block_on(async {
                let ekko = ekko::Ekko::connect(config, ekko::ekko::Catalog::Required).await?;
                ekko::rebuild::rebuild(&ekko).await
            })?;
            println!(
                "rebuilt {} backup(s) of {} project(s): {} segment(s) referenced, {} unreferenced (left to the orphan sweep)",
                report.backups, report.projects, report.segments, report.unreferenced_segments
            );
            for (what, why) in &report.skipped {
                println!("  skipped {what}: {why}");
            }
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
            writeln!(f, "{}", ekko::crypto::MasterKey::generate_hex()?)?;
            let key = ekko::crypto::MasterKey::load(&output)?;
            println!("wrote master key {} to {}", key.id(), output.display());
        }
        Command::Key { action } => {
            let config = ekko::cli::start(&cli.config)?;
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(async {
                // Connecting runs the key check: a wrong master key stops here.
                let ekko = ekko::Ekko::connect(config, ekko::ekko::Catalog::Required).await?;
                let rows = ekko.db()?.run(ekko::db::keys::all).await?;
                match action {
                    KeyAction::Check => {
                        for row in &rows {
                            ekko.keyring.open(&row.project_id, &row.wrapped_key()?)?;
                        }
                        let id = ekko.keyring.master_key().map(|k| k.id().to_string());
                        println!(
                            "master key {}: opens the keys of {} encrypted project(s)",
                            id.as_deref().unwrap_or("(none configured)"),
                            rows.len()
                        );
                    }
                    KeyAction::Rotate {
                        new_master_key_file,
                    } => {
                        let new = ekko::crypto::MasterKey::load(&new_master_key_file)?;
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
            let config = ekko::cli::start(&cli.config)?;
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
