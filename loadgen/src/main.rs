//! The `loadgen` command: drive a sluice engine, or write a workload's fixtures.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use sluice_loadgen::client::{RunOpts, run};
use sluice_protocol::{Backend, Keyring};
use sluice_workload::Workload;

#[derive(Parser)]
#[command(name = "loadgen", version, about = "sluice's load generator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Send a seeded workload to an engine and report acked events and ack latency.
    Run {
        /// Any engine port (the shared one is fine): the generator asks it for the map.
        #[arg(long, default_value = "127.0.0.1:7400")]
        target: String,
        #[arg(long, default_value = "w1")]
        workload: Workload,
        /// Events per second, or `max`.
        #[arg(long, default_value = "max")]
        rate: String,
        /// Seconds to send for.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Send exactly this many events (once each), then stop.
        #[arg(long)]
        events: Option<u64>,
        #[arg(long, default_value_t = 4)]
        connections: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Envelopes per batch frame.
        #[arg(long, default_value_t = 128)]
        batch: usize,
        /// Batch frames in flight per connection.
        #[arg(long, default_value_t = 16)]
        window: usize,
        /// Events sealed before the clock starts.
        #[arg(long, default_value_t = 1 << 20)]
        pool: usize,
        /// Key file (`ID KEY` lines); default: the demo keys.
        #[arg(long)]
        keys: Option<PathBuf>,
        /// Write the JSON report here.
        #[arg(long)]
        report: Option<PathBuf>,
        /// No progress lines.
        #[arg(long)]
        quiet: bool,
        /// Produce to Kafka instead (`host:port[,host:port]`): one envelope per message,
        /// keyed by its partition key, to `--topic`; `--target` is not used.
        #[arg(long, requires = "topic")]
        kafka: Option<String>,
        /// The topic `--kafka` produces to.
        #[arg(long, requires = "kafka")]
        topic: Option<String>,
    },
    /// Latency against offered load: a run at `--rate max`, then runs offering 10%, 20%,
    /// ... 100% of what it acked; writes `sweep.json` and `sweep.html` (SVG charts, nothing
    /// fetched) under `--out` and prints the JSON.
    Sweep {
        #[arg(long, default_value = "127.0.0.1:7400")]
        target: String,
        #[arg(long, default_value = "w1")]
        workload: Workload,
        /// Offered loads: this many even steps up to the maximum.
        #[arg(long, default_value_t = 10)]
        steps: usize,
        /// Seconds each step runs.
        #[arg(long, default_value_t = 5.0)]
        step_seconds: f64,
        /// Seconds the run at `--rate max` runs.
        #[arg(long, default_value_t = 5.0)]
        max_seconds: f64,
        #[arg(long, default_value_t = 4)]
        connections: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, default_value_t = 128)]
        batch: usize,
        #[arg(long, default_value_t = 16)]
        window: usize,
        /// Events sealed before each run's clock starts.
        #[arg(long, default_value_t = 1 << 19)]
        pool: usize,
        /// Key file (`ID KEY` lines); default: the demo keys.
        #[arg(long)]
        keys: Option<PathBuf>,
        /// Where `sweep.json` and `sweep.html` go.
        #[arg(long, default_value = "sluice-sweep")]
        out: PathBuf,
    },
    /// Serve a customer table over HTTP for batch lookups (`POST /lookup` with ids
    /// `1,2,3`), with injected latency and failures.
    LookupService {
        /// A customer CSV (as `loadgen fixtures` writes); default: the W1 table of `--seed`.
        #[arg(long)]
        table: Option<PathBuf>,
        #[arg(long, default_value_t = 7480)]
        port: u16,
        /// Wait this long before each answer.
        #[arg(long, default_value_t = 0)]
        latency_us: u64,
        /// Fraction of requests answered 503.
        #[arg(long, default_value_t = 0.0)]
        fail_rate: f64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Write keys, tables, route set and an engine config for a workload.
    Fixtures {
        #[arg(long, default_value = "w1")]
        workload: Workload,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

fn main() -> ExitCode {
    match go(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}

fn go(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::LookupService {
            table,
            port,
            latency_us,
            fail_rate,
            seed,
        } => {
            use sluice_loadgen::lookup;
            if !(0.0..=1.0).contains(&fail_rate) {
                return Err(format!("--fail-rate {fail_rate} is not within 0..=1"));
            }
            let rows = match &table {
                Some(p) => lookup::load_table(p)?,
                None => lookup::w1_table(seed),
            };
            let n = rows.len();
            let opts = lookup::ServiceOpts {
                latency: Duration::from_micros(latency_us),
                fail_rate,
                seed,
            };
            let (addr, _stats) = lookup::start(&format!("127.0.0.1:{port}"), rows, opts)
                .map_err(|e| format!("127.0.0.1:{port}: {e}"))?;
            eprintln!(
                "loadgen: lookup service on http://{addr}/lookup: {n} customers, {latency_us} us \
                 latency, {fail_rate} failing"
            );
            loop {
                std::thread::park();
            }
        }
        Command::Sweep {
            target,
            workload,
            steps,
            step_seconds,
            max_seconds,
            connections,
            seed,
            batch,
            window,
            pool,
            keys,
            out,
        } => {
            let keys = match keys {
                Some(p) => Keyring::load(&p, Backend::default())
                    .map_err(|e| format!("{}: {e}", p.display()))?,
                None => sluice_workload::demo_keyring(Backend::default()),
            };
            if batch == 0 || batch > 4096 {
                return Err("--batch must be 1..=4096".into());
            }
            let mut base = RunOpts::new(target, keys);
            base.workload = workload;
            base.connections = connections;
            base.seed = seed;
            base.batch_envelopes = batch;
            base.window_batches = window;
            base.pool_events = pool;
            let opts = sluice_loadgen::sweep::SweepOpts {
                base,
                steps,
                step_duration: Duration::from_secs_f64(step_seconds),
                max_duration: Duration::from_secs_f64(max_seconds),
            };
            let s = sluice_loadgen::sweep::sweep(&opts, |line| eprintln!("loadgen: sweep {line}"))?;
            let (json, page) = sluice_loadgen::sweep::write(&s, &out)?;
            println!(
                "{}",
                serde_json::to_string_pretty(&s).expect("a sweep serializes")
            );
            eprintln!(
                "loadgen: sweep written to {} and {}",
                json.display(),
                page.display()
            );
            Ok(())
        }
        Command::Fixtures {
            workload,
            out,
            seed,
        } => {
            sluice_workload::fixtures::write(workload, seed, &out)
                .map_err(|e| format!("{}: {e}", out.display()))?;
            eprintln!("loadgen: wrote {workload} fixtures to {}", out.display());
            Ok(())
        }
        Command::Run {
            target,
            workload,
            rate,
            duration,
            events,
            connections,
            seed,
            batch,
            window,
            pool,
            keys,
            report,
            quiet,
            kafka,
            topic,
        } => {
            let keys = match keys {
                Some(p) => Keyring::load(&p, Backend::default())
                    .map_err(|e| format!("{}: {e}", p.display()))?,
                None => sluice_workload::demo_keyring(Backend::default()),
            };
            let rate = sluice_loadgen::client::parse_rate(&rate)?;
            if batch == 0 || batch > 4096 {
                return Err("--batch must be 1..=4096".into());
            }
            let mut opts = RunOpts::new(target, keys);
            opts.workload = workload;
            opts.rate = rate;
            opts.duration = Duration::from_secs_f64(duration);
            opts.events = events;
            opts.connections = connections;
            opts.seed = seed;
            opts.batch_envelopes = batch;
            opts.window_batches = window;
            opts.pool_events = pool;
            opts.progress = !quiet;
            let r = match (&kafka, &topic) {
                (Some(brokers), Some(topic)) => sluice_loadgen::kafka::run(&opts, brokers, topic)?,
                _ => run(&opts)?,
            };
            let json = serde_json::to_string_pretty(&r).expect("a report serializes");
            println!("{json}");
            if let Some(p) = report {
                std::fs::write(&p, json + "\n").map_err(|e| format!("{}: {e}", p.display()))?;
            }
            if r.events_failed > 0 {
                return Err(format!("{} events failed", r.events_failed));
            }
            Ok(())
        }
    }
}
