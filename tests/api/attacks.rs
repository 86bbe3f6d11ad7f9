//! Hardening. Each attack of docs/threat-model.md, tried against the running broker
//! and the reference core. Token-format attacks are also run, case by case, through the
//! verifier library and an independent verifier by the shared vectors (tests/vectors/).

use std::time::{Duration, Instant};

use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::{Value, json};
use tessera::domain::CallerKind;
use tessera::token::b64;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;

/// The broker's own signing key, read from its keys folder: lets a test forge tokens that
/// carry a genuine signature, to show the checks after the signature hold on their own.
fn broker_key(app: &TestApp) -> Ed25519KeyPair {
    let entry = std::fs::read_dir(app.keys_dir()).unwrap().next().unwrap().unwrap();
    let pem = std::fs::read_to_string(entry.path()).unwrap();
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    use base64::Engine;
    let der = base64::engine::general_purpose::STANDARD.decode(body).unwrap();
    // The key files are PKCS#8 v1 (RFC 8410), which carries no public key to check.
    Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der).unwrap()
}

fn sign_raw(key: &Ed25519KeyPair, header: &str, payload: &str) -> String {
    let input = format!("{}.{}", b64::encode(header.as_bytes()), b64::encode(payload.as_bytes()));
    let sig = key.sign(input.as_bytes());
    format!("{input}.{}", b64::encode(sig.as_ref()))
}

fn hs256(key: &[u8], header: &str, payload: &str) -> String {
    let input = format!("{}.{}", b64::encode(header.as_bytes()), b64::encode(payload.as_bytes()));
    let tag = ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key), input.as_bytes());
    format!("{input}.{}", b64::encode(tag.as_ref()))
}

struct Target {
    app: TestApp,
    core: String,
    agent: TestClient,
    token: String,
    kid: String,
    claims: Value,
}

async fn target() -> Target {
    let app = spawn_app().await;
    let core = crate::gate::spawn_core(&app).await;
    let agent = app.create_client("org-1", CallerKind::Agent, "concierge").await;
    let token = app.access_token(&agent).await;
    let kid = peek_header(&token)["kid"].as_str().unwrap().to_owned();
    let claims = peek_claims(&token);
    Target { app, core, agent, token, kid, claims }
}

impl Target {
    /// Presents `token` as a bearer to the broker and to core; both must answer 401 and
    /// nothing may happen.
    async fn refused_everywhere(&self, what: &str, token: &str) {
        let res = self.app.get_bearer("/v1/approvals?status=pending", token).await;
        assert_eq!(res.status(), 401, "broker accepted: {what}");
        let res = self
            .app
            .http
            .post(format!("{}/org/tokens", self.core))
            .bearer_auth(token)
            .json(&json!({"name": "x"}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401, "core accepted: {what}");
    }

    fn header(&self, extra: Value) -> String {
        let mut h = json!({"alg": "EdDSA", "typ": "at+jwt", "kid": self.kid});
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                h.as_object_mut().unwrap().remove(k);
            } else {
                h[k] = v.clone();
            }
        }
        h.to_string()
    }

    fn claims_with(&self, changes: Value) -> String {
        let mut c = self.claims.clone();
        for (k, v) in changes.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c.to_string()
    }
}

