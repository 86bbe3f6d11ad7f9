//! The operator console.
//!
//! Two layers. HTTP-level tests (reqwest, no browser) pin the refusals, the cookie, the
//! sessions and the headers. Browser tests drive headless Chromium through chromedriver
//! (Debian's `chromium` and `chromium-driver`) the way an operator would: they fail, never
//! skip, when either is missing. The browser tests also take the screenshots in
//! docs/screenshots/ when `TESSERA_UPDATE_SCREENSHOTS=1` (otherwise into the target folder).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use fantoccini::key::Key;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use tessera::domain::CallerKind;

use crate::helpers::*;

const SECRET_RESOURCE: &str = "workspaces/ws-2/secrets/OPENAI_KEY";

// ------------------------------------------------------------------------------------------
// The org every test uses

struct Org {
    app: TestApp,
    agent: TestClient,
    agent_token: String,
    op: TestClient,
}

async fn org() -> Org {
    org_with(|_| {}).await
}

async fn org_with(tweak: impl FnOnce(&mut tessera::config::Config)) -> Org {
    let app = spawn_app_with(tweak).await;
    let agent = app.create_client("acme", CallerKind::Agent, "concierge").await;
    let op = app.create_client("acme", CallerKind::Operator, "alice").await;
    let agent_token = app.access_token(&agent).await;
    Org { app, agent, agent_token, op }
}

/// A pending approval as core's gate would create it: the parameters as presented (secret
/// values as length and fingerprint), their digest, a real reason.
async fn request(app: &TestApp, token: &str, action: &str, resource: &str, params: Value, reason: &str) -> String {
    let body = json!({
        "action": action,
        "resource": resource,
        "params": params,
        "params_digest": tessera::verify::params_digest(&params).to_string(),
        "reason": reason,
    });
    let res = app.post_bearer("/v1/approvals", token, &body).await;
    assert_eq!(res.status(), 202, "approval request");
    let v: Value = res.json().await.unwrap();
    v["approval_id"].as_str().unwrap().to_owned()
}

fn secret_summary() -> Value {
    let value = "sk-proj-0123456789abcdefghijklmnopqrstuvwxyzABCDEFG";
    assert_eq!(value.len(), 51);
    tessera::verify::presented(&json!({"key": "OPENAI_KEY", "value": value}), &["value"]).unwrap()
}

async fn secret_request(o: &Org) -> String {
    request(
        &o.app,
        &o.agent_token,
        "secret_write",
        SECRET_RESOURCE,
        secret_summary(),
        "Rotate the OpenAI key: the old one leaked in incident INC-2291",
    )
    .await
}

async fn approval(o: &Org, id: &str) -> Value {
    let res = o.app.get_bearer(&format!("/v1/approvals/{id}"), &o.agent_token).await;
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

// ------------------------------------------------------------------------------------------
// HTTP helpers

async fn post_form(app: &TestApp, path: &str, cookie: Option<&str>, form: &[(&str, &str)]) -> reqwest::Response {
    let mut req = app.http.post(app.url(path)).form(form);
    if let Some(c) = cookie {
        req = req.header("cookie", format!("tessera_console={c}"));
    }
    req.send().await.unwrap()
}

async fn get_page(app: &TestApp, path: &str, cookie: Option<&str>) -> reqwest::Response {
    let mut req = app.http.get(app.url(path));
    if let Some(c) = cookie {
        req = req.header("cookie", format!("tessera_console={c}"));
    }
    req.send().await.unwrap()
}

async fn sign_in_raw(app: &TestApp, id: &str, secret: &str) -> reqwest::Response {
    post_form(app, "/console/sign-in", None, &[("client_id", id), ("client_secret", secret)]).await
}

fn set_cookie(res: &reqwest::Response) -> Option<String> {
    res.headers().get("set-cookie").map(|v| v.to_str().unwrap().to_owned())
}

fn cookie_value(set_cookie: &str) -> String {
    let first = set_cookie.split(';').next().unwrap();
    first.strip_prefix("tessera_console=").expect("the console cookie").to_owned()
}

/// Signs in and returns the session cookie's value.
async fn sign_in(app: &TestApp, c: &TestClient) -> String {
    let res = sign_in_raw(app, &c.id, &c.secret).await;
    assert_eq!(res.status(), 303, "sign-in redirects");
    assert_eq!(res.headers()["location"], "/console");
    cookie_value(&set_cookie(&res).expect("a session cookie"))
}

/// The CSRF token in a page's forms.
fn csrf_of(html: &str) -> String {
    let marker = "name=\"csrf\" value=\"";
    let start = html.find(marker).expect("a form with a CSRF token") + marker.len();
    html[start..].split('"').next().unwrap().to_owned()
}

async fn page_text(res: reqwest::Response) -> (u16, String) {
    let status = res.status().as_u16();
    (status, res.text().await.unwrap())
}

fn sha256_hex(s: &str) -> String {
    use ring::digest::{SHA256, digest};
    digest(&SHA256, s.as_bytes()).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

async fn session_rows(app: &TestApp) -> Vec<(String, String, i64, i64)> {
    use sqlx::Row;
    sqlx::query("SELECT session_hash, client_id, created_at, expires_at FROM console_sessions ORDER BY created_at")
        .fetch_all(app.state.store().pool())
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

// ------------------------------------------------------------------------------------------
// HTTP-level tests

#[tokio::test]
async fn console_sign_in_page_headers_and_assets() {
    let app = spawn_app().await;
    let res = get_page(&app, "/console", None).await;
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()["location"], "/console/sign-in");

    let res = get_page(&app, "/console/sign-in", None).await;
    assert_eq!(res.status(), 200);
    let h = res.headers().clone();
    assert!(h["content-type"].to_str().unwrap().starts_with("text/html"));
    let csp = h["content-security-policy"].to_str().unwrap();
    for directive in ["default-src 'self'", "frame-ancestors 'none'", "form-action 'self'"] {
        assert!(csp.contains(directive), "{csp}");
    }
    assert!(!csp.contains("unsafe"), "{csp}");
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["cache-control"], "no-store");
    assert_eq!(h["x-content-type-options"], "nosniff");
    let html = res.text().await.unwrap();
    assert!(html.contains("name=\"client_id\"") && html.contains("name=\"client_secret\""));
    assert!(html.contains("name=\"viewport\""), "readable on phones");
    // Nothing from outside the broker: every URL in the page is a path of its own, but for the
    // link to this same console under its passkey host name (this page was opened on an IP).
    let itself = format!("{}/console", app.state.config().passkey_origins()[0]);
    for attr in ["src=\"", "href=\""] {
        for part in html.split(attr).skip(1) {
            let url = part.split('"').next().unwrap();
            assert!(url.starts_with('/') || url.starts_with('#') || url == itself, "outside asset {url}");
        }
    }
    let css_href = html.split("rel=\"stylesheet\" href=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
    let res = get_page(&app, &css_href.replace("&amp;", "&"), None).await;
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"].to_str().unwrap().starts_with("text/css"));
    assert!(res.headers()["cache-control"].to_str().unwrap().contains("max-age=31536000"));
    assert!(res.text().await.unwrap().contains(".status-pending"));
    let res = get_page(&app, "/console/static/favicon.svg", None).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "image/svg+xml");

    let res = get_page(&app, "/console/", None).await;
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()["location"], "/console");
    // Unknown console pages are HTML, not the API's JSON; the API keeps its JSON 404.
    let res = get_page(&app, "/console/nope", None).await;
    assert_eq!(res.status(), 404);
    assert!(res.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    assert_error(app.http.get(app.url("/nope")).send().await.unwrap(), 404, "not_found").await;
}

#[tokio::test]
async fn console_refuses_wrong_unknown_disabled_and_non_operator_credentials_identically() {
    let o = org().await;
    let app = &o.app;
    let disabled = app.create_client("acme", CallerKind::Operator, "gone").await;
    tessera::clients::disable(app.state.store(), &disabled.id, "test", app.state.now()).await.unwrap();
    let service = app.create_client("acme", CallerKind::Service, "core").await;
    let install = app.create_client("acme", CallerKind::Install, "provisioner").await;

    let attempts: Vec<(&str, String, String)> = vec![
        ("wrong secret", o.op.id.clone(), format!("{}x", o.op.secret)),
        ("unknown client", "tc_AAAAAAAAAAAAAAAAAAAAAA".to_owned(), o.op.secret.clone()),
        ("disabled operator", disabled.id.clone(), disabled.secret.clone()),
        ("agent with its right secret", o.agent.id.clone(), o.agent.secret.clone()),
        ("service with its right secret", service.id.clone(), service.secret.clone()),
        ("install with its right secret", install.id.clone(), install.secret.clone()),
        ("empty", String::new(), String::new()),
    ];
    let mut answers = Vec::new();
    for (what, id, secret) in &attempts {
        let res = sign_in_raw(app, id, secret).await;
        assert!(set_cookie(&res).is_none(), "{what}: no cookie");
        let ct = res.headers()["content-type"].to_str().unwrap().to_owned();
        let (status, body) = page_text(res).await;
        assert_eq!(status, 401, "{what}");
        assert!(ct.starts_with("text/html"), "{what}");
        assert!(body.contains("did not sign you in"), "{what}");
        answers.push((what, body));
    }
    for (what, body) in &answers[1..] {
        assert_eq!(body, &answers[0].1, "{what} must get exactly the wrong-secret answer");
    }
    assert!(session_rows(app).await.is_empty());
    // The agent's credentials still work where they belong.
    assert_eq!(app.token_request(&[("grant_type", "client_credentials")], Some(&o.agent)).await.status(), 200);
}

#[tokio::test]
async fn console_session_cookie_is_httponly_strict_scoped_and_stored_only_as_a_hash() {
    let o = org().await;
    let res = sign_in_raw(&o.app, &o.op.id, &o.op.secret).await;
    assert_eq!(res.status(), 303);
    let sc = set_cookie(&res).unwrap();
    let attrs: Vec<&str> = sc.split(';').map(str::trim).collect();
    for a in ["HttpOnly", "SameSite=Strict", "Path=/console", "Max-Age=28800"] {
        assert!(attrs.contains(&a), "{a} missing from {sc}");
    }
    assert!(!attrs.contains(&"Secure"), "plain-http issuer: no Secure flag ({sc})");
    let id = cookie_value(&sc);
    assert_eq!(id.len(), 43, "256 random bits");

    let rows = session_rows(&o.app).await;
    assert_eq!(rows.len(), 1);
    let (hash, client, created, expires) = &rows[0];
    assert_eq!(hash, &sha256_hex(&id));
    assert_eq!(client, &o.op.id);
    assert_eq!(expires - created, 8 * 3600);
    // The id itself is nowhere in the database's session table or audit log.
    let dump: String = tessera::audit::read_page(o.app.state.store(), 0, 10_000)
        .await
        .unwrap()
        .iter()
        .map(|r| format!("{} {}", r.detail, r.subject))
        .collect();
    assert!(!dump.contains(&id) && !hash.contains(&id));
    assert!(o.app.audit_events().await.iter().any(|e| e == "console.signed_in"));

    // The pages work with it; the API does not take it.
    let (status, html) = page_text(get_page(&o.app, "/console", Some(&id)).await).await;
    assert_eq!(status, 200);
    assert!(html.contains("Waiting for a decision") && html.contains("alice"));
    let res = o.app.http.get(o.app.url("/v1/approvals")).header("cookie", format!("tessera_console={id}")).send().await;
    assert_error(res.unwrap(), 401, "invalid_token").await;
}

#[tokio::test]
async fn console_cookie_is_secure_behind_https_and_the_session_ends_when_its_lifetime_does() {
    let o = org_with(|c| {
        c.issuer = "https://tessera.example".to_owned();
        c.console_session_secs = 900;
    })
    .await;
    let res = sign_in_raw(&o.app, &o.op.id, &o.op.secret).await;
    let sc = set_cookie(&res).unwrap();
    let attrs: Vec<&str> = sc.split(';').map(str::trim).collect();
    assert!(attrs.contains(&"Secure") && attrs.contains(&"Max-Age=900"), "{sc}");
    let id = cookie_value(&sc);
    assert_eq!(get_page(&o.app, "/console", Some(&id)).await.status(), 200);
    o.app.state.clock().advance(901);
    let res = get_page(&o.app, "/console", Some(&id)).await;
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()["location"], "/console/sign-in?ended=1");
    assert!(set_cookie(&res).unwrap().contains("Max-Age=0"), "the stale cookie is dropped");
    assert!(session_rows(&o.app).await.is_empty(), "the expired session is deleted");
}

