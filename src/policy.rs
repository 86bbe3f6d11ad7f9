//! The policy: scope catalogue, gated actions, each caller kind's ceiling and defaults, TTLs
//! and quorum. Built-in defaults, overridable from the configuration file.

use std::collections::{BTreeMap, BTreeSet};

pub mod rules;

use serde::Deserialize;

use crate::domain::{Action, CallerKind, Scope, ScopeSet};
use crate::token::MAX_LIFETIME_SECS;

/// The gated actions of the default policy (design §5).
pub const DEFAULT_GATED_ACTIONS: [&str; 5] =
    ["org_token_mint", "secret_write", "workspace_delete", "workspace_deprovision", "workspace_token_mint"];

/// Scopes only an operator may ever hold.
pub const OPERATOR_ONLY_SCOPES: [&str; 3] = ["approvals:read", "approvals:decide", "clients:read"];

/// Scopes only an install client may ever hold: managing its tenant's clients (design §20).
pub const INSTALL_ONLY_SCOPES: [&str; 1] = ["clients:manage"];

const CATALOGUE: [&str; 14] = [
    "workspaces:read",
    "workspaces:write",
    "plugins:read",
    "plugins:write",
    "budgets:read",
    "budgets:write",
    "secrets:list",
    "approvals:create",
    "approvals:read",
    "approvals:decide",
    "tokens:introspect",
    "tokens:revoke",
    "clients:manage",
    "clients:read",
];

fn default_ceiling(kind: CallerKind) -> &'static [&'static str] {
    match kind {
        // An install client's ceiling adds INSTALL_ONLY_SCOPES to this (see `Policy::default`).
        CallerKind::Agent | CallerKind::Install => &[
            "workspaces:read",
            "workspaces:write",
            "plugins:read",
            "plugins:write",
            "budgets:read",
            "budgets:write",
            "secrets:list",
            "approvals:create",
        ],
        CallerKind::Workspace => {
            &["workspaces:read", "workspaces:write", "plugins:read", "budgets:read", "secrets:list", "approvals:create"]
        }
        CallerKind::Operator => &[
            "workspaces:read",
            "plugins:read",
            "budgets:read",
            "secrets:list",
            "approvals:read",
            "approvals:decide",
            "tokens:introspect",
            "tokens:revoke",
            "clients:read",
        ],
        CallerKind::Service => &["tokens:introspect"],
    }
}

fn default_defaults(kind: CallerKind) -> &'static [&'static str] {
    match kind {
        CallerKind::Agent | CallerKind::Install => &["workspaces:read", "workspaces:write", "approvals:create"],
        CallerKind::Workspace => &["workspaces:read", "approvals:create"],
        CallerKind::Operator => {
            &["workspaces:read", "approvals:read", "approvals:decide", "tokens:revoke", "clients:read"]
        }
        CallerKind::Service => &["tokens:introspect"],
    }
}

/// A policy error: the configuration breaks a rule no configuration may break.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("policy: {0}")]
pub struct PolicyError(pub String);

/// One caller kind's scopes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KindPolicy {
    /// Everything a client of this kind may ever hold.
    pub ceiling: ScopeSet,
    /// What a client registered without `--scope` gets.
    pub defaults: ScopeSet,
}

/// The effective policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    catalogue: ScopeSet,
    gated: BTreeSet<String>,
    kinds: BTreeMap<CallerKind, KindPolicy>,
    /// Access-token lifetime, seconds.
    pub access_token_ttl_secs: i64,
    /// Capability lifetime after approval, seconds.
    pub capability_ttl_secs: i64,
    /// How long a request stays pending, seconds.
    pub approval_ttl_secs: i64,
    /// Most requests one requester may have pending at once.
    pub max_pending_per_requester: i64,
    /// Gated actions whose decisions need a passkey, in the console only (design §15).
    pub passkey_actions: BTreeSet<String>,
    /// Whether an operator who has a passkey must sign in to the console with it.
    pub console_passkey_only: bool,
    /// Agent and workspace clients unused for this many days are disabled (design §20);
    /// `None`: never.
    pub stale_after_days: Option<u32>,
    quorum: BTreeMap<String, Vec<Requirement>>,
    times: BTreeMap<String, ActionTimes>,
    require_dpop: BTreeSet<CallerKind>,
    /// The approval rules (`policy_file`, design §19); `None`: any enabled operator of the
    /// tenant decides, as before there were rules.
    pub rules: Option<std::sync::Arc<rules::Rules>>,
}

