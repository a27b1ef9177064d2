//! `ekko`: the operator and standalone command line (the binary only
//! calls [`main`]).

use crate::config::types::OptionType;
use crate::config::ByteSize;
use crate::config::ConfigArgs;
use crate::ekko::Catalog;
use crate::service;
use crate::Ekko;
use clap::{Parser, Subcommand};
use std::io::Write;

fn parse_size(raw: &str) -> Result<ByteSize, String> {
    ByteSize::parse_value(raw)
}

/// How `list`, `hosts` and `verify` print (`-f json` as the openstack CLI).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Columns for people.
    Table,
    /// One JSON document for programs.
    Json,
}

/// What the exit status says (`ekko --help` lists it).
pub mod exit {
    /// Something failed (the message says what).
    pub const FAILURE: u8 = 1;
    /// The command line was wrong (clap's own code).
    pub const USAGE: u8 = 2;
    /// What the command names does not exist.
    pub const NOT_FOUND: u8 = 3;
    /// `verify` found damaged data.
    pub const DAMAGED: u8 = 4;
}

/// `verify` found damaged chunks.
#[derive(Debug, thiserror::Error)]
#[error("backup {0} is damaged")]
pub struct Damaged(String);

#[derive(Parser)]
#[command(
    name = "ekko",
    version,
    about = "Ekko: block-based backup for OpenStack instances",
    after_help = "Exit status: 0 done, 1 failed, 2 usage error, 3 not found, 4 damaged backup (verify)."
)]
pub struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Prepare the configured database and store (db sync included) and
    /// check that the catalog, the object store and the message bus work.
    Init,
    /// Run every role (API conductor, backup worker, retention) in one
    /// process: the single-machine default.
    AllInOne,
    /// Show the hosts that reported in.
    Hosts {
        /// Output format.
        #[arg(short = 'f', long = "format", value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Back up every qcow2 disk of an instance through its QMP socket.
    Backup {
        /// The instance's QMP socket (QEMU's or qemu-storage-daemon's monitor).
        #[arg(long)]
        qmp_socket: std::path::PathBuf,
        /// The instance's id, as the catalog names it.
        #[arg(long)]
        instance: String,
        /// The project the backup belongs to.
        #[arg(long, default_value = "default")]
        project: String,
        /// A name for the backup.
        #[arg(long, default_value = "")]
        name: String,
        /// Read every block even if the dirty bitmap could be trusted.
        #[arg(long)]
        full: bool,
        /// Guest agent socket: freeze filesystems around the snapshot.
        #[arg(long)]
        agent_socket: Option<std::path::PathBuf>,
    },
    /// List backups (newest first), every one unless `--limit`.
    List {
        /// Only this instance's backups.
        #[arg(long)]
        instance: Option<String>,
        /// At most this many.
        #[arg(long)]
        limit: Option<usize>,
        /// Output format.
        #[arg(short = 'f', long = "format", value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Restore one disk of a backup to a file, or into a new Glance image
    /// in the backup's project (`--image`).
    Restore {
        /// The backup's id.
        backup: String,
        /// The file to write (never overwritten).
        #[arg(long, required_unless_present = "image", conflicts_with = "image")]
        output: Option<std::path::PathBuf>,
        /// Name of a new private Glance image to restore into.
        #[arg(long)]
        image: Option<String>,
        /// A Keystone token scoped to the backup's project, for `--image`
        /// (e.g. `openstack token issue -f value -c id` as a member).
        #[arg(long, env = "OS_TOKEN", hide_env_values = true, requires = "image")]
        os_token: Option<String>,
        /// Which disk (needed when the backup has several).
        #[arg(long)]
        disk: Option<String>,
        /// Format of the file written.
        #[arg(long, value_parser = ["raw", "qcow2"], default_value = "raw")]
        format: String,
        /// Read the backup's copy in the second store (`[replication]`).
        #[arg(long, conflicts_with = "image")]
        from_replica: bool,
    },
    /// Serve one disk of a backup read-only over NBD (boot from it, copy
    /// or inspect it without restoring it) until its lifetime runs out or
    /// SIGINT/SIGTERM; a unix socket is removed when the export ends.
    Export {
        /// The backup's id.
        backup: String,
        /// Which disk (needed when the backup has several).
        #[arg(long)]
        disk: Option<String>,
        /// Listen on this unix socket (created; never replaced).
        #[arg(long, required_unless_present = "bind", conflicts_with = "bind")]
        socket: Option<std::path::PathBuf>,
        /// Listen on this TCP address (ADDR:PORT). With `[export]
        /// tls_cert_file` and `tls_key_file` set, clients must use TLS
        /// (then any address may be bound; without TLS only loopback).
        #[arg(long)]
        bind: Option<String>,
        /// End the export after this many seconds.
        #[arg(long)]
        lifetime: Option<u64>,
        /// Decoded chunks kept in memory (K, M, G suffixes).
        #[arg(long, default_value = "256M", value_parser = parse_size)]
        cache: ByteSize,
        /// Serve the backup's copy in the second store (`[replication]`).
        #[arg(long)]
        from_replica: bool,
    },
    /// List or copy files of a backup's ext2/3/4 disk, read in userspace
    /// (nbdfuse + debugfs) through an export: nothing is mounted.
    Files {
        /// The backup's id.
        backup: String,
        /// Which disk (needed when the backup has several).
        #[arg(long)]
        disk: Option<String>,
        /// Read the backup's copy in the second store (`[replication]`).
        #[arg(long)]
        from_replica: bool,
        #[command(subcommand)]
        action: FilesAction,
    },
    /// Re-read a backup and check every chunk's digest.
    Verify {
        /// The backup's id.
        backup: String,
        /// Output format.
        #[arg(short = 'f', long = "format", value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Delete a backup (its space is reclaimed by ekko-retention).
    Delete {
        /// The backup's id.
        backup: String,
    },
    /// An instance's backups over time as a terminal chart (new vs reused).
    Timeline {
        /// The instance's id.
        #[arg(long)]
        instance: String,
        /// Bar width in characters.
        #[arg(long, default_value_t = 40)]
        width: usize,
    },
    /// Apply every policy's retention rules and collect garbage once (what
    /// ekko-retention does on `[retention] interval`); `--dry-run` shows
    /// what each policy keeps and removes, and why, and changes nothing.
    Retention {
        /// Show what would be removed, and why; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Back up a live (qemu-storage-daemon) disk fully and incrementally,
    /// restore it and compare: the main job, on this machine.
    Demo {
        /// Working directory (kept afterwards).
        #[arg(long, default_value = "ekko-demo")]
        dir: std::path::PathBuf,
        /// Disk size in MiB.
        #[arg(long, default_value_t = 1024)]
        size_mib: u64,
    },
}

#[derive(Subcommand)]
pub enum FilesAction {
    /// `ls -l` of a directory of the backup's filesystem.
    Ls {
        /// A directory of the backup's filesystem (e.g. /etc).
        path: String,
    },
    /// Copy a file of the backup's filesystem to a new file here.
    Get {
        /// A file of the backup's filesystem.
        path: String,
        /// Where to write it (never overwritten).
        output: std::path::PathBuf,
    },
}

/// A backup list's page (the catalog's largest).
const PAGE: usize = 1000;

/// Run the command line; its exit status ([`exit`]).
pub async fn run() -> std::process::ExitCode {
    match main().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ekko: {e:#}");
            std::process::ExitCode::from(exit_status(&e))
        }
    }
}

fn exit_status(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if cause.downcast_ref::<Damaged>().is_some() {
            return exit::DAMAGED;
        }
        let missing = matches!(
            cause.downcast_ref::<service::ServiceError>(),
            Some(service::ServiceError::NotFound(_))
        ) || matches!(
            cause.downcast_ref::<crate::db::DbError>(),
            Some(crate::db::DbError::NotFound(_))
        );
        if missing {
            return exit::NOT_FOUND;
        }
    }
    exit::FAILURE
}

/// Parse the command line and run the command.
pub async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = super::start(&cli.config)?;
    match cli.command {
        Command::Init => {
            let ekko = Ekko::connect(config, Catalog::Unchecked).await?;
            let report = crate::standalone::init(&ekko).await?;
            print!("{report}");
        }
        Command::AllInOne => {
            let ekko = Ekko::connect(config, Catalog::Required).await?;
            crate::standalone::run_all(ekko, super::shutdown_signal()).await?;
        }
        Command::Demo { dir, size_mib } => {
            let report = crate::demo::run_demo(&config, &dir, size_mib).await?;
            print!("{report}");
        }
        Command::Backup {
            qmp_socket,
            instance,
            project,
            name,
            full,
            agent_socket,
        } => {
            let ekko = Ekko::connect(config, Catalog::Required).await?;
            let bar = super::ProgressBar::start("backup");
            let req = service::local::BackupRequest {
                qmp_socket,
                instance_id: instance,
                project_id: project,
                name,
                full,
                agent_socket,
                progress: Some(bar.progress()),
            };
            let t = std::time::Instant::now();
            let out = service::local::backup_instance(&ekko, &req).await;
            drop(bar);
            print!("{}", out?.summary(t.elapsed()));
        }
        Command::List {
            instance,
            limit,
            format,
        } => {
            let ekko = Ekko::connect(config, Catalog::Required).await?;
            // Page after page: a list never stops silently at a page.
            let mut list = Vec::new();
            let mut marker = None;
            loop {
                let want = limit.map_or(PAGE, |l| l.saturating_sub(list.len()).min(PAGE));
                if want == 0 {
                    break;
                }
                let page = service::backups::list_all(&ekko, instance.clone(), want as i64, marker)
                    .await?;
                let got = page.len();
                marker = page.last().map(|b| b.id.clone());
                list.extend(page);
                if got < want {
                    break;
                }
            }
            if format == Format::Json {
                let rows: Vec<serde_json::Value> = list
                    .iter()
                    .map(|b| {
                        serde_json::json!({
                            "id": b.id, "instance_id": b.instance_id, "project_id": b.project_id,
                            "name": b.name, "status": b.status, "kind": b.kind,
                            "created_at": crate::service::convert::timestamp(&b.created_at),
                            "logical_bytes": b.logical_bytes, "read_bytes": b.read_bytes,
                            "new_bytes": b.new_bytes, "stored_bytes": b.stored_bytes,
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(());
            }
            println!(
                "{:<36}  {:<10}  {:<11}  {:<19}  {:>12}",
                "id", "status", "kind", "created (UTC)", "stored bytes"
            );
            for b in list {
                println!(
                    "{:<36}  {:<10}  {:<11}  {:<19}  {:>12}",
                    b.id,
                    b.status,
                    b.kind.unwrap_or_default(),
                    b.created_at.format("%Y-%m-%d %H:%M:%S"),
                    b.stored_bytes
                );
            }
        }
        Command::Restore {
            backup,
            output,
            image,
            os_token,
            disk,
            format,
            from_replica,
        } => {
            let ekko = Ekko::connect(config, Catalog::Required).await?;
            let format = if format == "qcow2" {
                crate::backup::restore::TargetFormat::Qcow2
            } else {
                crate::backup::restore::TargetFormat::Raw
            };
            let t = std::time::Instant::now();
            if let Some(name) = image {
                let token = os_token.ok_or_else(|| {
                    anyhow::anyhow!(
                        "--image needs a token of the backup's project: --os-token or OS_TOKEN"
                    )
                })?;
                let bar = super::ProgressBar::start("restore");
                let made = service::local::restore_backup_to_image(
                    &ekko,
                    &backup,
                    disk.as_deref(),
                    &name,
                    format,
                    &token,
                    Some(&bar.progress()),
                )
                .await;
                drop(bar);
                let (image_id, stats) = made?;
                println!(
                    "restored {backup} into image {image_id} ({name}) in {:.2} s ({} chunks, {} zero chunks)",
                    t.elapsed().as_secs_f64(),
                    stats.chunks,
                    stats.zero_chunks
                );
                return Ok(());
            }
            let output = output.ok_or_else(|| anyhow::anyhow!("--output or --image"))?;
            let bar = super::ProgressBar::start("restore");
            let stats = service::local::restore_backup_from(
                &ekko,
                &backup,
                disk.as_deref(),
                &output,
                format,
                Some(&bar.progress()),
                from_replica,
            )
            .await;
            drop(bar);
            let stats = stats?;
            println!(
                "restored {} to {} in {:.2} s ({} chunks, {} zero chunks left sparse)",
                backup,
                output.display(),
                t.elapsed().as_secs_f64(),
                stats.chunks,
                stats.zero_chunks
            );
        }
        Command::Export {
            backup,
            disk,
            socket,
            bind,
            lifetime,
            cache,
            from_replica,
        } => {
            let endpoint = match (socket, bind) {
                (Some(path), _) => crate::nbd::server::Endpoint::Unix(path),
                (None, Some(addr)) => crate::nbd::server::Endpoint::Tcp(addr),
                (None, None) => anyhow::bail!("--socket or --bind"),
            };
            let ekko = Ekko::connect(config, Catalog::Required).await?;
            // TLS guards what leaves the machine: a unix socket stays local.
            let tls = match endpoint {
                crate::nbd::server::Endpoint::Tcp(_) => ekko
                    .config
                    .export
                    .server_tls()
                    .map_err(anyhow::Error::msg)?,
                crate::nbd::server::Endpoint::Unix(_) => None,
            };
            let req = service::local::ExportRequest {
                backup_id: backup.clone(),
                device: disk,
                endpoint,
                lifetime: lifetime.map(std::time::Duration::from_secs),
                cache_bytes: cache.bytes(),
                tls,
                second_copy: from_replica,
            };
            service::local::export_backup(&ekko, &req, super::shutdown_signal(), |url| {
                println!("exporting {backup} at {url}");
            })
            .await?;
            // Whoever read the first line may be gone: not an error.
            let _ = writeln!(std::io::stdout(), "export of {backup} ended");
        }
        Command::Files {
            backup,
            disk,
            from_replica,
            action,
        } => {
            let ekko = Ekko::connect(config, Catalog::Required).await?;
            let cmd = match action {
                FilesAction::Ls { path } => service::files::FilesCommand::List(path),
                FilesAction::Get { path, output } => {
                    service::files::FilesCommand::Get { path, out: output }
                }
            };
            let printed =
                service::files::files(&ekko, &backup, disk.as_deref(), &cmd, from_replica).await?;
            match cmd {
                service::files::FilesCommand::List(_) => print!("{printed}"),
                service::files::FilesCommand::Get { path, out } => {
                    println!("copied {path} of {backup} to {}", out.display())
                }
            }
        }
        Command::Verify { backup, format } => {
            let ekko = Ekko::connect(config, Catalog::Required).await?;
            let mut bad = 0;
            let bar = super::ProgressBar::start("verify");
            let verified =
                service::local::verify_backup(&ekko, &backup, Some(&bar.progress())).await;
            drop(bar);
            let verified = verified?;
            if format == Format::Json {
                let disks: Vec<serde_json::Value> = verified
                    .iter()
                    .map(|(disk, stats)| {
                        let damaged: Vec<serde_json::Value> = stats
                            .bad
                            .iter()
                            .map(|(offset, length, why)| {
                                serde_json::json!({"offset": offset, "length": length, "why": why})
                            })
                            .collect();
                        serde_json::json!({
                            "disk": disk,
                            "chunks": stats.chunks + stats.bad_chunks,
                            "damaged_chunks": stats.bad_chunks,
                            "damaged": damaged,
                        })
                    })
                    .collect();
                let bad: u64 = verified.iter().map(|(_, s)| s.bad_chunks).sum();
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({"backup": backup, "ok": bad == 0, "disks": disks})
                    )?
                );
                if bad > 0 {
                    return Err(Damaged(backup).into());
                }
                return Ok(());
            }
            for (disk, stats) in verified {
                println!(
                    "disk {disk}: {} chunks checked, {} damaged",
                    stats.chunks + stats.bad_chunks,
                    stats.bad_chunks
                );
                for (off, len, why) in &stats.bad {
                    println!("  bytes {off}+{len}: {why}");
                }
                if stats.bad_chunks > stats.bad.len() as u64 {
                    println!("  … and {} more", stats.bad_chunks - stats.bad.len() as u64);
                }
                bad += stats.bad_chunks;
            }
            if bad > 0 {
                return Err(Damaged(backup).into());
            }
        }
        Command::Delete { backup } => {
            let ekko = Ekko::connect(config, Catalog::Required).await?;
            service::backups::delete_backup(&ekko, &backup).await?;
            println!("deleted {backup}");
        }
        Command::Timeline { instance, width } => {
            let ekko = Ekko::connect(config, Catalog::Required).await?;
            let list = service::backups::history(&ekko, &instance, 1000).await?;
            let rows: Vec<crate::timeline::TimelineRow> = list
                .iter()
                .map(|b| crate::timeline::TimelineRow {
                    created_at: b.created_at.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
                    kind: b.kind.clone().unwrap_or_default(),
                    size: b.logical_bytes.max(0) as u64,
                    new_bytes: b.new_bytes.max(0) as u64,
                    stored_bytes: b.stored_bytes.max(0) as u64,
                })
                .collect();
            print!("{}", crate::timeline::render(&rows, width));
        }
        Command::Retention { dry_run } => {
            let ekko = Ekko::connect(config, Catalog::Required).await?;
            if dry_run {
                let all = service::policies::list_all(&ekko).await?;
                for p in all {
                    println!("policy {} ({})", p.id, p.name);
                    for i in crate::retention::plan_policy(&ekko, &p.id).await? {
                        println!("  instance {}", i.instance_id);
                        for d in i.backups {
                            println!(
                                "    {} {} {:<6} {}",
                                d.id,
                                d.created_at,
                                if d.keep { "keep" } else { "remove" },
                                d.reasons.join("; ")
                            );
                        }
                    }
                }
            }
            let report = crate::retention::run_pass(&ekko, dry_run).await?;
            if dry_run {
                println!("dry run: {} backups would expire", report.backups_expired);
            }
            println!("{report}");
        }
        Command::Hosts { format } => {
            let ekko = Ekko::connect(config, Catalog::Required).await?;
            let hosts = service::hosts::list(&ekko).await?;
            if format == Format::Json {
                let rows: Vec<serde_json::Value> = hosts
                    .iter()
                    .map(|h| {
                        serde_json::json!({
                            "name": h.name, "version": h.version, "capacity": h.capacity,
                            "heartbeat_at": crate::service::convert::timestamp(&h.heartbeat_at),
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(());
            }
            for h in hosts {
                println!(
                    "{:<32} {:<10} capacity {:<3} last heartbeat {} UTC",
                    h.name, h.version, h.capacity, h.heartbeat_at
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every argument of every command says what it is for.
    fn assert_documented(cmd: &clap::Command, path: &str) {
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            assert!(arg.get_help().is_some(), "{path} {id}: no help text");
        }
        for sub in cmd.get_subcommands() {
            assert!(
                sub.get_about().is_some(),
                "{path} {}: no about",
                sub.get_name()
            );
            assert_documented(sub, &format!("{path} {}", sub.get_name()));
        }
    }

    #[test]
    fn every_argument_has_help() {
        assert_documented(&super::Cli::command(), "ekko");
        assert_documented(&super::super::manage::Cli::command(), "ekko-manage");
    }
}
