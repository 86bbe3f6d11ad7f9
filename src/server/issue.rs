//! Issuing an access token, shared by every grant: the scopes granted, the claims, the
//! audience, the key binding, the audit record that must be durable before the token leaves,
//! and the answer.

use axum::http::{HeaderValue, header};
use axum::response::Response;
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::json;

use super::form::Form;
use super::{ApiError, ApiResult, AppState};
use crate::audit::{AuditEvent, CheckedError, Event, Precondition};
use crate::clients::ClientRecord;
use crate::domain::ScopeSet;
use crate::token::claims::Audience;
use crate::token::{AccessClaims, Confirmation, b64};
use crate::verify::dpop::CheckedProof;

/// A fresh token id: 16 bytes, base64url, of which the first 6 are the time of issue in
/// milliseconds and the other 10 are random (80 bits: two ids issued in the same
/// millisecond collide with odds of 2^-80). Ids issued close in time share a prefix, so
/// the audit log's index on them grows at its end instead of touching a random page per
/// token.
pub(super) fn new_jti() -> ApiResult<String> {
    let millis =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let mut b = [0u8; 16];
    b[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
    JTI_RANDOM
        .with(|pool| pool.borrow_mut().take(&mut b[6..]))
        .map_err(|_| ApiError::internal(&"random source failed"))?;
    Ok(b64::encode(&b))
}

/// The random part of token ids comes from the operating system's generator 4 KiB at a time,
/// each byte handed out once, instead of one system call per token.
struct RandomPool {
    bytes: [u8; 4096],
    used: usize,
}

impl RandomPool {
    fn take(&mut self, out: &mut [u8]) -> Result<(), ring::error::Unspecified> {
        if self.used + out.len() > self.bytes.len() {
            SystemRandom::new().fill(&mut self.bytes)?;
            self.used = 0;
        }
        out.copy_from_slice(&self.bytes[self.used..self.used + out.len()]);
        // Handed out once: never again readable from the pool.
        self.bytes[self.used..self.used + out.len()].fill(0);
        self.used += out.len();
        Ok(())
    }
}

thread_local! {
    static JTI_RANDOM: std::cell::RefCell<RandomPool> =
        const { std::cell::RefCell::new(RandomPool { bytes: [0; 4096], used: 4096 }) };
}

/// The scopes to grant: what was asked for, each of it allowed, or everything allowed.
pub(super) fn select_scopes(state: &AppState, client: &ClientRecord, requested: Option<&str>) -> ApiResult<ScopeSet> {
    let policy = &state.config().policy;
    let allowed = policy.allowed(client.kind, &client.scopes);
    let Some(raw) = requested else { return Ok(allowed) };
    let wanted = requested_scopes(policy, raw)?;
    let outside = wanted.difference(&allowed);
    if !outside.is_empty() {
        return Err(ApiError::invalid_scope(format!("not granted to this client: {outside}")));
    }
    Ok(wanted)
}

/// Parses a `scope` parameter, refusing gated actions with a pointer to approvals.
pub(super) fn requested_scopes(policy: &crate::policy::Policy, raw: &str) -> ApiResult<ScopeSet> {
    for word in raw.split_ascii_whitespace() {
        if policy.is_gated(word) {
            let shown: String = word.chars().take(64).collect();
            return Err(ApiError::invalid_scope(format!(
                "{shown} is a gated action and is never granted as a scope; request it through an approval (POST /v1/approvals) and present the capability"
            )));
        }
    }
    let wanted = ScopeSet::parse_list(raw).map_err(|e| ApiError::invalid_scope(e.to_string()))?;
    if wanted.is_empty() {
        return Err(ApiError::invalid_scope("scope is empty; omit it to get every allowed scope"));
    }
    Ok(wanted)
}

/// The claims of a fresh access token for `client` with `scopes`.
pub(super) fn client_claims(
    state: &AppState,
    client: &ClientRecord,
    scopes: &ScopeSet,
    aud: String,
    now: i64,
) -> ApiResult<AccessClaims> {
    Ok(AccessClaims {
        iss: state.config().issuer.clone(),
        sub: client.client_id.to_string(),
        client_id: client.client_id.to_string(),
        aud: Audience::One(aud),
        iat: now,
        nbf: now,
        exp: now + state.config().policy.access_token_ttl_secs,
        jti: new_jti()?,
        scope: scopes.to_string(),
        tenant: client.tenant.to_string(),
        caller_kind: client.kind,
        workspace: client.workspace.as_ref().map(|w| w.to_string()),
        act: None,
        cnf: None,
    })
}

/// The audience a token is issued for (RFC 8707): `resource` when the request names one of
/// the configured audiences, the default audience when it names none; anything else is
/// `invalid_target`.
pub(super) fn target_audience(state: &AppState, form: &Form) -> ApiResult<String> {
    match form.get("resource") {
        None => Ok(state.config().audience.clone()),
        Some(r) if state.config().audiences().iter().any(|a| a == r) => Ok(r.to_owned()),
        Some(_) => Err(ApiError::invalid_target(
            "resource is not an audience of this broker; its metadata lists them (tessera_audiences)",
        )),
    }
}

/// Whether `client` gets tokens only with a proof: registered so, or its kind by policy.
fn requires_dpop(state: &AppState, client: &ClientRecord) -> bool {
    client.require_dpop || state.config().policy.requires_dpop(client.kind)
}

/// The binding of a `client_credentials` token: the proof's key, required where the client
/// or its kind must prove possession.
pub(super) fn bind_client(
    state: &AppState,
    client: &ClientRecord,
    proof: Option<&CheckedProof>,
) -> ApiResult<Option<Confirmation>> {
    match proof {
        Some(p) => Ok(Some(Confirmation { jkt: p.jkt.clone() })),
        None if requires_dpop(state, client) => Err(ApiError::invalid_dpop_proof(
            "this client gets tokens only with a DPoP proof (RFC 9449): send one in the DPoP header",
        )),
        None => Ok(None),
    }
}

/// Signs `claims`, audits the issue (by `actor`), and builds the token response. The audit
/// record is committed before the response leaves; if it cannot be, no token leaves.
pub(super) async fn issue(
    state: &AppState,
    claims: AccessClaims,
    actor: &str,
    grant: &str,
    detail: serde_json::Value,
    now: i64,
) -> ApiResult<Response> {
    issue_checked(state, claims, actor, grant, detail, now, None)
        .await?
        .ok_or_else(|| ApiError::internal(&"a client check without a cached client"))
}

/// As [`issue`]. With `check` (a client authenticated from memory), the audit record commits
/// only if the client's row is still as it was read; if it is not, nothing is issued and the
/// answer is `None`: authenticate again against the database.
pub(super) async fn issue_checked(
    state: &AppState,
    claims: AccessClaims,
    actor: &str,
    grant: &str,
    detail: serde_json::Value,
    now: i64,
    check: Option<Precondition>,
) -> ApiResult<Option<Response>> {
    let token = state.keys().signer().sign_access(&claims).map_err(|e| ApiError::internal(&e))?;
    let jkt = claims.cnf.as_ref().map(|c| c.jkt.as_str());
    let event = match detail {
        serde_json::Value::Object(extra) if extra.is_empty() => AuditEvent::with_canonical_detail(
            crate::audit::EventName::TokenIssued,
            actor,
            &claims.tenant,
            &claims.jti,
            issued_facts(grant, &claims, jkt),
        ),
        extra => {
            let mut facts = json!({
                "grant": grant, "sub": claims.sub, "kind": claims.caller_kind, "scope": claims.scope, "exp": claims.exp,
            });
            if let (Some(f), serde_json::Value::Object(extra)) = (facts.as_object_mut(), extra) {
                f.extend(extra);
            }
            if let Some(jkt) = jkt {
                facts["cnf_jkt"] = json!(jkt);
            }
            AuditEvent::of(Event::TokenIssued(facts), actor, &claims.tenant, &claims.jti)
        }
    };
    match check {
        None => state.audit().record(event, now).await.map_err(|e| ApiError::unavailable(&e))?,
        Some(check) => match state.audit().record_checked(event, now, check).await {
            Ok(()) => {}
            Err(CheckedError::Stale) => return Ok(None),
            Err(CheckedError::Failed(e)) => return Err(ApiError::unavailable(&e)),
        },
    }
    state.metrics().token_issued(claims.caller_kind, grant);
    state.usage().used(actor, now);
    let body = TokenResponse {
        access_token: &token,
        token_type: if claims.cnf.is_some() { "DPoP" } else { "Bearer" },
        expires_in: claims.exp - now,
        scope: &claims.scope,
        issued_token_type: (grant == GRANT_EXCHANGE).then_some(TOKEN_TYPE_ACCESS),
    };
    // Sized for the whole answer at once (a growing buffer would copy it three times).
    let mut json = Vec::with_capacity(token.len() + claims.scope.len() + 160);
    serde_json::to_writer(&mut json, &body).map_err(|e| ApiError::internal(&e))?;
    let mut res = Response::new(axum::body::Body::from(json));
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res.headers_mut().insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    if let Some(n) = state.dpop().nonce(now).and_then(|n| HeaderValue::from_str(&n).ok()) {
        res.headers_mut().insert(crate::verify::dpop::DPOP_NONCE_HEADER, n);
    }
    Ok(Some(res))
}

/// The canonical (RFC 8785) text of a `token.issued` record's facts when the grant adds none:
/// the same as canonicalizing `{"grant", "sub", "kind", "scope", "exp"[, "cnf_jkt"]}`, written
/// directly (members in the order of their names).
fn issued_facts(grant: &str, claims: &AccessClaims, jkt: Option<&str>) -> String {
    use std::fmt::Write as _;

    use crate::token::jcs::write_string;
    let mut out = String::with_capacity(96 + grant.len() + claims.sub.len() + claims.scope.len());
    out.push('{');
    if let Some(jkt) = jkt {
        out.push_str("\"cnf_jkt\":");
        write_string(&mut out, jkt);
        out.push(',');
    }
    // A time in seconds: far inside the integers JSON numbers hold exactly.
    let _ = write!(out, "\"exp\":{},\"grant\":", claims.exp);
    write_string(&mut out, grant);
    out.push_str(",\"kind\":");
    write_string(&mut out, claims.caller_kind.as_str());
    out.push_str(",\"scope\":");
    write_string(&mut out, &claims.scope);
    out.push_str(",\"sub\":");
    write_string(&mut out, &claims.sub);
    out.push('}');
    out
}

/// A successful token response (RFC 6749 §5.1; RFC 8693 §2.2.1 adds `issued_token_type`).
#[derive(serde::Serialize)]
struct TokenResponse<'a> {
    access_token: &'a str,
    token_type: &'static str,
    expires_in: i64,
    scope: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    issued_token_type: Option<&'static str>,
}

