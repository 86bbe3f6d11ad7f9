//! `GET /openapi.json`: the OpenAPI 3.1 description of every route, built in code from one
//! table, [`OPERATIONS`], beside [`super::metrics::ROUTE_TEMPLATES`] (the templates the router
//! matches). A test checks the two agree and that the broker routes every entry.

use std::sync::OnceLock;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Map, Value, json};

use super::AppState;

/// How an operation authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// Nothing.
    None,
    /// Client authentication (HTTP Basic, `client_secret_post` or `private_key_jwt`).
    Client,
    /// `Authorization: Bearer <access token>`.
    Bearer,
    /// A console session cookie.
    Console,
}

/// A request body's media type and schema name.
type Body = Option<(&'static str, &'static str)>;

/// One operation: method, path template, summary, authentication, request body, and its
/// answers as (status, media type, schema name).
pub struct Operation {
    /// Lowercase HTTP method.
    pub method: &'static str,
    /// The path template, as the router matches it.
    pub path: &'static str,
    /// One line.
    pub summary: &'static str,
    /// Authentication.
    pub auth: Auth,
    /// The request body.
    pub body: Body,
    /// Successful and notable answers; every operation also has the error shape as `default`
    /// (on the console, an HTML page too). An empty media type is an answer without a body.
    pub responses: &'static [(&'static str, &'static str, &'static str)],
}

const JSON: &str = "application/json";
const FORM: &str = "application/x-www-form-urlencoded";
const HTML: &str = "text/html";
/// A redirect: `Location` and no body, so no media type.
const SEE_OTHER: (&str, &str, &str) = ("303", "", "");

const fn op(
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    auth: Auth,
    body: Body,
    responses: &'static [(&'static str, &'static str, &'static str)],
) -> Operation {
    Operation { method, path, summary, auth, body, responses }
}

