//! Slots: what the bitset matcher reads from an event, each slot one field read one way, and
//! its rows, the classes of values that no conjunct on the slot tells apart.

use std::net::IpAddr;

use hashbrown::HashMap;

use crate::route::strtab::StrTable;
use crate::route::{Expr, Field, Lit, Op};

/// A slot's literals, which say its rows and how an event's row is found.
#[derive(Debug, Clone)]
pub(super) enum Values {
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
pub(super) struct Slot {
    pub field: Field,
    pub values: Values,
}

impl Slot {
    pub fn rows(&self) -> usize {
        match &self.values {
            Values::Str { literals, .. } => literals.len() + 2,
            Values::Ip { literals } => literals.len() + 1,
            Values::Ord { points, .. } => 2 * points.len() + 2,
        }
    }

    pub fn null_row(&self) -> usize {
        self.rows() - 1
    }
}

/// The row a slot conjunct is asked about.
#[derive(Debug, Clone, Copy)]
pub(super) enum Row {
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

/// Whether a field is on every event (so `exists` holds).
pub(super) fn always_there(f: Field) -> bool {
    !f.name().contains('.')
}

/// How a slot reads its field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SlotKind {
    /// By string equality.
    Str,
    /// By IP equality.
    Ip,
    /// As a number, in order.
    Number,
    /// `app_version` as a version, in order.
    Version,
}

/// Which slot a leaf reads.
pub(super) type SlotKey = (Field, SlotKind);

fn leaf_slot(e: &Expr) -> Option<SlotKey> {
    let by_lit = |f: Field, l: &Lit| match l {
        Lit::Str(_) => (f, SlotKind::Str),
        Lit::Ip(_) => (f, SlotKind::Ip),
        Lit::U64(_) => (f, SlotKind::Number),
        Lit::Version(..) => (f, SlotKind::Version),
    };
    match e {
        Expr::Cmp(f, _, l) => Some(by_lit(*f, l)),
        Expr::In(f, ls) | Expr::NotIn(f, ls) => ls.first().map(|l| by_lit(*f, l)),
        Expr::Exists(f) if !always_there(*f) => Some((
            *f,
            if f.is_numeric() {
                SlotKind::Number
            } else {
                SlotKind::Str
            },
        )),
        _ => None,
    }
}

/// How a conjunct reads the event: `None` if it needs the interpreter, else the one slot it
/// reads (`Some(None)` when it reads none: it is a constant).
pub(super) fn conjunct_slot(e: &Expr) -> Option<Option<SlotKey>> {
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

pub(super) fn conjuncts(e: &Expr) -> Vec<&Expr> {
    match e {
        Expr::And(xs) => xs.iter().flat_map(conjuncts).collect(),
        e => vec![e],
    }
}

/// The row of an ordered slot that `v` falls in.
#[inline(always)]
pub(super) fn ord_row(slot: &Slot, v: Option<u64>) -> usize {
    let (Values::Ord { points, .. }, Some(v)) = (&slot.values, v) else {
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
pub(super) fn row_of(slot: &Slot, row: usize) -> Row {
    if row == slot.null_row() && !matches!(slot.values, Values::Ip { .. }) {
        return Row::Null;
    }
    match &slot.values {
        Values::Str { literals, .. } if row == literals.len() => Row::Other,
        Values::Ip { literals } if row == literals.len() => Row::Other,
        Values::Str { .. } | Values::Ip { .. } => Row::Lit(row as u32),
        Values::Ord { .. } if row % 2 == 1 => Row::Point(row / 2),
        Values::Ord { .. } => Row::Gap(row / 2),
    }
}

pub(super) fn collect_literals(e: &Expr, values: &mut Values) {
    let mut add = |l: &Lit| match (l, &mut *values) {
        (Lit::Str(s), Values::Str { literals, .. }) => {
            let next = literals.len() as u32;
            literals.entry(s.as_str().into()).or_insert(next);
        }
        (Lit::Ip(ip), Values::Ip { literals }) => {
            let next = literals.len() as u32;
            literals.entry(*ip).or_insert(next);
        }
        (Lit::U64(v) | Lit::Version(v, _), Values::Ord { points, .. }) => points.push(*v),
        _ => {}
    };
    match e {
        Expr::Cmp(_, _, l) => add(l),
        Expr::In(_, ls) | Expr::NotIn(_, ls) => ls.iter().for_each(add),
        Expr::Not(x) => collect_literals(x, values),
        Expr::And(xs) | Expr::Or(xs) => xs.iter().for_each(|x| collect_literals(x, values)),
        _ => {}
    }
}

/// The id (string, IP) or point index (ordered) of a literal in its slot.
fn literal_index(slot: &Slot, l: &Lit) -> Option<usize> {
    match (l, &slot.values) {
        (Lit::Str(s), Values::Str { literals, .. }) => {
            literals.get(s.as_str()).map(|&i| i as usize)
        }
        (Lit::Ip(ip), Values::Ip { literals }) => literals.get(ip).map(|&i| i as usize),
        (Lit::U64(v) | Lit::Version(v, _), Values::Ord { points, .. }) => {
            points.binary_search(v).ok()
        }
        _ => None,
    }
}

/// Whether a conjunct that reads only `slot` (or nothing) holds for a value in `row`.
pub(super) fn eval_row(e: &Expr, slot: Option<&Slot>, row: Row) -> bool {
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
