//! The fields a rule reads, their values, and an event's context (the event and its
//! enrichment rows) that yields them.

use std::net::IpAddr;

use sluice_protocol::EventView;

use crate::enrich::{CustomerRow, DeviceRow, Enriched, GeoRow, Sym, Tables};

/// A field of an enriched event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    EventId,
    TsMs,
    EventType,
    AppVersion,
    DeviceTypeId,
    DeviceId,
    CustomerId,
    ClientIp,
    SessionId,
    GeoCountry,
    GeoRegion,
    GeoCity,
    GeoAsn,
    DeviceBrand,
    DeviceModel,
    DevicePlatform,
    DeviceOs,
    CustomerPlan,
    CustomerSignupCountry,
    CustomerProfiles,
    /// A client attribute, `attrs.NAME` (the whole name is kept: see [`Field::attr`]): the
    /// value of the event's first attribute with key `NAME`, missing when it has none.
    Attr(&'static str),
}

impl Field {
    pub const ALL: [Field; 20] = [
        Field::EventId,
        Field::TsMs,
        Field::EventType,
        Field::AppVersion,
        Field::DeviceTypeId,
        Field::DeviceId,
        Field::CustomerId,
        Field::ClientIp,
        Field::SessionId,
        Field::GeoCountry,
        Field::GeoRegion,
        Field::GeoCity,
        Field::GeoAsn,
        Field::DeviceBrand,
        Field::DeviceModel,
        Field::DevicePlatform,
        Field::DeviceOs,
        Field::CustomerPlan,
        Field::CustomerSignupCountry,
        Field::CustomerProfiles,
    ];

    /// The field's place in [`Field::ALL`]; `None` for an attribute.
    #[inline]
    pub fn index(self) -> Option<usize> {
        Some(match self {
            Field::EventId => 0,
            Field::TsMs => 1,
            Field::EventType => 2,
            Field::AppVersion => 3,
            Field::DeviceTypeId => 4,
            Field::DeviceId => 5,
            Field::CustomerId => 6,
            Field::ClientIp => 7,
            Field::SessionId => 8,
            Field::GeoCountry => 9,
            Field::GeoRegion => 10,
            Field::GeoCity => 11,
            Field::GeoAsn => 12,
            Field::DeviceBrand => 13,
            Field::DeviceModel => 14,
            Field::DevicePlatform => 15,
            Field::DeviceOs => 16,
            Field::CustomerPlan => 17,
            Field::CustomerSignupCountry => 18,
            Field::CustomerProfiles => 19,
            Field::Attr(_) => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Field::EventId => "event_id",
            Field::TsMs => "ts_ms",
            Field::EventType => "event_type",
            Field::AppVersion => "app_version",
            Field::DeviceTypeId => "device_type_id",
            Field::DeviceId => "device_id",
            Field::CustomerId => "customer_id",
            Field::ClientIp => "client_ip",
            Field::SessionId => "session_id",
            Field::GeoCountry => "geo.country",
            Field::GeoRegion => "geo.region",
            Field::GeoCity => "geo.city",
            Field::GeoAsn => "geo.asn",
            Field::DeviceBrand => "device.brand",
            Field::DeviceModel => "device.model",
            Field::DevicePlatform => "device.platform",
            Field::DeviceOs => "device.os",
            Field::CustomerPlan => "customer.plan",
            Field::CustomerSignupCountry => "customer.signup_country",
            Field::CustomerProfiles => "customer.profiles",
            Field::Attr(name) => name,
        }
    }

    pub fn from_name(name: &str) -> Option<Field> {
        match name.strip_prefix(ATTR_PREFIX) {
            Some(key) if !key.is_empty() => Some(Field::attr(name)),
            Some(_) => None,
            None => Field::ALL.into_iter().find(|f| f.name() == name),
        }
    }

    /// The field `attrs.NAME` for `name` (prefix included). Each distinct name is stored once
    /// for the life of the process, so that fields stay `Copy` and compare cheaply; configs
    /// name a handful, and a reload that names them again stores nothing new.
    pub(super) fn attr(name: &str) -> Field {
        static NAMES: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());
        let mut names = NAMES.lock().unwrap_or_else(|e| e.into_inner());
        let stored = match names.iter().find(|n| **n == name) {
            Some(n) => *n,
            None => {
                let n: &'static str = Box::leak(name.into());
                names.push(n);
                n
            }
        };
        Field::Attr(stored)
    }