/// Every operation the broker serves.
pub const OPERATIONS: &[Operation] = &[
    op(
        "get",
        "/.well-known/jwks.json",
        "The published signing keys (JWKS)",
        Auth::None,
        None,
        &[("200", JSON, "Jwks")],
    ),
    op(
        "get",
        "/.well-known/oauth-authorization-server",
        "RFC 8414 authorization-server metadata",
        Auth::None,
        None,
        &[("200", JSON, "ServerMetadata")],
    ),
    op(
        "post",
        "/oauth/token",
        "Issue an access token (client credentials or RFC 8693 token exchange)",
        Auth::Client,
        Some((FORM, "TokenRequest")),
        &[("200", JSON, "TokenResponse"), ("400", JSON, "Error"), ("401", JSON, "Error"), ("429", JSON, "Error")],
    ),
    op(
        "post",
        "/oauth/introspect",
        "RFC 7662 introspection (service and operator clients)",
        Auth::Client,
        Some((FORM, "TokenParameter")),
        &[("200", JSON, "Introspection"), ("400", JSON, "Error"), ("401", JSON, "Error")],
    ),
    op(
        "post",
        "/oauth/revoke",
        "RFC 7009 revocation of the caller's own token",
        Auth::Client,
        Some((FORM, "TokenParameter")),
        &[("200", JSON, "Empty"), ("400", JSON, "Error"), ("401", JSON, "Error")],
    ),
    op(
        "post",
        "/v1/approvals",
        "Request a gated action",
        Auth::Bearer,
        Some((JSON, "NewApproval")),
        &[("202", JSON, "ApprovalCreated"), ("201", JSON, "Approval"), ("400", JSON, "Error"), ("403", JSON, "Error")],
    ),
    op(
        "get",
        "/v1/approvals",
        "List approvals of the operator's tenant (query: status, limit, cursor; status=to_review lists break-glass approvals not yet acknowledged)",
        Auth::Bearer,
        None,
        &[("200", JSON, "ApprovalList"), ("400", JSON, "Error"), ("403", JSON, "Error")],
    ),
    op(
        "get",
        "/v1/approvals/{id}",
        "Read one approval (the requester's reading carries the capability)",
        Auth::Bearer,
        None,
        &[("200", JSON, "Approval"), ("404", JSON, "Error")],
    ),
    op(
        "post",
        "/v1/approvals/{id}/decision",
        "Approve or deny, as an operator who is not the requester",
        Auth::Bearer,
        Some((JSON, "DecisionRequest")),
        &[("200", JSON, "Approval"), ("403", JSON, "Error"), ("409", JSON, "Error"), ("410", JSON, "Error")],
    ),
    op(
        "post",
        "/v1/approvals/{id}/withdraw",
        "Withdraw a pending request, as its requester",
        Auth::Bearer,
        None,
        &[("200", JSON, "Approval"), ("404", JSON, "Error"), ("409", JSON, "Error")],
    ),
    op(
        "post",
        "/v1/approvals/{id}/review",
        "Acknowledge a break-glass approval, as an operator other than the one who approved it",
        Auth::Bearer,
        None,
        &[("200", JSON, "Approval"), ("403", JSON, "Error"), ("404", JSON, "Error"), ("409", JSON, "Error")],
    ),
    op(
        "post",
        "/v1/capabilities/redeem",
        "Redeem a capability, exactly once",
        Auth::Bearer,
        Some((JSON, "RedeemRequest")),
        &[("200", JSON, "Redemption"), ("400", JSON, "Error"), ("403", JSON, "Error"), ("409", JSON, "Error")],
    ),
    op(
        "post",
        "/v1/revocations",
        "Revoke one token (jti) or every token of a client (client_id), as an operator",
        Auth::Bearer,
        Some((JSON, "RevocationRequest")),
        &[("200", JSON, "Revoked"), ("404", JSON, "Error")],
    ),
    op(
        "get",
        "/v1/revocations",
        "The signed revocation feed of the caller's tenant, for service clients (query: since, nonce; \
         the answer signs both)",
        Auth::Bearer,
        None,
        &[("200", "application/jwt", "Jws"), ("400", JSON, "Error"), ("401", JSON, "Error"), ("403", JSON, "Error")],
    ),
    op(
        "get",
        "/v1/audit/checkpoint",
        "The latest signed checkpoint of the audit chain's head, for operator and service clients",
        Auth::Bearer,
        None,
        &[("200", JSON, "AuditCheckpoint"), ("401", JSON, "Error"), ("403", JSON, "Error"), ("404", JSON, "Error")],
    ),
    op(
        "post",
        "/v1/clients",
        "Register a client of the caller's tenant, as an install client holding clients:manage (never an operator \
         or service client, never a scope or bypass beyond the caller's own); the secret is in this answer only",
        Auth::Bearer,
        Some((JSON, "NewClient")),
        &[("201", JSON, "ClientCreated"), ("400", JSON, "Error"), ("401", JSON, "Error"), ("403", JSON, "Error")],
    ),
    op(
        "get",
        "/v1/clients",
        "The tenant's clients with owner, last use, state and secrets' ages, for clients:manage or an operator's \
         clients:read (query: stale, cursor, limit)",
        Auth::Bearer,
        None,
        &[("200", JSON, "ClientList"), ("400", JSON, "Error"), ("401", JSON, "Error"), ("403", JSON, "Error")],
    ),
    op(
        "get",
        "/v1/clients/{id}",
        "One client of the tenant, as `tessera clients show`",
        Auth::Bearer,
        None,
        &[("200", JSON, "Client"), ("401", JSON, "Error"), ("403", JSON, "Error"), ("404", JSON, "Error")],
    ),
    op(
        "post",
        "/v1/clients/{id}/disable",
        "Disable a client: every secret of it stops working and its tokens are revoked",
        Auth::Bearer,
        None,
        &[("200", JSON, "ClientDisabled"), ("401", JSON, "Error"), ("403", JSON, "Error"), ("404", JSON, "Error")],
    ),
    op(
        "post",
        "/v1/clients/{id}/rotate-secret",
        "Issue a new secret, shown once; with grace_secs (at most 604800) the old one keeps working until then",
        Auth::Bearer,
        Some((JSON, "RotateSecret")),
        &[
            ("200", JSON, "SecretRotated"),
            ("400", JSON, "Error"),
            ("401", JSON, "Error"),
            ("403", JSON, "Error"),
            ("404", JSON, "Error"),
        ],
    ),
    op("get", "/healthz", "Liveness", Auth::None, None, &[("200", JSON, "Health")]),
    op(
        "get",
        "/readyz",
        "Readiness: the database answers and a key is loaded",
        Auth::None,
        None,
        &[("200", JSON, "Readiness"), ("503", JSON, "Readiness")],
    ),
    op("get", "/metrics", "Prometheus metrics (text format 0.0.4)", Auth::None, None, &[("200", "text/plain", "Text")]),
    op("get", "/openapi.json", "This document", Auth::None, None, &[("200", JSON, "Object")]),
    op(
        "get",
        "/console",
        "Operator console: pending requests",
        Auth::Console,
        None,
        &[("200", HTML, "Html"), SEE_OTHER],
    ),
    op("get", "/console/", "Redirects to /console", Auth::None, None, &[SEE_OTHER]),
    op(
        "get",
        "/console/sign-in",
        "Operator console: sign-in page (a signed-in operator is sent on)",
        Auth::None,
        None,
        &[("200", HTML, "Html"), SEE_OTHER],
    ),
    op(
        "post",
        "/console/sign-in",
        "Operator console: sign in",
        Auth::None,
        Some((FORM, "ConsoleForm")),
        &[SEE_OTHER, ("200", HTML, "Html")],
    ),
    op(
        "post",
        "/console/sign-out",
        "Operator console: sign out",
        Auth::Console,
        Some((FORM, "ConsoleForm")),
        &[SEE_OTHER],
    ),
    op("get", "/console/history", "Operator console: decided requests", Auth::Console, None, &[("200", HTML, "Html")]),
    op(
        "get",
        "/console/agents",
        "Operator console: the tenant's clients with owner, kind, scopes, last use and state (clients:read; query: stale)",
        Auth::Console,
        None,
        &[("200", HTML, "Html")],
    ),
    op(
        "get",
        "/console/review",
        "Operator console: break-glass approvals to review",
        Auth::Console,
        None,
        &[("200", HTML, "Html")],
    ),
    op(
        "post",
        "/console/approvals/{id}/review",
        "Operator console: acknowledge a break-glass approval",
        Auth::Console,
        Some((FORM, "ConsoleForm")),
        &[SEE_OTHER],
    ),
    op(
        "get",
        "/console/approvals/{id}",
        "Operator console: one request",
        Auth::Console,
        None,
        &[("200", HTML, "Html")],
    ),
    op(
        "post",
        "/console/approvals/{id}/decision",
        "Operator console: confirm or record a decision",
        Auth::Console,
        Some((FORM, "ConsoleForm")),
        &[("200", HTML, "Html"), SEE_OTHER],
    ),
    op(
        "get",
        "/console/approvals/{id}/audit",
        "Operator console: a request's audit trail",
        Auth::Console,
        None,
        &[("200", HTML, "Html")],
    ),
    op(
        "post",
        "/console/approvals/{id}/passkey",
        "Operator console: the passkey challenge of a decision (approval id, params_digest, verdict)",
        Auth::Console,
        Some((FORM, "ConsoleForm")),
        &[("200", JSON, "Object")],
    ),
    op("get", "/console/passkeys", "Operator console: your passkeys", Auth::Console, None, &[("200", HTML, "Html")]),
    op(
        "post",
        "/console/passkeys",
        "Operator console: enrol a passkey (the browser's answer to the options)",
        Auth::Console,
        Some((JSON, "Object")),
        &[("200", JSON, "Object")],
    ),
    op(
        "post",
        "/console/passkeys/options",
        "Operator console: options to enrol a passkey",
        Auth::Console,
        Some((FORM, "ConsoleForm")),
        &[("200", JSON, "Object")],
    ),
    op(
        "post",
        "/console/passkeys/{id}/remove",
        "Operator console: remove a passkey",
        Auth::Console,
        Some((FORM, "ConsoleForm")),
        &[SEE_OTHER],
    ),
    op(
        "post",
        "/console/sign-in/passkey/options",
        "Operator console: a challenge to sign in with a passkey",
        Auth::None,
        Some((JSON, "Object")),
        &[("200", JSON, "Object")],
    ),
    op(
        "post",
        "/console/sign-in/passkey",
        "Operator console: sign in with a passkey assertion",
        Auth::None,
        Some((JSON, "Object")),
        &[("200", JSON, "Object")],
    ),
    op(
        "get",
        "/console/static/passkey.js",
        "Operator console: the passkey ceremonies' script",
        Auth::None,
        None,
        &[("200", "text/javascript", "Text")],
    ),
    op(
        "get",
        "/console/static/console.css",
        "Operator console: stylesheet",
        Auth::None,
        None,
        &[("200", "text/css", "Text")],
    ),
    op(
        "get",
        "/console/static/favicon.svg",
        "Operator console: icon",
        Auth::None,
        None,
        &[("200", "image/svg+xml", "Text")],
    ),
];

