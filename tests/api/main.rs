//! The one integration test binary: every module drives a real broker on a loopback port.

// Test code: a panic is a failed test, with the message that says why.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod approvals;
mod architecture;
mod attacks;
mod audit;
mod capabilities;
mod connections;
mod console;
mod delegation;
mod dpop;
mod federation;
mod fleet;
mod gate;
mod helpers;
mod limits;
mod mcp;
mod operability;
mod passkeys;
mod policy;
mod proxy;
mod replicas;
mod storage;
mod tokens;
mod vectors;
