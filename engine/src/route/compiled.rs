//! The route set compiled for one shard's tables: one bitset AND per field decides most rules.
//!
//! Each rule's condition is split into its top-level conjuncts. A conjunct that reads one
//! field in one way (string equality, number or version order, IP equality) is a *slot*
//! conjunct; the rest (prefixes, `or` across fields) are *residual*.
//!
//! For every slot, the values an event can have fall into a few classes, the *rows*:
//! - a string or IP slot: each literal the rules mention, any other value, no value;
//! - a number or version slot: each literal point, each gap between points, no value.
//!
//! Every slot conjunct has one answer per row, so for each row the matcher keeps the bitset
//! of rules whose conjuncts on that slot all hold there (rules that do not read the slot hold
//! everywhere). An event's matches are then the AND, across slots, of the row bitset its value
//! picks (found by one hash lookup for an event string, an index into a table built from the
//! shard's interned strings for an enrichment string, or a binary search among the points),
//! done 512 or 256 bits at a time where the CPU has AVX-512 or AVX2. The residual conjuncts
//! of a rule are evaluated only when the bitsets leave the rule standing.
//!
//! [`super::Expr::eval`] is the oracle: the property tests in `tests/matcher.rs` check that
//! every SIMD path gives its answers.

use std::net::IpAddr;

use hashbrown::HashMap;

use super::strtab::{RowCache, StrTable};
use super::{Ctx, Expr, Field, Lit, Op, RouteSet, Value};
use crate::enrich::{Enriched, Sym, Tables};

/// How an event's row in a slot is found.
#[derive(Debug, Clone)]
enum Kind {
    /// Rows: literal ids, then "another string", then "no value".
    Str {
        literals: HashMap<Box<str>, u32>,
        /// The literals again, for looking up an event field's value.
        table: StrTable,
    },
    /// Rows: literal ids, then "another address".
    Ip { literals: HashMap<IpAddr, u32> },
    /// Rows: `2i` is the gap below point `i`, `2i + 1` point `i`, `2n` the gap above the
    /// last; then "no value". A version slot orders `app_version` as a version.
    Ord { points: Vec<u64>, version: bool },
}

#[derive(Debug, Clone)]
struct Slot {
    field: Field,
    kind: Kind,
}

impl Slot {
    fn rows(&self) -> usize {
        match &self.kind {
            Kind::Str { literals, .. } => literals.len() + 2,
            Kind::Ip { literals } => literals.len() + 1,
            Kind::Ord { points, .. } => 2 * points.len() + 2,
        }
    }

    fn null_row(&self) -> usize {
        self.rows() - 1
    }
}

/// The row a slot conjunct is asked about.
#[derive(Debug, Clone, Copy)]
enum Row {
    /// Literal `id` of a string or IP slot.
    Lit(u32),
    /// A value no literal of the slot names.
    Other,
    /// Point `i` of an ordered slot.
    Point(usize),
    /// Strictly between points `i - 1` and `i` of an ordered slot.
    Gap(usize),
    /// The field has no value.
    Null,
}

/// Which AND the matcher runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Simd {
    Avx512,
    Avx2,
    Scalar,
}

impl Simd {
    /// The widest this CPU runs.
    pub fn detect() -> Simd {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Simd::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                return Simd::Avx2;
            }
        }
        Simd::Scalar
    }

    /// Every path this CPU can run, widest first.
    pub fn available() -> Vec<Simd> {
        let all = [Simd::Avx512, Simd::Avx2, Simd::Scalar];
        let best = all.iter().position(|s| *s == Simd::detect()).unwrap_or(2);
        all[best..].to_vec()
    }
}

/// The rules an event matched: one bit per rule, and which words have any.
#[derive(Debug, Clone)]
pub struct Matches {
    bits: Box<[u64]>,
    nonzero: Box<[u64]>,
    /// The version slot's rows of recent `app_version` strings (a version is parsed and
    /// placed among the points once, not per event).
    versions: RowCache,
}