fn string() -> Value {
    json!({"type": "string"})
}

fn object(required: &[&str], properties: Value) -> Value {
    json!({"type": "object", "required": required, "properties": properties})
}

fn schemas() -> Value {
    let approval = object(
        &[
            "approval_id",
            "status",
            "action",
            "resource",
            "params_digest",
            "params",
            "tenant",
            "requester",
            "actors",
            "created_at",
            "expires_at",
        ],
        json!({
            "approval_id": string(), "status": {"$ref": "#/components/schemas/ApprovalStatus"},
            "action": string(), "resource": string(), "params_digest": string(),
            "params": {"type": ["object", "null"], "description": "the parameters as presented (design §11): what will run"},
            "summary": {"type": "object", "description": "the requester's own description, unverified"},
            "reason": string(), "tenant": string(), "requester": string(),
            "actors": {"type": "array", "items": string()},
            "requester_kind": string(), "created_at": string(), "expires_at": string(),
            "quorum": {
                "type": "array",
                "description": "the requirements that must all be met (design §19), each with the approvals counted towards it",
                "items": object(&["group", "count", "approvals"], json!({
                    "group": {"type": ["string", "null"], "description": "null: any operator the policy lets decide"},
                    "count": {"type": "integer", "minimum": 1},
                    "approvals": {"type": "integer", "minimum": 0},
                })),
            },
            "bypass": {"type": "boolean"},
            "break_glass": {"type": "boolean", "description": "approved by one operator alone (design §19)"},
            "requester_owner": {"type": ["string", "null"], "description": "never counts towards the request"},
            "reviewed": {
                "type": ["object", "null"],
                "description": "a break-glass approval's acknowledgement by another operator",
                "properties": {"by": string(), "at": string()},
            },
            "decisions": {"type": "array", "items": object(&["operator", "decision", "at"], json!({
                "operator": string(), "decision": {"enum": ["approve", "deny"]},
                "note": {"type": ["string", "null"]}, "at": string(), "method": {"enum": ["secret", "passkey"]},
                "break_glass": {"type": "boolean"},
            }))},
            "capability_expires_at": string(), "capability": string(),
        }),
    );
    let strings = || json!({"type": "array", "items": string()});
    let nullable = || json!({"type": ["string", "null"]});
    let registration = json!({
        "client_id": string(), "tenant": string(), "kind": {"enum": ["agent", "workspace", "install", "operator", "service"]},
        "name": string(), "workspace": nullable(), "scope": string(), "allow_bypass": strings(),
        "delegates": strings(), "require_dpop": {"type": "boolean"}, "groups": strings(), "owner": nullable(),
        "created_by": string(),
    });
    let mut client = registration.clone();
    if let Some(m) = client.as_object_mut() {
        m.insert("state".into(), json!({"enum": ["active", "disabled"]}));
        m.insert("created_at".into(), json!({"type": "integer"}));
        m.insert(
            "last_used_at".into(),
            json!({"type": ["integer", "null"], "description": "Unix seconds, to the minute"}),
        );
        m.insert(
            "secret_expires_at".into(),
            json!({"type": ["integer", "null"], "description": "when a previous secret still working stops"}),
        );
        m.insert("secrets".into(), json!({"type": "array", "items": object(&["secret", "created_at", "age_secs"], json!({
            "secret": {"enum": ["current", "previous"]}, "created_at": {"type": ["integer", "null"]},
            "age_secs": {"type": ["integer", "null"]}, "expires_at": {"type": "integer"}, "uses": {"type": "integer"},
        }))}));
    }
    let mut created = registration;
    if let Some(m) = created.as_object_mut() {
        m.insert(
            "client_secret".into(),
            json!({"type": ["string", "null"], "description": "shown this once; null for a federated or key client"}),
        );
        m.insert("federated".into(), json!({"type": "array", "items": {"$ref": "#/components/schemas/Identity"}}));
        m.insert("key".into(), json!({"type": ["object", "null"]}));
    }
    json!({
        "Identity": object(&["issuer", "subject"], json!({"issuer": string(), "subject": string()})),
        "NewClient": {
            "type": "object",
            "required": ["kind", "name"],
            "additionalProperties": false,
            "properties": {
                "tenant": string(), "kind": {"enum": ["agent", "workspace", "install"]}, "name": string(),
                "workspace": string(), "scope": {"type": "string", "description": "space-separated; absent: the kind's defaults"},
                "allow_bypass": strings(), "delegates": strings(), "require_dpop": {"type": "boolean"},
                "owner": string(), "federated": {"type": "array", "items": {"$ref": "#/components/schemas/Identity"}},
                "key": {"type": "object", "description": "a public JWK (Ed25519 or P-256): private_key_jwt, no secret"},
            },
        },
        "ClientCreated": {"type": "object", "required": ["client_id", "client_secret", "tenant", "kind", "scope", "created_by"], "properties": created},
        "Client": {"type": "object", "required": ["client_id", "tenant", "kind", "state", "scope", "created_by", "secrets"], "properties": client},
        "ClientList": object(&["clients", "next"], json!({
            "clients": {"type": "array", "items": {"$ref": "#/components/schemas/Client"}},
            "next": {"type": ["string", "null"]},
        })),
        "ClientDisabled": object(&["client_id", "disabled"], json!({"client_id": string(), "disabled": {"const": true}})),
        "RotateSecret": {"type": "object", "additionalProperties": false, "properties": {
            "grace_secs": {"type": "integer", "minimum": 0, "maximum": crate::clients::MAX_GRACE_SECS},
        }},
        "SecretRotated": object(&["client_id", "client_secret", "secret_expires_at"], json!({
            "client_id": string(), "client_secret": string(), "secret_expires_at": {"type": ["integer", "null"]},
        })),
        "Error": object(&["error", "error_description"], json!({"error": string(), "error_description": string()})),
        "Empty": {"type": "object"},
        "Object": {"type": "object"},
        "Text": {"type": "string"},
        "Html": {"type": "string"},
        "Jws": {"type": "string", "description": "A compact JWS, typ revocations+jwt"},
        "AuditCheckpoint": object(&["checkpoint"], json!({"checkpoint": {
            "type": "string",
            "description": "A compact JWS, typ audit-checkpoint+jwt, with claims iss, iat, seq, hash, count",
        }})),
        "Jwks": object(&["keys"], json!({"keys": {"type": "array", "items": object(
            &["kty", "crv", "x", "kid", "alg", "use"],
            json!({"kty": {"const": "OKP"}, "crv": {"const": "Ed25519"}, "x": string(), "kid": string(),
                   "alg": {"const": "EdDSA"}, "use": {"const": "sig"}}),
        )}})),
        "ServerMetadata": object(&["issuer", "token_endpoint", "jwks_uri"], json!({
            "issuer": string(), "token_endpoint": string(), "authorization_endpoint": string(), "jwks_uri": string(),
            "grant_types_supported": {"type": "array", "items": string()},
            "scopes_supported": {"type": "array", "items": string()},
        })),
        "TokenRequest": object(&["grant_type"], json!({
            "grant_type": {"type": "string", "enum": ["client_credentials", super::oauth::GRANT_EXCHANGE, super::jwt_bearer::GRANT_JWT_BEARER]},
            "assertion": string(),
            "scope": string(), "client_id": string(), "client_secret": string(),
            "client_assertion_type": {"const": crate::clients::key::ASSERTION_TYPE}, "client_assertion": string(),
            "subject_token": string(), "subject_token_type": string(), "audience": string(),
            "resource": string(), "requested_token_type": string(),
        })),
        "TokenResponse": object(&["access_token", "token_type", "expires_in", "scope"], json!({
            "access_token": string(), "token_type": {"enum": ["Bearer", "DPoP"]}, "expires_in": {"type": "integer"},
            "scope": string(), "issued_token_type": string(),
        })),
        "TokenParameter": object(&["token"], json!({"token": string(), "token_type_hint": string()})),
        "Introspection": object(&["active"], json!({"active": {"type": "boolean"}})),
        "ApprovalStatus": {"enum": ["pending", "approved", "denied", "expired", "redeemed", "withdrawn"]},
        "NewApproval": object(&["action", "resource", "params", "params_digest", "reason"], json!({
            "action": string(), "resource": string(),
            "params": {"type": "object", "description": "the request parameters as presented: secret values as {\"$secret\": {length, sha256}}"},
            "params_digest": string(),
            "summary": {"type": "object"}, "reason": string(), "requester_token": string(),
        })),
        "ApprovalCreated": object(&["approval_id", "status", "expires_at"], json!({
            "approval_id": string(), "status": {"const": "pending"}, "expires_at": string(),
        })),
        "Approval": approval,
        "ApprovalList": object(&["approvals", "next"], json!({
            "approvals": {"type": "array", "items": {"$ref": "#/components/schemas/Approval"}},
            "next": {"type": ["string", "null"]},
        })),
        "DecisionRequest": object(&["decision"], json!({"decision": {"enum": ["approve", "deny"]}, "note": string()})),
        "RedeemRequest": object(&["capability"], json!({"capability": string()})),
        "Redemption": object(&["redeemed", "approval_id", "jti", "sub", "action", "resource", "params_digest"], json!({
            "redeemed": {"const": true}, "approval_id": string(), "jti": string(), "sub": string(),
            "action": string(), "resource": string(), "params_digest": string(),
        })),
        "RevocationRequest": {"type": "object", "properties": {"jti": string(), "client_id": string()}},
        "Revoked": {"type": "object"},
        "Health": object(&["status"], json!({"status": {"const": "ok"}})),
        "Readiness": object(&["status", "database", "signing_key"], json!({
            "status": string(), "database": {"type": "boolean"}, "signing_key": {"type": "boolean"},
        })),
        "ConsoleForm": {"type": "object", "additionalProperties": {"type": "string"}},
    })
}

