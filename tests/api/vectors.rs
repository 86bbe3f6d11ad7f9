//! Shared test vectors (`tests/vectors/`): the committed files must equal what the generator
//! writes, every case must get its expected verdict from the Rust verifier, and Wycheproof's
//! Ed25519 vectors must get theirs from the signature check the verifier uses.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;
use tessera::domain::CallerKind;
use tessera::token::claims::Audience;
use tessera::token::jcs::canonicalize;
use tessera::token::{AccessClaims, b64};
use tessera::verify::{CapabilityBinding, Policy, PublicKey, check_binding, params_digest};

#[path = "../../examples/vectors/generate.rs"]
mod generate;

const REGENERATE: &str = "cargo run --example vectors -- tests/vectors";

#[derive(Deserialize)]
struct Jwks {
    keys: Vec<Jwk>,
}

#[derive(Deserialize)]
struct Jwk {
    kty: String,
    crv: String,
    x: String,
    kid: String,
    alg: String,
    #[serde(rename = "use")]
    use_: String,
}

#[derive(Deserialize)]
struct Vectors {
    settings: Settings,
    digests: Vec<Digest>,
    presented: Vec<Presented>,
    dpop: Vec<DpopCase>,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct DpopCase {
    name: String,
    proof: String,
    method: String,
    url: String,
    access_token: Option<String>,
    now: i64,
    jkt: String,
    expected: String,
}

#[derive(Deserialize)]
struct Settings {
    leeway_secs: i64,
    max_lifetime_secs: i64,
}

#[derive(Deserialize)]
struct Digest {
    name: String,
    params_json: String,
    canonical: String,
    params_digest: String,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    kind: String,
    token: String,
    now: i64,
    issuer: String,
    audience: String,
    expected: String,
    reason: String,
    binding: Option<Binding>,
}

#[derive(Deserialize)]
struct Binding {
    action: String,
    resource: String,
    params_digest: String,
    caller_sub: String,
    caller_tenant: String,
    caller_actors: Vec<String>,
}

#[derive(Deserialize)]
struct Presented {
    name: String,
    params_json: String,
    secret_fields: Vec<String>,
    presented_canonical: Option<String>,
    params_digest: Option<String>,
    refused: bool,
}

fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join("vectors")
}

fn read(name: &str) -> String {
    let path = vectors_dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}; run `{REGENERATE}`", path.display()))
}

fn load() -> (HashMap<String, Arc<PublicKey>>, Vectors) {
    let jwks: Jwks = serde_json::from_str(&read("jwks.json")).unwrap();
    let mut keys = HashMap::new();
    for jwk in jwks.keys {
        assert_eq!((jwk.kty.as_str(), jwk.crv.as_str(), jwk.use_.as_str()), ("OKP", "Ed25519", "sig"));
        let raw = b64::decode(&jwk.x).unwrap();
        assert_eq!(tessera::keys::thumbprint(&raw), jwk.kid, "kid is the RFC 7638 thumbprint");
        let key = PublicKey { kid: jwk.kid.clone(), alg: jwk.alg, raw };
        assert!(keys.insert(jwk.kid, Arc::new(key)).is_none(), "duplicate kid");
    }
    // The JWKS client's parser reads the same set.
    assert_eq!(tessera::verify::jwks::parse_jwks(read("jwks.json").as_bytes()).unwrap(), keys);
    (keys, serde_json::from_str(&read("vectors.json")).unwrap())
}

/// The caller whose access token came with the capability; only `sub` and `tenant` matter
/// to the binding.
fn caller(sub: &str, tenant: &str, actors: &[String]) -> AccessClaims {
    // The chain, nearest first, nested as `act` is.
    let act = actors.iter().rev().fold(None, |inner, a| {
        Some(tessera::token::Actor { sub: a.clone(), caller_kind: CallerKind::Agent, act: inner.map(Box::new) })
    });
    AccessClaims {
        iss: String::new(),
        sub: sub.to_owned(),
        client_id: sub.to_owned(),
        aud: Audience::One(String::new()),
        iat: 0,
        nbf: 0,
        exp: 0,
        jti: String::new(),
        scope: String::new(),
        tenant: tenant.to_owned(),
        caller_kind: CallerKind::Agent,
        workspace: None,
        act,
        cnf: None,
    }
}

/// `Ok` when the case verifies (and binds, if it has a binding); `Err` says where it stopped.
fn verdict(keys: &HashMap<String, Arc<PublicKey>>, settings: &Settings, case: &Case) -> Result<(), String> {
    let mut policy = Policy::new(&case.issuer, &case.audience);
    policy.leeway_secs = settings.leeway_secs;
    policy.max_lifetime_secs = settings.max_lifetime_secs;
    match case.kind.as_str() {
        "access" => policy.verify_access(keys, &case.token, case.now).map(drop).map_err(|e| format!("verify: {e}")),
        "capability" => {
            let cap = policy.verify_capability(keys, &case.token, case.now).map_err(|e| format!("verify: {e}"))?;
            let Some(b) = &case.binding else { return Ok(()) };
            let binding =
                CapabilityBinding { action: &b.action, resource: &b.resource, params_digest: &b.params_digest };
            check_binding(&cap, &caller(&b.caller_sub, &b.caller_tenant, &b.caller_actors), binding)
                .map_err(|e| format!("binding: {e}"))
        }
        other => panic!("case {}: unknown kind {other:?}", case.name),
    }
}

#[test]
fn vectors_committed_files_match_the_generator() {
    let files = generate::generate().unwrap();
    for (name, generated) in [("jwks.json", &files.jwks), ("vectors.json", &files.vectors)] {
        let committed = read(name);
        assert!(
            committed == *generated,
            "tests/vectors/{name} differs from what examples/vectors/generate.rs produces. \
             If the change is intended, run `{REGENERATE}` and commit the result."
        );
    }
}