impl Matches {
    /// The matched rules' indexes, in order.
    #[inline]
    pub fn iter(&self) -> MatchIter<'_> {
        MatchIter {
            m: self,
            next_group: 0,
            group: 0,
            word: 0,
            bits: 0,
        }
    }

    /// Calls `f` with each matched rule's index, in order.
    #[inline]
    pub fn for_each(&self, mut f: impl FnMut(usize)) {
        for (j, &nz) in self.nonzero.iter().enumerate() {
            let mut words = nz;
            while words != 0 {
                let i = j * 64 + words.trailing_zeros() as usize;
                words &= words - 1;
                let mut bits = self.bits[i];
                while bits != 0 {
                    f(i * 64 + bits.trailing_zeros() as usize);
                    bits &= bits - 1;
                }
            }
        }
    }

    /// Whether rule `i` matched.
    pub fn contains(&self, i: usize) -> bool {
        self.bits
            .get(i / 64)
            .is_some_and(|w| w >> (i % 64) & 1 == 1)
    }

    /// Whether no rule matched.
    pub fn is_empty(&self) -> bool {
        self.nonzero.iter().all(|w| *w == 0)
    }
}

/// The rules of a [`Matches`], in order.
pub struct MatchIter<'a> {
    m: &'a Matches,
    /// The next word of `nonzero` to look at.
    next_group: usize,
    /// The nonzero words of the current group not yet visited.
    group: u64,
    /// The current word and its bits not yet yielded.
    word: usize,
    bits: u64,
}

impl Iterator for MatchIter<'_> {
    type Item = usize;

    #[inline]
    fn next(&mut self) -> Option<usize> {
        while self.bits == 0 {
            while self.group == 0 {
                let g = *self.m.nonzero.get(self.next_group)?;
                self.group = g;
                self.next_group += 1;
            }
            self.word = (self.next_group - 1) * 64 + self.group.trailing_zeros() as usize;
            self.group &= self.group - 1;
            self.bits = self.m.bits[self.word];
        }
        let b = self.bits.trailing_zeros() as usize;
        self.bits &= self.bits - 1;
        Some(self.word * 64 + b)
    }
}

/// Slots a route set can have: a string (or IP) and an ordered one per field.
const MAX_SLOTS: usize = 2 * Field::ALL.len();

/// A route set compiled against one shard's tables.
#[derive(Debug, Clone)]
pub struct Matcher {
    words: usize,
    slots: Vec<Slot>,
    /// Every slot's rows, `words` words each, one slot after another: the rules each row lets
    /// through.
    masks: Box<[u64]>,
    /// Where each slot's rows start in `masks`.
    slot_at: Vec<usize>,
    /// The enrichment string slots, found without going through [`Matcher::row`].
    sym_probes: Vec<SymProbe>,
    /// How many of the tables' strings the symbol probes know.
    synced: usize,
    /// The slot ordering `app_version` as a version: its rows' offsets are cached per string.
    version_probe: Option<usize>,
    /// The other slots.
    probes: Vec<usize>,
    /// Rules that can match at all.
    base: Box<[u64]>,
    /// Rules with residual conjuncts.
    residual_rules: Box<[u64]>,
    /// Whether any rule has residual conjuncts (so the pass over them can be skipped).
    any_residual: bool,
    /// Per rule, its residual conjuncts as one condition.
    residual: Vec<Option<Expr>>,
    simd: Simd,
}

/// The enrichment string fields, in the order of [`enrichment_syms`].
const ENRICHMENT: [Field; 9] = [
    Field::GeoCountry,
    Field::GeoRegion,
    Field::GeoCity,
    Field::DeviceBrand,
    Field::DeviceModel,
    Field::DevicePlatform,
    Field::DeviceOs,
    Field::CustomerPlan,
    Field::CustomerSignupCountry,
];

