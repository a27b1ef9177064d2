//! ekko: the operator and standalone command line (`ekko::cli::operator`).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    ekko::cli::operator::main().await
}
