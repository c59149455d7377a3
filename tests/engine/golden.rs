//! The pipeline's records, byte for byte: W1 and W3 corpora made with a fixed clock run
//! through `step`, and each stream's output is checked against the digest of what the
//! pipeline wrote before the encoders were rewritten for speed (issue 18): the rkyv and JSON
//! records, their segment framing and CRCs, the `_unmatched` records, and their order.

use std::path::Path;

use sluice::config::Config;
use sluice::pipeline::Pipeline;
use sluice_protocol::{AlignedBuf, EnvelopeHeader, FrameBuilder, PayloadFormat, partition_for};
use sluice_workload::{Workload, WorkloadGen};

/// FNV-1a, 64 bits: a digest that is the same on every build.
fn fnv(bytes: &[u8], mut h: u64) -> u64 {
    for &b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// Frames of `envelopes` envelopes of the workload, every event stamped `ts_ms`, sealed with
/// counter nonces: the same bytes on every run.
fn corpus(workload: Workload, config: &Config, events: usize, envelopes: u32) -> Vec<AlignedBuf> {
    let mut generator = WorkloadGen::new(workload, 5);
    let mut open: Vec<Option<FrameBuilder>> = (0..config.partitions).map(|_| None).collect();
    let mut frames = Vec::new();
    let mut plaintext = AlignedBuf::new();
    let (mut made, mut seq, mut nonce) = (0, 0u64, 0u64);
    while made < events {
        let up = generator.next_upload(1_760_000_000_000);
        made += up.events.len();
        let p = partition_for(up.partition_key, config.partitions);
        let b = open[p as usize].get_or_insert_with(|| {
            seq += 1;
            FrameBuilder::new(seq, p)
        });
        sluice_protocol::event::to_rkyv_payload_in(&up.events, &mut plaintext);
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&nonce.to_le_bytes());
        nonce += 1;
        let header = EnvelopeHeader::new(
            PayloadFormat::Rkyv,
            up.key_id,
            n,
            up.partition_key,
            up.events.len() as u16,
        );
        b.seal(
            config.keyring.get(up.key_id).expect("a demo key"),
            header,
            &plaintext,
        );
        if b.count() == envelopes {
            let mut b = open[p as usize].take().expect("just filled");
            let mut f = AlignedBuf::new();
            f.extend_from_slice(b.finish());
            frames.push(f);
        }
    }
    frames
}

/// Each stream's name and the digest of everything the pipeline wrote to it, each frame
/// stepped at once or (`two_pass`) opened, then routed, as with a lookup service.
fn digests(workload: Workload, unmatched_format: &str, two_pass: bool) -> Vec<(String, u64)> {
    let mut text = sluice_workload::fixtures::builtin_config(workload, 1, "./unused");
    text.push_str(&format!(
        "\n[streams._unmatched]\nformat = \"{unmatched_format}\"\n"
    ));
    let config = Config::parse(&text, "golden.toml", Path::new("."))
        .expect("the config compiles")
        .single_shard();
    let mut pipeline = Pipeline::new(&config, 0, config.tables.clone());
    let mut digest = vec![0xcbf2_9ce4_8422_2325u64; config.streams.len()];
    for mut frame in corpus(workload, &config, 20_000, 64) {
        if two_pass {
            let opened = pipeline
                .open(&mut frame, std::time::Instant::now(), &[])
                .expect("a good frame");
            pipeline.finish(opened);
        } else {
            pipeline.step(&mut frame).expect("a good frame");
        }
        for (d, out) in digest.iter_mut().zip(&mut pipeline.out) {
            *d = fnv(&out.buf, *d);
            out.buf.clear();
        }
    }
    let records: u64 = pipeline.counters.records.iter().sum();
    assert!(records > 40_000, "{records} records");
    config
        .streams
        .iter()
        .map(|s| s.name.clone())
        .zip(digest)
        .collect()
}

#[test]
fn records_are_byte_for_byte_as_before() {
    for two_pass in [false, true] {
        let got: Vec<Vec<(String, u64)>> = [(Workload::W1, "rkyv"), (Workload::W3, "json")]
            .into_iter()
            .map(|(w, format)| digests(w, format, two_pass))
            .collect();
        for (got, want) in got.iter().zip([W1, W3]) {
            let got: Vec<(&str, u64)> = got.iter().map(|(n, d)| (n.as_str(), *d)).collect();
            assert!(
                got == want,
                "the streams' digests differ (two passes: {two_pass}): W1, W3: {got:?}"
            );
        }
    }
}

