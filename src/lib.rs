#![deny(missing_docs)]
//! case-export: sealed offline copies of investigation cases over gRPC.
//!
//! The library holds the server, the internal client other services link,
//! and the sealed format's reader and writer.

pub mod audit;
pub mod client;
pub mod contract;
pub mod metrics;
pub mod pb;
pub mod seal;
pub mod seed;
pub mod server;
pub mod snapshot;
