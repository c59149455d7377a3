//! One function per TOML section (but `[enrich.*]`, in [`super::enrich`]): each checks its
//! section's values and compiles them, and says what is wrong with the file and line.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::str::FromStr;

use sluice_protocol::limits::{FRAME_BYTES_MAX, PARTITIONS_MAX, SHARDS_MAX};
use sluice_protocol::{Backend, Keyring, Limits};
use toml::Spanned;

use super::raw::{
    AEAD, INTERVAL_US, RawAdmin, RawDurability, RawEngine, RawKeys, RawListen, RawRoute, RawSinks,
    RawStream, ShardTuning,
};
use super::{
    Admin, ConfigError, DEAD_LETTER_STREAM, Durability, Listen, Sinks, Source, StreamSpec,
    UNMATCHED_STREAM,
};
use crate::route::{RouteSet, RulePart, RuleSource};
use crate::sink::kafka::{self, SinkSpec};
use crate::sink::log::Retention;
use crate::sink::record::RecordFormat;

/// `[engine]` compiled: how many shards, where, and who owns each partition.
pub struct EngineSpec {
    pub shards: usize,
    pub cores: Vec<usize>,
    pub partitions: u32,
    pub owners: Vec<u16>,
    pub backend: Backend,
}

/// `[engine]`.
pub fn engine(src: &Source, e: &RawEngine) -> Result<EngineSpec, ConfigError> {
    let cores_available = std::thread::available_parallelism().map_or(1, |n| n.get());
    let shards = match (e.shards, e.cores.len()) {
        (0, 0) => cores_available,
        (0, n) => n,
        (s, _) => s,
    };
    if shards > SHARDS_MAX {
        return Err(src.err(
            0..0,
            format!("engine.shards: {shards} is over {SHARDS_MAX}"),
        ));
    }
    let cores = if e.cores.is_empty() {
        (0..shards).map(|i| i % cores_available).collect()
    } else if e.cores.len() == shards {
        e.cores.clone()
    } else {
        return Err(src.err(
            0..0,
            format!(
                "engine.cores names {} cores for {shards} shards",
                e.cores.len()
            ),
        ));
    };
    if e.partitions == 0 || e.partitions > PARTITIONS_MAX {
        return Err(src.err(
            0..0,
            format!("engine.partitions must be 1..={PARTITIONS_MAX}"),
        ));
    }
    let owners = owners(src, &e.owners, e.partitions, shards)?;
    let backend = match e.aead.get_ref().as_str() {
        AEAD => Backend::default(),
        name => Backend::from_str(name).map_err(|why| src.err(e.aead.span(), why))?,
    };
    Ok(EngineSpec {
        shards,
        cores,
        partitions: e.partitions,
        owners,
        backend,
    })
}

/// `engine.owners`: as given, or round robin when empty.
fn owners(
    src: &Source,
    given: &Spanned<Vec<u16>>,
    partitions: u32,
    shards: usize,
) -> Result<Vec<u16>, ConfigError> {
    let o = given.get_ref();
    if o.is_empty() {
        return Ok((0..partitions)
            .map(|p| (p as usize % shards) as u16)
            .collect());
    }
    if o.len() != partitions as usize {
        return Err(src.err(
            given.span(),
            format!(
                "engine.owners has {} entries for {partitions} partitions",
                o.len()
            ),
        ));
    }
    if let Some(bad) = o.iter().find(|s| usize::from(**s) >= shards) {
        return Err(src.err(
            given.span(),
            format!("engine.owners names shard {bad}, but there are {shards} shards"),
        ));
    }
    Ok(o.clone())
}

/// `[shard]`: the tuning as given, checked, and the wire limits it sets.
pub fn shard(src: &Source, t: &ShardTuning) -> Result<(ShardTuning, Limits), ConfigError> {
    if t.frame_bytes_max > FRAME_BYTES_MAX || t.frame_bytes_max < 64 {
        return Err(src.err(
            0..0,
            format!("shard.frame_bytes_max must be 64..={FRAME_BYTES_MAX}"),
        ));
    }
    if t.read_buffer_bytes < 4096 || t.read_buffer_bytes > t.frame_bytes_max.max(4096) {
        return Err(src.err(
            0..0,
            "shard.read_buffer_bytes must be 4096 bytes to shard.frame_bytes_max",
        ));
    }
    if t.connections_max == Some(0) {
        return Err(src.err(0..0, "shard.connections_max must be at least 1"));
    }
    if t.idle_timeout_ms == 0 || t.frame_timeout_ms == 0 || t.shutdown_timeout_ms == 0 {
        return Err(src.err(
            0..0,
            "shard.idle_timeout_ms, shard.frame_timeout_ms and shard.shutdown_timeout_ms must be at least 1",
        ));
    }
    if t.inflight_bytes_max < t.frame_bytes_max {
        return Err(src.err(
            0..0,
            "shard.inflight_bytes_max must be at least shard.frame_bytes_max",
        ));
    }
    if t.connection_batches_max == 0 || t.forward_frames_max == 0 {
        return Err(src.err(
            0..0,
            "shard.connection_batches_max and shard.forward_frames_max must be at least 1",
        ));
    }
    let limits = Limits {
        frame_bytes_max: t.frame_bytes_max,
        ..Limits::default()
    }
    .clamped();
    Ok((t.clone(), limits))
}

