//! The steady-state pipeline allocates nothing per event, on every path a batch takes: a
//! counting global allocator over W1 batches stepped whole (`step`), stepped as consumed
//! messages with their coordinates (`step_from`), and in two passes around a lookup service
//! (`open`, `finish`), once the output buffers have grown to their working size.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sluice::config::Config;
use sluice::enrich::remote::RemoteSpec;
use sluice::pipeline::{BatchOutcome, Pipeline};
use sluice::source::Coord;
use sluice_loadgen::client::build_pool;
use sluice_loadgen::lookup::w1_table;
use sluice_protocol::AlignedBuf;
use sluice_workload::Workload;

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every method forwards to the system allocator with its arguments unchanged and
// returns what it returns, so `Counting` keeps `System`'s guarantees; it only counts calls.
unsafe impl GlobalAlloc for Counting {
    // SAFETY: the caller keeps `GlobalAlloc::alloc`'s contract (non-zero size), which
    // `System.alloc` needs.
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: `layout` has a non-zero size, as the caller of `alloc` guarantees.
        unsafe { System.alloc(layout) }
    }
    // SAFETY: the caller passes a pointer this allocator (that is, `System`) returned, with
    // the layout it was allocated with.
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` (every allocation here does) with this `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
    // SAFETY: the caller passes a live pointer from this allocator, its layout, and a non-zero
    // new size that does not overflow when rounded to the alignment.
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: `ptr` is live and came from `System` with `layout`; `new_size` is valid, as
        // the caller of `realloc` guarantees.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Runs `step` over every frame (each restored from `pristine` first) twice: once to grow
/// the buffers to their working size, then counting allocations; returns the records of the
/// counted pass and the allocations.
fn count(
    frames: &mut [AlignedBuf],
    pristine: &[AlignedBuf],
    pipeline: &mut Pipeline,
    mut step: impl FnMut(&mut Pipeline, &mut AlignedBuf) -> BatchOutcome,
) -> (u32, usize) {
    let mut records = 0;
    for counted in [false, true] {
        for (f, p) in frames.iter_mut().zip(pristine) {
            f.clear();
            f.extend_from_slice(p);
        }
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        COUNTING.store(counted, Ordering::Relaxed);
        for f in frames.iter_mut() {
            let o = step(pipeline, f);
            assert_eq!(o.dead_lettered, 0);
            if counted {
                records += o.records;
            }
        }
        COUNTING.store(false, Ordering::Relaxed);
        for out in &mut pipeline.out {
            out.buf.clear();
        }
        if counted {
            return (records, ALLOCATIONS.load(Ordering::Relaxed) - before);
        }
    }
    unreachable!()
}

fn w1_frames(config: &Config) -> Vec<AlignedBuf> {
    build_pool(
        Workload::W1,
        3,
        4096,
        64,
        config.partitions,
        &config.keyring,
        7,
    )
    .into_iter()
    .map(|f| f.bytes)
    .collect()
}

/// The counting allocator counts one thread at a time: the tests take turns.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

#[test]
fn step_allocates_nothing_in_steady_state() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let config = Config::embedded_default()
        .expect("the default compiles")
        .single_shard();
    let mut pipeline = Pipeline::new(&config, 0, config.tables.clone());
    let pristine = w1_frames(&config);
    let mut frames = pristine.clone();
    let (records, allocations) = count(&mut frames, &pristine, &mut pipeline, |p, f| {
        p.step(f).expect("a good frame")
    });
    assert!(
        records > 3 * 4096 / 2,
        "the route set emits records: {records}"
    );
    assert_eq!(allocations, 0, "allocations while stepping W1 frames");
}

/// Frames of consumed messages (a Kafka source): each envelope with its coordinates.
#[test]
fn a_consumed_batch_allocates_nothing() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let config = Config::embedded_default()
        .expect("the default compiles")
        .single_shard();
    let mut pipeline = Pipeline::new(&config, 0, config.tables.clone());
    let pristine = w1_frames(&config);
    let mut frames = pristine.clone();
    let topic: Arc<str> = "events".into();
    let sources: Vec<Coord> = (0..64)
        .map(|i| Coord {
            topic: topic.clone(),
            partition: 3,
            offset: 1000 + i,
        })
        .collect();
    let (records, allocations) = count(&mut frames, &pristine, &mut pipeline, |p, f| {
        p.step_from(f, &sources).expect("a good frame")
    });
    assert!(records > 3 * 4096 / 2, "{records}");
    assert_eq!(
        allocations, 0,
        "allocations while stepping consumed W1 frames"
    );
}

/// The two passes of a batch whose customer table asks a lookup service, once the service's
/// answers are in its cache: opening, noting what it lacks (nothing), routing.
#[test]
fn two_passes_allocate_nothing_once_answered() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let config = Config::embedded_default()
        .expect("the default compiles")
        .single_shard();
    let mut tables = config.tables.clone();
    // No service listens there: its answers are put in by hand below.
    let spec = RemoteSpec::from_url("http://127.0.0.1:9/lookup").expect("a URL");
    tables.use_remote_customer(Arc::new(spec));
    let mut pipeline = Pipeline::new(&config, 0, tables);
    assert!(pipeline.asks_service());
    let pristine = w1_frames(&config);
    let mut frames = pristine.clone();
    let table = w1_table(1);
    let now = Instant::now();
    // Answer every key the corpus asks for.
    for (f, p) in frames.iter_mut().zip(&pristine) {
        f.clear();
        f.extend_from_slice(p);
        let batch = pipeline.open(f, now, &[]).expect("a good frame");
        let keys: Vec<u64> = pipeline.wants().0.to_vec();
        drop(batch);
        let body: Vec<&str> = keys.iter().map(|k| table[k].as_str()).collect();
        pipeline.answer(&body.join("\n"), now).expect("answers");
    }
    let (records, allocations) = count(&mut frames, &pristine, &mut pipeline, |p, f| {
        let batch = p.open(f, now, &[]).expect("a good frame");
        assert!(p.wants().0.is_empty() && p.wants().1.is_empty());
        let o = p.finish(batch);
        assert_eq!(o.dead_lettered, 0);
        o
    });
    assert!(records > 3 * 4096 / 2, "{records}");
    assert_eq!(allocations, 0, "allocations over both passes of W1 frames");
}
