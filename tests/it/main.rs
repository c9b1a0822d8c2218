//! The integration tests, one test binary: each module is a topic, every
//! server is real (in process on 127.0.0.1:0, or the `case-export` binary
//! as a child), and the helpers they share live in `tests/support`.
//!
//! One binary links tonic, SQLite and the crate once instead of once per
//! topic. Its tests run as threads of one process; every server has its
//! own metrics registry, so none counts another's calls.

#[path = "../support/mod.rs"]
mod support;

mod audit_tamper;
mod auth_audit;
mod cli;
mod deploy;
mod export_service;
mod fernet_vectors;
mod grpcurl;
mod hostile_input;
mod observability;
mod pg_compare;
mod pg_faults;
mod pg_seed;
mod pg_source;
mod pg_trail;
mod python_interop;
mod receipts;
mod recipients;
mod reliability;
mod seal_format;
mod snapshot_scope;
