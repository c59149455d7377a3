//! The condition language's lexer and parser (the grammar is in the [module docs](super)).

use std::fmt;

use super::expr::{Expr, Lit, Op, version_key};
use super::field::Field;

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
