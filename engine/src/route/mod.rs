//! Routing: which streams an enriched event goes to, and what of it.
//!
//! A rule has a condition (`when`), a stream, the fields it projects and an optional sample
//! fraction. Conditions are a small language over event and enrichment fields:
//!
//! ```text
//! expr  := and ("or" and)*
//! and   := unary ("and" unary)*
//! unary := "not" unary | "(" expr ")" | "true" | "exists" field
//!        | field op literal | field ["not"] "in" "[" literal ("," literal)* "]"
//!        | field "starts_with" string
//! op    := "==" | "!=" | ">=" | ">" | "<=" | "<"
//! ```
//!
//! A field is an event field (`event_id`, `event_type`, ...), an enrichment field (`geo.*`,
//! `device.*`, `customer.*`) or a client attribute, `attrs.NAME`: a string, the value of the
//! event's first attribute whose key is NAME, missing when it has none. The compiled matcher
//! reads attributes as it reads the other event strings (a probe of the slot's literals).
//!
//! Literals are double-quoted strings or unsigned integers, checked against the field's type
//! when the rule compiles. Numbers compare numerically; strings and `client_ip` take `==`,
//! `!=`, `in`, `not in`, and strings `starts_with` (`<`, `<=`, `>`, `>=` take only numbers
//! and versions).
//!
//! `app_version` is a version: three decimal numbers joined by dots, `MAJOR.MINOR.PATCH`,
//! each 0 to 65535 in 1 to 5 digits ([`version_key`]). Versions compare part by part as
//! numbers, so `"6.10.0" > "6.9.9"` and `"6.01.0" == "6.1.0"`. Every literal compared with
//! `app_version` (by `==`, `!=`, `in`, `not in` and the orderings) must be a version, or
//! the rule is refused. An event whose `app_version` is no version (`"6.x"`, `"6.1"`) has
//! no version: it compares as a missing value. `starts_with` reads `app_version` as text.
//!
//! A missing value (an enrichment row that is not there, an empty cell, an `app_version`
//! that is no version) equals no literal: `==`, `in`, `starts_with` and the orderings are
//! false on it, and `!=` and `not in`, their negations, are true. `not` is plain negation,
//! so `f != x` and `not (f == x)` are one condition. `exists f` tells whether the value is
//! there; to leave missing rows out, say so: `exists customer.plan and customer.plan !=
//! "basic"`. This is the plain interpreter: the compiled matcher ([`compiled`]) is tested
//! against it.
//!
//! Sampling keeps a match when the SplitMix64 finalizer of `event_id ^ FNV-1a(rule name)`,
//! modulo 1,000,000, is below `sample · 1,000,000`: the decision depends only on the event
//! and the rule, so a redelivered event is sampled alike.

use std::fmt;
use std::net::IpAddr;

use sluice_protocol::EventView;

use crate::enrich::{Enriched, Sym, Tables};

pub mod compiled;
mod strtab;

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
    fn attr(name: &str) -> Field {
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Ge,
    Gt,
    Le,
    Lt,
}

impl Op {
    fn symbol(self) -> &'static str {
        match self {
            Op::Eq => "==",
            Op::Ne => "!=",
            Op::Ge => ">=",
            Op::Gt => ">",
            Op::Le => "<=",
            Op::Lt => "<",
        }
    }

    fn holds(self, ord: std::cmp::Ordering) -> bool {
        use std::cmp::Ordering::*;
        match self {
            Op::Eq => ord == Equal,
            Op::Ne => ord != Equal,
            Op::Ge => ord != Less,
            Op::Gt => ord == Greater,
            Op::Le => ord != Greater,
            Op::Lt => ord == Less,
        }
    }
}

/// A literal in a condition, checked against its field's type at compile time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lit {
    U64(u64),
    Str(String),
    /// A `major.minor.patch` version, as [`version_key`] packs it.
    Version(u64, String),
    Ip(IpAddr),
}

impl fmt::Display for Lit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Lit::U64(n) => write!(f, "{n}"),
            Lit::Str(s) | Lit::Version(_, s) => write!(f, "{s:?}"),
            Lit::Ip(ip) => write!(f, "\"{ip}\""),
        }
    }
}

