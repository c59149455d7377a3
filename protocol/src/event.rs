//! Events: the rkyv archive clients write, the JSON document clients that cannot write rkyv send
//! instead, and the borrowed [`EventView`] the engine reads either through.
//!
//! An envelope's plaintext is one of:
//! - **rkyv**: an rkyv 0.8 archive (little-endian, aligned, 32-bit relative pointers) of a
//!   `Vec<Event>`, root at the end. It is validated with bytecheck, then read in place.
//! - **JSON**: a UTF-8 JSON object, or an array of objects, with the fields of [`Event`];
//!   `client_ip` is a string, `attrs` an object of strings. Unknown fields are refused.
//!
//! After validation the event counts, attribute counts and string lengths are checked against
//! [`Limits`], so an envelope either yields events the engine can read without further checks,
//! or an error.

use std::borrow::Cow;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rkyv::rancor::Failure;
use rkyv::vec::ArchivedVec;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};

use crate::archived_str::FastStr;
use crate::error::Error;
use crate::limits::Limits;

/// How an envelope's plaintext encodes its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PayloadFormat {
    Rkyv = 1,
    Json = 2,
}

impl PayloadFormat {
    pub fn from_u8(b: u8) -> Result<Self, Error> {
        match b {
            1 => Ok(PayloadFormat::Rkyv),
            2 => Ok(PayloadFormat::Json),
            other => Err(Error::BadFormat(other)),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            PayloadFormat::Rkyv => "rkyv",
            PayloadFormat::Json => "json",
        }
    }
}

/// One client log event (WORKLOAD.md's fields).
#[derive(
    rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Serialize, Debug, Clone, PartialEq, Eq,
)]
#[rkyv(derive(Debug))]
pub struct Event {
    pub event_id: u64,
    pub ts_ms: u64,
    #[rkyv(with = FastStr)]
    pub event_type: String,
    #[rkyv(with = FastStr)]
    pub app_version: String,
    pub device_type_id: u32,
    #[rkyv(with = FastStr)]
    pub device_id: String,
    pub customer_id: u64,
    pub client_ip: ClientIp,
    pub session_id: u64,
    #[serde(serialize_with = "attrs_as_map")]
    pub attrs: Vec<Attr>,
}

// The archived layout PROTOCOL.md (section 5.2) promises to clients in other languages.
const _: () = assert!(size_of::<ArchivedEvent>() == 96 && align_of::<ArchivedEvent>() == 8);
const _: () = assert!(size_of::<ArchivedAttr>() == 16 && align_of::<ArchivedAttr>() == 4);
const _: () = assert!(size_of::<ArchivedClientIp>() == 17);
const _: () = assert!(size_of::<ArchivedVec<ArchivedEvent>>() == 8);
const _: () = assert!(std::mem::offset_of!(ArchivedEvent, customer_id) == 48);
const _: () = assert!(std::mem::offset_of!(ArchivedEvent, client_ip) == 56);
const _: () = assert!(std::mem::offset_of!(ArchivedEvent, attrs) == 88);

/// A client address, IPv4 or IPv6, in network byte order.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum ClientIp {
    V4([u8; 4]),
    V6([u8; 16]),
}

impl From<IpAddr> for ClientIp {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => ClientIp::V4(v4.octets()),
            IpAddr::V6(v6) => ClientIp::V6(v6.octets()),
        }
    }
}

impl From<ClientIp> for IpAddr {
    fn from(ip: ClientIp) -> Self {
        match ip {
            ClientIp::V4(o) => IpAddr::V4(Ipv4Addr::from(o)),
            ClientIp::V6(o) => IpAddr::V6(Ipv6Addr::from(o)),
        }
    }
}

impl Serialize for ClientIp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&IpAddr::from(*self))
    }
}

/// One free-form attribute of an event.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Attr {
    #[rkyv(with = FastStr)]
    pub key: String,
    #[rkyv(with = FastStr)]
    pub value: String,
}

fn attrs_as_map<S: Serializer>(attrs: &[Attr], s: S) -> Result<S::Ok, S::Error> {
    let mut map = s.serialize_map(Some(attrs.len()))?;
    for a in attrs {
        map.serialize_entry(&a.key, &a.value)?;
    }
    map.end()
}

