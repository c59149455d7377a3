//! Segment writers on glommio DMA files (O_DIRECT through io_uring).
//!
//! A writer appends drained output buffers (whole framed records) to its current segment and
//! rotates to a new one once the segment passes `segment_bytes_max`. glommio's stream writer
//! packs the bytes into aligned DMA buffers and writes full blocks behind us; `sync` writes the
//! partial last block (padded with zeros, overwritten by the next sync) and fdatasyncs.

use std::path::PathBuf;

use futures::AsyncWriteExt;
use glommio::io::{DmaFile, DmaStreamWriter, DmaStreamWriterBuilder};

use super::record::Format;
use super::segment::{Kind, SegmentHeader, next_seq, segment_path};

/// How many DMA buffers a writer may have in flight.
const WRITE_BEHIND_BUFFERS: usize = 4;

/// The writer of one stream on one shard.
pub struct SegmentWriter {
    dir: PathBuf,
    stream: String,
    shard: usize,
    kind: Kind,
    format: Format,
    seq: u32,
    segment_bytes_max: u64,
    buffer_bytes: usize,
    writer: DmaStreamWriter,
    /// Bytes written since the last sync.
    dirty: bool,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl SegmentWriter {
    /// Opens a new segment for `stream` (numbered after any already on disk).
    #[allow(clippy::too_many_arguments)]
    pub async fn open(
        dir: PathBuf,
        stream: String,
        shard: usize,
        kind: Kind,
        format: Format,
        segment_bytes_max: u64,
        buffer_bytes: usize,
    ) -> std::io::Result<SegmentWriter> {
        std::fs::create_dir_all(dir.join(&stream))?;
        let seq = next_seq(&dir, &stream, shard);
        let writer = Self::start(&dir, &stream, shard, kind, format, seq, buffer_bytes).await?;
        Ok(SegmentWriter {
            dir,
            stream,
            shard,
            kind,
            format,
            seq,
            segment_bytes_max,
            buffer_bytes,
            writer,
            dirty: true,
        })
    }

    async fn start(
        dir: &std::path::Path,
        stream: &str,
        shard: usize,
        kind: Kind,
        format: Format,
        seq: u32,
        buffer_bytes: usize,
    ) -> std::io::Result<DmaStreamWriter> {
        let path = segment_path(dir, stream, shard, seq);
        let file = DmaFile::create(&path)
            .await
            .map_err(|e| std::io::Error::other(format!("{}: {e}", path.display())))?;
        let mut w = DmaStreamWriterBuilder::new(file)
            .with_buffer_size(buffer_bytes)
            .with_write_behind(WRITE_BEHIND_BUFFERS)
            .build();
        let header = SegmentHeader {
            kind,
            format,
            shard: shard as u16,
            seq,
            created_ms: now_ms(),
        };
        w.write_all(&header.encode()).await?;
        Ok(w)
    }

    /// Appends whole framed records; rotates first if the segment is full.
    pub async fn append(&mut self, records: &[u8]) -> std::io::Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        if self.writer.current_pos() >= self.segment_bytes_max {
            self.rotate().await?;
        }
        self.writer.write_all(records).await?;
        self.dirty = true;
        Ok(())
    }

    async fn rotate(&mut self) -> std::io::Result<()> {
        self.seq += 1;
        let next = Self::start(
            &self.dir,
            &self.stream,
            self.shard,
            self.kind,
            self.format,
            self.seq,
            self.buffer_bytes,
        )
        .await?;
        let mut old = std::mem::replace(&mut self.writer, next);
        // Closing syncs the old segment and trims its padding.
        old.close().await
    }

    /// Makes everything appended so far durable (write + fdatasync).
    pub async fn sync(&mut self) -> std::io::Result<()> {
        if self.dirty {
            self.writer
                .sync()
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            self.dirty = false;
        }
        Ok(())
    }

    /// Syncs and closes the segment, trimming the padding of its last block.
    pub async fn close(mut self) -> std::io::Result<()> {
        self.writer.close().await
    }

    pub fn stream(&self) -> &str {
        &self.stream
    }
}