fn is_enrichment(f: Field) -> bool {
    ENRICHMENT.contains(&f)
}

/// The interned strings of an event's enrichment fields, in [`ENRICHMENT`]'s order;
/// [`Sym::NONE`] (no value) for a field whose row is missing.
#[inline(always)]
fn enrichment_syms(e: &Enriched) -> [u32; 9] {
    let s = |x: Option<Sym>| x.unwrap_or(Sym::NONE).index() as u32;
    let (g, d, c) = (e.geo, e.device, e.customer);
    [
        s(g.map(|g| g.country)),
        s(g.map(|g| g.region)),
        s(g.map(|g| g.city)),
        s(d.map(|d| d.brand)),
        s(d.map(|d| d.model)),
        s(d.map(|d| d.platform)),
        s(d.map(|d| d.os)),
        s(c.map(|c| c.plan)),
        s(c.map(|c| c.signup_country)),
    ]
}

/// An enrichment string slot: the offset in the matcher's masks of the row each interned
/// string of the shard's tables picks ([`Sym::NONE`]'s is that of "no value").
#[derive(Debug, Clone)]
struct SymProbe {
    /// Index into [`ENRICHMENT`].
    field: usize,
    /// The slot's index.
    slot: usize,
    offs: Vec<u32>,
    /// The offset of "another string".
    other: u32,
}

/// Whether a field is on every event (so `exists` holds).
fn always_there(f: Field) -> bool {
    !f.name().contains('.')
}

/// Which slot a leaf reads: (field, 0 string / 1 IP / 2 number / 3 version).
type SlotKey = (Field, u8);

fn leaf_slot(e: &Expr) -> Option<SlotKey> {
    let by_lit = |f: Field, l: &Lit| match l {
        Lit::Str(_) => (f, 0),
        Lit::Ip(_) => (f, 1),
        Lit::U64(_) => (f, 2),
        Lit::Version(..) => (f, 3),
    };
    match e {
        Expr::Cmp(f, _, l) => Some(by_lit(*f, l)),
        Expr::In(f, ls) | Expr::NotIn(f, ls) => ls.first().map(|l| by_lit(*f, l)),
        Expr::Exists(f) if !always_there(*f) => Some((*f, if f.is_numeric() { 2 } else { 0 })),
        _ => None,
    }
}

/// How a conjunct reads the event: `None` if it needs the interpreter, else the one slot it
/// reads (`Some(None)` when it reads none: it is a constant).
fn conjunct_slot(e: &Expr) -> Option<Option<SlotKey>> {
    match e {
        Expr::True => Some(None),
        Expr::Exists(f) if always_there(*f) => Some(None),
        Expr::StartsWith(..) => None,
        Expr::Cmp(..) | Expr::In(..) | Expr::NotIn(..) | Expr::Exists(_) => {
            Some(Some(leaf_slot(e)?))
        }
        Expr::Not(x) => conjunct_slot(x),
        Expr::And(xs) | Expr::Or(xs) => {
            let mut slot = None;
            for x in xs {
                match conjunct_slot(x)? {
                    None => {}
                    Some(s) if slot.is_none_or(|t| t == s) => slot = Some(s),
                    Some(_) => return None,
                }
            }
            Some(slot)
        }
    }
}

fn conjuncts(e: &Expr) -> Vec<&Expr> {
    match e {
        Expr::And(xs) => xs.iter().flat_map(conjuncts).collect(),
        e => vec![e],
    }
}

impl Matcher {
    /// Compiles `routes` for a shard whose tables are `tables`, with the widest AND this CPU
    /// runs.
    pub fn new(routes: &RouteSet, tables: &Tables) -> Matcher {
        Matcher::with_simd(routes, tables, Simd::detect())
    }

