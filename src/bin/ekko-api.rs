//! ekko-api: the REST API.

use clap::Parser;
use ekko::config::ConfigArgs;

#[derive(Parser)]
#[command(name = "ekko-api", version, about = "Ekko REST API")]
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
    ekko::daemon::run_api(ekko, ekko::cli::shutdown_signal()).await?;
    Ok(())
}
