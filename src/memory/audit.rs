//! `homeostat audit`: checks the memory end to end and prints what was
//! decided, with no instance running.

use std::fmt;

use super::journal::{self, Problem};
use super::{Loaded, Storage, StorageError, StoredDecision};

/// One writer's chain, as verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainReport {
    pub node: String,
    pub entries: usize,
    pub objects: usize,
    /// The last entry's seq and hash: keep it to notice, later, a chain cut
    /// short at its end (the one removal a chain cannot show by itself).
    pub head: Option<(u64, String)>,
}

/// What `audit verify` found.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    pub location: String,
    pub chains: Vec<ChainReport>,
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let entries: usize = self.chains.iter().map(|c| c.entries).sum();
        writeln!(
            f,
            "{}: {} writer{}, {entries} entries",
            self.location,
            self.chains.len(),
            if self.chains.len() == 1 { "" } else { "s" }
        )?;
        for c in &self.chains {
            let broken = self.problems.iter().filter(|p| p.node == c.node).count();
            write!(
                f,
                "  node {}: {} entries in {} objects",
                c.node, c.entries, c.objects
            )?;
            if let Some((seq, hash)) = &c.head {
                write!(f, ", head entry {seq} {hash}")?;
            }
            if broken == 0 {
                writeln!(f, ": ok")?;
            } else {
                writeln!(
                    f,
                    ": {broken} problem{}",
                    if broken == 1 { "" } else { "s" }
                )?;
            }
        }
        if let Some(first) = self.problems.first() {
            writeln!(f, "first broken entry: {first}")?;
            for p in &self.problems[1..] {
                writeln!(f, "also: {p}")?;
            }
        }
        Ok(())
    }
}

/// Re-reads every entry of every writer and checks every hash and link.
pub async fn verify(storage: &Storage) -> Result<VerifyReport, StorageError> {
    let mut report = VerifyReport {
        location: storage.location().to_owned(),
        ..Default::default()
    };
    for node in journal::nodes(storage).await? {
        let (entries, problems) = journal::read_chain(storage, &node).await?;
        let mut objects: Vec<&str> = entries.iter().map(|e| e.object.as_str()).collect();
        objects.dedup();
        report.chains.push(ChainReport {
            node: node.clone(),
            entries: entries.len(),
            objects: objects.len(),
            head: entries.last().map(|e| (e.entry.seq, e.hash.clone())),
        });
        report.problems.extend(problems);
    }
    Ok(report)
}

/// Which decisions `audit log` prints.
#[derive(Debug, Clone, Default)]
pub struct LogFilter {
    pub rule: Option<String>,
    /// Decisions made at or after (UTC nanoseconds).
    pub since: Option<i64>,
}

/// Every writer's decisions as they stand, oldest first.
pub fn decisions(loaded: &Loaded, filter: &LogFilter) -> Vec<StoredDecision> {
    let mut all: Vec<StoredDecision> = loaded
        .chains
        .keys()
        .flat_map(|node| loaded.decisions(node))
        .filter(|s| filter.rule.as_ref().is_none_or(|r| &s.decision.rule == r))
        .filter(|s| filter.since.is_none_or(|t| s.decision.at >= t))
        .collect();
    all.sort_by(|a, b| (a.decision.at, &a.decision.id).cmp(&(b.decision.at, &b.decision.id)));
    all
}

/// One line per decision: when, rule, instance, verdict, run, outcome, why.
pub fn render(decisions: &[StoredDecision]) -> String {
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::ASCII_MARKDOWN);
    table.set_header([
        "at", "rule", "labels", "trigger", "verdict", "run", "outcome", "choice", "reason", "id",
    ]);
    for s in decisions {
        let d = &s.decision;
        let labels: Vec<String> = d.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        table.add_row([
            crate::act::policy::rfc3339(d.at),
            d.rule.clone(),
            labels.join(","),
            d.trigger.name().to_owned(),
            d.policy.verdict.name().to_owned(),
            d.run.as_ref().map_or("-", |r| r.status.name()).to_owned(),
            d.outcome.name().to_owned(),
            d.reasoning
                .decision
                .as_ref()
                .map_or(String::new(), |c| c.option.clone()),
            d.policy.reason.clone(),
            d.id.clone(),
        ]);
    }
    let n = decisions.len();
    format!("{table}\n{n} decision{}\n", if n == 1 { "" } else { "s" })
}
