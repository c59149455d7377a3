//! The `sluice` command: run, check, cat, demo. The engine is the `sluice` library; this
//! package adds the command line and the demo, which drives the engine with the load
//! generator (so the library itself does not link the generator).

mod demo;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Parser, Subcommand};
use sluice::config::Config;
use sluice::runtime::Engine;

#[derive(Parser)]
#[command(name = "sluice", version, about = "A thread-per-core event router")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the engine until SIGINT or SIGTERM (the embedded default without --config).
    Run {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Validate and compile a config, and print what it compiled to.
    Check {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print records from segment files (or folders of them) as JSON lines.
    Cat {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Run the engine on its embedded default and drive it with the load generator.
    Demo(demo::DemoArgs),
}

static SIGNALLED: AtomicBool = AtomicBool::new(false);
/// SIGHUP came: reload the routes.
static HANGUP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(sig: libc::c_int) {
    if sig == libc::SIGHUP {
        HANGUP.store(true, Ordering::Relaxed);
    } else {
        SIGNALLED.store(true, Ordering::Relaxed);
    }
}

fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(sig, on_signal as *const () as libc::sighandler_t);
        }
    }
}

fn load(config: Option<PathBuf>) -> Result<Config, String> {
    match config {
        Some(p) => Config::load(&p),
        None => Config::embedded_default(),
    }
    .map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config } => run(config),
        Command::Check { config } => load(config).map(|c| {
            // A closed pipe (`sluice check | head`) is no error.
            let _ = std::io::Write::write_all(&mut std::io::stdout(), c.describe().as_bytes());
        }),
        Command::Cat { paths } => {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            sluice::cat::cat(&paths, &mut out).and_then(|s| {
                for (file, len) in &s.empty {
                    eprintln!(
                        "{file}: empty segment ({len} bytes, no header: a crash while it was created), skipped"
                    );
                }
                for (file, at, why) in &s.torn {
                    eprintln!("{file}: torn tail at byte {at}: {why}");
                }
                eprintln!("{} records from {} segments", s.records, s.segments);
                if s.torn.is_empty() {
                    Ok(())
                } else {
                    Err(format!("{} segments end in a torn tail", s.torn.len()))
                }
            })
        }
        Command::Demo(args) => {
            install_signal_handlers();
            demo::run(args, &SIGNALLED)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(source: Option<PathBuf>) -> Result<(), String> {
    let config = load(source.clone())?;
    install_signal_handlers();
    eprintln!(
        "sluice: {} shards, {} partitions, {} routes into {} streams; listening on {} (shards {}..), admin http://{}",
        config.shards,
        config.partitions,
        config.routes.rules().len(),
        config.streams.len(),
        config.listen.shared,
        config.shard_addr(0),
        config.listen.admin
    );
    let engine = Engine::start(config, source)?;
    eprintln!("sluice: ready");
    while !SIGNALLED.load(Ordering::Relaxed) {
        std::thread::sleep(sluice::consts::SIGNAL_POLL);
        if HANGUP.swap(false, Ordering::Relaxed) {
            match engine.reload() {
                Ok(done) => eprintln!("sluice: SIGHUP: reloaded: {done}"),
                Err(why) => {
                    eprintln!("sluice: SIGHUP: reload refused, the running rules stay: {why}")
                }
            }
        }
    }
    eprintln!("sluice: stopping: committing what was taken");
    engine.stop()?;
    eprintln!("sluice: stopped");
    Ok(())
}
