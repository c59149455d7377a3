//! Named limits, with their units. Each is a protocol maximum; [`Limits`] carries the values a
//! receiver enforces, which a deployment may lower (never raise past these maxima).

/// Largest frame, header included, in bytes.
pub const FRAME_BYTES_MAX: usize = 4 << 20;
/// Largest envelope, header, tag and padding included, in bytes.
pub const ENVELOPE_BYTES_MAX: usize = 1 << 20;
/// Most envelopes in one batch frame.
pub const ENVELOPES_PER_FRAME_MAX: usize = 65_535;
/// Most events in one envelope.
pub const EVENTS_PER_ENVELOPE_MAX: usize = 64;
/// Most attributes in one event.
pub const ATTRS_PER_EVENT_MAX: usize = 64;
/// Longest string field (event type, version, device id, attribute key or value), in bytes.
pub const FIELD_BYTES_MAX: usize = 16 << 10;
/// Most partitions an engine may have.
pub const PARTITIONS_MAX: u32 = 65_536;
/// Most shards a hello reply may list.
pub const SHARDS_MAX: usize = 4_096;

/// The limits a receiver enforces. `Limits::default()` is the protocol maximum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub frame_bytes_max: usize,
    pub envelope_bytes_max: usize,
    pub envelopes_per_frame_max: usize,
    pub events_per_envelope_max: usize,
    pub attrs_per_event_max: usize,
    pub field_bytes_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            frame_bytes_max: FRAME_BYTES_MAX,
            envelope_bytes_max: ENVELOPE_BYTES_MAX,
            envelopes_per_frame_max: ENVELOPES_PER_FRAME_MAX,
            events_per_envelope_max: EVENTS_PER_ENVELOPE_MAX,
            attrs_per_event_max: ATTRS_PER_EVENT_MAX,
            field_bytes_max: FIELD_BYTES_MAX,
        }
    }
}

impl Limits {
    /// Clamps every limit to its protocol maximum, so a configuration can only tighten them.
    pub fn clamped(self) -> Self {
        Limits {
            frame_bytes_max: self.frame_bytes_max.min(FRAME_BYTES_MAX),
            envelope_bytes_max: self.envelope_bytes_max.min(ENVELOPE_BYTES_MAX),
            envelopes_per_frame_max: self.envelopes_per_frame_max.min(ENVELOPES_PER_FRAME_MAX),
            events_per_envelope_max: self.events_per_envelope_max.min(EVENTS_PER_ENVELOPE_MAX),
            attrs_per_event_max: self.attrs_per_event_max.min(ATTRS_PER_EVENT_MAX),
            field_bytes_max: self.field_bytes_max.min(FIELD_BYTES_MAX),
        }
    }
}