/// A compiled condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    True,
    Cmp(Field, Op, Lit),
    In(Field, Vec<Lit>),
    /// Not [`Expr::In`]: the field is missing or its value is none of these.
    NotIn(Field, Vec<Lit>),
    StartsWith(Field, String),
    /// The field has a value (its enrichment row is there).
    Exists(Field),
    Not(Box<Expr>),
    And(Vec<Expr>),
    Or(Vec<Expr>),
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let join = |f: &mut fmt::Formatter<'_>, xs: &[Expr], sep: &str| {
            f.write_str("(")?;
            for (i, x) in xs.iter().enumerate() {
                if i > 0 {
                    write!(f, " {sep} ")?;
                }
                write!(f, "{x}")?;
            }
            f.write_str(")")
        };
        match self {
            Expr::True => f.write_str("true"),
            Expr::Cmp(field, op, lit) => write!(f, "{} {} {lit}", field.name(), op.symbol()),
            Expr::In(field, lits) | Expr::NotIn(field, lits) => {
                let not = if matches!(self, Expr::NotIn(..)) {
                    "not "
                } else {
                    ""
                };
                write!(f, "{} {not}in [", field.name())?;
                for (i, l) in lits.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{l}")?;
                }
                f.write_str("]")
            }
            Expr::StartsWith(field, p) => write!(f, "{} starts_with {p:?}", field.name()),
            Expr::Exists(field) => write!(f, "exists {}", field.name()),
            Expr::Not(x) => write!(f, "not {x}"),
            Expr::And(xs) => join(f, xs, "and"),
            Expr::Or(xs) => join(f, xs, "or"),
        }
    }
}

/// `major.minor.patch` packed into one comparable number (16 bits each): each part 1 to 5
/// digits, at most 65535.
#[inline]
pub fn version_key(v: &str) -> Option<u64> {
    let mut key = 0u64;
    let mut part = 0u64;
    let mut digits = 0;
    let mut parts = 0;
    for &b in v.as_bytes() {
        match b {
            b'0'..=b'9' if digits < 5 => {
                part = part * 10 + u64::from(b - b'0');
                digits += 1;
            }
            b'.' if digits > 0 && parts < 2 => {
                if part > 0xffff {
                    return None;
                }
                key = key << 16 | part;
                (part, digits, parts) = (0, 0, parts + 1);
            }
            _ => return None,
        }
    }
    (digits > 0 && parts == 2 && part <= 0xffff).then_some(key << 16 | part)
}

fn compare(v: Value<'_>, lit: &Lit) -> Option<std::cmp::Ordering> {
    match (v, lit) {
        (Value::U64(a), Lit::U64(b)) => Some(a.cmp(b)),
        (Value::Str(a), Lit::Str(b)) => Some(a.as_bytes().cmp(b.as_bytes())),
        (Value::Str(a), Lit::Version(b, _)) => version_key(a).map(|a| a.cmp(b)),
        (Value::Ip(a), Lit::Ip(b)) => Some(a.cmp(b)),
        _ => None,
    }
}

/// Whether `v` equals one of `lits` (never, when it is missing).
fn is_in(v: Value<'_>, lits: &[Lit]) -> bool {
    lits.iter()
        .any(|l| compare(v, l) == Some(std::cmp::Ordering::Equal))
}

impl Expr {
    /// Whether the condition holds for `ctx`.
    pub fn eval(&self, ctx: &Ctx<'_, '_>) -> bool {
        match self {
            Expr::True => true,
            // `!=` and `not in` are the negations of `==` and `in`: true on a missing value.
            Expr::Cmp(field, Op::Ne, lit) => {
                compare(ctx.get(*field), lit) != Some(std::cmp::Ordering::Equal)
            }
            Expr::Cmp(field, op, lit) => {
                compare(ctx.get(*field), lit).is_some_and(|ord| op.holds(ord))
            }
            Expr::In(field, lits) => is_in(ctx.get(*field), lits),
            Expr::NotIn(field, lits) => !is_in(ctx.get(*field), lits),
            Expr::StartsWith(field, p) => {
                matches!(ctx.get(*field), Value::Str(v) if v.starts_with(p.as_str()))
            }
            Expr::Exists(field) => ctx.get(*field) != Value::Null,
            Expr::Not(x) => !x.eval(ctx),
            Expr::And(xs) => xs.iter().all(|x| x.eval(ctx)),
            Expr::Or(xs) => xs.iter().any(|x| x.eval(ctx)),
        }
    }
}

