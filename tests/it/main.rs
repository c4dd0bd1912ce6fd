//! Integration tests: each starts Homeostat in-process on 127.0.0.1:0 ports
//! and talks to it over the network, as a user's SDK or Collector would.
//! One test binary (not one per file) keeps linking time down.

mod access;
mod actions;
mod backpressure;
mod bad_input;
mod cluster;
mod common;
mod config_files;
mod dashboard;
mod datasets;
mod docs;
mod durability;
mod json;
mod memory;
mod metrics;
mod overload;
mod policies;
mod rules;
mod s3;
mod schemas;
mod sdk;
mod startup;
mod store;
