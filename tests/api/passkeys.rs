//! Passkeys — a human, with an authenticator, approves this exact request (design §15).
//!
//! Over HTTP against the real broker, with a software authenticator (ES256 with ring) that
//! answers the console's ceremonies as a browser would. The browser tests in `console::` run
//! the same ceremonies in Chromium with a WebDriver virtual authenticator.

use ring::digest::{SHA256, digest};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::{Value, json};
use tessera::domain::CallerKind;
use tessera::passkeys::{Assertion, COSE_ES256, CredentialKey, Registration, RelyingParty};
use tessera::token::b64;

use crate::helpers::*;

const SPKI_P256: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce,
    0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// A software authenticator: one ES256 credential, user-verifying unless told otherwise.
pub struct Soft {
    pair: EcdsaKeyPair,
    id: Vec<u8>,
    count: u32,
    pub uv: bool,
    pub origin: String,
    pub rp_id: String,
}

impl Soft {
    pub fn new(origin: &str) -> Soft {
        let rng = SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, doc.as_ref(), &rng).unwrap();
        let mut id = [0u8; 16];
        ring::rand::SecureRandom::fill(&rng, &mut id).unwrap();
        Soft { pair, id: id.to_vec(), count: 0, uv: true, origin: origin.into(), rp_id: "localhost".into() }
    }

    fn flags(&self, extra: u8) -> u8 {
        0x01 | if self.uv { 0x04 } else { 0 } | extra
    }

    fn client(&self, kind: &str, challenge: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({"type": kind, "challenge": challenge, "origin": self.origin})).unwrap()
    }

    pub fn register(&self, challenge: &str) -> Registration {
        let point = self.pair.public_key().as_ref().to_vec();
        let mut data = digest(&SHA256, self.rp_id.as_bytes()).as_ref().to_vec();
        data.push(self.flags(0x40));
        data.extend_from_slice(&0u32.to_be_bytes());
        data.extend_from_slice(&[0u8; 16]);
        data.extend_from_slice(&(self.id.len() as u16).to_be_bytes());
        data.extend_from_slice(&self.id);
        // The COSE key {1: 2, 3: -7, -1: 1, -2: x, -3: y}, as an authenticator writes it.
        data.extend_from_slice(&[0xa5, 0x01, 0x02, 0x03, 0x26, 0x20, 0x01, 0x21, 0x58, 0x20]);
        data.extend_from_slice(&point[1..33]);
        data.extend_from_slice(&[0x22, 0x58, 0x20]);
        data.extend_from_slice(&point[33..65]);
        let mut spki = SPKI_P256.to_vec();
        spki.extend_from_slice(&point);
        Registration {
            credential_id: self.id.clone(),
            client_data_json: self.client("webauthn.create", challenge),
            authenticator_data: data,
            public_key: spki,
            alg: COSE_ES256,
        }
    }

    pub fn assert(&mut self, challenge: &str) -> Assertion {
        self.count += 1;
        let mut data = digest(&SHA256, self.rp_id.as_bytes()).as_ref().to_vec();
        data.push(self.flags(0));
        data.extend_from_slice(&self.count.to_be_bytes());
        let client = self.client("webauthn.get", challenge);
        let mut signed = data.clone();
        signed.extend_from_slice(digest(&SHA256, &client).as_ref());
        let sig = self.pair.sign(&SystemRandom::new(), &signed).unwrap();
        Assertion {
            credential_id: b64::encode(&self.id),
            client_data: b64::encode(&client),
            authenticator_data: b64::encode(&data),
            signature: b64::encode(sig.as_ref()),
        }
    }
}

fn rp() -> RelyingParty {
    RelyingParty { rp_id: "localhost".into(), origins: vec!["http://localhost:8700".into()] }
}