/// The token-exchange grant type (RFC 8693).
pub const GRANT_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// The access-token token type (RFC 8693 §3).
pub const TOKEN_TYPE_ACCESS: &str = "urn:ietf:params:oauth:token-type:access_token";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::CallerKind;

    #[test]
    fn issued_facts_are_the_canonical_form_of_the_facts_object() {
        let mut claims = AccessClaims {
            iss: "http://127.0.0.1:8700".into(),
            sub: "tc_AAAAAAAAAAAAAAAAAAAAAA".into(),
            client_id: "tc_AAAAAAAAAAAAAAAAAAAAAA".into(),
            aud: Audience::One("core".into()),
            iat: 1_800_000_000,
            nbf: 1_800_000_000,
            exp: 1_800_000_300,
            jti: "BBBBBBBBBBBBBBBBBBBBBB".into(),
            scope: "approvals:create workspaces:read".into(),
            tenant: "org-1".into(),
            caller_kind: CallerKind::Agent,
            workspace: None,
            act: None,
            cnf: None,
        };
        let cases: [(&str, &str, &str, Option<&str>); 4] = [
            ("client_credentials", "tc_AAAAAAAAAAAAAAAAAAAAAA", "approvals:create workspaces:read", None),
            ("client_credentials", "tc_x", "", Some("0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I")),
            (GRANT_EXCHANGE, "quote\" back\\ nl\n tab\t ctl\u{1} é ✓ 😀", "a b", Some("k")),
            ("urn:ietf:params:oauth:grant-type:jwt-bearer", "tc_y", "tokens:introspect", None),
        ];
        for (i, (grant, sub, scope, jkt)) in cases.into_iter().enumerate() {
            claims.sub = sub.into();
            claims.scope = scope.into();
            claims.caller_kind = CallerKind::ALL[i % CallerKind::ALL.len()];
            claims.exp += 1_000_000 * i as i64;
            let mut facts = json!({
                "grant": grant, "sub": claims.sub, "kind": claims.caller_kind, "scope": claims.scope, "exp": claims.exp,
            });
            if let Some(jkt) = jkt {
                facts["cnf_jkt"] = json!(jkt);
            }
            assert_eq!(issued_facts(grant, &claims, jkt), crate::token::jcs::canonicalize(&facts), "case {i}");
        }
    }

    #[test]
    fn jtis_lead_with_the_time_and_end_random() {
        let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
        // Enough to draw the random pool dry several times (409 ids a pool).
        let ids: Vec<String> = (0..2_000).map(|_| new_jti().unwrap()).collect();
        let after = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
        let mut tails = std::collections::HashSet::new();
        for id in &ids {
            assert_eq!(id.len(), 22);
            let b = b64::decode(id).unwrap();
            assert_eq!(b.len(), 16);
            let mut t = [0u8; 8];
            t[2..].copy_from_slice(&b[..6]);
            let millis = u64::from_be_bytes(t);
            assert!((before..=after).contains(&millis), "{millis} not in {before}..={after}");
            // The 80 random bits differ between ids, even in the same millisecond.
            assert!(b[6..].iter().any(|x| *x != 0));
            assert!(tails.insert(b[6..].to_vec()));
        }
    }
}
