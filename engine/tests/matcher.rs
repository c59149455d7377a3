//! The compiled matcher against the interpreter (its oracle): property tests over random rule
//! sets (every operator, `not`, `and`, `or`, across all fields) and W1 events, some with their
//! enrichment rows missing or a version that is no version, on every SIMD path this CPU runs.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::LazyLock;

use proptest::prelude::*;
use sluice::enrich::Tables;
use sluice::route::compiled::{Matcher, Simd};
use sluice::route::{Ctx, Expr, Field, Lit, Op, RouteSet, RuleSource, Value, parse, version_key};
use sluice_protocol::Event;
use sluice_workload::{Workload, WorkloadGen};

/// The W1 tables, with geo rows that have a city for some prefixes, and for others no city,
/// no region or no ASN (empty cells, 0): "no value" as a source gives it.
static TABLES: LazyLock<Tables> = LazyLock::new(|| {
    use std::fmt::Write as _;
    let mut t = Tables::w1(1);
    let mut csv = String::from("prefix,country,region,asn,city\n");
    for (i, g) in sluice_workload::tables::geo(1).iter().enumerate() {
        let [a, b, c] = g.prefix;
        let city = ["", "Springfield", "Shelbyville", "Ogdenville"][i % 4];
        let region = if i % 7 == 0 { "" } else { &g.region };
        let asn = if i % 5 == 0 { 0 } else { g.asn };
        let _ = writeln!(csv, "{a}.{b}.{c}.0/24,{},{region},{asn},{city}", g.country);
    }
    let path = std::env::temp_dir().join(format!("sluice-matcher-geo-{}.csv", std::process::id()));
    std::fs::write(&path, csv).expect("write the geo table");
    t.load_file("geo", &path).expect("the geo table loads");
    let _ = std::fs::remove_file(&path);
    t
});

/// W1 events to route.
static EVENTS: LazyLock<Vec<Event>> = LazyLock::new(|| {
    let mut g = WorkloadGen::new(Workload::W1, 99);
    (0..300)
        .map(|_| g.next_upload(0).events.remove(0))
        .collect()
});

/// The values each field takes on the events: what literals are drawn from.
static VALUES: LazyLock<Vec<Vec<Lit>>> = LazyLock::new(|| {
    let mut per_field: Vec<Vec<Lit>> = vec![Vec::new(); Field::ALL.len()];
    for e in EVENTS.iter().take(100) {
        let v = e.view_without_attrs();
        let ctx = Ctx {
            event: &v,
            enriched: TABLES.peek(&v),
            tables: &TABLES,
        };
        for (i, f) in Field::ALL.iter().enumerate() {
            let lit = match ctx.get(*f) {
                Value::U64(n) => Lit::U64(n),
                Value::Str(s) => Lit::Str(s.to_owned()),
                Value::Ip(ip) => Lit::Ip(ip),
                Value::Null => continue,
            };
            if !per_field[i].contains(&lit) {
                per_field[i].push(lit);
            }
        }
    }
    per_field
});

fn field() -> impl Strategy<Value = Field> {
    (0..Field::ALL.len()).prop_map(|i| Field::ALL[i])
}

/// A literal for `f`: mostly a value events have, sometimes one near it or none of theirs.
/// Every `app_version` literal is a version.
fn literal(f: Field) -> impl Strategy<Value = Lit> {
    (any::<prop::sample::Index>(), 0u8..10, 0u64..4).prop_map(move |(i, how, d)| {
        let pool = &VALUES[Field::ALL.iter().position(|g| *g == f).expect("a field")];
        let seen = pool[i.index(pool.len())].clone();
        match (seen, how) {
            (Lit::U64(n), 7..) => Lit::U64(n.saturating_add(d).saturating_sub(2)),
            (Lit::Str(s), _) if f == Field::AppVersion => {
                let mut k = version_key(&s).expect("W1 versions parse");
                if how >= 7 {
                    k = (k & !0xffff) | d;
                }
                let s = format!("{}.{}.{}", k >> 32, k >> 16 & 0xffff, k & 0xffff);
                Lit::Version(k, s)
            }
            (Lit::Str(_), 8..) => Lit::Str(format!("none-{d}")),
            (Lit::Ip(_), 8..) => Lit::Ip(IpAddr::V4(Ipv4Addr::new(10, 0, 0, d as u8))),
            (lit, _) => lit,
        }
    })
}

