//! ekko-status: operators' status checks (`ekko-status upgrade check`).

fn main() {
    ekko::cli::status::main()
}
