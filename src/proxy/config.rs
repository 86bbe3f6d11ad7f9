//! The gate proxy's configuration (design §17): the TOML file, checked whole at start.
//!
//! Every problem is one line naming what is wrong: an unknown key, an unknown action, a
//! resource template naming a path parameter its route lacks, a malformed path or URL.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::config::ConfigError;
use crate::policy::DEFAULT_GATED_ACTIONS;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    listen: Option<String>,
    public_url: Option<String>,
    upstream: String,
    upstream_socket: Option<String>,
    broker: String,
    audience: Option<String>,
    #[serde(default)]
    pass_unlisted: bool,
    /// The broker's gated actions, when its policy names others than the defaults.
    actions: Option<Vec<String>>,
    upstream_timeout_secs: Option<u64>,
    upstream_connect_timeout_secs: Option<u64>,
    upstream_max_connections: Option<usize>,
    request_timeout_secs: Option<u64>,
    header_read_timeout_secs: Option<u64>,
    idle_timeout_secs: Option<u64>,
    max_connections: Option<usize>,
    max_connections_per_address: Option<usize>,
    #[serde(default, rename = "route")]
    routes: Vec<RouteFile>,
    #[serde(default)]
    mcp: Vec<McpFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct McpFile {
    path: String,
    scope: Option<String>,
    unlisted_tools: Option<String>,
    #[serde(default, rename = "tool")]
    tools: Vec<ToolFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ToolFile {
    name: String,
    action: Option<String>,
    resource: Option<String>,
    #[serde(default)]
    secret_fields: Vec<String>,
    scope: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteFile {
    method: String,
    path: String,
    action: Option<String>,
    resource: Option<String>,
    #[serde(default)]
    secret_fields: Vec<String>,
    scope: Option<String>,
}

/// One segment of a route's path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Matches exactly this text.
    Literal(String),
    /// Matches any one non-empty segment, named.
    Param(String),
}

/// One piece of a resource template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Literal text.
    Text(String),
    /// A path parameter of the route.
    Path(String),
    /// A top-level string field of the JSON body.
    Body(String),
    /// A top-level string member of an MCP tool call's `arguments`.
    Arg(String),
    /// The caller's tenant.
    Tenant,
}

/// A gated route's action and how its resource is formed.
#[derive(Debug, Clone)]
pub struct Gated {
    /// The gated action.
    pub action: String,
    /// The resource template.
    pub resource: Vec<Piece>,
    /// The body fields shown to operators only as length and fingerprint.
    pub secret_fields: Vec<String>,
}

/// One `[[route]]`.
#[derive(Debug, Clone)]
pub struct Route {
    /// The method, upper case.
    pub method: http::Method,
    /// The path as written.
    pub path: String,
    /// The path, segment by segment.
    pub segments: Vec<Segment>,
    /// Set on a gated route.
    pub gated: Option<Gated>,
    /// The scope the access token must grant.
    pub scope: Option<String>,
}

/// One tool of an `[[mcp]]` endpoint (`[[mcp.tool]]`).
#[derive(Debug, Clone)]
pub struct Tool {
    /// The tool's name, as `tools/call` names it.
    pub name: String,
    /// Set on a gated tool: its action and how its resource is formed from the arguments.
    pub gated: Option<Gated>,
    /// The scope a call of this tool needs, beyond the endpoint's.
    pub scope: Option<String>,
}

/// One `[[mcp]]` endpoint: a streamable-HTTP MCP server's path (design §18).
#[derive(Debug, Clone)]
pub struct Mcp {
    /// The endpoint's path, as written.
    pub path: String,
    /// The path, segment by segment.
    pub segments: Vec<String>,
    /// The scope every request to the endpoint needs.
    pub scope: Option<String>,
    /// Whether a tool with no `[[mcp.tool]]` may be called (`unlisted_tools = "allow"`).
    pub allow_unlisted: bool,
    /// The listed tools.
    pub tools: Vec<Tool>,
}

