//! Workloads without a bootstrap secret (design §14): the jwt-bearer grant against a tiny
//! issuer of our own (Ed25519 and ES256 keys, a JWKS on loopback), audiences and `resource`.

use std::sync::{Arc, RwLock};

use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use serde_json::{Value, json};
use tessera::config::FederationConfig;
use tessera::domain::CallerKind;
use tessera::token::b64;

use crate::helpers::{TestApp, assert_error, peek_claims, spawn_app_with};

const ISSUER: &str = "https://cluster.example/issuer";
const AUDIENCE: &str = "tessera";
const SUBJECT: &str = "system:serviceaccount:agents:concierge";
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

enum Key {
    Ed(Ed25519KeyPair),
    Ec(EcdsaKeyPair),
    Rsa(RsaKeyPair),
}

/// A 2048-bit RSA key made for these tests only (`openssl genpkey -algorithm RSA`, PKCS#1 DER): ring signs
/// with RSA keys but does not make them.
const RSA_TEST_KEY: &[u8] = include_bytes!("../fixtures/rsa-2048-test-issuer.der");

/// One signing key of the tiny issuer.
struct IssuerKey {
    kid: String,
    key: Key,
}

impl IssuerKey {
    fn ed25519(kid: &str) -> IssuerKey {
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        IssuerKey { kid: kid.into(), key: Key::Ed(Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap()) }
    }

    fn es256(kid: &str) -> IssuerKey {
        let rng = SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref(), &rng).unwrap();
        IssuerKey { kid: kid.into(), key: Key::Ec(key) }
    }

    fn rs256(kid: &str) -> IssuerKey {
        IssuerKey { kid: kid.into(), key: Key::Rsa(RsaKeyPair::from_der(RSA_TEST_KEY).unwrap()) }
    }

    fn alg(&self) -> &'static str {
        match self.key {
            Key::Ed(_) => "EdDSA",
            Key::Ec(_) => "ES256",
            Key::Rsa(_) => "RS256",
        }
    }

    fn jwk(&self) -> Value {
        match &self.key {
            Key::Ed(k) => json!({
                "kty": "OKP", "crv": "Ed25519", "x": b64::encode(k.public_key().as_ref()),
                "kid": self.kid, "alg": "EdDSA", "use": "sig",
            }),
            Key::Ec(k) => {
                let p = k.public_key().as_ref();
                json!({
                    "kty": "EC", "crv": "P-256", "x": b64::encode(&p[1..33]), "y": b64::encode(&p[33..65]),
                    "kid": self.kid, "alg": "ES256", "use": "sig",
                })
            }
            Key::Rsa(k) => {
                let c = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(k.public());
                json!({
                    "kty": "RSA", "n": b64::encode(&c.n), "e": b64::encode(&c.e),
                    "kid": self.kid, "alg": "RS256", "use": "sig",
                })
            }
        }
    }

    /// Signs `claims` under `header` (whose `alg` and `kid` are taken as given).
    fn sign_with_header(&self, header: &Value, claims: &Value) -> String {
        let input =
            format!("{}.{}", b64::encode(header.to_string().as_bytes()), b64::encode(claims.to_string().as_bytes()));
        let sig = match &self.key {
            Key::Ed(k) => k.sign(input.as_bytes()).as_ref().to_vec(),
            Key::Ec(k) => k.sign(&SystemRandom::new(), input.as_bytes()).unwrap().as_ref().to_vec(),
            Key::Rsa(k) => {
                let mut sig = vec![0u8; k.public().modulus_len()];
                k.sign(&ring::signature::RSA_PKCS1_SHA256, &SystemRandom::new(), input.as_bytes(), &mut sig).unwrap();
                sig
            }
        };
        format!("{input}.{}", b64::encode(&sig))
    }

    fn sign(&self, claims: &Value) -> String {
        self.sign_with_header(&json!({ "alg": self.alg(), "kid": self.kid, "typ": "JWT" }), claims)
    }
}

/// The tiny issuer: its JWKS served on loopback, replaceable to rotate keys.
struct Issuer {
    jwks_uri: String,
    jwks: Arc<RwLock<Value>>,
}

