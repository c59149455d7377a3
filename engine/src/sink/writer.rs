//! Segment writers on glommio DMA files (O_DIRECT through io_uring), and the commit round that
//! makes their writes durable.
//!
//! A commit round hands each writer the records its stream got since the last round. The writer
//! writes them behind the segment's partial last block in one aligned write (rewriting that
//! block), then the round makes them durable. The records are framed straight into memory that
//! write takes as it is, led by that block's bytes ([`RecordBuf`], [`SegmentWriter::ready_next`]):
//! they are not copied on their way to the device.
//!
//! - An O_DIRECT write that lands on blocks already written and made durable changes no
//!   metadata; it sits in the device's volatile write cache until the next cache flush. One
//!   fdatasync on the same device, issued after the write completed, flushes that cache. So a
//!   round over such blocks costs one fdatasync per device, not one per file (about 0.2 ms
//!   against 4 ms for eleven growing files on the reference VM; see tuning.md).
//! - A write that grows a file changes its size and extents. Making it durable commits the
//!   filesystem journal, which costs milliseconds, so each writer keeps a filler task that
//!   zero-fills its segment `prefill_bytes` ahead of the records and makes that durable once
//!   per chunk, off the commit path. It also prepares the next segment before rotation.
//! - A write past the zero-filled part (the filler fell behind, a fresh segment, prefill off,
//!   a filesystem where the flush argument does not hold) gets an fdatasync of its own file.
//!
//! - A segment retention lets go (of a stream no network sink reads) is kept as a free file
//!   ([`free_path`]), at most one per stream and shard, and the filler makes it the next
//!   segment instead of creating and zero-filling a new one: its blocks were written and made durable in its earlier use, so
//!   writes over them need only a flush, and the device takes each record's bytes once
//!   instead of twice (its zeros, then the records). Records carry their segment's number,
//!   so a reader ends at the first one left from the earlier use (`sink::segment`).
//!
//! Only ext4 and XFS get the one-flush rounds: both overwrite initialized blocks in place and
//! flush the device cache on every fdatasync. Copy-on-write filesystems (btrfs, ZFS) allocate
//! new blocks on every overwrite, so each file there is synced on its own.
//!
//! A closed segment is truncated to its last record; a segment cut short by a crash ends in
//! zeros, which readers take as a clean end.

use std::cell::{Cell, RefCell};
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use glommio::io::{DmaBuffer, DmaFile, OpenOptions};
use glommio::sync::Semaphore;
use glommio::{Task, spawn_local};

use super::buf::RecordBuf;
use super::record::RecordFormat;
use super::segment::{
    SEGMENT_HEADER_BYTES, SegmentHeader, SegmentKind, free_files, free_path, next_seq,
    reseal_records, segment_path,
};

/// The block every O_DIRECT write is aligned to.
const BLOCK: u64 = 4096;
/// The filler's zero writes.
const ZERO_CHUNK: usize = 256 << 10;
/// How long a writer waits before looking again at a zero-fill in flight under its write.
const FILL_POLL: Duration = Duration::from_micros(50);
/// How long a filler whose zero-filling failed waits before it tries again.
const FILL_RETRY: Duration = Duration::from_secs(1);

/// What a write needs before the batches it carries may be acked.
/// Ordered: a later round's need is the strongest of its writes'.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Durable {
    /// Nothing was written.
    Nothing,
    /// Written over zero-filled, durable blocks: a device cache flush suffices.
    Flush,
    /// The file's metadata changed: fdatasync this file.
    Sync,
}

/// Where each stream's segments go and how they are written.
#[derive(Debug, Clone)]
pub struct WriterSpec {
    pub dir: PathBuf,
    pub stream: String,
    pub shard: usize,
    pub kind: SegmentKind,
    pub format: RecordFormat,
    pub segment_bytes_max: u64,
    /// Zero-fill this far ahead of the writer; 0 syncs every file every round.
    pub prefill_bytes: u64,
}

/// A segment created and zero-filled ahead of its use.
struct Prepared {
    file: Rc<DmaFile>,
    seq: u32,
    header: [u8; SEGMENT_HEADER_BYTES],
    zeroed: u64,
}

