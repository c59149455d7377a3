//! `pipeline-rate`: the shard pipeline's rate on one pinned core, and what each stage costs.
//!
//! ```text
//! pipeline-rate [--workload w1|w2|w3] [--seconds N] [--frames N] [--envelopes N] [--seed N]
//!               [--drain-bytes N]
//! ```
//!
//! Builds a corpus of batch frames of `--envelopes` envelopes (128) of the workload (65,536
//! events, about 40 MB for W1: more than the caches hold, as a live stream is), with the
//! embedded default config on one shard (W3: the same with its 10,000 rules into 100 streams),
//! and runs [`Pipeline::step`] over it, restoring each frame from a pristine copy outside the
//! timed section (a step decrypts in place) and draining the output buffers after each frame
//! as the committer does. So each frame's records are written into memory the frame before
//! wrote, still in the nearest caches; in the engine a round's records go into buffers the
//! disk read a few rounds before, further away. `--drain-bytes N` keeps the records until
//! the buffers hold N bytes (32000000, more than the L3 cache, is the engine's case), so that
//! they are written into memory the caches have let go. Prints one JSON object:
//!
//! ```json
//! {"workload": "w1", "events_per_sec": ..., "ns_per_event": ..., "records_per_event": ...,
//!  "stages": {"open": ..., "validate": ..., "enrich": ..., "route": ..., "project_encode": ...,
//!             "frame": ...}}
//! ```
//!
//! The stages are measured by cutting the pipeline off ([`stage`]): the pipeline runs cut
//! after each stage in turn, and a stage's figure is the time per event of the run cut after
//! it less that of the run cut before it, so the stages add up to the whole. The runs take
//! turns in slices of about 50 ms for `--seconds` (5) in all, and each figure is the median
//! over its slices, so that the machine's noise falls on every level alike.
//!
//! `--frames N` instead steps N frames once, whole (or cut off after `--upto STAGE`), and
//! prints nothing but the figures of that run (for `valgrind --tool=callgrind
//! --toggle-collect='*Pipeline*step*'`, or `perf stat` at one stage). Its warm-up steps the
//! same N frames whole before, so a count over every step is of twice the printed events.

use std::time::{Duration, Instant};

use sluice::config::Config;
use sluice::pipeline::{BatchOutcome, Pipeline, StepError, stage};
use sluice_loadgen::client::build_pool;
use sluice_protocol::AlignedBuf;
use sluice_workload::Workload;

