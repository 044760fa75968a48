//! The three SimCLRv2 stages (plus the supervised baseline and evaluation), run on a
//! `Context`: the resolved config, the loaded data and the labelled subset.

pub mod bench_loader;
pub mod budget;
pub mod checkpoint;
pub mod config;
pub mod context;
pub mod eval;
pub mod export;
pub mod metrics;
pub mod pipeline;
pub mod plot;
pub mod stages;
pub mod trainer;

pub use context::Context;