    /// As [`Matcher::new`], with the AND done by `simd` (which this CPU must run).
    pub fn with_simd(routes: &RouteSet, tables: &Tables, simd: Simd) -> Matcher {
        assert!(
            Simd::available().contains(&simd),
            "{simd:?} does not run here"
        );
        let rules = routes.rules();
        let words = rules.len().div_ceil(64).max(1);
        // Sort each rule's conjuncts into slot ones and residual ones.
        let mut keys: Vec<SlotKey> = Vec::new();
        let mut by_rule: Vec<Vec<(usize, &Expr)>> = Vec::with_capacity(rules.len());
        let mut residual: Vec<Option<Expr>> = Vec::with_capacity(rules.len());
        let mut base = vec![0u64; words];
        for (r, rule) in rules.iter().enumerate() {
            let mut mine = Vec::new();
            let mut rest = Vec::new();
            let mut never = false;
            for c in conjuncts(&rule.expr) {
                match conjunct_slot(c) {
                    Some(Some(key)) => {
                        let s = keys.iter().position(|k| *k == key).unwrap_or_else(|| {
                            keys.push(key);
                            keys.len() - 1
                        });
                        mine.push((s, c));
                    }
                    Some(None) => never |= !eval_row(c, None, Row::Null),
                    None => rest.push(c.clone()),
                }
            }
            if !never {
                base[r / 64] |= 1 << (r % 64);
            }
            by_rule.push(mine);
            residual.push(match rest.len() {
                0 => None,
                1 => rest.pop(),
                _ => Some(Expr::And(rest)),
            });
        }
        // Each slot's literals, then its rows' bitsets.
        let mut slots: Vec<Slot> = keys
            .iter()
            .map(|&(field, k)| Slot {
                field,
                kind: match k {
                    0 => Kind::Str {
                        literals: HashMap::new(),
                        table: StrTable::new([]),
                    },
                    1 => Kind::Ip {
                        literals: HashMap::new(),
                    },
                    _ => Kind::Ord {
                        points: Vec::new(),
                        version: k == 3,
                    },
                },
            })
            .collect();
        for conjs in &by_rule {
            for &(s, c) in conjs {
                collect_literals(c, &mut slots[s].kind);
            }
        }
        for slot in &mut slots {
            match &mut slot.kind {
                Kind::Ord { points, .. } => {
                    points.sort_unstable();
                    points.dedup();
                }
                Kind::Str { literals, table } if !is_enrichment(slot.field) => {
                    let mut by_id: Vec<(&str, u32)> =
                        literals.iter().map(|(s, &id)| (&**s, id)).collect();
                    by_id.sort_by_key(|(_, id)| *id);
                    *table = StrTable::new(by_id.into_iter().map(|(s, _)| s));
                }
                _ => {}
            }
        }
        let mut masks = Vec::new();
        let mut slot_at = Vec::with_capacity(slots.len());
        let mut sym_probes = Vec::new();
        let mut probes = Vec::new();
        let mut version_probe = None;
        for (s, slot) in slots.iter().enumerate() {
            let at = masks.len();
            slot_at.push(at);
            match (&slot.kind, ENRICHMENT.iter().position(|f| *f == slot.field)) {
                (Kind::Str { literals, .. }, Some(field)) => {
                    sym_probes.push(SymProbe {
                        field,
                        slot: s,
                        offs: Vec::new(),
                        other: (at + literals.len() * words) as u32,
                    });
                }
                (Kind::Ord { version: true, .. }, _) => version_probe = Some(s),
                _ => probes.push(s),
            }
            for row in 0..slot.rows() {
                let at = row_of(slot, row);
                let start = masks.len();
                masks.resize(start + words, 0u64);
                let bits = &mut masks[start..];
                for (r, conjs) in by_rule.iter().enumerate() {
                    if conjs
                        .iter()
                        .all(|&(t, c)| t != s || eval_row(c, Some(slot), at))
                    {
                        bits[r / 64] |= 1 << (r % 64);
                    }
                }
            }
        }
        assert!(
            masks.len() <= u32::MAX as usize,
            "the rule bitsets fit 32-bit offsets"
        );
        let mut residual_rules = vec![0u64; words];
        for (r, x) in residual.iter().enumerate() {
            if x.is_some() {
                residual_rules[r / 64] |= 1 << (r % 64);
            }
        }
        let mut m = Matcher {
            words,
            slots,
            masks: masks.into(),
            slot_at,
            sym_probes,
            synced: 0,
            probes,
            version_probe,
            base: base.into(),
            any_residual: residual.iter().any(Option::is_some),
            residual_rules: residual_rules.into(),
            residual,
            simd,
        };
        m.sync(tables);
        m
    }

