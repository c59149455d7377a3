//! sluice's load generator.
//!
//! [`workload`] produces the standard workloads of WORKLOAD.md (W1, W2, W3) from a seed,
//! [`tables`] the enrichment tables their events join against and [`routes`] the route set.
//! The same seed gives the same bytes (on one platform: see [`workload`]). [`pool`] seals
//! uploads into batch frames before the clock starts; [`client`] sends them open-loop and
//! measures ack latency; [`fixtures`] writes the files an engine needs for a workload.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod client;
pub mod fixtures;
pub mod lookup;
pub mod routes;
pub mod tables;
pub mod workload;

pub use workload::{Upload, Workload, WorkloadGen};

use rand::{RngCore, SeedableRng};
use sluice_protocol::{Backend, KEY_BYTES, Keyring};

/// The demo keys (ids 1..=8) that the engine's embedded default and the generator share.
/// They are public: use them for demos and tests only.
pub fn demo_keys() -> Vec<(u32, [u8; KEY_BYTES])> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x5_1u64 << 40 | 0xdead_beef);
    (1..=workload::KEY_IDS)
        .map(|id| {
            let mut k = [0u8; KEY_BYTES];
            rng.fill_bytes(&mut k);
            (id, k)
        })
        .collect()
}

/// [`demo_keys`] as a keyring.
pub fn demo_keyring(backend: Backend) -> Keyring {
    let mut ring = Keyring::new(backend);
    for (id, k) in demo_keys() {
        ring.insert(id, k).expect("distinct ids");
    }
    ring
}
