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