pub use crate::domain::approval::Requirement;

/// A `[policy.quorum]` entry: a number of operators (`secret_write = 2`), or a list of
/// per-group requirements that must all be met (`[[policy.quorum.secret_write]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuorumFile {
    /// This many distinct operators.
    Count(u32),
    /// Every one of these requirements.
    Groups(Vec<Requirement>),
}

impl<'de> Deserialize<'de> for QuorumFile {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = QuorumFile;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a number of operators, or a list of { group, count } requirements")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<QuorumFile, E> {
                u32::try_from(v).map(QuorumFile::Count).map_err(|_| E::custom("quorum must be between 1 and 16"))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<QuorumFile, E> {
                u32::try_from(v).map(QuorumFile::Count).map_err(|_| E::custom("quorum must be between 1 and 16"))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<QuorumFile, A::Error> {
                Vec::<Requirement>::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))
                    .map(QuorumFile::Groups)
            }
        }
        d.deserialize_any(V)
    }
}

/// A `[policy.actions.<action>]` table: that action's own times.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionFile {
    /// How long its requests stay pending, seconds (default `approval_ttl_secs`, 3600).
    pub pending_ttl_secs: Option<i64>,
    /// How long its capabilities live once approved, seconds (default `capability_ttl_secs`,
    /// 300; at most 900).
    pub capability_ttl_secs: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ActionTimes {
    pending_ttl_secs: Option<i64>,
    capability_ttl_secs: Option<i64>,
}

/// The `[policy]` table of the configuration file. Every field is optional; what is absent
/// keeps its built-in default.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// Extra scopes added to the catalogue.
    pub extra_scopes: Option<Vec<String>>,
    /// The gated actions (replaces the default list).
    pub gated_actions: Option<Vec<String>>,
    /// Access-token lifetime, seconds (at most 900).
    pub access_token_ttl_secs: Option<i64>,
    /// Capability lifetime, seconds (at most 900).
    pub capability_ttl_secs: Option<i64>,
    /// Pending-request lifetime, seconds.
    pub approval_ttl_secs: Option<i64>,
    /// Most requests one requester may have pending at once.
    pub max_pending_per_requester: Option<i64>,
    /// Gated actions whose decisions need a passkey.
    pub passkey_actions: Option<Vec<String>>,
    /// Operators with a passkey sign in to the console with it.
    pub console_passkey_only: Option<bool>,
    /// Days unused after which agent and workspace clients are disabled.
    pub stale_after_days: Option<u32>,
    /// Quorum per action.
    pub quorum: Option<BTreeMap<String, QuorumFile>>,
    /// Per-action times.
    pub actions: Option<BTreeMap<String, ActionFile>>,
    /// Per-kind ceilings and defaults.
    pub kinds: Option<BTreeMap<CallerKind, KindFile>>,
}

/// A `[policy.kinds.<kind>]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KindFile {
    /// Replaces the kind's ceiling.
    pub ceiling: Option<Vec<String>>,
    /// Replaces the kind's defaults.
    pub defaults: Option<Vec<String>>,
    /// Every client of this kind gets tokens only with a DPoP proof (design §13).
    pub require_dpop: Option<bool>,
}

fn scope_set(list: &[&str]) -> ScopeSet {
    list.iter().filter_map(|s| Scope::parse(s).ok()).collect()
}