    /// What kind of value the field holds, in words.
    pub fn kind(self) -> &'static str {
        if self.is_numeric() {
            "number"
        } else if self == Field::ClientIp {
            "IP address"
        } else if self == Field::AppVersion {
            "version string"
        } else {
            "string"
        }
    }

    pub fn is_numeric(self) -> bool {
        matches!(
            self,
            Field::EventId
                | Field::TsMs
                | Field::DeviceTypeId
                | Field::CustomerId
                | Field::SessionId
                | Field::GeoAsn
                | Field::CustomerProfiles
        )
    }
}

/// Most fields one rule projects.
pub const FIELDS_PER_RULE_MAX: usize = 64;

/// The most distinct fields the rules of a route set project between them (the pipeline
/// numbers each twice in a `u16`).
pub const PROJECTED_FIELDS_MAX: usize = 32_767;

/// Streams a rule may write to are those numbered under this (the pipeline keeps a rule's
/// streams as `u16`s).
pub const STREAMS_MAX: usize = 1 << 16;

/// How a client attribute's field name starts.
pub const ATTR_PREFIX: &str = "attrs.";

/// A field's value in one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    U64(u64),
    Str(&'a str),
    Ip(IpAddr),
    /// The enrichment row is missing.
    Null,
}

/// One event with the rows it joined to: what rules read.
#[derive(Debug, Clone, Copy)]
pub struct Ctx<'e, 't> {
    pub event: &'e EventView<'e>,
    pub enriched: Enriched,
    pub tables: &'t Tables,
}

