//! Approval policy (design §19): groups and owners, Cedar rules on requests and decisions,
//! quorum per group, per-action times, break-glass and its review.

use serde_json::{Value, json};

use crate::helpers::*;

fn stdout_json(out: &std::process::Output) -> Value {
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn groups_and_owners_are_kept_listed_and_audited() {
    let app = spawn_app().await;
    let op = stdout_json(
        &app.cli(&[
            "clients",
            "create",
            "--tenant",
            "acme",
            "--kind",
            "operator",
            "--name",
            "ana",
            "--group",
            "security",
            "--group",
            "platform",
            "--group",
            "security",
            "--owner",
            "ana@acme.example",
        ])
        .await,
    );
    assert_eq!(op["groups"], json!(["platform", "security"]), "sorted, each once: {op}");
    assert_eq!(op["owner"], "ana@acme.example");
    let op_id = op["client_id"].as_str().unwrap();
    let agent = stdout_json(
        &app.cli(&[
            "clients",
            "create",
            "--tenant",
            "acme",
            "--kind",
            "agent",
            "--name",
            "concierge",
            "--owner",
            op_id,
        ])
        .await,
    );
    assert_eq!(agent["owner"], op_id);
    let unowned =
        stdout_json(&app.cli(&["clients", "create", "--tenant", "acme", "--kind", "agent", "--name", "stray"]).await);
    assert_eq!(unowned["owner"], Value::Null);

    // Only operators belong to groups; a group name is an identifier; an owner is printable.
    for bad in [
        vec!["--kind", "agent", "--name", "x", "--group", "security"],
        vec!["--kind", "operator", "--name", "x", "--group", "no spaces"],
        vec!["--kind", "operator", "--name", "x", "--owner", "a\u{7}b"],
        vec!["--kind", "operator", "--name", "x", "--owner", ""],
    ] {
        let mut args = vec!["clients", "create", "--tenant", "acme"];
        args.extend(bad.iter().copied());
        let out = app.cli(&args).await;
        assert!(!out.status.success(), "{bad:?} was accepted");
        assert!(!String::from_utf8_lossy(&out.stderr).trim().is_empty());
    }

    let set = stdout_json(&app.cli(&["clients", "set-groups", op_id, "security"]).await);
    assert_eq!(set["groups"], json!(["security"]));
    let refused = app.cli(&["clients", "set-groups", agent["client_id"].as_str().unwrap(), "security"]).await;
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("only operator clients belong to groups"));
    assert_eq!(app.cli(&["clients", "set-groups", "tc_nobody", "security"]).await.status.code(), Some(1));

    let list = app.cli(&["clients", "list"]).await;
    let text = String::from_utf8_lossy(&list.stdout);
    let line = |name: &str| text.lines().find(|l| l.contains(&format!(" {name} "))).unwrap().to_owned();
    assert!(line("ana").contains("ana@acme.example") && line("ana").contains("security"), "{text}");
    assert!(!line("ana").contains("platform"), "{text}");
    assert!(line("concierge").contains(op_id), "{text}");
    assert!(line("stray").contains("(unowned)"), "{text}");

    let stored = tessera::clients::get(app.state.store(), op_id).await.unwrap().unwrap();
    assert_eq!(stored.groups.iter().map(|g| g.as_str()).collect::<Vec<_>>(), ["security"]);
    let events = app.audit_events().await;
    assert_eq!(events.iter().filter(|e| *e == "client.groups_set").count(), 1, "{events:?}");
    let verify = app.cli(&["audit", "verify"]).await;
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stderr));
}

/// A broker with the approval rules in `rules` (and any other tweak); the rules' folder is
/// returned so it lives as long as the test.
async fn app_with_rules(rules: &str, tweak: impl FnOnce(&mut tessera::config::Config)) -> (TestApp, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.cedar");
    std::fs::write(&path, rules).unwrap();
    let app = spawn_app_with(|c| {
        tweak(c);
        c.policy_file = Some(path);
        c.load_rules().unwrap();
    })
    .await;
    (app, dir)
}

