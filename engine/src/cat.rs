//! `sluice cat`: segment files back as JSON lines, CRCs checked, torn tails reported.

use std::io::Write;
use std::path::Path;

use crate::sink::record::{RecordFormat, rkyv_dead_letter_to_json, rkyv_record_to_json};
use crate::sink::segment::{self, SegmentKind, find_segments, read_segment};

/// What `cat` found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CatSummary {
    pub segments: usize,
    pub records: usize,
    /// `(file, offset, why)` for each segment whose records stop early.
    pub torn: Vec<(String, u64, String)>,
    /// `(file, length)` of each empty segment skipped (left by a crash while it was created).
    pub empty: Vec<(String, u64)>,
}

/// Writes every record of the segments under `paths` to `out`, one JSON object per line.
pub fn cat(paths: &[impl AsRef<Path>], out: &mut impl Write) -> Result<CatSummary, String> {
    let mut summary = CatSummary::default();
    let mut aligned = sluice_protocol::AlignedBuf::new();
    for p in paths {
        let p = p.as_ref();
        let files = find_segments(p).map_err(|e| format!("{}: {e}", p.display()))?;
        for file in files {
            let bytes = std::fs::read(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            if segment::is_empty(&bytes) {
                summary
                    .empty
                    .push((file.display().to_string(), bytes.len() as u64));
                continue;
            }
            let seg = read_segment(&bytes).map_err(|e| format!("{}: {e}", file.display()))?;
            summary.segments += 1;
            for r in &seg.records {
                let line = match seg.header.format {
                    RecordFormat::Json => String::from_utf8_lossy(r.payload).into_owned(),
                    RecordFormat::Rkyv => {
                        aligned.clear();
                        aligned.extend_from_slice(r.payload);
                        let decoded = match seg.header.kind {
                            SegmentKind::Records => rkyv_record_to_json(&aligned),
                            SegmentKind::DeadLetters => rkyv_dead_letter_to_json(&aligned),
                        };
                        decoded.map_err(|e| {
                            format!("{}: record at {}: {e}", file.display(), r.offset)
                        })?
                    }
                };
                writeln!(out, "{line}").map_err(|e| e.to_string())?;
                summary.records += 1;
            }
            if let Some((at, why)) = seg.torn {
                summary.torn.push((file.display().to_string(), at, why));
            }
        }
    }
    Ok(summary)
}
