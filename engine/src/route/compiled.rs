//! The route set compiled for one shard's tables: string comparisons become bit tests.
//!
//! Every string literal a condition compares a field with gets a small id, per field. Per
//! event, each string field the rules read is resolved to its id once: an event field by one
//! hash lookup, an enrichment field by indexing a table built at start-up from the shard's
//! interned strings (so no hashing at all). `app_version` is parsed once. Then `==` and `in`
//! are bit tests, and versions and numbers compare as integers. Anything else (IP addresses,
//! string ordering) falls back to the interpreter.
//!
//! [`super::Expr::eval`] is the oracle: `tests/matcher.rs` checks both agree on W1 events.

use hashbrown::HashMap;

use super::{Ctx, Expr, Field, Lit, Op, RouteSet, Value};
use crate::enrich::Tables;

/// Id of a string that is no literal of its field.
const UNKNOWN: u32 = u32::MAX;

#[derive(Debug, Clone)]
enum Pred {
    /// The field's literal id is in the set.
    In {
        slot: usize,
        bits: Box<[u64]>,
    },
    Num {
        field: Field,
        op: Op,
        value: u64,
    },
    Version {
        op: Op,
        key: u64,
    },
    Interpret(Expr),
}

#[derive(Debug, Clone)]
enum CExpr {
    True,
    Pred(Pred),
    Not(Box<CExpr>),
    And(Box<[CExpr]>),
    Or(Box<[CExpr]>),
}

/// One string field the rules compare: its literals and, for enrichment fields, the id of
/// every interned string of the shard's tables.
#[derive(Debug, Clone)]
struct StrSlot {
    field: Field,
    literals: HashMap<Box<str>, u32>,
    by_sym: Vec<u32>,
}

/// A route set compiled against one shard's tables.
///
/// Rules that are conjunctions of `in`/`==` tests and version or number comparisons (all of
/// W1's) are decided together as bitsets: for each string slot and each of its literal ids, the
/// set of rules whose tests on that slot pass; an event's matches are the AND of its ids' sets,
/// then of its version and number comparisons. Other rules are evaluated one by one.
#[derive(Debug, Clone)]
pub struct Matcher {
    slots: Vec<StrSlot>,
    needs_version: bool,
    rules: Vec<CExpr>,
    /// Words in a rule bitset.
    words: usize,
    /// Per slot: `(literals + 1) · words` bits; row `literals` is for an unknown string.
    slot_masks: Vec<Vec<u64>>,
    /// Version comparisons of bitset rules: (rule, op, key).
    versions: Vec<(usize, Op, u64)>,
    /// Number comparisons of bitset rules: (rule, field, op, value).
    numbers: Vec<(usize, Field, Op, u64)>,
    /// Rules evaluated one by one.
    general: Vec<usize>,
    /// Rules decided by bitsets.
    bitset_rules: Vec<u64>,
}

/// Per-event values the compiled predicates read.
pub struct Resolved {
    ids: [u32; Field::ALL.len()],
    version: Option<u64>,
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

impl Matcher {
    pub fn new(routes: &RouteSet, tables: &Tables) -> Matcher {
        let n = routes.rules().len();
        let words = n.div_ceil(64).max(1);
        let mut m = Matcher {
            slots: Vec::new(),
            needs_version: false,
            rules: Vec::new(),
            words,
            slot_masks: Vec::new(),
            versions: Vec::new(),
            numbers: Vec::new(),
            general: Vec::new(),
            bitset_rules: vec![0; words],
        };
        m.rules = routes.rules().iter().map(|r| m.compile(&r.expr)).collect();
        m.build_bitsets();
        for slot in &mut m.slots {
            if is_enrichment(slot.field) {
                slot.by_sym = tables
                    .strings()
                    .iter()
                    .map(|s| slot.literals.get(&**s).copied().unwrap_or(UNKNOWN))
                    .collect();
            }
        }
        m
    }

    /// The conjuncts of a rule, if every one is a test the bitsets can decide.
    fn conjuncts(e: &CExpr) -> Option<Vec<&Pred>> {
        match e {
            CExpr::True => Some(Vec::new()),
            CExpr::Pred(Pred::Interpret(_)) => None,
            CExpr::Pred(p) => Some(vec![p]),
            CExpr::And(xs) => {
                let mut out = Vec::new();
                for x in xs.iter() {
                    out.extend(Self::conjuncts(x)?);
                }
                Some(out)
            }
            CExpr::Not(_) | CExpr::Or(_) => None,
        }
    }