impl<'e, 't> Ctx<'e, 't>
where
    't: 'e,
{
    #[inline]
    pub fn get(&self, f: Field) -> Value<'e> {
        self.get_inline(f)
    }

    /// The JSON of field `f`'s value, where it is a table's string (interned, its JSON made
    /// once); `None` for other fields and for a missing value.
    #[inline]
    pub fn table_json(&self, f: Field) -> Option<&'e [u8]> {
        let r = &self.enriched;
        let sym = match f {
            Field::GeoCountry => r.geo.map(|g| g.country),
            Field::GeoRegion => r.geo.map(|g| g.region),
            Field::GeoCity => r.geo.map(|g| g.city),
            Field::DeviceBrand => r.device.map(|d| d.brand),
            Field::DeviceModel => r.device.map(|d| d.model),
            Field::DevicePlatform => r.device.map(|d| d.platform),
            Field::DeviceOs => r.device.map(|d| d.os),
            Field::CustomerPlan => r.customer.map(|c| c.plan),
            Field::CustomerSignupCountry => r.customer.map(|c| c.signup_country),
            _ => None,
        }?;
        (sym != Sym::NONE).then(|| self.tables.json(sym))
    }

    /// Hands `put` the value of every field of [`Field::ALL`], as [`Ctx::get`] gives it, in
    /// one straight run over the event and its rows (for an event whose records project
    /// most of them: reading each through `get` takes a dispatch on the field).
    #[inline(always)]
    pub fn each_value(&self, mut put: impl FnMut(Field, Value<'e>)) {
        let e = self.event;
        let t = self.tables;
        let r = &self.enriched;
        let text = |s: Sym| {
            if s != Sym::NONE {
                Value::Str(t.str(s))
            } else {
                Value::Null
            }
        };
        let num = |n: Option<u64>| n.map_or(Value::Null, Value::U64);
        put(Field::EventId, Value::U64(e.event_id));
        put(Field::TsMs, Value::U64(e.ts_ms));
        put(Field::EventType, Value::Str(e.event_type));
        put(Field::AppVersion, Value::Str(e.app_version));
        put(Field::DeviceTypeId, Value::U64(u64::from(e.device_type_id)));
        put(Field::DeviceId, Value::Str(e.device_id));
        put(Field::CustomerId, Value::U64(e.customer_id));
        put(Field::ClientIp, Value::Ip(e.client_ip));
        put(Field::SessionId, Value::U64(e.session_id));
        let geo = r.geo.unwrap_or(GeoRow::NONE);
        put(Field::GeoCountry, text(geo.country));
        put(Field::GeoRegion, text(geo.region));
        put(Field::GeoCity, text(geo.city));
        put(
            Field::GeoAsn,
            num((geo.asn != 0).then_some(u64::from(geo.asn))),
        );
        let device = r.device.unwrap_or(DeviceRow::NONE);
        put(Field::DeviceBrand, text(device.brand));
        put(Field::DeviceModel, text(device.model));
        put(Field::DevicePlatform, text(device.platform));
        put(Field::DeviceOs, text(device.os));
        let customer = r.customer.unwrap_or(CustomerRow::NONE);
        put(Field::CustomerPlan, text(customer.plan));
        put(Field::CustomerSignupCountry, text(customer.signup_country));
        put(
            Field::CustomerProfiles,
            num(customer.profiles.map(u64::from)),
        );
    }

    /// [`Ctx::get`], inlined where the caller takes the value apart at once (so that it
    /// need not pass through memory).
    #[inline(always)]
    pub fn get_inline(&self, f: Field) -> Value<'e> {
        let e = self.event;
        let t = self.tables;
        let r = &self.enriched;
        // A missing row, or the empty string (a source without the value), is no value.
        let text = |s: Option<Sym>| match s {
            Some(s) if s != Sym::NONE => Value::Str(t.str(s)),
            _ => Value::Null,
        };
        match f {
            Field::EventId => Value::U64(e.event_id),
            Field::TsMs => Value::U64(e.ts_ms),
            Field::EventType => Value::Str(e.event_type),
            Field::AppVersion => Value::Str(e.app_version),
            Field::DeviceTypeId => Value::U64(u64::from(e.device_type_id)),
            Field::DeviceId => Value::Str(e.device_id),
            Field::CustomerId => Value::U64(e.customer_id),
            Field::ClientIp => Value::Ip(e.client_ip),
            Field::SessionId => Value::U64(e.session_id),
            Field::GeoCountry => text(r.geo.map(|g| g.country)),
            Field::GeoRegion => text(r.geo.map(|g| g.region)),
            Field::GeoCity => text(r.geo.map(|g| g.city)),
            Field::GeoAsn => match r.geo {
                Some(g) if g.asn != 0 => Value::U64(u64::from(g.asn)),
                _ => Value::Null,
            },
            Field::DeviceBrand => text(r.device.map(|d| d.brand)),
            Field::DeviceModel => text(r.device.map(|d| d.model)),
            Field::DevicePlatform => text(r.device.map(|d| d.platform)),
            Field::DeviceOs => text(r.device.map(|d| d.os)),
            Field::CustomerPlan => text(r.customer.map(|c| c.plan)),
            Field::CustomerSignupCountry => text(r.customer.map(|c| c.signup_country)),
            Field::CustomerProfiles => match r.customer.and_then(|c| c.profiles) {
                Some(p) => Value::U64(u64::from(p)),
                None => Value::Null,
            },
            Field::Attr(name) => e
                .attrs
                .value_of(&name[ATTR_PREFIX.len()..])
                .map_or(Value::Null, Value::Str),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `each_value` hands every field what `get` gives: for W1 events joined to their rows,
    /// and for the same events with no rows.
    #[test]
    fn each_value_gives_what_get_gives() {
        use sluice_workload::{Workload, WorkloadGen};
        let mut tables = Tables::w1(1);
        let mut generator = WorkloadGen::new(Workload::W1, 1);
        let events: Vec<_> = (0..100)
            .flat_map(|_| generator.next_upload(1).events)
            .collect();
        for e in &events {
            let view = e.view_without_attrs();
            let joined = tables.lookup(&view);
            assert!(joined.geo.is_some() && joined.device.is_some() && joined.customer.is_some());
            for enriched in [joined, Enriched::default()] {
                let ctx = Ctx {
                    event: &view,
                    enriched,
                    tables: &tables,
                };
                let mut seen = Vec::new();
                ctx.each_value(|f, v| {
                    assert_eq!(v, ctx.get(f), "{f:?}");
                    seen.push(f);
                });
                assert_eq!(seen, Field::ALL, "every field once, in order");
            }
        }
    }

    #[test]
    fn indexes_are_places_in_all() {
        for (i, f) in Field::ALL.iter().enumerate() {
            assert_eq!(f.index(), Some(i), "{f:?}");
        }
        assert_eq!(Field::attr("attrs.x").index(), None);
    }
}