impl Event {
    /// The event as its JSON document (the form [`PayloadFormat::Json`] carries).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("an Event always serializes")
    }

    /// A view of the event's fields, with no attributes (owned attributes are in neither
    /// borrowed form): what routing and enrichment read, for tests and benches.
    pub fn view_without_attrs(&self) -> EventView<'_> {
        EventView {
            event_id: self.event_id,
            ts_ms: self.ts_ms,
            event_type: &self.event_type,
            app_version: &self.app_version,
            device_type_id: self.device_type_id,
            device_id: &self.device_id,
            customer_id: self.customer_id,
            client_ip: self.client_ip.into(),
            session_id: self.session_id,
            attrs: Attrs::Archived(&[]),
        }
    }
}

/// The borrowed view of one event the engine reads, whichever form it arrived in.
#[derive(Debug, Clone, Copy)]
pub struct EventView<'a> {
    pub event_id: u64,
    pub ts_ms: u64,
    pub event_type: &'a str,
    pub app_version: &'a str,
    pub device_type_id: u32,
    pub device_id: &'a str,
    pub customer_id: u64,
    pub client_ip: IpAddr,
    pub session_id: u64,
    pub attrs: Attrs<'a>,
}

/// An event's attributes, read where they lie.
#[derive(Clone, Copy)]
pub enum Attrs<'a> {
    Archived(&'a [ArchivedAttr]),
    Json(&'a [(Cow<'a, str>, Cow<'a, str>)]),
}

impl<'a> Attrs<'a> {
    #[inline]
    pub fn len(&self) -> usize {
        match self {
            Attrs::Archived(a) => a.len(),
            Attrs::Json(a) => a.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The attribute at `i`, as (key, value).
    #[inline]
    pub fn get(&self, i: usize) -> Option<(&'a str, &'a str)> {
        match *self {
            Attrs::Archived(a) => a.get(i).map(|a| (a.key.as_str(), a.value.as_str())),
            Attrs::Json(a) => a.get(i).map(|(k, v)| (k.as_ref(), v.as_ref())),
        }
    }

    /// The value of the first attribute named `key`.
    #[inline]
    pub fn value_of(&self, key: &str) -> Option<&'a str> {
        match *self {
            Attrs::Archived(a) => a
                .iter()
                .find(|x| x.key.as_str() == key)
                .map(|x| x.value.as_str()),
            Attrs::Json(a) => a.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_ref()),
        }
    }

    #[inline]
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, &'a str)> + '_ {
        (0..self.len()).filter_map(move |i| self.get(i))
    }
}

impl fmt::Debug for Attrs<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<'a> EventView<'a> {
    /// Reads an archived event where it lies (no copy of its strings).
    #[inline(always)]
    pub fn from_archived(e: &'a ArchivedEvent) -> Self {
        EventView {
            event_id: e.event_id.to_native(),
            ts_ms: e.ts_ms.to_native(),
            event_type: e.event_type.as_str(),
            app_version: e.app_version.as_str(),
            device_type_id: e.device_type_id.to_native(),
            device_id: e.device_id.as_str(),
            customer_id: e.customer_id.to_native(),
            client_ip: match &e.client_ip {
                ArchivedClientIp::V4(o) => IpAddr::V4(Ipv4Addr::from(*o)),
                ArchivedClientIp::V6(o) => IpAddr::V6(Ipv6Addr::from(*o)),
            },
            session_id: e.session_id.to_native(),
            attrs: Attrs::Archived(e.attrs.as_slice()),
        }
    }

    /// An owned copy, for tests and tools (never on the data path).
    pub fn to_event(&self) -> Event {
        Event {
            event_id: self.event_id,
            ts_ms: self.ts_ms,
            event_type: self.event_type.to_owned(),
            app_version: self.app_version.to_owned(),
            device_type_id: self.device_type_id,
            device_id: self.device_id.to_owned(),
            customer_id: self.customer_id,
            client_ip: self.client_ip.into(),
            session_id: self.session_id,
            attrs: self
                .attrs
                .iter()
                .map(|(k, v)| Attr {
                    key: k.to_owned(),
                    value: v.to_owned(),
                })
                .collect(),
        }
    }
}

/// A JSON event as parsed, borrowing its strings from the plaintext where no escape forces a
/// copy.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonEvent<'a> {
    event_id: u64,
    ts_ms: u64,
    #[serde(borrow)]
    event_type: Cow<'a, str>,
    #[serde(borrow)]
    app_version: Cow<'a, str>,
    device_type_id: u32,
    #[serde(borrow)]
    device_id: Cow<'a, str>,
    customer_id: u64,
    client_ip: IpAddr,
    session_id: u64,
    #[serde(borrow, default)]
    attrs: JsonAttrs<'a>,
}