    /// Catches up with strings `tables` interned since: a shard's tables intern the strings
    /// of rows a cache fills in, and every one of them must find its row here. Cheap when
    /// nothing is new; call it after enriching and before matching.
    #[inline]
    pub fn sync(&mut self, tables: &Tables) {
        let strings = tables.strings();
        if self.synced == strings.len() {
            return;
        }
        for p in &mut self.sym_probes {
            let slot = &self.slots[p.slot];
            let Kind::Str { literals, .. } = &slot.kind else {
                unreachable!("a symbol probe reads a string slot")
            };
            let at = self.slot_at[p.slot];
            let null = (at + slot.null_row() * self.words) as u32;
            for (i, s) in strings.iter().enumerate().skip(p.offs.len()) {
                p.offs.push(if i == Sym::NONE.index() {
                    null
                } else {
                    literals
                        .get(&**s)
                        .map_or(p.other, |&id| (at + id as usize * self.words) as u32)
                });
            }
        }
        self.synced = strings.len();
    }

    /// Words in a rule bitset.
    pub fn words(&self) -> usize {
        self.words
    }

    /// An empty set of matches for this matcher's rules.
    pub fn matches(&self) -> Matches {
        Matches {
            bits: vec![0; self.words].into(),
            nonzero: vec![0; self.words.div_ceil(64)].into(),
            versions: RowCache::default(),
        }
    }

    /// The AND this matcher runs.
    pub fn simd(&self) -> Simd {
        self.simd
    }

    /// Finds the rules whose condition holds for the event. `out` comes from
    /// [`Matcher::matches`].
    #[inline]
    pub fn matching(&self, ctx: &Ctx<'_, '_>, out: &mut Matches) {
        let w = self.words;
        let Matches {
            bits,
            nonzero,
            versions,
        } = out;
        let (bits, nonzero) = (&mut bits[..w], &mut nonzero[..w.div_ceil(64)]);
        if w <= 2 {
            // Up to 128 rules: AND slot by slot in registers.
            let (mut lo, mut hi) = (self.base[0], self.base.get(1).copied().unwrap_or(0));
            self.each_row(ctx, versions, |o| {
                lo &= self.masks[o];
                if w == 2 {
                    hi &= self.masks[o + 1];
                }
            });
            bits[0] = lo;
            if w == 2 {
                bits[1] = hi;
            }
            nonzero[0] = u64::from(lo != 0) | u64::from(hi != 0) << 1;
        } else if w < 8 {
            // Under one vector: AND slot by slot.
            bits.copy_from_slice(&self.base);
            self.each_row(ctx, versions, |o| {
                for (b, m) in bits.iter_mut().zip(&self.masks[o..o + w]) {
                    *b &= m;
                }
            });
            nonzero[0] = bits
                .iter()
                .enumerate()
                .fold(0, |nz, (i, b)| nz | u64::from(*b != 0) << i);
        } else {
            self.and_all(ctx, bits, nonzero, versions);
        }
        if self.any_residual {
            self.residual(ctx, bits, nonzero);
        }
    }

