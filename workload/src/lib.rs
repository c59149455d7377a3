//! sluice's standard workloads (WORKLOAD.md), with no sockets: what both the engine (its
//! embedded default and demo) and the load generator (what it sends) are built from.
//!
//! [`events`] produces the events of W1, W2 and W3 from a seed, [`tables`] the enrichment
//! tables they join against, [`routes`] the route sets and the independent model of what a
//! route set must output (tests check the engine against it), [`fixtures`] the files an
//! engine needs for a workload. The same seed gives the same bytes (on one platform: see
//! [`events`]). The demo keys are here too: the engine's embedded default and the generator
//! share them.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod events;
pub mod fixtures;
pub mod routes;
pub mod tables;

pub use events::{Upload, Workload, WorkloadGen};

use rand::{RngCore, SeedableRng};
use sluice_protocol::{Backend, KEY_BYTES, Keyring};

/// The demo keys (ids 1..=8) that the engine's embedded default and the generator share.
/// They are public: use them for demos and tests only.
pub fn demo_keys() -> Vec<(u32, [u8; KEY_BYTES])> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x5_1u64 << 40 | 0xdead_beef);
    (1..=events::KEY_IDS)
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
