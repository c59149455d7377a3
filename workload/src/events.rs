//! The standard workloads, seeded and deterministic.
//!
//! Every random choice comes from one ChaCha8 stream seeded by the caller, whose output is fixed
//! across platforms and versions, and from distributions (`rand_distr`'s Zipf and log-normal)
//! pinned by the lock file; those use the platform's `ln`/`exp`/`powf`, so bytes are pinned per
//! platform (`tests/events.rs` pins them for x86_64 Linux). The wall clock enters only through
//! the `ts_ms` the caller passes, so a test that passes a fixed clock gets the same bytes every
//! time.
//!
//! W1 (WORKLOAD.md): one event per envelope, fields drawn as the table there says, padded with a
//! `pad` attribute so that the event's rkyv plaintext is exactly 512 bytes.
//! W2: as W1, but an envelope holds 1 to 8 events (uniform) of one device, and each event is
//! padded to its own size drawn from a log-normal with median 512 bytes and p99 4 KiB, cut at
//! 64 KiB. An event's size is what it archives to alone; the smallest event is about 200 bytes,
//! so smaller draws give the smallest event. Sizes step by 8 bytes (rkyv aligns the event array).
//! W3: W1's events (W3 differs from W1 in its rule set, not its events).
//!
//! Devices and customers: device `k` (Zipf s=0.9 over 1,000,000) belongs to customer `k + 1`,
//! so customer ids follow the same Zipf and a device always reports the same customer.

use std::fmt;
use std::str::FromStr;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, LogNormal, Zipf};
use sluice_protocol::sample::pad_to;
use sluice_protocol::{AlignedBuf, Attr, ClientIp, Event, mix64, partition_key_for_device};

/// W1's plaintext size per event, in bytes.
pub const W1_EVENT_BYTES: usize = 512;
/// W2's largest event, in bytes.
pub const W2_EVENT_BYTES_MAX: usize = 64 << 10;
/// Distinct devices (and customers).
pub const DEVICES: u64 = 1_000_000;
/// Distinct device types, ids 1..=500.
pub const DEVICE_TYPES: u64 = 500;
/// Distinct client /24 prefixes.
pub const IP_PREFIXES: u64 = 100_000;
/// Key ids 1..=8, chosen uniformly.
pub const KEY_IDS: u32 = 8;

/// The 40 event types, most frequent first (Zipf s=1.0 by rank).
pub const EVENT_TYPES: [&str; 40] = [
    "playback.heartbeat",
    "ui.impression",
    "ui.nav",
    "playback.start",
    "playback.stop",
    "ui.row_view",
    "playback.pause",
    "playback.resume",
    "ui.title_view",
    "playback.seek",
    "search.query",
    "ui.click",
    "playback.bitrate_change",
    "app.foreground",
    "app.background",
    "playback.buffering",
    "ui.scroll",
    "app.launch",
    "search.result_click",
    "playback.complete",
    "ui.trailer",
    "auth.refresh",
    "device.network_change",
    "ui.profile_switch",
    "error.network",
    "download.start",
    "download.complete",
    "playback.error",
    "ui.settings",
    "device.wake",
    "device.sleep",
    "search.no_results",
    "auth.login",
    "auth.logout",
    "download.delete",
    "error.decoder",
    "error.drm",
    "download.error",
    "error.app_crash",
    "ui.search",
];

/// The 30 app versions, 5.0.0 to 7.4.1 (uniform).
pub fn app_versions() -> Vec<String> {
    let mut v = Vec::with_capacity(30);
    for major in 5..=7 {
        for minor in 0..=4 {
            for patch in 0..=1 {
                v.push(format!("{major}.{minor}.{patch}"));
            }
        }
    }
    v
}

const NETWORKS: [&str; 3] = ["wifi", "ethernet", "cellular"];
const LOCALES: [&str; 6] = ["en-US", "es-MX", "pt-BR", "fr-FR", "de-DE", "ja-JP"];

/// Which standard workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Workload {
    W1,
    W2,
    W3,
}

impl FromStr for Workload {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "w1" => Ok(Workload::W1),
            "w2" => Ok(Workload::W2),
            "w3" => Ok(Workload::W3),
            other => Err(format!(
                "unknown workload {other:?} (expected w1, w2 or w3)"
            )),
        }
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Workload::W1 => "w1",
            Workload::W2 => "w2",
            Workload::W3 => "w3",
        })
    }
}

/// One device's upload: the events of one envelope and how to seal and route it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    /// Key id to seal with, 1..=8.
    pub key_id: u32,
    /// FNV-1a of the device id (PROTOCOL.md section 3).
    pub partition_key: u64,
    pub events: Vec<Event>,
}

