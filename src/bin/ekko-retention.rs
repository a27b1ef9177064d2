//! ekko-retention: the retention, expiry and garbage-collection worker.

use clap::Parser;
use ekko::config::ConfigArgs;

#[derive(Parser)]
#[command(
    name = "ekko-retention",
    version,
    about = "Ekko retention, expiry and garbage-collection worker"
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
    let ekko = ekko::Ekko::connect(config, ekko::ekko::Catalog::Required).await?;
    ekko::daemon::run_retention(ekko, ekko::cli::shutdown_signal()).await?;
    Ok(())
}
