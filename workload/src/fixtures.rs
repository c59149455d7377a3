//! `loadgen fixtures`: the files an engine needs for a workload (keys, tables, route set and
//! an engine config), so that the engine and the generator agree. The engine's embedded
//! default is [`default_config`] (checked in as `engine/src/default.toml`).

use std::fmt::Write as _;
use std::io;
use std::path::Path;

use crate::events::Workload;
use crate::routes::{STREAMS, W3_STREAMS, generated_streams, routes_toml, w1_routes, w3_routes};

/// The seed of the embedded default's tables and route set.
pub const DEFAULT_SEED: u64 = 1;

/// Where the tables and keys come from in a generated config.
enum Sources {
    /// The demo keys and the builtin W1 tables.
    Builtin,
    /// `keys.txt`, `geo.csv`, `device.csv`, `customer.csv` beside the config.
    Files,
    /// As `Files`, but customers from `loadgen lookup-service` on its default port.
    FilesAndService,
}

/// Where the fixtures' `sluice-lookup.toml` finds the lookup service.
pub const LOOKUP_URL: &str = "http://127.0.0.1:7480/lookup";

fn config(workload: Workload, seed: u64, sources: Sources, data_dir: &str) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "# A sluice engine config for the {} workload (seed {seed}), written by `loadgen fixtures`.",
        workload.to_string().to_uppercase()
    );
    o.push_str(
        "# Sections: engine, shard (tuning), listen, keys, enrich, sinks, streams, routes;\n\
         # tuning.md lists every knob.\n\n",
    );
    o.push_str("[engine]\nshards = 0 # one per core\npartitions = 64\n\n");
    o.push_str(
        "[listen]\nshared = \"127.0.0.1:7400\"\nshard_port_base = 7401\nadmin = \"127.0.0.1:9180\"\n\n",
    );
    match sources {
        Sources::Builtin => {
            o.push_str("[keys]\ndemo = true # the public demo keys: never in production\n\n");
            for table in ["geo", "device", "customer"] {
                let _ = writeln!(o, "[enrich.{table}]\nkind = \"w1\"\nseed = {seed}\n");
            }
        }
        Sources::Files | Sources::FilesAndService => {
            o.push_str("[keys]\nfile = \"keys.txt\"\n\n");
            for table in ["geo", "device", "customer"] {
                if table == "customer" && matches!(sources, Sources::FilesAndService) {
                    let _ = writeln!(
                        o,
                        "# Start the service first: loadgen lookup-service --table customer.csv\n\
                         [enrich.customer]\nkind = \"http\"\nurl = \"{LOOKUP_URL}\"\n"
                    );
                    continue;
                }
                let _ = writeln!(
                    o,
                    "[enrich.{table}]\nkind = \"file\"\npath = \"{table}.csv\"\n"
                );
            }
        }
    }
    let _ = writeln!(
        o,
        "[sinks]\ndir = \"{data_dir}\"\nsegment_bytes_max = 268435456\ndurability = {{ interval_us = 1000 }}\n"
    );
    let (streams, routes) = match workload {
        Workload::W3 => (generated_streams(W3_STREAMS), w3_routes(seed)),
        _ => (STREAMS.map(String::from).to_vec(), w1_routes(seed)),
    };
    // Retention: each stream keeps its newest segments up to 1 GiB (over all shards), so that
    // a long run on the default does not fill the disk.
    for (i, s) in streams.iter().enumerate() {
        let format = if i % 2 == 0 { "rkyv" } else { "json" };
        let _ = writeln!(o, "[streams.{s}]\nformat = \"{format}\"\n{RETENTION}\n");
    }
    let _ = writeln!(o, "[streams.dead-letter]\nformat = \"json\"\n{RETENTION}\n");
    o.push_str(&routes_toml(&routes));
    o
}

/// Each stream's retention in the generated configs (a TOML line).
pub const RETENTION: &str = "retain_bytes_max = 1073741824 # 1 GiB";

/// The engine's embedded default config.
pub fn default_config() -> String {
    config(
        Workload::W1,
        DEFAULT_SEED,
        Sources::Builtin,
        "./sluice-data",
    )
}

/// A config for `workload` (seed `seed`) with the builtin tables and the demo keys, writing
/// under `data_dir`: the embedded default's, with the workload's route set.
pub fn builtin_config(workload: Workload, seed: u64, data_dir: &str) -> String {
    config(workload, seed, Sources::Builtin, data_dir)
}

/// Writes a file only its owner may read (0600), replacing one that was there.
fn write_private(path: &Path, text: &str) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // An older file keeps its mode through `open`: set it.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(text.as_bytes())
}

/// Writes the fixtures of `workload` into `out`: `sluice.toml`, `keys.txt`, `geo.csv`,
/// `device.csv`, `customer.csv`, and `sluice-lookup.toml`, the same config with the customer
/// table asked of `loadgen lookup-service --table customer.csv` ([`LOOKUP_URL`]).
pub fn write(workload: Workload, seed: u64, out: &Path) -> io::Result<()> {
    std::fs::create_dir_all(out)?;
    std::fs::write(
        out.join("sluice.toml"),
        config(workload, seed, Sources::Files, "./data"),
    )?;
    std::fs::write(
        out.join("sluice-lookup.toml"),
        config(workload, seed, Sources::FilesAndService, "./data"),
    )?;
    write_private(
        &out.join("keys.txt"),
        &crate::demo_keyring(sluice_protocol::Backend::Ring).export_key_file(),
    )?;
    let file = |name: &str| std::fs::File::create(out.join(name)).map(io::BufWriter::new);
    crate::tables::write_csv(&crate::tables::geo(seed), &mut file("geo.csv")?)?;
    crate::tables::write_csv(&crate::tables::devices(seed), &mut file("device.csv")?)?;
    crate::tables::write_csv(&crate::tables::customers(seed), &mut file("customer.csv")?)?;
    Ok(())
}
