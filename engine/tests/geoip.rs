//! Geo from the real GeoLite2-City database (fetched by `scripts/fetch-geolite2.sh` when
//! missing): sluice's answers against MaxMind's own Python reader's, and the per-shard cache
//! against the database read directly.

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sluice::enrich::Tables;
use sluice::enrich::mmdb::{Database, GeoText};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The database's path, fetched if missing.
fn database() -> PathBuf {
    let out = Command::new(root().join("scripts/fetch-geolite2.sh"))
        .stderr(Stdio::inherit())
        .output()
        .expect("run scripts/fetch-geolite2.sh");
    assert!(out.status.success(), "scripts/fetch-geolite2.sh failed");
    root().join(String::from_utf8(out.stdout).unwrap().trim())
}

/// Addresses to ask about: random IPv4 (most land in some network), neighbours within /24s
/// (so cached prefixes are asked again), a few fixed ones and random IPv6.
fn addresses(n: usize) -> Vec<IpAddr> {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut out: Vec<IpAddr> = [
        "8.8.8.8",
        "1.1.1.1",
        "81.2.69.160",
        "2001:4860:4860::8888",
        "10.0.0.1",
    ]
    .iter()
    .map(|s| s.parse().unwrap())
    .collect();
    while out.len() < n {
        let a = Ipv4Addr::from(rng.random::<u32>());
        out.push(a.into());
        let [x, y, z, _] = a.octets();
        out.push(Ipv4Addr::new(x, y, z, rng.random()).into());
        if rng.random_range(0..10) == 0 {
            let v6 = Ipv6Addr::from(0x2000_0000u128 << 96 | rng.random::<u128>() >> 4);
            out.push(v6.into());
        }
    }
    out
}

#[test]
fn answers_match_maxminds_reader() {
    let path = database();
    let db = Database::open(&path).unwrap();
    assert_eq!(db.kind(), "GeoLite2-City");
    let ips = addresses(4000);
    let mut py = Command::new("python3")
        .arg(root().join("scripts/geolite2_answers.py"))
        .arg(&path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut stdin = py.stdin.take().unwrap();
    let input: String = ips.iter().map(|ip| format!("{ip}\n")).collect();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = py.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(
        out.status.success(),
        "scripts/geolite2_answers.py failed (is Python's maxminddb installed? scripts/test.sh installs it)"
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut found = 0;
    let mut with_city = 0;
    for (line, ip) in text.lines().zip(&ips) {
        let f: Vec<&str> = line.split('\t').collect();
        assert_eq!(f[0].parse::<IpAddr>().unwrap(), *ip);
        let want = (f[1] == "1").then(|| GeoText {
            country: f[2].to_owned(),
            region: f[3].to_owned(),
            city: f[4].to_owned(),
            asn: f[5].parse().unwrap(),
        });
        let (got, _) = db.lookup(*ip);
        assert_eq!(got, want, "{ip}");
        found += usize::from(want.is_some());
        with_city += usize::from(want.is_some_and(|w| !w.city.is_empty()));
    }
    assert_eq!(text.lines().count(), ips.len());
    // The sample means something: most addresses are found, many with a city.
    assert!(
        found > ips.len() / 2 && with_city > ips.len() / 5,
        "{found} {with_city}"
    );
}

#[test]
fn the_cache_answers_as_the_database_within_its_capacity() {
    let db = Database::open(&database()).unwrap();
    let mut tables = Tables::default();
    tables.use_mmdb(db.clone(), 1024);
    let ips = addresses(6000);
    // Twice over, so later lookups are answered by the cache (and some evicted and refilled).
    let mut e = sluice_protocol::sample::w1_event(1);
    for round in 0..2 {
        for ip in &ips {
            e.client_ip = (*ip).into();
            let row = tables.lookup(&e.view_without_attrs()).geo;
            let want = db.lookup(*ip).0;
            let got = row.map(|r| GeoText {
                country: tables.str(r.country).to_owned(),
                region: tables.str(r.region).to_owned(),
                city: tables.str(r.city).to_owned(),
                asn: r.asn,
            });
            assert_eq!(got, want, "{ip}, round {round}");
        }
    }
    let [(name, geo), ..] = tables.stats();
    assert_eq!(name, "geo");
    assert!(geo.entries <= geo.capacity.unwrap() && geo.capacity.unwrap() == 1024);
    assert!(
        geo.cache.hits > 0 && geo.cache.misses > 0,
        "{:?}",
        geo.cache
    );
    assert_eq!(geo.cache.hits + geo.cache.misses, 2 * ips.len() as u64);
}