fn leaf() -> impl Strategy<Value = Expr> {
    (field(), 0u8..8).prop_flat_map(|(f, how)| {
        let ordered = f.is_numeric() || f == Field::AppVersion;
        let ops = if ordered {
            vec![Op::Eq, Op::Ne, Op::Lt, Op::Le, Op::Gt, Op::Ge]
        } else {
            vec![Op::Eq, Op::Ne]
        };
        let lits = prop::collection::vec(literal(f), 1..4);
        match how {
            0 => Just(Expr::Exists(f)).boxed(),
            1 => lits.prop_map(move |ls| Expr::In(f, ls)).boxed(),
            2 => lits.prop_map(move |ls| Expr::NotIn(f, ls)).boxed(),
            3 if !f.is_numeric() && f != Field::ClientIp => (literal(f), 0usize..4)
                .prop_map(move |(l, n)| {
                    let (Lit::Str(s) | Lit::Version(_, s)) = l else {
                        unreachable!()
                    };
                    Expr::StartsWith(f, s.chars().take(n).collect())
                })
                .boxed(),
            _ => (prop::sample::select(ops), literal(f))
                .prop_map(move |(op, l)| Expr::Cmp(f, op, l))
                .boxed(),
        }
    })
}

fn condition() -> impl Strategy<Value = Expr> {
    leaf().prop_recursive(3, 12, 3, |inner| {
        prop_oneof![
            inner.clone().prop_map(|x| Expr::Not(Box::new(x))),
            prop::collection::vec(inner.clone(), 2..4).prop_map(Expr::And),
            prop::collection::vec(inner, 2..4).prop_map(Expr::Or),
        ]
    })
}

/// A rule: mostly a conjunction, as route sets are.
fn rule() -> impl Strategy<Value = Expr> {
    prop_oneof![
        3 => prop::collection::vec(condition(), 1..4)
            .prop_map(|xs| if xs.len() == 1 { xs.into_iter().next().unwrap() } else { Expr::And(xs) }),
        1 => Just(Expr::True),
    ]
}

/// An event, perhaps with its device or customer row missing, an address no prefix covers,
/// a version spelt with a leading zero, or a version that is no version.
fn event() -> impl Strategy<Value = Event> {
    (any::<prop::sample::Index>(), 0u8..12).prop_map(|(i, how)| {
        let mut e = EVENTS[i.index(EVENTS.len())].clone();
        match how {
            0 => e.device_type_id = 9_999,
            1 => e.customer_id = 5_000_000,
            2 => e.client_ip = sluice_protocol::ClientIp::V4([255, 255, 255, 1]),
            3 => e.app_version = "6.x".into(),
            4 => e.app_version = "6.1.0".into(),
            // The same version as 6.1.0, spelt otherwise.
            5 => e.app_version = "6.01.0".into(),
            6 => e.app_version = "6.1".into(),
            _ => {}
        }
        e
    })
}

fn compile(whens: &[String]) -> RouteSet {
    let sources: Vec<RuleSource> = whens
        .iter()
        .enumerate()
        .map(|(i, w)| RuleSource {
            name: format!("t{i}"),
            streams: vec![0],
            when: w.clone(),
            fields: vec!["event_id".into()],
            sample: None,
        })
        .collect();
    RouteSet::compile(&sources, None).expect("valid rules")
}

