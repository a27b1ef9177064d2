// Rebuild when a migration is added: `embed_migrations!` reads the
// directories at compile time.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