/// A rule as written in the config.
#[derive(Debug, Clone)]
pub struct RuleSource {
    pub name: String,
    /// Indexes of the streams it writes to (one record each per kept match).
    pub streams: Vec<usize>,
    pub when: String,
    pub fields: Vec<String>,
    pub sample: Option<f64>,
}

/// What is wrong with a rule, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    /// Index of the rule in the sources.
    pub rule: usize,
    pub part: RulePart,
    pub reason: String,
}

/// The part of a rule an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RulePart {
    Name,
    To,
    /// The condition, at this byte offset in its text.
    When(usize),
    Fields,
}

/// A compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub streams: Vec<usize>,
    pub expr: Expr,
    pub fields: Vec<Field>,
    pub sample: Option<f64>,
    /// Kept matches are those whose sampling hash is under this (of 1,000,000).
    sample_under: u64,
    salt: u64,
}

impl Rule {
    /// Whether sampling keeps this rule's match of event `event_id` (always, without sampling).
    #[inline]
    pub fn keeps(&self, event_id: u64) -> bool {
        if self.sample.is_none() {
            return true;
        }
        sluice_protocol::mix64(event_id ^ self.salt) % 1_000_000 < self.sample_under
    }
}

/// A compiled route set.
#[derive(Debug, Clone, Default)]
pub struct RouteSet {
    rules: Vec<Rule>,
    unmatched: Option<usize>,
}