    fn build_bitsets(&mut self) {
        let w = self.words;
        let mut masks: Vec<Vec<u64>> = self
            .slots
            .iter()
            .map(|s| vec![0u64; (s.literals.len() + 1) * w])
            .collect();
        for (r, rule) in self.rules.iter().enumerate() {
            let Some(preds) = Self::conjuncts(rule) else {
                self.general.push(r);
                continue;
            };
            self.bitset_rules[r / 64] |= 1 << (r % 64);
            for (s, mask) in masks.iter_mut().enumerate() {
                let rows = self.slots[s].literals.len() + 1;
                let tests: Vec<&[u64]> = preds
                    .iter()
                    .filter_map(|p| match p {
                        Pred::In { slot, bits } if *slot == s => Some(&bits[..]),
                        _ => None,
                    })
                    .collect();
                for id in 0..rows {
                    // The unknown row passes only rules that do not test this slot.
                    let pass = if id == rows - 1 {
                        tests.is_empty()
                    } else {
                        tests
                            .iter()
                            .all(|b| b.get(id / 64).is_some_and(|w| w >> (id % 64) & 1 == 1))
                    };
                    if pass {
                        mask[id * w + r / 64] |= 1 << (r % 64);
                    }
                }
            }
            for p in preds {
                match p {
                    Pred::Version { op, key } => self.versions.push((r, *op, *key)),
                    Pred::Num { field, op, value } => self.numbers.push((r, *field, *op, *value)),
                    _ => {}
                }
            }
        }
        self.slot_masks = masks;
    }

    /// Sets in `out` (one bit per rule, `words()` words) the rules whose condition holds.
    #[inline]
    pub fn matching(&self, r: &Resolved, ctx: &Ctx<'_, '_>, out: &mut [u64]) {
        let w = self.words;
        out[..w].copy_from_slice(&self.bitset_rules);
        for (s, mask) in self.slot_masks.iter().enumerate() {
            let rows = mask.len() / w;
            let id = (r.ids[s] as usize).min(rows - 1);
            for (o, m) in out[..w].iter_mut().zip(&mask[id * w..id * w + w]) {
                *o &= m;
            }
        }
        for &(rule, op, key) in &self.versions {
            if !r.version.is_some_and(|v| op.holds(v.cmp(&key))) {
                out[rule / 64] &= !(1 << (rule % 64));
            }
        }
        for &(rule, field, op, value) in &self.numbers {
            let holds = matches!(ctx.get(field), Value::U64(v) if op.holds(v.cmp(&value)));
            if !holds {
                out[rule / 64] &= !(1 << (rule % 64));
            }
        }
        for &rule in &self.general {
            if eval(&self.rules[rule], r, ctx) {
                out[rule / 64] |= 1 << (rule % 64);
            }
        }
    }

    /// Words in a rule bitset.
    pub fn words(&self) -> usize {
        self.words
    }

    fn slot(&mut self, field: Field) -> usize {
        if let Some(i) = self.slots.iter().position(|s| s.field == field) {
            return i;
        }
        self.slots.push(StrSlot {
            field,
            literals: HashMap::new(),
            by_sym: Vec::new(),
        });
        self.slots.len() - 1
    }

    fn literal_id(&mut self, slot: usize, s: &str) -> u32 {
        let lits = &mut self.slots[slot].literals;
        let next = lits.len() as u32;
        *lits.entry(s.into()).or_insert(next)
    }

    fn set(&mut self, field: Field, lits: &[Lit]) -> Option<Pred> {
        let strs: Option<Vec<&str>> = lits
            .iter()
            .map(|l| match l {
                Lit::Str(s) if !field.is_numeric() && field != Field::ClientIp => Some(s.as_str()),
                _ => None,
            })
            .collect();
        let strs = strs?;
        let slot = self.slot(field);
        let ids: Vec<u32> = strs.iter().map(|s| self.literal_id(slot, s)).collect();
        let words = ids.iter().max().map_or(1, |m| *m as usize / 64 + 1);
        let mut bits = vec![0u64; words];
        for id in ids {
            bits[id as usize / 64] |= 1 << (id % 64);
        }
        Some(Pred::In {
            slot,
            bits: bits.into(),
        })
    }

