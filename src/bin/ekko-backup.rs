//! ekko-backup: the backup worker (one per compute host).

use clap::Parser;
use ekko::config::ConfigArgs;

#[derive(Parser)]
#[command(
    name = "ekko-backup",
    version,
    about = "Ekko backup worker (one per compute host)"
)]
struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = ekko::cli::start(&cli.config)?;
    tracing::info!("connecting to the catalog, the object store and the message bus");
    let ekko = ekko::Ekko::connect(config, ekko::ekko::Catalog::None).await?;
    ekko::daemon::run_backup(ekko, ekko::cli::shutdown_signal()).await?;
    Ok(())
}
