//! The shard pipeline, one core: `step` over W1 batch frames of 128 envelopes (open, validate,
//! enrich from the W1 tables, route through the 100-rule W1 set, project and encode about 3
//! records an event), with the embedded default config on one shard. The output buffers are
//! drained between frames, as the committer does; frames are restored from a pristine copy
//! outside the timed section (`step` decrypts in place).
//!
//! `cargo bench -p sluice-benches --bench pipeline`. Throughput is in W1 events.

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice::config::Config;
use sluice::pipeline::Pipeline;
use sluice_loadgen::client::build_pool;
use sluice_workload::Workload;

const FRAME_ENVELOPES: usize = 128;

fn step(c: &mut Criterion) {
    sluice_benches::pin_to_one_core();
    let config = Config::embedded_default()
        .expect("the default compiles")
        .single_shard();
    let tables = config.tables.clone();
    let mut pipeline = Pipeline::new(&config, 0, tables);
    let pool = build_pool(
        Workload::W1,
        1,
        64 * FRAME_ENVELOPES * 8,
        FRAME_ENVELOPES,
        config.partitions,
        &config.keyring,
        1,
    );
    let pristine: Vec<_> = pool
        .into_iter()
        .filter(|f| f.events as usize == FRAME_ENVELOPES)
        .map(|f| f.bytes)
        .collect();
    assert!(pristine.len() >= 64, "full frames: {}", pristine.len());
    let mut frames = pristine.clone();
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(FRAME_ENVELOPES as u64));
    g.bench_function("step/w1x128", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for i in 0..iters as usize {
                let k = i % frames.len();
                frames[k].as_mut_slice().copy_from_slice(&pristine[k]);
                let t = Instant::now();
                let o = pipeline.step(&mut frames[k]).expect("a good frame");
                spent += t.elapsed();
                assert_eq!(o.accepted as usize, FRAME_ENVELOPES);
                assert!(o.records > 0);
                for out in &mut pipeline.out {
                    out.buf.clear();
                }
            }
            spent
        })
    });
    g.finish();
}

criterion_group!(benches, step);
criterion_main!(benches);
