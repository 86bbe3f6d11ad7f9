//! Spawns a broker per test: port 0, a fresh database and keys folder.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde_json::Value;
use tempfile::TempDir;
use tessera::config::{Config, DatabaseUrl};
use tessera::domain::CallerKind;
use tessera::server::{AppState, Application, Clock};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// A running broker.
pub struct TestApp {
    #[allow(dead_code)] // handy when debugging a test
    pub addr: SocketAddr,
    pub base: String,
    pub state: AppState,
    pub http: reqwest::Client,
    pub dir: TempDir,
    pub database_url: String,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<()>>,
}

/// A registered client with its secret.
#[derive(Clone, Debug)]
pub struct TestClient {
    pub id: String,
    pub secret: String,
}

pub fn test_config(dir: &Path, database_url: &str) -> Config {
    let mut c = Config::load(None, &HashMap::new()).unwrap();
    c.database_url = DatabaseUrl::new(database_url);
    c.keys_dir = dir.join("keys");
    c
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(tweak: impl FnOnce(&mut Config)) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let url = fresh_database_url(dir.path()).await;
    spawn_on(dir, url, tweak).await
}

/// Whether this run is on PostgreSQL (`TESSERA_TEST_BACKEND=postgres`, set by scripts/test).
pub fn on_postgres() -> bool {
    std::env::var("TESSERA_TEST_BACKEND").as_deref() == Ok("postgres")
}

/// The admin URL of the test PostgreSQL. Never skipped: a test that needs it fails without it.
pub fn postgres_admin_url() -> String {
    std::env::var("TESSERA_TEST_POSTGRES_URL")
        .expect("this test needs PostgreSQL: set TESSERA_TEST_POSTGRES_URL (see scripts/start-postgres)")
}

/// A new, empty PostgreSQL database on the test server.
pub async fn fresh_postgres_url() -> String {
    use sqlx::Connection;
    let admin = postgres_admin_url();
    let mut conn = sqlx::PgConnection::connect(&admin).await.expect("connect to TESSERA_TEST_POSTGRES_URL");
    let name =
        format!("tessera_t_{}", tessera::token::b64::encode(&rand_bytes()).to_lowercase().replace(['-', '_'], "x"));
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.unwrap();
    let (base, query) = match admin.split_once('?') {
        Some((b, q)) => (b.to_owned(), format!("?{q}")),
        None => (admin.clone(), String::new()),
    };
    let scheme_end = base.find("://").unwrap() + 3;
    let path_start = base[scheme_end..].find('/').map(|i| i + scheme_end).unwrap_or(base.len());
    format!("{}/{name}{query}", &base[..path_start])
}

fn rand_bytes() -> [u8; 12] {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 12];
    ring::rand::SystemRandom::new().fill(&mut b).unwrap();
    b
}

/// A fresh database for one test: SQLite in `dir`, or a new PostgreSQL database.
pub async fn fresh_database_url(dir: &Path) -> String {
    if on_postgres() { fresh_postgres_url().await } else { format!("sqlite://{}/tessera.db", dir.display()) }
}

