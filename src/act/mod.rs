//! Acting on alerts: rule actions run in a sandbox, behind policies, each
//! producing a decision.
//!
//! - [`config`]: the rule's `[action]` section and the global limits.
//! - [`sandbox`]: the Rhai engine every script runs in, and its limits.
//! - [`host`]: the host modules scripts reach the world through.
//! - [`policy`]: episode, cooldown, rate, concurrency and approval checks.
//! - [`actor`]: from alert transitions to decisions, runs and outcomes.

pub mod actor;
pub mod config;
pub mod host;
pub mod policy;
pub mod sandbox;

/// Stack of the threads scripts run on: deep expressions in debug builds
/// need more than a default thread's 2 MiB before the call-depth limit
/// stops them.
pub const SCRIPT_STACK: usize = 16 << 20;
