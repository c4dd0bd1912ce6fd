//! Detection rules: SQL over event-time windows, evaluated on a schedule,
//! each result row an alert instance with its own state machine.
//!
//! - [`file`]: the rule files users write, parsed with positions.
//! - [`compile`]: a rule file planned once into a [`CompiledRule`].
//! - [`eval`]: one evaluation at a given time, on the rule's window.
//! - [`state`]: instances and their inactive → pending → firing → resolved
//!   state machine.
//! - [`engine`]: the loaded rules, reload, and the live schedule.
//! - [`functions`]: the SQL functions rules use (rate, increase, quantiles).
//! - [`testing`]: `homeostat test`, rule unit tests on virtual time.

pub mod compile;
pub mod dataset;
pub mod engine;
pub mod eval;
pub mod file;
pub mod functions;
pub mod schema;
pub mod state;
pub mod testing;

pub use compile::{CompiledRule, RulePlanner};
pub use engine::{Evaluation, LoadedRule, ReloadReport, RuleEngine, RuleEvent};
pub use file::RuleError;
pub use state::{AlertState, Instance};

/// Checks every rule under `dir` without running anything: parses, plans the
/// SQL against the tables' schemas, compiles scripts. Returns the number of
/// rules and every problem found.
pub async fn check(dir: &std::path::Path) -> (usize, Vec<RuleError>) {
    let store = crate::store::Store::new(crate::store::StoreOptions {
        memory_budget: 0,
        retention: std::time::Duration::from_secs(3600),
        partition: std::time::Duration::from_secs(60),
        max_age: std::time::Duration::MAX,
        max_future: std::time::Duration::MAX,
        flush_bytes: u64::MAX,
    });
    let planner = match RulePlanner::new(&store) {
        Ok(p) => p,
        Err(e) => {
            return (
                0,
                vec![RuleError::new(
                    dir,
                    1,
                    format!("cannot set up the planner: {e}"),
                )],
            );
        }
    };
    let files = match file::discover(dir) {
        Ok(f) => f,
        Err(e) => return (0, vec![e]),
    };
    let mut errors = Vec::new();
    let mut names: std::collections::BTreeMap<String, std::path::PathBuf> = Default::default();
    let mut ok = 0;
    for path in &files {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                errors.push(RuleError::new(
                    path,
                    1,
                    format!("cannot read rule file: {e}"),
                ));
                continue;
            }
        };
        match planner.compile(path, &text).await {
            Ok(rule) => match names.insert(rule.name.clone(), path.clone()) {
                Some(other) => errors.push(RuleError::new(
                    path,
                    file::key_line(&text, "name"),
                    format!(
                        "rule name {:?} is already used by {}",
                        rule.name,
                        other.display()
                    ),
                )),
                None => ok += 1,
            },
            Err(problems) => errors.extend(problems),
        }
    }
    (ok, errors)
}