/// Spawns a broker on an existing folder and database (restarts, second replicas).
pub async fn spawn_on(dir: TempDir, database_url: String, tweak: impl FnOnce(&mut Config)) -> TestApp {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut config = test_config(dir.path(), &database_url);
    config.issuer = format!("http://{addr}");
    tweak(&mut config);
    let app = Application::build_with_listener(config, listener, Clock::default()).await.unwrap();
    let state = app.state().clone();
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        app.run_until(async move {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    TestApp {
        addr,
        base: format!("http://{addr}"),
        state,
        http: reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap(),
        dir,
        database_url,
        stop: Some(tx),
        handle: Some(handle),
    }
}

impl TestApp {
    /// Stops the server and returns its folder, for a restart.
    pub async fn stop(mut self) -> (TempDir, String) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(h) = self.handle.take() {
            let _ = h.await;
        }
        let TestApp { dir, database_url, .. } = self;
        (dir, database_url)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn keys_dir(&self) -> PathBuf {
        self.dir.path().join("keys")
    }

    pub async fn create_client(&self, tenant: &str, kind: CallerKind, name: &str) -> TestClient {
        self.create_client_with(tenant, kind, name, None, &[], &[]).await
    }

    /// Registers `new` as `tessera clients create` would, now.
    pub async fn create_new(&self, new: tessera::clients::NewClient) -> TestClient {
        let (rec, secret) =
            tessera::clients::create(self.state.store(), &self.state.config().policy, new, "test", self.state.now())
                .await
                .unwrap();
        TestClient { id: rec.client_id.to_string(), secret: secret.expose().to_owned() }
    }

    pub async fn create_client_with(
        &self,
        tenant: &str,
        kind: CallerKind,
        name: &str,
        workspace: Option<&str>,
        scopes: &[&str],
        bypass: &[&str],
    ) -> TestClient {
        let new = tessera::clients::NewClient {
            workspace: workspace.map(|w| w.parse().unwrap()),
            scopes: scopes.iter().map(|s| s.parse().unwrap()).collect(),
            allow_bypass: bypass.iter().map(|s| s.parse().unwrap()).collect(),
            ..new_client(tenant, kind, name)
        };
        self.create_new(new).await
    }

    /// POST /oauth/token with a form and optional HTTP Basic.
    pub async fn token_request(&self, form: &[(&str, &str)], basic: Option<&TestClient>) -> reqwest::Response {
        let mut req = self.http.post(self.url("/oauth/token")).form(form);
        if let Some(c) = basic {
            req = req.basic_auth(&c.id, Some(&c.secret));
        }
        req.send().await.unwrap()
    }

    /// An access token for `client` with its default scopes.
    pub async fn access_token(&self, client: &TestClient) -> String {
        self.access_token_scoped(client, None).await
    }

    pub async fn access_token_scoped(&self, client: &TestClient, scope: Option<&str>) -> String {
        let mut form = vec![("grant_type", "client_credentials")];
        if let Some(s) = scope {
            form.push(("scope", s));
        }
        let res = self.token_request(&form, Some(client)).await;
        assert_eq!(res.status(), 200, "token request failed");
        let body: Value = res.json().await.unwrap();
        body["access_token"].as_str().unwrap().to_owned()
    }

    /// Runs the real `tessera` binary against this broker's database and keys.
    pub async fn cli(&self, args: &[&str]) -> std::process::Output {
        cli_on(&self.database_url, &self.keys_dir(), &self.base, args, &[]).await
    }
}

/// Runs the binary without blocking the runtime the broker under test runs on.
pub async fn cli_on(
    database_url: &str,
    keys_dir: &Path,
    issuer: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> std::process::Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_tessera"));
    cmd.args(args)
        .env_remove("TESSERA_CONFIG")
        .env("TESSERA_DATABASE_URL", database_url)
        .env("TESSERA_KEYS_DIR", keys_dir)
        .env("TESSERA_ISSUER", issuer);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.kill_on_drop(true);
    tokio::time::timeout(std::time::Duration::from_secs(60), cmd.output()).await.expect("CLI finished").unwrap()
}

/// What `tessera clients create --tenant T --kind K --name N` registers, with nothing more.
pub fn new_client(tenant: &str, kind: CallerKind, name: &str) -> tessera::clients::NewClient {
    tessera::clients::NewClient {
        tenant: tenant.parse().unwrap(),
        kind,
        name: name.to_owned(),
        workspace: None,
        scopes: vec![],
        allow_bypass: vec![],
        delegates: vec![],
        require_dpop: false,
        groups: vec![],
        owner: None,
    }
}

/// Asserts an error answer in the pinned shape and returns its body.
pub async fn assert_error(res: reqwest::Response, status: u16, code: &str) -> Value {
    let got = res.status().as_u16();
    let body: Value = res.json().await.unwrap_or(Value::Null);
    assert_eq!(got, status, "status; body {body}");
    assert_eq!(body["error"], code, "error code; body {body}");
    assert!(body["error_description"].is_string(), "error_description missing: {body}");
    body
}

/// Decodes the claims of a compact JWS without checking it (for assertions only).
pub fn peek_claims(token: &str) -> Value {
    let part = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&tessera::token::b64::decode(part).unwrap()).unwrap()
}

pub fn peek_header(token: &str) -> Value {
    let part = token.split('.').next().unwrap();
    serde_json::from_slice(&tessera::token::b64::decode(part).unwrap()).unwrap()
}

impl TestApp {
    pub async fn get_bearer(&self, path: &str, token: &str) -> reqwest::Response {
        self.http.get(self.url(path)).bearer_auth(token).send().await.unwrap()
    }

    pub async fn post_bearer(&self, path: &str, token: &str, body: &Value) -> reqwest::Response {
        self.http.post(self.url(path)).bearer_auth(token).json(body).send().await.unwrap()
    }

    /// Creates an approval request as `token`; returns the response.
    pub async fn request_approval(
        &self,
        token: &str,
        action: &str,
        resource: &str,
        params: &Value,
    ) -> reqwest::Response {
        let body = serde_json::json!({
            "action": action,
            "resource": resource,
            "params": params,
            "params_digest": tessera::verify::params_digest(params).to_string(),
            "summary": {"note": "test"},
            "reason": "needed for the test",
        });
        self.post_bearer("/v1/approvals", token, &body).await
    }

    /// Creates an approval and returns its id (asserting 202).
    pub async fn pending_approval(&self, token: &str, action: &str, resource: &str, params: &Value) -> String {
        let res = self.request_approval(token, action, resource, params).await;
        assert_eq!(res.status(), 202);
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["status"], "pending");
        body["approval_id"].as_str().unwrap().to_owned()
    }

    pub async fn decide(&self, token: &str, id: &str, decision: &str) -> reqwest::Response {
        self.post_bearer(&format!("/v1/approvals/{id}/decision"), token, &serde_json::json!({"decision": decision}))
            .await
    }

    pub async fn redeem(&self, token: &str, capability: &str) -> reqwest::Response {
        self.post_bearer("/v1/capabilities/redeem", token, &serde_json::json!({"capability": capability})).await
    }

    /// The requester's reading of an approval's capability.
    pub async fn capability(&self, token: &str, id: &str) -> Option<String> {
        let res = self.get_bearer(&format!("/v1/approvals/{id}"), token).await;
        assert_eq!(res.status(), 200);
        let body: Value = res.json().await.unwrap();
        body["capability"].as_str().map(str::to_owned)
    }

    pub async fn audit_events(&self) -> Vec<String> {
        tessera::audit::read_page(self.state.store(), 0, 10_000).await.unwrap().into_iter().map(|r| r.event).collect()
    }
}