impl Issuer {
    async fn start(keys: &[&IssuerKey]) -> Issuer {
        let jwks = Arc::new(RwLock::new(json!({ "keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>() })));
        let served = jwks.clone();
        let app = axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                let doc = served.read().unwrap().clone();
                async move { ([("cache-control", "max-age=60")], axum::Json(doc)) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.ok() });
        Issuer { jwks_uri: format!("http://{addr}/jwks.json"), jwks }
    }

    fn publish(&self, keys: &[&IssuerKey]) {
        *self.jwks.write().unwrap() = json!({ "keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>() });
    }
}

fn claims(app: &TestApp, jti: &str) -> Value {
    let now = app.state.now();
    json!({ "iss": ISSUER, "sub": SUBJECT, "aud": AUDIENCE, "iat": now, "exp": now + 600, "jti": jti })
}

async fn spawn_trusting(issuer: &Issuer, audiences: &[&str]) -> TestApp {
    let uri = issuer.jwks_uri.clone();
    let audiences: Vec<String> = audiences.iter().map(|a| (*a).to_owned()).collect();
    spawn_app_with(move |c| {
        c.federation = vec![FederationConfig {
            issuer: ISSUER.into(),
            jwks_uri: Some(uri),
            jwks_file: None,
            audience: AUDIENCE.into(),
        }];
        c.audiences = audiences;
        c.failed_auth_per_minute = 1000;
    })
    .await
}

/// Registers the federated agent client of `SUBJECT`; returns its id.
async fn register(app: &TestApp) -> String {
    let new = tessera::clients::NewClient {
        tenant: "acme".parse().unwrap(),
        kind: CallerKind::Agent,
        name: "concierge".into(),
        workspace: Some("ws-7".parse().unwrap()),
        scopes: vec!["workspaces:read".parse().unwrap()],
        allow_bypass: vec![],
        delegates: vec![],
        require_dpop: false,
        groups: vec![],
        owner: None,
    };
    let identity = tessera::clients::FederatedIdentity { issuer: ISSUER.into(), subject: SUBJECT.into() };
    let rec = tessera::clients::create_federated(
        app.state.store(),
        &app.state.config().policy,
        new,
        &[identity],
        "test",
        app.state.now(),
    )
    .await
    .unwrap();
    rec.client_id.to_string()
}

async fn bearer_grant(app: &TestApp, assertion: &str, extra: &[(&str, &str)]) -> reqwest::Response {
    let mut form = vec![("grant_type", JWT_BEARER), ("assertion", assertion)];
    form.extend_from_slice(extra);
    app.token_request(&form, None).await
}

#[tokio::test]
async fn an_assertion_gets_the_registrations_token_with_eddsa_es256_and_rs256() {
    let (ed, ec, rs) = (IssuerKey::ed25519("ed-1"), IssuerKey::es256("ec-1"), IssuerKey::rs256("rs-1"));
    let issuer = Issuer::start(&[&ed, &ec, &rs]).await;
    let app = spawn_trusting(&issuer, &[]).await;
    let client_id = register(&app).await;
    for (key, jti) in [(&ed, "a-1"), (&ec, "a-2"), (&rs, "a-3")] {
        let res = bearer_grant(&app, &key.sign(&claims(&app, jti)), &[]).await;
        assert_eq!(res.status(), 200, "{}", key.alg());
        let body: Value = res.json().await.unwrap();
        let c = peek_claims(body["access_token"].as_str().unwrap());
        assert_eq!(c["sub"], client_id);
        assert_eq!(c["client_id"], client_id);
        assert_eq!(c["caller_kind"], "agent");
        assert_eq!(c["tenant"], "acme");
        assert_eq!(c["workspace"], "ws-7");
        assert_eq!(c["scope"], "workspaces:read");
        assert_eq!(c["aud"], "core");
        // The token works at the broker like any other.
        let res = app.get_bearer("/v1/approvals/apr_x", body["access_token"].as_str().unwrap()).await;
        assert_eq!(res.status(), 404);
    }
    // The client has no secret: nothing authenticates it by one.
    for secret in ["", "tessera_sk_guess"] {
        let res = app
            .token_request(
                &[("grant_type", "client_credentials"), ("client_id", &client_id), ("client_secret", secret)],
                None,
            )
            .await;
        assert_error(res, 401, "invalid_client").await;
    }
    let meta: Value =
        app.http.get(app.url("/.well-known/oauth-authorization-server")).send().await.unwrap().json().await.unwrap();
    assert!(meta["grant_types_supported"].as_array().unwrap().contains(&json!(JWT_BEARER)));
    assert_eq!(meta["tessera_audiences"], json!(["core"]));
}

#[tokio::test]
async fn every_bad_assertion_is_invalid_grant_and_changes_nothing() {
    let (ed, ec) = (IssuerKey::ed25519("ed-1"), IssuerKey::es256("ec-1"));
    let stranger = IssuerKey::ed25519("ed-1");
    let issuer = Issuer::start(&[&ed, &ec]).await;
    let app = spawn_trusting(&issuer, &[]).await;
    register(&app).await;
    let now = app.state.now();
    let with = |change: &dyn Fn(&mut Value)| {
        let mut c = claims(&app, "bad");
        change(&mut c);
        c
    };
    let none_header = |claims: &Value| {
        format!(
            "{}.{}.",
            b64::encode(json!({"alg": "none", "kid": "ed-1"}).to_string().as_bytes()),
            b64::encode(claims.to_string().as_bytes())
        )
    };
    let cases: Vec<(&str, String)> = vec![
        ("wrong iss", ed.sign(&with(&|c| c["iss"] = json!("https://other.example")))),
        ("wrong aud", ed.sign(&with(&|c| c["aud"] = json!("someone-else")))),
        ("unregistered sub", ed.sign(&with(&|c| c["sub"] = json!("system:serviceaccount:agents:other")))),
        (
            "expired",
            ed.sign(&with(&|c| {
                c["iat"] = json!(now - 1200);
                c["exp"] = json!(now - 600);
            })),
        ),
        ("lives longer than an hour", ed.sign(&with(&|c| c["exp"] = json!(now + 3601)))),
        (
            "iat in the future",
            ed.sign(&with(&|c| {
                c["iat"] = json!(now + 300);
                c["exp"] = json!(now + 600);
            })),
        ),
        (
            "no iat",
            ed.sign(&with(&|c| {
                c.as_object_mut().unwrap().remove("iat");
            })),
        ),
        (
            "no jti",
            ed.sign(&with(&|c| {
                c.as_object_mut().unwrap().remove("jti");
            })),
        ),
        ("exp as a string", ed.sign(&with(&|c| c["exp"] = json!((now + 600).to_string())))),
        ("alg none", none_header(&claims(&app, "bad"))),
        ("HS256", ed.sign_with_header(&json!({"alg": "HS256", "kid": "ed-1", "typ": "JWT"}), &claims(&app, "bad"))),
        ("alg not the key's", ed.sign_with_header(&json!({"alg": "ES256", "kid": "ed-1"}), &claims(&app, "bad"))),
        ("unknown kid", ed.sign_with_header(&json!({"alg": "EdDSA", "kid": "nope"}), &claims(&app, "bad"))),
        ("another key's signature", stranger.sign(&claims(&app, "bad"))),
        (
            "typ of an access token",
            ed.sign_with_header(&json!({"alg": "EdDSA", "kid": "ed-1", "typ": "at+jwt"}), &claims(&app, "bad")),
        ),
        ("carries cnf", ed.sign(&with(&|c| c["cnf"] = json!({"jkt": "someone-elses-key"})))),
        ("carries act", ed.sign(&with(&|c| c["act"] = json!({"sub": "tc_other", "caller_kind": "operator"})))),
        ("not a JWS", "not.a.jws".to_owned()),
        ("empty", String::new()),
    ];
    let before = app.audit_events().await.len();
    for (name, assertion) in &cases {
        let res = bearer_grant(&app, assertion, &[]).await;
        let status = res.status().as_u16();
        let body: Value = res.json().await.unwrap();
        assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")), "{name}: {body}");
    }
    assert_eq!(app.audit_events().await.len(), before, "a refused assertion changes nothing");

    // Other client authentication is refused with the grant.
    let good = ed.sign(&claims(&app, "good-1"));
    let res = app
        .http
        .post(app.url("/oauth/token"))
        .basic_auth("tc_x", Some("y"))
        .form(&[("grant_type", JWT_BEARER), ("assertion", good.as_str())])
        .send()
        .await
        .unwrap();
    assert_error(res, 400, "invalid_request").await;
    // A request refused for another reason (a scope beyond the registration's) leaves the
    // assertion unspent; used once, it is then spent for good, on every replica.
    assert_error(bearer_grant(&app, &good, &[("scope", "workspaces:write")]).await, 400, "invalid_scope").await;
    assert_error(bearer_grant(&app, &good, &[("resource", "billing")]).await, 400, "invalid_target").await;
    assert_eq!(bearer_grant(&app, &good, &[]).await.status(), 200);
    let replay = assert_error(bearer_grant(&app, &good, &[]).await, 400, "invalid_grant").await;
    assert!(replay["error_description"].as_str().unwrap().contains("used before"), "{replay}");
    // The same jti signed again (another assertion) is a replay too.
    let again = ec.sign(&claims(&app, "good-1"));
    assert_error(bearer_grant(&app, &again, &[]).await, 400, "invalid_grant").await;
}

#[tokio::test]
async fn a_disabled_federated_client_gets_nothing() {
    let ed = IssuerKey::ed25519("ed-1");
    let issuer = Issuer::start(&[&ed]).await;
    let app = spawn_trusting(&issuer, &[]).await;
    let client_id = register(&app).await;
    tessera::clients::disable(app.state.store(), &client_id, "test", app.state.now()).await.unwrap();
    assert_error(bearer_grant(&app, &ed.sign(&claims(&app, "d-1")), &[]).await, 400, "invalid_grant").await;
    // Nor may a federated client be given a secret.
    assert!(
        tessera::clients::rotate_secret(app.state.store(), &client_id, None, "test", app.state.now()).await.is_err()
    );
}

#[tokio::test]
async fn the_issuer_rotating_its_key_is_followed() {
    let old = IssuerKey::ed25519("k-2024");
    let issuer = Issuer::start(&[&old]).await;
    let app = spawn_trusting(&issuer, &[]).await;
    register(&app).await;
    assert_eq!(bearer_grant(&app, &old.sign(&claims(&app, "r-1")), &[]).await.status(), 200);
    // The issuer rotates: the new key replaces the old in its JWKS. The broker's cached set
    // lacks the new kid, so it fetches the set again and follows.
    let new = IssuerKey::es256("k-2025");
    issuer.publish(&[&new]);
    assert_eq!(bearer_grant(&app, &new.sign(&claims(&app, "r-2")), &[]).await.status(), 200);
    // The old key is gone from the set the broker now holds.
    assert_error(bearer_grant(&app, &old.sign(&claims(&app, "r-3")), &[]).await, 400, "invalid_grant").await;
}

#[tokio::test]
async fn resource_picks_the_audience_and_an_unknown_one_is_invalid_target() {
    let ed = IssuerKey::ed25519("ed-1");
    let issuer = Issuer::start(&[&ed]).await;
    let app = spawn_trusting(&issuer, &["core", "billing", "https://mcp.example/mcp"]).await;
    register(&app).await;
    let agent = app.create_client("acme", CallerKind::Agent, "a").await;
    for resource in ["billing", "https://mcp.example/mcp", "core"] {
        let res =
            app.token_request(&[("grant_type", "client_credentials"), ("resource", resource)], Some(&agent)).await;
        assert_eq!(res.status(), 200);
        let body: Value = res.json().await.unwrap();
        assert_eq!(peek_claims(body["access_token"].as_str().unwrap())["aud"], resource);
    }
    for resource in ["nope", "", "Billing"] {
        let res =
            app.token_request(&[("grant_type", "client_credentials"), ("resource", resource)], Some(&agent)).await;
        assert_error(res, 400, "invalid_target").await;
    }
    // jwt-bearer takes resource too.
    let res = bearer_grant(&app, &ed.sign(&claims(&app, "aud-1")), &[("resource", "billing")]).await;
    let body: Value = res.json().await.unwrap();
    assert_eq!(peek_claims(body["access_token"].as_str().unwrap())["aud"], "billing");
    // So does token exchange: a core token traded for a billing one.
    let subject = app.access_token(&agent).await;
    let exchange = |resource: &'static str| {
        let form = vec![
            ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"),
            ("subject_token", subject.as_str()),
            ("subject_token_type", "urn:ietf:params:oauth:token-type:access_token"),
            ("resource", resource),
        ];
        let app = &app;
        let agent = &agent;
        async move { app.token_request(&form, Some(agent)).await }
    };
    let res = exchange("billing").await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(peek_claims(body["access_token"].as_str().unwrap())["aud"], "billing");
    assert_error(exchange("elsewhere").await, 400, "invalid_target").await;
    let meta: Value =
        app.http.get(app.url("/.well-known/oauth-authorization-server")).send().await.unwrap().json().await.unwrap();
    assert_eq!(meta["tessera_audiences"], json!(["core", "billing", "https://mcp.example/mcp"]));
}

#[tokio::test]
async fn the_cli_registers_a_federated_client_and_lists_its_identity() {
    let ed = IssuerKey::ed25519("ed-1");
    let issuer = Issuer::start(&[&ed]).await;
    let app = spawn_trusting(&issuer, &[]).await;
    let conf = app.dir.path().join("fed.toml");
    std::fs::write(
        &conf,
        format!(
            "[[federation]]\nissuer = \"{ISSUER}\"\njwks_uri = \"{}\"\naudience = \"{AUDIENCE}\"\n",
            issuer.jwks_uri
        ),
    )
    .unwrap();
    let env = [("TESSERA_CONFIG", conf.to_str().unwrap())];
    let fed = format!("{ISSUER}={SUBJECT}");
    let args = [
        "clients",
        "create",
        "--tenant",
        "acme",
        "--kind",
        "workspace",
        "--name",
        "pod",
        "--workspace",
        "ws-1",
        "--federated",
        fed.as_str(),
    ];
    let out = crate::helpers::cli_on(&app.database_url, &app.keys_dir(), &app.base, &args, &env).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(created["client_secret"], Value::Null);
    assert_eq!(created["federated"], json!([{ "issuer": ISSUER, "subject": SUBJECT }]));
    let list = crate::helpers::cli_on(&app.database_url, &app.keys_dir(), &app.base, &["clients", "list"], &env).await;
    assert!(String::from_utf8_lossy(&list.stdout).contains(&fed));
    // The broker authenticates it by the assertion alone.
    let res = bearer_grant(&app, &ed.sign(&claims(&app, "cli-1")), &[]).await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(peek_claims(body["access_token"].as_str().unwrap())["sub"], created["client_id"]);
    // An issuer that is not trusted, or the same identity twice, is refused with exit 1.
    let other = "https://untrusted.example=x".to_owned();
    let mut bad = args;
    bad[11] = other.as_str();
    let out = crate::helpers::cli_on(&app.database_url, &app.keys_dir(), &app.base, &bad, &env).await;
    assert_eq!(out.status.code(), Some(1));
    let out = crate::helpers::cli_on(&app.database_url, &app.keys_dir(), &app.base, &args, &env).await;
    assert_eq!(out.status.code(), Some(1));
}

#[tokio::test]
async fn a_client_finds_the_broker_from_cores_401_alone() {
    let broker = crate::helpers::spawn_app().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let core = format!("http://{}", listener.local_addr().unwrap());
    let clock = broker.state.clock().clone();
    let gate = tessera::verify::gate::Gate::with_clock(
        tessera::verify::Verifier::for_issuer(&broker.base, "core"),
        &broker.base,
        move || clock.now(),
    );
    gate.set_public_url(&core);
    let router = crate::gate::core_example::router(&gate, crate::gate::core_example::Effects::default());
    tokio::spawn(async move { axum::serve(listener, router).await.ok() });
    let http = reqwest::Client::new();
    let metadata_url = format!("{core}/.well-known/oauth-protected-resource");

    // 401 without a token, and with a bad one: the challenge names the metadata.
    for token in [None, Some("not-a-token")] {
        let mut req = http.get(format!("{core}/workspaces/ws-1"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let res = req.send().await.unwrap();
        let challenge = res.headers()["www-authenticate"].to_str().unwrap().to_owned();
        assert!(challenge.starts_with("Bearer error=\"invalid_token\""), "{challenge}");
        assert!(challenge.contains(&format!("resource_metadata=\"{metadata_url}\"")), "{challenge}");
        assert_error(res, 401, "invalid_token").await;
    }
    // From there: the metadata, then the broker's, then its token endpoint.
    let meta: Value = http.get(&metadata_url).send().await.unwrap().json().await.unwrap();
    assert_eq!(meta["resource"], core);
    assert_eq!(meta["authorization_servers"], json!([broker.base]));
    assert_eq!(meta["bearer_methods_supported"], json!(["header"]));
    assert_eq!(meta["dpop_signing_alg_values_supported"], json!(["EdDSA", "ES256"]));
    assert!(meta["scopes_supported"].as_array().unwrap().contains(&json!("workspaces:read")));
    let server = meta["authorization_servers"][0].as_str().unwrap();
    let as_meta: Value = http
        .get(format!("{server}/.well-known/oauth-authorization-server"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(as_meta["token_endpoint"], format!("{}/oauth/token", broker.base));

    // A token without the route's scope: 403 with insufficient_scope and the scope needed.
    let narrow = broker.create_client_with("acme", CallerKind::Agent, "narrow", None, &["approvals:create"], &[]).await;
    let token = broker.access_token(&narrow).await;
    let res = http.get(format!("{core}/workspaces/ws-1")).bearer_auth(&token).send().await.unwrap();
    let challenge = res.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert!(challenge.contains("error=\"insufficient_scope\""), "{challenge}");
    assert!(challenge.contains("scope=\"workspaces:read\""), "{challenge}");
    assert!(challenge.contains(&format!("resource_metadata=\"{metadata_url}\"")), "{challenge}");
    assert_error(res, 403, "forbidden").await;
    // With it, the route answers.
    let wide = broker.create_client("acme", CallerKind::Agent, "wide").await;
    let token = broker.access_token(&wide).await;
    let res = http.get(format!("{core}/workspaces/ws-1")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(res.status(), 200);
}

// Client authentication by key (RFC 7523 §2.2, private_key_jwt; design §18).

const CLIENT_ASSERTION: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Registers an agent client of tenant acme that authenticates with `key`, through the real
/// command line with `--jwk FILE`; returns its id.
async fn register_key_client(app: &TestApp, key: &IssuerKey, kind: &str) -> String {
    let mut jwk = key.jwk();
    jwk.as_object_mut().unwrap().remove("kid");
    let path = app.dir.path().join(format!("{}.jwk", key.kid));
    std::fs::write(&path, jwk.to_string()).unwrap();
    let out = app
        .cli(&[
            "clients",
            "create",
            "--tenant",
            "acme",
            "--kind",
            kind,
            "--name",
            "keyed",
            "--jwk",
            path.to_str().unwrap(),
        ])
        .await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let made: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(made["client_secret"], Value::Null, "a key client has no secret");
    assert_eq!(made["key"]["alg"], key.alg());
    made["client_id"].as_str().unwrap().to_owned()
}

fn client_claims(app: &TestApp, client_id: &str, aud: &str, jti: &str) -> Value {
    let now = app.state.now();
    json!({ "iss": client_id, "sub": client_id, "aud": aud, "iat": now, "exp": now + 300, "jti": jti })
}

async fn keyed_request(app: &TestApp, assertion: &str, extra: &[(&str, &str)]) -> reqwest::Response {
    let mut form = vec![
        ("grant_type", "client_credentials"),
        ("client_assertion_type", CLIENT_ASSERTION),
        ("client_assertion", assertion),
    ];
    form.extend_from_slice(extra);
    app.token_request(&form, None).await
}

#[tokio::test]
async fn a_client_registered_with_a_jwk_gets_tokens_by_key_with_eddsa_and_es256() {
    let app = spawn_app_with(|_| {}).await;
    let token_endpoint = app.url("/oauth/token");
    for (key, n) in [(IssuerKey::ed25519("ed-client"), 0), (IssuerKey::es256("ec-client"), 1)] {
        let id = register_key_client(&app, &key, "agent").await;
        // aud: the issuer, or the token endpoint; no kid in the header (PyJWT sends none).
        for (i, aud) in [app.base.clone(), token_endpoint.clone()].iter().enumerate() {
            let header = json!({ "alg": key.alg(), "typ": "JWT" });
            let a = key.sign_with_header(&header, &client_claims(&app, &id, aud, &format!("j-{n}-{i}")));
            let res = keyed_request(&app, &a, &[("client_id", &id)]).await;
            assert_eq!(res.status(), 200, "{} aud {aud}", key.alg());
            let body: Value = res.json().await.unwrap();
            let c = peek_claims(body["access_token"].as_str().unwrap());
            assert_eq!((c["sub"].as_str(), c["caller_kind"].as_str()), (Some(id.as_str()), Some("agent")));
        }
        // A secret never authenticates it, not even the empty one its stored hash is not.
        let res = app
            .token_request(&[("grant_type", "client_credentials"), ("client_id", &id), ("client_secret", "")], None)
            .await;
        assert_error(res, 401, "invalid_client").await;
        let out = app.cli(&["clients", "rotate-secret", &id]).await;
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("authenticates by key"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = app.cli(&["clients", "list"]).await;
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(list.contains("AUTHENTICATES_BY") && list.contains("key:"), "{list}");
}

#[tokio::test]
async fn a_service_client_introspects_by_key() {
    let app = spawn_app_with(|_| {}).await;
    let key = IssuerKey::ed25519("svc");
    let id = register_key_client(&app, &key, "service").await;
    let agent = app.create_client("acme", CallerKind::Agent, "a").await;
    let token = app.access_token(&agent).await;
    let a = key.sign_with_header(&json!({"alg": "EdDSA"}), &client_claims(&app, &id, &app.base, "intro-1"));
    let res = app
        .http
        .post(app.url("/oauth/introspect"))
        .form(&[("token", token.as_str()), ("client_assertion_type", CLIENT_ASSERTION), ("client_assertion", &a)])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["active"], true);
}

#[tokio::test]
async fn a_client_assertion_that_is_replayed_forged_or_mixed_is_refused_and_issues_nothing() {
    let app = spawn_app_with(|_| {}).await;
    let key = IssuerKey::ed25519("mine");
    let id = register_key_client(&app, &key, "agent").await;
    let base = app.base.clone();
    let header = json!({"alg": "EdDSA"});
    let sign = |claims: &Value| key.sign_with_header(&header, claims);

    let once = sign(&client_claims(&app, &id, &base, "once"));
    assert_eq!(keyed_request(&app, &once, &[]).await.status(), 200);
    let issued = count_issued(&app).await;

    let refused_401 = [
        ("a replay", once.clone()),
        (
            "another key's signature",
            IssuerKey::ed25519("mine").sign_with_header(&header, &client_claims(&app, &id, &base, "forged")),
        ),
        (
            "a kid not the registered key's",
            key.sign_with_header(&json!({"alg": "EdDSA", "kid": "other"}), &client_claims(&app, &id, &base, "k")),
        ),
        ("aud another server", sign(&client_claims(&app, &id, "https://elsewhere.example", "aud"))),
        (
            "exp ten minutes ahead",
            sign(&{
                let mut c = client_claims(&app, &id, &base, "far");
                c["exp"] = json!(app.state.now() + 600);
                c
            }),
        ),
        (
            "expired",
            sign(&{
                let mut c = client_claims(&app, &id, &base, "old");
                c["exp"] = json!(app.state.now() - 120);
                c
            }),
        ),
        (
            "sub not the client",
            sign(&{
                let mut c = client_claims(&app, &id, &base, "sub");
                c["sub"] = json!("tc_someone");
                c
            }),
        ),
        (
            "no jti",
            sign(&{
                let mut c = client_claims(&app, &id, &base, "");
                c.as_object_mut().unwrap().remove("jti");
                c
            }),
        ),
        ("not a JWS", "e30.e30".to_owned()),
    ];
    for (what, a) in &refused_401 {
        let res = keyed_request(&app, a, &[]).await;
        assert_eq!(res.status(), 401, "{what}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"], "invalid_client", "{what}");
        assert!(!body.to_string().contains(a.as_str()), "{what}: the assertion is never echoed");
    }
    // A client with a secret, an unknown id, and a disabled key client: one answer.
    let secret_client = app.create_client("acme", CallerKind::Agent, "s").await;
    for (who, jti) in [(secret_client.id.as_str(), "s1"), ("tc_AAAAAAAAAAAAAAAAAAAAAA", "u1")] {
        let a = sign(&client_claims(&app, who, &base, jti));
        assert_error(keyed_request(&app, &a, &[]).await, 401, "invalid_client").await;
    }
    // Mixed methods and wrong shapes are 400 invalid_request.
    let fresh = sign(&client_claims(&app, &id, &base, "fresh"));
    let res = app
        .token_request(
            &[
                ("grant_type", "client_credentials"),
                ("client_assertion_type", CLIENT_ASSERTION),
                ("client_assertion", &fresh),
            ],
            Some(&secret_client),
        )
        .await;
    assert_error(res, 400, "invalid_request").await;
    assert_error(keyed_request(&app, &fresh, &[("client_secret", "x")]).await, 400, "invalid_request").await;
    let res = app
        .token_request(
            &[
                ("grant_type", "client_credentials"),
                ("client_assertion_type", "urn:other"),
                ("client_assertion", &fresh),
            ],
            None,
        )
        .await;
    assert_error(res, 400, "invalid_request").await;
    let res = app
        .token_request(&[("grant_type", "client_credentials"), ("client_assertion_type", CLIENT_ASSERTION)], None)
        .await;
    assert_error(res, 400, "invalid_request").await;
    assert_error(keyed_request(&app, &fresh, &[("client_id", &secret_client.id)]).await, 401, "invalid_client").await;
    assert_eq!(count_issued(&app).await, issued, "no refused assertion issued a token");

    // Disabled: the next fresh assertion fails at once.
    let out = app.cli(&["clients", "disable", &id]).await;
    assert!(out.status.success());
    let a = sign(&client_claims(&app, &id, &base, "after-disable"));
    assert_error(keyed_request(&app, &a, &[]).await, 401, "invalid_client").await;
}

async fn count_issued(app: &TestApp) -> usize {
    app.audit_events().await.iter().filter(|e| *e == "token.issued").count()
}

/// An access token from a real IdP, shaped as Keycloak issues them: `scope`, `azp`, a `typ`
/// claim, realm roles, a `tenant` some IdPs add. None of it speaks for the registration: the
/// token gets the registered kind, tenant and scopes, and those claims are ignored, not refused.
#[tokio::test]
async fn an_idp_access_token_with_scope_and_tenant_claims_gets_the_registrations_token() {
    let ed = IssuerKey::ed25519("kc-1");
    let issuer = Issuer::start(&[&ed]).await;
    let app = spawn_trusting(&issuer, &[]).await;
    let client_id = register(&app).await;
    let mut c = claims(&app, "kc-jti-1");
    for (k, v) in [
        ("scope", json!("openid profile email approvals:decide")),
        ("azp", json!("concierge")),
        ("typ", json!("Bearer")),
        ("realm_access", json!({"roles": ["offline_access", "admin"]})),
        ("preferred_username", json!("service-account-concierge")),
        ("tenant", json!("other-org")),
        ("caller_kind", json!("operator")),
        ("client_id", json!("someone-else")),
        ("workspace", json!("ws-999")),
    ] {
        c[k] = v;
    }
    let res = bearer_grant(&app, &ed.sign(&c), &[]).await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    let t = peek_claims(body["access_token"].as_str().unwrap());
    assert_eq!(t["sub"], client_id);
    assert_eq!(t["client_id"], client_id);
    assert_eq!(t["caller_kind"], "agent");
    assert_eq!(t["tenant"], "acme");
    assert_eq!(t["workspace"], "ws-7");
    assert_eq!(t["scope"], "workspaces:read");
}