    /// The AND of every slot's row, a vector at a time.
    #[inline]
    fn and_all(
        &self,
        ctx: &Ctx<'_, '_>,
        bits: &mut [u64],
        nonzero: &mut [u64],
        versions: &mut RowCache,
    ) {
        let mut offs = [0u32; MAX_SLOTS];
        let mut n = 0;
        self.each_row(ctx, versions, |o| {
            offs[n] = o as u32;
            n += 1;
        });
        let rows = Rows {
            masks: &self.masks,
            offs: &offs[..n],
        };
        nonzero.fill(0);
        match self.simd {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `with_simd` checked that this CPU has AVX-512F.
            Simd::Avx512 => unsafe { and_rows_avx512(bits, nonzero, &self.base, rows) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `with_simd` checked that this CPU has AVX2.
            Simd::Avx2 => unsafe { and_rows_avx2(bits, nonzero, &self.base, rows) },
            _ => and_rows(bits, nonzero, &self.base, rows, 0),
        }
    }

    /// Clears the rules whose residual conditions fail.
    fn residual(&self, ctx: &Ctx<'_, '_>, bits: &mut [u64], nonzero: &mut [u64]) {
        for (j, nz) in nonzero.iter_mut().enumerate() {
            let mut words = *nz;
            while words != 0 {
                let i = j * 64 + words.trailing_zeros() as usize;
                words &= words - 1;
                let mut left = bits[i] & self.residual_rules[i];
                while left != 0 {
                    let b = left.trailing_zeros();
                    left &= left - 1;
                    if let Some(x) = &self.residual[i * 64 + b as usize]
                        && !x.eval(ctx)
                    {
                        bits[i] &= !(1 << b);
                    }
                }
                if bits[i] == 0 {
                    *nz &= !(1 << (i % 64));
                }
            }
        }
    }

    /// Calls `f` with the offset in `masks` of the row each slot's value picks.
    #[inline(always)]
    fn each_row(&self, ctx: &Ctx<'_, '_>, versions: &mut RowCache, mut f: impl FnMut(usize)) {
        if !self.sym_probes.is_empty() {
            let syms = enrichment_syms(&ctx.enriched);
            for p in &self.sym_probes {
                f(*p.offs.get(syms[p.field] as usize).unwrap_or(&p.other) as usize);
            }
        }
        if let Some(s) = self.version_probe {
            let (slot, at) = (&self.slots[s], self.slot_at[s]);
            f(versions.row(ctx.event.app_version, |v| {
                at + ord_row(slot, super::version_key(v)) * self.words
            }));
        }
        for &s in &self.probes {
            f(self.slot_at[s] + self.row(&self.slots[s], ctx) * self.words);
        }
    }

    /// The row of `slot` (not an enrichment string's) the event's value picks.
    #[inline(always)]
    fn row(&self, slot: &Slot, ctx: &Ctx<'_, '_>) -> usize {
        match &slot.kind {
            Kind::Str { literals, table } => {
                let s = match slot.field {
                    Field::EventType => ctx.event.event_type,
                    Field::DeviceId => ctx.event.device_id,
                    Field::Attr(name) => {
                        match ctx.event.attrs.value_of(&name[super::ATTR_PREFIX.len()..]) {
                            Some(s) => s,
                            None => return literals.len() + 1,
                        }
                    }
                    f => match ctx.get(f) {
                        Value::Str(s) => s,
                        _ => return literals.len() + 1,
                    },
                };
                table.get(s).map_or(literals.len(), |id| id as usize)
            }
            Kind::Ip { literals } => match ctx.get(slot.field) {
                Value::Ip(ip) => literals.get(&ip).map_or(literals.len(), |&id| id as usize),
                _ => slot.null_row(),
            },
            Kind::Ord { .. } => ord_row(
                slot,
                match ctx.get(slot.field) {
                    Value::U64(v) => Some(v),
                    _ => None,
                },
            ),
        }
    }
}

/// The row of an ordered slot that `v` falls in.
#[inline(always)]
fn ord_row(slot: &Slot, v: Option<u64>) -> usize {
    let (Kind::Ord { points, .. }, Some(v)) = (&slot.kind, v) else {
        return slot.null_row();
    };
    // Counting is branch-free and vectorizes; searching pays off past a few dozen points.
    let i = if points.len() <= 64 {
        points.iter().filter(|p| **p < v).count()
    } else {
        points.partition_point(|p| *p < v)
    };
    if points.get(i) == Some(&v) {
        2 * i + 1
    } else {
        2 * i
    }
}

/// What row number `row` of `slot` stands for.
fn row_of(slot: &Slot, row: usize) -> Row {
    if row == slot.null_row() && !matches!(slot.kind, Kind::Ip { .. }) {
        return Row::Null;
    }
    match &slot.kind {
        Kind::Str { literals, .. } if row == literals.len() => Row::Other,
        Kind::Ip { literals } if row == literals.len() => Row::Other,
        Kind::Str { .. } | Kind::Ip { .. } => Row::Lit(row as u32),
        Kind::Ord { .. } if row % 2 == 1 => Row::Point(row / 2),
        Kind::Ord { .. } => Row::Gap(row / 2),
    }
}

fn collect_literals(e: &Expr, kind: &mut Kind) {
    let mut add = |l: &Lit| match (l, &mut *kind) {
        (Lit::Str(s), Kind::Str { literals, .. }) => {
            let next = literals.len() as u32;
            literals.entry(s.as_str().into()).or_insert(next);
        }
        (Lit::Ip(ip), Kind::Ip { literals }) => {
            let next = literals.len() as u32;
            literals.entry(*ip).or_insert(next);
        }
        (Lit::U64(v) | Lit::Version(v, _), Kind::Ord { points, .. }) => points.push(*v),
        _ => {}
    };
    match e {
        Expr::Cmp(_, _, l) => add(l),
        Expr::In(_, ls) | Expr::NotIn(_, ls) => ls.iter().for_each(add),
        Expr::Not(x) => collect_literals(x, kind),
        Expr::And(xs) | Expr::Or(xs) => xs.iter().for_each(|x| collect_literals(x, kind)),
        _ => {}
    }
}

/// The id (string, IP) or point index (ordered) of a literal in its slot.
fn literal_index(slot: &Slot, l: &Lit) -> Option<usize> {
    match (l, &slot.kind) {
        (Lit::Str(s), Kind::Str { literals, .. }) => literals.get(s.as_str()).map(|&i| i as usize),
        (Lit::Ip(ip), Kind::Ip { literals }) => literals.get(ip).map(|&i| i as usize),
        (Lit::U64(v) | Lit::Version(v, _), Kind::Ord { points, .. }) => {
            points.binary_search(v).ok()
        }
        _ => None,
    }
}

/// Whether a conjunct that reads only `slot` (or nothing) holds for a value in `row`.
fn eval_row(e: &Expr, slot: Option<&Slot>, row: Row) -> bool {
    // How the row's value compares with literal `l`; `None` when it has no value.
    let cmp = |l: &Lit| -> Option<std::cmp::Ordering> {
        use std::cmp::Ordering::*;
        let j = literal_index(slot?, l)?;
        match row {
            Row::Lit(i) => Some(if i as usize == j { Equal } else { Less }),
            Row::Other => Some(Less),
            Row::Point(i) => Some(i.cmp(&j)),
            Row::Gap(i) => Some(if j < i { Greater } else { Less }),
            Row::Null => None,
        }
    };
    let eq = |l: &Lit| cmp(l) == Some(std::cmp::Ordering::Equal);
    match e {
        Expr::True => true,
        Expr::Exists(f) => always_there(*f) || !matches!(row, Row::Null),
        // `!=` and `not in` negate `==` and `in`, so they hold where there is no value.
        Expr::Cmp(_, Op::Ne, l) => !eq(l),
        Expr::Cmp(_, op, l) => cmp(l).is_some_and(|o| op.holds(o)),
        Expr::In(_, ls) => ls.iter().any(eq),
        Expr::NotIn(_, ls) => !ls.iter().any(eq),
        Expr::Not(x) => !eval_row(x, slot, row),
        Expr::And(xs) => xs.iter().all(|x| eval_row(x, slot, row)),
        Expr::Or(xs) => xs.iter().any(|x| eval_row(x, slot, row)),
        Expr::StartsWith(..) => unreachable!("prefixes are residual"),
    }
}

/// The rows an event picked: word offsets into the matcher's masks.
#[derive(Clone, Copy)]
struct Rows<'a> {
    masks: &'a [u64],
    offs: &'a [u32],
}

