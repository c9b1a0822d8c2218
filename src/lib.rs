#![deny(missing_docs)]
//! case-export: sealed offline copies of investigation cases over gRPC.
//!
//! The library holds the server, the internal client other services link,
//! and the sealed format's reader and writer. A service that only links
//! the client builds with `default-features = false, features = ["client"]`:
//! no server, snapshot builder, custody trail or demo generator.

pub mod client;
pub mod contract;
pub mod keywrap;
pub mod pb;
pub mod receipt;
pub mod seal;

#[cfg(feature = "server")]
pub mod audit;
#[cfg(feature = "server")]
pub mod db;
#[cfg(feature = "server")]
pub mod metrics;
#[cfg(feature = "demo")]
pub mod seed;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod snapshot;
