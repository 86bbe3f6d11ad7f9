//! Managing clients at fleet scale (design §20): rotation with grace, the inventory, stale
//! clients, and the client API.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tessera::domain::CallerKind;

use crate::helpers::*;

/// `tessera clients show ID` as JSON.
async fn show(app: &TestApp, id: &str) -> Value {
    let out = app.cli(&["clients", "show", id]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

async fn rotate(app: &TestApp, id: &str, grace: &str) -> Value {
    let out = app.cli(&["clients", "rotate-secret", id, "--grace", grace]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

async fn mints(app: &TestApp, c: &TestClient) -> u16 {
    app.token_request(&[("grant_type", "client_credentials")], Some(c)).await.status().as_u16()
}

async fn metric(app: &TestApp, name: &str) -> u64 {
    let text = app.http.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

#[tokio::test]
async fn a_rotation_with_grace_keeps_both_secrets_until_it_ends_and_counts_the_old_ones_uses() {
    let app = spawn_app().await;
    let old = app.create_client("org-1", CallerKind::Agent, "a").await;
    assert_eq!(mints(&app, &old).await, 200);

    let rotated = rotate(&app, &old.id, "3600").await;
    let new = TestClient { id: old.id.clone(), secret: rotated["client_secret"].as_str().unwrap().to_owned() };
    let until = rotated["secret_expires_at"].as_i64().unwrap();
    assert!((until - app.state.now() - 3600).abs() <= 2, "{rotated}");
    assert_ne!(new.secret, old.secret);

    // Both work, through the cache and through the database alike.
    for _ in 0..3 {
        assert_eq!(mints(&app, &old).await, 200, "the old secret works within the grace");
        assert_eq!(mints(&app, &new).await, 200, "the new secret works at once");
    }
    assert_eq!(metric(&app, "tessera_client_previous_secret_uses_total").await, 3);
    app.state.usage().write_due(app.state.store(), app.state.now()).await.unwrap();
    let shown = show(&app, &old.id).await;
    assert_eq!(shown["secret_expires_at"], json!(until), "{shown}");
    let secrets = shown["secrets"].as_array().unwrap();
    assert_eq!(secrets.len(), 2, "{shown}");
    assert_eq!(secrets[0]["secret"], "current");
    assert_eq!(secrets[1]["secret"], "previous");
    assert_eq!(secrets[1]["uses"], 3, "each use of the old secret is counted: {shown}");
    assert_eq!(secrets[1]["expires_at"], json!(until));
    assert!(secrets[1]["age_secs"].as_i64().unwrap() >= secrets[0]["age_secs"].as_i64().unwrap());
    let text = shown.to_string();
    assert!(!text.contains(&old.secret) && !text.contains(&new.secret), "no secret is ever shown again");
    assert!(!text.contains(&tessera::clients::hash_secret(&old.secret)), "nor its hash");

    // The grace ends: the old secret is refused, from memory or not, and is no longer listed.
    app.state.clock().advance(3601);
    assert_error(app.token_request(&[("grant_type", "client_credentials")], Some(&old)).await, 401, "invalid_client")
        .await;
    assert_eq!(mints(&app, &new).await, 200);
    // `clients show` runs with the real clock; the service's view at the test clock's time:
    let (c, inv) = tessera::clients::get_inventory(app.state.store(), &old.id).await.unwrap().unwrap();
    let view = tessera::clients::view(&c, &inv, app.state.now());
    assert_eq!(view["secrets"].as_array().unwrap().len(), 1, "{view}");
    assert_eq!(view["secret_expires_at"], Value::Null);
    // The rotation is audited with the grace's end.
    let events = app.audit_events().await;
    assert!(events.iter().any(|e| e == "client.secret_rotated"), "{events:?}");
}

#[tokio::test]
async fn a_rotation_without_grace_ends_the_old_secret_at_once_and_a_second_ends_the_first() {
    let app = spawn_app().await;
    let first = app.create_client("org-1", CallerKind::Agent, "a").await;
    let r = rotate(&app, &first.id, "0").await;
    assert_eq!(r["secret_expires_at"], Value::Null);
    assert_eq!(mints(&app, &first).await, 401);
    let second = TestClient { id: first.id.clone(), secret: r["client_secret"].as_str().unwrap().to_owned() };
    assert_eq!(mints(&app, &second).await, 200);
    // Within one grace, a second rotation ends the secret before the previous at once.
    let r = rotate(&app, &first.id, "600").await;
    let third = TestClient { id: first.id.clone(), secret: r["client_secret"].as_str().unwrap().to_owned() };
    let r = rotate(&app, &first.id, "600").await;
    let fourth = TestClient { id: first.id.clone(), secret: r["client_secret"].as_str().unwrap().to_owned() };
    assert_eq!(mints(&app, &second).await, 401, "two rotations back");
    assert_eq!(mints(&app, &third).await, 200, "the previous, within its grace");
    assert_eq!(mints(&app, &fourth).await, 200);
}

#[tokio::test]
async fn disabling_a_client_within_its_grace_ends_both_secrets_at_once() {
    let app = spawn_app().await;
    let old = app.create_client("org-1", CallerKind::Agent, "a").await;
    assert_eq!(mints(&app, &old).await, 200, "cached");
    let r = rotate(&app, &old.id, "3600").await;
    let new = TestClient { id: old.id.clone(), secret: r["client_secret"].as_str().unwrap().to_owned() };
    assert_eq!(mints(&app, &old).await, 200);
    assert_eq!(mints(&app, &new).await, 200);
    let out = app.cli(&["clients", "disable", &old.id]).await;
    assert!(out.status.success());
    assert_eq!(mints(&app, &old).await, 401, "the old secret");
    assert_eq!(mints(&app, &new).await, 401, "the new secret");
    let shown = show(&app, &old.id).await;
    assert_eq!(shown["state"], "disabled");
    assert_eq!(shown["secret_expires_at"], Value::Null, "{shown}");
    // A disabled client gets no new secret either.
    let out = app.cli(&["clients", "rotate-secret", &old.id, "--grace", "60"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("disabled"));
}

#[tokio::test]
async fn a_grace_outside_zero_to_seven_days_is_refused_and_changes_nothing() {
    let app = spawn_app().await;
    let c = app.create_client("org-1", CallerKind::Agent, "a").await;
    for grace in ["604801", "-1", "99999999999999"] {
        let out = app.cli(&["clients", "rotate-secret", &c.id, &format!("--grace={grace}")]).await;
        assert_eq!(out.status.code(), Some(1), "{grace}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("604800"), "{grace}: {err}");
        assert_eq!(mints(&app, &c).await, 200, "{grace}: the secret still works");
    }
    let out = app.cli(&["clients", "rotate-secret", &c.id, "--grace", "soon"]).await;
    assert_eq!(out.status.code(), Some(2), "a grace that is not a number is a usage error");
    assert_eq!(mints(&app, &c).await, 200);
    assert!(!app.audit_events().await.iter().any(|e| e == "client.secret_rotated"));
}

#[tokio::test]
async fn the_console_takes_only_the_current_secret_of_an_operator_within_its_grace() {
    let app = spawn_app().await;
    let op = app.create_client("org-1", CallerKind::Operator, "op").await;
    let r = rotate(&app, &op.id, "3600").await;
    let sign_in = |secret: String| {
        let app = &app;
        let id = op.id.clone();
        async move {
            app.http
                .post(app.url("/console/sign-in"))
                .form(&[("client_id", id.as_str()), ("client_secret", secret.as_str())])
                .send()
                .await
                .unwrap()
        }
    };
    let refused = sign_in(op.secret.clone()).await;
    assert_eq!(refused.status(), 401, "a session lives as long as its secret: the previous one opens none");
    let ok = sign_in(r["client_secret"].as_str().unwrap().to_owned()).await;
    assert_eq!(ok.status(), 303);
}

#[tokio::test]
async fn last_use_is_written_to_the_minute_and_at_most_once_a_minute() {
    let app = spawn_app().await;
    let c = app.create_client("org-1", CallerKind::Agent, "a").await;
    let store = app.state.store();
    let last_used = || async { tessera::clients::get_inventory(store, &c.id).await.unwrap().unwrap().1.last_used_at };
    assert_eq!(last_used().await, None, "never used");
    for _ in 0..5 {
        assert_eq!(mints(&app, &c).await, 200);
    }
    // The broker's own upkeep (every 5 s) may write first: then this call finds nothing due.
    let now = app.state.now();
    assert!(app.state.usage().write_due(store, now).await.unwrap() <= 1);
    let first = now - now % 60;
    assert_eq!(last_used().await, Some(first), "to the minute");
    // More uses within the minute write nothing.
    app.state.clock().advance(30);
    assert_eq!(mints(&app, &c).await, 200);
    assert_eq!(app.state.usage().write_due(store, app.state.now()).await.unwrap(), 0);
    assert_eq!(last_used().await, Some(first), "unchanged within the minute");
    app.state.clock().advance(31);
    assert_eq!(mints(&app, &c).await, 200);
    assert!(app.state.usage().write_due(store, app.state.now()).await.unwrap() <= 1);
    let now = app.state.now();
    assert_eq!(last_used().await, Some(now - now % 60), "a minute on");
    assert!(now - now % 60 > first);
    // Writing moves nothing a cached authentication relies on: the next token is answered
    // from memory and commits.
    assert_eq!(mints(&app, &c).await, 200);
    // Stopping writes what was noted since.
    app.state.clock().advance(120);
    assert_eq!(mints(&app, &c).await, 200);
    let at = app.state.now();
    let (dir, url) = app.stop().await;
    let app = spawn_on(dir, url, |_| {}).await;
    let seen = tessera::clients::get_inventory(app.state.store(), &c.id).await.unwrap().unwrap().1.last_used_at;
    assert_eq!(seen, Some(at - at % 60), "written on shutdown");
}

#[tokio::test]
async fn agents_and_workspaces_unused_past_stale_after_days_are_disabled_with_an_audit_record() {
    let app = spawn_app_with(|c| c.policy.stale_after_days = Some(2)).await;
    let store = app.state.store();
    let policy = &app.state.config().policy;
    // Beyond the policy's two days here, and the 30 `clients list --stale` counts by without one.
    let long_ago = app.state.now() - 31 * 86_400;
    let make = |kind: CallerKind, name: &str| {
        let new = tessera::clients::NewClient {
            workspace: (kind == CallerKind::Workspace).then(|| "ws-1".parse().unwrap()),
            ..new_client("org-1", kind, name)
        };
        async move { tessera::clients::create(store, policy, new, "test", long_ago).await.unwrap() }
    };
    let (idle_agent, idle_secret) = make(CallerKind::Agent, "idle agent").await;
    let (idle_ws, _) = make(CallerKind::Workspace, "idle workspace").await;
    let (busy, busy_secret) = make(CallerKind::Agent, "busy agent").await;
    let (install, _) = make(CallerKind::Install, "install").await;
    let (operator, _) = make(CallerKind::Operator, "operator").await;
    let busy = TestClient { id: busy.client_id.to_string(), secret: busy_secret.expose().to_owned() };
    let idle = TestClient { id: idle_agent.client_id.to_string(), secret: idle_secret.expose().to_owned() };
    // Used once, long ago; the idle workspace never.
    app.state.usage().used(&idle.id, long_ago);
    assert_eq!(mints(&app, &busy).await, 200);
    app.state.usage().write_due(store, app.state.now()).await.unwrap();

    let listed = app.cli(&["clients", "list", "--stale"]).await;
    assert!(listed.status.success());
    let listed = String::from_utf8_lossy(&listed.stdout).to_string();
    for (id, stale) in [(&idle.id, true), (&idle_ws.client_id.to_string(), true), (&busy.id, false)] {
        assert_eq!(listed.contains(id.as_str()), stale, "{id}: {listed}");
    }
    assert!(!listed.contains(install.client_id.as_str()) && !listed.contains(operator.client_id.as_str()));

    let disabled = tessera::clients::disable_stale(store, 2, app.state.now()).await.unwrap();
    let mut disabled: Vec<String> = disabled.iter().map(ToString::to_string).collect();
    disabled.sort();
    let mut expected = vec![idle.id.clone(), idle_ws.client_id.to_string()];
    expected.sort();
    assert_eq!(disabled, expected, "only the idle agent and workspace");
    assert_eq!(mints(&app, &busy).await, 200);
    assert_eq!(mints(&app, &idle).await, 401);
    // A second sweep, as another replica's would be, disables and records nothing more.
    assert!(tessera::clients::disable_stale(store, 2, app.state.now()).await.unwrap().is_empty());
    let records = tessera::audit::of_subject(store, "org-1", &idle.id, 100).await.unwrap();
    let stale: Vec<_> = records.iter().filter(|r| r.event == "client.disabled").collect();
    assert_eq!(stale.len(), 1, "one record");
    let detail: Value = serde_json::from_str(&stale[0].detail).unwrap();
    assert_eq!(
        detail,
        json!({"tokens_revoked": true, "stale_after_days": 2, "last_used_at": long_ago - long_ago % 60})
    );
    assert_eq!(stale[0].actor, tessera::clients::STALE_SWEEP);
    let out = app.cli(&["audit", "verify"]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test]
async fn a_bad_stale_after_days_is_refused_at_start() {
    for days in [0u32, 3651] {
        let file = tessera::policy::PolicyFile { stale_after_days: Some(days), ..Default::default() };
        let err = tessera::policy::Policy::from_file(&file).unwrap_err();
        assert!(err.to_string().contains("stale_after_days"), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_minting_through_a_rotation_with_grace_never_fails_a_request() {
    let app = Arc::new(spawn_app().await);
    let agent = app.create_client("org-1", CallerKind::Agent, "a").await;
    // What each worker presents; swapped to the new secret partway through the grace.
    let secret = Arc::new(std::sync::RwLock::new(agent.secret.clone()));
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (app, id, secret, stop, ok, failed) =
            (app.clone(), agent.id.clone(), secret.clone(), stop.clone(), ok.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let c = TestClient { id: id.clone(), secret: secret.read().unwrap().clone() };
                match mints(&app, &c).await {
                    200 => ok.fetch_add(1, Ordering::SeqCst),
                    s => {
                        eprintln!("token request failed: {s}");
                        failed.fetch_add(1, Ordering::SeqCst)
                    }
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    let before = ok.load(Ordering::SeqCst);
    let out = cli_on(
        &app.database_url,
        &app.keys_dir(),
        &app.base,
        &["clients", "rotate-secret", &agent.id, "--grace", "300"],
        &[],
    )
    .await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let on_old = ok.load(Ordering::SeqCst);
    *secret.write().unwrap() = r["client_secret"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(400)).await;
    stop.store(true, Ordering::SeqCst);
    for t in load {
        t.await.unwrap();
    }
    let total = ok.load(Ordering::SeqCst);
    assert_eq!(failed.load(Ordering::SeqCst), 0, "failed token requests across the rotation");
    assert!(before > 10 && on_old > before && total > on_old, "load ran throughout: {before} {on_old} {total}");
    assert!(app.state.usage().previous_uses() > 0, "the old secret was used after the rotation");
}

// ------------------------------------------------------------------------------------------
// The client API

const INSTALL_SCOPES: &[&str] = &["workspaces:read", "workspaces:write", "approvals:create", "clients:manage"];

/// An install client of `tenant` allowed to manage clients, and its token.
async fn installer(app: &TestApp, tenant: &str) -> (TestClient, String) {
    let c = app.create_client_with(tenant, CallerKind::Install, "provisioner", None, INSTALL_SCOPES, &[]).await;
    let t = app.access_token(&c).await;
    (c, t)
}

async fn post(app: &TestApp, path: &str, token: &str, body: &Value) -> reqwest::Response {
    app.post_bearer(path, token, body).await
}

async fn client_count(app: &TestApp) -> usize {
    tessera::clients::list(app.state.store()).await.unwrap().len()
}

#[tokio::test]
async fn an_install_client_registers_lists_rotates_and_disables_its_tenants_agents_over_http() {
    let app = spawn_app().await;
    let (install, token) = installer(&app, "org-1").await;
    let res = post(
        &app,
        "/v1/clients",
        &token,
        &json!({"kind": "agent", "name": "concierge", "owner": "alice@example.com", "scope": "workspaces:read approvals:create"}),
    )
    .await;
    assert_eq!(res.status(), 201);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let made: Value = res.json().await.unwrap();
    assert_eq!(made["created_by"], install.id);
    assert_eq!(made["tenant"], "org-1");
    assert_eq!(made["scope"], "approvals:create workspaces:read");
    let agent = TestClient {
        id: made["client_id"].as_str().unwrap().to_owned(),
        secret: made["client_secret"].as_str().unwrap().to_owned(),
    };
    assert_eq!(mints(&app, &agent).await, 200, "the new agent gets tokens at once");

    // Listed and shown with who made it; the same JSON as `tessera clients show`.
    let list: Value = app.get_bearer("/v1/clients", &token).await.json().await.unwrap();
    let listed = list["clients"].as_array().unwrap();
    assert_eq!(listed.len(), 2, "{list}");
    assert!(listed.iter().any(|c| c["client_id"] == agent.id && c["owner"] == "alice@example.com"));
    let shown: Value = app.get_bearer(&format!("/v1/clients/{}", agent.id), &token).await.json().await.unwrap();
    assert_eq!(shown, show(&app, &agent.id).await);
    assert_eq!(shown["created_by"], install.id);
    assert!(!shown.to_string().contains(&agent.secret));

    // Paged by id.
    let page: Value = app.get_bearer("/v1/clients?limit=1", &token).await.json().await.unwrap();
    assert_eq!(page["clients"].as_array().unwrap().len(), 1);
    let next = page["next"].as_str().unwrap();
    let rest: Value = app.get_bearer(&format!("/v1/clients?limit=1&cursor={next}"), &token).await.json().await.unwrap();
    assert_eq!(rest["clients"].as_array().unwrap().len(), 1);
    assert_eq!(rest["next"], Value::Null);
    assert_ne!(page["clients"][0]["client_id"], rest["clients"][0]["client_id"]);

    // Rotated with grace: both work until it ends; disabled: neither.
    let res = post(&app, &format!("/v1/clients/{}/rotate-secret", agent.id), &token, &json!({"grace_secs": 600})).await;
    assert_eq!(res.status(), 200);
    let r: Value = res.json().await.unwrap();
    let new = TestClient { id: agent.id.clone(), secret: r["client_secret"].as_str().unwrap().to_owned() };
    assert!(r["secret_expires_at"].as_i64().unwrap() > app.state.now());
    assert_eq!(mints(&app, &agent).await, 200);
    assert_eq!(mints(&app, &new).await, 200);
    let res =
        app.http.post(app.url(&format!("/v1/clients/{}/disable", agent.id))).bearer_auth(&token).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(mints(&app, &agent).await, 401);
    assert_eq!(mints(&app, &new).await, 401);
    // Every change is audited with the install client as its actor.
    let records = tessera::audit::of_subject(app.state.store(), "org-1", &agent.id, 100).await.unwrap();
    for event in ["client.created", "client.secret_rotated", "client.disabled"] {
        let r = records.iter().find(|r| r.event == event).unwrap_or_else(|| panic!("{event}"));
        assert_eq!(r.actor, install.id, "{event}");
    }
}

#[tokio::test]
async fn no_install_client_makes_an_operator_to_approve_its_own_request_nor_reaches_one_over_http() {
    let app = spawn_app().await;
    let (_, token) = installer(&app, "org-1").await;
    let operator = app.create_client("org-1", CallerKind::Operator, "op").await;
    let service = app.create_client("org-1", CallerKind::Service, "core").await;
    let before = client_count(&app).await;
    // The incident again: an operator of its own making would decide its own requests.
    for kind in ["operator", "service"] {
        let res = post(&app, "/v1/clients", &token, &json!({"kind": kind, "name": "mine"})).await;
        let body = assert_error(res, 403, "forbidden").await;
        assert!(body["error_description"].as_str().unwrap().contains("tessera clients"), "{body}");
    }
    // Nor a client an operator acts for.
    let res =
        post(&app, "/v1/clients", &token, &json!({"kind": "agent", "name": "a", "delegates": [operator.id]})).await;
    assert_error(res, 403, "forbidden").await;
    // Nor an existing operator's or service's secret, which would then be the caller's.
    for target in [&operator, &service] {
        let res = post(&app, &format!("/v1/clients/{}/rotate-secret", target.id), &token, &json!({})).await;
        assert_error(res, 403, "forbidden").await;
        let res = app
            .http
            .post(app.url(&format!("/v1/clients/{}/disable", target.id)))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_error(res, 403, "forbidden").await;
        assert_eq!(mints(&app, target).await, 200, "its secret still works");
    }
    assert_eq!(client_count(&app).await, before, "nothing registered");
    let events = app.audit_events().await;
    assert!(!events.iter().any(|e| e == "client.secret_rotated" || e == "client.disabled"), "{events:?}");
}

#[tokio::test]
async fn no_scope_or_bypass_beyond_the_callers_own_is_given_over_http() {
    let app = spawn_app().await;
    // Holds clients:manage and approvals:create only: not even the agent defaults.
    let narrow = app
        .create_client_with("org-1", CallerKind::Install, "narrow", None, &["approvals:create", "clients:manage"], &[])
        .await;
    let token = app.access_token(&narrow).await;
    let before = client_count(&app).await;
    for body in [
        json!({"kind": "agent", "name": "a", "scope": "plugins:write"}),
        json!({"kind": "agent", "name": "a"}),
        json!({"kind": "install", "name": "i", "scope": "approvals:create", "allow_bypass": ["secret_write"]}),
    ] {
        let res = post(&app, "/v1/clients", &token, &body).await;
        let err = assert_error(res, 403, "forbidden").await;
        assert!(
            err["error_description"].as_str().unwrap().contains("does not hold itself")
                || err["error_description"].as_str().unwrap().contains("not allowed itself"),
            "{body}: {err}"
        );
    }
    // Within its own: allowed.
    let res =
        post(&app, "/v1/clients", &token, &json!({"kind": "agent", "name": "a", "scope": "approvals:create"})).await;
    assert_eq!(res.status(), 201);
    assert_eq!(client_count(&app).await, before + 1);
    // A client holding more (a bypass, a scope) is out of its reach: no new secret for it.
    let wide =
        app.create_client_with("org-1", CallerKind::Install, "wide", None, INSTALL_SCOPES, &["secret_write"]).await;
    let res = post(&app, &format!("/v1/clients/{}/rotate-secret", wide.id), &token, &json!({"grace_secs": 0})).await;
    assert_error(res, 403, "forbidden").await;
    assert_eq!(mints(&app, &wide).await, 200);
    // A gated action as a scope is refused as on the command line.
    let (_, full) = installer(&app, "org-1").await;
    let res = post(&app, "/v1/clients", &full, &json!({"kind": "agent", "name": "a", "scope": "secret_write"})).await;
    assert!(matches!(res.status().as_u16(), 400 | 403), "{}", res.status());
}

#[tokio::test]
async fn the_client_api_is_for_install_managers_and_operators_reading_and_within_one_tenant() {
    let app = spawn_app().await;
    let (_, token) = installer(&app, "org-1").await;
    let agent = app.create_client("org-1", CallerKind::Agent, "a").await;
    let (_, other) = installer(&app, "org-2").await;
    // Another tenant's client does not exist for it.
    assert_error(app.get_bearer(&format!("/v1/clients/{}", agent.id), &other).await, 404, "not_found").await;
    let res = post(&app, &format!("/v1/clients/{}/rotate-secret", agent.id), &other, &json!({})).await;
    assert_error(res, 404, "not_found").await;
    let list: Value = app.get_bearer("/v1/clients", &other).await.json().await.unwrap();
    assert!(list["clients"].as_array().unwrap().iter().all(|c| c["tenant"] == "org-2"), "{list}");
    let res = post(&app, "/v1/clients", &token, &json!({"tenant": "org-2", "kind": "agent", "name": "a"})).await;
    assert_error(res, 403, "forbidden").await;

    // An install token without clients:manage, an agent: refused.
    let install_c = app.create_client_with("org-1", CallerKind::Install, "p2", None, INSTALL_SCOPES, &[]).await;
    let narrowed = app.access_token_scoped(&install_c, Some("workspaces:read")).await;
    let agent_token = app.access_token(&agent).await;
    for t in [&narrowed, &agent_token] {
        assert_error(app.get_bearer("/v1/clients", t).await, 403, "forbidden").await;
        let res = post(&app, "/v1/clients", t, &json!({"kind": "agent", "name": "a"})).await;
        assert_error(res, 403, "forbidden").await;
    }
    // An operator with clients:read reads, and changes nothing.
    let reader = app
        .create_client_with("org-1", CallerKind::Operator, "reader", None, &["approvals:read", "clients:read"], &[])
        .await;
    let reader_token = app.access_token(&reader).await;
    assert_eq!(app.get_bearer("/v1/clients", &reader_token).await.status(), 200);
    assert_eq!(app.get_bearer(&format!("/v1/clients/{}", agent.id), &reader_token).await.status(), 200);
    let res = post(&app, "/v1/clients", &reader_token, &json!({"kind": "agent", "name": "a"})).await;
    assert_error(res, 403, "forbidden").await;
    let res = post(&app, &format!("/v1/clients/{}/rotate-secret", agent.id), &reader_token, &json!({})).await;
    assert_error(res, 403, "forbidden").await;
    // Without clients:read, an operator reads nothing.
    let op = app
        .create_client_with("org-1", CallerKind::Operator, "op", None, &["approvals:read", "approvals:decide"], &[])
        .await;
    assert_error(app.get_bearer("/v1/clients", &app.access_token(&op).await).await, 403, "forbidden").await;
    // No token at all.
    let res = app.http.get(app.url("/v1/clients")).send().await.unwrap();
    assert_error(res, 401, "invalid_token").await;
    // Only install clients may ever hold clients:manage, only operators clients:read.
    for (kind, scope) in [(CallerKind::Agent, "clients:manage"), (CallerKind::Install, "clients:read")] {
        let new =
            tessera::clients::NewClient { scopes: vec![scope.parse().unwrap()], ..new_client("org-1", kind, "x") };
        let r = tessera::clients::create(app.state.store(), &app.state.config().policy, new, "test", 0).await;
        assert!(r.is_err(), "{kind} with {scope}");
    }
}

#[tokio::test]
async fn bad_input_to_the_client_api_is_a_clear_400_and_changes_nothing() {
    let app = spawn_app().await;
    let (_, token) = installer(&app, "org-1").await;
    let agent = app.create_client("org-1", CallerKind::Agent, "a").await;
    let before = client_count(&app).await;
    for body in [
        json!({"kind": "agent", "name": "a", "groups": ["security"]}),
        json!({"kind": "admin", "name": "a"}),
        json!({"kind": "agent"}),
        json!({"kind": "agent", "name": ""}),
        json!({"kind": "agent", "name": "a", "scope": "not a scope!"}),
        json!({"kind": "workspace", "name": "w"}),
        json!({"kind": "agent", "name": "a", "federated": [{"issuer": "https://nobody.example", "subject": "x"}]}),
        json!({"kind": "agent", "name": "a", "key": {"kty": "oct", "k": "c2VjcmV0"}}),
        json!({"kind": "agent", "name": "a", "delegates": ["tc_nobody"]}),
        json!([1, 2]),
    ] {
        let res = post(&app, "/v1/clients", &token, &body).await;
        assert_error(res, 400, "invalid_request").await;
    }
    let res = app.http.post(app.url("/v1/clients")).bearer_auth(&token).body("kind=agent").send().await.unwrap();
    assert_error(res, 400, "invalid_request").await;
    assert_eq!(client_count(&app).await, before);
    for grace in
        [json!({"grace_secs": 604_801}), json!({"grace_secs": -5}), json!({"grace_secs": "1h"}), json!({"extra": 1})]
    {
        let res = post(&app, &format!("/v1/clients/{}/rotate-secret", agent.id), &token, &grace).await;
        assert_error(res, 400, "invalid_request").await;
    }
    assert_eq!(mints(&app, &agent).await, 200, "the secret is unchanged");
    for q in ["limit=0", "limit=501", "stale=perhaps", "cursor=", "colour=red"] {
        assert_error(app.get_bearer(&format!("/v1/clients?{q}"), &token).await, 400, "invalid_request").await;
    }
    assert_error(app.get_bearer("/v1/clients/tc_nobody", &token).await, 404, "not_found").await;
}

#[tokio::test]
async fn a_narrowed_or_delegated_install_token_gives_nothing_beyond_what_it_holds() {
    let app = spawn_app().await;
    let (install, _) = installer(&app, "org-1").await;
    // Its registration holds workspaces:read; this token does not.
    let narrowed = app.access_token_scoped(&install, Some("clients:manage approvals:create")).await;
    let res =
        post(&app, "/v1/clients", &narrowed, &json!({"kind": "agent", "name": "a", "scope": "workspaces:read"})).await;
    assert_error(res, 403, "forbidden").await;
    let res =
        post(&app, "/v1/clients", &narrowed, &json!({"kind": "agent", "name": "a", "scope": "approvals:create"})).await;
    assert_eq!(res.status(), 201, "what the token holds, it may give");
    // Another install client acting for this one (RFC 8693) manages nothing.
    let subject = app
        .create_new(tessera::clients::NewClient {
            scopes: INSTALL_SCOPES.iter().map(|s| s.parse().unwrap()).collect(),
            delegates: vec![install.id.parse().unwrap()],
            ..new_client("org-1", CallerKind::Install, "subject")
        })
        .await;
    let subject_token = app.access_token(&subject).await;
    let res = app
        .token_request(
            &[
                ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"),
                ("subject_token", subject_token.as_str()),
                ("subject_token_type", "urn:ietf:params:oauth:token-type:access_token"),
            ],
            Some(&install),
        )
        .await;
    assert_eq!(res.status(), 200);
    let delegated = res.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_owned();
    assert!(peek_claims(&delegated)["scope"].as_str().unwrap().contains("clients:manage"));
    let res =
        post(&app, "/v1/clients", &delegated, &json!({"kind": "agent", "name": "a", "scope": "approvals:create"}))
            .await;
    assert_error(res, 403, "forbidden").await;
}