#[test]
fn a_registration_and_its_assertions_verify_and_nothing_else_does() {
    use tessera::passkeys::{decision_challenge, verify_assertion, verify_registration};
    let rp = rp();
    let mut soft = Soft::new("http://localhost:8700");
    let c = b64::encode(b"enrol-challenge");
    let reg = soft.register(&c);
    let (key, count) = verify_registration(&rp, &reg, b"enrol-challenge").unwrap();
    assert_eq!((key.alg, count), (COSE_ES256, 0));
    assert!(verify_registration(&rp, &reg, b"another challenge").is_err());
    let mut other_key = reg.clone();
    other_key.public_key = Soft::new("x").register(&c).public_key;
    assert!(verify_registration(&rp, &other_key, b"enrol-challenge").is_err(), "a key not in the data");
    let mut elsewhere = Soft::new("http://127.0.0.1:8700");
    assert!(verify_registration(&rp, &elsewhere.register(&c), b"enrol-challenge").is_err(), "another origin");
    elsewhere.origin = "http://localhost:8700".into();
    elsewhere.rp_id = "evil.example".into();
    assert!(verify_registration(&rp, &elsewhere.register(&c), b"enrol-challenge").is_err(), "another rp id");

    let ch = decision_challenge("apr_1", "sha256:x", "approve", "nonce");
    let a = soft.assert(&b64::encode(&ch));
    assert_eq!(verify_assertion(&rp, &a, &ch, &key, 0).unwrap(), 1);
    assert!(verify_assertion(&rp, &a, &ch, &key, 1).is_err(), "the counter did not move");
    for other in [
        decision_challenge("apr_1", "sha256:x", "deny", "nonce"),
        decision_challenge("apr_2", "sha256:x", "approve", "nonce"),
        decision_challenge("apr_1", "sha256:y", "approve", "nonce"),
    ] {
        assert!(verify_assertion(&rp, &a, &other, &key, 0).is_err());
    }
    let mut forged = soft.assert(&b64::encode(&ch));
    forged.signature = a.signature.clone();
    assert!(verify_assertion(&rp, &forged, &ch, &key, 1).is_err(), "a signature over other data");
    let stranger = CredentialKey { alg: COSE_ES256, raw: Soft::new("x").pair.public_key().as_ref().to_vec() };
    assert!(verify_assertion(&rp, &soft.assert(&b64::encode(&ch)), &ch, &stranger, 0).is_err(), "another key");

    // An authenticator that does not verify the user is refused, at registration and after.
    soft.uv = false;
    let e = verify_assertion(&rp, &soft.assert(&b64::encode(&ch)), &ch, &key, 10).unwrap_err();
    assert!(e.to_string().contains("verify the user"), "{e}");
    assert!(verify_registration(&rp, &soft.register(&c), b"enrol-challenge").is_err());
}

// -------------------------------------------------------------------------------------------
// The console's ceremonies

