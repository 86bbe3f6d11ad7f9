//! The token endpoint's form and client-authentication parsing: any body and any
//! Authorization header give a parsed request or a 4xx error, never a panic.
#![no_main]

use axum::http::{HeaderMap, HeaderValue, header};
use libfuzzer_sys::fuzz_target;
use tessera::server::oauth::{Form, presented_credentials};

fuzz_target!(|data: &[u8]| {
    // The first line, if any, is the Authorization header; the rest is the body.
    let (auth, body) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (Some(&data[..i]), &data[i + 1..]),
        None => (None, data),
    };
    let mut headers = HeaderMap::new();
    if let Some(v) = auth.and_then(|a| HeaderValue::from_bytes(a).ok()) {
        headers.insert(header::AUTHORIZATION, v);
    }
    match Form::parse(body) {
        Ok(form) => {
            if let Err(e) = presented_credentials(&headers, &form) {
                assert!(e.status().is_client_error());
            }
        }
        Err(e) => assert!(e.status().is_client_error()),
    }
});
