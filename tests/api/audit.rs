//! The audit log: every token and change recorded, a failed write failing the request, signed
//! checkpoints, witnesses, archives and following the log (design §16). Runs on SQLite, and on
//! PostgreSQL with TESSERA_TEST_BACKEND=postgres.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;
use tessera::audit::checkpoint;
use tessera::domain::CallerKind;
use tokio::io::AsyncBufReadExt;

use crate::helpers::*;

/// The broker's keys, as the CLI sees them.
async fn keys(app: &TestApp) -> HashMap<String, Vec<u8>> {
    let jwks: Value = app.http.get(app.url("/.well-known/jwks.json")).send().await.unwrap().json().await.unwrap();
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (k["kid"].as_str().unwrap().to_owned(), tessera::token::b64::decode(k["x"].as_str().unwrap()).unwrap())
        })
        .collect()
}

async fn issue_tokens(app: &TestApp, n: usize) {
    let agent = app.create_client("org-1", CallerKind::Agent, "concierge").await;
    for _ in 0..n {
        app.access_token(&agent).await;
    }
}

async fn sign(app: &TestApp) -> checkpoint::StoredCheckpoint {
    tessera::server::audit::sign_checkpoint(&app.state).await.unwrap().expect("a new head to sign")
}

async fn head(app: &TestApp) -> i64 {
    sqlx::query_scalar::<_, i64>("SELECT MAX(seq) FROM audit_log").fetch_one(app.state.store().pool()).await.unwrap()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

async fn latest_via_api(app: &TestApp, token: &str) -> String {
    let res = app.get_bearer("/v1/audit/checkpoint", token).await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    body["checkpoint"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn checkpoint_is_signed_at_start_and_served_to_operators_and_services_only() {
    let app = spawn_app().await;
    let op = app.create_client("org-1", CallerKind::Operator, "alice").await;
    let svc = app.create_client("org-1", CallerKind::Service, "core").await;
    let agent = app.create_client("org-1", CallerKind::Agent, "concierge").await;
    let token = latest_via_api(&app, &app.access_token(&op).await).await;
    let header = peek_header(&token);
    assert_eq!(header["typ"], "audit-checkpoint+jwt");
    assert_eq!(header["alg"], "EdDSA");
    // The start checkpoint covers what was there when the broker started: the key record.
    let claims = checkpoint::verify_token(&token, &keys(&app).await).unwrap();
    assert_eq!(claims.iss, app.base);
    assert_eq!((claims.seq, claims.count), (1, 1));
    let mut names: Vec<String> = peek_claims(&token).as_object().unwrap().keys().cloned().collect();
    names.sort();
    assert_eq!(names, ["count", "hash", "iat", "iss", "seq"]);
    // A service client reads it too; after a new checkpoint, the newer one.
    sign(&app).await;
    let newer = latest_via_api(&app, &app.access_token(&svc).await).await;
    assert!(peek_claims(&newer)["seq"].as_i64().unwrap() > 1);
    // Other kinds: 403; no token: 401.
    let res = app.get_bearer("/v1/audit/checkpoint", &app.access_token(&agent).await).await;
    assert_error(res, 403, "forbidden").await;
    let res = app.http.get(app.url("/v1/audit/checkpoint")).send().await.unwrap();
    assert_error(res, 401, "invalid_token").await;
}

#[tokio::test]
async fn checkpoints_follow_records_and_one_is_signed_on_shutdown() {
    let app = spawn_app_with(|c| c.audit_checkpoint_secs = 1).await;
    let op = app.create_client("org-1", CallerKind::Operator, "alice").await;
    let bearer = app.access_token(&op).await;
    issue_tokens(&app, 3).await;
    let target = head(&app).await;
    let mut seen = 0;
    for _ in 0..50 {
        seen = peek_claims(&latest_via_api(&app, &bearer).await)["seq"].as_i64().unwrap();
        if seen >= target {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen >= target, "no checkpoint of seq {target} within 5 s (latest {seen})");
    // Records added just before stopping are covered by the shutdown checkpoint.
    let app = {
        let (dir, url) = app.stop().await;
        spawn_on(dir, url, |c| c.audit_checkpoint_secs = 60).await
    };
    issue_tokens(&app, 2).await;
    let last = head(&app).await;
    let (dir, url) = app.stop().await;
    let app = spawn_on(dir, url, |c| c.audit_checkpoint_secs = 60).await;
    let latest = checkpoint::latest(app.state.store()).await.unwrap().unwrap();
    assert_eq!(latest.claims.seq, last, "the shutdown checkpoint names the last record");
    let ok = app.cli(&["audit", "verify"]).await;
    assert_eq!(ok.status.code(), Some(0), "{}", stderr(&ok));
}

#[tokio::test]
async fn deleting_the_tail_below_a_checkpoint_is_detected_and_named() {
    let app = spawn_app().await;
    issue_tokens(&app, 5).await;
    let cp = sign(&app).await;
    let ok = app.cli(&["audit", "verify"]).await;
    assert_eq!(ok.status.code(), Some(0), "{}", stderr(&ok));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("checkpoints"));
    // Delete the last three records: the chain that is left is intact on its own.
    let from = cp.claims.seq - 2;
    sqlx::query("DELETE FROM audit_log WHERE seq >= $1").bind(from).execute(app.state.store().pool()).await.unwrap();
    let bad = app.cli(&["audit", "verify"]).await;
    assert_eq!(bad.status.code(), Some(1));
    let err = stderr(&bad);
    assert!(err.contains(&format!("broken at record {from}")), "{err}");
    assert!(err.contains("missing") && err.contains("stored checkpoint"), "{err}");
}

#[tokio::test]
async fn a_witness_checkpoint_detects_truncation_when_the_checkpoints_are_deleted_too() {
    let app = spawn_app().await;
    let op = app.create_client("org-1", CallerKind::Operator, "witness").await;
    issue_tokens(&app, 4).await;
    sign(&app).await;
    let witness = latest_via_api(&app, &app.access_token(&op).await).await;
    let covered = peek_claims(&witness)["seq"].as_i64().unwrap();
    let pool = app.state.store().pool();
    sqlx::query("DELETE FROM audit_log WHERE seq > $1").bind(covered - 3).execute(pool).await.unwrap();
    sqlx::query("DELETE FROM audit_checkpoints").execute(pool).await.unwrap();
    // Without the witness nothing is left to tell.
    let blind = app.cli(&["audit", "verify"]).await;
    assert_eq!(blind.status.code(), Some(0), "{}", stderr(&blind));
    let caught = app.cli(&["audit", "verify", "--checkpoint", &witness]).await;
    assert_eq!(caught.status.code(), Some(1));
    let err = stderr(&caught);
    assert!(err.contains(&format!("broken at record {}", covered - 2)) && err.contains("witness checkpoint"), "{err}");
    // A witness that is not a checkpoint of ours is refused, not trusted.
    let forged = app.cli(&["audit", "verify", "--checkpoint", &app.access_token(&op).await]).await;
    assert_eq!(forged.status.code(), Some(1));
    assert!(stderr(&forged).contains("does not verify"), "{}", stderr(&forged));
}

#[tokio::test]
async fn rewriting_a_record_and_recomputing_every_later_hash_is_caught_by_the_signed_checkpoint() {
    let app = spawn_app().await;
    issue_tokens(&app, 4).await;
    let cp = sign(&app).await;
    let pool = app.state.store().pool();
    // Rewrite record 3 and recompute the chain after it, as someone with write access could.
    let mut records = tessera::audit::read_page(app.state.store(), 0, 1000).await.unwrap();
    let mut prev = records[1].hash.clone();
    for r in records.iter_mut().skip(2) {
        if r.seq == 3 {
            r.actor = "someone-else".into();
        }
        r.prev_hash = prev.clone();
        r.hash = tessera::audit::record_hash(r);
        prev = r.hash.clone();
        sqlx::query("UPDATE audit_log SET actor = $1, prev_hash = $2, hash = $3 WHERE seq = $4")
            .bind(&r.actor)
            .bind(&r.prev_hash)
            .bind(&r.hash)
            .bind(r.seq)
            .execute(pool)
            .await
            .unwrap();
    }
    let bad = app.cli(&["audit", "verify"]).await;
    assert_eq!(bad.status.code(), Some(1));
    let err = stderr(&bad);
    assert!(err.contains(&format!("broken at record {}", cp.claims.seq)) && err.contains("rewritten"), "{err}");
    // Re-signing the checkpoint is out of reach (the key is not in the database); editing its
    // columns to match does not verify.
    sqlx::query("UPDATE audit_checkpoints SET hash = $1 WHERE seq = $2")
        .bind(&prev)
        .bind(cp.claims.seq)
        .execute(pool)
        .await
        .unwrap();
    let bad = app.cli(&["audit", "verify"]).await;
    assert_eq!(bad.status.code(), Some(1));
    assert!(stderr(&bad).contains("differs from the token"), "{}", stderr(&bad));
}

#[tokio::test]
async fn archive_then_verify_the_database_and_the_file_and_a_tampered_file_is_detected() {
    let app = spawn_app().await;
    let early = checkpoint::latest(app.state.store()).await.unwrap().expect("the start checkpoint");
    issue_tokens(&app, 6).await;
    let cp = sign(&app).await;
    issue_tokens(&app, 2).await;
    let before = time::OffsetDateTime::from_unix_timestamp(app.state.now() + 1)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let file = app.dir.path().join("archive-1.jsonl");
    let file_s = file.to_str().unwrap();
    let out = app.cli(&["audit", "archive", "--before", &before, "--out", file_s, "--batch", "3"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let done: Value = serde_json::from_slice(&out.stdout).unwrap();
    // The last checkpoint before that time: the one just signed, not the later records.
    assert_eq!(done["last_seq"], cp.claims.seq);
    assert_eq!(done["records"], cp.claims.seq);
    assert_eq!(done["deleted"], cp.claims.seq);
    assert!(done["checkpoint_keys"].as_str().unwrap().starts_with("the keys folder"), "{done}");
    let lowest: i64 =
        sqlx::query_scalar("SELECT MIN(seq) FROM audit_log").fetch_one(app.state.store().pool()).await.unwrap();
    assert_eq!(lowest, cp.claims.seq + 1);
    // The file: records as `audit export` writes them, then the checkpoint.
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len() as i64, cp.claims.seq + 1);
    assert_eq!(serde_json::from_str::<Value>(lines[lines.len() - 1]).unwrap()["checkpoint"], cp.token);
    // Both verify: the file, then the database from the anchor the file ends at; the chain
    // goes on. The database alone does not: nothing proves its start.
    issue_tokens(&app, 2).await;
    sign(&app).await;
    let db = app.cli(&["audit", "verify"]).await;
    assert_eq!(db.status.code(), Some(1), "{}", String::from_utf8_lossy(&db.stdout));
    assert!(stderr(&db).contains("nothing given proves it"), "{}", stderr(&db));
    let f = app.cli(&["audit", "verify", "--archive", file_s]).await;
    assert_eq!(f.status.code(), Some(0), "{}", stderr(&f));
    let said = String::from_utf8_lossy(&f.stdout);
    assert!(said.contains(&format!("{} records", cp.claims.seq)), "{said}");
    assert!(said.contains("audit chain intact") && said.contains("which ends at it"), "{said}");
    assert!(said.contains("checkpoint keys: the keys folder"), "{said}");
    // A witness at or above the anchor proves it; one below it needs the archive that holds
    // its record.
    let later =
        latest_via_api(&app, &app.access_token(&app.create_client("org-1", CallerKind::Operator, "w").await).await)
            .await;
    let w = app.cli(&["audit", "verify", "--checkpoint", &later]).await;
    assert_eq!(w.status.code(), Some(0), "{}", stderr(&w));
    assert!(String::from_utf8_lossy(&w.stdout).contains("proven by the witness checkpoint"));
    let low = app.cli(&["audit", "verify", "--checkpoint", &early.token]).await;
    assert_eq!(low.status.code(), Some(1));
    assert!(stderr(&low).contains("no archive was given"), "{}", stderr(&low));
    let low = app.cli(&["audit", "verify", "--checkpoint", &early.token, "--archive", file_s]).await;
    assert_eq!(low.status.code(), Some(0), "{}", stderr(&low));
    // Also with the keys from a saved JWKS rather than the database.
    let jwks = app.dir.path().join("jwks.json");
    std::fs::write(&jwks, app.http.get(app.url("/.well-known/jwks.json")).send().await.unwrap().text().await.unwrap())
        .unwrap();
    let f = app.cli(&["audit", "verify", "--archive", file_s, "--jwks", jwks.to_str().unwrap()]).await;
    assert_eq!(f.status.code(), Some(0), "{}", stderr(&f));
    assert!(String::from_utf8_lossy(&f.stdout).contains("checkpoint keys: the JWKS"));
    // Or from its URL.
    let f = app.cli(&["audit", "verify", "--archive", file_s, "--jwks", &app.url("/.well-known/jwks.json")]).await;
    assert_eq!(f.status.code(), Some(0), "{}", stderr(&f));
    // A second archive continues the first; both verify in order.
    let before = time::OffsetDateTime::from_unix_timestamp(app.state.now() + 1)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let file2 = app.dir.path().join("archive-2.jsonl");
    let out = app.cli(&["audit", "archive", "--before", &before, "--out", file2.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let both = app.cli(&["audit", "verify", "--archive", file_s, "--archive", file2.to_str().unwrap()]).await;
    assert_eq!(both.status.code(), Some(0), "{}", stderr(&both));
    assert!(String::from_utf8_lossy(&both.stdout).contains("audit chain intact"));
    let swapped = app.cli(&["audit", "verify", "--archive", file2.to_str().unwrap(), "--archive", file_s]).await;
    assert_eq!(swapped.status.code(), Some(1));
    // The second names the checkpoint it follows on its first line, so it verifies on its
    // own too; the first alone no longer reaches the database's start.
    let alone = app.cli(&["audit", "verify", "--archive", file2.to_str().unwrap()]).await;
    assert_eq!(alone.status.code(), Some(0), "{}", stderr(&alone));
    assert!(String::from_utf8_lossy(&alone.stdout).contains("starts after the archive's opening checkpoint"));
    let first = app.cli(&["audit", "verify", "--archive", file_s]).await;
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    assert!(String::from_utf8_lossy(&first.stdout).contains("database not checked"));
    // The database with everything archived: the next record chains from the anchor.
    issue_tokens(&app, 1).await;
    let db = app.cli(&["audit", "verify", "--archive", file2.to_str().unwrap()]).await;
    assert_eq!(db.status.code(), Some(0), "{}", stderr(&db));

    // Tampering: an edited record, a cut-off end, a dropped record.
    let tampered = app.dir.path().join("tampered.jsonl");
    let edit = |f: &dyn Fn(&mut Vec<String>)| {
        let mut l: Vec<String> = text.lines().map(str::to_owned).collect();
        f(&mut l);
        std::fs::write(&tampered, l.join("\n") + "\n").unwrap();
    };
    let check = |expect: &'static str| {
        let app = &app;
        let tampered = tampered.clone();
        async move {
            let o = app.cli(&["audit", "verify", "--archive", tampered.to_str().unwrap()]).await;
            assert_eq!(o.status.code(), Some(1), "{expect}");
            assert!(stderr(&o).contains(expect), "{}", stderr(&o));
        }
    };
    edit(&|l| l[2] = l[2].replace("concierge", "conciergf").replace("\"actor\":\"tc_", "\"actor\":\"tc_x"));
    check("content does not match its hash").await;
    edit(&|l| {
        l.pop();
    });
    check("does not end with its checkpoint").await;
    edit(&|l| {
        l.remove(3);
    });
    check("record missing").await;
    edit(&|l| {
        let n = l.len();
        l.truncate(n - 3);
        l.push(format!("{{\"checkpoint\":\"{}\"}}", cp.token));
    });
    check("missing").await;
}

/// Someone who can write the database makes a later stored checkpoint the anchor and
/// deletes the records below it: the anchor proves nothing by itself, and a witness below it
/// is named with it.
#[tokio::test]
async fn an_anchor_moved_up_with_the_records_below_deleted_is_refused_and_a_lower_witness_names_both() {
    let app = spawn_app().await;
    issue_tokens(&app, 3).await;
    let low = sign(&app).await;
    issue_tokens(&app, 3).await;
    let high = sign(&app).await;
    issue_tokens(&app, 1).await;
    let pool = app.state.store().pool();
    sqlx::query("INSERT INTO audit_anchor (id, seq, hash, token) VALUES (1, $1, $2, $3)")
        .bind(high.claims.seq)
        .bind(&high.claims.hash)
        .bind(&high.token)
        .execute(pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM audit_log WHERE seq <= $1").bind(high.claims.seq).execute(pool).await.unwrap();
    sqlx::query("DELETE FROM audit_checkpoints WHERE seq < $1").bind(high.claims.seq).execute(pool).await.unwrap();
    let bare = app.cli(&["audit", "verify"]).await;
    assert_eq!(bare.status.code(), Some(1), "{}", String::from_utf8_lossy(&bare.stdout));
    let err = stderr(&bare);
    assert!(err.contains(&format!("anchor checkpoint of seq {}", high.claims.seq)), "{err}");
    assert!(err.contains("nothing given proves it"), "{err}");
    let witnessed = app.cli(&["audit", "verify", "--checkpoint", &low.token]).await;
    assert_eq!(witnessed.status.code(), Some(1), "{}", String::from_utf8_lossy(&witnessed.stdout));
    let err = stderr(&witnessed);
    assert!(err.contains(&format!("broken at record {}", low.claims.seq)), "{err}");
    assert!(err.contains(&format!("witness checkpoint of seq {}", low.claims.seq)), "{err}");
    assert!(err.contains(&format!("anchor checkpoint of seq {}", high.claims.seq)), "{err}");
}

/// An archive file must start at the chain's genesis or after the checkpoint its first line
/// names: removing its first records, or that line, is detected.
#[tokio::test]
async fn an_archive_cut_at_its_start_is_refused() {
    let app = spawn_app().await;
    let now = |app: &TestApp| {
        time::OffsetDateTime::from_unix_timestamp(app.state.now() + 1)
            .unwrap()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    issue_tokens(&app, 4).await;
    sign(&app).await;
    let one = app.dir.path().join("one.jsonl");
    let out = app.cli(&["audit", "archive", "--before", &now(&app), "--out", one.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    issue_tokens(&app, 4).await;
    let second = sign(&app).await;
    // Later than the first archive's checkpoint, by the clock the archive reads.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let two = app.dir.path().join("two.jsonl");
    let out = app.cli(&["audit", "archive", "--before", &now(&app), "--out", two.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let texts = [std::fs::read_to_string(&one).unwrap(), std::fs::read_to_string(&two).unwrap()];
    assert!(texts[1].lines().next().unwrap().starts_with("{\"after_checkpoint\":"), "{}", texts[1]);
    let cut = app.dir.path().join("cut.jsonl");
    let verify_cut = |text: String| {
        let app = &app;
        let cut = cut.clone();
        async move {
            std::fs::write(&cut, text).unwrap();
            app.cli(&["audit", "verify", "--archive", cut.to_str().unwrap()]).await
        }
    };
    let drop_lines = |t: &str, skip: usize, keep_first: bool| -> String {
        let l: Vec<&str> = t.lines().collect();
        let mut kept: Vec<&str> = if keep_first { vec![l[0]] } else { Vec::new() };
        kept.extend(&l[skip..]);
        kept.join("\n") + "\n"
    };
    // The first file, its first two records removed.
    let o = verify_cut(drop_lines(&texts[0], 2, false)).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("its first records were cut"), "{}", stderr(&o));
    // The second, without its opening line.
    let o = verify_cut(drop_lines(&texts[1], 1, false)).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("its first records were cut"), "{}", stderr(&o));
    // The second, its opening line kept and its first record removed.
    let o = verify_cut(drop_lines(&texts[1], 2, true)).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("record missing"), "{}", stderr(&o));
    // The second, opening on a checkpoint it does not follow.
    let o = verify_cut(
        std::iter::once(format!("{{\"after_checkpoint\":\"{}\"}}", second.token))
            .chain(texts[1].lines().skip(1).map(str::to_owned))
            .collect::<Vec<_>>()
            .join("\n")
            + "\n",
    )
    .await;
    assert_eq!(o.status.code(), Some(1));
    // Whole, each verifies on its own.
    for f in [&one, &two] {
        let o = app.cli(&["audit", "verify", "--archive", f.to_str().unwrap()]).await;
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    }
}

/// Someone who can write the database rewrites a record, recomputes the chain, registers a
/// key of their own and re-signs the checkpoints with it: checkpoints are checked with the
/// keys folder's keys or a JWKS given, never with the keys the database lists.
#[tokio::test]
async fn checkpoints_re_signed_with_a_key_added_to_the_database_do_not_verify() {
    let app = spawn_app().await;
    issue_tokens(&app, 4).await;
    sign(&app).await;
    let jwks_before = app.dir.path().join("jwks-before.json");
    std::fs::write(
        &jwks_before,
        app.http.get(app.url("/.well-known/jwks.json")).send().await.unwrap().text().await.unwrap(),
    )
    .unwrap();
    let pool = app.state.store().pool();
    let theirs = tempfile::tempdir().unwrap();
    let key = tessera::keys::generate(theirs.path()).unwrap();
    sqlx::query(
        "INSERT INTO signing_keys (kid, alg, public_key, created_at, activates_at) VALUES ($1, 'EdDSA', $2, $3, $4)",
    )
    .bind(key.kid())
    .bind(tessera::token::b64::encode(key.public_key()))
    .bind(app.state.now())
    .bind(app.state.now() + 86_400)
    .execute(pool)
    .await
    .unwrap();
    let mut records = tessera::audit::read_page(app.state.store(), 0, 1000).await.unwrap();
    let mut prev = records[1].hash.clone();
    for r in records.iter_mut().skip(2) {
        if r.seq == 3 {
            r.actor = "someone-else".into();
        }
        r.prev_hash = prev.clone();
        r.hash = tessera::audit::record_hash(r);
        prev = r.hash.clone();
        sqlx::query("UPDATE audit_log SET actor = $1, prev_hash = $2, hash = $3 WHERE seq = $4")
            .bind(&r.actor)
            .bind(&r.prev_hash)
            .bind(&r.hash)
            .bind(r.seq)
            .execute(pool)
            .await
            .unwrap();
    }
    let stored = checkpoint::range(app.state.store(), 2, i64::MAX, 100).await.unwrap();
    assert!(!stored.is_empty());
    for cp in stored {
        let hash = records.iter().find(|r| r.seq == cp.claims.seq).unwrap().hash.clone();
        let claims = checkpoint::CheckpointClaims { iss: app.base.clone(), hash: hash.clone(), ..cp.claims.clone() };
        let token = key.sign_typed(checkpoint::TYP, &claims).unwrap();
        sqlx::query("UPDATE audit_checkpoints SET hash = $1, kid = $2, token = $3 WHERE seq = $4")
            .bind(&hash)
            .bind(key.kid())
            .bind(&token)
            .bind(cp.claims.seq)
            .execute(pool)
            .await
            .unwrap();
    }
    for args in [vec![], vec!["--jwks", jwks_before.to_str().unwrap()]] {
        let o = app.cli(&[&["audit", "verify"][..], &args].concat()).await;
        assert_eq!(o.status.code(), Some(1), "{}", String::from_utf8_lossy(&o.stdout));
        assert!(stderr(&o).contains(&format!("unknown key {}", key.kid())), "{}", stderr(&o));
    }
    // A keys folder without keys says what to give instead.
    let empty = tempfile::tempdir().unwrap();
    let o = cli_on(&app.database_url, empty.path(), &app.base, &["audit", "verify"], &[]).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--jwks"), "{}", stderr(&o));
}

#[tokio::test]
async fn archive_refuses_bad_input_and_never_overwrites() {
    let app = spawn_app().await;
    let file = app.dir.path().join("a.jsonl");
    let f = file.to_str().unwrap();
    let bad_time = app.cli(&["audit", "archive", "--before", "last tuesday", "--out", f]).await;
    assert_eq!(bad_time.status.code(), Some(2));
    // Nothing signed before 1970: nothing to archive, nothing written.
    let early = app.cli(&["audit", "archive", "--before", "1970-01-01T00:00:00Z", "--out", f]).await;
    assert_eq!(early.status.code(), Some(1));
    assert!(stderr(&early).contains("no checkpoint"), "{}", stderr(&early));
    assert!(!file.exists());
    std::fs::write(&file, "keep me\n").unwrap();
    tessera::server::audit::sign_checkpoint(&app.state).await.unwrap();
    let later = time::OffsetDateTime::from_unix_timestamp(app.state.now() + 1)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let exists = app.cli(&["audit", "archive", "--before", &later, "--out", f]).await;
    assert_eq!(exists.status.code(), Some(1));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me\n");
    assert_eq!(app.cli(&["audit", "verify"]).await.status.code(), Some(0));
}

/// Runs `audit export --follow` until it has written up to `upto`, then stops it; its lines.
async fn follow_until(app: &TestApp, after: Option<i64>, upto: i64) -> Vec<i64> {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_tessera"));
    cmd.args(["audit", "export", "--follow", "--poll-ms", "20"])
        .env_remove("TESSERA_CONFIG")
        .env("TESSERA_DATABASE_URL", &app.database_url)
        .env("TESSERA_KEYS_DIR", app.keys_dir())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true);
    if let Some(a) = after {
        cmd.args(["--after", &a.to_string()]);
    }
    let mut child = cmd.spawn().unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seqs = Vec::new();
    let read = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let v: Value = serde_json::from_str(&line).unwrap();
            seqs.push(v["seq"].as_i64().unwrap());
            if *seqs.last().unwrap() >= upto {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read).await.expect("export --follow reached the head");
    child.kill().await.unwrap();
    seqs
}

#[tokio::test]
async fn export_follow_across_a_restart_loses_and_repeats_nothing() {
    let app = spawn_app().await;
    issue_tokens(&app, 3).await;
    let agent = app.create_client("org-1", CallerKind::Agent, "follow").await;
    // Records keep arriving while the first follower runs.
    let writer = {
        let (http, url, agent) = (app.http.clone(), app.url("/oauth/token"), agent.clone());
        tokio::spawn(async move {
            for _ in 0..40 {
                let res = http
                    .post(&url)
                    .form(&[("grant_type", "client_credentials")])
                    .basic_auth(&agent.id, Some(&agent.secret))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(res.status(), 200);
            }
        })
    };
    let first = follow_until(&app, None, head(&app).await + 10).await;
    writer.await.unwrap();
    // The broker restarts; more records; the follower resumes from the last seq it wrote.
    let (dir, url) = app.stop().await;
    let app = spawn_on(dir, url, |_| {}).await;
    issue_tokens(&app, 3).await;
    let resumed = follow_until(&app, first.last().copied(), head(&app).await).await;
    let all: Vec<i64> = first.iter().chain(&resumed).copied().collect();
    let expected: Vec<i64> = (1..=head(&app).await).collect();
    assert_eq!(all, expected, "every record once, in order");
    // A negative resume point is refused.
    let bad = app.cli(&["audit", "export", "--after=-1"]).await;
    assert_eq!(bad.status.code(), Some(1));
}

#[tokio::test]
async fn checkpoint_interval_outside_one_to_sixty_seconds_is_refused() {
    for v in ["0", "61"] {
        let env: HashMap<String, String> = [("TESSERA_AUDIT_CHECKPOINT_SECS".to_owned(), v.to_owned())].into();
        let err = tessera::config::Config::load(None, &env).unwrap_err();
        assert!(err.to_string().contains("audit_checkpoint_secs"), "{err}");
    }
}

#[tokio::test]
async fn two_replicas_writing_while_checkpoints_are_signed_still_verify() {
    if !on_postgres() {
        return;
    }
    let url = fresh_postgres_url().await;
    let a = spawn_on(tempfile::tempdir().unwrap(), url.clone(), |c| c.audit_checkpoint_secs = 1).await;
    let b = spawn_on(tempfile::tempdir().unwrap(), url, |c| c.audit_checkpoint_secs = 1).await;
    let agent = a.create_client("org-1", CallerKind::Agent, "concierge").await;
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for app in [&a, &b] {
        for _ in 0..4 {
            let (http, url, agent) = (app.http.clone(), app.url("/oauth/token"), agent.clone());
            tasks.push(tokio::spawn(async move {
                let mut n = 0;
                while started.elapsed() < Duration::from_millis(2500) {
                    let res = http
                        .post(&url)
                        .form(&[("grant_type", "client_credentials")])
                        .basic_auth(&agent.id, Some(&agent.secret))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(res.status(), 200);
                    n += 1;
                }
                n
            }));
        }
    }
    for t in tasks {
        assert!(t.await.unwrap() > 0);
    }
    // Each replica signs with its own folder's key: the JWKS lists both.
    let jwks = b.dir.path().join("jwks.json");
    std::fs::write(&jwks, b.http.get(b.url("/.well-known/jwks.json")).send().await.unwrap().text().await.unwrap())
        .unwrap();
    let cli_keys = b.keys_dir();
    let (_, url) = a.stop().await;
    let (_dir, _) = b.stop().await;
    let n: i64 = {
        use sqlx::Connection;
        let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
        sqlx::query_scalar("SELECT COUNT(*) FROM audit_checkpoints").fetch_one(&mut c).await.unwrap()
    };
    assert!(n >= 3, "checkpoints from both replicas while they wrote: {n}");
    let out = cli_on(&url, &cli_keys, "http://x", &["audit", "verify", "--jwks", jwks.to_str().unwrap()], &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("intact"));
}

#[tokio::test]
async fn every_issued_token_is_audited_without_the_token() {
    let app = spawn_app().await;
    let c = app.create_client("org-1", CallerKind::Agent, "a").await;
    let token = app.access_token(&c).await;
    let jti = peek_claims(&token)["jti"].as_str().unwrap().to_owned();
    let records = tessera::audit::read_page(app.state.store(), 0, 100).await.unwrap();
    let rec = records.iter().find(|r| r.event == "token.issued").expect("token.issued record");
    assert_eq!(rec.subject, jti);
    assert_eq!(rec.actor, c.id);
    let detail: Value = serde_json::from_str(&rec.detail).unwrap();
    assert_eq!(detail["scope"], "approvals:create workspaces:read workspaces:write");
    assert!(detail["exp"].is_i64());
    let export = app.cli(&["audit", "export"]).await;
    assert!(export.status.success());
    let text = String::from_utf8(export.stdout).unwrap();
    assert!(text.lines().count() >= 3);
    assert!(!text.contains(&token));
    assert!(!text.contains(&c.secret));
    assert!(!text.contains(tessera::token::b64::encode(c.secret.as_bytes()).as_str()));
}

#[tokio::test]
async fn a_failed_audit_write_fails_the_request() {
    let app = spawn_app().await;
    let c = app.create_client("org-1", CallerKind::Agent, "a").await;
    sqlx::query("DROP TABLE audit_log").execute(app.state.store().pool()).await.unwrap();
    let res = app.token_request(&[("grant_type", "client_credentials")], Some(&c)).await;
    let status = res.status();
    let body: Value = res.json().await.unwrap();
    assert_eq!(status, 503);
    assert!(body.get("access_token").is_none());
    assert_eq!(body["error"], "temporarily_unavailable");
}

#[tokio::test]
async fn audit_verify_passes_then_names_an_altered_record() {
    let app = spawn_app().await;
    let c = app.create_client("org-1", CallerKind::Agent, "a").await;
    for _ in 0..3 {
        app.access_token(&c).await;
    }
    let ok = app.cli(&["audit", "verify"]).await;
    assert_eq!(ok.status.code(), Some(0), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("intact"));
    let pool = app.state.store().pool();

    // Alter a middle record.
    sqlx::query("UPDATE audit_log SET actor = 'mallory' WHERE seq = 3").execute(pool).await.unwrap();
    let bad = app.cli(&["audit", "verify"]).await;
    assert_eq!(bad.status.code(), Some(1));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("record 3"), "{err}");
    assert_eq!(err.trim().lines().count(), 1);

    // Restore it, then alter the last record only, even recomputing its own hash naively.
    sqlx::query("UPDATE audit_log SET actor = $1 WHERE seq = 3").bind(&c.id).execute(pool).await.unwrap();
    assert_eq!(app.cli(&["audit", "verify"]).await.status.code(), Some(0));
    let last: i64 = sqlx::query_scalar("SELECT MAX(seq) FROM audit_log").fetch_one(pool).await.unwrap();
    sqlx::query("UPDATE audit_log SET detail = '{}' WHERE seq = $1").bind(last).execute(pool).await.unwrap();
    let bad = app.cli(&["audit", "verify"]).await;
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains(&format!("record {last}")));

    // Deleting a record is a gap.
    sqlx::query("DELETE FROM audit_log WHERE seq = 2").execute(pool).await.unwrap();
    let bad = app.cli(&["audit", "verify"]).await;
    assert!(String::from_utf8_lossy(&bad.stderr).contains("record 2"));
}

/// A chain written before the services refactor (tests/fixtures/chain-before-rooms) verifies
/// with today's code, every event name in it is one the code knows, and records appended now
/// continue it.
#[tokio::test]
async fn a_chain_written_before_the_rooms_still_verifies_and_grows() {
    use std::os::unix::fs::PermissionsExt;
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/chain-before-rooms");
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o700)).unwrap();
    for e in std::fs::read_dir(fixture.join("keys")).unwrap() {
        let e = e.unwrap();
        let to = keys.join(e.file_name());
        std::fs::copy(e.path(), &to).unwrap();
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let db = dir.path().join("tessera.db");
    std::fs::copy(fixture.join("tessera.db"), &db).unwrap();
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o600)).unwrap();
    let url = format!("sqlite://{}", db.display());
    let cli = |args: &'static [&'static str]| cli_on(&url, &keys, "http://127.0.0.1:18791", args, &[]);

    let out = cli(&["audit", "verify"]).await;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("audit chain intact: 24 records (1 to 24), 2 checkpoints"), "{text}");

    let out = cli(&["audit", "export"]).await;
    assert!(out.status.success());
    let mut names = std::collections::BTreeSet::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let record: Value = serde_json::from_str(line).unwrap();
        let (name, detail) = (record["event"].as_str().unwrap(), record["detail"].as_str().unwrap());
        // Each record's details read into its event's own shape, and that shape writes them
        // back byte for byte: the typed events store what the strings did.
        let event = tessera::audit::Event::read(name, detail).unwrap();
        assert_eq!(event.name().as_str(), name);
        assert_eq!(tessera::token::jcs::canonicalize(&event.detail()), detail, "{name}");
        names.insert(name.to_owned());
    }
    assert!(names.len() >= 17, "{names:?}");

    let out = cli(&["clients", "create", "--tenant", "org-1", "--kind", "agent", "--name", "later"]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = cli(&["audit", "verify"]).await;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success() && text.contains("audit chain intact: 25 records (1 to 25)"), "{text}");
}