fn check(set: &RouteSet, events: &[Event]) -> Result<usize, TestCaseError> {
    // Each matcher keeps its matches buffer (and its version cache) across the events.
    let mut matchers: Vec<(Matcher, _)> = Simd::available()
        .into_iter()
        .map(|s| {
            let m = Matcher::with_simd(set, &TABLES, s);
            let found = m.matches();
            (m, found)
        })
        .collect();
    let mut hits = 0;
    for e in events {
        let v = e.view_without_attrs();
        let ctx = Ctx {
            event: &v,
            enriched: TABLES.peek(&v),
            tables: &TABLES,
        };
        let want: Vec<bool> = set.rules().iter().map(|r| r.expr.eval(&ctx)).collect();
        hits += want.iter().filter(|w| **w).count();
        for (m, found) in &mut matchers {
            m.matching(&ctx, found);
            let listed: Vec<usize> = found.iter().collect();
            let wanted: Vec<usize> = (0..want.len()).filter(|i| want[*i]).collect();
            prop_assert_eq!(&listed, &wanted, "{:?}", m.simd());
            let mut each = Vec::new();
            found.for_each(|i| each.push(i));
            prop_assert_eq!(&each, &wanted);
            prop_assert_eq!(found.is_empty(), wanted.is_empty());
            for (i, w) in want.iter().enumerate() {
                prop_assert_eq!(
                    found.contains(i),
                    *w,
                    "{:?}: rule {}",
                    m.simd(),
                    set.rules()[i].expr
                );
            }
        }
    }
    Ok(hits)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn compiled_agrees_with_the_interpreter(
        rules in prop::collection::vec(rule(), 1..80),
        events in prop::collection::vec(event(), 1..40),
    ) {
        let whens: Vec<String> = rules.iter().map(Expr::to_string).collect();
        for (e, w) in rules.iter().zip(&whens) {
            // What a rule prints parses back to it.
            prop_assert_eq!(&parse(w).expect("printed rules parse"), e);
        }
        check(&compile(&whens), &events)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// `!=` and `not in` are the negations of `==` and `in` on every event, missing rows and
    /// versions that are no version included; and the matcher agrees with both spellings.
    #[test]
    fn not_equal_is_the_negation_of_equal(
        (f, lits) in field()
            .prop_flat_map(|f| prop::collection::vec(literal(f), 1..3).prop_map(move |l| (f, l))),
        events in prop::collection::vec(event(), 1..40),
    ) {
        let pairs = [
            (Expr::Cmp(f, Op::Ne, lits[0].clone()), Expr::Cmp(f, Op::Eq, lits[0].clone())),
            (Expr::NotIn(f, lits.clone()), Expr::In(f, lits.clone())),
        ];
        let mut whens = Vec::new();
        for e in &events {
            let v = e.view_without_attrs();
            let ctx = Ctx { event: &v, enriched: TABLES.peek(&v), tables: &TABLES };
            for (neg, pos) in &pairs {
                prop_assert_eq!(neg.eval(&ctx), !pos.eval(&ctx), "{} on {:?}", neg, e);
                let spelt = Expr::Not(Box::new(pos.clone()));
                prop_assert_eq!(neg.eval(&ctx), spelt.eval(&ctx));
            }
        }
        for (neg, pos) in pairs {
            whens.push(neg.to_string());
            whens.push(format!("not ({pos})"));
        }
        check(&compile(&whens), &events)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]

    /// Sets of 520 to 700 rules: more than 8 words, so the AVX-512 and AVX2 loops run and
    /// not only their scalar tails.
    #[test]
    fn large_sets_agree_on_every_path(
        rules in prop::collection::vec(rule(), 520..700),
        events in prop::collection::vec(event(), 1..12),
    ) {
        let whens: Vec<String> = rules.iter().map(Expr::to_string).collect();
        check(&compile(&whens), &events)?;
    }
}

#[test]
fn a_generated_set_of_1000_agrees_on_w1_events() {
    let specs = sluice_workload::routes::generated_routes(3, 1000, 10);
    let whens: Vec<String> = specs.iter().map(|r| r.when()).collect();
    let hits = check(&compile(&whens), &EVENTS).unwrap();
    assert!(hits > 300, "the rules match something: {hits}");
}

#[test]
fn the_w1_set_agrees_on_w1_events() {
    let set = sluice::config::Config::embedded_default().unwrap().routes;
    let hits = check(&set, &EVENTS).unwrap();
    // About 3 matches an event (before sampling).
    assert!(hits > 600, "the rules match something: {hits}");
}

/// A shard's tables intern strings after its matcher compiled (a cache fills in a row with a
/// city never seen before); once synced, the matcher places them as the interpreter does.
#[test]
fn strings_interned_after_compiling_are_matched_once_synced() {
    let whens = [
        r#"geo.city == "Zzyzx""#,
        r#"geo.city in ["Zzyzx", "Springfield"]"#,
        r#"geo.city != "Zzyzx""#,
        r#"exists geo.city"#,
        r#"geo.region == "US-ZZ""#,
    ];
    let set = compile(&whens.map(String::from));
    let mut tables = Tables::w1(1);
    let mut m = Matcher::new(&set, &tables);
    let path = std::env::temp_dir().join(format!("sluice-sync-geo-{}.csv", std::process::id()));
    std::fs::write(
        &path,
        "prefix,country,region,asn,city\n10.0.0.0/24,US,US-ZZ,1,Zzyzx\n10.0.1.0/24,US,US-ZY,1,Yreka\n",
    )
    .unwrap();
    tables.load_file("geo", &path).unwrap();
    let _ = std::fs::remove_file(&path);
    m.sync(&tables);
    let mut found = m.matches();
    let mut e = EVENTS[0].clone();
    for (ip, want) in [
        ([10, 0, 0, 9], vec![0, 1, 3, 4]),
        ([10, 0, 1, 9], vec![2, 3]),
        // No row: `!=` holds where `==` does not.
        ([10, 0, 2, 9], vec![2]),
    ] {
        e.client_ip = sluice_protocol::ClientIp::V4(ip);
        let v = e.view_without_attrs();
        let ctx = Ctx {
            event: &v,
            enriched: tables.lookup(&v),
            tables: &tables,
        };
        m.matching(&ctx, &mut found);
        let interpreted: Vec<usize> = (0..whens.len())
            .filter(|&r| set.rules()[r].expr.eval(&ctx))
            .collect();
        assert_eq!(found.iter().collect::<Vec<_>>(), want, "{ip:?}");
        assert_eq!(interpreted, want, "{ip:?}");
    }
}

/// `attrs.NAME` in conditions: the compiled matcher agrees with the interpreter on events
/// with their attributes (W1's `net`, `locale` and an empty `pad`), and a name no event has
/// is missing: `==` false, `!=` and `not exists` true.
#[test]
fn attribute_conditions_agree_with_the_interpreter() {
    use sluice_protocol::EventView;
    use sluice_protocol::event::{access_events, to_rkyv_payload};
    let whens = [
        r#"attrs.net == "wifi""#,
        r#"attrs.net in ["wifi", "cellular"] and attrs.locale != "en-US""#,
        r#"exists attrs.nothere"#,
        r#"attrs.nothere != "x" and not exists attrs.nothere"#,
        r#"attrs.locale starts_with "en""#,
        r#"attrs.net not in ["wifi"] or geo.country == "US""#,
        r#"exists attrs.pad and attrs.pad != "x""#,
        r#"attrs.nothere == "x""#,
    ];
    let set = compile(&whens.map(String::from));
    let archive = to_rkyv_payload(&EVENTS);
    let events = access_events(&archive).expect("valid");
    let mut hits = vec![0usize; whens.len()];
    for simd in Simd::available() {
        let m = Matcher::with_simd(&set, &TABLES, simd);
        let mut found = m.matches();
        for e in events {
            let v = EventView::from_archived(e);
            let ctx = Ctx {
                event: &v,
                enriched: TABLES.peek(&v),
                tables: &TABLES,
            };
            m.matching(&ctx, &mut found);
            for (r, rule) in set.rules().iter().enumerate() {
                let want = rule.expr.eval(&ctx);
                assert_eq!(found.contains(r), want, "{simd:?}: {}", whens[r]);
                hits[r] += usize::from(want);
            }
        }
    }
    let n = Simd::available().len() * events.len();
    assert!(hits[0] > 0 && hits[0] < n, "net is wifi for some: {hits:?}");
    assert_eq!(
        (hits[2], hits[3], hits[6], hits[7]),
        (0, n, n, 0),
        "{hits:?}"
    );
}