/// Digests of the pipeline before its encoders were rewritten (commit 7e5d808's encoders).
const W1: &[(&str, u64)] = &[
    ("_unmatched", 18151448290503763467),
    ("ads", 8680190530033642915),
    ("billing", 18060213200023125356),
    ("devices", 13184310368616309268),
    ("errors", 320081541667759052),
    ("geo", 10996633076107573194),
    ("growth", 12243756123037022928),
    ("playback", 5397199361522647750),
    ("qoe", 3416061669698638465),
    ("search", 6483286325352536435),
    ("ui", 8350886320694423449),
    ("dead-letter", 14695981039346656037),
];
const W3: &[(&str, u64)] = &[
    ("_unmatched", 9499165594867280749),
    ("s00", 6029410700343839511),
    ("s01", 12990291168748679376),
    ("s02", 5020897964615536384),
    ("s03", 3972389897730507241),
    ("s04", 15895576384170852602),
    ("s05", 8725228811826394348),
    ("s06", 6861121750493861772),
    ("s07", 10891921734523358390),
    ("s08", 4989213149382629861),
    ("s09", 1740013708543673110),
    ("s10", 10052118360424757589),
    ("s11", 14222627308508183643),
    ("s12", 4162069272919375294),
    ("s13", 4836397516161465010),
    ("s14", 8781668916570259881),
    ("s15", 5627907963593222132),
    ("s16", 15741553258773815303),
    ("s17", 7015685632012306150),
    ("s18", 13467501795960000899),
    ("s19", 4901662224640519207),
    ("s20", 8195483896106793336),
    ("s21", 17510797766767137382),
    ("s22", 17169940325647676715),
    ("s23", 2836904437337571125),
    ("s24", 17858635425348276019),
    ("s25", 13927396805519786695),
    ("s26", 14214658061681655631),
    ("s27", 1732686481198074080),
    ("s28", 4449895884443114658),
    ("s29", 8422329381878717336),
    ("s30", 10816925862881653722),
    ("s31", 8411874831040662229),
    ("s32", 3284812135915619685),
    ("s33", 297527773660142925),
    ("s34", 7891635146337256118),
    ("s35", 5671306204695905367),
    ("s36", 17073741113858483585),
    ("s37", 8181101860720860401),
    ("s38", 6216735725441328156),
    ("s39", 17871008150864843963),
    ("s40", 16705776883629707729),
    ("s41", 5504661622484784185),
    ("s42", 12562159426047075147),
    ("s43", 8907627095963101216),
    ("s44", 8455235903299620075),
    ("s45", 6080131761629116309),
    ("s46", 8727684342280156253),
    ("s47", 8447595609506214380),
    ("s48", 3743162116576298159),
    ("s49", 16229365666224576236),
    ("s50", 10085741321282134491),
    ("s51", 3088104463279035867),
    ("s52", 17700261708043908889),
    ("s53", 1117532123401235260),
    ("s54", 6122472258239059652),
    ("s55", 16944909217221221630),
    ("s56", 16221475728911301133),
    ("s57", 11424383509888247997),
    ("s58", 2219644486684074546),
    ("s59", 15961616348403483414),
    ("s60", 12697481647715446779),
    ("s61", 5282405010469376708),
    ("s62", 15958719975582385572),
    ("s63", 8779607461126739968),
    ("s64", 8705738695339482091),
    ("s65", 4499725311884869566),
    ("s66", 16976647085676405427),
    ("s67", 7191340075500387903),
    ("s68", 13082727741446137143),
    ("s69", 6120211145735127634),
    ("s70", 17582513207952245105),
    ("s71", 3855231956724997247),
    ("s72", 7410372088558490796),
    ("s73", 7603747857765652183),
    ("s74", 15908854832634833185),
    ("s75", 4869535575140021082),
    ("s76", 15467334009955314582),
    ("s77", 4531938029558417584),
    ("s78", 17371973493694377311),
    ("s79", 12145333986353646313),
    ("s80", 18205468551225117409),
    ("s81", 7647905890037741389),
    ("s82", 1410273710424125229),
    ("s83", 10465823000366491982),
    ("s84", 477398454233753241),
    ("s85", 553922767400047751),
    ("s86", 5089147764774493311),
    ("s87", 316101414751766678),
    ("s88", 15700696359528148909),
    ("s89", 15573780708424394510),
    ("s90", 8349739752609060465),
    ("s91", 12704690754390155761),
    ("s92", 5761195874455553184),
    ("s93", 8593296616523064349),
    ("s94", 972866448409056949),
    ("s95", 9805066802484200629),
    ("s96", 12349239726619074343),
    ("s97", 3236832723745801130),
    ("s98", 15900445329247892853),
    ("s99", 3014737211409145630),
    ("dead-letter", 14695981039346656037),
];