/// An answer with `Location` and no body.
fn redirect(description: &str) -> Value {
    json!({"description": description, "headers": {"Location": {"required": true, "schema": string()}}})
}

fn operation(o: &Operation) -> Value {
    let mut responses = Map::new();
    for (status, media, schema) in o.responses {
        let answer = if media.is_empty() {
            redirect(status)
        } else {
            let content = json!({ *media: {"schema": {"$ref": format!("#/components/schemas/{schema}")}} });
            json!({"description": status, "content": content})
        };
        responses.insert((*status).to_owned(), answer);
    }
    // Every console page sends a browser without a session to the sign-in page.
    if o.auth == Auth::Console && !responses.contains_key(SEE_OTHER.0) {
        responses.insert(SEE_OTHER.0.to_owned(), redirect("to the sign-in page"));
    }
    // The console answers its own errors with a page; the layers in front of every route (time
    // limit, unknown method) answer with the JSON error shape, there too.
    let mut errors = json!({JSON: {"schema": {"$ref": "#/components/schemas/Error"}}});
    if o.path.starts_with("/console") {
        errors[HTML] = json!({"schema": {"$ref": "#/components/schemas/Html"}});
    }
    responses.insert("default".to_owned(), json!({"description": "an error", "content": errors}));
    let mut v = json!({ "summary": o.summary, "operationId": operation_id(o), "responses": responses });
    match o.auth {
        Auth::None => v["security"] = json!([]),
        Auth::Client => v["security"] = json!([{"clientBasic": []}, {}]),
        Auth::Bearer => v["security"] = json!([{"bearer": []}]),
        Auth::Console => v["security"] = json!([{"consoleSession": []}]),
    }
    if let Some((media, schema)) = o.body {
        v["requestBody"] = json!({
            "required": true,
            "content": { media: {"schema": {"$ref": format!("#/components/schemas/{schema}")}} },
        });
    }
    if o.path.contains("{id}") {
        v["parameters"] = json!([{"name": "id", "in": "path", "required": true, "schema": string()}]);
    }
    v
}