#[tokio::test]
async fn console_sign_out_ends_the_session_on_the_server() {
    let o = org().await;
    let id = sign_in(&o.app, &o.op).await;
    let other = sign_in(&o.app, &o.op).await;
    let html = get_page(&o.app, "/console", Some(&id)).await.text().await.unwrap();
    let csrf = csrf_of(&html);

    // Without the token, sign-out is refused and the session lives on.
    let res = post_form(&o.app, "/console/sign-out", Some(&id), &[]).await;
    assert_eq!(res.status(), 403);
    assert_eq!(get_page(&o.app, "/console", Some(&id)).await.status(), 200);

    let res = post_form(&o.app, "/console/sign-out", Some(&id), &[("csrf", &csrf)]).await;
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()["location"], "/console/sign-in?signed_out=1");
    assert!(set_cookie(&res).unwrap().contains("Max-Age=0"));
    // The old cookie, replayed, signs nobody in: the session is gone from the table.
    let res = get_page(&o.app, "/console", Some(&id)).await;
    assert_eq!(res.status(), 303);
    let rows = session_rows(&o.app).await;
    assert_eq!(rows.len(), 1, "only the other session is left");
    assert_eq!(rows[0].0, sha256_hex(&other));
    assert_eq!(get_page(&o.app, "/console", Some(&other)).await.status(), 200);
    assert!(o.app.audit_events().await.iter().any(|e| e == "console.signed_out"));
}

#[tokio::test]
async fn console_sessions_end_when_the_operator_client_is_disabled() {
    let o = org().await;
    let a = sign_in(&o.app, &o.op).await;
    let b = sign_in(&o.app, &o.op).await;
    let pending = secret_request(&o).await;
    assert_eq!(get_page(&o.app, "/console", Some(&a)).await.status(), 200);

    tessera::clients::disable(o.app.state.store(), &o.op.id, "test", o.app.state.now()).await.unwrap();
    let res = get_page(&o.app, "/console", Some(&a)).await;
    assert_eq!(res.status(), 303, "the next request is refused");
    assert!(session_rows(&o.app).await.is_empty(), "every session of the client is gone");
    // Including the other one, and a decision posted with it changes nothing.
    let res = post_form(
        &o.app,
        &format!("/console/approvals/{pending}/decision"),
        Some(&b),
        &[("csrf", "x"), ("decision", "approve"), ("confirm", "yes")],
    )
    .await;
    assert_eq!(res.status(), 303);
    assert_eq!(approval(&o, &pending).await["status"], "pending");

    // The library function ends sessions directly too.
    let op2 = o.app.create_client("acme", CallerKind::Operator, "bob").await;
    let c = sign_in(&o.app, &op2).await;
    assert_eq!(tessera::sessions::end_all_of(o.app.state.store(), &op2.id).await.unwrap(), 1);
    assert_eq!(get_page(&o.app, "/console", Some(&c)).await.status(), 303);
}

#[tokio::test]
async fn console_sign_in_is_rate_limited_before_any_secret_is_checked() {
    let o = org_with(|c| c.failed_auth_per_minute = 3).await;
    let mut limited = None;
    for i in 0..10 {
        let res = sign_in_raw(&o.app, &o.op.id, "tessera_sk_wrong").await;
        if res.status() == 429 {
            limited = Some(i);
            let retry: u64 = res.headers()["retry-after"].to_str().unwrap().parse().unwrap();
            assert!((1..=60).contains(&retry));
            assert!(res.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
            break;
        }
        assert_eq!(res.status(), 401);
    }
    assert!(limited.is_some_and(|i| i <= 4), "limited after the allowance: {limited:?}");
    // Now even the right secret is refused, without a session.
    let res = sign_in_raw(&o.app, &o.op.id, &o.op.secret).await;
    assert_eq!(res.status(), 429);
    assert!(set_cookie(&res).is_none());
    // The limit is shared with the token endpoint: the same client id is limited there too.
    let res = o.app.token_request(&[("grant_type", "client_credentials")], Some(&o.op)).await;
    assert_error(res, 429, "rate_limited").await;
    assert!(session_rows(&o.app).await.is_empty());
}

#[tokio::test]
async fn console_agent_credentials_count_as_failures() {
    let o = org_with(|c| c.failed_auth_per_minute = 2).await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(sign_in_raw(&o.app, &o.agent.id, &o.agent.secret).await.status().as_u16());
    }
    assert_eq!(&statuses[..2], &[401, 401]);
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
}

