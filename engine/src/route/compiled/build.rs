//! Compiling a route set into a [`Matcher`]: each rule's conjuncts sorted into slot and
//! residual ones, each slot's literals and rows, and the bitset of the rules each row lets
//! through.

use hashbrown::HashMap;

use super::slots::{
    Row, Slot, SlotKey, SlotKind, Values, collect_literals, conjunct_slot, conjuncts, eval_row,
    row_of,
};
use super::{ENRICHMENT, Matcher, Simd, SymProbe, is_enrichment};
use crate::route::strtab::StrTable;
use crate::route::{Expr, RouteSet};

/// The rules' conditions, sorted.
struct Sorted<'r> {
    /// The slots the rules read, in the order first read.
    keys: Vec<SlotKey>,
    /// Per rule, its slot conjuncts: (index into `keys`, conjunct).
    by_rule: Vec<Vec<(usize, &'r Expr)>>,
    /// Per rule, its residual conjuncts as one condition.
    residual: Vec<Option<Expr>>,
    /// Rules that can match at all (no constant conjunct of theirs is false).
    base: Vec<u64>,
}

/// Sorts each rule's conjuncts into slot ones and residual ones.
fn sort(routes: &RouteSet, words: usize) -> Sorted<'_> {
    let rules = routes.rules();
    let mut sorted = Sorted {
        keys: Vec::new(),
        by_rule: Vec::with_capacity(rules.len()),
        residual: Vec::with_capacity(rules.len()),
        base: vec![0u64; words],
    };
    for (r, rule) in rules.iter().enumerate() {
        let mut mine = Vec::new();
        let mut rest = Vec::new();
        let mut never = false;
        for c in conjuncts(&rule.expr) {
            match conjunct_slot(c) {
                Some(Some(key)) => {
                    let keys = &mut sorted.keys;
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
            sorted.base[r / 64] |= 1 << (r % 64);
        }
        sorted.by_rule.push(mine);
        sorted.residual.push(match rest.len() {
            0 => None,
            1 => rest.pop(),
            _ => Some(Expr::And(rest)),
        });
    }
    sorted
}

/// Each slot with the literals its conjuncts name.
fn slots(sorted: &Sorted<'_>) -> Vec<Slot> {
    let mut slots: Vec<Slot> = sorted
        .keys
        .iter()
        .map(|&(field, kind)| Slot {
            field,
            values: match kind {
                SlotKind::Str => Values::Str {
                    literals: HashMap::new(),
                    table: StrTable::new([]),
                },
                SlotKind::Ip => Values::Ip {
                    literals: HashMap::new(),
                },
                SlotKind::Number | SlotKind::Version => Values::Ord {
                    points: Vec::new(),
                    version: kind == SlotKind::Version,
                },
            },
        })
        .collect();
    for conjs in &sorted.by_rule {
        for &(s, c) in conjs {
            collect_literals(c, &mut slots[s].values);
        }
    }
    for slot in &mut slots {
        match &mut slot.values {
            Values::Ord { points, .. } => {
                points.sort_unstable();
                points.dedup();
            }
            Values::Str { literals, table } if !is_enrichment(slot.field) => {
                let mut by_id: Vec<(&str, u32)> =
                    literals.iter().map(|(s, &id)| (&**s, id)).collect();
                by_id.sort_by_key(|(_, id)| *id);
                *table = StrTable::new(by_id.into_iter().map(|(s, _)| s));
            }
            _ => {}
        }
    }
    slots
}

/// Compiles `routes`, with the AND done by `simd`; its symbol probes are not synced yet.
pub(super) fn build(routes: &RouteSet, simd: Simd) -> Matcher {
    let words = routes.rules().len().div_ceil(64).max(1);
    let sorted = sort(routes, words);
    let slots = slots(&sorted);
    let mut masks = Vec::new();
    let mut slot_at = Vec::with_capacity(slots.len());
    let mut sym_probes = Vec::new();
    let mut probes = Vec::new();
    let mut version_probe = None;
    for (s, slot) in slots.iter().enumerate() {
        let at = masks.len();
        slot_at.push(at);
        match (
            &slot.values,
            ENRICHMENT.iter().position(|f| *f == slot.field),
        ) {
            (Values::Str { literals, .. }, Some(field)) => sym_probes.push(SymProbe {
                field,
                slot: s,
                offs: Vec::new(),
                other: (at + literals.len() * words) as u32,
            }),
            (Values::Ord { version: true, .. }, _) => version_probe = Some(s),
            _ => probes.push(s),
        }
        // Each row's bitset: the rules whose conjuncts on this slot all hold there.
        for row in 0..slot.rows() {
            let at = row_of(slot, row);
            let start = masks.len();
            masks.resize(start + words, 0u64);
            let bits = &mut masks[start..];
            for (r, conjs) in sorted.by_rule.iter().enumerate() {
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
    for (r, x) in sorted.residual.iter().enumerate() {
        if x.is_some() {
            residual_rules[r / 64] |= 1 << (r % 64);
        }
    }
    Matcher {
        words,
        slots,
        masks: masks.into(),
        slot_at,
        sym_probes,
        synced: 0,
        probes,
        version_probe,
        base: sorted.base.into(),
        any_residual: sorted.residual.iter().any(Option::is_some),
        residual_rules: residual_rules.into(),
        residual: sorted.residual,
        simd,
    }
}