fn operation_id(o: &Operation) -> String {
    let words: Vec<&str> = o.path.split(|c: char| !c.is_ascii_alphanumeric()).filter(|w| !w.is_empty()).collect();
    let slash = if o.path.len() > 1 && o.path.ends_with('/') { "_slash" } else { "" };
    format!("{}_{}{slash}", o.method, words.join("_"))
}

/// The document.
pub fn document() -> Value {
    let mut paths = Map::new();
    for o in OPERATIONS {
        let entry = paths.entry(o.path.to_owned()).or_insert_with(|| json!({}));
        entry[o.method] = operation(o);
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Tessera",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "A credential-scoping token broker. Every error is `{\"error\", \"error_description\"}`; see docs/api.md.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas(),
            "securitySchemes": {
                "clientBasic": {"type": "http", "scheme": "basic"},
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "consoleSession": {"type": "apiKey", "in": "cookie", "name": "tessera_console"},
            },
        },
    })
}

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/openapi.json", get(serve))
}

async fn serve() -> Response {
    static TEXT: OnceLock<String> = OnceLock::new();
    let text = TEXT.get_or_init(|| document().to_string());
    let mut res = text.clone().into_response();
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn the_document_names_every_route_template_and_nothing_else() {
        let doc = document();
        let in_doc: BTreeSet<&str> = doc["paths"].as_object().unwrap().keys().map(String::as_str).collect();
        // The console's catch-all answers 404 for unknown console pages; it is not an endpoint.
        let served: BTreeSet<&str> =
            super::super::metrics::ROUTE_TEMPLATES.iter().copied().filter(|p| *p != "/console/{*rest}").collect();
        assert_eq!(in_doc, served);
        let ids: BTreeSet<String> = OPERATIONS.iter().map(operation_id).collect();
        assert_eq!(ids.len(), OPERATIONS.len(), "operation ids are unique");
    }

    #[test]
    fn every_reference_resolves() {
        let doc = document();
        let text = doc.to_string();
        for part in text.split("\"#/components/schemas/").skip(1) {
            let name = &part[..part.find('"').unwrap()];
            assert!(doc["components"]["schemas"].get(name).is_some(), "{name}");
        }
    }
}
