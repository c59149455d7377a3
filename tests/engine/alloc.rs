//! The steady-state pipeline allocates nothing per event: a counting global allocator over
//! `step` on W1 batches, once the output buffers have grown to their working size.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use sluice::config::Config;
use sluice::pipeline::Pipeline;
use sluice_loadgen::client::build_pool;
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

#[test]
fn step_allocates_nothing_in_steady_state() {
    let config = Config::embedded_default()
        .expect("the default compiles")
        .single_shard();
    let tables = config.tables.clone();
    let mut pipeline = Pipeline::new(&config, 0, tables);
    let pool = build_pool(
        Workload::W1,
        3,
        4096,
        64,
        config.partitions,
        &config.keyring,
        7,
    );
    let mut frames: Vec<_> = pool.into_iter().map(|f| f.bytes).collect();
    let pristine = frames.clone();

    // Warm up: grow every output buffer to its working size, then drain it.
    for f in frames.iter_mut() {
        pipeline.step(f).expect("a good frame");
    }
    for out in &mut pipeline.out {
        out.buf.clear();
    }

    let mut records = 0;
    for (f, p) in frames.iter_mut().zip(&pristine) {
        f.clear();
        f.extend_from_slice(p);
    }
    COUNTING.store(true, Ordering::Relaxed);
    for f in frames.iter_mut() {
        let o = pipeline.step(f).expect("a good frame");
        records += o.records;
        assert_eq!(o.dead_lettered, 0);
    }
    COUNTING.store(false, Ordering::Relaxed);
    assert!(
        records > 3 * 4096 / 2,
        "the route set emits records: {records}"
    );
    assert_eq!(
        ALLOCATIONS.load(Ordering::Relaxed),
        0,
        "allocations while stepping {} W1 frames",
        frames.len()
    );
}