/// The AND of `base` and the rows, from word `from` on, into `bits`, noting the nonzero words
/// in `nonzero`.
#[inline]
fn and_rows(bits: &mut [u64], nonzero: &mut [u64], base: &[u64], rows: Rows<'_>, from: usize) {
    for i in from..bits.len() {
        let mut v = base[i];
        for &o in rows.offs {
            v &= rows.masks[o as usize + i];
        }
        bits[i] = v;
        nonzero[i / 64] |= u64::from(v != 0) << (i % 64);
    }
}

/// # Safety
/// The CPU must have AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn and_rows_avx512(bits: &mut [u64], nonzero: &mut [u64], base: &[u64], rows: Rows<'_>) {
    use std::arch::x86_64::{
        __m512i, _mm512_and_si512, _mm512_loadu_si512, _mm512_storeu_si512, _mm512_test_epi64_mask,
    };
    let n = bits.len();
    assert!(
        base.len() >= n
            && rows
                .offs
                .iter()
                .all(|&o| o as usize + n <= rows.masks.len())
    );
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: words i..i + 8 are in `base`, `bits` and every row (asserted above).
        unsafe {
            let mut v = _mm512_loadu_si512(base.as_ptr().add(i).cast::<__m512i>());
            for &o in rows.offs {
                let r = rows.masks.as_ptr().add(o as usize + i);
                v = _mm512_and_si512(v, _mm512_loadu_si512(r.cast::<__m512i>()));
            }
            _mm512_storeu_si512(bits.as_mut_ptr().add(i).cast::<__m512i>(), v);
            nonzero[i / 64] |= u64::from(_mm512_test_epi64_mask(v, v)) << (i % 64);
        }
        i += 8;
    }
    and_rows(bits, nonzero, base, rows, i);
}