impl Mcp {
    /// The listed tool called `name`.
    pub fn tool(&self, name: &str) -> Option<&Tool> {
        self.tools.iter().find(|t| t.name == name)
    }
}

/// The checked configuration.
#[derive(Debug, Clone)]
pub struct GateConfig {
    /// Where the proxy listens.
    pub listen: SocketAddr,
    /// The URL clients use (scheme, host, port), for DPoP proofs and the metadata.
    pub public_url: String,
    /// The upstream's base URL (`http://host:port`, no path). With `upstream_socket`, its
    /// authority is only the `Host` the upstream sees.
    pub upstream: http::Uri,
    /// The upstream's Unix socket (`upstream_socket`, an absolute path): connections go there
    /// instead of to the URL's host.
    pub upstream_socket: Option<std::path::PathBuf>,
    /// The broker's issuer URL.
    pub broker: String,
    /// The audience the access tokens must carry.
    pub audience: String,
    /// Whether a request matching no route is forwarded (after its access token is checked).
    pub pass_unlisted: bool,
    /// How long the upstream has to answer (its headers), and to accept a connection.
    pub upstream_timeout: Duration,
    /// How long a connection to the upstream may take.
    pub upstream_connect_timeout: Duration,
    /// The most connections open to the upstream at once.
    pub upstream_max_connections: usize,
    /// The limits of the proxy's own listener, as the broker's: first-request, header and idle
    /// deadlines, connections at once, and from one address.
    pub limits: crate::server::connection::ServeLimits,
    /// How long a gated request's body may take to arrive (`request_timeout_secs`).
    pub request_timeout: Duration,
    /// The routes, in the order matched.
    pub routes: Vec<Route>,
    /// The MCP endpoints, matched before the routes.
    pub mcp: Vec<Mcp>,
}

fn err(msg: impl Into<String>) -> ConfigError {
    ConfigError(msg.into())
}