impl JsonEvent<'_> {
    pub fn view(&self) -> EventView<'_> {
        EventView {
            event_id: self.event_id,
            ts_ms: self.ts_ms,
            event_type: &self.event_type,
            app_version: &self.app_version,
            device_type_id: self.device_type_id,
            device_id: &self.device_id,
            customer_id: self.customer_id,
            client_ip: self.client_ip,
            session_id: self.session_id,
            attrs: Attrs::Json(&self.attrs.0),
        }
    }
}

/// A JSON `attrs` object, in document order.
#[derive(Debug, Default)]
struct JsonAttrs<'a>(Vec<(Cow<'a, str>, Cow<'a, str>)>);

/// A string that borrows from the input when it holds no escapes.
struct CowStr<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for CowStr<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CowStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for JsonAttrs<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = JsonAttrs<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of string attributes")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut m: M) -> Result<Self::Value, M::Error> {
                let mut out = Vec::with_capacity(m.size_hint().unwrap_or(0).min(64));
                while let Some((CowStr(k), CowStr(v))) = m.next_entry()? {
                    out.push((k, v));
                }
                Ok(JsonAttrs(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// The events of one opened envelope.
#[derive(Debug)]
pub enum Payload<'a> {
    /// Validated archived events, read where they lie in the receive buffer.
    Rkyv(&'a [ArchivedEvent]),
    /// Parsed JSON events.
    Json(Vec<JsonEvent<'a>>),
}

impl<'a> Payload<'a> {
    /// Validates `plaintext` as `format` and checks it against `limits` and the envelope's
    /// declared event count.
    pub fn decode(
        format: PayloadFormat,
        plaintext: &'a [u8],
        declared_events: usize,
        limits: &Limits,
    ) -> Result<Self, Error> {
        let payload = match format {
            PayloadFormat::Rkyv => Payload::Rkyv(access_events(plaintext)?),
            PayloadFormat::Json => Payload::Json(parse_json_events(plaintext)?),
        };
        payload.check(declared_events, limits, plaintext.len())?;
        Ok(payload)
    }

    pub fn len(&self) -> usize {
        match self {
            Payload::Rkyv(e) => e.len(),
            Payload::Json(e) => e.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The event at `i`.
    #[inline(always)]
    pub fn get(&self, i: usize) -> Option<EventView<'_>> {
        match self {
            Payload::Rkyv(e) => e.get(i).map(EventView::from_archived),
            Payload::Json(e) => e.get(i).map(JsonEvent::view),
        }
    }

    /// The events in order.
    #[inline]
    pub fn iter(&self) -> Events<'_, 'a> {
        Events {
            payload: self,
            at: 0,
        }
    }

    fn check(
        &self,
        declared_events: usize,
        limits: &Limits,
        plaintext_len: usize,
    ) -> Result<(), Error> {
        if self.len() != declared_events {
            return Err(Error::CountMismatch {
                what: "events in envelope",
                declared: declared_events,
                actual: self.len(),
            });
        }
        if self.len() > limits.events_per_envelope_max {
            return Err(Error::Oversized {
                what: "envelope",
                len: self.len(),
                max: limits.events_per_envelope_max,
                unit: "events",
            });
        }
        // An archived string or attribute list lies inside the plaintext, so a plaintext too
        // small to hold an oversized one needs no walk (a W1 event never does).
        let walk = match self {
            Payload::Rkyv(_) => {
                plaintext_len > limits.field_bytes_max
                    || plaintext_len / size_of::<ArchivedAttr>() > limits.attrs_per_event_max
            }
            Payload::Json(_) => true,
        };
        if walk {
            for e in self.iter() {
                check_event(&e, limits)?;
            }
        }
        Ok(())
    }
}

/// The events of a payload, in order ([`Payload::iter`]). Each event's view is made in the
/// caller's loop: made in a function of its own (a `filter_map` over [`Payload::get`] was
/// not inlined), it came back through memory, and the caller's wide copy of it waited on
/// the narrow stores that wrote it.
pub struct Events<'p, 'a> {
    payload: &'p Payload<'a>,
    at: usize,
}

impl<'p> Iterator for Events<'p, '_> {
    type Item = EventView<'p>;

    #[inline(always)]
    fn next(&mut self) -> Option<EventView<'p>> {
        let view = self.payload.get(self.at)?;
        self.at += 1;
        Some(view)
    }
}

fn check_event(e: &EventView<'_>, limits: &Limits) -> Result<(), Error> {
    if e.attrs.len() > limits.attrs_per_event_max {
        return Err(Error::Oversized {
            what: "event",
            len: e.attrs.len(),
            max: limits.attrs_per_event_max,
            unit: "attributes",
        });
    }
    let field = |len: usize| -> Result<(), Error> {
        if len > limits.field_bytes_max {
            Err(Error::Oversized {
                what: "string field",
                len,
                max: limits.field_bytes_max,
                unit: "bytes",
            })
        } else {
            Ok(())
        }
    };
    field(e.event_type.len())?;
    field(e.app_version.len())?;
    field(e.device_id.len())?;
    for (k, v) in e.attrs.iter() {
        field(k.len())?;
        field(v.len())?;
    }
    Ok(())
}

/// Validates an rkyv payload and returns its events where they lie.
///
/// The buffer must be 8-byte aligned (a plaintext in a 16-byte aligned frame buffer is).
#[inline]
pub fn access_events(plaintext: &[u8]) -> Result<&[ArchivedEvent], Error> {
    if plaintext.as_ptr().align_offset(8) != 0 {
        return Err(Error::Misaligned);
    }
    rkyv::api::low::access::<ArchivedVec<ArchivedEvent>, Failure>(plaintext)
        .map(|v| v.as_slice())
        .map_err(|_| Error::InvalidArchive)
}

fn parse_json_events(plaintext: &[u8]) -> Result<Vec<JsonEvent<'_>>, Error> {
    let text = std::str::from_utf8(plaintext).map_err(|_| Error::InvalidUtf8)?;
    let json = |e: serde_json::Error| Error::InvalidJson(e.to_string());
    if text.trim_start().starts_with('[') {
        serde_json::from_str(text).map_err(json)
    } else {
        serde_json::from_str(text).map(|e| vec![e]).map_err(json)
    }
}

/// Serializes events as the rkyv payload of an envelope.
pub fn to_rkyv_payload(events: &[Event]) -> crate::AlignedBuf {
    let mut out = crate::AlignedBuf::new();
    to_rkyv_payload_in(events, &mut out);
    out
}

/// Serializes events as an rkyv payload into `out` (cleared first), reusing its capacity.
pub fn to_rkyv_payload_in(events: &[Event], out: &mut crate::AlignedBuf) {
    out.clear();
    let buf = std::mem::take(out);
    // `Vec<Event>` and `[Event]` archive alike; serialize the slice through a borrowed Vec view.
    *out = rkyv::api::high::to_bytes_in::<_, rkyv::rancor::Error>(&ArchiveSlice(events), buf)
        .expect("serializing owned events cannot fail");
}

/// Archives a borrowed slice of events exactly as `Vec<Event>` archives.
struct ArchiveSlice<'a>(&'a [Event]);

impl rkyv::Archive for ArchiveSlice<'_> {
    type Archived = ArchivedVec<ArchivedEvent>;
    type Resolver = rkyv::vec::VecResolver;

    fn resolve(&self, resolver: Self::Resolver, out: rkyv::Place<Self::Archived>) {
        ArchivedVec::resolve_from_slice(self.0, resolver, out);
    }
}

impl<S> rkyv::Serialize<S> for ArchiveSlice<'_>
where
    S: rkyv::rancor::Fallible + rkyv::ser::Allocator + rkyv::ser::Writer + ?Sized,
    Event: rkyv::Serialize<S>,
{
    fn serialize(&self, s: &mut S) -> Result<Self::Resolver, S::Error> {
        ArchivedVec::serialize_from_slice(self.0, s)
    }
}

/// Serializes events as the JSON payload of an envelope: one object, or an array of several.
pub fn to_json_payload(events: &[Event]) -> Vec<u8> {
    match events {
        [one] => serde_json::to_vec(one),
        many => serde_json::to_vec(many),
    }
    .expect("an Event always serializes")
}
