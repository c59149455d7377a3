//! `sluice demo`: the engine on its embedded default, driven by the bundled load generator,
//! with live progress and a closing report.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sluice_loadgen::client::{RunOpts, run as run_loadgen};
use sluice_protocol::Error;
use sluice_workload::Workload;

use sluice::config::Config;
use sluice::runtime::Engine;

#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Seconds to send for.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Events per second, or `max`.
    #[arg(long, default_value = "max")]
    pub rate: String,
    #[arg(long, default_value = "w1")]
    pub workload: Workload,
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Engine config (default: the embedded default).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Keep the segments under DIR (default: a temporary directory, removed when the demo
    /// ends).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Write the generator's JSON report here.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Instead of one run: latency against offered load (`loadgen sweep`): a run at the
    /// maximum rate, then runs at 10%, 20%, ... 100% of it, drawn in one HTML page.
    #[arg(long)]
    pub sweep: bool,
    /// Where `--sweep` writes `sweep.json` and `sweep.html`.
    #[arg(long, value_name = "DIR", default_value = "sluice-sweep")]
    pub sweep_out: PathBuf,
    /// Seconds each `--sweep` step runs (the run at the maximum runs as long).
    #[arg(long, default_value_t = 3.0)]
    pub step_seconds: f64,
}

/// Runs the demo; `interrupted` ends it early.
pub fn run(args: DemoArgs, interrupted: &'static AtomicBool) -> Result<(), String> {
    let config = match &args.config {
        Some(p) => Config::load(p),
        None => Config::embedded_default(),
    }
    .map_err(|e| e.to_string())?;
    let rate = sluice_loadgen::client::parse_rate(&args.rate)?;
    let target = config.listen.shared.to_string();
    let keys = config.keyring.clone();
    // Ten seconds at full rate write gigabytes: unless asked to keep them, the segments go
    // into a directory of the demo's own that is removed when it ends.
    let data = match &args.data {
        Some(dir) => DataDir::Kept(dir.clone()),
        None => DataDir::temporary()?,
    };
    let mut config = config;
    config.sinks.dir = data.path().to_owned();
    eprintln!(
        "demo: engine with {} shards, {} routes into {} streams, segments under {} ({})",
        config.shards,
        config.routes.rules().len(),
        config.streams.len() - 1,
        data.path().display(),
        match data {
            DataDir::Kept(_) => "kept",
            DataDir::Temporary(_) => "temporary: removed at the end; --data DIR keeps them",
        }
    );
    let engine = Engine::start(config, None)?;
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if interrupted.load(Ordering::Relaxed) {
                    stop.store(true, Ordering::Relaxed);
                }
                std::thread::sleep(sluice::consts::SIGNAL_POLL);
            }
        })
    };
    let mut opts = RunOpts::new(target, keys);
    opts.workload = args.workload;
    opts.rate = rate;
    opts.duration = Duration::from_secs_f64(args.duration);
    opts.connections = args.connections;
    opts.progress = true;
    opts.stop = Some(stop.clone());
    if args.sweep {
        opts.progress = false;
        opts.pool_events = 1 << 19;
        let sweep = sluice_loadgen::sweep::SweepOpts {
            base: opts,
            steps: 10,
            step_duration: Duration::from_secs_f64(args.step_seconds),
            max_duration: Duration::from_secs_f64(args.step_seconds.max(3.0)),
        };
        eprintln!(
            "demo: sweep of {}: a run at the maximum rate, then 10 steps of {} s from 10% to 100% of it",
            args.workload, args.step_seconds
        );
        let s = sluice_loadgen::sweep::sweep(&sweep, |line| eprintln!("demo: sweep {line}"));
        stop.store(true, Ordering::Relaxed);
        let _ = watcher.join();
        engine.stop()?;
        let s = s?;
        let (json, page) = sluice_loadgen::sweep::write(&s, &args.sweep_out)?;
        println!();
        println!(
            "sluice demo --sweep: {}, maximum {:.0} events/s acked",
            s.workload, s.max_events_per_sec
        );
        println!("  offered     events/s acked   p50 µs   p99 µs  p999 µs");
        for st in &s.steps {
            println!(
                "  {:>4.0}%  {:>17.0} {:>8} {:>8} {:>8}",
                st.offered_fraction * 100.0,
                st.acked_events_per_sec,
                st.p50_us,
                st.p99_us,
                st.p999_us
            );
        }
        println!("  report: {}", json.display());
        println!(
            "  page:   {} (open it in a browser; it fetches nothing)",
            page.display()
        );
        return Ok(());
    }
    eprintln!(
        "demo: sealing the generator's pool, then sending {} for {} s at rate {}",
        args.workload, args.duration, args.rate
    );
    let report = run_loadgen(&opts);
    stop.store(true, Ordering::Relaxed);
    let _ = watcher.join();
    let registry = engine.registry().clone();
    engine.stop()?;
    let report = report?;
    let (counters, forwarded, latency) = registry.totals();

    println!();
    println!(
        "sluice demo: {} for {:.1} s",
        report.workload, report.duration_s
    );
    println!(
        "  events: {} sent, {} acked, {} failed: {:.0} events/s acked",
        report.events_sent, report.events_acked, report.events_failed, report.events_per_sec
    );
    let l = &report.latency_us;
    println!(
        "  ack latency (generator, per batch of {}): p50 {} µs, p99 {} µs, p999 {} µs, max {} µs",
        report.batch_envelopes, l.p50, l.p99, l.p999, l.max
    );
    println!(
        "  engine batch latency (receipt to ack): p50 {} µs, p99 {} µs",
        latency.value_at_quantile(0.5),
        latency.value_at_quantile(0.99)
    );
    println!(
        "  engine: {} events in, {} batches ({} forwarded between shards)",
        counters.events, counters.batches, forwarded
    );
    println!("  records and bytes written per stream:");
    let streams = registry.streams.clone();
    for (i, name) in streams.iter().enumerate() {
        println!(
            "    {name:<12} {:>12} records {:>16} bytes",
            counters.records[i], counters.record_bytes[i]
        );
    }
    println!(
        "    {:<12} {:>12} records {:>16} bytes",
        "all",
        counters.records.iter().sum::<u64>(),
        counters.record_bytes.iter().sum::<u64>()
    );
    let dead: u64 = counters.dead_letters.iter().sum();
    println!("  dead letters: {dead}");
    for (i, n) in counters.dead_letters.iter().enumerate() {
        if *n > 0 {
            println!("    {:<16} {n}", Error::NAMES[i]);
        }
    }
    match &data {
        DataDir::Kept(dir) => println!(
            "  segments: {} (read them with `sluice cat {}`)",
            dir.display(),
            dir.display()
        ),
        DataDir::Temporary(dir) => println!(
            "  segments: {} removed (run with --data DIR to keep them)",
            dir.display()
        ),
    }
    if let Some(p) = &args.report {
        let json = serde_json::to_string_pretty(&report).expect("serializes");
        std::fs::write(p, json + "\n").map_err(|e| format!("{}: {e}", p.display()))?;
    }
    if report.events_failed > 0 {
        return Err(format!("{} events failed", report.events_failed));
    }
    Ok(())
}

/// Where the demo's segments go.
enum DataDir {
    /// The user's directory: left as it is.
    Kept(PathBuf),
    /// The demo's own: removed when the demo ends, however it ends.
    Temporary(PathBuf),
}

impl DataDir {
    fn temporary() -> Result<DataDir, String> {
        let dir = std::env::temp_dir().join(format!("sluice-demo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(DataDir::Temporary(dir))
    }

    fn path(&self) -> &std::path::Path {
        match self {
            DataDir::Kept(p) | DataDir::Temporary(p) => p,
        }
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        if let DataDir::Temporary(dir) = self
            && let Err(e) = std::fs::remove_dir_all(&*dir)
        {
            eprintln!("demo: could not remove {}: {e}", dir.display());
        }
    }
}