fn example(name: &str) -> String {
    std::fs::read_to_string(format!("{}/policy/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// An operator in `groups` (and with `owner`), registered through the command line.
async fn operator(app: &TestApp, name: &str, groups: &[&str], owner: Option<&str>) -> TestClient {
    let mut args = vec!["clients", "create", "--tenant", "acme", "--kind", "operator", "--name", name];
    for g in groups {
        args.extend(["--group", g]);
    }
    if let Some(o) = owner {
        args.extend(["--owner", o]);
    }
    let v = stdout_json(&app.cli(&args).await);
    TestClient {
        id: v["client_id"].as_str().unwrap().to_owned(),
        secret: v["client_secret"].as_str().unwrap().to_owned(),
    }
}

async fn agent(app: &TestApp, owner: Option<&str>) -> TestClient {
    let mut args = vec!["clients", "create", "--tenant", "acme", "--kind", "agent", "--name", "concierge"];
    if let Some(o) = owner {
        args.extend(["--owner", o]);
    }
    let v = stdout_json(&app.cli(&args).await);
    TestClient {
        id: v["client_id"].as_str().unwrap().to_owned(),
        secret: v["client_secret"].as_str().unwrap().to_owned(),
    }
}

/// Moves the broker's clock to the next `hour`:00:30 UTC on ISO weekday `weekday` (1 Monday
/// to 7 Sunday).
fn advance_to(app: &TestApp, weekday: i64, hour: i64) {
    let now = app.state.now();
    let mut t = now - now.rem_euclid(3600) + 3600 + 30;
    // 1970-01-01 was a Thursday (ISO 4).
    let iso = |t: i64| (t.div_euclid(86_400) + 3).rem_euclid(7) + 1;
    while !(iso(t) == weekday && t.rem_euclid(86_400) / 3600 == hour) {
        t += 3600;
    }
    app.state.clock().advance(t - now);
}

async fn approval(app: &TestApp, token: &str, id: &str) -> Value {
    let res = app.get_bearer(&format!("/v1/approvals/{id}"), token).await;
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

#[tokio::test]
async fn a_request_a_policy_forbids_is_refused_naming_it_and_only_its_record_is_kept() {
    let (app, _rules) = app_with_rules(&example("org-token-mint-in-office-hours.cedar"), |_| {}).await;
    let a = agent(&app, None).await;
    let op = operator(&app, "ana", &[], None).await;
    for (weekday, hour) in [(6, 10), (2, 7), (3, 18), (7, 12)] {
        advance_to(&app, weekday, hour);
        let at = app.access_token(&a).await;
        let res = app.request_approval(&at, "org_token_mint", "orgs/acme/tokens", &json!({"name": "ci"})).await;
        let body = assert_error(res, 403, "forbidden").await;
        assert!(
            body["error_description"].as_str().unwrap().contains("org-token-mint-in-office-hours"),
            "day {weekday} hour {hour}: {body}"
        );
        // Another action at the same hour is not concerned.
        let res = app.request_approval(&at, "secret_write", "orgs/acme/secrets/K", &json!({"v": 1})).await;
        assert_eq!(res.status(), 202, "day {weekday} hour {hour}");
    }
    let ot = app.access_token(&op).await;
    let mut actions = Vec::new();
    for status in ["pending", "expired"] {
        let page: Value = app.get_bearer(&format!("/v1/approvals?status={status}"), &ot).await.json().await.unwrap();
        actions.extend(page["approvals"].as_array().unwrap().iter().map(|a| a["action"].as_str().unwrap().to_owned()));
    }
    assert_eq!(actions, ["secret_write"; 4], "nothing stored for a forbidden request");
    let events = app.audit_events().await;
    assert_eq!(events.iter().filter(|e| *e == "approval.forbidden").count(), 4, "{events:?}");

    // In office hours the same request waits for an operator, who decides it.
    advance_to(&app, 3, 9);
    let at = app.access_token(&a).await;
    let id = app.pending_approval(&at, "org_token_mint", "orgs/acme/tokens", &json!({"name": "ci"})).await;
    let ot = app.access_token(&op).await;
    let decided: Value = app.decide(&ot, &id, "approve").await.json().await.unwrap();
    assert_eq!(decided["status"], "approved");
}

#[tokio::test]
async fn only_operators_a_policy_permits_decide_over_the_api_and_the_cli() {
    let (app, _rules) = app_with_rules(&example("secret-writes-need-security.cedar"), |_| {}).await;
    let a = agent(&app, None).await;
    let sec = operator(&app, "sam", &["security"], None).await;
    let plat = operator(&app, "pia", &["platform"], None).await;
    let at = app.access_token(&a).await;
    let id = app.pending_approval(&at, "secret_write", "workspaces/ws-9/secrets/K", &json!({"v": 1})).await;

    let pt = app.access_token(&plat).await;
    let body = assert_error(app.decide(&pt, &id, "approve").await, 403, "forbidden").await;
    assert!(body["error_description"].as_str().unwrap().contains("no approval policy permits you"), "{body}");
    // A deny is a decision too: refused alike, and the request still waits.
    assert_error(app.decide(&pt, &id, "deny").await, 403, "forbidden").await;
    // The command line goes through the same API and says why on one line.
    let out = cli_on(
        &app.database_url,
        &app.keys_dir(),
        &app.base,
        &["approvals", "approve", &id],
        &[("TESSERA_CLIENT_ID", &plat.id), ("TESSERA_CLIENT_SECRET", &plat.secret)],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no approval policy permits you"), "{out:?}");
    assert_eq!(approval(&app, &pt, &id).await["decisions"], json!([]));

    let out = cli_on(
        &app.database_url,
        &app.keys_dir(),
        &app.base,
        &["approvals", "approve", &id],
        &[("TESSERA_CLIENT_ID", &sec.id), ("TESSERA_CLIENT_SECRET", &sec.secret)],
    )
    .await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(app.capability(&at, &id).await.is_some());

    // Every other action is decided by any operator, as the file says.
    let id = app.pending_approval(&at, "workspace_delete", "workspaces/ws-9", &json!({})).await;
    assert_eq!(app.decide(&pt, &id, "approve").await.status(), 200);
    assert!(app.capability(&at, &id).await.is_some());
}

#[tokio::test]
async fn quorum_by_two_groups_needs_both_and_an_operator_in_both_counts_once() {
    let quorum = |c: &mut tessera::config::Config| {
        let text = "[[quorum.secret_write]]\ngroup = \"security\"\ncount = 1\n\
                    [[quorum.secret_write]]\ngroup = \"platform\"\ncount = 1\n";
        c.policy = tessera::policy::Policy::from_file(&toml::from_str(text).unwrap()).unwrap();
    };
    for with_rules in [false, true] {
        let rules = "@id(\"operators-decide\") permit(principal, action == Tessera::Action::\"decide\", resource);";
        let (app, _dir) = if with_rules {
            app_with_rules(rules, quorum).await
        } else {
            (spawn_app_with(quorum).await, tempfile::tempdir().unwrap())
        };
        let a = agent(&app, None).await;
        let both = operator(&app, "bo", &["security", "platform"], None).await;
        let sec = operator(&app, "sam", &["security"], None).await;
        let sec2 = operator(&app, "sue", &["security"], None).await;
        let none = operator(&app, "nil", &[], None).await;
        let at = app.access_token(&a).await;
        let id = app.pending_approval(&at, "secret_write", "workspaces/ws-9/secrets/K", &json!({"v": 1})).await;

        let first: Value = app.decide(&app.access_token(&both).await, &id, "approve").await.json().await.unwrap();
        assert_eq!(first["status"], "pending", "one operator in both groups is one approval");
        let filled: u64 = first["quorum"].as_array().unwrap().iter().map(|r| r["approvals"].as_u64().unwrap()).sum();
        assert_eq!(filled, 1, "{}", first["quorum"]);
        // An approval that would count for neither group is refused, and changes nothing.
        let body =
            assert_error(app.decide(&app.access_token(&none).await, &id, "approve").await, 403, "forbidden").await;
        assert!(body["error_description"].as_str().unwrap().contains("security ×1, platform ×1"), "{body}");
        // A second security operator completes it: the one in both now stands for platform.
        let second: Value = app.decide(&app.access_token(&sec).await, &id, "approve").await.json().await.unwrap();
        assert_eq!(second["status"], "approved", "{}", second["quorum"]);
        assert_eq!(
            second["quorum"],
            json!([{"group": "security", "count": 1, "approvals": 1}, {"group": "platform", "count": 1, "approvals": 1}])
        );

        // Two security operators never make up for a missing platform one.
        let id = app.pending_approval(&at, "secret_write", "workspaces/ws-9/secrets/L", &json!({"v": 2})).await;
        app.decide(&app.access_token(&sec).await, &id, "approve").await;
        let v: Value = app.decide(&app.access_token(&sec2).await, &id, "approve").await.json().await.unwrap();
        assert_eq!(v["status"], "pending", "{}", v["quorum"]);
        assert_eq!(v["quorum"][1], json!({"group": "platform", "count": 1, "approvals": 0}));
        assert!(app.capability(&at, &id).await.is_none());
    }
}

#[tokio::test]
async fn the_requesters_owner_never_counts_whatever_a_policy_says() {
    let everyone = "@id(\"anyone-anything\") permit(principal, action, resource);";
    for rules in [None, Some(everyone)] {
        let (app, _dir) = match rules {
            Some(r) => app_with_rules(r, |_| {}).await,
            None => (spawn_app().await, tempfile::tempdir().unwrap()),
        };
        let owner_op = operator(&app, "olga", &[], Some("olga@acme.example")).await;
        // The agent is owned by the operator client itself…
        let a = agent(&app, Some(&owner_op.id)).await;
        // …and a second operator client of the same person shares its owner.
        let a2 = agent(&app, Some("olga@acme.example")).await;
        let other = operator(&app, "otto", &[], None).await;
        let ot = app.access_token(&owner_op).await;
        for agent in [&a, &a2] {
            let at = app.access_token(agent).await;
            let id = app.pending_approval(&at, "workspace_delete", "workspaces/ws-1", &json!({})).await;
            let body = assert_error(app.decide(&ot, &id, "approve").await, 403, "forbidden").await;
            assert!(body["error_description"].as_str().unwrap().contains("owner"), "{body}");
            assert_error(app.decide(&ot, &id, "deny").await, 403, "forbidden").await;
            let shown = approval(&app, &ot, &id).await;
            assert_eq!(shown["decisions"], json!([]));
            assert!(shown["requester_owner"].is_string());
            let done: Value = app.decide(&app.access_token(&other).await, &id, "approve").await.json().await.unwrap();
            assert_eq!(done["status"], "approved");
        }
    }
}

#[tokio::test]
async fn each_action_has_its_own_pending_and_capability_times() {
    let app = spawn_app_with(|c| {
        let text = "[actions.secret_write]\npending_ttl_secs = 600\ncapability_ttl_secs = 120\n";
        c.policy = tessera::policy::Policy::from_file(&toml::from_str(text).unwrap()).unwrap();
    })
    .await;
    let a = agent(&app, None).await;
    let op = operator(&app, "ana", &[], None).await;
    let at = app.access_token(&a).await;
    let ot = app.access_token(&op).await;
    let life = |v: &Value, from: &str, to: &str| {
        let t = |k: &str| {
            time::OffsetDateTime::parse(v[k].as_str().unwrap(), &time::format_description::well_known::Rfc3339)
                .unwrap()
                .unix_timestamp()
        };
        t(to) - t(from)
    };
    for (action, resource, pending, cap) in
        [("secret_write", "orgs/acme/secrets/K", 600, 120), ("workspace_delete", "workspaces/ws-1", 3600, 300)]
    {
        let id = app.pending_approval(&at, action, resource, &json!({})).await;
        let shown = approval(&app, &ot, &id).await;
        assert_eq!(life(&shown, "created_at", "expires_at"), pending, "{action}");
        app.decide(&ot, &id, "approve").await;
        let cap_token = app.capability(&at, &id).await.unwrap();
        let claims = peek_claims(&cap_token);
        assert_eq!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(), cap, "{action}");
    }
    // A pending request of the shorter action expires on its own clock.
    let id = app.pending_approval(&at, "secret_write", "orgs/acme/secrets/L", &json!({})).await;
    app.state.clock().advance(601);
    let ot = app.access_token(&op).await;
    assert_error(app.decide(&ot, &id, "approve").await, 410, "expired").await;
}

#[tokio::test]
async fn a_policy_that_does_not_validate_stops_the_broker_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.cedar");
    std::fs::write(
        &bad,
        "@id(\"fine\") permit(principal, action == Tessera::Action::\"decide\", resource);\n\
         @id(\"security-typo\") permit(principal in Tessera::Group::\"security\", action == Tessera::Action::\"decide\", resource)\n\
         when { resource.acton == \"secret_write\" };\n",
    )
    .unwrap();
    let good = dir.path().join("good.cedar");
    std::fs::write(&good, example("secret-writes-need-security.cedar")).unwrap();
    let db = format!("sqlite://{}/t.db", dir.path().display());
    let keys = dir.path().join("keys");
    let bad_s = bad.to_str().unwrap();

    let serve = cli_on(
        &db,
        &keys,
        "http://127.0.0.1:9",
        &["serve"],
        &[("TESSERA_POLICY_FILE", bad_s), ("TESSERA_LISTEN", "127.0.0.1:0")],
    )
    .await;
    assert_eq!(serve.status.code(), Some(1), "{serve:?}");
    let err = String::from_utf8_lossy(&serve.stderr);
    assert!(err.contains("security-typo") && err.contains("bad.cedar"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");

    let check = cli_on(&db, &keys, "http://127.0.0.1:9", &["policy", "check", bad_s], &[]).await;
    assert_eq!(check.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&check.stderr).contains("security-typo"));
    let check = cli_on(&db, &keys, "http://127.0.0.1:9", &["policy", "check", good.to_str().unwrap()], &[]).await;
    assert!(check.status.success(), "{check:?}");
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(text.contains("security-decides-secret-writes") && text.contains("2 policies"), "{text}");
    // A file no operator could decide under is valid, and said to be so.
    let forbid_only = dir.path().join("forbid.cedar");
    std::fs::write(&forbid_only, "@id(\"no\") forbid(principal, action == Tessera::Action::\"request\", resource);")
        .unwrap();
    let check =
        cli_on(&db, &keys, "http://127.0.0.1:9", &["policy", "check", forbid_only.to_str().unwrap()], &[]).await;
    assert!(check.status.success());
    assert!(String::from_utf8_lossy(&check.stdout).contains("no operator can decide"));
    let missing = cli_on(&db, &keys, "http://127.0.0.1:9", &["policy", "check", "/nonexistent.cedar"], &[]).await;
    assert_eq!(missing.status.code(), Some(1));
}

#[tokio::test]
async fn policy_explain_says_which_policies_permit_or_forbid() {
    let (app, rules) = app_with_rules(&example("workspace-delete-needs-independent-platform.cedar"), |_| {}).await;
    let a = agent(&app, Some("olga@acme.example")).await;
    let plat = operator(&app, "pia", &["platform"], None).await;
    let plat_olga = operator(&app, "olga-ops", &["platform"], Some("olga@acme.example")).await;
    let sec = operator(&app, "sam", &["security"], None).await;
    let at = app.access_token(&a).await;
    let id = app.pending_approval(&at, "workspace_delete", "workspaces/ws-1", &json!({})).await;
    let env = [("TESSERA_POLICY_FILE", rules.path().join("rules.cedar").to_str().unwrap().to_owned())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let explain = |op: String, json: bool| {
        let (db, keys, base, id, env) =
            (app.database_url.clone(), app.keys_dir(), app.base.clone(), id.clone(), env.clone());
        async move {
            let mut args = vec!["policy", "explain", &id, &op];
            if json {
                args.push("--json");
            }
            cli_on(&db, &keys, &base, &args, &env).await
        }
    };
    let v = stdout_json(&explain(plat.id.clone(), true).await);
    assert_eq!(v["may_decide"], true, "{v}");
    let applies = |v: &Value, id: &str| {
        v["decide"].as_array().unwrap().iter().find(|p| p["id"] == id).unwrap()["applies"].clone()
    };
    assert_eq!(applies(&v, "platform-decides-workspace-deletion"), true);
    assert_eq!(applies(&v, "workspace-deletion-needs-independence"), false);

    let v = stdout_json(&explain(plat_olga.id.clone(), true).await);
    assert_eq!(v["may_decide"], false, "{v}");
    assert!(v["always"].as_str().unwrap().contains("owner"), "the broker's own rule, named: {v}");
    assert_eq!(applies(&v, "workspace-deletion-needs-independence"), true);

    let out = explain(sec.id.clone(), false).await;
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("may decide      no"), "{text}");
    assert!(
        text.lines().any(|l| l.contains("platform-decides-workspace-deletion") && l.contains("does not apply")),
        "{text}"
    );
    // And the decisions agree with the explanation.
    assert_error(app.decide(&app.access_token(&sec).await, &id, "approve").await, 403, "forbidden").await;
    assert_error(app.decide(&app.access_token(&plat_olga).await, &id, "approve").await, 403, "forbidden").await;
    assert_eq!(app.decide(&app.access_token(&plat).await, &id, "approve").await.status(), 200);
    let unknown = explain("tc_nobody".into(), false).await;
    assert_eq!(unknown.status.code(), Some(1));
}

/// What a hook server received: path, signature header, body.
type Received = std::sync::Arc<std::sync::Mutex<Vec<(String, String, Vec<u8>)>>>;

/// A hook server on loopback: every path answers 200, except `/flaky`, which fails twice first.
async fn hook_server() -> (String, Received) {
    let got: Received = Default::default();
    let sink = got.clone();
    let flaky = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let app = axum::Router::new().fallback(
        move |uri: axum::http::Uri, headers: axum::http::HeaderMap, body: axum::body::Bytes| {
            let (sink, flaky) = (sink.clone(), flaky.clone());
            async move {
                if uri.path() == "/flaky" && flaky.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 2 {
                    return axum::http::StatusCode::INTERNAL_SERVER_ERROR;
                }
                let sig = headers.get("tessera-signature").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                sink.lock().unwrap().push((uri.path().to_owned(), sig, body.to_vec()));
                axum::http::StatusCode::OK
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, got)
}

fn bodies(got: &Received, path: &str) -> Vec<(String, Value)> {
    got.lock()
        .unwrap()
        .iter()
        .filter(|(p, _, _)| p == path)
        .map(|(_, sig, b)| (sig.clone(), serde_json::from_slice(b).unwrap()))
        .collect()
}

async fn wait_for(got: &Received, path: &str, n: usize) -> Vec<(String, Value)> {
    for _ in 0..100 {
        if bodies(got, path).len() >= n {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    bodies(got, path)
}

/// Every string anywhere in a JSON value.
fn strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
        Value::Object(m) => m.iter().for_each(|(k, x)| {
            out.push(k.clone());
            strings(x, out)
        }),
        _ => {}
    }
}

#[tokio::test]
async fn requested_decided_and_expired_reach_json_slack_and_teams_hooks_with_the_console_link() {
    use tessera::webhooks::{Format, WebhookConfig, WebhookSecret};
    let (base, got) = hook_server().await;
    let hooks =
        [("/json", Format::Json), ("/slack", Format::Slack), ("/teams", Format::Teams), ("/flaky", Format::Json)];
    let app = spawn_app_with(|c| {
        c.webhooks = hooks
            .iter()
            .map(|(p, f)| WebhookConfig { url: format!("{base}{p}"), secret: WebhookSecret::new("whsec"), format: *f })
            .collect();
    })
    .await;
    let a = agent(&app, None).await;
    let op = operator(&app, "ana", &[], None).await;
    let at = app.access_token(&a).await;
    // A reason that tries to smuggle a link (and a mention) into a chat message.
    let body = json!({
        "action": "secret_write",
        "resource": "orgs/acme/secrets/K",
        "params": {"v": 1},
        "params_digest": tessera::verify::params_digest(&json!({"v": 1})).to_string(),
        "reason": "rotate <https://evil.example|Approve here> <!channel> [click](https://evil.example)",
    });
    let res = app.post_bearer("/v1/approvals", &at, &body).await;
    assert_eq!(res.status(), 202);
    let decided_id = res.json::<Value>().await.unwrap()["approval_id"].as_str().unwrap().to_owned();
    let ot = app.access_token(&op).await;
    assert_eq!(app.decide(&ot, &decided_id, "approve").await.status(), 200);
    let expired_id = app.pending_approval(&at, "workspace_delete", "workspaces/ws-1", &json!({})).await;
    app.state.clock().advance(3601);
    let ot = app.access_token(&op).await;
    // Reading the overdue request records its expiry; the notification follows the record.
    assert_eq!(approval(&app, &ot, &expired_id).await["status"], "expired");

    let json_bodies = wait_for(&got, "/json", 4).await;
    let events: Vec<(String, String)> = json_bodies
        .iter()
        .map(|(_, b)| {
            (b["event"].as_str().unwrap().to_owned(), b["approval"]["approval_id"].as_str().unwrap().to_owned())
        })
        .collect();
    assert_eq!(
        events,
        [
            ("approval.requested".to_owned(), decided_id.clone()),
            ("approval.decided".to_owned(), decided_id.clone()),
            ("approval.requested".to_owned(), expired_id.clone()),
            ("approval.expired".to_owned(), expired_id.clone()),
        ]
    );
    for (sig, b) in &json_bodies {
        let id = b["approval"]["approval_id"].as_str().unwrap();
        assert_eq!(b["console_url"], format!("{}/console/approvals/{id}", app.base));
        assert!(sig.starts_with("t=") && sig.contains(",v1="));
    }
    assert_eq!(json_bodies[1].1["decision"]["operator"], op.id.as_str());
    assert_eq!(json_bodies[1].1["decision"]["decision"], "approve");
    assert_eq!(json_bodies[3].1["expired"], "request");

    // Slack: incoming-webhook text and Block Kit blocks; the link, never a button.
    let slack = wait_for(&got, "/slack", 4).await;
    assert_eq!(slack.len(), 4);
    for (_, m) in &slack {
        assert!(m["text"].is_string(), "{m}");
        let blocks = m["blocks"].as_array().unwrap();
        assert!(!blocks.is_empty() && blocks.len() <= 50);
        for b in blocks {
            let t = b["type"].as_str().unwrap();
            assert!(["section", "context"].contains(&t), "{b}");
            if t == "section" {
                assert_eq!(b["text"]["type"], "mrkdwn");
                assert!(b["text"]["text"].as_str().unwrap().chars().count() <= 3000);
            }
        }
        let mut all = Vec::new();
        strings(m, &mut all);
        assert!(!all.iter().any(|s| s == "actions" || s == "button" || s == "accessory"), "no decision button: {m}");
        let id = if all.iter().any(|s| s.contains(&expired_id)) { &expired_id } else { &decided_id };
        let link = format!("<{}/console/approvals/{id}|", app.base);
        assert!(all.iter().any(|s| s.contains(&link)), "the console link: {m}");
        // Requester-written text cannot become a link or a mention.
        let text = m.to_string();
        assert!(!text.contains("<https://evil") && !text.contains("<!channel>"), "{text}");
    }
    assert!(slack[0].1.to_string().contains("&lt;https://evil.example|Approve here&gt;"));

    // Teams: one Adaptive Card, no actions at all; the link in its text.
    let teams = wait_for(&got, "/teams", 4).await;
    assert_eq!(teams.len(), 4);
    for (_, m) in &teams {
        assert_eq!(m["type"], "message");
        let att = &m["attachments"][0];
        assert_eq!(att["contentType"], "application/vnd.microsoft.card.adaptive");
        let card = &att["content"];
        assert_eq!(card["type"], "AdaptiveCard");
        assert!(card["version"].is_string() && card["body"].is_array());
        for el in card["body"].as_array().unwrap() {
            assert!(["TextBlock", "FactSet"].contains(&el["type"].as_str().unwrap()), "{el}");
        }
        assert!(card.get("actions").is_none());
        let text = m.to_string();
        assert!(!text.contains("Action.Submit") && !text.contains("Action.Execute"), "{text}");
        assert!(text.contains(&format!("]({}/console/approvals/", app.base)), "{text}");
        assert!(!text.contains("[click](https://evil"), "{text}");
    }

    // The hook that failed twice got everything in the end, and the retries are counted.
    assert_eq!(wait_for(&got, "/flaky", 4).await.len(), 4);
    assert!(app.state.notifier().retried() >= 2);
    let metrics = app.http.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let line = metrics.lines().find(|l| l.starts_with("tessera_webhook_retried_total ")).unwrap();
    assert!(line.split(' ').nth(1).unwrap().parse::<u64>().unwrap() >= 2, "{line}");
}

/// Break-glass exists only where a policy permits it: with no policy file, or one that permits
/// it to someone else, a break-glass approval (even with a passkey proof) is refused and the
/// quorum holds. Called on the service itself, as the console does after checking the passkey.
#[tokio::test]
async fn break_glass_without_a_policy_that_permits_it_is_refused_and_the_quorum_holds() {
    let permits_oncall = "@id(\"ops\") permit(principal, action == Tessera::Action::\"decide\", resource);\n\
        @id(\"oncall\") permit(principal in Tessera::Group::\"oncall\", action == Tessera::Action::\"break_glass\", resource);";
    let quorum = |c: &mut tessera::config::Config| {
        c.policy =
            tessera::policy::Policy::from_file(&toml::from_str("[quorum]\nsecret_write = 2\n").unwrap()).unwrap();
    };
    for rules in [None, Some(permits_oncall)] {
        let (app, _dir) = match rules {
            Some(r) => app_with_rules(r, quorum).await,
            None => (spawn_app_with(quorum).await, tempfile::tempdir().unwrap()),
        };
        let a = agent(&app, None).await;
        let op = operator(&app, "ana", &["security"], None).await;
        let at = app.access_token(&a).await;
        let id = app.pending_approval(&at, "secret_write", "orgs/acme/secrets/K", &json!({"v": 1})).await;
        let verifier = tessera::verify::Verifier::for_issuer(&app.base, "core");
        let claims = verifier.verify_access(&app.access_token(&op).await, app.state.now()).await.unwrap();
        let assertion = tessera::passkeys::Assertion {
            credential_id: "c".into(),
            client_data: "d".into(),
            authenticator_data: "a".into(),
            signature: "s".into(),
        };
        let ruling = tessera::approvals::Ruling {
            verdict: tessera::approvals::Verdict::Approve,
            note: Some("production is down and this must go now".into()),
            proof: tessera::approvals::Proof::Passkey { nonce: "n", assertion: &assertion },
            break_glass: true,
        };
        let err = tessera::approvals::decide(
            app.state.store(),
            &app.state.config().policy,
            &claims,
            &id,
            ruling,
            app.state.now(),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, tessera::approvals::ApprovalError::Forbidden(_)), "{err:?}");
        assert!(err.to_string().contains("break-glass") || err.to_string().contains("break glass"), "{err}");
        let ot = app.access_token(&op).await;
        let shown = approval(&app, &ot, &id).await;
        assert_eq!((shown["status"].as_str(), shown["decisions"].as_array().unwrap().len()), (Some("pending"), 0));
    }
}

/// Every party counts (design §12): the owner of a client that acted for the requester never
/// counts either. The runtime owned by olga's operator exchanges the concierge's token and asks.
#[tokio::test]
async fn the_owner_of_a_client_acting_for_the_requester_never_counts() {
    let app = spawn_app().await;
    let olga = operator(&app, "olga", &[], None).await;
    let other = operator(&app, "otto", &[], None).await;
    let runtime = stdout_json(
        &app.cli(&[
            "clients", "create", "--tenant", "acme", "--kind", "agent", "--name", "runtime", "--owner", &olga.id,
        ])
        .await,
    );
    let runtime = TestClient {
        id: runtime["client_id"].as_str().unwrap().to_owned(),
        secret: runtime["client_secret"].as_str().unwrap().to_owned(),
    };
    let concierge = stdout_json(
        &app.cli(&[
            "clients",
            "create",
            "--tenant",
            "acme",
            "--kind",
            "agent",
            "--name",
            "concierge",
            "--delegate",
            &runtime.id,
        ])
        .await,
    );
    let concierge = TestClient {
        id: concierge["client_id"].as_str().unwrap().to_owned(),
        secret: concierge["client_secret"].as_str().unwrap().to_owned(),
    };
    let subject = app.access_token(&concierge).await;
    let res = app
        .token_request(
            &[
                ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"),
                ("subject_token", &subject),
                ("subject_token_type", "urn:ietf:params:oauth:token-type:access_token"),
            ],
            Some(&runtime),
        )
        .await;
    assert_eq!(res.status(), 200);
    let delegated = res.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_owned();
    let id = app.pending_approval(&delegated, "workspace_delete", "workspaces/ws-1", &json!({})).await;
    let body = assert_error(app.decide(&app.access_token(&olga).await, &id, "approve").await, 403, "forbidden").await;
    assert!(body["error_description"].as_str().unwrap().contains("owner"), "{body}");
    assert_eq!(app.decide(&app.access_token(&other).await, &id, "approve").await.status(), 200);
}
