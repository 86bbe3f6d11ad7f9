//! Tessera's benchmark: `cargo bench --bench tessera [-- --json PATH] [-- --quick]`.
//!
//! Every figure is reported next to the raw limit measured in the same run, because these
//! machines are noisy and absolute times are not stable:
//!
//! - raw ring Ed25519 sign and verify rates on one core;
//! - in-process minting (`Signer::sign_access`) against raw sign;
//! - in-process verification (`Policy::verify_access`, keys cached) against raw verify.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: a panic is a failed run

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde_json::json;
use tessera::domain::CallerKind;
use tessera::token::AccessClaims;
use tessera::token::claims::Audience;
use tessera::verify::{Policy, PublicKey};

/// Runs `f` repeatedly for about `budget` and returns operations per second (best of 3).
fn rate(budget: Duration, mut f: impl FnMut()) -> f64 {
    let mut best = 0.0f64;
    for _ in 0..3 {
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < budget / 3 {
            for _ in 0..64 {
                f();
            }
            n += 64;
        }
        best = best.max(n as f64 / start.elapsed().as_secs_f64());
    }
    best
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let json_out = args.iter().position(|a| a == "--json").and_then(|i| args.get(i + 1)).cloned();
    let budget = if quick { Duration::from_millis(600) } else { Duration::from_secs(3) };

    let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
    let pair = Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let signer = tessera::keys::generate(dir.path()).unwrap();
    let now = 1_800_000_000;
    let claims = AccessClaims {
        iss: "http://127.0.0.1:8700".into(),
        sub: "tc_AAAAAAAAAAAAAAAAAAAAAA".into(),
        client_id: "tc_AAAAAAAAAAAAAAAAAAAAAA".into(),
        aud: Audience::One("core".into()),
        iat: now,
        nbf: now,
        exp: now + 300,
        jti: "BBBBBBBBBBBBBBBBBBBBBB".into(),
        scope: "approvals:create workspaces:read workspaces:write".into(),
        tenant: "org-1".into(),
        caller_kind: CallerKind::Agent,
        workspace: None,
        act: None,
    };
    let token = signer.sign_access(&claims).unwrap();
    let signing_input_len = token.rfind('.').unwrap();
    let message = token.as_bytes()[..signing_input_len].to_vec();
    let raw_sig = pair.sign(&message);
    let raw_pk = UnparsedPublicKey::new(&ED25519, pair.public_key().as_ref().to_vec());

    let raw_sign = rate(budget, || {
        black_box(pair.sign(black_box(&message)));
    });
    let mint = rate(budget, || {
        black_box(signer.sign_access(black_box(&claims)).unwrap());
    });
    let raw_verify = rate(budget, || {
        raw_pk.verify(black_box(&message), black_box(raw_sig.as_ref())).unwrap();
    });
    let mut keys = HashMap::new();
    keys.insert(
        signer.kid().to_owned(),
        Arc::new(PublicKey { kid: signer.kid().to_owned(), alg: "EdDSA".into(), raw: signer.public_key().to_vec() }),
    );
    let policy = Policy::new("http://127.0.0.1:8700", "core");
    let verify = rate(budget, || {
        black_box(policy.verify_access(&keys, black_box(&token), now + 1).unwrap());
    });

    let rows = [
        ("raw ring Ed25519 sign", raw_sign, None),
        ("mint access token (in-process)", mint, Some(mint / raw_sign)),
        ("raw ring Ed25519 verify", raw_verify, None),
        ("verify access token (in-process)", verify, Some(verify / raw_verify)),
    ];
    println!("{:<36} {:>12} {:>8}", "measure", "ops/s", "ratio");
    for (name, r, ratio) in &rows {
        println!("{:<36} {:>12.0} {:>8}", name, r, ratio.map_or("-".to_owned(), |x| format!("{x:.3}")));
    }
    let report = json!({
        "raw_sign_per_sec": raw_sign,
        "mint_in_process_per_sec": mint,
        "mint_in_process_ratio": mint / raw_sign,
        "raw_verify_per_sec": raw_verify,
        "verify_per_sec": verify,
        "verify_ratio": verify / raw_verify,
        "token_bytes": token.len(),
    });
    println!("{report}");
    if let Some(path) = json_out {
        std::fs::write(path, report.to_string()).unwrap();
    }
}