/// A seeded generator of one workload's uploads.
pub struct WorkloadGen {
    workload: Workload,
    rng: ChaCha8Rng,
    next_event_id: u64,
    event_type: Zipf<f64>,
    device_type: Zipf<f64>,
    device: Zipf<f64>,
    prefix: Zipf<f64>,
    event_bytes: LogNormal<f64>,
    versions: Vec<String>,
    /// Reused to measure archived sizes while padding.
    scratch: AlignedBuf,
}

impl WorkloadGen {
    pub fn new(workload: Workload, seed: u64) -> Self {
        // p99 of a log-normal is median · e^(2.3263 σ): σ = ln(4096 / 512) / 2.3263.
        let sigma = (4096f64 / 512.0).ln() / 2.326_347_874;
        WorkloadGen {
            workload,
            rng: ChaCha8Rng::seed_from_u64(seed),
            next_event_id: 1,
            event_type: Zipf::new(EVENT_TYPES.len() as f64, 1.0).expect("valid Zipf"),
            device_type: Zipf::new(DEVICE_TYPES as f64, 1.0).expect("valid Zipf"),
            device: Zipf::new(DEVICES as f64, 0.9).expect("valid Zipf"),
            prefix: Zipf::new(IP_PREFIXES as f64, 1.0).expect("valid Zipf"),
            event_bytes: LogNormal::new((W1_EVENT_BYTES as f64).ln(), sigma).expect("valid"),
            versions: app_versions(),
            scratch: AlignedBuf::with_capacity(W2_EVENT_BYTES_MAX + 1024),
        }
    }

    pub fn workload(&self) -> Workload {
        self.workload
    }

    /// The next upload, its events stamped `ts_ms`.
    pub fn next_upload(&mut self, ts_ms: u64) -> Upload {
        let device = self.rank(self.device) - 1;
        let device_id = device_id(device);
        let key_id = self.rng.random_range(1..=KEY_IDS);
        let count = match self.workload {
            Workload::W1 | Workload::W3 => 1,
            Workload::W2 => self.rng.random_range(1..=8),
        };
        let events = (0..count)
            .map(|_| {
                let size = match self.workload {
                    Workload::W1 | Workload::W3 => W1_EVENT_BYTES,
                    Workload::W2 => {
                        (self.event_bytes.sample(&mut self.rng) as usize).min(W2_EVENT_BYTES_MAX)
                    }
                };
                self.event(device, &device_id, ts_ms, size)
            })
            .collect();
        Upload {
            key_id,
            partition_key: partition_key_for_device(&device_id),
            events,
        }
    }

    fn rank(&mut self, zipf: Zipf<f64>) -> u64 {
        zipf.sample(&mut self.rng) as u64
    }

    fn event(&mut self, device: u64, device_id: &str, ts_ms: u64, size: usize) -> Event {
        let event_id = self.next_event_id;
        self.next_event_id += 1;
        let event_type = EVENT_TYPES[self.rank(self.event_type) as usize - 1];
        let version = self.rng.random_range(0..self.versions.len());
        let prefix = ip_prefix(self.rank(self.prefix) - 1);
        let host: u8 = self.rng.random();
        let mut e = Event {
            event_id,
            ts_ms,
            event_type: event_type.to_owned(),
            app_version: self.versions[version].clone(),
            device_type_id: self.rank(self.device_type) as u32,
            device_id: device_id.to_owned(),
            customer_id: device + 1,
            client_ip: ClientIp::V4([prefix[0], prefix[1], prefix[2], host]),
            session_id: self.rng.random(),
            attrs: vec![
                Attr {
                    key: "net".into(),
                    value: NETWORKS[self.rng.random_range(0..3)].into(),
                },
                Attr {
                    key: "locale".into(),
                    value: LOCALES[self.rng.random_range(0..LOCALES.len())].into(),
                },
                Attr {
                    key: "pad".into(),
                    value: String::new(),
                },
            ],
        };
        pad_to(&mut e, size, &mut self.scratch);
        e
    }
}

/// The 24-hex-digit id of device `k` (a bijection of `k`, so ids are distinct).
pub fn device_id(k: u64) -> String {
    format!("{:016x}{:08x}", mix64(k), mix64(k ^ 0x5eed) as u32)
}

/// The /24 prefix of prefix index `p` (distinct for every p < 2^24).
pub fn ip_prefix(p: u64) -> [u8; 3] {
    let x = (p.wrapping_mul(0x9e37_79b1) & 0xff_ffff) as u32;
    [(x >> 16) as u8, (x >> 8) as u8, x as u8]
}
