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
//!
//! [`slots`] holds what a slot is and its rows, [`build`] compiles a route set, [`kernel`] is
//! the AND (one body over the vector width, beside the scalar reference).

mod build;
mod kernel;
mod slots;

pub use kernel::Simd;

use super::strtab::RowCache;
use super::{Ctx, Expr, Field, RouteSet, Value};
use crate::enrich::{Enriched, Sym, Tables};
use kernel::{Rows, and_rows};
use slots::{Slot, Values, ord_row};

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
        let mut m = build::build(routes, simd);
        m.sync(tables);
        m
    }

    /// Catches up with strings `tables` interned since: a shard's tables intern the strings
    /// of rows a cache fills in, and every one of them must find its row here. Cheap when
    /// nothing is new; call it after enriching and before matching.
    #[inline]
    pub fn sync(&mut self, tables: &Tables) {
        let count = tables.strings().len();
        if self.synced == count {
            return;
        }
        for p in &mut self.sym_probes {
            let slot = &self.slots[p.slot];
            let Values::Str { literals, .. } = &slot.values else {
                unreachable!("a symbol probe reads a string slot")
            };
            let at = self.slot_at[p.slot];
            let null = (at + slot.null_row() * self.words) as u32;
            for (i, s) in tables.strings().enumerate().skip(p.offs.len()) {
                p.offs.push(if i == Sym::NONE.index() {
                    null
                } else {
                    literals
                        .get(s)
                        .map_or(p.other, |&id| (at + id as usize * self.words) as u32)
                });
            }
        }
        self.synced = count;
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
            Simd::Avx512 => unsafe {
                kernel::x86_64::and_rows_avx512(bits, nonzero, &self.base, rows)
            },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `with_simd` checked that this CPU has AVX2.
            Simd::Avx2 => unsafe { kernel::x86_64::and_rows_avx2(bits, nonzero, &self.base, rows) },
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
        match &slot.values {
            Values::Str { literals, table } => {
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
            Values::Ip { literals } => match ctx.get(slot.field) {
                Value::Ip(ip) => literals.get(&ip).map_or(literals.len(), |&id| id as usize),
                _ => slot.null_row(),
            },
            Values::Ord { .. } => ord_row(
                slot,
                match ctx.get(slot.field) {
                    Value::U64(v) => Some(v),
                    _ => None,
                },
            ),
        }
    }
}