impl RouteSet {
    /// Compiles rules; events that match none go to stream `unmatched` when there is one.
    pub fn compile(
        sources: &[RuleSource],
        unmatched: Option<usize>,
    ) -> Result<RouteSet, RuleError> {
        let mut rules = Vec::with_capacity(sources.len());
        let mut names = std::collections::HashSet::new();
        for (i, s) in sources.iter().enumerate() {
            let err = |part, reason: String| RuleError {
                rule: i,
                part,
                reason,
            };
            if !names.insert(s.name.as_str()) {
                return Err(err(
                    RulePart::Name,
                    "a rule of this name comes earlier".into(),
                ));
            }
            if s.streams.is_empty() {
                return Err(err(RulePart::To, "`to` names no stream".into()));
            }
            let expr = parse(&s.when).map_err(|e| err(RulePart::When(e.at), e.reason))?;
            if s.fields.is_empty() {
                return Err(err(
                    RulePart::Fields,
                    "a rule projects at least one field".into(),
                ));
            }
            if s.fields.len() > FIELDS_PER_RULE_MAX {
                return Err(err(
                    RulePart::Fields,
                    format!("a rule projects at most {FIELDS_PER_RULE_MAX} fields"),
                ));
            }
            let fields = s
                .fields
                .iter()
                .map(|f| {
                    Field::from_name(f)
                        .ok_or_else(|| err(RulePart::Fields, format!("unknown field {f:?}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let salt = sluice_protocol::fnv1a64(s.name.as_bytes());
            rules.push(Rule {
                name: s.name.clone(),
                streams: s.streams.clone(),
                expr,
                fields,
                sample: s.sample,
                sample_under: s
                    .sample
                    .map_or(1_000_000, |f| (f * 1_000_000.0).round() as u64),
                salt,
            });
        }
        Ok(RouteSet { rules, unmatched })
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The stream for events no rule matches, if the config has one.
    pub fn unmatched(&self) -> Option<usize> {
        self.unmatched
    }
}

/// A condition that does not parse: why, and at which byte of its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub at: usize,
    pub reason: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (at byte {})", self.reason, self.at)
    }
}

/// Parses a condition.
pub fn parse(src: &str) -> Result<Expr, ParseError> {
    let mut p = Parser {
        toks: lex(src)?,
        at: 0,
        end: src.len(),
    };
    let e = p.or()?;
    match p.toks.get(p.at) {
        None => Ok(e),
        Some((t, at)) => Err(ParseError {
            at: *at,
            reason: format!("unexpected {t} after a complete condition"),
        }),
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Num(u64),
    Op(Op),
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Ident(s) => write!(f, "`{s}`"),
            Tok::Str(s) => write!(f, "{s:?}"),
            Tok::Num(n) => write!(f, "{n}"),
            Tok::Op(o) => write!(f, "`{}`", o.symbol()),
            Tok::LParen => f.write_str("`(`"),
            Tok::RParen => f.write_str("`)`"),
            Tok::LBracket => f.write_str("`[`"),
            Tok::RBracket => f.write_str("`]`"),
            Tok::Comma => f.write_str("`,`"),
        }
    }
}

/// Tokens with the byte offset each starts at.
fn lex(src: &str) -> Result<Vec<(Tok, usize)>, ParseError> {
    let b = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let fail = |at: usize, reason: String| Err(ParseError { at, reason });
    while i < b.len() {
        let c = b[i];
        let start = i;
        let tok = match c {
            b' ' | b'\t' | b'\n' | b'\r' => {
                i += 1;
                continue;
            }
            b'(' | b')' | b'[' | b']' | b',' => {
                i += 1;
                match c {
                    b'(' => Tok::LParen,
                    b')' => Tok::RParen,
                    b'[' => Tok::LBracket,
                    b']' => Tok::RBracket,
                    _ => Tok::Comma,
                }
            }
            b'=' | b'!' | b'<' | b'>' => {
                let two = b.get(i + 1) == Some(&b'=');
                let op = match (c, two) {
                    (b'=', true) => Op::Eq,
                    (b'!', true) => Op::Ne,
                    (b'>', true) => Op::Ge,
                    (b'<', true) => Op::Le,
                    (b'>', false) => Op::Gt,
                    (b'<', false) => Op::Lt,
                    (b'=', false) => return fail(i, "`=`: did you mean `==`?".into()),
                    _ => return fail(i, "`!`: did you mean `!=` or `not`?".into()),
                };
                i += if two { 2 } else { 1 };
                Tok::Op(op)
            }
            b'"' => {
                let mut s = String::new();
                i += 1;
                loop {
                    match b.get(i) {
                        None => return fail(start, "a string is not closed".into()),
                        Some(b'"') => break,
                        Some(b'\\') => {
                            match b.get(i + 1) {
                                Some(b'"') => s.push('"'),
                                Some(b'\\') => s.push('\\'),
                                _ => {
                                    return fail(i, "a bad escape (only \\\" and \\\\)".into());
                                }
                            }
                            i += 2;
                        }
                        Some(_) => {
                            let ch = src[i..].chars().next().expect("in bounds");
                            s.push(ch);
                            i += ch.len_utf8();
                        }
                    }
                }
                i += 1;
                Tok::Str(s)
            }
            b'0'..=b'9' => {
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                match src[start..i].parse() {
                    Ok(n) => Tok::Num(n),
                    Err(_) => {
                        return fail(start, format!("number {} is too large", &src[start..i]));
                    }
                }
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'.')
                {
                    i += 1;
                }
                Tok::Ident(src[start..i].to_owned())
            }
            _ => {
                let ch = src[i..].chars().next().expect("in bounds");
                return fail(i, format!("unexpected {ch:?}"));
            }
        };
        out.push((tok, start));
    }
    Ok(out)
}

struct Parser {
    toks: Vec<(Tok, usize)>,
    at: usize,
    /// Length of the source: where "the end" is.
    end: usize,
}

impl Parser {
    fn peek_word(&self, w: &str) -> bool {
        matches!(self.toks.get(self.at), Some((Tok::Ident(s), _)) if s == w)
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.at).map(|t| t.0.clone());
        self.at += 1;
        t
    }

    /// An error about the token just taken by [`Parser::next`].
    fn error_at_last(&self, reason: String) -> ParseError {
        let at = self
            .toks
            .get(self.at.saturating_sub(1))
            .map_or(self.end, |t| t.1);
        ParseError { at, reason }
    }

    fn expected(&self, what: &str, got: Option<Tok>) -> ParseError {
        self.error_at_last(match got {
            Some(t) => format!("expected {what}, found {t}"),
            None => format!("expected {what}, found the end"),
        })
    }

    fn or(&mut self) -> Result<Expr, ParseError> {
        let mut xs = vec![self.and()?];
        while self.peek_word("or") {
            self.at += 1;
            xs.push(self.and()?);
        }
        Ok(if xs.len() == 1 {
            xs.remove(0)
        } else {
            Expr::Or(xs)
        })
    }

    fn and(&mut self) -> Result<Expr, ParseError> {
        let mut xs = vec![self.unary()?];
        while self.peek_word("and") {
            self.at += 1;
            xs.push(self.unary()?);
        }
        Ok(if xs.len() == 1 {
            xs.remove(0)
        } else {
            Expr::And(xs)
        })
    }

    fn field(&mut self) -> Result<Field, ParseError> {
        match self.next() {
            Some(Tok::Ident(name)) => Field::from_name(&name).ok_or_else(|| {
                self.error_at_last(format!(
                    "unknown field `{name}` (known: {}, attrs.NAME)",
                    Field::ALL.map(Field::name).join(", ")
                ))
            }),
            other => Err(self.expected("a field", other)),
        }
    }

    fn unary(&mut self) -> Result<Expr, ParseError> {
        match self.toks.get(self.at).map(|t| &t.0) {
            Some(Tok::Ident(w)) if w == "not" => {
                self.at += 1;
                return Ok(Expr::Not(Box::new(self.unary()?)));
            }
            Some(Tok::Ident(w)) if w == "true" => {
                self.at += 1;
                return Ok(Expr::True);
            }
            Some(Tok::Ident(w)) if w == "exists" => {
                self.at += 1;
                return Ok(Expr::Exists(self.field()?));
            }
            Some(Tok::LParen) => {
                self.at += 1;
                let e = self.or()?;
                return match self.next() {
                    Some(Tok::RParen) => Ok(e),
                    other => Err(self.expected("`)`", other)),
                };
            }
            Some(Tok::Ident(_)) => {}
            _ => {
                let got = self.next();
                return Err(self.expected("a field, `not`, `exists`, `true` or `(`", got));
            }
        }
        let field = self.field()?;
        match self.next() {
            Some(Tok::Op(op)) => {
                if !matches!(op, Op::Eq | Op::Ne)
                    && !field.is_numeric()
                    && field != Field::AppVersion
                {
                    return Err(self.error_at_last(format!(
                        "`{}` orders numbers and versions; `{}` is a {}",
                        op.symbol(),
                        field.name(),
                        field.kind()
                    )));
                }
                let lit = self.literal(field)?;
                Ok(Expr::Cmp(field, op, lit))
            }
            Some(Tok::Ident(w)) if w == "in" => Ok(Expr::In(field, self.list(field)?)),
            Some(Tok::Ident(w)) if w == "not" => match self.next() {
                Some(Tok::Ident(w)) if w == "in" => Ok(Expr::NotIn(field, self.list(field)?)),
                other => Err(self.expected("`in` after `not`", other)),
            },
            Some(Tok::Ident(w)) if w == "starts_with" => {
                if field.is_numeric() || field == Field::ClientIp {
                    return Err(self.error_at_last(format!(
                        "`starts_with` takes a string field; `{}` is a {}",
                        field.name(),
                        field.kind()
                    )));
                }
                match self.next() {
                    Some(Tok::Str(p)) => Ok(Expr::StartsWith(field, p)),
                    other => Err(self.expected("a string", other)),
                }
            }
            other => Err(self.expected(
                "`==`, `!=`, `<`, `<=`, `>`, `>=`, `in`, `not in` or `starts_with`",
                other,
            )),
        }
    }

    /// `[ literal, ... ]`, at least one.
    fn list(&mut self, field: Field) -> Result<Vec<Lit>, ParseError> {
        match self.next() {
            Some(Tok::LBracket) => {}
            other => return Err(self.expected("`[`", other)),
        }
        let mut lits = Vec::new();
        loop {
            lits.push(self.literal(field)?);
            match self.next() {
                Some(Tok::Comma) => {}
                Some(Tok::RBracket) => return Ok(lits),
                other => return Err(self.expected("`,` or `]`", other)),
            }
        }
    }

    fn literal(&mut self, field: Field) -> Result<Lit, ParseError> {
        let tok = self.next();
        let bad = |p: &Self, why: String| Err(p.error_at_last(why));
        match (tok, field) {
            (Some(Tok::Num(n)), f) if f.is_numeric() => Ok(Lit::U64(n)),
            (Some(Tok::Str(s)), Field::AppVersion) => match version_key(&s) {
                Some(k) => Ok(Lit::Version(k, s)),
                None => bad(self, format!("{s:?} is not a major.minor.patch version")),
            },
            (Some(Tok::Str(s)), Field::ClientIp) => match s.parse() {
                Ok(ip) => Ok(Lit::Ip(ip)),
                Err(_) => bad(self, format!("{s:?} is not an IP address")),
            },
            (Some(Tok::Str(s)), f) if !f.is_numeric() => Ok(Lit::Str(s)),
            (Some(t @ (Tok::Num(_) | Tok::Str(_))), f) => bad(
                self,
                format!("{t} does not fit `{}`, which is a {}", f.name(), f.kind()),
            ),
            (other, _) => Err(self.expected("a literal", other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let e = parse(
            r#"event_type in ["a", "b"] and (app_version >= "6.1.0" or not geo.asn < 10)
               and geo.country not in ["US"] and device.model starts_with "Ro"
               and not exists customer.plan"#,
        )
        .unwrap();
        assert_eq!(
            e.to_string(),
            r#"(event_type in ["a", "b"] and (app_version >= "6.1.0" or not geo.asn < 10) and geo.country not in ["US"] and device.model starts_with "Ro" and not exists customer.plan)"#
        );
    }

    #[test]
    fn errors_say_why_and_where() {
        let cases = [
            ("event_typ == \"a\"", 0, "unknown field `event_typ`"),
            ("event_type = \"a\"", 11, "did you mean `==`"),
            ("geo.asn == \"x\"", 11, "does not fit `geo.asn`"),
            ("app_version >= \"6.x\"", 15, "not a major.minor.patch"),
            ("app_version == \"6.1\"", 15, "not a major.minor.patch"),
            (
                "app_version not in [\"6.1.0\", \"7\"]",
                29,
                "not a major.minor.patch",
            ),
            (
                "event_type in [\"a\"",
                18,
                "expected `,` or `]`, found the end",
            ),
            ("(true", 5, "expected `)`"),
            ("true true", 5, "unexpected `true`"),
            (
                "geo.country < \"US\"",
                12,
                "`<` orders numbers and versions",
            ),
            (
                "geo.asn starts_with \"1\"",
                8,
                "`starts_with` takes a string field",
            ),
            ("geo.country not [\"US\"]", 16, "expected `in` after `not`"),
            ("exists 7", 7, "expected a field"),
            ("event_type in []", 15, "expected a literal, found `]`"),
            ("device.os ~ \"x\"", 10, "unexpected '~'"),
        ];
        for (src, at, want) in cases {
            let err = parse(src).unwrap_err();
            assert!(err.reason.contains(want), "{src}: {err}");
            assert_eq!(err.at, at, "{src}: {err}");
        }
    }

    #[test]
    fn versions_compare_numerically() {
        assert!(version_key("6.10.0") > version_key("6.9.9"));
        assert_eq!(version_key("1.2"), None);
        assert_eq!(version_key("1.2.3.4"), None);
        assert_eq!(version_key("7.4.12"), Some(7 << 32 | 4 << 16 | 12));
        assert_eq!(version_key("65535.0.0"), Some(0xffff << 32));
        for bad in [
            "",
            "1..2",
            ".1.2",
            "1.2.",
            "65536.0.0",
            "123456.0.0",
            "1.2.x",
            "1.-2.3",
        ] {
            assert_eq!(version_key(bad), None, "{bad}");
        }
    }
}