/// A writer's state, shared with its filler task.
///
/// Offsets in the current segment. Below `zeroed` every block is initialized and its metadata
/// durable. The filler's zero writes cover `[.., filling)`; those below `written` have
/// completed, and the writer waits for the rest before writing over them. The writer reserves
/// `[.., reserved)` before each write, and the filler never writes zeros below that.
struct Lane {
    spec: WriterSpec,
    file: RefCell<Rc<DmaFile>>,
    seq: Cell<u32>,
    /// Bytes of the current segment (header and records).
    end: Cell<u64>,
    zeroed: Cell<u64>,
    written: Cell<u64>,
    filling: Cell<u64>,
    reserved: Cell<u64>,
    next: RefCell<Option<Prepared>>,
    /// The filler is creating the next segment.
    preparing: Cell<bool>,
    /// The segment the filler is writing zeros to, if any.
    busy: Cell<Option<u32>>,
    /// The full segment being truncated and closed after a rotation, if any.
    retiring: Cell<Option<u32>>,
    /// Segments made from free files.
    reused: Cell<u64>,
    /// A sync failed: from then on every round syncs this file on its own.
    broken: Cell<bool>,
    /// Zero-filling fails (a full disk): until it works again, every round syncs this file
    /// on its own.
    fill_failing: Cell<bool>,
    stop: Cell<bool>,
    wake: Semaphore,
}

/// The writer of one stream on one shard.
pub struct SegmentWriter {
    lane: Rc<Lane>,
    /// The current segment's partial last block, and what it will be once the write in
    /// flight is done.
    tail: Vec<u8>,
    next_tail: Vec<u8>,
    /// About the most bytes a write round brought lately: what [`Self::ready_next`] readies
    /// room for.
    round_bytes: usize,
    /// Writes that took the records' memory as it was, and writes that copied them out.
    in_place: u64,
    copied: u64,
    /// The zero-filling task: present exactly when writes over its zeros need only a device
    /// flush (see the module notes).
    filler: Option<Task<()>>,
    /// Truncating and closing the last full segment.
    retiring: Option<Task<()>>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Whether one fdatasync flushes the O_DIRECT overwrites of every file on the device (ext4, XFS).
fn flush_covers_device(dir: &Path) -> io::Result<bool> {
    const EXT4_SUPER_MAGIC: i64 = 0xEF53;
    const XFS_SUPER_MAGIC: i64 = 0x5846_5342;
    let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::other("a path with a NUL byte"))?;
    // SAFETY: `statfs` is a C struct of integers, valid when all zeros.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and outlives the call; the kernel writes only into
    // `st`, which is a valid, exclusively borrowed `statfs`.
    if unsafe { libc::statfs(path.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)]
    let magic = st.f_type as i64;
    Ok(magic == EXT4_SUPER_MAGIC || magic == XFS_SUPER_MAGIC)
}

/// `e` with the segment's path and the errno's name: `PATH: ENOSPC (No space left on
/// device)`, then what the write saw (glommio's own words are long and say less).
fn named(e: io::Error, path: &Path) -> io::Error {
    let text = e.to_string();
    let why = if text.starts_with('E') {
        text
    } else {
        crate::os_error::describe(&e)
    };
    io::Error::new(e.kind(), format!("{}: {why}", path.display()))
}

/// Segment `seq`'s header.
fn header(s: &WriterSpec, seq: u32) -> [u8; SEGMENT_HEADER_BYTES] {
    SegmentHeader {
        version: super::segment::SEGMENT_VERSION,
        kind: s.kind,
        format: s.format,
        shard: s.shard as u16,
        seq,
        created_ms: now_ms(),
    }
    .encode()
}

/// Writes a segment's first block: its header, then zeros.
async fn write_first(file: &DmaFile, header: &[u8; SEGMENT_HEADER_BYTES]) -> io::Result<()> {
    let mut first = file.alloc_dma_buffer(BLOCK as usize);
    first.as_bytes_mut().fill(0);
    first.as_bytes_mut()[..SEGMENT_HEADER_BYTES].copy_from_slice(header);
    write_exact(file, first, 0).await
}

