//! What the integration tests (`tests/it`) and the benchmarks
//! (`benches/export`) share: one seeded-database helper, one principal
//! set, one server in process and one as a child process, one poll helper,
//! good exports checked against their receipt, the external tools, and
//! readers of trails, rows and metrics.
//!
//! Every wait is bounded and every child process is killed and reaped when
//! its guard drops, even while a test panics.

// Each user takes a different subset of these helpers.
#![allow(dead_code)]

mod audit;
mod child;
mod export;
mod metrics;
mod pg;
mod poll;
mod principals;
mod process;
mod proxy;
mod rows;
mod sealed;
mod seed;
mod server;
mod tools;

pub use audit::*;
pub use child::*;
pub use export::*;
pub use metrics::*;
pub use pg::*;
pub use poll::*;
pub use principals::*;
pub use process::*;
pub use proxy::*;
pub use rows::*;
pub use sealed::*;
pub use seed::*;
pub use server::*;
pub use tools::*;
