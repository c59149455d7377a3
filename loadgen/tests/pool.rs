//! The frame pool: what it seals is what `pool_event_ids` says it holds.

use sluice_loadgen::client::{build_pool, pool_event_ids};
use sluice_workload::Workload;

#[test]
fn pool_event_ids_describe_the_pool_frames() {
    let keys = sluice_workload::demo_keyring(sluice_protocol::Backend::Ring);
    for workload in [Workload::W1, Workload::W2] {
        let pool = build_pool(workload, 9, 3_000, 16, 8, &keys, 1);
        let ids = pool_event_ids(workload, 9, 3_000, 16, 8);
        let shape: Vec<(u32, usize)> = pool
            .iter()
            .map(|f| (f.partition, f.events as usize))
            .collect();
        let want: Vec<(u32, usize)> = ids.iter().map(|(p, ids)| (*p, ids.len())).collect();
        assert_eq!(shape, want, "{workload}");
        let all: std::collections::HashSet<u64> =
            ids.iter().flat_map(|f| f.1.iter().copied()).collect();
        assert_eq!(all.len(), 3_000);
    }
}