/// Creates segment `seq` and writes its first block: the header, then zeros.
async fn create(s: &WriterSpec, seq: u32) -> io::Result<(Rc<DmaFile>, [u8; SEGMENT_HEADER_BYTES])> {
    let path = segment_path(&s.dir, &s.stream, s.shard, seq);
    let file = OpenOptions::new()
        .create_new(true)
        .read(true)
        .write(true)
        .dma_open(&path)
        .await
        .map_err(|e| named(io::Error::from(e), &path))?;
    crate::failpoint::reach("segment_created");
    let header = header(s, seq);
    if let Err(e) = write_first(&file, &header).await {
        // Made by this call and holding no record: removed, so that the next try creates it
        // afresh.
        let _ = std::fs::remove_file(&path);
        return Err(named(e, &path));
    }
    Ok((Rc::new(file), header))
}

/// Makes free file `path` (`len` bytes) segment `seq`, and says how far its blocks are
/// written and durable. Its first block becomes the new header and zeros, made durable
/// before the file takes the segment's name, so that no crash leaves that name on the earlier
/// segment's header and records; the rename is made durable before any record is written.
async fn reuse(
    s: &WriterSpec,
    path: &Path,
    len: u64,
    seq: u32,
) -> io::Result<(Rc<DmaFile>, [u8; SEGMENT_HEADER_BYTES], u64)> {
    let to = segment_path(&s.dir, &s.stream, s.shard, seq);
    if to.exists() {
        return Err(named(io::ErrorKind::AlreadyExists.into(), &to));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .dma_open(path)
        .await
        .map_err(|e| named(io::Error::from(e), path))?;
    let header = header(s, seq);
    let renamed = Cell::new(false);
    let made = async {
        write_first(&file, &header).await?;
        file.fdatasync().await?;
        crate::failpoint::reach("free_file_headed");
        glommio::io::rename(path, &to).await?;
        renamed.set(true);
        let dir = glommio::io::Directory::open(s.dir.join(&s.stream)).await?;
        dir.sync().await?;
        dir.close().await?;
        Ok::<_, io::Error>(())
    }
    .await;
    if let Err(e) = made {
        let _ = file.close().await;
        // It holds no record yet: the caller removes it and creates the segment afresh.
        if renamed.get() {
            let _ = std::fs::remove_file(&to);
        }
        return Err(named(e, path));
    }
    Ok((Rc::new(file), header, (len - len % BLOCK).max(BLOCK)))
}

impl Lane {
    /// Notes that zero-filling failed (logged once until it works again): until then every
    /// write syncs its own file.
    fn fill_failed(&self, e: &io::Error) {
        if !self.fill_failing.replace(true) {
            let s = &self.spec;
            eprintln!(
                "shard {}: stream {}: zero-filling {} failed: {}; every write syncs its own \
                 file until it works again",
                s.shard,
                s.stream,
                segment_path(&s.dir, &s.stream, s.shard, self.seq.get()).display(),
                crate::os_error::describe(e)
            );
        }
    }

    /// Where the filler's next zeros start.
    fn fill_from(&self) -> u64 {
        self.filling.get().max(self.reserved.get())
    }

    /// The end of the zero-filling of the current segment.
    fn fill_cap(&self) -> u64 {
        self.spec.segment_bytes_max.next_multiple_of(BLOCK)
    }

    fn wants_fill(&self) -> bool {
        let want = self.end.get() + self.spec.prefill_bytes / 2;
        let ahead = self.fill_from() < want.min(self.fill_cap());
        let next = self.next.borrow().is_none()
            && !self.preparing.get()
            && self.end.get() + self.spec.prefill_bytes >= self.spec.segment_bytes_max;
        ahead || next
    }

    /// Zero-fills the current segment ahead of the writer, then prepares the next segment
    /// once the current one nears its end.
    async fn fill_once(&self, zero: &Rc<DmaBuffer>) -> io::Result<()> {
        let file = self.file.borrow().clone();
        let seq = self.seq.get();
        let target = (self.end.get() + self.spec.prefill_bytes)
            .next_multiple_of(BLOCK)
            .min(self.fill_cap());
        let from = self.fill_from();
        if target > from {
            self.written.set(from);
            self.filling.set(target);
            self.busy.set(Some(seq));
            let filled = async {
                write_zeros(&file, zero, from, target, |at| {
                    if self.seq.get() == seq {
                        self.written.set(at);
                    }
                })
                .await?;
                file.fdatasync().await.map_err(io::Error::from)
            }
            .await;
            self.busy.set(None);
            filled?;
            if self.seq.get() == seq {
                self.zeroed.set(self.zeroed.get().max(target));
            }
        }
        let near_end = self.end.get() + self.spec.prefill_bytes >= self.spec.segment_bytes_max;
        if near_end && self.next.borrow().is_none() && !self.preparing.get() {
            self.preparing.set(true);
            let prepared = self.prepare(self.seq.get() + 1, zero).await;
            self.preparing.set(false);
            *self.next.borrow_mut() = Some(prepared?);
        }
        Ok(())
    }

    /// Makes segment `seq` from a free file, or creates it, with its header and written
    /// `prefill_bytes` (at most to its end) and durable: zeros past what a free file held.
    async fn prepare(&self, seq: u32, zero: &Rc<DmaBuffer>) -> io::Result<Prepared> {
        let s = &self.spec;
        // Not the segment being closed after the last rotation, whose truncation may be
        // under way yet.
        let retiring = self
            .retiring
            .get()
            .map(|q| free_path(&s.dir, &s.stream, s.shard, q));
        let free = free_files(&s.dir, &s.stream, s.shard)
            .into_iter()
            .find(|(p, _)| Some(p) != retiring.as_ref());
        let reused = match free {
            Some((path, len)) => match reuse(s, &path, len, seq).await {
                Ok(made) => Some(made),
                Err(e) => {
                    eprintln!(
                        "shard {}: stream {}: reusing {}: {e}; creating segment {seq} instead",
                        s.shard,
                        s.stream,
                        path.display()
                    );
                    let _ = std::fs::remove_file(&path);
                    None
                }
            },
            None => None,
        };
        let (file, header, written) = match reused {
            Some(made) => {
                self.reused.set(self.reused.get() + 1);
                made
            }
            None => {
                let (file, header) = create(s, seq).await?;
                (file, header, BLOCK)
            }
        };
        let zeroed = s
            .prefill_bytes
            .next_multiple_of(BLOCK)
            .clamp(BLOCK, self.fill_cap().max(BLOCK))
            .max(written);
        let filled = async {
            write_zeros(&file, zero, written, zeroed, |_| {}).await?;
            file.fdatasync().await.map_err(io::Error::from)
        }
        .await;
        if let Err(e) = filled {
            // No record was ever written to it: remove it, so that the next try (or the
            // writer's own rotation) creates it afresh.
            let s = &self.spec;
            let _ = std::fs::remove_file(segment_path(&s.dir, &s.stream, s.shard, seq));
            return Err(e);
        }
        Ok(Prepared {
            file,
            seq,
            header,
            zeroed,
        })
    }
}

/// Writes `buf` at `pos`, all of it. A short write (a full disk takes part of one) is
/// followed by one block of zeros where it stopped, so that the error that stopped it is
/// reported with its errno. (Those zeros lie past what was written: a caller's retry writes
/// over them, and a reader takes them as the end.)
async fn write_exact(file: &DmaFile, buf: DmaBuffer, pos: u64) -> io::Result<()> {
    let want = buf.len();
    let wrote = file.write_at(buf, pos).await.map_err(io::Error::from)?;
    if wrote == want {
        return Ok(());
    }
    let short = format!("wrote {wrote} of {want} bytes at offset {pos}");
    if (wrote as u64).is_multiple_of(BLOCK) {
        let mut probe = file.alloc_dma_buffer(BLOCK as usize);
        probe.as_bytes_mut().fill(0);
        if let Err(e) = file.write_at(probe, pos + wrote as u64).await {
            let e = io::Error::from(e);
            return Err(io::Error::new(
                e.kind(),
                format!("{}: {short}", crate::os_error::describe(&e)),
            ));
        }
    }
    Err(io::Error::new(io::ErrorKind::WriteZero, short))
}

/// Writes zeros over `[from, to)`, one chunk at a time, reporting each completed offset.
async fn write_zeros(
    file: &DmaFile,
    zero: &Rc<DmaBuffer>,
    from: u64,
    to: u64,
    mut done: impl FnMut(u64),
) -> io::Result<()> {
    let mut at = from;
    while at < to {
        let n = (to - at).min(ZERO_CHUNK as u64);
        if n == ZERO_CHUNK as u64 {
            let wrote = file
                .write_rc_at(zero.clone(), at)
                .await
                .map_err(io::Error::from)?;
            if wrote as u64 != n {
                return Err(io::Error::new(io::ErrorKind::WriteZero, "short zero write"));
            }
        } else {
            let mut b = file.alloc_dma_buffer(n as usize);
            b.as_bytes_mut().fill(0);
            write_exact(file, b, at).await?;
        }
        at += n;
        done(at);
    }
    Ok(())
}

/// The filler task: runs whenever its writer signals. When zero-filling fails (a full disk),
/// the writer syncs each write's file until it works again, tried at most every
/// `FILL_RETRY`; each change is logged once.
async fn fill(lane: Rc<Lane>, zero: Rc<DmaBuffer>) {
    let s = &lane.spec;
    while lane.wake.acquire(1).await.is_ok() && !lane.stop.get() {
        match lane.fill_once(&zero).await {
            Err(e) => {
                lane.fill_failed(&e);
                glommio::timer::sleep(FILL_RETRY).await;
            }
            Ok(()) => {
                if lane.fill_failing.replace(false) {
                    eprintln!(
                        "shard {}: stream {}: zero-filling works again: rounds are one device \
                         flush again",
                        s.shard, s.stream
                    );
                }
            }
        }
    }
}

impl SegmentWriter {
    /// Opens a new segment for the stream (numbered after any already on disk).
    pub async fn open(spec: WriterSpec) -> io::Result<SegmentWriter> {
        std::fs::create_dir_all(spec.dir.join(&spec.stream))?;
        let flush_only =
            spec.prefill_bytes > 0 && flush_covers_device(&spec.dir.join(&spec.stream))?;
        let seq = next_seq(&spec.dir, &spec.stream, spec.shard);
        let (file, header) = create(&spec, seq).await?;
        let lane = Rc::new(Lane {
            spec,
            file: RefCell::new(file),
            seq: Cell::new(seq),
            end: Cell::new(SEGMENT_HEADER_BYTES as u64),
            zeroed: Cell::new(0),
            written: Cell::new(BLOCK),
            filling: Cell::new(BLOCK),
            reserved: Cell::new(BLOCK),
            next: RefCell::new(None),
            preparing: Cell::new(false),
            busy: Cell::new(None),
            retiring: Cell::new(None),
            reused: Cell::new(0),
            broken: Cell::new(false),
            fill_failing: Cell::new(false),
            stop: Cell::new(false),
            wake: Semaphore::new(0),
        });
        let filler = if flush_only {
            let zero = Rc::new({
                let mut b = lane.file.borrow().alloc_dma_buffer(ZERO_CHUNK);
                b.as_bytes_mut().fill(0);
                b
            });
            // The first zeros before the first records, so that a fresh engine starts with
            // one-flush rounds (or, on a full disk, syncing each write until there is room).
            if let Err(e) = lane.fill_once(&zero).await {
                lane.fill_failed(&e);
                lane.wake.signal(1);
            }
            Some(spawn_local(fill(lane.clone(), zero)))
        } else {
            None
        };
        let mut tail = Vec::with_capacity(BLOCK as usize);
        tail.extend_from_slice(&header);
        Ok(SegmentWriter {
            lane,
            tail,
            next_tail: Vec::with_capacity(BLOCK as usize),
            round_bytes: 0,
            in_place: 0,
            copied: 0,
            filler,
            retiring: None,
        })
    }

    /// Readies `next` for the records framed after `pending`'s, which this writer's next
    /// [`append`](Self::append) takes: memory for about the most bytes a round brought lately
    /// (more grows it, with a copy), led by the bytes the segment's last partial block will
    /// hold once `pending`'s are written. Seals `pending`'s records for the current segment
    /// first, as `append` would, so that the lead is what it writes. (Around a rotation two
    /// rounds' records are copied out: those readied for the full segment, and those readied
    /// while its successor was not known.)
    pub fn ready_next(&mut self, pending: &mut RecordBuf, next: &mut RecordBuf) {
        // The most lately: it forgets a 64th a round (half in about 45 rounds).
        self.round_bytes = pending.len().max(self.round_bytes - self.round_bytes / 64);
        let capacity = self.round_bytes + self.round_bytes / 4 + 2 * BLOCK as usize;
        let lane = &*self.lane;
        let end = lane.end.get();
        if end >= lane.spec.segment_bytes_max {
            next.ready(glommio::allocate_dma_buffer, capacity, 0, None, |_| {});
            return;
        }
        let seq = lane.seq.get();
        reseal_records(pending, seq);
        let new_end = end + pending.len() as u64;
        let keep = (new_end % BLOCK) as usize;
        let from_records = keep.min(pending.len());
        // Records that end in the block the current tail is in: the tail goes in front.
        let from_tail = keep - from_records;
        let (tail, records) = (&self.tail, &pending[pending.len() - from_records..]);
        next.ready(
            glommio::allocate_dma_buffer,
            capacity,
            keep,
            Some((seq, new_end)),
            |lead| {
                lead[..from_tail].copy_from_slice(&tail[tail.len() - from_tail..]);
                lead[from_tail..].copy_from_slice(records);
            },
        );
    }

    /// Writes the framed records `buf` holds at the end of the current segment (rotating
    /// first if it is full) and says what makes them durable. The write takes `buf`'s memory
    /// as it is when its lead is this segment's partial last block ([`ready_next`]
    /// readied it so); it copies the records out otherwise. Either way `buf` is left without
    /// records. On error nothing moved: the segment ends where it did.
    ///
    /// [`ready_next`]: Self::ready_next
    pub async fn append(&mut self, buf: &mut RecordBuf) -> io::Result<Durable> {
        if buf.is_empty() {
            return Ok(Durable::Nothing);
        }
        if self.lane.end.get() >= self.lane.spec.segment_bytes_max {
            self.rotate().await?;
        }
        let lane = &*self.lane;
        let end = lane.end.get();
        let at = end - end % BLOCK;
        debug_assert_eq!(self.tail.len() as u64, end - at);
        let n = self.tail.len() + buf.len();
        // Zeros to the block's end, and at least a zero record length after the last record:
        // past it may lie an earlier use's bytes.
        let size = (n + 4).next_multiple_of(BLOCK as usize);
        let upto = at + size as u64;
        let fast = self.filler.is_some() && !lane.broken.get() && !lane.fill_failing.get();
        let durable = if fast && upto <= lane.zeroed.get() {
            Durable::Flush
        } else {
            // Past the durable zeros: wait out zero writes in flight under this write.
            // Zero writes in flight cover [written, filling).
            while lane.written.get() < lane.filling.get()
                && at < lane.filling.get()
                && upto > lane.written.get()
                && !lane.broken.get()
                && !lane.fill_failing.get()
            {
                glommio::timer::sleep(FILL_POLL).await;
            }
            Durable::Sync
        };
        // The filler never writes zeros under this write, even if it fails.
        lane.reserved.set(lane.reserved.get().max(upto));
        let file = lane.file.borrow().clone();
        let seq = lane.seq.get();
        reseal_records(buf, seq);
        let mut mem = match buf.take_led_by(seq, end, &self.tail, size) {
            Some((mem, len)) => {
                debug_assert_eq!(len, n);
                self.in_place += 1;
                mem
            }
            None => {
                let mut mem = file.alloc_dma_buffer(size);
                let bytes = mem.as_bytes_mut();
                bytes[..self.tail.len()].copy_from_slice(&self.tail);
                bytes[self.tail.len()..n].copy_from_slice(buf);
                buf.clear();
                self.copied += 1;
                mem
            }
        };
        mem.trim_to_size(size);
        let bytes = mem.as_bytes_mut();
        bytes[n..].fill(0);
        let new_end = end + (n - self.tail.len()) as u64;
        let keep = (new_end % BLOCK) as usize;
        // Kept aside (not on this future's stack, which the commit task's join boxes).
        self.next_tail.clear();
        self.next_tail.extend_from_slice(&bytes[n - keep..n]);
        write_exact(&file, mem, at).await.map_err(|e| {
            let spec = &lane.spec;
            named(
                e,
                &segment_path(&spec.dir, &spec.stream, spec.shard, lane.seq.get()),
            )
        })?;
        std::mem::swap(&mut self.tail, &mut self.next_tail);
        lane.end.set(new_end);
        if self.filler.is_some() && lane.wants_fill() {
            lane.wake.signal(1);
        }
        Ok(durable)
    }

    /// Moves to the next segment (prepared by the filler when it kept up) and truncates the
    /// full one to its records in the background.
    async fn rotate(&mut self) -> io::Result<()> {
        let lane = self.lane.clone();
        // The full segment's last writes may wait for a sync round that will look only at the
        // new segment: make them durable now (once per segment).
        let full = lane.file.borrow().clone();
        full.fdatasync().await.map_err(|e| {
            let spec = &lane.spec;
            let path = segment_path(&spec.dir, &spec.stream, spec.shard, lane.seq.get());
            named(io::Error::from(e), &path)
        })?;
        drop(full);
        // The filler may be preparing the next segment: take it once ready. Otherwise create
        // it here, marked as being prepared so that the filler does not create it too.
        while lane.preparing.get() {
            glommio::timer::sleep(FILL_POLL).await;
        }
        let next = match lane.next.take() {
            Some(p) => p,
            None => {
                let seq = lane.seq.get() + 1;
                lane.preparing.set(true);
                let created = create(&lane.spec, seq).await;
                lane.preparing.set(false);
                let (file, header) = created?;
                Prepared {
                    file,
                    seq,
                    header,
                    zeroed: 0,
                }
            }
        };
        let old = lane.file.replace(next.file);
        let old_seq = lane.seq.replace(next.seq);
        let old_end = lane.end.replace(SEGMENT_HEADER_BYTES as u64);
        lane.zeroed.set(next.zeroed);
        lane.written.set(next.zeroed.max(BLOCK));
        lane.filling.set(next.zeroed.max(BLOCK));
        lane.reserved.set(BLOCK);
        self.tail.clear();
        self.tail.extend_from_slice(&next.header);
        if let Some(t) = self.retiring.take() {
            t.await;
        }
        lane.retiring.set(Some(old_seq));
        let retire = async move {
            while lane.busy.get() == Some(old_seq) {
                glommio::timer::sleep(FILL_POLL).await;
            }
            let closed = async {
                old.truncate(old_end).await?;
                old.fdatasync().await?;
                old.close_rc().await
            }
            .await;
            if let Err(e) = closed {
                let s = &lane.spec;
                eprintln!(
                    "shard {}: stream {}: closing segment {old_seq}: {e} (its records are kept)",
                    s.shard, s.stream
                );
            }
            lane.retiring.set(None);
        };
        self.retiring = Some(spawn_local(retire));
        if self.filler.is_some() {
            self.lane.wake.signal(1);
        }
        Ok(())
    }

    /// Stops the filler, removes a prepared segment, and truncates the current segment to its
    /// records, durably.
    pub async fn close(mut self) -> io::Result<()> {
        let lane = self.lane.clone();
        lane.stop.set(true);
        lane.wake.signal(1);
        if let Some(t) = self.filler.take() {
            t.await;
        }
        if let Some(t) = self.retiring.take() {
            t.await;
        }
        if let Some(p) = lane.next.take() {
            let s = &lane.spec;
            let _ = p.file.close_rc().await;
            std::fs::remove_file(segment_path(&s.dir, &s.stream, s.shard, p.seq))?;
        }
        let file = lane.file.borrow().clone();
        file.truncate(lane.end.get())
            .await
            .map_err(io::Error::from)?;
        file.fdatasync().await.map_err(io::Error::from)?;
        drop(lane);
        let lane =
            Rc::try_unwrap(self.lane).map_err(|_| io::Error::other("segment still in use"))?;
        drop(file);
        lane.file
            .into_inner()
            .close_rc()
            .await
            .map(|_| ())
            .map_err(io::Error::from)
    }

    pub fn stream(&self) -> &str {
        &self.lane.spec.stream
    }

    /// The segment the next records will go in: records framed for it are written as they
    /// are, others are sealed again ([`reseal_records`]).
    pub fn sealing_seq(&self) -> u32 {
        let lane = &self.lane;
        lane.seq.get() + u32::from(lane.end.get() >= lane.spec.segment_bytes_max)
    }

    /// How many of its writes took the records' memory as it was, and how many copied them
    /// out ([`append`](Self::append)).
    pub fn appends(&self) -> (u64, u64) {
        (self.in_place, self.copied)
    }

    /// How many of its segments this writer made from free files.
    pub fn reused(&self) -> u64 {
        self.lane.reused.get()
    }

    /// Whether this writer takes free files as its next segments: where it zero-fills ahead.
    /// Elsewhere, retention deletes segments outright.
    pub fn reuses_files(&self) -> bool {
        self.filler.is_some()
    }

    /// Where the records written so far end: the current segment and its length.
    pub fn position(&self) -> (u32, u64) {
        (self.lane.seq.get(), self.lane.end.get())
    }

    fn device(&self) -> (u32, u32) {
        let f = self.lane.file.borrow();
        (f.dev_major(), f.dev_minor())
    }
}

/// Awaits every future and returns their outputs in order. Unlike `join_all` (which, for a
/// few futures, polls every pending one whenever any is woken), each future here is polled
/// only when its own waker fires. That matters with glommio: each poll of a pending file
/// operation keeps one more clone of the waker it was polled with until the operation
/// completes, and a task's waker count is 16 bits. With `join_all`, a writer waiting out a
/// zero-fill in 50 µs sleeps re-polled the other writers' pending writes 20,000 times a
/// second with the commit task's own waker, which overflowed that count during a slow full
/// disk (a panic in glommio's `increment_references`).
pub async fn join_each<F: std::future::Future>(
    futs: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    use futures::StreamExt;
    let mut pending: futures::stream::FuturesUnordered<_> = futs
        .into_iter()
        .enumerate()
        .map(|(i, f)| async move { (i, f.await) })
        .collect();
    let mut out: Vec<Option<F::Output>> = (0..pending.len()).map(|_| None).collect();
    while let Some((i, r)) = pending.next().await {
        out[i] = Some(r);
    }
    out.into_iter()
        .map(|r| r.expect("every future completed"))
        .collect()
}

/// Makes a round's writes durable: fdatasyncs every file whose metadata changed and, per
/// device, one file written over zeros unless a sync on that device already flushes it. All
/// writes have completed (each `append` awaited its write), so each fdatasync issued now
/// flushes them from the device cache. Returns the errors; after one, every writer in the
/// round syncs on its own from then on.
pub async fn sync_round(writers: &[SegmentWriter], needs: &[Durable]) -> Vec<String> {
    let mut targets: Vec<usize> = Vec::new();
    let mut flushed: Vec<(u32, u32)> = Vec::new();
    for (i, n) in needs.iter().enumerate() {
        if *n == Durable::Sync {
            targets.push(i);
            flushed.push(writers[i].device());
        }
    }
    for (i, n) in needs.iter().enumerate() {
        if *n == Durable::Flush && !flushed.contains(&writers[i].device()) {
            targets.push(i);
            flushed.push(writers[i].device());
        }
    }
    let syncs = targets.iter().map(|&i| {
        let file = writers[i].lane.file.borrow().clone();
        async move {
            file.fdatasync()
                .await
                .map_err(|e| format!("stream {}: sync: {e}", writers[i].stream()))
        }
    });
    let errors: Vec<String> = join_each(syncs)
        .await
        .into_iter()
        .filter_map(Result::err)
        .collect();
    if !errors.is_empty() {
        for (w, n) in writers.iter().zip(needs) {
            if *n != Durable::Nothing {
                w.lane.broken.set(true);
            }
        }
    }
    errors
}
