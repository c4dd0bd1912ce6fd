//! JSON Schemas of rule files and test files, generated from the very types
//! `homeostat check` and `homeostat test` deserialize them into, so that an
//! editor validating against them and the binary never disagree.
//!
//! `homeostat schema rules` and `homeostat schema tests` print them; the
//! copies in `docs/schemas/` are kept equal by a test. Editors that read
//! TOML with JSON Schemas (taplo, Even Better TOML) take them with a
//! `#:schema ../docs/schemas/rules.schema.json` first line or a
//! `[[rule]]`-style association in their settings.

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};

use super::file::RuleFile;
use super::testing::TestFile;

/// A humantime duration as written in every file: "90s", "1h 30m", "500ms".
pub struct HumanDuration;

impl JsonSchema for HumanDuration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "A duration: a number and a unit (ns, us, ms, s, m, h, d, w), repeated: \"90s\", \"1h 30m\", \"500ms\".",
            "pattern": "^\\s*([0-9]+\\s*(nsec|ns|usec|us|µs|msec|ms|seconds|second|sec|s|minutes|minute|min|m|hours|hour|hr|h|days|day|d|weeks|week|w|months|month|M|years|year|y)\\s*)+$"
        })
    }
}

/// Any TOML value (a span or log attribute).
pub struct AnyValue;

impl JsonSchema for AnyValue {
    fn schema_name() -> Cow<'static, str> {
        "AttributeValue".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "An attribute value: a string, number, boolean or an array of them."
        })
    }
}

/// The schema of a rule file (`rules/*.toml`).
pub fn rules() -> serde_json::Value {
    with_id(schemars::schema_for!(RuleFile), "rules")
}

/// The schema of a test file (`*.test.toml`), datasets included.
pub fn tests() -> serde_json::Value {
    with_id(schemars::schema_for!(TestFile), "tests")
}

fn with_id(schema: Schema, what: &str) -> serde_json::Value {
    let mut value = schema.to_value();
    if let Some(map) = value.as_object_mut() {
        map.insert(
            "$id".into(),
            format!("https://homeostat.dev/schemas/{what}.schema.json").into(),
        );
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_strings_and_unknown_keys_are_refused() {
        let rules = rules();
        let props = &rules["properties"];
        assert_eq!(props["every"]["$ref"], "#/$defs/Duration");
        assert_eq!(rules["additionalProperties"], false);
        assert!(props["sql"].is_object());
        let tests = tests();
        assert_eq!(tests["additionalProperties"], false);
        assert!(tests["$defs"]["DatasetInfo"].is_object(), "{tests:#}");
    }
}
