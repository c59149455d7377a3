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

mod expr;
mod field;
mod parse;
mod rules;

pub mod compiled;
mod strtab;

pub use expr::{Expr, Lit, Op, version_key};
pub use field::{
    ATTR_PREFIX, Ctx, FIELDS_PER_RULE_MAX, Field, PROJECTED_FIELDS_MAX, STREAMS_MAX, Value,
};
pub use parse::{ParseError, parse};
pub use rules::{RouteSet, Rule, RuleError, RulePart, RuleSource, Sampler};

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

    /// The pipeline keeps a rule's streams and fields as `u16` ids: a route set beyond them
    /// is refused with the rule that crosses the line.
    #[test]
    fn stream_and_field_limits_are_errors() {
        let rule = |name: String, streams: Vec<usize>, fields: Vec<String>| RuleSource {
            name,
            streams,
            when: "true".into(),
            fields,
            sample: None,
        };
        let fields = || vec!["event_id".to_string()];
        let ok = RouteSet::compile(&[rule("a".into(), vec![STREAMS_MAX - 1], fields())], None);
        assert!(ok.is_ok());
        let err = RouteSet::compile(&[rule("a".into(), vec![0, STREAMS_MAX], fields())], None)
            .unwrap_err();
        assert_eq!((err.rule, err.part), (0, RulePart::To), "{err:?}");
        assert!(err.reason.contains("first 65536 streams"), "{err:?}");

        // Distinct attributes, 64 to a rule: the rule that brings the count past the limit.
        let names: Vec<String> = (0..=PROJECTED_FIELDS_MAX)
            .map(|i| format!("attrs.limit_{i}"))
            .collect();
        let rules: Vec<RuleSource> = names
            .chunks(FIELDS_PER_RULE_MAX)
            .enumerate()
            .map(|(i, c)| rule(format!("r{i}"), vec![0], c.to_vec()))
            .collect();
        let err = RouteSet::compile(&rules, None).unwrap_err();
        assert_eq!(err.rule, rules.len() - 1, "{err:?}");
        assert_eq!(err.part, RulePart::Fields);
        assert!(
            err.reason.contains("at most 32767 distinct fields"),
            "{err:?}"
        );
        assert!(RouteSet::compile(&rules[..rules.len() - 1], None).is_ok());
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
