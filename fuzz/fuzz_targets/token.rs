//! Token parsing and verification: whatever the bytes, no panic, and nothing but a real
//! signature of the trusted key ever verifies.
#![no_main]

use std::collections::HashMap;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use tessera::verify::{Policy, PublicKey};

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else { return };
    let mut keys = HashMap::new();
    keys.insert(
        "k1".to_owned(),
        Arc::new(PublicKey { kid: "k1".into(), alg: "EdDSA".into(), raw: vec![0x3d; 32] }),
    );
    let policy = Policy::new("http://127.0.0.1:8700", "core");
    // No key here has a known private half, so nothing can verify.
    assert!(policy.verify_access(&keys, token, 1_800_000_000).is_err());
    assert!(policy.verify_capability(&keys, token, 1_800_000_000).is_err());
    if let Ok(jws) = tessera::token::UnverifiedJws::parse(token) {
        let _ = jws.claims::<serde_json::Value>();
    }
});
