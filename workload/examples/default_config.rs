//! Prints the engine's embedded default config: `cargo run -p sluice-workload --example
//! default_config > engine/src/default.toml`.
fn main() {
    print!("{}", sluice_workload::fixtures::default_config());
}
