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

use super::{Ctx, Expr, Field, Lit, RouteSet, Value};
use crate::enrich::Tables;

/// How an event's row in a slot is found.
#[derive(Debug, Clone)]
enum Kind {
    /// Rows: literal ids, then "another string", then "no value".
    Str {
        literals: HashMap<Box<str>, u32>,
        /// For an enrichment field: the literal id (or "another string") of each interned
        /// string of the shard's tables.
        by_sym: Vec<u32>,
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

/// Slots a route set can have: a string (or IP) and an ordered one per field.
const MAX_SLOTS: usize = 2 * Field::ALL.len();

/// A route set compiled against one shard's tables.
#[derive(Debug, Clone)]
pub struct Matcher {
    words: usize,
    slots: Vec<Slot>,
    /// Per slot, `rows · words` bits: the rules each row lets through.
    masks: Vec<Box<[u64]>>,
    /// Rules that can match at all.
    base: Box<[u64]>,
    /// Rules with residual conjuncts.
    residual_rules: Box<[u64]>,
    /// Per rule, its residual conjuncts as one condition.
    residual: Vec<Option<Expr>>,
    simd: Simd,
}

fn is_enrichment(f: Field) -> bool {
    matches!(
        f,
        Field::GeoCountry
            | Field::GeoRegion
            | Field::DeviceBrand
            | Field::DeviceModel
            | Field::DevicePlatform
            | Field::DeviceOs
            | Field::CustomerPlan
            | Field::CustomerSignupCountry
    )
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
                        by_sym: Vec::new(),
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
                Kind::Str { literals, by_sym } if is_enrichment(slot.field) => {
                    let other = literals.len() as u32;
                    *by_sym = tables
                        .strings()
                        .iter()
                        .map(|s| literals.get(&**s).copied().unwrap_or(other))
                        .collect();
                }
                _ => {}
            }
        }
        let masks = slots
            .iter()
            .enumerate()
            .map(|(s, slot)| {
                let mut mask = vec![0u64; slot.rows() * words].into_boxed_slice();
                for row in 0..slot.rows() {
                    let at = row_of(slot, row);
                    let bits = &mut mask[row * words..(row + 1) * words];
                    for (r, conjs) in by_rule.iter().enumerate() {
                        if conjs
                            .iter()
                            .all(|&(t, c)| t != s || eval_row(c, Some(slot), at))
                        {
                            bits[r / 64] |= 1 << (r % 64);
                        }
                    }
                }
                mask
            })
            .collect();
        let mut residual_rules = vec![0u64; words];
        for (r, x) in residual.iter().enumerate() {
            if x.is_some() {
                residual_rules[r / 64] |= 1 << (r % 64);
            }
        }
        Matcher {
            words,
            slots,
            masks,
            base: base.into(),
            residual_rules: residual_rules.into(),
            residual,
            simd,
        }
    }

    /// Words in a rule bitset.
    pub fn words(&self) -> usize {
        self.words
    }

    /// The AND this matcher runs.
    pub fn simd(&self) -> Simd {
        self.simd
    }

    /// Sets in `out` (`words()` words, one bit per rule) the rules whose condition holds for
    /// the event, and clears the others.
    #[inline]
    pub fn matching(&self, ctx: &Ctx<'_, '_>, out: &mut [u64]) {
        let w = self.words;
        let out = &mut out[..w];
        let mut rows: [&[u64]; MAX_SLOTS] = [&[]; MAX_SLOTS];
        for (i, (slot, mask)) in self.slots.iter().zip(&self.masks).enumerate() {
            let row = self.row(slot, ctx);
            rows[i] = &mask[row * w..(row + 1) * w];
        }
        let rows = &rows[..self.slots.len()];
        match self.simd {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `with_simd` checked that this CPU has AVX-512F.
            Simd::Avx512 => unsafe { and_rows_avx512(out, &self.base, rows) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `with_simd` checked that this CPU has AVX2.
            Simd::Avx2 => unsafe { and_rows_avx2(out, &self.base, rows) },
            _ => and_rows_scalar(out, &self.base, rows),
        }
        for (i, (o, m)) in out.iter_mut().zip(self.residual_rules.iter()).enumerate() {
            let mut left = *o & m;
            while left != 0 {
                let b = left.trailing_zeros();
                left &= left - 1;
                let rule = i * 64 + b as usize;
                if let Some(x) = &self.residual[rule]
                    && !x.eval(ctx)
                {
                    *o &= !(1 << b);
                }
            }
        }
    }

    /// The row of `slot` the event's value picks.
    #[inline]
    fn row(&self, slot: &Slot, ctx: &Ctx<'_, '_>) -> usize {
        match &slot.kind {
            Kind::Str { literals, by_sym } => {
                let other = literals.len();
                if is_enrichment(slot.field) {
                    let e = &ctx.enriched;
                    let sym = match slot.field {
                        Field::GeoCountry => e.geo.map(|g| g.country),
                        Field::GeoRegion => e.geo.map(|g| g.region),
                        Field::DeviceBrand => e.device.map(|d| d.brand),
                        Field::DeviceModel => e.device.map(|d| d.model),
                        Field::DevicePlatform => e.device.map(|d| d.platform),
                        Field::DeviceOs => e.device.map(|d| d.os),
                        Field::CustomerPlan => e.customer.map(|c| c.plan),
                        _ => e.customer.map(|c| c.signup_country),
                    };
                    match sym {
                        Some(sym) => by_sym.get(sym.index()).map_or(other, |&id| id as usize),
                        None => other + 1,
                    }
                } else {
                    match ctx.get(slot.field) {
                        Value::Str(s) => literals.get(s).map_or(other, |&id| id as usize),
                        _ => other + 1,
                    }
                }
            }
            Kind::Ip { literals } => match ctx.get(slot.field) {
                Value::Ip(ip) => literals.get(&ip).map_or(literals.len(), |&id| id as usize),
                _ => slot.null_row(),
            },
            Kind::Ord { points, version } => {
                let v = if *version {
                    super::version_key(ctx.event.app_version)
                } else {
                    match ctx.get(slot.field) {
                        Value::U64(v) => Some(v),
                        _ => None,
                    }
                };
                match v {
                    Some(v) => {
                        let i = points.partition_point(|p| *p < v);
                        if points.get(i) == Some(&v) {
                            2 * i + 1
                        } else {
                            2 * i
                        }
                    }
                    None => slot.null_row(),
                }
            }
        }
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
        Expr::Cmp(_, op, l) => cmp(l).is_some_and(|o| op.holds(o)),
        Expr::In(_, ls) => ls.iter().any(eq),
        Expr::NotIn(_, ls) => !matches!(row, Row::Null) && !ls.iter().any(eq),
        Expr::Not(x) => !eval_row(x, slot, row),
        Expr::And(xs) => xs.iter().all(|x| eval_row(x, slot, row)),
        Expr::Or(xs) => xs.iter().any(|x| eval_row(x, slot, row)),
        Expr::StartsWith(..) => unreachable!("prefixes are residual"),
    }
}