/// `[listen]`.
pub fn listen(src: &Source, l: &RawListen, shards: usize) -> Result<Listen, ConfigError> {
    let addr = |s: &Spanned<String>, what: &str| {
        s.get_ref().parse::<SocketAddr>().map_err(|err| {
            src.err(
                s.span(),
                format!("{what}: {:?} is not HOST:PORT ({err})", s.get_ref()),
            )
        })
    };
    let listen = Listen {
        shared: addr(&l.shared, "listen.shared")?,
        shard_port_base: l.shard_port_base,
        admin: addr(&l.admin, "listen.admin")?,
    };
    if usize::from(listen.shard_port_base) + shards > 65_536 {
        return Err(src.err(
            0..0,
            "listen.shard_port_base leaves no port for every shard",
        ));
    }
    Ok(listen)
}

/// `[admin]`: the bounds, and the reload token read from `token_file` (which, like a key
/// file, only its owner may read).
pub fn admin(src: &Source, a: &RawAdmin) -> Result<Admin, ConfigError> {
    if a.connections_max == 0 || a.request_bytes_max < 64 || a.request_timeout_ms == 0 {
        return Err(src.err(
            0..0,
            "admin.connections_max and admin.request_timeout_ms must be at least 1, \
             admin.request_bytes_max at least 64",
        ));
    }
    let token = match &a.token_file {
        None => None,
        Some(f) => {
            let path = src.resolve(f.get_ref());
            let bad = |why: String| {
                src.err(
                    f.span(),
                    format!("admin.token_file: {}: {why}", path.display()),
                )
            };
            let text = sluice_protocol::keyring::read_private(&path).map_err(bad)?;
            let token = text.trim();
            if token.is_empty() || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(bad("the token must be one word, not empty".into()));
            }
            Some(token.to_owned())
        }
    };
    Ok(Admin {
        token,
        connections_max: a.connections_max,
        request_bytes_max: a.request_bytes_max,
        request_timeout: std::time::Duration::from_millis(a.request_timeout_ms),
    })
}

/// `[keys]`.
pub fn keys(src: &Source, k: &RawKeys, backend: Backend) -> Result<Keyring, ConfigError> {
    match (&k.file, k.demo) {
        (Some(_), true) => Err(src.err(0..0, "keys: set either `demo = true` or `file`, not both")),
        (Some(f), false) => Keyring::load(&src.resolve(f.get_ref()), backend)
            .map_err(|e| src.err(f.span(), format!("keys.file: {e}"))),
        (None, true) => Ok(sluice_workload::demo_keyring(backend)),
        (None, false) => Err(src.err(0..0, "keys: no keys (set `demo = true` or `file`)")),
    }
}

/// `[streams]`: the output streams in name order, and the dead-letter stream (JSON unless
/// `[streams.dead-letter]` sets its format), each with its retention and network sinks.
pub fn streams(
    src: &Source,
    raw: &BTreeMap<String, Spanned<RawStream>>,
) -> Result<(Vec<StreamSpec>, StreamSpec), ConfigError> {
    let mut streams = Vec::new();
    let mut dead_letter = None;
    for (i, (name, s)) in raw.iter().enumerate() {
        if i + 1 >= crate::route::STREAMS_MAX {
            // The dead-letter stream comes after them all; the pipeline numbers streams in
            // a `u16`.
            return Err(src.err(
                s.span(),
                format!(
                    "streams.{name}: at most {} streams",
                    crate::route::STREAMS_MAX - 1
                ),
            ));
        }
        let r = s.get_ref();
        let format = RecordFormat::from_str(&r.format)
            .map_err(|why| src.err(s.span(), format!("streams.{name}: {why}")))?;
        if !valid_name(name) {
            return Err(src.err(
                s.span(),
                format!("streams.{name}: a stream name is 1-64 of [a-z0-9_-]"),
            ));
        }
        let mut sinks: Vec<SinkSpec> = Vec::new();
        for k in &r.sink {
            let spec = kafka::sink_spec(name, k.get_ref())
                .map_err(|why| src.err(k.span(), format!("streams.{name}.sink: {why}")))?;
            if sinks.iter().any(|o| o.name == spec.name) {
                return Err(src.err(
                    k.span(),
                    format!(
                        "streams.{name}.sink: two sinks named {:?} (give each a `name`)",
                        spec.name
                    ),
                ));
            }
            sinks.push(spec);
        }
        let retention = kafka::retention(r.retain_ms, r.retain_bytes_max, &sinks)
            .map_err(|why| src.err(s.span(), format!("streams.{name}: {why}")))?;
        let spec = StreamSpec {
            name: name.clone(),
            format,
            retention,
            sinks,
        };
        if name == DEAD_LETTER_STREAM {
            dead_letter = Some(spec);
        } else {
            streams.push(spec);
        }
    }
    let dead_letter = dead_letter.unwrap_or_else(|| StreamSpec {
        name: DEAD_LETTER_STREAM.into(),
        format: RecordFormat::Json,
        retention: Retention::default(),
        sinks: Vec::new(),
    });
    Ok((streams, dead_letter))
}

