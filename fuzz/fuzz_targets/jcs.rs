//! RFC 8785 canonicalization, the parameter digest and the presented form: any JSON gives a
//! canonical form that is itself JSON, canonicalizes to itself, and has the same digest as the
//! input; the number check reads any bytes without panicking and agrees with the parsed value
//! where the text parses; a presented form is always accepted by the broker's check of it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera::token::jcs::{canonicalize, check_numbers, check_value_numbers, params_digest};
use tessera::token::presented::{check_presented, presented};

fuzz_target!(|data: &[u8]| {
    let numbers_ok = check_numbers(data).is_ok();
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    if numbers_ok {
        // Text that passes has no integer beyond ±(2^53 − 1) to hide from the value check.
        assert!(check_value_numbers(&value).is_ok(), "the text check passed what the value check refuses");
    }
    let canonical = canonicalize(&value);
    let reparsed: serde_json::Value = serde_json::from_str(&canonical).expect("canonical form is JSON");
    assert_eq!(canonicalize(&reparsed), canonical, "canonicalization is idempotent");
    assert_eq!(params_digest(&reparsed), params_digest(&value));
    if let Ok(shown) = presented(&value, &["value", "secret"]) {
        check_presented(&shown).expect("a presented form passes the broker's check");
    }
});
