//! One typed error for every way input can be malformed.
//!
//! [`Error::name`] is the stable, machine-readable name used in dead-letter records, metrics
//! labels and `testdata/vectors.json`; [`Error::code`] is the number sent in an ack frame.
//! Frame-level errors (the first group) reject a whole frame; the rest reject one envelope.

/// What was wrong with the bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("truncated: needed {needed} bytes, have {available}")]
    Truncated { needed: usize, available: usize },
    #[error("{what}: {len} {unit}, over the limit of {max}")]
    Oversized {
        /// What holds too many: `frame`, `envelope`, `event`, `string field`, `hello reply`.
        what: &'static str,
        len: usize,
        max: usize,
        /// What `len` and `max` count: `bytes`, `envelopes`, `events`, `attributes`, ...
        unit: &'static str,
    },
    #[error("bad magic {0:02x?}")]
    BadMagic([u8; 4]),
    #[error("unsupported version {0}")]
    BadVersion(u8),
    #[error("unknown frame kind {0}")]
    BadKind(u8),
    #[error("unknown flags {0:#06x}")]
    BadFlags(u16),
    #[error("bad length: {0}")]
    BadLength(&'static str),
    #[error("bad CRC32C: frame says {declared:#010x}, bytes give {actual:#010x}")]
    BadCrc { declared: u32, actual: u32 },
    #[error("{what}: declared {declared}, found {actual}")]
    CountMismatch {
        what: &'static str,
        declared: usize,
        actual: usize,
    },
    #[error("buffer is not 16-byte aligned")]
    Misaligned,
    #[error("unknown payload format {0}")]
    BadFormat(u8),
    #[error("unknown key id {0}")]
    UnknownKey(u32),
    #[error("authentication tag does not verify")]
    BadTag,
    #[error("invalid rkyv archive")]
    InvalidArchive,
    #[error("payload is not valid UTF-8")]
    InvalidUtf8,
    #[error("invalid JSON event: {0}")]
    InvalidJson(String),
    /// A batch frame for a partition the engine does not have.
    #[error("partition {partition} is not below the partition count {partitions}")]
    NoSuchPartition { partition: u32, partitions: u32 },
    /// An envelope whose partition key belongs to another partition than its frame's.
    #[error("the partition key's partition is {of_key}, the frame's is {of_frame}")]
    WrongPartition { of_key: u32, of_frame: u32 },
}

impl Error {
    /// Every error name, in code order.
    pub const NAMES: [&'static str; 17] = [
        "truncated",
        "oversized",
        "bad_magic",
        "bad_version",
        "bad_kind",
        "bad_flags",
        "bad_length",
        "bad_crc",
        "count_mismatch",
        "misaligned",
        "bad_format",
        "unknown_key",
        "bad_tag",
        "invalid_archive",
        "invalid_utf8",
        "invalid_json",
        "bad_partition",
    ];

    /// The stable name of this kind of error.
    pub fn name(&self) -> &'static str {
        Self::NAMES[usize::from(self.code()) - 1]
    }

    /// The stable number of this kind of error (1-based; 0 means "no error" in an ack).
    pub fn code(&self) -> u16 {
        match self {
            Error::Truncated { .. } => 1,
            Error::Oversized { .. } => 2,
            Error::BadMagic(_) => 3,
            Error::BadVersion(_) => 4,
            Error::BadKind(_) => 5,
            Error::BadFlags(_) => 6,
            Error::BadLength(_) => 7,
            Error::BadCrc { .. } => 8,
            Error::CountMismatch { .. } => 9,
            Error::Misaligned => 10,
            Error::BadFormat(_) => 11,
            Error::UnknownKey(_) => 12,
            Error::BadTag => 13,
            Error::InvalidArchive => 14,
            Error::InvalidUtf8 => 15,
            Error::InvalidJson(_) => 16,
            Error::NoSuchPartition { .. } | Error::WrongPartition { .. } => 17,
        }
    }

    /// The error name for an ack's error code, if it is one.
    pub fn name_of_code(code: u16) -> Option<&'static str> {
        Self::NAMES.get(usize::from(code).checked_sub(1)?).copied()
    }
}
