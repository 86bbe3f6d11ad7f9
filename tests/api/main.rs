//! The one integration test binary: every module drives a real broker on a loopback port.

// Test code: a panic is a failed test, with the message that says why.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod approvals;
mod architecture;
mod attacks;
mod checkpoints;
mod connections;
mod console;
mod dpop;
mod federation;
mod foundation;
mod gate;
mod helpers;
mod mcp;
mod operability;
mod passkeys;
mod promise;
mod proxy;
mod replicas;
mod review;
mod tokens;
mod vectors;
