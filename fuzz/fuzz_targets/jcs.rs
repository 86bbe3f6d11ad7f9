//! RFC 8785 canonicalization and the parameter digest: any JSON gives a canonical form that
//! is itself JSON, canonicalizes to itself, and has the same digest as the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera::token::jcs::{canonicalize, params_digest};

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    let canonical = canonicalize(&value);
    let reparsed: serde_json::Value = serde_json::from_str(&canonical).expect("canonical form is JSON");
    assert_eq!(canonicalize(&reparsed), canonical, "canonicalization is idempotent");
    assert_eq!(params_digest(&reparsed), params_digest(&value));
});
