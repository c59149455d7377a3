//! `sluice demo`: the engine on its embedded default, driven by the bundled load generator,
//! with live progress and a closing report.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sluice_loadgen::Workload;
use sluice_loadgen::client::{RunOpts, run as run_loadgen};
use sluice_protocol::Error;

use crate::config::Config;
use crate::runtime::Engine;

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
    /// Write the generator's JSON report here.
    #[arg(long)]
    pub report: Option<PathBuf>,
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
    let data = config.sinks.dir.clone();
    eprintln!(
        "demo: engine with {} shards, {} routes into {} streams, segments under {}",
        config.shards,
        config.routes.rules().len(),
        config.streams.len() - 1,
        data.display()
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
                std::thread::sleep(Duration::from_millis(50));
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
    println!("  records per stream:");
    let streams = registry.streams.clone();
    for (i, name) in streams.iter().enumerate() {
        println!("    {name:<12} {:>12}", counters.records[i]);
    }
    let dead: u64 = counters.dead_letters.iter().sum();
    println!("  dead letters: {dead}");
    for (i, n) in counters.dead_letters.iter().enumerate() {
        if *n > 0 {
            println!("    {:<16} {n}", Error::NAMES[i]);
        }
    }
    println!(
        "  segments: {} (read them with `sluice cat {}`)",
        data.display(),
        data.display()
    );
    if let Some(p) = &args.report {
        let json = serde_json::to_string_pretty(&report).expect("serializes");
        std::fs::write(p, json + "\n").map_err(|e| format!("{}: {e}", p.display()))?;
    }
    if report.events_failed > 0 {
        return Err(format!("{} events failed", report.events_failed));
    }
    Ok(())
}
