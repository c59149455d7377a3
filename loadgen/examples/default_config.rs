//! Prints the engine's embedded default config: `cargo run -p sluice-loadgen --example
//! default_config > engine/src/default.toml`.
fn main() {
    print!("{}", sluice_loadgen::fixtures::default_config());
}
