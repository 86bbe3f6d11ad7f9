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
    let url = format!("sqlite://{}/tessera.db", dir.path().display());
    spawn_on(dir, url, tweak).await
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
            tenant: tenant.parse().unwrap(),
            kind,
            name: name.to_owned(),
            workspace: workspace.map(|w| w.parse().unwrap()),
            scopes: scopes.iter().map(|s| s.parse().unwrap()).collect(),
            allow_bypass: bypass.iter().map(|s| s.parse().unwrap()).collect(),
        };
        let (rec, secret) =
            tessera::clients::create(self.state.store(), &self.state.config().policy, new, "test", self.state.now())
                .await
                .unwrap();
        TestClient { id: rec.client_id.to_string(), secret: secret.expose().to_owned() }
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
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        cli_on(&self.database_url, &self.keys_dir(), &self.base, args, &[])
    }
}

pub fn cli_on(
    database_url: &str,
    keys_dir: &Path,
    issuer: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"));
    cmd.args(args)
        .env_remove("TESSERA_CONFIG")
        .env("TESSERA_DATABASE_URL", database_url)
        .env("TESSERA_KEYS_DIR", keys_dir)
        .env("TESSERA_ISSUER", issuer);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
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
