//! The control plane: reloading the route set and the enrichment tables without a restart.
//!
//! `POST /reload` on the admin port and SIGHUP both call [`Control::reload`], on their own
//! threads: it reads the config file again, parses, validates and compiles it (tables, route
//! set and matcher) there, off the data path, and publishes the result under a new revision.
//! Each shard checks the published revision (one atomic load) before every batch it steps,
//! and in its housekeeping loop when idle; on a change it takes the new routes and matcher
//! (and, when they changed, its own copy of the new tables) between two batches, so a batch is
//! routed wholly by one revision. `reload` returns once every shard runs the new revision.
//!
//! `[[route]]` and `[enrich.*]` reload (the tables are loaded again only when their specs or
//! files changed); the streams (and so the sinks), sources, keys, shards and listeners are
//! those the engine started with. A config whose streams or sources differ is refused, as is one that does not
//! compile or whose tables do not load; either way the running rules and tables stay.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::config::{Config, StreamSpec, TableSpecs};
use crate::consts::{RELOAD_POLL, RELOAD_TAKE_TIMEOUT};
use crate::enrich::Tables;
use crate::route::RouteSet;
use crate::route::compiled::Matcher;

/// A route set compiled for the shards' tables, by revision.
#[derive(Debug)]
pub struct RouteUpdate {
    pub revision: u64,
    pub routes: RouteSet,
    /// Compiled against `tables`.
    pub matcher: Matcher,
    /// The tables every shard copies, and their revision (1 at start, one more each time a
    /// reload loads them again): a shard whose copy is of another revision takes a new one.
    pub tables: Arc<Tables>,
    pub tables_revision: u64,
}

/// The running engine's reloadable state.
pub struct Control {
    /// The config file reloads read; `None` for the embedded default.
    source: Option<PathBuf>,
    streams: Vec<StreamSpec>,
    /// The sources the engine started with (a reload cannot change them).
    sources: Vec<crate::source::kafka::SourceSpec>,
    /// The tables the shards' copies start from, to compile matchers for, their revision, and
    /// what they were loaded from.
    tables: Mutex<(Arc<Tables>, u64, TableSpecs)>,
    /// The newest revision published.
    published: AtomicU64,
    /// The newest update (none before the first reload: the shards start from the config).
    latest: Mutex<Option<Arc<RouteUpdate>>>,
    /// The revision each shard runs.
    running: Vec<AtomicU64>,
    /// One reload at a time.
    reloading: Mutex<()>,
}

impl Control {
    /// The control plane of an engine started with `config` (read from `source`).
    pub fn new(config: &Config, source: Option<PathBuf>) -> Control {
        Control {
            source,
            streams: config.streams.clone(),
            sources: config.sources.clone(),
            tables: Mutex::new((
                Arc::new(config.tables.clone()),
                1,
                config.tables_spec.clone(),
            )),
            published: AtomicU64::new(1),
            latest: Mutex::new(None),
            running: (0..config.shards).map(|_| AtomicU64::new(1)).collect(),
            reloading: Mutex::new(()),
        }
    }

    /// The newest revision published.
    #[inline]
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Acquire)
    }

    /// The newest update; a shard calls this when [`Control::published`] moved.
    pub fn latest(&self) -> Option<Arc<RouteUpdate>> {
        self.latest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Records that `shard` now routes by `revision`.
    pub fn running(&self, shard: usize, revision: u64) {
        self.running[shard].store(revision, Ordering::Release);
    }

    /// Reads, compiles and publishes the config again; waits (up to 10 s) until every shard
    /// runs it. Returns what was loaded, or why nothing was.
    pub fn reload(&self) -> Result<String, String> {
        let _one = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        let config = match &self.source {
            Some(p) => Config::load(p),
            None => Config::embedded_default(),
        }
        .map_err(|e| e.to_string())?;
        if config.streams != self.streams {
            let names = |s: &[StreamSpec]| {
                s.iter()
                    .map(|s| {
                        let sinks: Vec<&str> = s.sinks.iter().map(|k| k.name.as_str()).collect();
                        format!("{} ({}; sinks [{}])", s.name, s.format, sinks.join(", "))
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Err(format!(
                "the streams differ from the running ones: {} instead of {}; adding, removing or \
                 reformatting streams, or changing their sinks or retention, needs a restart",
                names(&config.streams),
                names(&self.streams)
            ));
        }
        if config.sources != self.sources {
            return Err(
                "the [[source]] sections differ from the running ones; changing sources needs \
                 a restart"
                    .into(),
            );
        }
        let started = Instant::now();
        let revision = self.published() + 1;
        let mut current = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        let new_tables = current.2 != config.tables_spec;
        if new_tables {
            *current = (Arc::new(config.tables), current.1 + 1, config.tables_spec);
        }
        let (tables, tables_revision) = (current.0.clone(), current.1);
        drop(current);
        let update = RouteUpdate {
            revision,
            matcher: Matcher::new(&config.routes, &tables),
            routes: config.routes,
            tables,
            tables_revision,
        };
        let rules = update.routes.rules().len();
        let loaded = if new_tables {
            format!(", tables loaded again ({})", config.tables_source)
        } else {
            String::new()
        };
        *self.latest.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(update));
        self.published.store(revision, Ordering::Release);
        let deadline = started + RELOAD_TAKE_TIMEOUT;
        while self
            .running
            .iter()
            .any(|r| r.load(Ordering::Acquire) < revision)
        {
            if Instant::now() > deadline {
                return Err(format!(
                    "revision {revision} is published but not every shard took it within {} s",
                    RELOAD_TAKE_TIMEOUT.as_secs()
                ));
            }
            std::thread::sleep(RELOAD_POLL);
        }
        Ok(format!(
            "revision {revision}: {rules} routes{loaded}, running on every shard after {} ms",
            started.elapsed().as_millis()
        ))
    }

    /// The revision each shard runs.
    pub fn revisions(&self) -> Vec<u64> {
        self.running
            .iter()
            .map(|r| r.load(Ordering::Acquire))
            .collect()
    }
}
