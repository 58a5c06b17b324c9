//! The library's integration tests, one crate (one build and link instead of fifteen), a
//! module per concern; `cargo test --test integration <module>::` runs one of them. The
//! `metrics` feature's tests (`tests/metrics.rs`, `tests/prometheus.rs`) stay separate,
//! since they need that feature, and so does `tests/robustness.rs`, whose tests count the
//! whole process's threads and file descriptors.

mod support;

mod api;
mod capacity;
mod certificates;
mod conformance;
mod deadlock;
mod examples;
mod fuzz_regressions;
mod fuzz_wire;
mod node;
mod observe;
mod peer;
mod protocol;
mod smoke;
mod tls;
