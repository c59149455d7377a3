//! The decoders of untrusted bytes, driven as one: the cargo-fuzz target and the corpus replay
//! test both call [`check_decoders`], so they exercise exactly the same code.

use std::sync::OnceLock;

use crate::frame::{FrameKind, HelloReply, decode_frame_header, decode_hello, frame_crc};
use crate::split::{FrameSplitter, Split};
use crate::{Ack, Backend, Keyring, Limits, Opener, decode_batch};

/// The test-vector keys (`testdata/vectors.json`): key 1 is bytes 0x00..0x1f, key 2 bytes
/// 0xe0..0xff, so inputs grown from the vectors carry authentic envelopes.
pub fn vector_keyring(backend: Backend) -> Keyring {
    let mut k = Keyring::new(backend);
    k.insert(1, std::array::from_fn(|i| i as u8))
        .expect("fresh id");
    k.insert(2, std::array::from_fn(|i| 0xe0 + i as u8))
        .expect("fresh id");
    k
}

/// Runs every decoder over `data`, and again with the CRC of the frame it starts with made to
/// match, so that mutations reach the envelope and payload decoders behind the CRC check.
/// Panics only if a decoder does.
pub fn check_decoders(data: &[u8]) {
    run_decoders(data);
    let len = decode_frame_header(data, &Limits::default()).map_or(0, |h| h.len());
    if len > 0 && len <= data.len() {
        let mut fixed = data.to_vec();
        let crc = frame_crc(&fixed[..len]);
        fixed[28..32].copy_from_slice(&crc.to_le_bytes());
        run_decoders(&fixed);
    }
}

fn run_decoders(data: &[u8]) {
    static KEYS: OnceLock<Keyring> = OnceLock::new();
    let keys = KEYS.get_or_init(|| vector_keyring(Backend::default()));
    let _ = decode_frame_header(data, &Limits::default());
    let mut opener = Opener::new(keys.clone(), Limits::default());
    if let Ok((header, envelopes)) = decode_batch(data, &mut opener) {
        assert_eq!(header.count as usize, envelopes.len());
        assert!(
            envelopes
                .iter()
                .all(|(h, events)| usize::from(h.event_count) == events.len())
        );
    }
    let _ = Ack::decode(data);
    let _ = decode_hello(data);
    let _ = HelloReply::decode(data);
    check_splitter(data);
}

/// Splits `data` as a stream twice, pushed whole and pushed in uneven pieces into a buffer
/// that is compacted between reads, and requires the same frames and the same end from both.
fn check_splitter(data: &[u8]) {
    const KINDS: &[FrameKind] = &[FrameKind::Batch, FrameKind::Hello, FrameKind::Ack];
    let whole = split_all(data, data.len().max(1));
    let pieces = split_all(data, 7);
    assert_eq!(
        whole, pieces,
        "the same stream splits the same however it arrives"
    );

    /// The frames (their bytes) and the final error, reading `data` `step` bytes at a time.
    fn split_all(data: &[u8], step: usize) -> (Vec<Vec<u8>>, Option<crate::Error>) {
        let mut s = FrameSplitter::new(Limits::default(), KINDS);
        let mut buf = vec![0u8; data.len()];
        let mut frames = Vec::new();
        for chunk in data.chunks(step) {
            let at = s.pending().end;
            buf[at..at + chunk.len()].copy_from_slice(chunk);
            s.push(chunk.len());
            loop {
                match s.next(&buf) {
                    Ok(Split::Frame { header, range }) => {
                        assert_eq!(header.len(), range.len());
                        frames.push(buf[range].to_vec());
                    }
                    Ok(Split::Need(n)) => {
                        assert!(n > 0);
                        break;
                    }
                    Err(e) => return (frames, Some(e)),
                }
            }
            s.compact(&mut buf);
        }
        (frames, s.finish(&buf).err())
    }
}
