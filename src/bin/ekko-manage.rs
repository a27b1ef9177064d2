//! ekko-manage: database and administrative tasks (`ekko::cli::manage`).

fn main() -> anyhow::Result<()> {
    ekko::cli::manage::main()
}