fn and_rows_scalar(out: &mut [u64], base: &[u64], rows: &[&[u64]]) {
    for (i, o) in out.iter_mut().enumerate() {
        let mut v = base[i];
        for r in rows {
            v &= r[i];
        }
        *o = v;
    }
}

/// # Safety
/// The CPU must have AVX-512F; `base` and every row are at least `out.len()` long.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn and_rows_avx512(out: &mut [u64], base: &[u64], rows: &[&[u64]]) {
    use std::arch::x86_64::{__m512i, _mm512_and_si512, _mm512_loadu_si512, _mm512_storeu_si512};
    let n = out.len();
    assert!(base.len() >= n && rows.iter().all(|r| r.len() >= n));
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 <= n, and every slice holds at least n words (asserted above).
        unsafe {
            let mut v = _mm512_loadu_si512(base.as_ptr().add(i).cast::<__m512i>());
            for r in rows {
                v = _mm512_and_si512(v, _mm512_loadu_si512(r.as_ptr().add(i).cast::<__m512i>()));
            }
            _mm512_storeu_si512(out.as_mut_ptr().add(i).cast::<__m512i>(), v);
        }
        i += 8;
    }
    tail(out, base, rows, i);
}

/// # Safety
/// The CPU must have AVX2; `base` and every row are at least `out.len()` long.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn and_rows_avx2(out: &mut [u64], base: &[u64], rows: &[&[u64]]) {
    use std::arch::x86_64::{__m256i, _mm256_and_si256, _mm256_loadu_si256, _mm256_storeu_si256};
    let n = out.len();
    assert!(base.len() >= n && rows.iter().all(|r| r.len() >= n));
    let mut i = 0;
    while i + 4 <= n {
        // SAFETY: i + 4 <= n, and every slice holds at least n words (asserted above).
        unsafe {
            let mut v = _mm256_loadu_si256(base.as_ptr().add(i).cast::<__m256i>());
            for r in rows {
                v = _mm256_and_si256(v, _mm256_loadu_si256(r.as_ptr().add(i).cast::<__m256i>()));
            }
            _mm256_storeu_si256(out.as_mut_ptr().add(i).cast::<__m256i>(), v);
        }
        i += 4;
    }
    tail(out, base, rows, i);
}

/// The scalar AND of the words from `from` on.
#[inline]
fn tail(out: &mut [u64], base: &[u64], rows: &[&[u64]], from: usize) {
    for i in from..out.len() {
        let mut v = base[i];
        for r in rows {
            v &= r[i];
        }
        out[i] = v;
    }
}
