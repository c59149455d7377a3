//! The segment writer on a real glommio executor: records written over many commit rounds
//! (crossing zero-filled regions, prepared segments and rotations) read back whole, in order,
//! and closed segments end at their last record.

use glommio::LocalExecutorBuilder;
use sluice::sink::record::RecordFormat;
use sluice::sink::segment::{
    RECORD_HEADER_BYTES, SegmentKind, append_record, find_segments, read_segment,
};
use sluice::sink::writer::{Durable, SegmentWriter, WriterSpec, sync_round};

fn spec(dir: &std::path::Path, stream: &str, prefill_bytes: u64) -> WriterSpec {
    WriterSpec {
        dir: dir.to_path_buf(),
        stream: stream.to_owned(),
        shard: 0,
        kind: SegmentKind::Records,
        format: RecordFormat::Json,
        segment_bytes_max: 1 << 20,
        prefill_bytes,
    }
}

/// Writes `rounds` rounds to two streams and returns every payload written per stream, and
/// how many appends each kind of round needed.
fn write_rounds(
    dir: &std::path::Path,
    prefill_bytes: u64,
    rounds: usize,
) -> (Vec<Vec<Vec<u8>>>, [usize; 3]) {
    let dir = dir.to_path_buf();
    LocalExecutorBuilder::default()
        .spawn(move || async move {
            let mut writers = vec![
                SegmentWriter::open(spec(&dir, "a", prefill_bytes))
                    .await
                    .unwrap(),
                SegmentWriter::open(spec(&dir, "b", prefill_bytes))
                    .await
                    .unwrap(),
            ];
            let mut sent: Vec<Vec<Vec<u8>>> = vec![Vec::new(), Vec::new()];
            let mut kinds = [0usize; 3];
            let mut x = 0x9e37_79b9_7f4a_7c15u64;
            for round in 0..rounds {
                let mut needs = Vec::new();
                for (i, w) in writers.iter_mut().enumerate() {
                    let mut out = Vec::new();
                    // Stream b is quiet every third round; sizes vary from a few bytes to
                    // several blocks so records straddle block boundaries.
                    let n = if i == 1 && round % 3 == 0 {
                        0
                    } else {
                        1 + round % 7
                    };
                    for _ in 0..n {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let len = 1 + (x % 3000) as usize;
                        let payload: Vec<u8> = (0..len).map(|k| (k as u64 ^ x) as u8).collect();
                        append_record(&mut out, round as u32, 7, |o| o.extend_from_slice(&payload));
                        sent[i].push(payload);
                    }
                    let need = w.append(&out).await.unwrap();
                    kinds[need as usize] += 1;
                    needs.push(need);
                }
                assert!(sync_round(&writers, &needs).await.is_empty());
                if round % 50 == 0 {
                    // Let the fillers run as they would between commit rounds.
                    glommio::timer::sleep(std::time::Duration::from_millis(2)).await;
                }
            }
            for w in writers {
                w.close().await.unwrap();
            }
            (sent, kinds)
        })
        .unwrap()
        .join()
        .unwrap()
}

fn read_back(dir: &std::path::Path, stream: &str) -> (Vec<Vec<u8>>, usize) {
    let files = find_segments(&dir.join(stream)).unwrap();
    let mut got = Vec::new();
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        let seg = read_segment(&bytes).unwrap();
        assert_eq!(seg.torn, None, "{}", f.display());
        let end = seg.records.last().map_or(32, |r| {
            (r.offset as usize + RECORD_HEADER_BYTES + r.payload.len()).next_multiple_of(8)
        });
        assert_eq!(
            bytes.len(),
            end,
            "{} is truncated to its last record",
            f.display()
        );
        got.extend(seg.records.iter().map(|r| r.payload.to_vec()));
    }
    (got, files.len())
}

#[test]
fn rounds_read_back_across_rotations_with_prefill() {
    let dir = tempfile::tempdir().unwrap();
    let (sent, kinds) = write_rounds(dir.path(), 256 << 10, 1500);
    for (i, stream) in ["a", "b"].into_iter().enumerate() {
        let (got, segments) = read_back(dir.path(), stream);
        assert!(
            segments >= 3,
            "stream {stream} rotated ({segments} segments)"
        );
        assert_eq!(got.len(), sent[i].len());
        assert!(
            got == sent[i],
            "stream {stream} reads back what was written"
        );
    }
    let [nothing, flush, sync] = kinds;
    assert!(nothing > 0);
    // Once the fillers are ahead, most rounds need only a device flush.
    assert!(
        flush > sync,
        "flush-only appends {flush}, synced appends {sync}"
    );
}

#[test]
fn rounds_read_back_without_prefill() {
    let dir = tempfile::tempdir().unwrap();
    let (sent, kinds) = write_rounds(dir.path(), 0, 600);
    for (i, stream) in ["a", "b"].into_iter().enumerate() {
        let (got, _) = read_back(dir.path(), stream);
        assert!(
            got == sent[i],
            "stream {stream} reads back what was written"
        );
    }
    assert_eq!(
        kinds[Durable::Flush as usize],
        0,
        "without prefill every file is synced"
    );
}
