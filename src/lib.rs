//! Homeostat: an embedded stream-processing engine for telemetry-driven
//! remediation.
//!
//! # Layout
//!
//! The modules follow the data:
//!
//! - [`ingest`]: OTLP receivers (gRPC and HTTP) and the pure converters from
//!   OTLP messages to Arrow record batches, one file per signal.
//! - [`store`]: time-partitioned in-memory tables under a memory budget,
//!   exposed to DataFusion as table providers that prune by time.
//! - [`query`]: SQL over the tables (DataFusion), read-only and bounded.
//! - [`api`]: the HTTP API: queries, health, metrics.
//! - [`memory`]: the episodic memory on object storage (decision log,
//!   facts, telemetry archive), append-only and hash-chained.
//! - [`cluster`]: replicas sharing one storage: heartbeats, claims on
//!   episodes, takeover, and the shared view of every writer's decisions.
//! - [`server`]: starts and stops an instance: listeners, tasks, shutdown.
//! - [`config`]: the TOML configuration and its defaults.
//! - [`internal_events`]: the engine's own typed events and metrics.

pub mod act;
pub mod api;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod decisions;
pub mod ingest;
pub mod internal_events;
pub mod memory;
pub mod query;
pub mod rules;
pub mod serde_duration;
pub mod server;
pub mod store;
