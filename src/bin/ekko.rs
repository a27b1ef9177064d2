//! ekko: the operator and standalone command line.

use clap::{Parser, Subcommand};
use ekko::config::ConfigArgs;

#[derive(Parser)]
#[command(
    name = "ekko",
    version,
    about = "Ekko: block-based backup for OpenStack instances"
)]
struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Prepare the configured database and store (db sync included) and
    /// check that the catalog, the object store and the message bus work.
    Init,
    /// Run every role (API conductor, backup worker, retention) in one
    /// process: the single-machine default.
    AllInOne,
    /// Show the hosts that reported in.
    Hosts,
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = ekko::cli::start(&cli.config)?;
    match cli.command {
        Command::Init => {
            let ekko = ekko::Ekko::connect(config, ekko::ekko::Catalog::Unchecked).await?;
            let report = ekko::standalone::init(&ekko).await?;
            print!("{report}");
        }
        Command::AllInOne => {
            let ekko = ekko::Ekko::connect(config, ekko::ekko::Catalog::Required).await?;
            ekko::standalone::run_all(ekko, ekko::cli::shutdown_signal()).await?;
        }
        Command::Demo { dir, size_mib } => {
            let report = ekko::demo::run_demo(&config, &dir, size_mib).await?;
            print!("{report}");
        }
        Command::Hosts => {
            let ekko = ekko::Ekko::connect(config, ekko::ekko::Catalog::Required).await?;
            for h in ekko.db()?.run(ekko::db::hosts::list).await? {
                println!(
                    "{:<32} {:<10} capacity {:<3} last heartbeat {} UTC",
                    h.name, h.version, h.capacity, h.heartbeat_at
                );
            }
        }
    }
    Ok(())
}