/// Review, round two (defect 3): after `clients rotate-secret` or a revocation by client, the
/// old cookie and its CSRF token kept working for the session's whole life. Both now end on
/// the very next request, and nothing posted with them changes anything.
#[tokio::test]
async fn console_sessions_end_when_the_secret_is_rotated_or_the_client_revoked() {
    let o = org().await;
    let pending = secret_request(&o).await;
    let path = format!("/console/approvals/{pending}/decision");
    let a = sign_in(&o.app, &o.op).await;
    let b = sign_in(&o.app, &o.op).await;
    let csrf_a = csrf_of(&get_page(&o.app, "/console", Some(&a)).await.text().await.unwrap());

    // Rotation by the command line, on the database, as an administrator would.
    let out = o.app.cli(&["clients", "rotate-secret", &o.op.id]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rotated: Value = serde_json::from_slice(&out.stdout).unwrap();
    let new_secret = rotated["client_secret"].as_str().unwrap().to_owned();

    let res =
        post_form(&o.app, &path, Some(&a), &[("csrf", &csrf_a), ("decision", "approve"), ("confirm", "yes")]).await;
    assert_eq!(res.status(), 303, "the old session is sent to sign in");
    assert!(res.headers()["location"].to_str().unwrap().starts_with("/console/sign-in"));
    assert_eq!(approval(&o, &pending).await["status"], "pending", "and its decision changed nothing");
    assert_eq!(get_page(&o.app, "/console", Some(&b)).await.status(), 303, "every old session ended");
    assert!(session_rows(&o.app).await.is_empty());
    assert_eq!(sign_in_raw(&o.app, &o.op.id, &o.op.secret).await.status(), 401, "the old secret is refused");

    // Signed in with the new secret, the operator works again...
    let op = TestClient { id: o.op.id.clone(), secret: new_secret };
    let c = sign_in(&o.app, &op).await;
    let res = get_page(&o.app, "/console", Some(&c)).await;
    assert_eq!(res.status(), 200);
    let csrf_c = csrf_of(&res.text().await.unwrap());

    // ...until another operator revokes the client: the session opened before ends at once.
    let admin = o.app.create_client_with("acme", CallerKind::Operator, "root", None, &["tokens:revoke"], &[]).await;
    let admin_token = o.app.access_token(&admin).await;
    let res = o.app.post_bearer("/v1/revocations", &admin_token, &json!({"client_id": op.id})).await;
    assert!(res.status().is_success(), "revocation by client: {}", res.status());
    let res =
        post_form(&o.app, &path, Some(&c), &[("csrf", &csrf_c), ("decision", "approve"), ("confirm", "yes")]).await;
    assert_eq!(res.status(), 303, "the revoked session is sent to sign in");
    assert_eq!(approval(&o, &pending).await["status"], "pending");
    assert_eq!(get_page(&o.app, "/console", Some(&c)).await.status(), 303);
}

/// Design §11, §12: the page shows what will run (the presented parameters) apart from the
/// requester's unverified description, and names every client of a delegation chain.
#[tokio::test]
async fn console_shows_what_will_run_apart_from_the_description_and_who_acted() {
    let o = org().await;
    let runtime = o.app.create_client_with("acme", CallerKind::Workspace, "ws-runtime", Some("ws-7"), &[], &[]).await;
    let new = tessera::clients::NewClient {
        tenant: "acme".parse().unwrap(),
        kind: CallerKind::Agent,
        name: "delegating-concierge".into(),
        workspace: None,
        scopes: vec![],
        allow_bypass: vec![],
        delegates: vec![runtime.id.parse().unwrap()],
        require_dpop: false,
        groups: vec![],
        owner: None,
    };
    let (subject, secret) =
        tessera::clients::create(o.app.state.store(), &o.app.state.config().policy, new, "test", o.app.state.now())
            .await
            .unwrap();
    let subject = TestClient { id: subject.client_id.to_string(), secret: secret.expose().to_owned() };
    let subject_token = o.app.access_token(&subject).await;
    let res = o
        .app
        .token_request(
            &[
                ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"),
                ("subject_token", &subject_token),
                ("subject_token_type", "urn:ietf:params:oauth:token-type:access_token"),
            ],
            Some(&runtime),
        )
        .await;
    let delegated = res.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_owned();
    let params = json!({"name": "read-only-ci"});
    let body = json!({
        "action": "org_token_mint", "resource": "orgs/acme/tokens", "params": params,
        "params_digest": tessera::verify::params_digest(&params).to_string(),
        "summary": {"claim": "a harmless token, trust me"}, "reason": "CI",
    });
    let res = o.app.post_bearer("/v1/approvals", &delegated, &body).await;
    assert_eq!(res.status(), 202);
    let id = res.json::<Value>().await.unwrap()["approval_id"].as_str().unwrap().to_owned();

    let cookie = sign_in(&o.app, &o.op).await;
    let (status, html) = page_text(get_page(&o.app, &format!("/console/approvals/{id}"), Some(&cookie)).await).await;
    assert_eq!(status, 200);
    let run = html.find("What will run").expect("the parameters section");
    let unverified = html.find("(unverified)").expect("the description, marked unverified");
    assert!(run < unverified, "what will run comes first");
    assert!(html[run..unverified].contains("read-only-ci"));
    assert!(html[unverified..].contains("a harmless token, trust me"));
    assert!(html.contains("ws-runtime") && html.contains(", acting for ") && html.contains("delegating-concierge"));
}

#[tokio::test]
async fn console_decisions_need_the_sessions_csrf_token() {
    let o = org().await;
    let id = secret_request(&o).await;
    let a = sign_in(&o.app, &o.op).await;
    let b = sign_in(&o.app, &o.op).await;
    let csrf_a = csrf_of(&get_page(&o.app, "/console", Some(&a)).await.text().await.unwrap());
    let csrf_b = csrf_of(&get_page(&o.app, "/console", Some(&b)).await.text().await.unwrap());
    assert_ne!(csrf_a, csrf_b, "the token is per session");
    let path = format!("/console/approvals/{id}/decision");

    for (what, form) in [
        ("no token", vec![("decision", "approve"), ("confirm", "yes")]),
        ("empty token", vec![("csrf", ""), ("decision", "approve"), ("confirm", "yes")]),
        (
            "wrong token",
            vec![("csrf", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"), ("decision", "approve"), ("confirm", "yes")],
        ),
        ("another session's token", vec![("csrf", csrf_b.as_str()), ("decision", "approve"), ("confirm", "yes")]),
        ("no token, first step", vec![("decision", "deny")]),
    ] {
        let (status, html) = page_text(post_form(&o.app, &path, Some(&a), &form).await).await;
        assert_eq!(status, 403, "{what}");
        assert!(html.contains("Nothing was changed"), "{what}");
    }
    // A browser's cross-site post is refused even with the right token.
    let res = o
        .app
        .http
        .post(o.app.url(&path))
        .header("cookie", format!("tessera_console={a}"))
        .header("sec-fetch-site", "same-site")
        .form(&[("csrf", csrf_a.as_str()), ("decision", "approve"), ("confirm", "yes")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    let now = approval(&o, &id).await;
    assert_eq!(now["status"], "pending");
    assert_eq!(now["decisions"], json!([]));
    assert!(!o.app.audit_events().await.iter().any(|e| e == "approval.decided"));

    // With it, the decision goes through.
    let res =
        post_form(&o.app, &path, Some(&a), &[("csrf", &csrf_a), ("decision", "approve"), ("confirm", "yes")]).await;
    assert_eq!(res.status(), 303);
    assert_eq!(approval(&o, &id).await["status"], "approved");
}

#[tokio::test]
async fn console_approve_through_the_confirmation_and_the_requester_gets_its_capability() {
    let o = org().await;
    let id = secret_request(&o).await;
    let cookie = sign_in(&o.app, &o.op).await;

    let (status, list) = page_text(get_page(&o.app, "/console", Some(&cookie)).await).await;
    assert_eq!(status, 200);
    for needle in [id.as_str(), "secret_write", SECRET_RESOURCE, "concierge", "agent", "INC-2291", "0 of 1 approvals"] {
        assert!(list.contains(needle), "the pending list shows {needle}");
    }

    let (status, page) = page_text(get_page(&o.app, &format!("/console/approvals/{id}"), Some(&cookie)).await).await;
    assert_eq!(status, 200);
    assert!(page.contains(">Approve</button>") && page.contains(">Deny</button>"));
    assert!(page.contains("name=\"note\""));
    let a = approval(&o, &id).await;
    assert!(page.contains(a["params_digest"].as_str().unwrap()), "the digest is shown");
    assert!(page.contains("<table class=\"kv\""), "the summary is a table");
    assert!(page.contains("secret value withheld") && page.contains("51 bytes"));
    assert!(page.contains("OPENAI_KEY"));
    let csrf = csrf_of(&page);

    // The first post only asks for confirmation, naming the action and the resource.
    let path = format!("/console/approvals/{id}/decision");
    let form = [("csrf", csrf.as_str()), ("decision", "approve"), ("note", "rotating, INC-2291")];
    let (status, confirm) = page_text(post_form(&o.app, &path, Some(&cookie), &form).await).await;
    assert_eq!(status, 200);
    assert!(confirm.contains("Approve this request?"));
    assert!(confirm.contains("secret_write") && confirm.contains(SECRET_RESOURCE));
    assert!(confirm.contains("name=\"confirm\" value=\"yes\""));
    assert_eq!(approval(&o, &id).await["status"], "pending", "nothing happens before the confirmation");

    let confirmed =
        [("csrf", csrf.as_str()), ("decision", "approve"), ("note", "rotating, INC-2291"), ("confirm", "yes")];
    let res = post_form(&o.app, &path, Some(&cookie), &confirmed).await;
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()["location"].to_str().unwrap(), format!("/console/approvals/{id}?decided=approve"));
    let (_, after) =
        page_text(get_page(&o.app, &format!("/console/approvals/{id}?decided=approve"), Some(&cookie)).await).await;
    assert!(after.contains("You approved this request."));
    assert!(!after.contains(">Approve</button>"), "no buttons once decided");

    // The requester gets its capability through the API, bound to the operator's approval.
    let cap = o.app.capability(&o.agent_token, &id).await.expect("capability once approved");
    let claims = peek_claims(&cap);
    assert_eq!(claims["approvers"], json!([o.op.id]));
    assert_eq!(claims["action"], "secret_write");
    assert_eq!(o.app.redeem(&o.agent_token, &cap).await.status(), 200);
    let a = approval(&o, &id).await;
    assert_eq!(a["decisions"][0]["note"], "rotating, INC-2291");

    // A second decision, replayed, conflicts and changes nothing.
    let (status, _) = page_text(post_form(&o.app, &path, Some(&cookie), &confirmed).await).await;
    assert_eq!(status, 409);

    // The audit trail of this approval.
    let (status, trail) =
        page_text(get_page(&o.app, &format!("/console/approvals/{id}/audit"), Some(&cookie)).await).await;
    assert_eq!(status, 200);
    for e in ["approval.requested", "approval.decided", "approval.approved", "capability.issued", "capability.redeemed"]
    {
        assert!(trail.contains(e), "{e} in the trail");
    }
    assert!(!trail.contains("console.signed_in"), "only this approval's records");
}

#[tokio::test]
async fn console_deny_works_the_same_way() {
    let o = org().await;
    let id = secret_request(&o).await;
    let cookie = sign_in(&o.app, &o.op).await;
    let csrf = csrf_of(&get_page(&o.app, "/console", Some(&cookie)).await.text().await.unwrap());
    let path = format!("/console/approvals/{id}/decision");
    let (status, confirm) =
        page_text(post_form(&o.app, &path, Some(&cookie), &[("csrf", &csrf), ("decision", "deny")]).await).await;
    assert_eq!(status, 200);
    assert!(confirm.contains("Deny this request?") && confirm.contains("Yes, deny secret_write"));
    let res =
        post_form(&o.app, &path, Some(&cookie), &[("csrf", &csrf), ("decision", "deny"), ("confirm", "yes")]).await;
    assert_eq!(res.status(), 303);
    assert_eq!(approval(&o, &id).await["status"], "denied");
    assert_eq!(o.app.capability(&o.agent_token, &id).await, None);
    // Malformed verdicts are refused.
    let id2 = secret_request(&o).await;
    let res = post_form(
        &o.app,
        &format!("/console/approvals/{id2}/decision"),
        Some(&cookie),
        &[("csrf", &csrf), ("decision", "approve!"), ("confirm", "yes")],
    )
    .await;
    assert_eq!(res.status(), 400);
    assert_eq!(approval(&o, &id2).await["status"], "pending");
}

#[tokio::test]
async fn console_forged_decisions_from_another_tenant_or_a_second_vote_change_nothing() {
    let o = org_with(|c| {
        let file = tessera::policy::PolicyFile {
            quorum: Some([("secret_write".to_owned(), tessera::policy::QuorumFile::Count(2))].into()),
            ..Default::default()
        };
        c.policy = tessera::policy::Policy::from_file(&file).unwrap();
    })
    .await;
    let id = secret_request(&o).await;
    let path = format!("/console/approvals/{id}/decision");

    // Another tenant's operator, with a valid session and token of its own.
    let eve = o.app.create_client("globex", CallerKind::Operator, "eve").await;
    let e = sign_in(&o.app, &eve).await;
    let csrf_e = csrf_of(&get_page(&o.app, "/console", Some(&e)).await.text().await.unwrap());
    assert!(!get_page(&o.app, "/console", Some(&e)).await.text().await.unwrap().contains(&id));
    assert_eq!(get_page(&o.app, &format!("/console/approvals/{id}"), Some(&e)).await.status(), 404);
    let res =
        post_form(&o.app, &path, Some(&e), &[("csrf", &csrf_e), ("decision", "approve"), ("confirm", "yes")]).await;
    assert_eq!(res.status(), 404);

    // The first operator approves: 1 of 2. It sees no buttons now and cannot vote twice.
    let a = sign_in(&o.app, &o.op).await;
    let csrf_a = csrf_of(&get_page(&o.app, "/console", Some(&a)).await.text().await.unwrap());
    let yes = [("csrf", csrf_a.as_str()), ("decision", "approve"), ("confirm", "yes")];
    assert_eq!(post_form(&o.app, &path, Some(&a), &yes).await.status(), 303);
    let page = get_page(&o.app, &format!("/console/approvals/{id}"), Some(&a)).await.text().await.unwrap();
    assert!(page.contains("1 of 2 approvals") && page.contains("You have decided this request already"));
    assert!(!page.contains(">Approve</button>"));
    let (status, _) = page_text(post_form(&o.app, &path, Some(&a), &yes).await).await;
    assert_eq!(status, 409);
    let now = approval(&o, &id).await;
    assert_eq!(now["status"], "pending");
    assert_eq!(now["decisions"].as_array().unwrap().len(), 1);

    // An operator without approvals:decide reads but is offered nothing, and a forged form
    // is refused by the same rule as the API.
    let reader =
        o.app.create_client_with("acme", CallerKind::Operator, "auditor", None, &["approvals:read"], &[]).await;
    let r = sign_in(&o.app, &reader).await;
    let page = get_page(&o.app, &format!("/console/approvals/{id}"), Some(&r)).await.text().await.unwrap();
    assert!(page.contains("lacks approvals:decide") && !page.contains(">Approve</button>"));
    let csrf_r = csrf_of(&page);
    let res =
        post_form(&o.app, &path, Some(&r), &[("csrf", &csrf_r), ("decision", "approve"), ("confirm", "yes")]).await;
    assert_eq!(res.status(), 403);
    assert_eq!(approval(&o, &id).await["decisions"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn console_expired_requests_cannot_be_decided() {
    let o = org().await;
    let id = secret_request(&o).await;
    let cookie = sign_in(&o.app, &o.op).await;
    let csrf = csrf_of(&get_page(&o.app, "/console", Some(&cookie)).await.text().await.unwrap());
    o.app.state.clock().advance(3601);
    let list = get_page(&o.app, "/console", Some(&cookie)).await.text().await.unwrap();
    assert!(!list.contains(&id) && list.contains("Nothing is waiting"));
    let res = post_form(
        &o.app,
        &format!("/console/approvals/{id}/decision"),
        Some(&cookie),
        &[("csrf", &csrf), ("decision", "approve"), ("confirm", "yes")],
    )
    .await;
    assert_eq!(res.status(), 410);
    let page = get_page(&o.app, &format!("/console/approvals/{id}"), Some(&cookie)).await.text().await.unwrap();
    assert!(page.contains("Expired") && page.contains("Nobody decided before it expired"));
}

#[tokio::test]
async fn console_history_filters_by_status_action_and_requester() {
    let o = org().await;
    let other = o.app.create_client("acme", CallerKind::Agent, "builder").await;
    let other_token = o.app.access_token(&other).await;
    let s = secret_request(&o).await;
    let m = request(&o.app, &o.agent_token, "org_token_mint", "orgs/acme/tokens", json!({"name": "ci"}), "CI deploys")
        .await;
    let d = request(&o.app, &other_token, "workspace_delete", "workspaces/ws-7", json!({}), "idle for 90 days").await;
    let cookie = sign_in(&o.app, &o.op).await;
    let csrf = csrf_of(&get_page(&o.app, "/console", Some(&cookie)).await.text().await.unwrap());
    let decide = |id: String, verdict: &'static str| {
        let app = &o.app;
        let cookie = cookie.clone();
        let csrf = csrf.clone();
        async move {
            let path = format!("/console/approvals/{id}/decision");
            let res =
                post_form(app, &path, Some(&cookie), &[("csrf", &csrf), ("decision", verdict), ("confirm", "yes")])
                    .await;
            assert_eq!(res.status(), 303);
        }
    };
    decide(s.clone(), "approve").await;
    decide(d.clone(), "deny").await;

    let shows = |html: &str, id: &str| html.contains(&format!("/console/approvals/{id}\""));
    let page = |q: String| {
        let app = &o.app;
        let cookie = cookie.clone();
        async move {
            let (status, html) = page_text(get_page(app, &format!("/console/history{q}"), Some(&cookie)).await).await;
            assert_eq!(status, 200, "{q}");
            html
        }
    };
    let all = page(String::new()).await;
    assert!(shows(&all, &s) && shows(&all, &m) && shows(&all, &d));
    let approved = page("?status=approved".into()).await;
    assert!(shows(&approved, &s) && !shows(&approved, &m) && !shows(&approved, &d));
    let denied = page("?status=denied&action=&requester=".into()).await;
    assert!(!shows(&denied, &s) && shows(&denied, &d));
    let mints = page("?action=org_token_mint".into()).await;
    assert!(shows(&mints, &m) && !shows(&mints, &s));
    let by_builder = page(format!("?requester={}", other.id)).await;
    assert!(shows(&by_builder, &d) && !shows(&by_builder, &s) && !shows(&by_builder, &m));
    assert!(by_builder.contains("builder"), "the requester filter names clients");
    let none = page("?status=withdrawn".into()).await;
    assert!(none.contains("No approvals match"));
    let res = get_page(&o.app, "/console/history?status=bogus", Some(&cookie)).await;
    assert_eq!(res.status(), 400);
}

#[tokio::test]
async fn console_history_pages_through_older_requests() {
    let o = org_with(|c| c.policy.max_pending_per_requester = 100).await;
    let mut ids = Vec::new();
    for i in 0..53 {
        ids.push(
            request(&o.app, &o.agent_token, "workspace_delete", &format!("workspaces/ws-{i}"), json!({}), "old").await,
        );
        o.app.state.clock().advance(1);
    }
    let cookie = sign_in(&o.app, &o.op).await;
    let first = get_page(&o.app, "/console/history?status=pending", Some(&cookie)).await.text().await.unwrap();
    assert!(first.contains(&ids[52]) && !first.contains(&ids[2]), "newest first, 50 a page");
    let older = first.split("rel=\"next\" href=\"").nth(1).unwrap().split('"').next().unwrap();
    assert!(older.starts_with("/console/history?status=pending&amp;before="), "{older}");
    let second = get_page(&o.app, &older.replace("&amp;", "&"), Some(&cookie)).await.text().await.unwrap();
    assert!(second.contains(&ids[0]) && second.contains(&ids[2]) && !second.contains(&ids[3]));
}

#[tokio::test]
async fn console_pages_escape_what_requesters_write() {
    let o = org().await;
    let id = request(
        &o.app,
        &o.agent_token,
        "secret_write",
        SECRET_RESOURCE,
        json!({"<img src=x onerror=alert(1)>": "<script>alert(2)</script>"}),
        "<script>alert(3)</script> please",
    )
    .await;
    let cookie = sign_in(&o.app, &o.op).await;
    for path in ["/console".to_owned(), format!("/console/approvals/{id}"), "/console/history".to_owned()] {
        let html = get_page(&o.app, &path, Some(&cookie)).await.text().await.unwrap();
        assert!(!html.contains("<script>") && !html.contains("<img src=x"), "{path}");
    }
    let html = get_page(&o.app, &format!("/console/approvals/{id}"), Some(&cookie)).await.text().await.unwrap();
    assert!(html.contains("&lt;script&gt;alert(3)&lt;/script&gt; please"));
}

#[tokio::test]
async fn console_remembers_where_a_signed_out_operator_was_going() {
    let o = org().await;
    let id = secret_request(&o).await;
    let res = get_page(&o.app, &format!("/console/approvals/{id}"), None).await;
    assert_eq!(res.status(), 303);
    let location = res.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with("/console/sign-in?next="), "{location}");
    let html = get_page(&o.app, &location, None).await.text().await.unwrap();
    assert!(html.contains(&format!("name=\"next\" value=\"/console/approvals/{id}\"")));
    let res = post_form(
        &o.app,
        "/console/sign-in",
        None,
        &[("client_id", &o.op.id), ("client_secret", &o.op.secret), ("next", &format!("/console/approvals/{id}"))],
    )
    .await;
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()["location"].to_str().unwrap(), format!("/console/approvals/{id}"));
    // Never anywhere else.
    let res = post_form(
        &o.app,
        "/console/sign-in",
        None,
        &[("client_id", &o.op.id), ("client_secret", &o.op.secret), ("next", "https://evil.example/")],
    )
    .await;
    assert_eq!(res.headers()["location"], "/console");
}

// ------------------------------------------------------------------------------------------
// Browser tests: headless Chromium through chromedriver

/// Where the browser tests find Chromium and chromedriver (Debian's packages by default).
fn browser_paths() -> (PathBuf, PathBuf) {
    let chromium = std::env::var("TESSERA_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    let driver = std::env::var("TESSERA_TEST_CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".to_owned());
    (PathBuf::from(chromium), PathBuf::from(driver))
}

/// A headless Chromium driven through a chromedriver this test started on a free loopback
/// port. Dropping it kills chromedriver's whole process group (Chromium included).
struct Browser {
    client: Option<Client>,
    driver: std::process::Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Browser {
        let (chromium, driver_path) = browser_paths();
        for (what, path) in [("Chromium", &chromium), ("ChromeDriver", &driver_path)] {
            assert!(
                path.is_file(),
                "the console's browser tests need {what} at {}: install Debian's packages with \
                 `apt-get install -y chromium chromium-driver` (scripts/test does, as root), or point \
                 TESSERA_TEST_CHROMIUM / TESSERA_TEST_CHROMEDRIVER at them",
                path.display()
            );
        }
        let profile = tempfile::tempdir().unwrap();
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let log = std::fs::File::create(profile.path().join("chromedriver.log")).unwrap();
        let driver = {
            use std::os::unix::process::CommandExt;
            std::process::Command::new(&driver_path)
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .process_group(0)
                .spawn()
                .expect("start chromedriver")
        };
        let mut browser = Browser { client: None, driver, _profile: profile };
        let base = format!("http://127.0.0.1:{port}");
        let probe = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = probe.get(format!("{base}/status")).timeout(Duration::from_secs(2)).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not answer on {base} within 30 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let user_data = browser._profile.path().join("chromium");
        let caps: serde_json::Map<String, Value> = serde_json::from_value(json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                    "--no-first-run", "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--hide-scrollbars", "--window-size=1100,900",
                    format!("--user-data-dir={}", user_data.display()),
                ],
            },
        }))
        .unwrap();
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let mut builder = ClientBuilder::new(connector);
        builder.capabilities(caps);
        let connect = builder.connect(&base);
        let client = tokio::time::timeout(Duration::from_secs(60), connect)
            .await
            .expect("a Chromium session within 60 s")
            .expect("chromedriver starts Chromium");
        browser.client = Some(client);
        browser
    }

    fn c(&self) -> &Client {
        self.client.as_ref().unwrap()
    }

    async fn goto(&self, url: &str) {
        tokio::time::timeout(Duration::from_secs(60), self.c().goto(url)).await.expect("page load").unwrap();
    }

    /// Waits (at most 45 s, for a loaded 2-core machine) for an element, after a navigation.
    async fn wait_for(&self, css: &str) -> fantoccini::elements::Element {
        self.c().wait().at_most(Duration::from_secs(45)).for_element(Locator::Css(css)).await.unwrap_or_else(|e| {
            panic!("no element {css} within 45 s: {e}");
        })
    }

    /// Marks the current document, so that `wait_new_page` can tell when another replaced it.
    async fn mark(&self) {
        self.c().execute("window.__tesseraOld = true;", vec![]).await.unwrap();
    }

    /// Waits (at most 45 s) until a new document has replaced the marked one and has loaded.
    async fn wait_new_page(&self) {
        let deadline = Instant::now() + Duration::from_secs(45);
        loop {
            let done = self
                .c()
                .execute("return window.__tesseraOld === undefined && document.readyState === 'complete';", vec![])
                .await;
            if matches!(done, Ok(Value::Bool(true))) {
                return;
            }
            assert!(Instant::now() < deadline, "no new page within 45 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The page's visible text.
    async fn text(&self) -> String {
        self.c().find(Locator::Css("body")).await.unwrap().text().await.unwrap()
    }

    async fn path(&self) -> String {
        let u = self.c().current_url().await.unwrap();
        match u.query() {
            Some(q) => format!("{}?{q}", u.path()),
            None => u.path().to_owned(),
        }
    }

    async fn session_cookie(&self) -> Option<String> {
        let cookies = self.c().get_all_cookies().await.unwrap();
        cookies.iter().find(|c| c.name() == "tessera_console").map(|c| c.value().to_owned())
    }

    /// Signs in the way a person does: type the id, Tab, type the secret, Enter.
    async fn sign_in(&self, app: &TestApp, id: &str, secret: &str) {
        self.goto(&app.url("/console")).await;
        self.wait_for("input[name=client_id]").await;
        assert_eq!(self.path().await, "/console/sign-in");
        let focused = self.c().active_element().await.unwrap();
        assert_eq!(focused.attr("name").await.unwrap().as_deref(), Some("client_id"), "the ID field has focus");
        focused.send_keys(id).await.unwrap();
        focused.send_keys(&char::from(Key::Tab).to_string()).await.unwrap();
        let secret_field = self.c().active_element().await.unwrap();
        assert_eq!(secret_field.attr("name").await.unwrap().as_deref(), Some("client_secret"));
        secret_field.send_keys(secret).await.unwrap();
        self.mark().await;
        secret_field.send_keys(&char::from(Key::Enter).to_string()).await.unwrap();
        self.wait_new_page().await;
    }

    /// Saves a screenshot of the viewport as `name`.png; returns its path.
    async fn screenshot(&self, name: &str, width: u32, height: u32) -> PathBuf {
        self.c().set_window_size(width, height).await.unwrap();
        self.c().execute("window.scrollTo(0, 0);", vec![]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let png = self.c().screenshot().await.unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        self.c().set_window_size(1100, 900).await.unwrap();
        path
    }

    async fn close(mut self) {
        if let Some(c) = self.client.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), c.close()).await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // chromedriver leads its own process group; Chromium's processes are in it too.
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.driver.id())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// docs/screenshots with `TESSERA_UPDATE_SCREENSHOTS=1`, else a folder under target/.
fn screenshot_dir() -> PathBuf {
    if std::env::var("TESSERA_UPDATE_SCREENSHOTS").as_deref() == Ok("1") {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/screenshots")
    } else {
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots")
    }
}

/// The approval's status as the requester reads it through the API.
async fn status_of(o: &Org, id: &str) -> String {
    approval(o, id).await["status"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn console_browser_sign_in_see_the_request_approve_it_and_the_requester_gets_its_capability() {
    let mut o = org().await;
    // A realistic night: three requests waiting, asked minutes apart.
    let id = secret_request(&o).await;
    o.app.state.clock().advance(7 * 60);
    o.agent_token = o.app.access_token(&o.agent).await;
    let mint = request(
        &o.app,
        &o.agent_token,
        "org_token_mint",
        "orgs/acme/tokens",
        json!({"name": "ci-deploy", "scopes": ["workspaces:read", "workspaces:write"], "expires_in_days": 30}),
        "CI needs a token to deploy the staging workspace",
    )
    .await;
    o.app.state.clock().advance(4 * 60);
    let delete = request(
        &o.app,
        &o.agent_token,
        "workspace_delete",
        "workspaces/ws-7",
        json!({}),
        "Workspace ws-7 has been idle for 90 days; the owner asked for removal",
    )
    .await;
    o.app.state.clock().advance(60);
    o.agent_token = o.app.access_token(&o.agent).await;
    let app = &o.app;

    let browser = Browser::start().await;
    browser.goto(&app.url("/console")).await;
    browser.wait_for("input[name=client_secret]").await;
    let shot = browser.screenshot("sign-in", 1000, 720).await;
    assert!(std::fs::metadata(&shot).unwrap().len() > 1000);

    browser.sign_in(app, &o.op.id, &o.op.secret).await;
    assert_eq!(browser.path().await, "/console");
    let text = browser.text().await;
    for needle in
        [id.as_str(), mint.as_str(), delete.as_str(), "secret_write", SECRET_RESOURCE, "concierge", "INC-2291"]
    {
        assert!(text.contains(needle), "the pending list shows {needle}:\n{text}");
    }
    let cookie = browser.session_cookie().await.expect("a session cookie in the browser");
    assert_eq!(cookie.len(), 43);
    browser.screenshot("pending", 1100, 1080).await;
    browser.screenshot("pending-phone", 390, 844).await;

    // Open the request by its card, as a tap would.
    browser
        .c()
        .find(Locator::Css(&format!("a[href=\"/console/approvals/{id}\"]")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let approve = browser.wait_for("button[value=approve]").await;
    assert_eq!(approve.text().await.unwrap(), "Approve");
    let deny = browser.c().find(Locator::Css("button[value=deny]")).await.unwrap();
    assert_eq!(deny.text().await.unwrap(), "Deny");
    let text = browser.text().await;
    let digest = approval(&o, &id).await["params_digest"].as_str().unwrap().to_owned();
    assert!(text.contains(&digest), "the digest is on the page");
    assert!(text.contains("secret value withheld"));
    let note = browser.c().find(Locator::Css("textarea[name=note]")).await.unwrap();
    note.send_keys("Rotating after INC-2291; old key revoked at the provider").await.unwrap();
    browser.screenshot("detail", 1100, 1780).await;

    approve.click().await.unwrap();
    browser.wait_for("input[name=confirm]").await;
    let text = browser.text().await;
    assert!(text.contains("Approve this request?"));
    assert!(text.contains("secret_write") && text.contains(SECRET_RESOURCE), "the confirmation names both");
    assert_eq!(status_of(&o, &id).await, "pending", "nothing happens before the confirmation");
    browser.screenshot("confirm", 1100, 900).await;

    // Confirm with the keyboard: Tab to the button, Enter.
    let mut found = false;
    for _ in 0..30 {
        browser.c().active_element().await.unwrap().send_keys(&char::from(Key::Tab).to_string()).await.unwrap();
        let el = browser.c().active_element().await.unwrap();
        if el.text().await.unwrap_or_default() == "Yes, approve secret_write" {
            el.send_keys(&char::from(Key::Enter).to_string()).await.unwrap();
            found = true;
            break;
        }
    }
    assert!(found, "the confirm button is reachable with Tab");
    browser.wait_for("div.notice").await;
    let text = browser.text().await;
    assert!(text.contains("You approved this request."), "{text}");
    assert!(text.contains("APPROVED") || text.contains("Approved"));

    // The requester now gets its capability through the API.
    let cap = app.capability(&o.agent_token, &id).await.expect("the capability, once approved in the browser");
    let claims = peek_claims(&cap);
    assert_eq!(claims["approvers"], json!([o.op.id]));
    assert_eq!(claims["resource"], SECRET_RESOURCE);
    assert_eq!(app.redeem(&o.agent_token, &cap).await.status(), 200);

    // Deny another one for the history, then look at it.
    let cookie_csrf = {
        let html = browser.c().source().await.unwrap();
        csrf_of(&html)
    };
    let res = post_form(
        app,
        &format!("/console/approvals/{delete}/decision"),
        Some(&cookie),
        &[("csrf", &cookie_csrf), ("decision", "deny"), ("note", "owner must confirm first"), ("confirm", "yes")],
    )
    .await;
    assert_eq!(res.status(), 303);
    browser.goto(&app.url("/console/history")).await;
    browser.wait_for("form.filters").await;
    let text = browser.text().await;
    assert!(text.contains(&id) && text.contains(&delete) && text.contains(&mint));
    browser.screenshot("history", 1100, 900).await;
    browser.goto(&app.url(&format!("/console/approvals/{id}/audit"))).await;
    browser.wait_for("table.audit").await;
    assert!(browser.text().await.contains("capability.redeemed"));
    browser.screenshot("audit", 1100, 800).await;
    browser.close().await;
}

#[tokio::test]
async fn console_browser_refuses_wrong_and_agent_credentials_alike() {
    let o = org().await;
    let app = &o.app;
    let browser = Browser::start().await;

    browser.sign_in(app, &o.op.id, "tessera_sk_not-the-secret").await;
    assert_eq!(browser.path().await, "/console/sign-in");
    let wrong = browser.text().await;
    assert!(wrong.contains("did not sign you in"), "{wrong}");
    assert!(browser.session_cookie().await.is_none());
    browser.screenshot("sign-in-refused", 1000, 720).await;

    browser.sign_in(app, &o.agent.id, &o.agent.secret).await;
    let agent = browser.text().await;
    assert_eq!(agent, wrong, "an agent's right secret reads exactly like a wrong secret");
    assert!(browser.session_cookie().await.is_none());

    browser.sign_in(app, "tc_nobody", "tessera_sk_nothing").await;
    assert_eq!(browser.text().await, wrong);
    assert!(session_rows(app).await.is_empty());

    // And the operator's own credentials do sign in.
    browser.sign_in(app, &o.op.id, &o.op.secret).await;
    assert_eq!(browser.path().await, "/console");
    assert!(browser.session_cookie().await.is_some());
    browser.close().await;
}

#[tokio::test]
async fn console_browser_forged_forms_change_nothing() {
    let o = org().await;
    let app = &o.app;
    let id = secret_request(&o).await;
    let browser = Browser::start().await;
    browser.sign_in(app, &o.op.id, &o.op.secret).await;

    // The page's own form with its token replaced, then with no token at all.
    for script in [
        "document.querySelector('form[action$=\"/decision\"] input[name=csrf]').value = 'forged';",
        "document.querySelector('form[action$=\"/decision\"] input[name=csrf]').remove();",
    ] {
        browser.goto(&app.url(&format!("/console/approvals/{id}"))).await;
        browser.wait_for("button[value=approve]").await;
        browser.c().execute(script, vec![]).await.unwrap();
        browser.mark().await;
        browser.c().find(Locator::Css("button[value=approve]")).await.unwrap().click().await.unwrap();
        browser.wait_new_page().await;
        let text = browser.text().await;
        assert!(text.contains("Refused: the form did not come from your session"), "{script}: {text}");
        assert_eq!(status_of(&o, &id).await, "pending");
    }

    // A page on another origin (same host, another port) posting a complete decision form,
    // confirmation included, with the operator's cookie riding along.
    let evil = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let evil_addr = evil.local_addr().unwrap();
    let target = app.url(&format!("/console/approvals/{id}/decision"));
    let html = format!(
        "<!doctype html><title>Free coffee</title><form method=post action=\"{target}\">\
         <input type=hidden name=decision value=approve><input type=hidden name=confirm value=yes>\
         <input type=hidden name=csrf value=guess><button id=go>Claim</button></form>"
    );
    let evil_app =
        axum::Router::new().route("/", axum::routing::get(move || async move { axum::response::Html(html) }));
    let server = tokio::spawn(async move { axum::serve(evil, evil_app).await });
    browser.goto(&format!("http://{evil_addr}/")).await;
    let go = browser.wait_for("#go").await;
    browser.mark().await;
    go.click().await.unwrap();
    browser.wait_new_page().await;
    assert!(browser.path().await.starts_with("/console"), "the post reached the console");
    assert!(!browser.text().await.contains("You approved"));
    server.abort();
    let a = approval(&o, &id).await;
    assert_eq!(a["status"], "pending");
    assert_eq!(a["decisions"], json!([]));
    assert!(!app.audit_events().await.iter().any(|e| e == "approval.decided"));
    browser.close().await;
}

/// A W3C WebAuthn WebDriver extension command (chromedriver implements them): the virtual
/// authenticator and its user-verification switch.
#[derive(Debug)]
struct WebAuthnCommand {
    path: String,
    body: Value,
}

impl fantoccini::wd::WebDriverCompatibleCommand for WebAuthnCommand {
    fn endpoint(
        &self,
        base: &reqwest::Url,
        session: Option<&str>,
    ) -> Result<reqwest::Url, <reqwest::Url as std::str::FromStr>::Err> {
        base.join(&format!("session/{}/{}", session.unwrap_or_default(), self.path))
    }
    fn method_and_body(&self, _url: &reqwest::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(self.body.to_string()))
    }
}

impl Browser {
    /// Adds a CTAP2 platform authenticator that holds discoverable credentials and verifies
    /// the user; returns its id.
    async fn add_authenticator(&self) -> String {
        let cmd = WebAuthnCommand {
            path: "webauthn/authenticator".into(),
            body: json!({
                "protocol": "ctap2", "transport": "internal", "hasResidentKey": true,
                "hasUserVerification": true, "isUserVerified": true, "automaticPresenceSimulation": true,
            }),
        };
        let v = self.c().issue_cmd(cmd).await.expect("chromedriver adds a virtual authenticator");
        v.as_str().map(str::to_owned).unwrap_or_else(|| v["authenticatorId"].as_str().unwrap_or_default().to_owned())
    }

    async fn set_user_verified(&self, authenticator: &str, verified: bool) {
        let cmd = WebAuthnCommand {
            path: format!("webauthn/authenticator/{authenticator}/uv"),
            body: json!({ "isUserVerified": verified }),
        };
        self.c().issue_cmd(cmd).await.expect("chromedriver switches user verification");
    }
}

/// Design §15 in a real browser: enrol a passkey with a virtual authenticator, sign in with it,
/// approve a `passkey_actions` request with it (the requester gets its capability); with user
/// verification off, nothing is decided. On an IP origin the console says where to go instead.
#[tokio::test]
async fn console_browser_passkey_enrol_sign_in_and_approve() {
    let o = org_with(|c| {
        let file: tessera::policy::PolicyFile =
            toml::from_str(r#"passkey_actions = ["org_token_mint", "secret_write"]"#).unwrap();
        c.policy = tessera::policy::Policy::from_file(&file).unwrap();
    })
    .await;
    let mint = request(
        &o.app,
        &o.agent_token,
        "org_token_mint",
        "orgs/acme/tokens",
        json!({"name": "ci-deploy", "expires_in_days": 30}),
        "CI needs a token to deploy the staging workspace",
    )
    .await;
    let app = &o.app;
    let local = format!("http://localhost:{}", app.addr.port());

    // On the IP address, the sign-in page says where passkeys work.
    let html = get_page(app, "/console/sign-in", None).await.text().await.unwrap();
    assert!(html.contains("Browsers refuse passkeys on an IP address") && html.contains(&local), "{html}");

    let browser = Browser::start().await;
    let authenticator = browser.add_authenticator().await;
    assert!(!authenticator.is_empty());
    // Sign in with the secret, under the host name.
    browser.goto(&format!("{local}/console")).await;
    let id_field = browser.wait_for("input[name=client_id]").await;
    id_field.send_keys(&o.op.id).await.unwrap();
    browser.c().find(Locator::Css("input[name=client_secret]")).await.unwrap().send_keys(&o.op.secret).await.unwrap();
    browser.mark().await;
    browser
        .c()
        .find(Locator::Css("form[action='/console/sign-in'] button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser.wait_new_page().await;
    assert_eq!(browser.path().await, "/console");

    // Enrol.
    let out = app.cli(&["clients", "passkey-enrolment", &o.op.id]).await;
    assert!(out.status.success());
    let code: Value = serde_json::from_slice(&out.stdout).unwrap();
    browser.goto(&format!("{local}/console/passkeys")).await;
    let button = browser.wait_for("#passkey-enrol").await;
    let field = browser.wait_for("#passkey-code").await;
    field.send_keys(code["enrolment_code"].as_str().unwrap()).await.unwrap();
    browser.screenshot("passkeys", 1000, 720).await;
    browser.mark().await;
    button.click().await.unwrap();
    browser.wait_new_page().await;
    let text = browser.text().await;
    assert!(text.contains("My passkey") && !text.contains("You have no passkey yet"), "{text}");
    browser.screenshot("passkeys-enrolled", 1000, 720).await;

    // Sign out, then sign in with the passkey.
    browser.mark().await;
    browser.c().find(Locator::Css("form[action='/console/sign-out'] button")).await.unwrap().click().await.unwrap();
    browser.wait_new_page().await;
    let pk = browser.wait_for("#passkey-sign-in").await;
    browser.mark().await;
    pk.click().await.unwrap();
    browser.wait_new_page().await;
    assert_eq!(browser.path().await, "/console", "signed in with the passkey: {}", browser.text().await);

    // Approve the mint: the confirmation asks for the passkey.
    browser.goto(&format!("{local}/console/approvals/{mint}")).await;
    let approve = browser.wait_for("button[value=approve]").await;
    browser.mark().await;
    approve.click().await.unwrap();
    browser.wait_new_page().await;
    let decide = browser.wait_for("#passkey-decide").await;
    browser.screenshot("confirm-passkey", 1000, 900).await;
    browser.mark().await;
    decide.click().await.unwrap();
    browser.wait_new_page().await;
    assert!(browser.path().await.ends_with("?decided=approve"), "{}", browser.text().await);
    assert_eq!(status_of(&o, &mint).await, "approved");
    assert_eq!(approval(&o, &mint).await["decisions"][0]["method"], "passkey");
    assert!(approval(&o, &mint).await["capability"].is_string(), "the requester gets its capability");

    // With user verification off, the authenticator's answer is refused and nothing decided.
    let second = request(&o.app, &o.agent_token, "org_token_mint", "orgs/acme/tokens", json!({"name": "x"}), "r").await;
    browser.set_user_verified(&authenticator, false).await;
    browser.goto(&format!("{local}/console/approvals/{second}")).await;
    let approve = browser.wait_for("button[value=approve]").await;
    browser.mark().await;
    approve.click().await.unwrap();
    browser.wait_new_page().await;
    browser.wait_for("#passkey-decide").await.click().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let status = browser.c().find(Locator::Css("#passkey-status")).await.unwrap().text().await.unwrap();
        if !status.is_empty() && !status.contains("prompt") {
            break;
        }
        assert!(Instant::now() < deadline, "no answer from the passkey step");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(status_of(&o, &second).await, "pending", "nothing was decided");
    browser.close().await;
}

/// Break-glass end to end (design §19): an on-call operator whose decision the policy does not
/// count sees no request awaiting it, approves one alone with a passkey and a reason, every hook
/// hears `approval.break_glass`, and the approval waits under To review until another operator
/// acknowledges it.
#[tokio::test]
async fn console_browser_break_glass_with_a_passkey_and_a_reason_until_another_operator_reviews_it() {
    let rules_dir = tempfile::tempdir().unwrap();
    let rules = rules_dir.path().join("rules.cedar");
    std::fs::write(
        &rules,
        r#"
        @id("security-decides") permit(principal in Tessera::Group::"security", action == Tessera::Action::"decide", resource);
        @id("oncall-breaks-glass") permit(principal in Tessera::Group::"oncall", action == Tessera::Action::"break_glass", resource);
        "#,
    )
    .unwrap();
    let hook_bodies: std::sync::Arc<std::sync::Mutex<Vec<Value>>> = Default::default();
    let sink = hook_bodies.clone();
    let hook = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::body::Bytes| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push(serde_json::from_slice(&body).unwrap());
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, hook).await.unwrap() });
    let o = org_with(|c| {
        let file: tessera::policy::PolicyFile = toml::from_str("[quorum]\nsecret_write = 2\n").unwrap();
        c.policy = tessera::policy::Policy::from_file(&file).unwrap();
        c.policy_file = Some(rules.clone());
        c.load_rules().unwrap();
        c.webhooks = vec![tessera::webhooks::WebhookConfig {
            url: hook_url,
            secret: tessera::webhooks::WebhookSecret::new("whsec"),
            format: Default::default(),
        }];
    })
    .await;
    let app = &o.app;
    tessera::clients::set_groups(app.state.store(), &o.op.id, vec!["oncall".parse().unwrap()], "test", app.state.now())
        .await
        .unwrap();
    let reviewer = app.create_client("acme", CallerKind::Operator, "bob").await;
    let id = request(
        app,
        &o.agent_token,
        "secret_write",
        "orgs/acme/secrets/STRIPE_KEY",
        json!({"value": "rotated"}),
        "the leaked key must be replaced now",
    )
    .await;
    let local = format!("http://localhost:{}", app.addr.port());
    let browser = Browser::start().await;
    browser.add_authenticator().await;
    browser.goto(&format!("{local}/console")).await;
    browser.wait_for("input[name=client_id]").await.send_keys(&o.op.id).await.unwrap();
    browser.c().find(Locator::Css("input[name=client_secret]")).await.unwrap().send_keys(&o.op.secret).await.unwrap();
    browser.mark().await;
    browser
        .c()
        .find(Locator::Css("form[action='/console/sign-in'] button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser.wait_new_page().await;
    // The policy does not count this operator's decision: nothing awaits it.
    let text = browser.text().await;
    assert!(text.contains("Nothing is waiting for you") && !text.contains("STRIPE_KEY"), "{text}");
    let code: Value =
        serde_json::from_slice(&app.cli(&["clients", "passkey-enrolment", &o.op.id]).await.stdout).unwrap();
    browser.goto(&format!("{local}/console/passkeys")).await;
    let enrol = browser.wait_for("#passkey-enrol").await;
    browser.wait_for("#passkey-code").await.send_keys(code["enrolment_code"].as_str().unwrap()).await.unwrap();
    browser.mark().await;
    enrol.click().await.unwrap();
    browser.wait_new_page().await;

    browser.goto(&format!("{local}/console/approvals/{id}")).await;
    let button = browser.wait_for("#passkey-decide").await;
    let text = browser.text().await;
    assert!(text.contains("no approval policy permits you to decide"), "{text}");
    assert!(browser.c().find(Locator::Css("button[value=approve]")).await.is_err(), "no ordinary approve button");
    browser.wait_for("#bg-reason").await.send_keys("the leaked key is being used right now").await.unwrap();
    browser.screenshot("break-glass", 1000, 900).await;
    browser.mark().await;
    button.click().await.unwrap();
    browser.wait_new_page().await;
    assert!(browser.path().await.ends_with("?decided=break_glass"), "{}", browser.text().await);
    let a = approval(&o, &id).await;
    assert_eq!(a["status"], "approved", "approved alone despite a quorum of two: {a}");
    assert_eq!(a["break_glass"], true);
    assert_eq!(a["decisions"][0]["method"], "passkey");
    assert_eq!(a["decisions"][0]["break_glass"], true);
    assert!(a["capability"].is_string());

    // Listed to review; the operator who broke glass cannot acknowledge its own.
    let mine = app.access_token(&o.op).await;
    let listed: Value = app.get_bearer("/v1/approvals?status=to_review", &mine).await.json().await.unwrap();
    assert_eq!(listed["approvals"][0]["approval_id"], id.as_str(), "{listed}");
    assert_error(app.post_bearer(&format!("/v1/approvals/{id}/review"), &mine, &json!({})).await, 403, "forbidden")
        .await;
    browser.goto(&format!("{local}/console/review")).await;
    assert!(browser.text().await.contains("the leaked key is being used right now"));
    let theirs = app.access_token(&reviewer).await;
    let reviewed: Value =
        app.post_bearer(&format!("/v1/approvals/{id}/review"), &theirs, &json!({})).await.json().await.unwrap();
    assert_eq!(reviewed["reviewed"]["by"], reviewer.id.as_str(), "{reviewed}");
    assert_error(app.post_bearer(&format!("/v1/approvals/{id}/review"), &theirs, &json!({})).await, 409, "conflict")
        .await;
    let listed: Value = app.get_bearer("/v1/approvals?status=to_review", &mine).await.json().await.unwrap();
    assert_eq!(listed["approvals"], json!([]));

    // Every hook heard it as break-glass, with the link to the approval.
    let mut events = Vec::new();
    for _ in 0..100 {
        events = hook_bodies.lock().unwrap().iter().map(|b| b["event"].as_str().unwrap().to_owned()).collect();
        if events.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(events, ["approval.requested", "approval.break_glass"]);
    let bg = hook_bodies.lock().unwrap()[1].clone();
    assert_eq!(bg["console_url"], format!("{}/console/approvals/{id}", app.base));
    assert_eq!(bg["decision"]["note"], "the leaked key is being used right now");
    // The passkey signed break-glass on exactly these parameters: the audit log says so.
    let verify = app.cli(&["audit", "verify"]).await;
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stderr));
    browser.close().await;
}

/// With an approval policy, the console lists a request as awaiting only the operators whose
/// decision counts, refuses a forged decision from the others, and decides for the permitted.
#[tokio::test]
async fn the_console_lists_and_decides_only_where_the_approval_policy_counts_the_operator() {
    let rules_dir = tempfile::tempdir().unwrap();
    let rules = rules_dir.path().join("rules.cedar");
    std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/policy/secret-writes-need-security.cedar"), &rules).unwrap();
    let o = org_with(|c| {
        c.policy_file = Some(rules.clone());
        c.load_rules().unwrap();
    })
    .await;
    let app = &o.app;
    let sec = app.create_client("acme", CallerKind::Operator, "sam").await;
    tessera::clients::set_groups(
        app.state.store(),
        &sec.id,
        vec!["security".parse().unwrap()],
        "test",
        app.state.now(),
    )
    .await
    .unwrap();
    let id =
        request(app, &o.agent_token, "secret_write", "orgs/acme/secrets/K", json!({"v": 1}), "rotate it now").await;

    // alice is in no group: not awaited of her, no buttons, and a forged decision is refused.
    let alice = sign_in(app, &o.op).await;
    let (_, home) = page_text(get_page(app, "/console", Some(&alice)).await).await;
    assert!(!home.contains(&id) && home.contains("Nothing is waiting for you"), "{home}");
    let (status, detail) = page_text(get_page(app, &format!("/console/approvals/{id}"), Some(&alice)).await).await;
    assert_eq!(status, 200);
    assert!(detail.contains("no approval policy permits you to decide") && !detail.contains("value=\"approve\""));
    let csrf = csrf_of(&detail);
    let forged = [("csrf", csrf.as_str()), ("decision", "approve"), ("confirm", "yes")];
    let res = post_form(app, &format!("/console/approvals/{id}/decision"), Some(&alice), &forged).await;
    assert_eq!(res.status(), 403, "refused");
    assert_eq!(status_of(&o, &id).await, "pending");

    // sam is in security: awaited, and his decision counts.
    let sam = sign_in(app, &sec).await;
    let (_, home) = page_text(get_page(app, "/console", Some(&sam)).await).await;
    assert!(home.contains(&id), "{home}");
    let (_, detail) = page_text(get_page(app, &format!("/console/approvals/{id}"), Some(&sam)).await).await;
    let csrf = csrf_of(&detail);
    let form = [("csrf", csrf.as_str()), ("decision", "approve"), ("confirm", "yes")];
    let res = post_form(app, &format!("/console/approvals/{id}/decision"), Some(&sam), &form).await;
    assert_eq!(res.status(), 303);
    assert_eq!(status_of(&o, &id).await, "approved");
}

// ------------------------------------------------------------------------------------------
// Agents (design §20)

/// The Agents page's fleet: an owned agent that got a token, an unowned one never used, a
/// disabled workspace, and an install client whose secret is in a rotation's grace.
async fn fleet(o: &Org) -> (String, String, String) {
    let app = &o.app;
    let store = app.state.store();
    let new = |kind: CallerKind, name: &str, owner: Option<&str>| tessera::clients::NewClient {
        workspace: (kind == CallerKind::Workspace).then(|| "ws-9".parse().unwrap()),
        owner: owner.map(|o| o.parse().unwrap()),
        ..new_client("acme", kind, name)
    };
    let policy = &app.state.config().policy;
    let now = app.state.now();
    let (billing, secret) = tessera::clients::create(
        store,
        policy,
        new(CallerKind::Agent, "billing-agent", Some("dana@acme.example")),
        "cli",
        now,
    )
    .await
    .unwrap();
    let billing_client = TestClient { id: billing.client_id.to_string(), secret: secret.expose().to_owned() };
    app.access_token(&billing_client).await;
    app.state.usage().write_due(store, app.state.now()).await.unwrap();
    let (orphan, _) = tessera::clients::create(store, policy, new(CallerKind::Agent, "orphan-agent", None), "cli", now)
        .await
        .unwrap();
    let (ws, _) = tessera::clients::create(
        store,
        policy,
        new(CallerKind::Workspace, "ws-9-runner", Some("ops@acme.example")),
        "cli",
        now,
    )
    .await
    .unwrap();
    tessera::clients::disable(store, ws.client_id.as_str(), "cli", now).await.unwrap();
    let (install, _) = tessera::clients::create(
        store,
        policy,
        new(CallerKind::Install, "provisioner", Some("platform@acme.example")),
        "cli",
        now,
    )
    .await
    .unwrap();
    tessera::clients::rotate_secret(store, install.client_id.as_str(), Some(3600), "cli", now).await.unwrap();
    (billing.client_id.to_string(), orphan.client_id.to_string(), ws.client_id.to_string())
}

#[tokio::test]
async fn the_agents_page_lists_owner_kind_scopes_last_use_and_state_for_operators_with_clients_read() {
    let o = org().await;
    let (billing, orphan, ws) = fleet(&o).await;
    let cookie = sign_in(&o.app, &o.op).await;
    let res = get_page(&o.app, "/console/agents", Some(&cookie)).await;
    assert_eq!(res.status(), 200);
    let html = res.text().await.unwrap();
    for needle in [
        billing.as_str(),
        orphan.as_str(),
        ws.as_str(),
        "billing-agent",
        "dana@acme.example",
        "unowned",
        "Disabled",
        "never",
        "old secret until",
        "approvals:create",
    ] {
        assert!(html.contains(needle), "{needle}");
    }
    assert!(!html.contains("tessera_sk_"), "no secret on the page");
    // Only the long-unused: nothing here is (all were registered now).
    let html = get_page(&o.app, "/console/agents?stale=1", Some(&cookie)).await.text().await.unwrap();
    assert!(!html.contains(&orphan) && html.contains("gone unused"), "{html}");
    // Signed out: to the sign-in page. Without clients:read: refused, saying why.
    let res = get_page(&o.app, "/console/agents", None).await;
    assert_eq!(res.status(), 303);
    let reader = o
        .app
        .create_client_with("acme", CallerKind::Operator, "bob", None, &["approvals:read", "approvals:decide"], &[])
        .await;
    let cookie = sign_in(&o.app, &reader).await;
    let res = get_page(&o.app, "/console/agents", Some(&cookie)).await;
    assert_eq!(res.status(), 403);
    assert!(res.text().await.unwrap().contains("clients:read"));
}

#[tokio::test]
async fn console_browser_the_agents_page_reads_at_phone_width() {
    let o = org().await;
    let (billing, orphan, _) = fleet(&o).await;
    let app = &o.app;
    let browser = Browser::start().await;
    browser.sign_in(app, &o.op.id, &o.op.secret).await;
    browser.c().find(Locator::Css("a[href=\"/console/agents\"]")).await.unwrap().click().await.unwrap();
    browser.wait_for("table.agents").await;
    assert_eq!(browser.path().await, "/console/agents");
    browser.c().set_window_size(390, 844).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // As rendered: the badges are styled in capitals.
    let text = browser.text().await.to_lowercase();
    for needle in [billing.as_str(), orphan.as_str(), "dana@acme.example", "unowned", "disabled", "never"] {
        assert!(text.contains(&needle.to_lowercase()), "{needle}:\n{text}");
    }
    // Nothing wider than the phone: no sideways scrolling to read a row.
    let overflow =
        browser.c().execute("return document.documentElement.scrollWidth - window.innerWidth;", vec![]).await.unwrap();
    if overflow.as_i64().unwrap() > 0 {
        let wide = browser
            .c()
            .execute(
                "return Array.from(document.querySelectorAll('body *')).filter(e => e.getBoundingClientRect().right > window.innerWidth).slice(-5).map(e => e.tagName + '.' + e.className + ' ' + Math.round(e.getBoundingClientRect().right) + ' ' + e.textContent.slice(0, 40)).join('\\n');",
                vec![],
            )
            .await
            .unwrap();
        browser.screenshot("agents-phone-overflow", 390, 844).await;
        panic!("the page is {overflow} px wider than the phone:\n{}", wide.as_str().unwrap_or_default());
    }
    browser.screenshot("agents-phone", 390, 844).await;
    browser.close().await;
}
