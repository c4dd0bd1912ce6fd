//! The JSON Schemas of rule and test files (`homeostat schema rules|tests`)
//! checked with the JSON Schema validator editors' tooling uses
//! (`check-jsonschema`, from the test venv): every shipped rule, test and
//! dataset validates; unknown keys and wrong types do not. The copies in
//! `docs/schemas/` stay equal to what the binary prints
//! (`HOMEOSTAT_BLESS=1 cargo test --test it schemas` rewrites them).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{homeostat_cli, python, run};

const BIN: &str = env!("CARGO_BIN_EXE_homeostat");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn schema(kind: &str) -> String {
    let out = Command::new(BIN).args(["schema", kind]).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

/// Validates `files` against `schema`: Ok, or the validator's report.
fn validate(schema: &Path, files: &[PathBuf]) -> Result<(), String> {
    let (ok, text) = run(Command::new(python())
        .args(["-m", "check_jsonschema", "--schemafile"])
        .arg(schema)
        .args(files));
    if ok { Ok(()) } else { Err(text) }
}

fn toml_files(dir: &Path, tests: bool, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            toml_files(&p, tests, out);
        } else if let Some(name) = p.file_name().and_then(|n| n.to_str())
            && name.ends_with(".test.toml") == tests
            && name.ends_with(".toml")
        {
            out.push(p);
        }
    }
    out.sort();
}

#[test]
fn the_committed_schemas_are_what_the_binary_prints() {
    for kind in ["rules", "tests"] {
        let path = Path::new(ROOT).join(format!("docs/schemas/{kind}.schema.json"));
        let printed = schema(kind);
        if std::env::var_os("HOMEOSTAT_BLESS").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &printed).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == printed,
            "{} is out of date: run HOMEOSTAT_BLESS=1 cargo test --test it schemas",
            path.display()
        );
    }
}

#[test]
fn every_shipped_rule_test_and_dataset_validates_and_mistakes_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let (rules_schema, tests_schema) =
        (dir.path().join("rules.json"), dir.path().join("tests.json"));
    std::fs::write(&rules_schema, schema("rules")).unwrap();
    std::fs::write(&tests_schema, schema("tests")).unwrap();
    let shipped = Path::new(ROOT).join("rules");
    let (mut rules, mut tests) = (Vec::new(), Vec::new());
    toml_files(&shipped, false, &mut rules);
    toml_files(&shipped, true, &mut tests);
    assert!(rules.len() >= 5, "{rules:?}");
    assert!(
        tests.iter().any(|t| t.ends_with("dataset.test.toml")),
        "a captured dataset is shipped: {tests:?}"
    );
    validate(&rules_schema, &rules).unwrap();
    validate(&tests_schema, &tests).unwrap();

    let bad = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let unknown = bad("unknown.toml", "sql = \"SELECT 1\"\nevry = \"5s\"\n");
    let e = validate(&rules_schema, &[unknown]).unwrap_err();
    assert!(e.contains("evry"), "{e}");
    let wrong = bad("wrong.toml", "sql = \"SELECT 1\"\nevery = 5\n");
    let e = validate(&rules_schema, &[wrong]).unwrap_err();
    assert!(e.contains("every") || e.contains("5 is not of type"), "{e}");
    let duration = bad("duration.toml", "sql = \"SELECT 1\"\nevery = \"soon\"\n");
    assert!(validate(&rules_schema, &[duration]).is_err());
    let action = bad(
        "action.toml",
        "sql = \"SELECT 1\"\n[action]\ninline = \"1\"\non = [\"sometimes\"]\n",
    );
    assert!(validate(&rules_schema, &[action]).is_err());
    let test = bad(
        "x.test.toml",
        "[[test]]\nname = \"t\"\nduration = \"1m\"\nexpected = []\n",
    );
    let e = validate(&tests_schema, &[test]).unwrap_err();
    assert!(e.contains("expected"), "{e}");
    // And `homeostat check` refuses the same mistakes, by file and line.
    let check = tempfile::tempdir().unwrap();
    std::fs::write(
        check.path().join("r.toml"),
        "sql = \"SELECT 1 AS x\"\nevry = \"5s\"\n",
    )
    .unwrap();
    let (ok, text) = homeostat_cli(&["check", check.path().to_str().unwrap()]);
    assert!(!ok, "{text}");
    assert!(text.contains("r.toml:2") && text.contains("evry"), "{text}");
}