    fn compile(&mut self, e: &Expr) -> CExpr {
        let pred = match e {
            Expr::True => return CExpr::True,
            Expr::Not(x) => return CExpr::Not(Box::new(self.compile(x))),
            Expr::And(xs) => return CExpr::And(xs.iter().map(|x| self.compile(x)).collect()),
            Expr::Or(xs) => return CExpr::Or(xs.iter().map(|x| self.compile(x)).collect()),
            Expr::In(field, lits) => self.set(*field, lits),
            Expr::Cmp(field, Op::Eq, lit) => self.set(*field, std::slice::from_ref(lit)),
            Expr::Cmp(field, Op::Ne, lit) => {
                if let Some(p) = self.set(*field, std::slice::from_ref(lit)) {
                    return CExpr::Not(Box::new(CExpr::Pred(p)));
                }
                None
            }
            Expr::Cmp(field, op, Lit::U64(value)) => Some(Pred::Num {
                field: *field,
                op: *op,
                value: *value,
            }),
            Expr::Cmp(Field::AppVersion, op, Lit::Version(key, _)) => {
                self.needs_version = true;
                Some(Pred::Version { op: *op, key: *key })
            }
            Expr::Cmp(..) => None,
        };
        CExpr::Pred(pred.unwrap_or_else(|| Pred::Interpret(e.clone())))
    }

    /// Resolves the fields the rules read, once per event.
    #[inline]
    pub fn resolve(&self, ctx: &Ctx<'_, '_>) -> Resolved {
        let mut r = Resolved {
            ids: [UNKNOWN; Field::ALL.len()],
            version: None,
        };
        let e = &ctx.enriched;
        for (i, slot) in self.slots.iter().enumerate() {
            let sym = match slot.field {
                Field::GeoCountry => e.geo.map(|g| g.country),
                Field::GeoRegion => e.geo.map(|g| g.region),
                Field::DeviceBrand => e.device.map(|d| d.brand),
                Field::DeviceModel => e.device.map(|d| d.model),
                Field::DevicePlatform => e.device.map(|d| d.platform),
                Field::DeviceOs => e.device.map(|d| d.os),
                Field::CustomerPlan => e.customer.map(|c| c.plan),
                Field::CustomerSignupCountry => e.customer.map(|c| c.signup_country),
                f => {
                    if let Value::Str(s) = ctx.get(f) {
                        r.ids[i] = slot.literals.get(s).copied().unwrap_or(UNKNOWN);
                    }
                    continue;
                }
            };
            if let Some(sym) = sym {
                r.ids[i] = slot.by_sym.get(sym.index()).copied().unwrap_or(UNKNOWN);
            }
        }
        if self.needs_version {
            r.version = super::version_key(ctx.event.app_version);
        }
        r
    }

    /// Whether rule `i`'s condition holds (before sampling).
    #[inline]
    pub fn matches(&self, i: usize, r: &Resolved, ctx: &Ctx<'_, '_>) -> bool {
        eval(&self.rules[i], r, ctx)
    }
}

fn eval(e: &CExpr, r: &Resolved, ctx: &Ctx<'_, '_>) -> bool {
    match e {
        CExpr::True => true,
        CExpr::Pred(p) => match p {
            Pred::In { slot, bits } => {
                let id = r.ids[*slot] as usize;
                bits.get(id / 64).is_some_and(|w| w >> (id % 64) & 1 == 1)
            }
            Pred::Num { field, op, value } => match ctx.get(*field) {
                Value::U64(v) => op.holds(v.cmp(value)),
                _ => false,
            },
            Pred::Version { op, key } => r.version.is_some_and(|v| op.holds(v.cmp(key))),
            Pred::Interpret(x) => x.eval(ctx),
        },
        CExpr::Not(x) => !eval(x, r, ctx),
        CExpr::And(xs) => xs.iter().all(|x| eval(x, r, ctx)),
        CExpr::Or(xs) => xs.iter().any(|x| eval(x, r, ctx)),
    }
}