#[tokio::test]
async fn algorithm_attacks_are_refused() {
    let t = target().await;
    let parts: Vec<&str> = t.token.split('.').collect();
    let payload = String::from_utf8(b64::decode(parts[1]).unwrap()).unwrap();
    for alg in ["none", "None", "NONE", "nOnE"] {
        let h = t.header(json!({"alg": alg}));
        let unsigned = format!("{}.{}.", b64::encode(h.as_bytes()), parts[1]);
        t.refused_everywhere(&format!("alg {alg}, empty signature"), &unsigned).await;
        let kept = format!("{}.{}.{}", b64::encode(h.as_bytes()), parts[1], parts[2]);
        t.refused_everywhere(&format!("alg {alg}, old signature"), &kept).await;
    }
    // HS256 keyed with the public key, as raw bytes and as the JWKS text.
    let jwks = t.app.http.get(t.app.url("/.well-known/jwks.json")).send().await.unwrap().text().await.unwrap();
    let x =
        b64::decode(t.app.state.keys().jwks().split("\"x\":\"").nth(1).unwrap().split('"').next().unwrap()).unwrap();
    for key in [x.as_slice(), jwks.as_bytes()] {
        let forged = hs256(key, &t.header(json!({"alg": "HS256"})), &payload);
        t.refused_everywhere("HS256 keyed with the public key", &forged).await;
    }
    // The right algorithm name under another key: EdDSA with the attacker's key.
    let mallory = Ed25519KeyPair::from_seed_unchecked(&[7u8; 32]).unwrap();
    t.refused_everywhere("signed by another key", &sign_raw(&mallory, &t.header(json!({})), &payload)).await;
}

