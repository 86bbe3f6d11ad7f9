//! Storage: the SQLite files created private, and migrations run by several processes at once.

use tessera::domain::CallerKind;

use crate::helpers::*;

/// Defect 9: the SQLite database and its write-ahead log were created world-readable. The
/// file and its folder are created private, and SQLite gives `-wal` and `-shm` the file's mode.
#[tokio::test]
async fn the_sqlite_database_and_its_wal_are_created_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("data").join("db");
    let url = format!("sqlite://{}/tessera.db", folder.display());
    let broker = spawn_on(dir, url, |_| {}).await;
    let agent = broker.create_client("org-1", CallerKind::Agent, "a").await;
    broker.access_token(&agent).await;
    let mode = |p: std::path::PathBuf| std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(folder.clone()), 0o700);
    for file in ["tessera.db", "tessera.db-wal", "tessera.db-shm"] {
        assert_eq!(mode(folder.join(file)), 0o600, "{file}");
    }
}

/// Review round three, item 10: `tessera clients create` run right after `tessera serve`
/// started once failed with `migration failed … duplicate column name`: two processes applied
/// the same migration. Several processes migrating one fresh database at once all succeed,
/// each migration applied once (on SQLite, and on PostgreSQL with TESSERA_TEST_BACKEND).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_migrating_one_database_at_once_all_succeed() {
    for round in 0..6 {
        let dir = tempfile::tempdir().unwrap();
        let url = fresh_database_url(dir.path()).await;
        let keys = dir.path().join("keys");
        let runs: Vec<_> = (0..4)
            .map(|i| {
                let args: &[&str] = if i % 2 == 0 {
                    &["migrate"]
                } else {
                    &["clients", "create", "--tenant", "org-1", "--kind", "agent", "--name", "a"]
                };
                cli_on(&url, &keys, "http://x", args, &[])
            })
            .collect();
        for (i, out) in futures_util::future::join_all(runs).await.into_iter().enumerate() {
            assert!(out.status.success(), "round {round}, process {i}: {}", String::from_utf8_lossy(&out.stderr));
        }
        let store = tessera::store::Store::open(&tessera::config::DatabaseUrl::new(url.clone())).await.unwrap();
        let versions: Vec<i64> = sqlx::query_scalar("SELECT version FROM _sqlx_migrations ORDER BY version")
            .fetch_all(store.pool())
            .await
            .unwrap();
        let mut unique = versions.clone();
        unique.dedup();
        assert_eq!(versions, unique, "each migration applied once");
        assert!(versions.len() >= 10, "{versions:?}");
        store.close().await;
    }
}
