//! Rebuilds when a migration is added: `embed_migrations!` reads the directory at compile time,
//! and without this cargo notices edits to existing migrations but not a new one.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