impl GateConfig {
    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> Result<GateConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read {}: {e}", path.display())))?;
        Self::parse(&text)
    }

    /// Checks configuration text.
    pub fn parse(text: &str) -> Result<GateConfig, ConfigError> {
        let file: File = toml::from_str(text).map_err(|e| {
            let msg = e.message().lines().next().unwrap_or("invalid TOML").to_owned();
            err(msg)
        })?;
        let listen_text = file.listen.unwrap_or_else(|| "127.0.0.1:8720".to_owned());
        let listen: SocketAddr =
            listen_text.parse().map_err(|_| err(format!("listen: {listen_text:?} is not HOST:PORT")))?;
        let public_url = file.public_url.unwrap_or_else(|| format!("http://{listen}"));
        let public_url = public_url.trim_end_matches('/').to_owned();
        if !(public_url.starts_with("http://") || public_url.starts_with("https://")) {
            return Err(err(format!("public_url: {public_url:?} is not an http(s) URL")));
        }
        let upstream = parse_upstream(&file.upstream)?;
        let upstream_socket = match file.upstream_socket {
            None => None,
            Some(p) if p.starts_with('/') && p.len() > 1 && !p.contains('\0') => Some(std::path::PathBuf::from(p)),
            Some(p) => return Err(err(format!("upstream_socket: {p:?} is not an absolute path"))),
        };
        let broker = file.broker.trim_end_matches('/').to_owned();
        if !(broker.starts_with("http://") || broker.starts_with("https://")) {
            return Err(err(format!("broker: {broker:?} is not an http(s) URL")));
        }
        let actions: HashSet<String> = match file.actions {
            Some(a) => a.into_iter().collect(),
            None => DEFAULT_GATED_ACTIONS.iter().map(|a| (*a).to_owned()).collect(),
        };
        let max = file.upstream_max_connections.unwrap_or(256);
        if max == 0 {
            return Err(err("upstream_max_connections: must be at least 1"));
        }
        let mut routes = Vec::with_capacity(file.routes.len());
        for (i, r) in file.routes.into_iter().enumerate() {
            routes.push(route(i + 1, r, &actions)?);
        }
        let mut mcp: Vec<Mcp> = Vec::with_capacity(file.mcp.len());
        for (i, m) in file.mcp.into_iter().enumerate() {
            let m = endpoint(i + 1, m, &actions)?;
            if mcp.iter().any(|o| o.segments == m.segments) {
                return Err(err(format!("mcp {} ({}): the path appears twice", i + 1, m.path)));
            }
            mcp.push(m);
        }
        one_effect_per_action(&routes, &mcp)?;
        // The protected-resource metadata's `resource` is the audience (design §18), so it is
        // the URL a client reaches: the gate's, or one of its MCP endpoints'.
        let audience = file.audience.unwrap_or_else(|| public_url.clone());
        let resources: Vec<String> =
            std::iter::once(public_url.clone()).chain(mcp.iter().map(|m| format!("{public_url}{}", m.path))).collect();
        if !resources.contains(&audience) {
            return Err(err(format!(
                "audience: {audience:?} must be the URL clients reach: public_url ({public_url:?}) or public_url and an \
                 [[mcp]] path"
            )));
        }
        Ok(GateConfig {
            listen,
            public_url,
            upstream,
            upstream_socket,
            broker,
            audience,
            pass_unlisted: file.pass_unlisted,
            upstream_timeout: Duration::from_secs(file.upstream_timeout_secs.unwrap_or(30).max(1)),
            upstream_connect_timeout: Duration::from_secs(file.upstream_connect_timeout_secs.unwrap_or(5).max(1)),
            upstream_max_connections: max,
            limits: crate::server::connection::ServeLimits {
                deadlines: crate::server::connection::Deadlines {
                    header: Duration::from_secs(positive(
                        "header_read_timeout_secs",
                        file.header_read_timeout_secs,
                        10,
                    )?),
                    idle: Duration::from_secs(positive("idle_timeout_secs", file.idle_timeout_secs, 75)?),
                },
                max_connections: positive("max_connections", file.max_connections.map(|n| n as u64), 1024)? as usize,
                max_connections_per_address: positive(
                    "max_connections_per_address",
                    file.max_connections_per_address.map(|n| n as u64),
                    64,
                )? as usize,
            },
            request_timeout: Duration::from_secs(positive("request_timeout_secs", file.request_timeout_secs, 10)?),
            routes,
            mcp,
        })
    }
}

/// What a gated entry digests: a route the JSON body, a tool `{"name", "arguments"}`.
enum Form<'a> {
    Body,
    Tool(&'a str),
}