/// A broker whose policy needs passkeys for org tokens and secrets.
async fn broker() -> TestApp {
    spawn_app_with(|c| {
        let file: tessera::policy::PolicyFile =
            toml::from_str(r#"passkey_actions = ["org_token_mint", "secret_write"]"#).unwrap();
        c.policy = tessera::policy::Policy::from_file(&file).unwrap();
    })
    .await
}

fn origin(app: &TestApp) -> String {
    format!("http://localhost:{}", app.addr.port())
}

/// A console session: its cookie and CSRF token.
struct Session {
    cookie: String,
    csrf: String,
}

fn csrf_of(html: &str) -> String {
    let marker = "name=\"csrf\" value=\"";
    let start = html.find(marker).expect("a CSRF token") + marker.len();
    html[start..].split('"').next().unwrap().to_owned()
}

async fn session_from(app: &TestApp, set_cookie: &str) -> Session {
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let html = app.http.get(app.url("/console/passkeys")).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(html.status(), 200);
    Session { csrf: csrf_of(&html.text().await.unwrap()), cookie }
}

async fn sign_in_with_secret(app: &TestApp, op: &TestClient) -> Session {
    let res = app
        .http
        .post(app.url("/console/sign-in"))
        .form(&[("client_id", op.id.as_str()), ("client_secret", op.secret.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
    session_from(app, res.headers()["set-cookie"].to_str().unwrap()).await
}

async fn post_form(app: &TestApp, s: &Session, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
    app.http.post(app.url(path)).header("cookie", &s.cookie).form(form).send().await.unwrap()
}

/// An administrator's one-time enrolment code for `op`'s first passkey.
async fn enrolment_code(app: &TestApp, op: &TestClient) -> String {
    let out = app.cli(&["clients", "passkey-enrolment", &op.id]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["enrolment_code"].as_str().unwrap().to_owned()
}

async fn enrol(app: &TestApp, s: &Session, soft: &Soft) -> reqwest::Response {
    enrol_with(app, s, soft, "").await
}

async fn enrol_with(app: &TestApp, s: &Session, soft: &Soft, code: &str) -> reqwest::Response {
    let res = post_form(app, s, "/console/passkeys/options", &[("csrf", &s.csrf), ("code", code)]).await;
    if res.status() != 200 {
        return res;
    }
    let o: Value = res.json().await.unwrap();
    let reg = soft.register(o["challenge"].as_str().unwrap());
    let body = json!({
        "csrf": s.csrf, "challenge": o["challenge"], "credential_id": b64::encode(&reg.credential_id),
        "client_data": b64::encode(&reg.client_data_json), "authenticator_data": b64::encode(&reg.authenticator_data),
        "public_key": b64::encode(&reg.public_key), "alg": reg.alg, "name": "test key", "code": code,
    });
    app.http.post(app.url("/console/passkeys")).header("cookie", &s.cookie).json(&body).send().await.unwrap()
}

async fn sign_in_with_passkey(app: &TestApp, soft: &mut Soft) -> reqwest::Response {
    let o: Value = app
        .http
        .post(app.url("/console/sign-in/passkey/options"))
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let challenge = o["challenge"].as_str().unwrap().to_owned();
    let mut body = serde_json::to_value(soft.assert(&challenge)).unwrap();
    body["challenge"] = json!(challenge);
    app.http.post(app.url("/console/sign-in/passkey")).json(&body).send().await.unwrap()
}

/// The decision's challenge for `decision` on `id`, from the console.
async fn decision_challenge(app: &TestApp, s: &Session, id: &str, decision: &str) -> String {
    let res =
        post_form(app, s, &format!("/console/approvals/{id}/passkey"), &[("csrf", &s.csrf), ("decision", decision)])
            .await;
    assert_eq!(res.status(), 200);
    res.json::<Value>().await.unwrap()["challenge"].as_str().unwrap().to_owned()
}

async fn decide_with(
    app: &TestApp,
    s: &Session,
    id: &str,
    decision: &str,
    challenge: &str,
    a: &Assertion,
) -> reqwest::Response {
    post_form(
        app,
        s,
        &format!("/console/approvals/{id}/decision"),
        &[
            ("csrf", &s.csrf),
            ("decision", decision),
            ("confirm", "yes"),
            ("challenge", challenge),
            ("credential_id", &a.credential_id),
            ("client_data", &a.client_data),
            ("authenticator_data", &a.authenticator_data),
            ("signature", &a.signature),
        ],
    )
    .await
}

async fn status(app: &TestApp, token: &str, id: &str) -> Value {
    app.get_bearer(&format!("/v1/approvals/{id}"), token).await.json().await.unwrap()
}

/// With `passkey_actions = ["org_token_mint", "secret_write"]`, no operator secret alone can
/// approve either action: the API and the CLI get `passkey_required`, the console without an
/// assertion changes nothing; a user-verified assertion over exactly this decision approves,
/// the requester gets its capability, and the decision says `passkey`.
#[tokio::test]
async fn passkey_actions_are_decided_only_with_a_passkey() {
    let app = broker().await;
    let agent = app.create_client("org-1", CallerKind::Agent, "concierge").await;
    let op = app.create_client("org-1", CallerKind::Operator, "alice").await;
    let at = app.access_token(&agent).await;
    let ot = app.access_token(&op).await;
    let id = app.pending_approval(&at, "org_token_mint", "orgs/org-1/tokens", &json!({"name": "ci"})).await;

    // The API, with the operator's own token.
    assert_error(app.decide(&ot, &id, "approve").await, 403, "passkey_required").await;
    assert_error(app.decide(&ot, &id, "deny").await, 403, "passkey_required").await;
    // The CLI, with its secret.
    let env = [("TESSERA_CLIENT_ID", op.id.as_str()), ("TESSERA_CLIENT_SECRET", op.secret.as_str())];
    let out = cli_on(&app.database_url, &app.keys_dir(), &app.base, &["approvals", "approve", &id], &env).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("passkey_required"));
    // Another action is decided as before.
    let other = app.pending_approval(&at, "workspace_delete", "workspaces/ws-9", &json!({})).await;
    assert_eq!(app.decide(&ot, &other, "approve").await.status(), 200);

    // The console, signed in with the secret: enrol, then decide with the passkey.
    let s = sign_in_with_secret(&app, &op).await;
    let mut soft = Soft::new(&origin(&app));
    let res = post_form(
        &app,
        &s,
        &format!("/console/approvals/{id}/decision"),
        &[("csrf", &s.csrf), ("decision", "approve"), ("confirm", "yes")],
    )
    .await;
    assert_eq!(res.status(), 403, "no assertion, no decision");
    assert_eq!(status(&app, &ot, &id).await["status"], "pending");
    // The first passkey needs an administrator's one-time enrolment code: an operator secret
    // alone (in an agent's hands, say) never enrols an authenticator of its own.
    assert_eq!(enrol(&app, &s, &soft).await.status(), 403);
    let mallory = app.create_client("org-1", CallerKind::Operator, "mallory").await;
    let not_mine = enrolment_code(&app, &mallory).await;
    assert_eq!(enrol_with(&app, &s, &soft, &not_mine).await.status(), 403, "another operator's code");
    let code = enrolment_code(&app, &op).await;
    assert_eq!(enrol_with(&app, &s, &soft, &code).await.status(), 200);
    // The code is used once: with the passkey removed, the same code enrols nothing.
    assert!(app.cli(&["clients", "remove-passkeys", &op.id]).await.status.success());
    assert_eq!(enrol_with(&app, &s, &Soft::new(&origin(&app)), &code).await.status(), 403, "a used code");
    let code = enrolment_code(&app, &op).await;
    soft = Soft::new(&origin(&app));
    assert_eq!(enrol_with(&app, &s, &soft, &code).await.status(), 200);

    // The confirmation page asks for the passkey.
    let page = post_form(
        &app,
        &s,
        &format!("/console/approvals/{id}/decision"),
        &[("csrf", &s.csrf), ("decision", "approve")],
    )
    .await;
    assert!(page.text().await.unwrap().contains("passkey-decide"));

    let challenge = decision_challenge(&app, &s, &id, "approve").await;
    let a = soft.assert(&challenge);
    let res = decide_with(&app, &s, &id, "approve", &challenge, &a).await;
    assert_eq!(res.status(), 303, "approved with the passkey");
    let v = status(&app, &ot, &id).await;
    assert_eq!(v["status"], "approved");
    assert_eq!(v["decisions"][0]["method"], "passkey");
    assert!(app.capability(&at, &id).await.is_some(), "the requester gets its capability");

    // The audit log keeps the evidence, and `audit verify` checks it again.
    let records = tessera::audit::read_page(app.state.store(), 0, 10_000).await.unwrap();
    let decided = records.iter().find(|r| r.event == "approval.decided" && r.subject == id).unwrap();
    let detail: Value = serde_json::from_str(&decided.detail).unwrap();
    assert_eq!(detail["method"], "passkey");
    assert_eq!(detail["credential_id"], a.credential_id);
    assert_eq!(detail["signature"], a.signature);
    let out = app.cli(&["audit", "verify"]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("passkey decisions verified: 1"));
}

/// An assertion for another approval, for the other decision, replayed, from an authenticator
/// that does not verify the user, or by another operator's passkey: refused, nothing decided.
#[tokio::test]
async fn assertions_for_anything_but_this_decision_are_refused() {
    let app = broker().await;
    let agent = app.create_client("org-1", CallerKind::Agent, "concierge").await;
    let op = app.create_client("org-1", CallerKind::Operator, "alice").await;
    let bob = app.create_client("org-1", CallerKind::Operator, "bob").await;
    let at = app.access_token(&agent).await;
    let ot = app.access_token(&op).await;
    let a_id = app.pending_approval(&at, "org_token_mint", "orgs/org-1/tokens", &json!({"name": "a"})).await;
    let b_id = app.pending_approval(&at, "org_token_mint", "orgs/org-1/tokens", &json!({"name": "b"})).await;
    let s = sign_in_with_secret(&app, &op).await;
    let mut soft = Soft::new(&origin(&app));
    let code = enrolment_code(&app, &op).await;
    assert_eq!(enrol_with(&app, &s, &soft, &code).await.status(), 200);

    // Another approval's challenge.
    let ch_b = decision_challenge(&app, &s, &b_id, "approve").await;
    let res = decide_with(&app, &s, &a_id, "approve", &ch_b, &soft.assert(&ch_b)).await;
    assert_eq!(res.status(), 403);
    // The other decision's challenge: a "deny" signed, an "approve" submitted.
    let ch_deny = decision_challenge(&app, &s, &a_id, "deny").await;
    let res = decide_with(&app, &s, &a_id, "approve", &ch_deny, &soft.assert(&ch_deny)).await;
    assert_eq!(res.status(), 403);
    // Without user verification.
    let ch = decision_challenge(&app, &s, &a_id, "approve").await;
    soft.uv = false;
    let res = decide_with(&app, &s, &a_id, "approve", &ch, &soft.assert(&ch)).await;
    assert_eq!(res.status(), 403);
    soft.uv = true;
    // Bob's session cannot use Alice's challenge, nor Bob his own unenrolled self.
    let bob_s = sign_in_with_secret(&app, &bob).await;
    let ch = decision_challenge(&app, &s, &a_id, "approve").await;
    let res = decide_with(&app, &bob_s, &a_id, "approve", &ch, &soft.assert(&ch)).await;
    assert_eq!(res.status(), 403);
    assert_eq!(status(&app, &ot, &a_id).await["status"], "pending");
    assert_eq!(status(&app, &ot, &a_id).await["decisions"], json!([]));

    // The real thing, once; the same assertion replayed on the other approval and again.
    let ch = decision_challenge(&app, &s, &a_id, "approve").await;
    let good = soft.assert(&ch);
    assert_eq!(decide_with(&app, &s, &a_id, "approve", &ch, &good).await.status(), 303);
    assert_eq!(status(&app, &ot, &a_id).await["status"], "approved");
    assert_eq!(decide_with(&app, &s, &b_id, "approve", &ch, &good).await.status(), 403);
    assert_eq!(decide_with(&app, &s, &a_id, "approve", &ch, &good).await.status(), 403);
    assert_eq!(status(&app, &ot, &b_id).await["status"], "pending");
}

/// Sign-in with a passkey starts a session; `console_passkey_only` then refuses the secret for
/// an operator who has one; an operator who has a passkey adds or removes passkeys only from a
/// passkey session.
#[tokio::test]
async fn operators_sign_in_with_their_passkey_and_the_policy_can_require_it() {
    let app = spawn_app_with(|c| {
        let file: tessera::policy::PolicyFile = toml::from_str("console_passkey_only = true").unwrap();
        c.policy = tessera::policy::Policy::from_file(&file).unwrap();
    })
    .await;
    let op = app.create_client("org-1", CallerKind::Operator, "alice").await;
    let s = sign_in_with_secret(&app, &op).await;
    let mut soft = Soft::new(&origin(&app));
    let code = enrolment_code(&app, &op).await;
    assert_eq!(enrol_with(&app, &s, &soft, &code).await.status(), 200);
    // With a passkey, the secret session may not add another.
    let second = Soft::new(&origin(&app));
    assert_eq!(enrol(&app, &s, &second).await.status(), 403);

    // The secret no longer signs this operator in.
    let res = app
        .http
        .post(app.url("/console/sign-in"))
        .form(&[("client_id", op.id.as_str()), ("client_secret", op.secret.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert!(res.text().await.unwrap().contains("Use your passkey"));

    // The passkey does; a replayed sign-in assertion does not.
    let res = sign_in_with_passkey(&app, &mut soft).await;
    assert_eq!(res.status(), 200);
    let cookie = res.headers()["set-cookie"].to_str().unwrap().to_owned();
    let ps = session_from(&app, &cookie).await;
    assert_eq!(enrol(&app, &ps, &second).await.status(), 200, "a passkey session may add one");
    let mut unknown = Soft::new(&origin(&app));
    assert_eq!(sign_in_with_passkey(&app, &mut unknown).await.status(), 401, "an unknown credential");
    let o: Value = app
        .http
        .post(app.url("/console/sign-in/passkey/options"))
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut body = serde_json::to_value(soft.assert(o["challenge"].as_str().unwrap())).unwrap();
    body["challenge"] = o["challenge"].clone();
    assert_eq!(app.http.post(app.url("/console/sign-in/passkey")).json(&body).send().await.unwrap().status(), 200);
    assert_eq!(
        app.http.post(app.url("/console/sign-in/passkey")).json(&body).send().await.unwrap().status(),
        401,
        "replayed"
    );

    // Recovery, when the operator loses its authenticator: an administrator removes its
    // passkeys; the secret signs it in again, to enrol a new one; the old passkey is refused.
    let out = app.cli(&["clients", "remove-passkeys", &op.id]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["passkeys_removed"], 2);
    assert_eq!(sign_in_with_passkey(&app, &mut soft).await.status(), 401);
    let again = sign_in_with_secret(&app, &op).await;
    let code = enrolment_code(&app, &op).await;
    assert_eq!(enrol_with(&app, &again, &Soft::new(&origin(&app)), &code).await.status(), 200);
    assert!(app.audit_events().await.iter().any(|e| e == "passkey.removed"));
}

/// `tessera audit verify` re-checks every passkey decision: a decision row edited afterwards,
/// or a stored key swapped for another, is named.
#[tokio::test]
async fn audit_verify_catches_an_edited_passkey_decision() {
    let app = broker().await;
    let agent = app.create_client("org-1", CallerKind::Agent, "concierge").await;
    let op = app.create_client("org-1", CallerKind::Operator, "alice").await;
    let at = app.access_token(&agent).await;
    let id = app.pending_approval(&at, "secret_write", "workspaces/ws-1/secrets/K", &json!({"key": "K"})).await;
    let s = sign_in_with_secret(&app, &op).await;
    let mut soft = Soft::new(&origin(&app));
    let code = enrolment_code(&app, &op).await;
    assert_eq!(enrol_with(&app, &s, &soft, &code).await.status(), 200);
    let ch = decision_challenge(&app, &s, &id, "deny").await;
    assert_eq!(decide_with(&app, &s, &id, "deny", &ch, &soft.assert(&ch)).await.status(), 303);
    assert!(app.cli(&["audit", "verify"]).await.status.success());

    // Someone with database access turns the deny into an approval.
    sqlx::query("UPDATE decisions SET decision = 'approve' WHERE approval_id = $1")
        .bind(&id)
        .execute(app.state.store().pool())
        .await
        .unwrap();
    let out = app.cli(&["audit", "verify"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&id), "{}", String::from_utf8_lossy(&out.stderr));
    sqlx::query("UPDATE decisions SET decision = 'deny' WHERE approval_id = $1")
        .bind(&id)
        .execute(app.state.store().pool())
        .await
        .unwrap();
    assert!(app.cli(&["audit", "verify"]).await.status.success());

    // Or replaces the stored public key with one of their own.
    let other = Soft::new("x");
    let raw = b64::encode(other.pair.public_key().as_ref());
    sqlx::query("UPDATE passkeys SET public_key = $1").bind(&raw).execute(app.state.store().pool()).await.unwrap();
    let out = app.cli(&["audit", "verify"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not verify"));
}