fn parse_scopes(what: &str, list: &[String]) -> Result<ScopeSet, PolicyError> {
    list.iter().map(|s| Scope::parse(s).map_err(|e| PolicyError(format!("{what}: {e}")))).collect()
}

impl Default for Policy {
    fn default() -> Self {
        let kinds = CallerKind::ALL
            .into_iter()
            .map(|k| {
                let mut ceiling = scope_set(default_ceiling(k));
                if k == CallerKind::Install {
                    for s in scope_set(&INSTALL_ONLY_SCOPES).iter() {
                        ceiling.insert(s.clone());
                    }
                }
                (k, KindPolicy { ceiling, defaults: scope_set(default_defaults(k)) })
            })
            .collect();
        Policy {
            catalogue: scope_set(&CATALOGUE),
            gated: DEFAULT_GATED_ACTIONS.iter().map(|s| (*s).to_owned()).collect(),
            kinds,
            access_token_ttl_secs: 300,
            capability_ttl_secs: 300,
            approval_ttl_secs: 3600,
            max_pending_per_requester: 20,
            passkey_actions: BTreeSet::new(),
            console_passkey_only: false,
            stale_after_days: None,
            quorum: BTreeMap::new(),
            times: BTreeMap::new(),
            require_dpop: BTreeSet::new(),
            rules: None,
        }
    }
}

impl Policy {
    /// Whether decisions on `action` need a passkey.
    pub fn needs_passkey(&self, action: &str) -> bool {
        self.passkey_actions.contains(action)
    }

    /// The default policy with the file's overrides applied, then checked.
    pub fn from_file(file: &PolicyFile) -> Result<Self, PolicyError> {
        let mut p = Policy::default();
        if let Some(extra) = &file.extra_scopes {
            for s in parse_scopes("extra_scopes", extra)?.iter() {
                p.catalogue.insert(s.clone());
            }
        }
        if let Some(gated) = &file.gated_actions {
            p.gated = gated
                .iter()
                .map(|a| {
                    Action::parse(a)
                        .map(|a| a.as_str().to_owned())
                        .map_err(|e| PolicyError(format!("gated_actions: {e}")))
                })
                .collect::<Result<_, _>>()?;
        }
        if let Some(v) = file.access_token_ttl_secs {
            p.access_token_ttl_secs = v;
        }
        if let Some(v) = file.capability_ttl_secs {
            p.capability_ttl_secs = v;
        }
        if let Some(v) = file.approval_ttl_secs {
            p.approval_ttl_secs = v;
        }
        if let Some(v) = file.max_pending_per_requester {
            p.max_pending_per_requester = v;
        }
        if let Some(v) = &file.passkey_actions {
            p.passkey_actions = v.iter().cloned().collect();
        }
        if let Some(v) = file.console_passkey_only {
            p.console_passkey_only = v;
        }
        p.stale_after_days = file.stale_after_days;
        if let Some(q) = &file.quorum {
            p.quorum = q
                .iter()
                .map(|(action, q)| {
                    let reqs = match q {
                        QuorumFile::Count(n) => vec![Requirement { group: None, count: *n }],
                        QuorumFile::Groups(list) => list.clone(),
                    };
                    (action.clone(), reqs)
                })
                .collect();
        }
        if let Some(a) = &file.actions {
            p.times = a
                .iter()
                .map(|(action, t)| {
                    (
                        action.clone(),
                        ActionTimes {
                            pending_ttl_secs: t.pending_ttl_secs,
                            capability_ttl_secs: t.capability_ttl_secs,
                        },
                    )
                })
                .collect();
        }
        if let Some(kinds) = &file.kinds {
            for (kind, kf) in kinds {
                let entry = p
                    .kinds
                    .entry(*kind)
                    .or_insert_with(|| KindPolicy { ceiling: ScopeSet::default(), defaults: ScopeSet::default() });
                if let Some(c) = &kf.ceiling {
                    entry.ceiling = parse_scopes(&format!("kinds.{kind}.ceiling"), c)?;
                }
                if let Some(d) = &kf.defaults {
                    entry.defaults = parse_scopes(&format!("kinds.{kind}.defaults"), d)?;
                }
                match kf.require_dpop {
                    Some(true) => {
                        p.require_dpop.insert(*kind);
                    }
                    Some(false) => {
                        p.require_dpop.remove(kind);
                    }
                    None => {}
                }
            }
        }
        p.check()?;
        Ok(p)
    }