/// A sink's backlog holds at least two segments, so that `drop_oldest` always has a sealed
/// segment to give up before the backlog passes its bound.
pub fn check_backlogs(
    src: &Source,
    streams: &[StreamSpec],
    sinks: &Sinks,
) -> Result<(), ConfigError> {
    for s in streams {
        for k in &s.sinks {
            if k.backlog_bytes_max < 2 * sinks.segment_bytes_max {
                return Err(src.err(
                    0..0,
                    format!(
                        "streams.{}.sink {:?}: backlog_bytes_max {} is below two segments \
                         (2 x sinks.segment_bytes_max = {})",
                        s.name,
                        k.name,
                        k.backlog_bytes_max,
                        2 * sinks.segment_bytes_max
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Whether `name` may name a stream or a sink: 1-64 of `[a-z0-9_-]`.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// `[[route]]`: the rules, compiled against `streams`.
pub fn routes(
    src: &Source,
    raw: &[RawRoute],
    streams: &[StreamSpec],
) -> Result<RouteSet, ConfigError> {
    let unmatched = streams.iter().position(|s| s.name == UNMATCHED_STREAM);
    let mut rules = Vec::with_capacity(raw.len());
    for r in raw {
        let name = r.name.get_ref();
        let mut to = Vec::new();
        for t in r.to.get_ref() {
            let i = streams.iter().position(|s| s.name == *t).ok_or_else(|| {
                src.err(
                    r.to.span(),
                    format!("route {name:?}: no stream {t:?} (declare it under [streams])"),
                )
            })?;
            if !to.contains(&i) {
                to.push(i);
            }
        }
        if let Some(s) = &r.sample
            && !(*s.get_ref() > 0.0 && *s.get_ref() <= 1.0)
        {
            return Err(src.err(
                s.span(),
                format!("route {name:?}: sample must be in (0, 1]"),
            ));
        }
        rules.push(RuleSource {
            name: name.clone(),
            streams: to,
            when: r.when.get_ref().clone(),
            fields: r.fields.get_ref().clone(),
            sample: r.sample.as_ref().map(|s| *s.get_ref()),
        });
    }
    RouteSet::compile(&rules, unmatched).map_err(|e| {
        let r = &raw[e.rule];
        let why = format!("route {:?}: {}", r.name.get_ref(), e.reason);
        match e.part {
            RulePart::Name => src.err(r.name.span(), why),
            RulePart::To => src.err(r.to.span(), why),
            RulePart::Fields => src.err(r.fields.span(), why),
            RulePart::When(at) => src.err_in_string(r.when.span(), at, why),
        }
    })
}

/// `[sinks]`.
pub fn sinks(src: &Source, s: &RawSinks) -> Result<Sinks, ConfigError> {
    let durability = match s.durability.get_ref() {
        RawDurability::Named(n) if n == "none" => Durability::None,
        RawDurability::Named(n) if n == "every_batch" => Durability::EveryBatch,
        RawDurability::Named(n) if n == "interval" => Durability::IntervalUs(INTERVAL_US),
        RawDurability::Interval { interval_us } if *interval_us > 0 => {
            Durability::IntervalUs(*interval_us)
        }
        _ => {
            return Err(src.err(
                s.durability.span(),
                "sinks.durability: \"none\", \"every_batch\" or { interval_us = N } with N > 0",
            ));
        }
    };
    if s.segment_bytes_max < 1 << 20 {
        return Err(src.err(0..0, "sinks.segment_bytes_max must be at least 1 MiB"));
    }
    if !s.prefill_bytes.is_multiple_of(4096) {
        return Err(src.err(0..0, "sinks.prefill_bytes must be a multiple of 4096"));
    }
    Ok(Sinks {
        dir: src.resolve(&s.dir),
        segment_bytes_max: s.segment_bytes_max,
        durability,
        prefill_bytes: s.prefill_bytes,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use std::fmt::Write;

    #[test]
    fn streams_past_the_limit_are_refused_at_the_first_one_over() {
        let base = sluice_workload::fixtures::default_config();
        // The default's 11 streams and these, in name order: the 65,536th is zz65524.
        let mut text = base.clone();
        for i in 0..65_535 {
            write!(text, "\n[streams.zz{i:05}]\nformat = \"json\"\n").unwrap();
        }
        let err = Config::parse(&text, "many.toml", std::path::Path::new(".")).unwrap_err();
        assert!(
            err.reason
                .contains("streams.zz65524: at most 65535 streams"),
            "{err}"
        );
        let line = text.lines().position(|l| l == "[streams.zz65524]").unwrap() + 1;
        assert!((line..=line + 1).contains(&err.line), "{err}");
        // Up to the one before it, they are accepted.
        let fewer = &text[..text.find("\n[streams.zz65524]").unwrap()];
        Config::parse(fewer, "fewer.toml", std::path::Path::new(".")).unwrap();
    }
}
