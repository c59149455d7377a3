//! The segment writer on a real glommio executor: records written over many commit rounds
//! (crossing zero-filled regions, prepared segments and rotations) read back whole, in order,
//! and closed segments end at their last record.

use glommio::LocalExecutorBuilder;
use sluice::sink::buf::RecordBuf;
use sluice::sink::record::RecordFormat;
use sluice::sink::segment::{
    RECORD_HEADER_BYTES, SegmentKind, append_record, file_seq, find_segments, free_files,
    free_path, read_segment, segment_path,
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

/// What [`write_rounds`] did: every payload written per stream, how many appends each kind
/// of round needed, and (with `reuse`) how many of each stream's first records went with the
/// segments let go, and how many segments were let go.
struct Written {
    sent: Vec<Vec<Vec<u8>>>,
    kinds: [usize; 3],
    /// Appends that wrote the buffer as it was, and appends that copied the records out.
    appends: (u64, u64),
    gone: Vec<usize>,
    let_go: usize,
    freed: usize,
}

/// Writes `rounds` rounds to two streams. With `reuse`, every 40 rounds each stream's oldest
/// segment is let go as retention does (kept as a free file where none is), and after every
/// round the current segment must read back to exactly where its records end: no record of a
/// reused file's earlier use, no torn tail.
fn write_rounds(dir: &std::path::Path, prefill_bytes: u64, rounds: usize, reuse: bool) -> Written {
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
            // As the commit task does: each stream's records go into a buffer readied by its
            // writer, which then takes it as it is.
            let mut bufs: Vec<(RecordBuf, RecordBuf)> =
                (0..2).map(|_| Default::default()).collect();
            let mut sent: Vec<Vec<Vec<u8>>> = vec![Vec::new(), Vec::new()];
            let mut kinds = [0usize; 3];
            let mut gone = vec![0usize; 2];
            let mut let_go = 0;
            let mut freed = 0;
            let mut x = 0x9e37_79b9_7f4a_7c15u64;
            for round in 0..rounds {
                let mut needs = Vec::new();
                for (i, (w, (next, out))) in writers.iter_mut().zip(&mut bufs).enumerate() {
                    let mut framed = Vec::new();
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
                        // Framed for segment 0: the writer seals them for theirs.
                        append_record(&mut framed, round as u32, 0, 7, |o| {
                            o.extend_from_slice(&payload)
                        });
                        sent[i].push(payload);
                    }
                    next.extend_from_slice(&framed);
                    w.ready_next(next, out);
                    std::mem::swap(next, out);
                    let need = w.append(out).await.unwrap();
                    out.clear();
                    kinds[need as usize] += 1;
                    needs.push(need);
                }
                assert!(sync_round(&writers, &needs).await.is_empty());
                if reuse {
                    for (i, (w, stream)) in writers.iter().zip(["a", "b"]).enumerate() {
                        let (seq, end) = w.position();
                        let path = segment_path(&dir, stream, 0, seq);
                        let bytes = std::fs::read(&path).unwrap();
                        let seg = read_segment(&bytes).unwrap();
                        assert_eq!(seg.torn, None, "{}", path.display());
                        let last = seg.records.last().map_or(32, |r| {
                            r.offset + (RECORD_HEADER_BYTES + r.payload.len()) as u64
                        });
                        assert_eq!(last.next_multiple_of(8), end, "{}", path.display());
                        // The oldest segment goes, unless it is the one just rotated away
                        // from (still being closed) or later.
                        let oldest = find_segments(&dir.join(stream)).unwrap()[0].clone();
                        let name = oldest.file_name().unwrap().to_str().unwrap();
                        let old_seq = file_seq(name, 0, "seg").unwrap();
                        if round % 40 == 39 && old_seq + 1 < seq {
                            let records = read_segment(&std::fs::read(&oldest).unwrap())
                                .unwrap()
                                .records
                                .len();
                            gone[i] += records;
                            let_go += 1;
                            if free_files(&dir, stream, 0).is_empty() {
                                std::fs::rename(&oldest, free_path(&dir, stream, 0, old_seq))
                                    .unwrap();
                                freed += 1;
                            } else {
                                std::fs::remove_file(&oldest).unwrap();
                            }
                        }
                    }
                }
                if round % 50 == 0 {
                    // Let the fillers run as they would between commit rounds.
                    glommio::timer::sleep(std::time::Duration::from_millis(2)).await;
                }
            }
            let mut appends = (0, 0);
            for w in writers {
                let (in_place, copied) = w.appends();
                appends = (appends.0 + in_place, appends.1 + copied);
                w.close().await.unwrap();
            }
            Written {
                appends,
                sent,
                kinds,
                gone,
                let_go,
                freed,
            }
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
    let Written {
        sent,
        kinds,
        appends,
        ..
    } = write_rounds(dir.path(), 256 << 10, 1500, false);
    let mut rotations = 0;
    for (i, stream) in ["a", "b"].into_iter().enumerate() {
        let (got, segments) = read_back(dir.path(), stream);
        assert!(
            segments >= 3,
            "stream {stream} rotated ({segments} segments)"
        );
        rotations += segments - 1;
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
    // Records are copied out only for each stream's first write and the two around each
    // rotation (their buffers were readied before the next segment's start was known): the
    // others' buffers were readied with their segment's partial block.
    let (in_place, copied) = appends;
    assert!(
        copied as usize <= 2 + 2 * rotations
            && in_place as usize >= flush + sync - 2 - 2 * rotations,
        "appends in place {in_place}, copied {copied}, rotations {rotations}"
    );
}

#[test]
fn rounds_read_back_without_prefill() {
    let dir = tempfile::tempdir().unwrap();
    let Written { sent, kinds, .. } = write_rounds(dir.path(), 0, 600, false);
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

#[test]
fn segments_let_go_are_reused_and_read_back_without_their_earlier_records() {
    let dir = tempfile::tempdir().unwrap();
    let w = write_rounds(dir.path(), 256 << 10, 1500, true);
    let mut free_left = 0;
    for (i, stream) in ["a", "b"].into_iter().enumerate() {
        let (got, _) = read_back(dir.path(), stream);
        assert!(
            got == w.sent[i][w.gone[i]..],
            "stream {stream} reads back what was written and kept"
        );
        free_left += free_files(dir.path(), stream, 0).len();
    }
    // Each segment let go while no free file waited became one; the writers took all but
    // those left at the end.
    assert!(w.let_go >= 8, "{} segments let go", w.let_go);
    assert!(
        w.freed - free_left >= 4,
        "{} free files, {free_left} left",
        w.freed
    );
    let [_, flush, sync] = w.kinds;
    assert!(
        flush > sync,
        "flush-only appends {flush}, synced appends {sync}"
    );
}