    /// Whether every client of `kind` needs a DPoP proof to get a token.
    pub fn requires_dpop(&self, kind: CallerKind) -> bool {
        self.require_dpop.contains(&kind)
    }

    /// Checks the rules that no configuration may break.
    pub fn check(&self) -> Result<(), PolicyError> {
        for (what, ttl, max) in [
            ("access_token_ttl_secs", self.access_token_ttl_secs, MAX_LIFETIME_SECS),
            ("capability_ttl_secs", self.capability_ttl_secs, MAX_LIFETIME_SECS),
            ("approval_ttl_secs", self.approval_ttl_secs, 7 * 24 * 3600),
            ("max_pending_per_requester", self.max_pending_per_requester, 10_000),
        ] {
            if !(1..=max).contains(&ttl) {
                return Err(PolicyError(format!("{what} must be between 1 and {max}")));
            }
        }
        if let Some(d) = self.stale_after_days
            && !(1..=3650).contains(&d)
        {
            return Err(PolicyError("stale_after_days must be between 1 and 3650".into()));
        }
        for g in &self.gated {
            if self.catalogue.contains(g) {
                return Err(PolicyError(format!("gated action {g:?} cannot also be a scope")));
            }
        }
        for action in &self.passkey_actions {
            if !self.gated.contains(action) {
                return Err(PolicyError(format!("passkey_actions names {action:?}, which is not a gated action")));
            }
        }
        for (action, reqs) in &self.quorum {
            if !self.gated.contains(action) {
                return Err(PolicyError(format!("quorum names {action:?}, which is not a gated action")));
            }
            if reqs.is_empty() {
                return Err(PolicyError(format!("quorum for {action:?} lists no requirement")));
            }
            let total: u32 = reqs.iter().map(|r| r.count).sum();
            if reqs.iter().any(|r| r.count == 0) || !(1..=16).contains(&total) {
                return Err(PolicyError(format!(
                    "quorum for {action:?} must be between 1 and 16 operators, each requirement at least 1"
                )));
            }
            let mut seen = BTreeSet::new();
            for r in reqs {
                if !seen.insert(&r.group) {
                    let which = r.group.as_ref().map_or("any operator".to_owned(), |g| format!("group {g:?}"));
                    return Err(PolicyError(format!("quorum for {action:?} names {which} twice; add up the counts")));
                }
            }
        }
        for (action, t) in &self.times {
            if !self.gated.contains(action) {
                return Err(PolicyError(format!("actions.{action} names {action:?}, which is not a gated action")));
            }
            for (what, v, max) in [
                ("pending_ttl_secs", t.pending_ttl_secs, 7 * 24 * 3600),
                ("capability_ttl_secs", t.capability_ttl_secs, MAX_LIFETIME_SECS),
            ] {
                if let Some(v) = v
                    && !(1..=max).contains(&v)
                {
                    return Err(PolicyError(format!("actions.{action}.{what} must be between 1 and {max}")));
                }
            }
        }
        for (kind, kp) in &self.kinds {
            if !kp.ceiling.is_subset(&self.catalogue) {
                let extra = kp.ceiling.difference(&self.catalogue);
                return Err(PolicyError(format!("{kind} ceiling names scopes outside the catalogue: {extra}")));
            }
            if !kp.defaults.is_subset(&kp.ceiling) {
                let extra = kp.defaults.difference(&kp.ceiling);
                return Err(PolicyError(format!("{kind} defaults exceed its ceiling: {extra}")));
            }
            if *kind != CallerKind::Operator {
                for s in OPERATOR_ONLY_SCOPES {
                    if kp.ceiling.contains(s) {
                        return Err(PolicyError(format!(
                            "only operators may hold {s}; remove it from the {kind} ceiling"
                        )));
                    }
                }
            }
            if *kind != CallerKind::Install {
                for s in INSTALL_ONLY_SCOPES {
                    if kp.ceiling.contains(s) {
                        return Err(PolicyError(format!(
                            "only install clients may hold {s}; remove it from the {kind} ceiling"
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether `name` is a gated action.
    pub fn is_gated(&self, name: &str) -> bool {
        self.gated.contains(name)
    }

    /// The gated actions.
    pub fn gated_actions(&self) -> impl Iterator<Item = &str> {
        self.gated.iter().map(String::as_str)
    }

    /// The scope catalogue.
    pub fn catalogue(&self) -> &ScopeSet {
        &self.catalogue
    }

    /// The kind's ceiling (empty if the kind is unknown to the policy).
    pub fn ceiling(&self, kind: CallerKind) -> ScopeSet {
        self.kinds.get(&kind).map(|k| k.ceiling.clone()).unwrap_or_default()
    }

    /// The kind's default scopes.
    pub fn defaults(&self, kind: CallerKind) -> ScopeSet {
        self.kinds.get(&kind).map(|k| k.defaults.clone()).unwrap_or_default()
    }

    /// The quorum for a gated action: how many distinct operators in all (default 1).
    pub fn quorum(&self, action: &str) -> u32 {
        self.quorum.get(action).map_or(1, |reqs| reqs.iter().map(|r| r.count).sum())
    }

    /// The quorum for a gated action as requirements that must all be met (default: one
    /// operator, of any group).
    pub fn requirements(&self, action: &str) -> Vec<Requirement> {
        self.quorum.get(action).cloned().unwrap_or_else(|| vec![Requirement { group: None, count: 1 }])
    }

    /// How long a request for `action` stays pending, seconds.
    pub fn pending_ttl(&self, action: &str) -> i64 {
        self.times.get(action).and_then(|t| t.pending_ttl_secs).unwrap_or(self.approval_ttl_secs)
    }

    /// How long a capability for `action` lives once approved, seconds.
    pub fn capability_ttl(&self, action: &str) -> i64 {
        self.times.get(action).and_then(|t| t.capability_ttl_secs).unwrap_or(self.capability_ttl_secs)
    }

    /// What a client of `kind` registered with `granted` may be issued now: the
    /// registration, within today's ceiling, never a gated action.
    pub fn allowed(&self, kind: CallerKind, granted: &ScopeSet) -> ScopeSet {
        // Every token request asks this: the ceiling is read in place, not copied.
        let Some(k) = self.kinds.get(&kind) else { return ScopeSet::default() };
        let mut s = granted.intersection(&k.ceiling);
        s.retain(|sc| !self.is_gated(sc.as_str()));
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_hold_the_rules() {
        let p = Policy::default();
        p.check().unwrap();
        for kind in CallerKind::ALL {
            for g in DEFAULT_GATED_ACTIONS {
                assert!(!p.ceiling(kind).contains(g));
            }
            let decide = p.ceiling(kind).contains("approvals:decide");
            assert_eq!(decide, kind == CallerKind::Operator, "{kind}");
        }
        assert_eq!(p.defaults(CallerKind::Agent).to_string(), "approvals:create workspaces:read workspaces:write");
        assert_eq!(p.defaults(CallerKind::Service).to_string(), "tokens:introspect");
        assert_eq!(p.quorum("secret_write"), 1);
    }

    #[test]
    fn configuration_cannot_break_the_rules() {
        let give_decide = PolicyFile {
            kinds: Some(
                [(
                    CallerKind::Agent,
                    KindFile {
                        ceiling: Some(vec!["approvals:decide".into()]),
                        defaults: Some(vec![]),
                        require_dpop: None,
                    },
                )]
                .into(),
            ),
            ..Default::default()
        };
        assert!(Policy::from_file(&give_decide).unwrap_err().0.contains("only operators"));
        let gated_scope = PolicyFile { extra_scopes: Some(vec!["secret_write".into()]), ..Default::default() };
        assert!(Policy::from_file(&gated_scope).is_err());
        let long = PolicyFile { access_token_ttl_secs: Some(901), ..Default::default() };
        assert!(Policy::from_file(&long).is_err());
        let q = PolicyFile {
            quorum: Some([("secret_write".to_owned(), QuorumFile::Count(2))].into()),
            ..Default::default()
        };
        assert_eq!(Policy::from_file(&q).unwrap().quorum("secret_write"), 2);
    }
}

#[cfg(test)]
mod file_tests {
    use super::*;

    fn parse(text: &str) -> Result<Policy, String> {
        let file: PolicyFile = toml::from_str(text).map_err(|e| e.to_string())?;
        Policy::from_file(&file).map_err(|e| e.0)
    }

    #[test]
    fn quorum_is_a_number_or_per_group_requirements_and_times_are_per_action() {
        let p = parse(
            r#"
            [quorum]
            org_token_mint = 2
            [[quorum.secret_write]]
            group = "security"
            count = 2
            [[quorum.secret_write]]
            group = "platform"
            count = 1
            [actions.secret_write]
            pending_ttl_secs = 600
            capability_ttl_secs = 120
            "#,
        )
        .unwrap();
        assert_eq!(p.quorum("org_token_mint"), 2);
        assert_eq!(p.requirements("org_token_mint"), [Requirement { group: None, count: 2 }]);
        assert_eq!(p.quorum("secret_write"), 3);
        let reqs = p.requirements("secret_write");
        let groups: Vec<(Option<&str>, u32)> =
            reqs.iter().map(|r| (r.group.as_ref().map(|g| g.as_str()), r.count)).collect();
        assert_eq!(groups, [(Some("security"), 2), (Some("platform"), 1)]);
        assert_eq!((p.pending_ttl("secret_write"), p.capability_ttl("secret_write")), (600, 120));
        assert_eq!((p.pending_ttl("workspace_delete"), p.capability_ttl("workspace_delete")), (3600, 300));
    }

    #[test]
    fn a_broken_quorum_or_time_is_refused_naming_it() {
        for (text, says) in [
            ("[[quorum.secret_write]]\ngrup = \"security\"\ncount = 1", "unknown field `grup`"),
            ("[[quorum.secret_write]]\ngroup = \"has space\"\ncount = 1", "group"),
            ("[[quorum.secret_write]]\ngroup = \"s\"\ncount = 0", "at least 1"),
            ("[[quorum.secret_write]]\ngroup = \"s\"\ncount = 17", "between 1 and 16"),
            (
                "[[quorum.secret_write]]\ngroup = \"s\"\ncount = 1\n[[quorum.secret_write]]\ngroup = \"s\"\ncount = 1",
                "twice",
            ),
            ("[[quorum.not_gated]]\ngroup = \"s\"\ncount = 1", "not a gated action"),
            ("[quorum]\nsecret_write = \"two\"", "a number of operators"),
            ("[actions.secret_write]\ncapability_ttl_secs = 901", "capability_ttl_secs must be between 1 and 900"),
            ("[actions.secret_write]\npending_secs = 60", "unknown field `pending_secs`"),
            ("[actions.nope]\npending_ttl_secs = 60", "not a gated action"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(says), "{text}: {e}");
        }
    }
}