/// A capability names an action, a resource and the digest of the presented parameters, never
/// the route (design §9, §11: the digest is the body's, as every verifier computes it). So two
/// gated entries of one action that could form the same resource from the same presented
/// parameters would let a capability approved for one run the other: refused at start.
fn one_effect_per_action(routes: &[Route], mcp: &[Mcp]) -> Result<(), ConfigError> {
    let mut entries: Vec<(String, &Gated, Form<'_>)> = Vec::new();
    for (i, r) in routes.iter().enumerate() {
        if let Some(g) = &r.gated {
            entries.push((format!("route {} ({} {})", i + 1, r.method, r.path), g, Form::Body));
        }
    }
    for (i, m) in mcp.iter().enumerate() {
        for t in &m.tools {
            if let Some(g) = &t.gated {
                entries.push((format!("mcp {} ({}): tool {:?}", i + 1, m.path, t.name), g, Form::Tool(&t.name)));
            }
        }
    }
    for (n, (later, b, form_b)) in entries.iter().enumerate() {
        for (earlier, a, form_a) in &entries[..n] {
            if a.action == b.action
                && same_parameters_possible(a, form_a, b, form_b)
                && may_coincide(&a.resource, &b.resource)
            {
                return Err(err(format!(
                    "{later}: action {:?} with a resource {earlier} can also form, so a capability approved for one \
                     would run the other; give one its own action, or resources whose fixed start or end differ",
                    b.action
                )));
            }
        }
    }
    Ok(())
}

/// Whether requests to two gated entries can present the same parameters.
fn same_parameters_possible(a: &Gated, form_a: &Form<'_>, b: &Gated, form_b: &Form<'_>) -> bool {
    // A tool's presented parameters have two members, the string `name` and the object
    // `arguments`, so a route whose resource reads any other body field never matches them.
    let reads_only_name = |g: &Gated| g.resource.iter().all(|p| !matches!(p, Piece::Body(f) if f != "name"));
    match (form_a, form_b) {
        (Form::Body, Form::Body) => true,
        (Form::Tool(x), Form::Tool(y)) => x == y,
        (Form::Body, Form::Tool(_)) => reads_only_name(a),
        (Form::Tool(_), Form::Body) => reads_only_name(b),
    }
}

/// Whether two resource templates could form the same text. Conservative: only templates that
/// are both literal and different, or whose fixed start or fixed end disagree, cannot.
fn may_coincide(a: &[Piece], b: &[Piece]) -> bool {
    let literal = |t: &[Piece]| -> Option<String> {
        t.iter().map(|p| if let Piece::Text(s) = p { Some(s.as_str()) } else { None }).collect()
    };
    if let (Some(x), Some(y)) = (literal(a), literal(b)) {
        return x == y;
    }
    let ends = |t: &[Piece]| -> (String, String) {
        let start: String =
            t.iter().map_while(|p| if let Piece::Text(s) = p { Some(s.as_str()) } else { None }).collect();
        let mut end: Vec<&str> =
            t.iter().rev().map_while(|p| if let Piece::Text(s) = p { Some(s.as_str()) } else { None }).collect();
        end.reverse();
        (start, end.concat())
    };
    let ((sa, ea), (sb, eb)) = (ends(a), ends(b));
    (sa.starts_with(&sb) || sb.starts_with(&sa)) && (ea.ends_with(&eb) || eb.ends_with(&ea))
}

/// `value`, or `default` when absent; zero is refused, naming the key.
fn positive(key: &str, value: Option<u64>, default: u64) -> Result<u64, ConfigError> {
    match value {
        None => Ok(default),
        Some(0) => Err(err(format!("{key} must be positive"))),
        Some(v) => Ok(v),
    }
}

fn parse_upstream(text: &str) -> Result<http::Uri, ConfigError> {
    let bad = || err(format!("upstream: {text:?} is not an http:// URL with a host and no path"));
    let uri: http::Uri = text.trim_end_matches('/').parse().map_err(|_| bad())?;
    if uri.scheme_str() != Some("http") || uri.authority().is_none() || !matches!(uri.path(), "" | "/") {
        return Err(bad());
    }
    if uri.query().is_some() {
        return Err(bad());
    }
    Ok(uri)
}

fn route(n: usize, r: RouteFile, actions: &HashSet<String>) -> Result<Route, ConfigError> {
    let name = format!("route {n} ({} {})", r.method, r.path);
    let method = http::Method::from_bytes(r.method.to_ascii_uppercase().as_bytes())
        .map_err(|_| err(format!("{name}: method {:?} is not an HTTP method", r.method)))?;
    let segments = parse_path(&r.path).map_err(|e| err(format!("{name}: path: {e}")))?;
    let params: HashSet<&str> = segments
        .iter()
        .filter_map(|s| match s {
            Segment::Param(p) => Some(p.as_str()),
            Segment::Literal(_) => None,
        })
        .collect();
    let gated = match (r.action, r.resource) {
        (Some(action), Some(resource)) => {
            if !actions.contains(&action) {
                return Err(err(format!("{name}: unknown action {action:?}")));
            }
            let resource = parse_template(&resource).map_err(|e| err(format!("{name}: resource: {e}")))?;
            for piece in &resource {
                match piece {
                    Piece::Path(p) if !params.contains(p.as_str()) => {
                        return Err(err(format!("{name}: resource names {{{p}}}, which its path lacks")));
                    }
                    Piece::Arg(a) => {
                        return Err(err(format!("{name}: resource names {{args.{a}}}, which only an MCP tool has")));
                    }
                    _ => {}
                }
            }
            Some(Gated { action, resource, secret_fields: r.secret_fields })
        }
        (Some(_), None) => return Err(err(format!("{name}: a gated route needs a resource"))),
        (None, Some(_)) => return Err(err(format!("{name}: resource is set but action is not"))),
        (None, None) => {
            if !r.secret_fields.is_empty() {
                return Err(err(format!("{name}: secret_fields only apply to a gated route")));
            }
            if r.scope.is_none() {
                return Err(err(format!("{name}: a route that is not gated needs a scope")));
            }
            None
        }
    };
    if let Some(scope) = &r.scope
        && (scope.is_empty() || scope.contains(char::is_whitespace) || actions.contains(scope))
    {
        return Err(err(format!("{name}: scope {scope:?} is not one scope")));
    }
    Ok(Route { method, path: r.path, segments, gated, scope: r.scope })
}

fn one_scope(name: &str, scope: &Option<String>, actions: &HashSet<String>) -> Result<(), ConfigError> {
    if let Some(scope) = scope
        && (scope.is_empty() || scope.contains(char::is_whitespace) || actions.contains(scope))
    {
        return Err(err(format!("{name}: scope {scope:?} is not one scope")));
    }
    Ok(())
}

fn endpoint(n: usize, m: McpFile, actions: &HashSet<String>) -> Result<Mcp, ConfigError> {
    let name = format!("mcp {n} ({})", m.path);
    let segments = parse_path(&m.path).map_err(|e| err(format!("{name}: path: {e}")))?;
    let segments = segments
        .into_iter()
        .map(|s| match s {
            Segment::Literal(l) => Ok(l),
            Segment::Param(p) => Err(err(format!("{name}: path: an MCP endpoint's path is literal, not {{{p}}}"))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    one_scope(&name, &m.scope, actions)?;
    let allow_unlisted = match m.unlisted_tools.as_deref() {
        None | Some("deny") => false,
        Some("allow") => true,
        Some(other) => return Err(err(format!("{name}: unlisted_tools is \"deny\" or \"allow\", not {other:?}"))),
    };
    let mut tools: Vec<Tool> = Vec::with_capacity(m.tools.len());
    for t in m.tools {
        let who = format!("{name}: tool {:?}", t.name);
        if t.name.is_empty() || t.name.len() > 128 || t.name.chars().any(char::is_control) {
            return Err(err(format!("{who}: not a tool name")));
        }
        if tools.iter().any(|o| o.name == t.name) {
            return Err(err(format!("{who}: listed twice")));
        }
        one_scope(&who, &t.scope, actions)?;
        let gated = match (t.action, t.resource) {
            (Some(action), Some(resource)) => {
                if !actions.contains(&action) {
                    return Err(err(format!("{who}: unknown action {action:?}")));
                }
                let resource = parse_template(&resource).map_err(|e| err(format!("{who}: resource: {e}")))?;
                for piece in &resource {
                    match piece {
                        Piece::Path(p) => {
                            return Err(err(format!("{who}: resource names {{{p}}}; a tool's are {{args.NAME}}")));
                        }
                        Piece::Body(b) => {
                            return Err(err(format!("{who}: resource names {{body.{b}}}; a tool's are {{args.NAME}}")));
                        }
                        _ => {}
                    }
                }
                Some(Gated { action, resource, secret_fields: t.secret_fields })
            }
            (Some(_), None) => return Err(err(format!("{who}: a gated tool needs a resource"))),
            (None, Some(_)) => return Err(err(format!("{who}: resource is set but action is not"))),
            (None, None) => {
                if !t.secret_fields.is_empty() {
                    return Err(err(format!("{who}: secret_fields only apply to a gated tool")));
                }
                None
            }
        };
        tools.push(Tool { name: t.name, gated, scope: t.scope });
    }
    Ok(Mcp { path: m.path, segments, scope: m.scope, allow_unlisted, tools })
}

fn parse_path(path: &str) -> Result<Vec<Segment>, String> {
    let Some(rest) = path.strip_prefix('/') else { return Err(format!("{path:?} does not start with /")) };
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for seg in rest.split('/') {
        if seg.is_empty() || seg == "." || seg == ".." {
            return Err(format!("{path:?} has an empty or dot segment"));
        }
        if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            if !is_name(name) {
                return Err(format!("{{{name}}} is not a parameter name"));
            }
            if name == "tenant" {
                return Err("a path parameter cannot be called tenant: {tenant} is the caller's".to_owned());
            }
            if !seen.insert(name.to_owned()) {
                return Err(format!("{{{name}}} appears twice"));
            }
            out.push(Segment::Param(name.to_owned()));
        } else if seg.contains(['{', '}', '%', '?', '#']) {
            return Err(format!("segment {seg:?} is neither literal nor one {{name}}"));
        } else {
            out.push(Segment::Literal(seg.to_owned()));
        }
    }
    Ok(out)
}

fn is_name(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn parse_template(t: &str) -> Result<Vec<Piece>, String> {
    let mut out = Vec::new();
    let mut rest = t;
    while let Some(open) = rest.find('{') {
        if rest[..open].contains('}') {
            return Err(format!("{t:?} has an unmatched }}"));
        }
        if open > 0 {
            out.push(Piece::Text(rest[..open].to_owned()));
        }
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else { return Err(format!("{t:?} has an unclosed {{")) };
        let name = &after[..close];
        let piece = if name == "tenant" {
            Piece::Tenant
        } else if let Some(field) = name.strip_prefix("body.") {
            if !is_name(field) {
                return Err(format!("{{{name}}} does not name a body field"));
            }
            Piece::Body(field.to_owned())
        } else if let Some(arg) = name.strip_prefix("args.") {
            if !is_name(arg) {
                return Err(format!("{{{name}}} does not name an argument"));
            }
            Piece::Arg(arg.to_owned())
        } else if is_name(name) {
            Piece::Path(name.to_owned())
        } else {
            return Err(format!("{{{name}}} is not a parameter"));
        };
        out.push(piece);
        rest = &after[close + 1..];
    }
    if rest.contains('}') {
        return Err(format!("{t:?} has an unmatched }}"));
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest.to_owned()));
    }
    if out.is_empty() {
        return Err("empty".to_owned());
    }
    Ok(out)
}

impl Route {
    /// The path parameters if `segments` (a request path, split) matches this route.
    pub fn matches(&self, method: &http::Method, segments: &[&str]) -> Option<HashMap<String, String>> {
        if method != self.method || segments.len() != self.segments.len() {
            return None;
        }
        let mut params = HashMap::new();
        for (want, got) in self.segments.iter().zip(segments) {
            match want {
                Segment::Literal(l) if l == got => {}
                Segment::Literal(_) => return None,
                Segment::Param(name) => {
                    params.insert(name.clone(), (*got).to_owned());
                }
            }
        }
        Some(params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "upstream = \"http://127.0.0.1:9000\"\nbroker = \"http://127.0.0.1:8700\"\n";

    fn parse(routes: &str) -> Result<GateConfig, ConfigError> {
        GateConfig::parse(&format!("{BASE}{routes}"))
    }

    #[test]
    fn a_good_file_parses() {
        let c = parse(
            "[[route]]\nmethod = \"put\"\npath = \"/workspaces/{id}/secrets\"\naction = \"secret_write\"\n\
             resource = \"workspaces/{id}/secrets/{body.key}\"\nsecret_fields = [\"value\"]\n",
        )
        .unwrap();
        let r = &c.routes[0];
        assert_eq!(r.method, http::Method::PUT);
        let g = r.gated.as_ref().unwrap();
        assert_eq!(
            g.resource,
            vec![
                Piece::Text("workspaces/".into()),
                Piece::Path("id".into()),
                Piece::Text("/secrets/".into()),
                Piece::Body("key".into())
            ]
        );
        assert!(r.matches(&http::Method::PUT, &["workspaces", "w", "secrets"]).is_some());
        assert!(r.matches(&http::Method::POST, &["workspaces", "w", "secrets"]).is_none());
        assert_eq!(c.public_url, "http://127.0.0.1:8720");
    }

    #[test]
    fn each_mistake_is_named() {
        for (text, needle) in [
            ("bogus = 1\n", "bogus"),
            (
                "[[route]]\nmethod = \"PUT\"\npath = \"/x/{id}\"\naction = \"secret_write\"\nresource = \"x/{ws}\"\n",
                "{ws}",
            ),
            ("[[route]]\nmethod = \"PUT\"\npath = \"/x\"\naction = \"launch\"\nresource = \"x\"\n", "launch"),
            ("[[route]]\nmethod = \"GET\"\npath = \"/x\"\nscope = \"a\"\ncolour = \"red\"\n", "colour"),
            ("[[route]]\nmethod = \"GET\"\npath = \"/x\"\n", "needs a scope"),
            ("[[route]]\nmethod = \"GET\"\npath = \"x\"\nscope = \"a\"\n", "start with /"),
            ("[[route]]\nmethod = \"PUT\"\npath = \"/x\"\naction = \"secret_write\"\nresource = \"{body.}\"\n", "body"),
        ] {
            let e = parse(text).unwrap_err().0;
            assert!(e.contains(needle), "{e:?} should name {needle:?}");
            assert!(!e.contains('\n'), "{e:?} is one line");
        }
        let e = GateConfig::parse("upstream = \"https://x\"\nbroker = \"http://b\"\n").unwrap_err().0;
        assert!(e.contains("upstream"), "{e}");
        let e = GateConfig::parse("upstream = \"http://x/base\"\nbroker = \"http://b\"\n").unwrap_err().0;
        assert!(e.contains("upstream"), "{e}");
        for relative in ["core.sock", "", "/"] {
            let text = format!("upstream = \"http://core\"\nupstream_socket = \"{relative}\"\nbroker = \"http://b\"\n");
            let e = GateConfig::parse(&text).unwrap_err().0;
            assert!(e.contains("upstream_socket") && e.contains("absolute path"), "{e}");
        }
        // The pinned form of `upstream` stays an http:// URL, socket or not.
        let e = GateConfig::parse("upstream = \"unix:/run/core.sock\"\nbroker = \"http://b\"\n").unwrap_err().0;
        assert!(e.contains("upstream"), "{e}");
    }

    #[test]
    fn an_upstream_may_be_a_unix_socket() {
        let c = GateConfig::parse(
            "upstream = \"http://core.internal\"\nupstream_socket = \"/run/core/core.sock\"\nbroker = \"http://b\"\n",
        )
        .unwrap();
        assert_eq!(c.upstream_socket.as_deref(), Some(Path::new("/run/core/core.sock")));
        assert_eq!(c.upstream, "http://core.internal/");
        assert!(parse("").unwrap().upstream_socket.is_none());
    }

    fn gated(method: &str, path: &str, action: &str, resource: &str) -> String {
        format!(
            "[[route]]\nmethod = \"{method}\"\npath = \"{path}\"\naction = \"{action}\"\nresource = \"{resource}\"\n"
        )
    }

    fn tool(path: &str, name: &str, action: &str, resource: &str) -> String {
        format!(
            "[[mcp]]\npath = \"{path}\"\n[[mcp.tool]]\nname = \"{name}\"\naction = \"{action}\"\nresource = \"{resource}\"\n"
        )
    }

    /// Review round three, item 11: a capability names action, resource and digest, not the
    /// route, so no two gated entries of one action may be able to form one resource from the
    /// same presented parameters.
    #[test]
    fn one_action_on_two_routes_that_could_form_one_resource_is_refused_naming_both() {
        let put = gated("PUT", "/workspaces/{id}/secrets", "secret_write", "workspaces/{id}/secrets/{body.key}");
        for (second, earlier) in [
            // The same path under another method, and another path forming the same resource.
            (
                gated("POST", "/workspaces/{id}/secrets", "secret_write", "workspaces/{id}/secrets/{body.key}"),
                "route 1",
            ),
            (gated("POST", "/w/{id}/rotate", "secret_write", "workspaces/{id}/secrets/{body.name}"), "route 1"),
            // A literal resource the template can form.
            (gated("POST", "/reset", "secret_write", "workspaces/ws-1/secrets/all"), "route 1"),
            // An MCP call's presented parameters are a body too, when the route reads only `name`.
            (tool("/mcp", "write", "secret_write", "workspaces/{args.w}/secrets/x"), "route 1"),
        ] {
            let first = if second.contains("{body.name}") || second.contains("[[mcp]]") {
                gated("PUT", "/w/{id}", "secret_write", "workspaces/{id}/secrets/{body.name}")
            } else {
                put.clone()
            };
            let e = parse(&format!("{first}{second}")).unwrap_err().0;
            assert!(e.contains(earlier) && e.contains("secret_write") && e.contains("would run the other"), "{e}");
            assert!(!e.contains('\n'), "{e:?} is one line");
        }
        // One tool on two endpoints.
        let e = parse(&format!(
            "{}{}",
            tool("/a", "del", "workspace_delete", "workspaces/{args.w}"),
            tool("/b", "del", "workspace_delete", "workspaces/{args.w}")
        ))
        .unwrap_err()
        .0;
        assert!(e.contains("mcp 2 (/b)") && e.contains("mcp 1 (/a)"), "{e}");

        // What stays possible: the reference core's table, where one action has resources with
        // different fixed starts; other actions on one resource; two tools (their names are in
        // what is digested); a route reading a body field no tool call has.
        let ok = [
            format!("{put}{}", gated("PUT", "/settings/secrets", "secret_write", "orgs/{tenant}/secrets/{body.key}")),
            format!(
                "{}{}",
                gated("DELETE", "/workspaces/{id}", "workspace_delete", "workspaces/{id}"),
                gated("POST", "/workspaces/{id}/deprovision", "workspace_deprovision", "workspaces/{id}")
            ),
            format!(
                "{}[[mcp.tool]]\nname = \"other\"\naction = \"secret_write\"\nresource = \"workspaces/{{args.w}}/secrets/x\"\n",
                tool("/mcp", "write", "secret_write", "workspaces/{args.w}/secrets/x")
            ),
            format!("{put}{}", tool("/mcp", "write", "secret_write", "workspaces/{args.w}/secrets/{args.key}")),
            format!("{}{}", gated("PUT", "/a", "secret_write", "s/a"), gated("PUT", "/b", "secret_write", "s/b")),
            format!(
                "{}{}",
                gated("PUT", "/a", "secret_write", "s/{body.k}/a"),
                gated("PUT", "/b", "secret_write", "s/{body.k}/b")
            ),
        ];
        for text in ok {
            assert!(parse(&text).is_ok(), "{text}: {:?}", parse(&text).err());
        }
    }
}
