//! The condition tree and its interpreter: the plain, obviously right reading of a rule that
//! the compiled matcher is tested against.

use std::fmt;
use std::net::IpAddr;

use super::field::{Ctx, Field, Value};

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
    pub fn symbol(self) -> &'static str {
        match self {
            Op::Eq => "==",
            Op::Ne => "!=",
            Op::Ge => ">=",
            Op::Gt => ">",
            Op::Le => "<=",
            Op::Lt => "<",
        }
    }

    pub fn holds(self, ord: std::cmp::Ordering) -> bool {
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
