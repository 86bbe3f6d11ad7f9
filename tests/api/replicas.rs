//! PostgreSQL and several broker replicas. Two real broker processes' worth of state
//! (each its own keys folder and listener) on one PostgreSQL database. Needs
//! TESSERA_TEST_POSTGRES_URL; scripts/test runs this module only when it is set.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tessera::domain::CallerKind;
use tessera::verify::{JwksClient, JwksOptions, Policy, Verifier};
use tokio::net::{TcpListener, TcpStream};

use crate::helpers::*;

const ISSUER: &str = "http://tessera.test";

async fn two_replicas() -> (TestApp, TestApp) {
    let url = fresh_postgres_url().await;
    let a = spawn_on(tempfile::tempdir().unwrap(), url.clone(), |c| c.issuer = ISSUER.into()).await;
    let b = spawn_on(tempfile::tempdir().unwrap(), url, |c| c.issuer = ISSUER.into()).await;
    (a, b)
}

async fn kids(app: &TestApp) -> Vec<String> {
    let jwks: Value = app.http.get(app.url("/.well-known/jwks.json")).send().await.unwrap().json().await.unwrap();
    let mut v: Vec<String> =
        jwks["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap().to_owned()).collect();
    v.sort();
    v
}

#[tokio::test]
async fn each_replica_signs_with_its_own_key_and_both_publish_both() {
    let (a, b) = two_replicas().await;
    let (ka, kb) = (a.state.keys().signer().kid().to_owned(), b.state.keys().signer().kid().to_owned());
    assert_ne!(ka, kb);
    let mut both = vec![ka, kb];
    both.sort();
    assert_eq!(kids(&a).await, both, "replica A's JWKS");
    assert_eq!(kids(&b).await, both, "replica B's JWKS");
}

#[tokio::test]
async fn a_token_minted_by_one_verifies_through_the_others_jwks() {
    let (a, b) = two_replicas().await;
    let agent = a.create_client("org-1", CallerKind::Agent, "concierge").await;
    let from_a = a.access_token(&agent).await;
    let from_b = b.access_token(&agent).await;
    assert_ne!(peek_header(&from_a)["kid"], peek_header(&from_b)["kid"]);
    for (token, via) in [(&from_a, &b), (&from_b, &a)] {
        let v = Verifier::new(
            Policy::new(ISSUER, "core"),
            JwksClient::new(via.url("/.well-known/jwks.json"), JwksOptions::default()),
        );
        v.verify_access(token, via.state.now()).await.unwrap();
    }
    // Each broker accepts the other's tokens on its own API too.
    let op = a.create_client("org-1", CallerKind::Operator, "alice").await;
    let op_from_a = a.access_token(&op).await;
    assert_eq!(b.get_bearer("/v1/approvals?status=pending", &op_from_a).await.status(), 200);
}

#[tokio::test]
async fn an_approval_created_on_one_is_decided_on_the_other_and_redeemed_on_either() {
    let (a, b) = two_replicas().await;
    let agent = a.create_client("org-1", CallerKind::Agent, "concierge").await;
    let op = b.create_client("org-1", CallerKind::Operator, "alice").await;
    let at = a.access_token(&agent).await;
    let id = a.pending_approval(&at, "secret_write", "workspaces/ws-2/secrets/K", &json!({"key": "K"})).await;
    let ot = b.access_token(&op).await;
    let listed: Value = b.get_bearer("/v1/approvals?status=pending", &ot).await.json().await.unwrap();
    assert_eq!(listed["approvals"][0]["approval_id"], id);
    assert_eq!(b.decide(&ot, &id, "approve").await.status(), 200);
    let cap = a.capability(&at, &id).await.expect("capability read on the other replica");
    assert_eq!(b.redeem(&at, &cap).await.status(), 200);
    assert_error(a.redeem(&at, &cap).await, 409, "conflict").await;
}

#[tokio::test]
async fn sixty_four_redemptions_across_both_replicas_give_exactly_one_success() {
    let (a, b) = two_replicas().await;
    let agent = a.create_client("org-1", CallerKind::Agent, "concierge").await;
    let op = a.create_client("org-1", CallerKind::Operator, "alice").await;
    let at = a.access_token(&agent).await;
    let id = a.pending_approval(&at, "org_token_mint", "orgs/org-1/tokens", &json!({"name": "x"})).await;
    assert_eq!(b.decide(&b.access_token(&op).await, &id, "approve").await.status(), 200);
    let cap = b.capability(&at, &id).await.unwrap();
    let (a, b) = (Arc::new(a), Arc::new(b));
    let mut tasks = Vec::new();
    for i in 0..64 {
        let app = if i % 2 == 0 { a.clone() } else { b.clone() };
        let (at, cap) = (at.clone(), cap.clone());
        tasks.push(tokio::spawn(async move { app.redeem(&at, &cap).await.status().as_u16() }));
    }
    let mut codes = Vec::new();
    for t in tasks {
        codes.push(t.await.unwrap());
    }
    assert_eq!(codes.iter().filter(|c| **c == 200).count(), 1, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 409).count(), 63, "{codes:?}");
}

