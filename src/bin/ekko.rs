//! ekko: the operator and standalone command line (`ekko::cli::operator`).

#[tokio::main]
async fn main() -> std::process::ExitCode {
    ekko::cli::operator::run().await
}
