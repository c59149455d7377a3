//! The rule set: rules as written, compiled (parsed, checked against the fields' types), and
//! their errors.

use super::expr::Expr;
use super::field::{FIELDS_PER_RULE_MAX, Field, PROJECTED_FIELDS_MAX, STREAMS_MAX};
use super::parse::parse;

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
        self.sampler().keeps(event_id)
    }

    /// The rule's sampling decision, apart from the rule.
    pub fn sampler(&self) -> Sampler {
        Sampler {
            under: self.sample.map(|_| self.sample_under),
            salt: self.salt,
        }
    }
}

/// A rule's sampling: which matches it keeps ([`Rule::keeps`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sampler {
    /// Kept matches are those whose sampling hash is under this (of 1,000,000); `None`: all.
    under: Option<u64>,
    salt: u64,
}

impl Sampler {
    /// Whether a match of event `event_id` is kept.
    #[inline]
    pub fn keeps(&self, event_id: u64) -> bool {
        match self.under {
            None => true,
            Some(under) => sluice_protocol::mix64(event_id ^ self.salt) % 1_000_000 < under,
        }
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
        let mut projected = std::collections::HashSet::new();
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
            if s.streams.iter().any(|&x| x >= STREAMS_MAX) {
                return Err(err(
                    RulePart::To,
                    format!("a rule writes only to the first {STREAMS_MAX} streams"),
                ));
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
            projected.extend(fields.iter().copied());
            if projected.len() > PROJECTED_FIELDS_MAX {
                return Err(err(
                    RulePart::Fields,
                    format!(
                        "the rules project at most {PROJECTED_FIELDS_MAX} distinct fields between them"
                    ),
                ));
            }
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