struct Args {
    workload: Workload,
    seconds: f64,
    frames: Option<usize>,
    /// With `--frames`: the stage the pipeline is cut off after (`frame`: whole).
    upto: usize,
    envelopes: usize,
    seed: u64,
    /// Output bytes kept before the buffers are cleared (0: after every frame).
    drain_bytes: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        workload: Workload::W1,
        seconds: 5.0,
        frames: None,
        upto: stage::NAMES.len() - 1,
        envelopes: 128,
        seed: 1,
        drain_bytes: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--workload" => a.workload = value()?.parse()?,
            "--seconds" => {
                a.seconds = value()?.parse().map_err(|e| format!("--seconds: {e}"))?;
            }
            "--frames" => {
                a.frames = Some(value()?.parse().map_err(|e| format!("--frames: {e}"))?);
            }
            "--upto" => {
                let v = value()?;
                a.upto = stage::NAMES
                    .iter()
                    .position(|n| *n == v)
                    .ok_or(format!("--upto {v}: one of {:?}", stage::NAMES))?;
            }
            "--envelopes" => {
                a.envelopes = value()?.parse().map_err(|e| format!("--envelopes: {e}"))?;
            }
            "--seed" => a.seed = value()?.parse().map_err(|e| format!("--seed: {e}"))?,
            "--drain-bytes" => {
                a.drain_bytes = value()?
                    .parse()
                    .map_err(|e| format!("--drain-bytes: {e}"))?;
            }
            "-h" | "--help" => {
                println!(
                    "pipeline-rate [--workload w1|w2|w3] [--seconds N] [--frames N \
                     [--upto STAGE]] [--envelopes N] [--seed N] [--drain-bytes N]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if a.envelopes == 0 || a.seconds <= 0.0 {
        return Err("--envelopes and --seconds must be above 0".into());
    }
    Ok(a)
}

/// The config a workload runs under: the embedded default (W1, W2), or the generated W3 one.
fn config(workload: Workload, seed: u64) -> Config {
    let config = match workload {
        Workload::W3 => {
            let text =
                sluice_workload::fixtures::builtin_config(Workload::W3, seed, "./sluice-data");
            Config::parse(&text, "w3.toml", std::path::Path::new("."))
                .unwrap_or_else(|e| panic!("the W3 config compiles: {e}"))
        }
        _ => Config::embedded_default().expect("the default compiles"),
    };
    config.single_shard()
}

/// Steps frames cut off after a stage, restoring each from its pristine copy first.
struct Runner {
    pipeline: Pipeline,
    pristine: Vec<AlignedBuf>,
    frames: Vec<AlignedBuf>,
    next: usize,
    /// The output is cleared after a frame once it holds this many bytes.
    drain_bytes: usize,
}

type Step = fn(&mut Pipeline, &mut [u8]) -> Result<BatchOutcome, StepError>;

const LEVELS: [Step; 6] = [
    Pipeline::step_upto::<{ stage::OPEN }>,
    Pipeline::step_upto::<{ stage::VALIDATE }>,
    Pipeline::step_upto::<{ stage::ENRICH }>,
    Pipeline::step_upto::<{ stage::ROUTE }>,
    Pipeline::step_upto::<{ stage::PROJECT_ENCODE }>,
    Pipeline::step_upto::<{ stage::FRAME }>,
];

#[derive(Default)]
struct Tally {
    spent: Duration,
    events: u64,
    records: u64,
}

impl Runner {
    /// Steps frames with `step` until `budget` of stepping is spent; returns what it did.
    fn run(&mut self, step: Step, budget: Duration, frames_max: usize) -> Tally {
        let mut t = Tally::default();
        let mut done = 0;
        while t.spent < budget && done < frames_max {
            let k = self.next;
            self.next = (k + 1) % self.frames.len();
            self.frames[k]
                .as_mut_slice()
                .copy_from_slice(&self.pristine[k]);
            let start = Instant::now();
            let o = step(&mut self.pipeline, &mut self.frames[k]).expect("a good frame");
            t.spent += start.elapsed();
            t.events += u64::from(o.events);
            t.records += u64::from(o.records);
            done += 1;
            if self.pipeline.pending_bytes() >= self.drain_bytes {
                for out in &mut self.pipeline.out {
                    out.buf.clear();
                }
            }
        }
        t
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() {
    let args = parse_args().unwrap_or_else(|e| {
        eprintln!("pipeline-rate: {e}");
        std::process::exit(2);
    });
    let core = sluice_benches::pin_to_one_core();
    let config = config(args.workload, args.seed);
    let tables = config.tables.clone();
    let pipeline = Pipeline::new(&config, 0, tables);
    let events = 65_536;
    let mut pool = build_pool(
        args.workload,
        args.seed,
        events,
        args.envelopes,
        config.partitions,
        &config.keyring,
        1,
    );
    // The frames still open when the corpus ended (at most one a partition) come last.
    pool.truncate(pool.len().saturating_sub(config.partitions as usize));
    assert!(!pool.is_empty(), "no whole frames: raise the events");
    let pristine: Vec<AlignedBuf> = pool.into_iter().map(|f| f.bytes).collect();
    let mut r = Runner {
        pipeline,
        frames: pristine.clone(),
        pristine,
        next: 0,
        drain_bytes: args.drain_bytes,
    };
    // Warm up: grow the output buffers, touch the tables. With `--frames N`, by stepping the
    // same N frames whole once, so that a count taken over every step (callgrind's) is of
    // exactly twice the run's events, however fast the machine.
    match args.frames {
        Some(n) => r.run(LEVELS[5], Duration::MAX, n),
        None => r.run(LEVELS[5], Duration::from_millis(300), usize::MAX),
    };

    if let Some(n) = args.frames {
        let t = r.run(LEVELS[args.upto], Duration::MAX, n);
        let out = serde_json::json!({
            "workload": args.workload.to_string(),
            "frames": n,
            "upto": stage::NAMES[args.upto],
            "events": t.events,
            "records": t.records,
            "ns_per_event": t.spent.as_nanos() as f64 / t.events as f64,
            "drain_bytes": args.drain_bytes,
        });
        println!("{out}");
        return;
    }

    let slice = Duration::from_millis(50);
    let rounds = ((args.seconds / (slice.as_secs_f64() * LEVELS.len() as f64)) as usize).max(3);
    let mut ns: Vec<Vec<f64>> = vec![Vec::new(); LEVELS.len()];
    let mut records_per_event = 0.0;
    for _ in 0..rounds {
        for (level, step) in LEVELS.iter().enumerate() {
            let t = r.run(*step, slice, usize::MAX);
            ns[level].push(t.spent.as_nanos() as f64 / t.events as f64);
            if level == LEVELS.len() - 1 {
                records_per_event = t.records as f64 / t.events as f64;
            }
        }
    }
    let medians: Vec<f64> = ns.iter_mut().map(|v| median(v)).collect();
    let mut stages = serde_json::Map::new();
    let mut before = 0.0;
    for (name, m) in stage::NAMES.iter().zip(&medians) {
        stages.insert((*name).into(), round2(m - before).into());
        before = *m;
    }
    let whole = medians[LEVELS.len() - 1];
    let out = serde_json::json!({
        "workload": args.workload.to_string(),
        "events_per_sec": (1e9 / whole).round(),
        "ns_per_event": round2(whole),
        "records_per_event": round2(records_per_event),
        "stages": stages,
        "stages_measured_by": "cut-off runs: each stage is the median ns/event of the pipeline cut after it less that of the pipeline cut before it",
        "frames": r.frames.len(),
        "envelopes_per_frame": args.envelopes,
        "rounds": rounds,
        "drain_bytes": args.drain_bytes,
        "core": core,
    });
    println!("{out}");
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