#[test]
fn vectors_every_case_gets_its_verdict_from_the_rust_verifier() {
    let (keys, vectors) = load();
    let mut wrong = Vec::new();
    let mut names = std::collections::HashSet::new();
    for case in &vectors.cases {
        assert!(names.insert(case.name.as_str()), "duplicate case name {}", case.name);
        let result = verdict(&keys, &vectors.settings, case);
        let got = if result.is_ok() { "valid" } else { "invalid" };
        println!("{:<40} {got:<8} {}", case.name, result.as_ref().err().map_or("", String::as_str));
        if got != case.expected {
            wrong.push(format!(
                "{}: expected {}, got {got} ({result:?}); case: {}",
                case.name, case.expected, case.reason
            ));
        }
        // A binding case must fail at the binding, not before: its capability is sound.
        if case.name.starts_with("binding_") {
            assert!(matches!(&result, Err(e) if e.starts_with("binding:")), "{}: {result:?}", case.name);
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} cases got the wrong verdict:\n{}",
        wrong.len(),
        vectors.cases.len(),
        wrong.join("\n")
    );
    let valid = vectors.cases.iter().filter(|c| c.expected == "valid").count();
    assert!(valid >= 2 && vectors.cases.len() - valid >= 50, "the vectors lost cases");
}

/// The DPoP cases, in order, against one replay cache: the library's proof checks.
#[test]
fn vectors_dpop_proofs_get_their_verdicts() {
    let (_, vectors) = load();
    let verifier = tessera::verify::dpop::DpopVerifier::default();
    for name in ["dpop_valid", "dpop_wrong_ath", "dpop_wrong_htu", "dpop_stale", "dpop_replayed"] {
        assert!(vectors.dpop.iter().any(|c| c.name == name), "missing DPoP case {name}");
    }
    for c in &vectors.dpop {
        let check = tessera::verify::dpop::ProofCheck {
            method: &c.method,
            url: &c.url,
            access_token: c.access_token.as_deref(),
            now: c.now,
        };
        let got = verifier.verify_bound(&c.proof, &check, &c.jkt, "tc_vectors");
        let verdict = if got.is_ok() { "valid" } else { "invalid" };
        assert_eq!(verdict, c.expected, "{}: {got:?}", c.name);
    }
}

#[test]
fn vectors_params_digests_match() {
    let (_, vectors) = load();
    assert!(!vectors.digests.is_empty());
    for d in &vectors.digests {
        let value: serde_json::Value = serde_json::from_str(&d.params_json).unwrap();
        assert_eq!(canonicalize(&value), d.canonical, "{}", d.name);
        assert_eq!(params_digest(&value).as_str(), d.params_digest, "{}", d.name);
    }
}

/// The presented form (design §11) of each case, by the library's own function: the same
/// canonical text and digest, or refused where the vectors say so, the refusals included.
#[test]
fn vectors_presented_forms_match() {
    let (_, vectors) = load();
    assert!(vectors.presented.iter().filter(|p| p.refused).count() >= 3);
    assert!(vectors.presented.iter().filter(|p| !p.refused).count() >= 4);
    for p in &vectors.presented {
        let fields: Vec<&str> = p.secret_fields.iter().map(String::as_str).collect();
        let got = tessera::verify::check_numbers(p.params_json.as_bytes())
            .ok()
            .and_then(|()| serde_json::from_str::<serde_json::Value>(&p.params_json).ok())
            .and_then(|v| tessera::verify::presented(&v, &fields).ok());
        assert_eq!(got.is_none(), p.refused, "{}", p.name);
        if let Some(shown) = got {
            assert_eq!(Some(canonicalize(&shown)), p.presented_canonical, "{}", p.name);
            assert_eq!(Some(params_digest(&shown).to_string()), p.params_digest, "{}", p.name);
            assert!(
                !p.presented_canonical.as_deref().unwrap_or_default().contains("sk-"),
                "{}: a secret shown",
                p.name
            );
        }
    }
}

/// The signature check every Ed25519 signature goes through (`jws::ed25519_verify`, behind
/// `UnverifiedJws::verify_ed25519`, DPoP proofs and passkeys), applied to raw messages: a JWS
/// signing input cannot carry Wycheproof's arbitrary message bytes.
fn ed25519_check(public_key: &[u8], message: &[u8], signature: &[u8]) -> bool {
    tessera::token::jws::ed25519_verify(public_key, message, signature)
}

/// Every Ed25519 vector of Wycheproof. `acceptable` results (none in the current Ed25519 set)
/// may go either way; Tessera (as ring) rejects non-canonical S and non-canonical point
/// encodings.
#[test]
fn vectors_wycheproof_ed25519() {
    use wycheproof::TestResult;
    use wycheproof::eddsa::{TestName, TestSet};

    let set = TestSet::load(TestName::Ed25519).unwrap();
    let (mut run, mut wrong) = (0, Vec::new());
    for group in &set.test_groups {
        for test in &group.tests {
            run += 1;
            let ok = ed25519_check(&group.key.pk, &test.msg, &test.sig);
            let fits = match test.result {
                TestResult::Valid => ok,
                TestResult::Invalid => !ok,
                TestResult::Acceptable => true,
            };
            if !fits {
                wrong.push(format!("tcId {} ({}): expected {:?}, got ok={ok}", test.tc_id, test.comment, test.result));
            }
        }
    }
    assert!(run >= 100, "only {run} Wycheproof Ed25519 tests ran");
    assert!(wrong.is_empty(), "{} of {run} Wycheproof Ed25519 tests failed:\n{}", wrong.len(), wrong.join("\n"));
}
