//! Versioned facts: what scripts remember between runs (`memory::put`,
//! `memory::get`, `memory::history`). Nothing is overwritten: a new value
//! closes the current version (`valid_to`) and opens the next one, SCD-2
//! style, so the history of every key can be read back.
//!
//! Bounded: at most [`MAX_KEYS`] keys and [`MAX_VERSIONS`] versions per key
//! are kept in memory (the oldest versions go first); a value larger than
//! [`MAX_VALUE_BYTES`] once serialized is refused.

use std::collections::{BTreeMap, VecDeque};

use parking_lot::RwLock;
use serde::Serialize;
use serde_json::Value;

use crate::memory::journal::{Ack, Journal, Record};

pub const MAX_KEYS: usize = 100_000;
pub const MAX_VERSIONS: usize = 100;
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

/// One version of a fact.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Fact {
    pub key: String,
    pub version: u64,
    pub value: Value,
    /// UTC nanoseconds.
    pub valid_from: i64,
    /// When the next version replaced it; `None` while current.
    pub valid_to: Option<i64>,
    /// The rule whose action wrote it.
    pub written_by: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FactError {
    #[error("value for {key:?} is {size} bytes, over the {MAX_VALUE_BYTES} byte limit")]
    TooLarge { key: String, size: usize },
    #[error("memory holds {MAX_KEYS} keys already; {key:?} is a new one")]
    TooManyKeys { key: String },
    #[error("keys are 1 to 256 characters; got {len}")]
    BadKey { len: usize },
}

/// The facts, by key.
#[derive(Debug, Default)]
pub struct Facts {
    keys: RwLock<BTreeMap<String, VecDeque<Fact>>>,
    /// Where new versions are recorded, when the memory is on storage.
    journal: std::sync::OnceLock<Journal>,
}

impl Facts {
    /// Records every new version in `journal` from now on.
    pub fn set_journal(&self, journal: Journal) {
        let _ = self.journal.set(journal);
    }

    /// Takes back versions read from the memory, in the order written.
    pub fn restore(&self, facts: Vec<Fact>) {
        let mut keys = self.keys.write();
        for fact in facts {
            let versions = keys.entry(fact.key.clone()).or_default();
            if let Some(current) = versions.back_mut()
                && current.valid_to.is_none()
            {
                current.valid_to = Some(fact.valid_from);
            }
            if versions.len() == MAX_VERSIONS {
                versions.pop_front();
            }
            versions.push_back(fact);
        }
    }

    /// Adds versions read from the whole history after a start that read
    /// only the recent ones: each version once, in the order written, at
    /// most [`MAX_VERSIONS`] per key (the newest).
    pub fn backfill(&self, facts: Vec<Fact>) {
        let mut by_key: BTreeMap<String, Vec<Fact>> = BTreeMap::new();
        for fact in facts {
            by_key.entry(fact.key.clone()).or_default().push(fact);
        }
        let mut keys = self.keys.write();
        for (key, older) in by_key {
            let versions = keys.entry(key).or_default();
            let mut all: Vec<Fact> = versions.drain(..).chain(older).collect();
            all.sort_by(|a, b| {
                (a.valid_from, a.version, &a.written_by).cmp(&(
                    b.valid_from,
                    b.version,
                    &b.written_by,
                ))
            });
            all.dedup_by(|a, b| {
                (a.valid_from, a.version, &a.written_by) == (b.valid_from, b.version, &b.written_by)
            });
            for i in 1..all.len() {
                let next = all[i].valid_from;
                if all[i - 1].valid_to.is_none() {
                    all[i - 1].valid_to = Some(next);
                }
            }
            let skip = all.len().saturating_sub(MAX_VERSIONS);
            versions.extend(all.into_iter().skip(skip));
        }
    }

    /// Like [`Facts::put`], and records the version in the journal: the
    /// answer says when it is durable.
    pub fn put_recorded(
        &self,
        key: &str,
        value: Value,
        now: i64,
        rule: &str,
    ) -> Result<(u64, Option<Ack>), FactError> {
        self.insert(key, value, now, rule, true)
    }

    /// Writes a new version of `key`, valid from `now`. Returns its version.
    pub fn put(&self, key: &str, value: Value, now: i64, rule: &str) -> Result<u64, FactError> {
        self.insert(key, value, now, rule, false).map(|(v, _)| v)
    }

    /// Writes a new version; with `record`, appends it to the journal under
    /// the same lock, so that the log has the versions in their order.
    fn insert(
        &self,
        key: &str,
        value: Value,
        now: i64,
        rule: &str,
        record: bool,
    ) -> Result<(u64, Option<Ack>), FactError> {
        if key.is_empty() || key.len() > 256 {
            return Err(FactError::BadKey { len: key.len() });
        }
        let size = serde_json::to_vec(&value).map_or(usize::MAX, |v| v.len());
        if size > MAX_VALUE_BYTES {
            return Err(FactError::TooLarge {
                key: key.to_owned(),
                size,
            });
        }
        let mut keys = self.keys.write();
        if !keys.contains_key(key) && keys.len() >= MAX_KEYS {
            return Err(FactError::TooManyKeys {
                key: key.to_owned(),
            });
        }
        let versions = keys.entry(key.to_owned()).or_default();
        let version = versions.back().map_or(1, |f| f.version + 1);
        if let Some(current) = versions.back_mut() {
            current.valid_to = Some(now);
        }
        if versions.len() == MAX_VERSIONS {
            versions.pop_front();
        }
        let fact = Fact {
            key: key.to_owned(),
            version,
            value,
            valid_from: now,
            valid_to: None,
            written_by: rule.to_owned(),
        };
        let ack = match self.journal.get() {
            Some(j) if record => Some(j.append(Record::Fact { fact: fact.clone() })),
            _ => None,
        };
        versions.push_back(fact);
        Ok((version, ack))
    }

    /// The current version of `key`.
    pub fn get(&self, key: &str) -> Option<Fact> {
        self.keys.read().get(key).and_then(|v| v.back().cloned())
    }

    /// Every kept version of `key`, oldest first.
    pub fn history(&self, key: &str) -> Vec<Fact> {
        self.keys
            .read()
            .get(key)
            .map(|v| v.iter().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_close_each_other_and_nothing_is_overwritten() {
        let facts = Facts::default();
        assert_eq!(facts.put("k", 1.into(), 10, "r").unwrap(), 1);
        assert_eq!(facts.put("k", 2.into(), 20, "r").unwrap(), 2);
        let history = facts.history("k");
        assert_eq!(history.len(), 2);
        assert_eq!(history[0].valid_to, Some(20));
        assert_eq!(history[0].value, 1);
        assert_eq!(facts.get("k").unwrap().value, 2);
        assert_eq!(facts.get("k").unwrap().valid_to, None);
        assert!(facts.get("other").is_none());
    }

    #[test]
    fn limits_are_errors() {
        let facts = Facts::default();
        let big = Value::String("x".repeat(MAX_VALUE_BYTES));
        assert!(matches!(
            facts.put("k", big, 0, "r"),
            Err(FactError::TooLarge { .. })
        ));
        assert_eq!(
            facts.put("", Value::Null, 0, "r"),
            Err(FactError::BadKey { len: 0 })
        );
        for i in 0..MAX_VERSIONS + 5 {
            facts.put("k", i.into(), i as i64, "r").unwrap();
        }
        let history = facts.history("k");
        assert_eq!(history.len(), MAX_VERSIONS);
        assert_eq!(history[0].version, 6);
    }
}