#[tokio::test]
async fn the_audit_log_stays_one_verifiable_chain_under_concurrent_writes_from_both() {
    let (a, b) = two_replicas().await;
    let agent = a.create_client("org-1", CallerKind::Agent, "concierge").await;
    let (a, b) = (Arc::new(a), Arc::new(b));
    let mut tasks = Vec::new();
    for i in 0..80 {
        let app = if i % 2 == 0 { a.clone() } else { b.clone() };
        let agent = agent.clone();
        tasks.push(tokio::spawn(async move {
            let t = app.access_token(&agent).await;
            if i % 10 == 0 {
                app.pending_approval(&t, "workspace_delete", &format!("workspaces/ws-{i}"), &json!({})).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Each replica signs checkpoints with its own folder's key: the JWKS lists both.
    let out = a.cli(&["audit", "verify", "--jwks", &a.url("/.well-known/jwks.json")]).await;
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let events = a.audit_events().await;
    assert_eq!(events.iter().filter(|e| *e == "token.issued").count(), 80);
    assert_eq!(events.iter().filter(|e| *e == "approval.requested").count(), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_operators_approving_at_once_on_the_two_replicas_always_reach_a_quorum_of_two() {
    let quorum_two = |c: &mut tessera::config::Config| {
        c.issuer = ISSUER.into();
        let file = tessera::policy::PolicyFile {
            quorum: Some([("org_token_mint".to_owned(), tessera::policy::QuorumFile::Count(2))].into()),
            ..Default::default()
        };
        c.policy = tessera::policy::Policy::from_file(&file).unwrap();
    };
    let url = fresh_postgres_url().await;
    let a = spawn_on(tempfile::tempdir().unwrap(), url.clone(), quorum_two).await;
    let b = spawn_on(tempfile::tempdir().unwrap(), url, quorum_two).await;
    let agent = a.create_client("org-1", CallerKind::Agent, "concierge").await;
    let op1 = a.create_client("org-1", CallerKind::Operator, "alice").await;
    let op2 = a.create_client("org-1", CallerKind::Operator, "bob").await;
    let at = a.access_token(&agent).await;
    let (t1, t2) = (a.access_token(&op1).await, b.access_token(&op2).await);
    let (a, b) = (Arc::new(a), Arc::new(b));
    for round in 0..12 {
        let id =
            a.pending_approval(&at, "org_token_mint", "orgs/org-1/tokens", &json!({"name": format!("r{round}")})).await;
        let start = Arc::new(tokio::sync::Barrier::new(2));
        let mut tasks = Vec::new();
        for (app, t) in [(a.clone(), t1.clone()), (b.clone(), t2.clone())] {
            let (id, start) = (id.clone(), start.clone());
            tasks.push(tokio::spawn(async move {
                start.wait().await;
                app.decide(&t, &id, "approve").await.status().as_u16()
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), 200, "round {round}");
        }
        let row: Value = b.get_bearer(&format!("/v1/approvals/{id}"), &t1).await.json().await.unwrap();
        assert_eq!(row["status"], "approved", "round {round}: {row}");
        assert_eq!(row["decisions"].as_array().unwrap().len(), 2);
        assert!(a.capability(&at, &id).await.is_some(), "round {round}");
    }
}

/// A TCP proxy in front of PostgreSQL that a test can cut and restore: a real outage.
struct Proxy {
    addr: std::net::SocketAddr,
    up: Arc<AtomicBool>,
    conns: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let conns: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let (up2, conns2) = (up.clone(), conns.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else { break };
                if !up2.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let upstream = upstream.clone();
                let h = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                conns2.lock().unwrap().push(h);
            }
        });
        Proxy { addr, up, conns }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for h in self.conns.lock().unwrap().drain(..) {
            h.abort();
        }
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn a_database_outage_fails_closed_and_the_broker_recovers_by_itself() {
    let direct = fresh_postgres_url().await;
    // postgres://user@HOST:PORT/db → the proxy's address in its place.
    let after_scheme = direct.find("://").unwrap() + 3;
    let host_start = direct[after_scheme..].find('@').map_or(after_scheme, |i| after_scheme + i + 1);
    let host_end = direct[host_start..].find('/').unwrap() + host_start;
    let proxy = Proxy::start(direct[host_start..host_end].to_owned()).await;
    let via_proxy = format!("{}{}{}", &direct[..host_start], proxy.addr, &direct[host_end..]);
    let app = spawn_on(tempfile::tempdir().unwrap(), via_proxy, |_| {}).await;
    let agent = app.create_client("org-1", CallerKind::Agent, "concierge").await;
    app.access_token(&agent).await;
    let issued_before = app.audit_events().await.len();

    proxy.cut();
    let res = app.token_request(&[("grant_type", "client_credentials")], Some(&agent)).await;
    let status = res.status();
    let body: Value = res.json().await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "temporarily_unavailable");
    assert!(body.get("access_token").is_none(), "no token without its audit record");
    let ready = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    assert_eq!(ready.json::<Value>().await.unwrap()["database"], false);
    // Liveness is not readiness: the process is fine.
    assert_eq!(app.http.get(app.url("/healthz")).send().await.unwrap().status(), 200);

    proxy.restore();
    let mut recovered = false;
    for _ in 0..40 {
        if app.http.get(app.url("/readyz")).send().await.unwrap().status() == 200 {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(recovered, "readiness returns by itself");
    app.access_token(&agent).await;
    // Exactly the two successful issues are audited; the refused one left nothing.
    let events = app.audit_events().await;
    assert_eq!(events.len(), issued_before + 1);
    assert_eq!(app.cli(&["audit", "verify"]).await.status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_decisions_under_a_group_quorum_on_two_replicas_reach_exactly_one_approval() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.cedar");
    std::fs::write(&rules, "@id(\"ops\") permit(principal, action == Tessera::Action::\"decide\", resource);").unwrap();
    let policy = move |c: &mut tessera::config::Config| {
        c.issuer = ISSUER.into();
        let text = "[[quorum.secret_write]]\ngroup = \"security\"\ncount = 1\n\
                    [[quorum.secret_write]]\ngroup = \"platform\"\ncount = 1\n";
        c.policy = tessera::policy::Policy::from_file(&toml::from_str(text).unwrap()).unwrap();
        c.policy_file = Some(rules.clone());
        c.load_rules().unwrap();
    };
    let url = fresh_postgres_url().await;
    let a = spawn_on(tempfile::tempdir().unwrap(), url.clone(), policy.clone()).await;
    let b = spawn_on(tempfile::tempdir().unwrap(), url, policy).await;
    let agent = a.create_client("org-1", CallerKind::Agent, "concierge").await;
    let mut ops = Vec::new();
    for (name, groups) in
        [("sec", vec!["security"]), ("plat", vec!["platform"]), ("both", vec!["security", "platform"])]
    {
        let op = a.create_client("org-1", CallerKind::Operator, name).await;
        let groups = groups.iter().map(|g| g.parse().unwrap()).collect();
        tessera::clients::set_groups(a.state.store(), &op.id, groups, "test", a.state.now()).await.unwrap();
        ops.push(op);
    }
    let at = a.access_token(&agent).await;
    let tokens = [a.access_token(&ops[0]).await, b.access_token(&ops[1]).await, a.access_token(&ops[2]).await];
    let (a, b) = (Arc::new(a), Arc::new(b));
    let rounds = 10;
    for round in 0..rounds {
        let resource = format!("orgs/org-1/secrets/K{round}");
        let id = a.pending_approval(&at, "secret_write", &resource, &json!({"v": round})).await;
        let start = Arc::new(tokio::sync::Barrier::new(3));
        let mut tasks = Vec::new();
        for (i, t) in tokens.iter().enumerate() {
            let app = if i == 1 { b.clone() } else { a.clone() };
            let (id, start, t) = (id.clone(), start.clone(), t.clone());
            tasks.push(tokio::spawn(async move {
                start.wait().await;
                app.decide(&t, &id, "approve").await.status().as_u16()
            }));
        }
        let mut codes = Vec::new();
        for t in tasks {
            codes.push(t.await.unwrap());
        }
        // Every decision either counted (200) or came after the approval (409); never an error.
        assert!(codes.iter().all(|c| [200, 409].contains(c)), "round {round}: {codes:?}");
        let row: Value = b.get_bearer(&format!("/v1/approvals/{id}"), &tokens[0]).await.json().await.unwrap();
        assert_eq!(row["status"], "approved", "round {round}: {row}");
        assert!(a.capability(&at, &id).await.is_some(), "round {round}");
    }
    let events = a.audit_events().await;
    assert_eq!(events.iter().filter(|e| *e == "approval.approved").count(), rounds, "exactly one approval each");
    assert_eq!(events.iter().filter(|e| *e == "capability.issued").count(), rounds);
}