#[tokio::test]
async fn header_attacks_are_refused() {
    let t = target().await;
    let payload = t.claims.to_string();
    let mallory = Ed25519KeyPair::from_seed_unchecked(&[9u8; 32]).unwrap();
    let mallory_x = b64::encode(mallory.public_key().as_ref());
    let cases = [
        ("embedded jwk", json!({"jwk": {"kty": "OKP", "crv": "Ed25519", "x": mallory_x}})),
        ("jku", json!({"jku": format!("{}/.well-known/jwks.json", t.app.base)})),
        ("x5u", json!({"x5u": "http://127.0.0.1:9/cert.pem"})),
        ("x5c", json!({"x5c": ["MIIB"]})),
        ("crit", json!({"crit": ["exp"]})),
        ("kid traversal", json!({"kid": "../../../keys/secret"})),
        ("kid injection", json!({"kid": "x' OR '1'='1"})),
        ("kid unknown", json!({"kid": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"})),
        ("kid missing", json!({"kid": null})),
        ("typ JWT", json!({"typ": "JWT"})),
        ("typ capability", json!({"typ": "cap+jwt"})),
        ("typ missing", json!({"typ": null})),
    ];
    for (what, extra) in cases {
        // Signed by the attacker (the embedded-key attack), and by the broker's own key: a
        // genuine signature does not rescue a forbidden header.
        t.refused_everywhere(what, &sign_raw(&mallory, &t.header(extra.clone()), &payload)).await;
        if !what.starts_with("kid") {
            t.refused_everywhere(what, &sign_raw(&broker_key(&t.app), &t.header(extra), &payload)).await;
        }
    }
    // A duplicate header member, genuinely signed.
    let dup = format!(r#"{{"alg":"EdDSA","typ":"at+jwt","kid":"{}","kid":"{}"}}"#, t.kid, t.kid);
    t.refused_everywhere("duplicate header member", &sign_raw(&broker_key(&t.app), &dup, &payload)).await;
}

#[tokio::test]
async fn genuinely_signed_but_malformed_claims_are_refused() {
    let t = target().await;
    let key = broker_key(&t.app);
    let now = t.app.state.now();
    let h = t.header(json!({}));
    // The control: our forging path makes tokens the broker accepts.
    let control = sign_raw(&key, &h, &t.claims_with(json!({"jti": "control-token-jti"})));
    assert_eq!(t.app.get_bearer("/v1/approvals/apr_AAAAAAAAAAAAAAAAAAAAAA", &control).await.status(), 404);
    let cases = [
        ("exp as a string", json!({"exp": (now + 300).to_string()})),
        ("exp as a float", json!({"exp": (now + 300) as f64 + 0.5})),
        ("iat as a string", json!({"iat": now.to_string()})),
        ("missing exp", json!({"exp": null})),
        ("missing iat", json!({"iat": null})),
        ("missing nbf", json!({"nbf": null})),
        ("missing jti", json!({"jti": null})),
        ("missing client_id", json!({"client_id": null})),
        ("missing tenant", json!({"tenant": null})),
        ("missing caller_kind", json!({"caller_kind": null})),
        ("unknown caller_kind", json!({"caller_kind": "root"})),
        ("client_id differs from sub", json!({"client_id": "tc_someone_else"})),
        ("wrong issuer", json!({"iss": "http://evil.example"})),
        ("issuer with trailing slash", json!({"iss": format!("{}/", t.app.base)})),
        ("wrong audience", json!({"aud": "billing"})),
        ("audience array without ours", json!({"aud": ["billing", "Core"]})),
        ("expired beyond leeway", json!({"iat": now - 400, "nbf": now - 400, "exp": now - 31})),
        ("issued in the future", json!({"iat": now + 120, "nbf": now + 120, "exp": now + 400})),
        ("not yet valid", json!({"nbf": now + 120})),
        ("lifetime over 900 s", json!({"iat": now, "exp": now + 901})),
        (
            "act chain too deep",
            json!({"act": {"sub": "a", "act": {"sub": "b", "act": {"sub": "c", "act": {"sub": "d", "act": {"sub": "e"}}}}}}),
        ),
    ];
    for (what, change) in cases {
        t.refused_everywhere(what, &sign_raw(&key, &h, &t.claims_with(change))).await;
    }
    let dup = t.claims.to_string().replacen('{', &format!("{{\"sub\":\"{}\",", "tc_other"), 1);
    t.refused_everywhere("duplicate claim member", &sign_raw(&key, &h, &dup)).await;
    // Within the leeway, an expired token still passes; past it, never. (`now` again: the cases
    // above take long enough for the clock to move on.)
    let now = t.app.state.now();
    let edge =
        sign_raw(&key, &h, &t.claims_with(json!({"iat": now - 329, "nbf": now - 329, "exp": now - 29, "jti": "edge"})));
    assert_eq!(t.app.get_bearer("/v1/approvals/apr_AAAAAAAAAAAAAAAAAAAAAA", &edge).await.status(), 404);
}

#[tokio::test]
async fn encoding_attacks_are_refused() {
    let t = target().await;
    let parts: Vec<&str> = t.token.split('.').collect();
    let sig = b64::decode(parts[2]).unwrap();
    // Non-canonical base64url: the same bytes for a lax decoder.
    let mut last = parts[2].to_owned();
    let c = last.pop().unwrap();
    let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let idx = alphabet.find(c).unwrap();
    let twin = alphabet.chars().nth(idx | 1).unwrap();
    assert_ne!(twin, c, "the last character carries unused bits");
    last.push(twin);
    t.refused_everywhere("non-zero trailing bits", &format!("{}.{}.{last}", parts[0], parts[1])).await;
    t.refused_everywhere("padding", &format!("{}.{}.{}==", parts[0], parts[1], parts[2])).await;
    t.refused_everywhere(
        "standard alphabet",
        &format!("{}.{}.{}", parts[0], parts[1], parts[2].replace('-', "+").replace('_', "/") + "+"),
    )
    .await;
    t.refused_everywhere("all-zero signature", &format!("{}.{}.{}", parts[0], parts[1], b64::encode(&[0u8; 64]))).await;
    t.refused_everywhere("short signature", &format!("{}.{}.{}", parts[0], parts[1], b64::encode(&sig[..63]))).await;
    t.refused_everywhere("four segments", &format!("{}.x", t.token)).await;
    t.refused_everywhere("JSON serialization", &json!({"payload": parts[1], "signatures": []}).to_string()).await;
    let big = format!("{}.{}.{}", parts[0], b64::encode("x".repeat(9000).as_bytes()), parts[2]);
    t.refused_everywhere("oversized token", &big).await;
    // The genuine token still works: the refusals above are about the attacks.
    assert_eq!(t.app.get_bearer("/v1/approvals?status=pending", &t.token).await.status(), 403, "an agent may not list");
}

#[tokio::test]
async fn caller_kind_cannot_be_spoofed_through_any_request_field() {
    let t = target().await;
    let app = &t.app;
    // Extra form fields on the token endpoint change nothing.
    let res = app
        .token_request(
            &[
                ("grant_type", "client_credentials"),
                ("caller_kind", "operator"),
                ("kind", "operator"),
                ("tenant", "org-2"),
                ("workspace", "ws-admin"),
                ("sub", "tc_root"),
            ],
            Some(&t.agent),
        )
        .await;
    let token = res.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_owned();
    let c = peek_claims(&token);
    assert_eq!(c["caller_kind"], "agent");
    assert_eq!(c["tenant"], "org-1");
    assert_eq!(c["sub"], t.agent.id);
    assert!(c.get("workspace").is_none());
    // Headers claiming another identity are ignored; the token decides.
    let res = app
        .http
        .get(app.url("/v1/approvals?status=pending"))
        .bearer_auth(&token)
        .header("X-Caller-Kind", "operator")
        .header("X-Forwarded-User", "alice")
        .header("Tessera-Caller-Kind", "operator")
        .send()
        .await
        .unwrap();
    assert_error(res, 403, "forbidden").await;
    // A request body naming a kind or a requester is refused, not obeyed.
    for field in ["caller_kind", "requester", "requester_kind", "tenant", "sub"] {
        let mut body = json!({
            "action": "secret_write", "resource": "workspaces/ws-2/secrets/K",
            "params": {}, "params_digest": tessera::verify::params_digest(&json!({})).to_string(), "reason": "r",
        });
        body[field] = json!("operator");
        assert_error(app.post_bearer("/v1/approvals", &token, &body).await, 400, "invalid_request").await;
    }
    // An approval records the kind from the verified token only.
    let id = app.pending_approval(&token, "secret_write", "workspaces/ws-2/secrets/K", &json!({})).await;
    let a: Value = app.get_bearer(&format!("/v1/approvals/{id}"), &token).await.json().await.unwrap();
    assert_eq!(a["requester_kind"], "agent");
    assert_eq!(a["tenant"], "org-1");
}

#[tokio::test]
async fn a_slow_loris_client_is_disconnected() {
    let app = spawn_app_with(|c| c.header_read_timeout_secs = 1).await;
    let mut conn = TcpStream::connect(app.addr).await.unwrap();
    conn.write_all(b"POST /oauth/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-").await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    // Keep dribbling a byte now and then; the server must still close within the timeout.
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            tokio::select! {
                r = conn.read(&mut buf) => return r.map(|n| n == 0 || buf[..n].starts_with(b"HTTP/1.1 408")).unwrap_or(true),
                () = tokio::time::sleep(Duration::from_millis(200)) => {
                    if conn.write_all(b"a").await.is_err() {
                        return true;
                    }
                }
            }
        }
    })
    .await
    .unwrap_or(false);
    assert!(closed, "the connection was held open");
    assert!(started.elapsed() < Duration::from_secs(4));
    // Normal clients are unaffected.
    assert_eq!(app.http.get(app.url("/healthz")).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn connections_beyond_the_limit_are_closed_on_arrival() {
    let app = spawn_app_with(|c| c.max_connections = 3).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(app.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut extra = TcpStream::connect(app.addr).await.unwrap();
    let _ = extra.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(3), extra.read(&mut buf)).await.unwrap().unwrap_or(0);
    assert_eq!(n, 0, "the fourth connection must be closed, not served");
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(app.http.get(app.url("/healthz")).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn oversized_headers_are_refused() {
    let app = spawn_app().await;
    let mut req = app.http.get(app.url("/healthz"));
    for i in 0..100 {
        req = req.header(format!("x-h{i}"), "v");
    }
    let status = req.send().await.map(|r| r.status().as_u16()).unwrap_or(431);
    assert_eq!(status, 431);
    let huge = "a".repeat(70 * 1024);
    let status = app
        .http
        .get(app.url("/healthz"))
        .header("x-big", huge)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(431);
    assert_eq!(status, 431);
}

#[tokio::test]
async fn an_unknown_client_and_a_wrong_secret_cost_the_same() {
    let app = spawn_app().await;
    let c = app.create_client("org-1", CallerKind::Agent, "a").await;
    let store = app.state.store();
    let wrong = tessera::clients::ClientSecret::new("tessera_sk_wrong_wrong_wrong_wrong_wrong_wrong_wron".into());
    let right = tessera::clients::ClientSecret::new(c.secret.clone());
    let mut unknown = Vec::new();
    let mut mismatch = Vec::new();
    // Interleaved, so drift in the machine's load hits both alike.
    for i in 0..400 {
        let t = Instant::now();
        let r = tessera::clients::authenticate(store, &format!("tc_unknown{i:08}x"), &right, 0).await.unwrap();
        unknown.push(t.elapsed());
        assert!(r.is_none());
        let t = Instant::now();
        let r = tessera::clients::authenticate(store, &c.id, &wrong, 0).await.unwrap();
        mismatch.push(t.elapsed());
        assert!(r.is_none());
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2].as_secs_f64()
    };
    let (u, m) = (median(&mut unknown), median(&mut mismatch));
    let ratio = u / m;
    eprintln!("median unknown {:.1} µs, wrong secret {:.1} µs, ratio {ratio:.3}", u * 1e6, m * 1e6);
    // Both paths are one lookup, one hash, one compare: their medians agree closely on a quiet
    // machine. The bound is loose enough for a noisy one and tight enough to catch a path
    // that skips or adds a step of the lookup's size.
    assert!((0.6..=1.67).contains(&ratio), "timing differs: ratio {ratio:.3}");
}

#[tokio::test]
async fn a_whole_flow_at_trace_level_logs_no_secret_and_no_token() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/t.db", dir.path().display());
    let keys = dir.path().join("keys");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let base = format!("http://127.0.0.1:{port}");
    let create = |args: Vec<String>| {
        let (db, keys, base) = (db.clone(), keys.clone(), base.clone());
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = cli_on(&db, &keys, &base, &args, &[]).await;
            assert!(out.status.success());
            let v: Value = serde_json::from_slice(&out.stdout).unwrap();
            TestClient {
                id: v["client_id"].as_str().unwrap().to_owned(),
                secret: v["client_secret"].as_str().unwrap().to_owned(),
            }
        }
    };
    let agent =
        create(["clients", "create", "--tenant", "org-1", "--kind", "agent", "--name", "a"].map(String::from).to_vec())
            .await;
    let op = create(
        ["clients", "create", "--tenant", "org-1", "--kind", "operator", "--name", "o"].map(String::from).to_vec(),
    )
    .await;
    let log = dir.path().join("broker.log");
    let mut broker = tokio::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .arg("serve")
        .env("TESSERA_DATABASE_URL", &db)
        .env("TESSERA_KEYS_DIR", &keys)
        .env("TESSERA_ISSUER", &base)
        .env("TESSERA_LISTEN", format!("127.0.0.1:{port}"))
        .env("TESSERA_LOG", "trace")
        .env("RUST_LOG", "trace")
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    for _ in 0..100 {
        if http.get(format!("{base}/healthz")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let token = |c: &TestClient| {
        let (http, base, c) = (http.clone(), base.clone(), c.clone());
        async move {
            let v: Value = http
                .post(format!("{base}/oauth/token"))
                .basic_auth(&c.id, Some(&c.secret))
                .form(&[("grant_type", "client_credentials")])
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["access_token"].as_str().unwrap().to_owned()
        }
    };
    let at = token(&agent).await;
    let ot = token(&op).await;
    // client_secret_post, a failed attempt with a secret-like wrong value, a secret in the URL.
    let post: Value = http
        .post(format!("{base}/oauth/token"))
        .form(&[("grant_type", "client_credentials"), ("client_id", &agent.id), ("client_secret", &agent.secret)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let at2 = post["access_token"].as_str().unwrap().to_owned();
    let wrong = "tessera_sk_this_wrong_secret_must_not_be_logged_either_0000";
    http.post(format!("{base}/oauth/token"))
        .basic_auth(&agent.id, Some(wrong))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    http.post(format!("{base}/oauth/token?client_secret={}", agent.secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    let body = json!({"action": "secret_write", "resource": "workspaces/ws-2/secrets/K",
        "params": {}, "params_digest": tessera::verify::params_digest(&json!({})).to_string(), "reason": "r"});
    let id = http
        .post(format!("{base}/v1/approvals"))
        .bearer_auth(&at)
        .json(&body)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()["approval_id"]
        .as_str()
        .unwrap()
        .to_owned();
    http.post(format!("{base}/v1/approvals/{id}/decision"))
        .bearer_auth(&ot)
        .json(&json!({"decision": "approve"}))
        .send()
        .await
        .unwrap();
    let cap = http
        .get(format!("{base}/v1/approvals/{id}"))
        .bearer_auth(&at)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()["capability"]
        .as_str()
        .unwrap()
        .to_owned();
    http.post(format!("{base}/v1/capabilities/redeem"))
        .bearer_auth(&at)
        .json(&json!({"capability": cap}))
        .send()
        .await
        .unwrap();
    http.post(format!("{base}/oauth/token"))
        .basic_auth(&agent.id, Some(&agent.secret))
        .form(&[
            ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"),
            ("subject_token", at.as_str()),
            ("subject_token_type", "urn:ietf:params:oauth:token-type:access_token"),
        ])
        .send()
        .await
        .unwrap();
    http.post(format!("{base}/oauth/revoke"))
        .basic_auth(&agent.id, Some(&agent.secret))
        .form(&[("token", at2.as_str())])
        .send()
        .await
        .unwrap();
    let _ = broker.kill().await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.len() > 1000, "the broker logged at trace level ({} bytes)", text.len());
    let signature = |t: &str| t.rsplit('.').next().unwrap().to_owned();
    for (what, secret) in [
        ("agent secret", agent.secret.clone()),
        ("operator secret", op.secret.clone()),
        ("wrong secret", wrong.to_owned()),
        ("agent token signature", signature(&at)),
        ("second token signature", signature(&at2)),
        ("operator token signature", signature(&ot)),
        ("capability signature", signature(&cap)),
        ("basic credentials", {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", agent.id, agent.secret))
        }),
    ] {
        assert!(!text.contains(&secret), "the log contains the {what}");
    }
}

/// Every test the threat model names exists where it says: `file::name` in `tests/api/file.rs`,
/// `a::b::tests::name` in `src/a/b.rs` (or `src/a/b/mod.rs`).
#[test]
fn every_test_the_threat_model_names_exists() {
    let root = env!("CARGO_MANIFEST_DIR");
    let model = std::fs::read_to_string(format!("{root}/docs/threat-model.md")).unwrap();
    let read = |p: String| std::fs::read_to_string(format!("{root}/{p}")).unwrap_or_default();
    let mut named = 0;
    for chunk in model.split('`').skip(1).step_by(2) {
        let Some((module, name)) = chunk.rsplit_once("::") else { continue };
        if module.is_empty()
            || name.is_empty()
            || !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            || !module.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        {
            continue;
        }
        named += 1;
        let parts: Vec<&str> = module.split("::").filter(|p| *p != "tests").collect();
        let mut places = vec![format!("src/{}.rs", parts.join("/")), format!("src/{}/mod.rs", parts.join("/"))];
        if let [file] = parts.as_slice() {
            places.insert(0, format!("tests/api/{file}.rs"));
        }
        assert!(
            places.iter().any(|p| read(p.clone()).contains(&format!("fn {name}("))),
            "docs/threat-model.md names {chunk}, which is in none of {places:?}"
        );
    }
    assert!(named > 40, "only {named} tests named");
}