/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn and_rows_avx2(bits: &mut [u64], nonzero: &mut [u64], base: &[u64], rows: Rows<'_>) {
    use std::arch::x86_64::{
        __m256i, _mm256_and_si256, _mm256_castsi256_pd, _mm256_cmpeq_epi64, _mm256_loadu_si256,
        _mm256_movemask_pd, _mm256_setzero_si256, _mm256_storeu_si256,
    };
    let n = bits.len();
    assert!(
        base.len() >= n
            && rows
                .offs
                .iter()
                .all(|&o| o as usize + n <= rows.masks.len())
    );
    let mut i = 0;
    while i + 4 <= n {
        // SAFETY: words i..i + 4 are in `base`, `bits` and every row (asserted above).
        unsafe {
            let mut v = _mm256_loadu_si256(base.as_ptr().add(i).cast::<__m256i>());
            for &o in rows.offs {
                let r = rows.masks.as_ptr().add(o as usize + i);
                v = _mm256_and_si256(v, _mm256_loadu_si256(r.cast::<__m256i>()));
            }
            _mm256_storeu_si256(bits.as_mut_ptr().add(i).cast::<__m256i>(), v);
            let zero = _mm256_movemask_pd(_mm256_castsi256_pd(_mm256_cmpeq_epi64(
                v,
                _mm256_setzero_si256(),
            )));
            nonzero[i / 64] |= u64::from(!zero as u8 & 0xf) << (i % 64);
        }
        i += 4;
    }
    and_rows(bits, nonzero, base, rows, i);
}
