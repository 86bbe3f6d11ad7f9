//! Approval rules: Cedar policies (design §19), validated against the shipped schema
//! (`policy/tessera.cedarschema`) when they are loaded, so a rule that names an attribute the
//! broker never sets, or compares a number with a string, is refused before it can decide
//! anything.
//!
//! Three actions. `request`: allowed unless a `forbid` applies. `decide` and `break_glass`:
//! refused unless a `permit` applies and no `forbid` does. A policy that cannot be evaluated
//! (an overflow, say) refuses: nothing is let through because a rule failed.

use std::collections::HashMap;
use std::str::FromStr;

use cedar_policy::{
    Authorizer, Context, Decision, Effect, Entities, Entity, EntityId, EntityTypeName, EntityUid, PolicySet, Request,
    RestrictedExpression, Schema, ValidationMode, Validator,
};

use super::PolicyError;
use crate::domain::client::ClientRecord;

/// The schema every policy file is validated against.
pub const SCHEMA: &str = include_str!("../../policy/tessera.cedarschema");

/// What a rule is asked about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleAction {
    /// An approval is being created.
    Request,
    /// An operator decides.
    Decide,
    /// An operator approves alone.
    BreakGlass,
}

impl RuleAction {
    /// The Cedar action id.
    pub fn as_str(self) -> &'static str {
        match self {
            RuleAction::Request => "request",
            RuleAction::Decide => "decide",
            RuleAction::BreakGlass => "break_glass",
        }
    }
}

/// The approval a rule is asked about.
#[derive(Debug, Clone, Copy)]
pub struct ApprovalFacts<'a> {
    /// Its id.
    pub approval_id: &'a str,
    /// The gated action.
    pub action: &'a str,
    /// Its resource.
    pub resource: &'a str,
    /// Its tenant.
    pub tenant: &'a str,
    /// The presented parameters, canonical JSON text.
    pub params: &'a str,
    /// The requester's reason.
    pub reason: &'a str,
}

/// Everything one evaluation needs: who asks, about what, with whom behind the request.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// The principal: the requester for `request`, the operator for `decide`.
    pub principal: &'a ClientRecord,
    /// The approval.
    pub approval: ApprovalFacts<'a>,
    /// The requester's registration.
    pub requester: &'a ClientRecord,
    /// The actors' registrations, when the request was delegated.
    pub actors: &'a [ClientRecord],
    /// The broker's clock, Unix seconds.
    pub now: i64,
}

/// The answer, with the `@id` of every policy that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Whether the action may go ahead.
    pub allowed: bool,
    /// The permits that applied (on an allowed answer).
    pub permits: Vec<String>,
    /// The forbids that applied.
    pub forbids: Vec<String>,
    /// Policies that could not be evaluated, each with why.
    pub errors: Vec<String>,
}

/// One policy's part in an answer, for `tessera policy explain`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PolicyVerdict {
    /// Its `@id`.
    pub id: String,
    /// `permit` or `forbid`.
    pub effect: &'static str,
    /// Whether its scope and conditions hold for this request.
    pub applies: bool,
    /// Why it could not be evaluated, if it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A validated policy file.
#[derive(Clone)]
pub struct Rules {
    set: PolicySet,
    schema: Schema,
    /// The file's name, for messages.
    source: String,
    text: String,
    ids: Vec<String>,
}

impl std::fmt::Debug for Rules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rules").field("source", &self.source).field("policies", &self.ids).finish()
    }
}

impl PartialEq for Rules {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}
impl Eq for Rules {}

fn schema() -> Result<Schema, PolicyError> {
    Schema::from_cedarschema_str(SCHEMA)
        .map(|(s, _)| s)
        .map_err(|e| PolicyError(format!("the shipped approval-policy schema does not parse: {e}")))
}

/// One line: Cedar's messages can span several.
fn one_line(s: impl std::fmt::Display) -> String {
    s.to_string().split_whitespace().collect::<Vec<_>>().join(" ")
}

impl Rules {
    /// Reads and validates the policy file at `path`.
    pub fn load(path: &std::path::Path) -> Result<Rules, PolicyError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| PolicyError(format!("policy_file {}: {e}", path.display())))?;
        Rules::parse(&text, &path.display().to_string())
    }

    /// Parses and validates policy text; `source` names it in messages. Every policy must
    /// validate in Cedar's strict mode; the error names the first that does not by its `@id`.
    pub fn parse(text: &str, source: &str) -> Result<Rules, PolicyError> {
        let set = PolicySet::from_str(text)
            .map_err(|e| PolicyError(format!("{source}: does not parse as Cedar: {}", one_line(e))))?;
        let schema = schema()?;
        let mut ids = Vec::new();
        for p in set.policies() {
            let id = p.annotation("id").map_or_else(|| p.id().to_string(), str::to_owned);
            if ids.contains(&id) {
                return Err(PolicyError(format!("{source}: two policies are named @id({id:?})")));
            }
            ids.push(id);
        }
        if ids.is_empty() {
            return Err(PolicyError(format!("{source}: holds no policy")));
        }
        let result = Validator::new(schema.clone()).validate(&set, ValidationMode::Strict);
        if let Some(e) = result.validation_errors().next() {
            let id = set.annotation(e.policy_id(), "id").map_or_else(|| e.policy_id().to_string(), str::to_owned);
            return Err(PolicyError(format!(
                "{source}: policy {id:?} does not validate against the schema: {}",
                one_line(e)
            )));
        }
        Ok(Rules { set, schema, source: source.to_owned(), text: text.to_owned(), ids })
    }

    /// The policies' `@id`s, in file order.
    pub fn ids(&self) -> &[String] {
        &self.ids
    }

    /// The file the rules came from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether any policy could ever permit `action` (a file with none for `decide` leaves
    /// every request undecidable).
    pub fn mentions_permit_for(&self, action: RuleAction) -> bool {
        let uid = action_uid(action);
        self.set.policies().any(|p| {
            p.effect() == Effect::Permit
                && match p.action_constraint() {
                    cedar_policy::ActionConstraint::Any => true,
                    cedar_policy::ActionConstraint::Eq(a) => a == uid,
                    cedar_policy::ActionConstraint::In(list) => list.contains(&uid),
                }
        })
    }

    fn name_of(&self, id: &cedar_policy::PolicyId) -> String {
        self.set.annotation(id, "id").map_or_else(|| id.to_string(), str::to_owned)
    }

    fn request(&self, action: RuleAction, facts: &Facts<'_>) -> Result<(Request, Entities), String> {
        let entities = entities(facts, &self.schema)?;
        let context = context(facts)?;
        let request = Request::new(
            client_uid(facts.principal.client_id.as_str())?,
            action_uid(action),
            approval_uid(facts.approval.approval_id)?,
            context,
            Some(&self.schema),
        )
        .map_err(one_line)?;
        Ok((request, entities))
    }

    /// Asks the rules whether `action` may go ahead.
    pub fn evaluate(&self, action: RuleAction, facts: &Facts<'_>) -> Outcome {
        let (request, entities) = match self.request(action, facts) {
            Ok(r) => r,
            Err(e) => {
                return Outcome {
                    allowed: false,
                    permits: vec![],
                    forbids: vec![],
                    errors: vec![format!("the request could not be put to the rules: {e}")],
                };
            }
        };
        let response = Authorizer::new().is_authorized(&request, &self.set, &entities);
        let reasons: Vec<String> = response.diagnostics().reason().map(|id| self.name_of(id)).collect();
        let errors: Vec<String> = response.diagnostics().errors().map(one_line).collect();
        let (permits, forbids) = match response.decision() {
            Decision::Allow => (reasons, vec![]),
            Decision::Deny => (vec![], reasons),
        };
        let allowed = errors.is_empty()
            && match action {
                // A request stands unless a forbid applies.
                RuleAction::Request => forbids.is_empty(),
                RuleAction::Decide | RuleAction::BreakGlass => response.decision() == Decision::Allow,
            };
        Outcome { allowed, permits, forbids, errors }
    }

    /// Each policy's part in an answer, for someone debugging a rule.
    pub fn explain(&self, action: RuleAction, facts: &Facts<'_>) -> Result<Vec<PolicyVerdict>, PolicyError> {
        let (request, entities) = self.request(action, facts).map_err(PolicyError)?;
        let mut out = Vec::new();
        for p in self.set.policies() {
            let mut one = PolicySet::new();
            one.add(p.clone()).map_err(|e| PolicyError(one_line(e)))?;
            let r = Authorizer::new().is_authorized(&request, &one, &entities);
            let error = r.diagnostics().errors().next().map(one_line);
            let applies = error.is_none() && r.diagnostics().reason().next().is_some();
            let effect = if p.effect() == Effect::Permit { "permit" } else { "forbid" };
            out.push(PolicyVerdict { id: self.name_of(p.id()), effect, applies, error });
        }
        Ok(out)
    }
}

fn uid(kind: &str, id: &str) -> Result<EntityUid, String> {
    let t = EntityTypeName::from_str(kind).map_err(one_line)?;
    let id = EntityId::from_str(id).map_err(|e| one_line(format!("{e:?}")))?;
    Ok(EntityUid::from_type_name_and_id(t, id))
}

fn client_uid(id: &str) -> Result<EntityUid, String> {
    uid("Tessera::Client", id)
}

fn approval_uid(id: &str) -> Result<EntityUid, String> {
    uid("Tessera::Approval", id)
}

fn action_uid(action: RuleAction) -> EntityUid {
    // Both parts are fixed, valid names: this cannot fail.
    let t = EntityTypeName::from_str("Tessera::Action").unwrap_or_else(|_| unreachable!("a fixed valid type name"));
    EntityUid::from_type_name_and_id(t, EntityId::new(action.as_str()))
}

fn string(s: &str) -> RestrictedExpression {
    RestrictedExpression::new_string(s.to_owned())
}

fn client_entity(c: &ClientRecord) -> Result<(Entity, Vec<EntityUid>), String> {
    let groups: Vec<EntityUid> =
        c.groups.iter().map(|g| uid("Tessera::Group", g.as_str())).collect::<Result<_, _>>()?;
    let mut attrs: HashMap<String, RestrictedExpression> = HashMap::from([
        ("kind".to_owned(), string(c.kind.as_str())),
        ("tenant".to_owned(), string(c.tenant.as_str())),
        (
            "groups".to_owned(),
            RestrictedExpression::new_set(groups.iter().cloned().map(RestrictedExpression::new_entity_uid)),
        ),
    ]);
    if let Some(w) = &c.workspace {
        attrs.insert("workspace".to_owned(), string(w.as_str()));
    }
    if let Some(o) = &c.owner {
        attrs.insert("owner".to_owned(), string(o.as_str()));
    }
    let entity =
        Entity::new(client_uid(c.client_id.as_str())?, attrs, groups.iter().cloned().collect()).map_err(one_line)?;
    Ok((entity, groups))
}

fn entities(facts: &Facts<'_>, schema: &Schema) -> Result<Entities, String> {
    let mut all: HashMap<EntityUid, Entity> = HashMap::new();
    let mut groups = Vec::new();
    for c in std::iter::once(facts.principal).chain(std::iter::once(facts.requester)).chain(facts.actors.iter()) {
        let (e, g) = client_entity(c)?;
        groups.extend(g);
        all.insert(e.uid(), e);
    }
    for g in groups {
        all.entry(g.clone()).or_insert_with(|| Entity::new_no_attrs(g, Default::default()));
    }
    let a = facts.approval;
    let tags = params_tags(a.params);
    let approval = Entity::new_with_tags(
        approval_uid(a.approval_id)?,
        [
            ("action".to_owned(), string(a.action)),
            ("resource".to_owned(), string(a.resource)),
            ("tenant".to_owned(), string(a.tenant)),
            (
                "requester".to_owned(),
                RestrictedExpression::new_entity_uid(client_uid(facts.requester.client_id.as_str())?),
            ),
            ("params".to_owned(), string(a.params)),
        ],
        [],
        tags,
    )
    .map_err(one_line)?;
    all.insert(approval.uid(), approval);
    Entities::from_entities(all.into_values(), Some(schema)).map_err(one_line)
}

/// Each top-level parameter as a tag: a string as it is, anything else as canonical JSON.
fn params_tags(params: &str) -> Vec<(String, RestrictedExpression)> {
    let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(params) else {
        return Vec::new();
    };
    map.iter()
        .map(|(k, v)| {
            let text = match v {
                serde_json::Value::String(s) => s.clone(),
                other => crate::token::jcs::canonicalize(other),
            };
            (k.clone(), RestrictedExpression::new_string(text))
        })
        .collect()
}

const WEEKDAYS: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];

fn context(facts: &Facts<'_>) -> Result<Context, String> {
    let t = time::OffsetDateTime::from_unix_timestamp(facts.now).map_err(one_line)?;
    let rfc3339 = t.format(&time::format_description::well_known::Rfc3339).map_err(one_line)?;
    let weekday = WEEKDAYS[usize::from(t.weekday().number_days_from_monday())];
    let now = RestrictedExpression::new_record([
        ("rfc3339".to_owned(), string(&rfc3339)),
        ("hour".to_owned(), RestrictedExpression::new_long(i64::from(t.hour()))),
        ("weekday".to_owned(), string(weekday)),
    ])
    .map_err(one_line)?;
    let actors = facts
        .actors
        .iter()
        .map(|a| client_uid(a.client_id.as_str()).map(RestrictedExpression::new_entity_uid))
        .collect::<Result<Vec<_>, _>>()?;
    Context::from_pairs([
        ("now".to_owned(), now),
        ("reason".to_owned(), string(facts.approval.reason)),
        ("requester_actors".to_owned(), RestrictedExpression::new_set(actors)),
    ])
    .map_err(one_line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::CallerKind;

    fn client(id: &str, kind: CallerKind, groups: &[&str], owner: Option<&str>) -> ClientRecord {
        ClientRecord {
            client_id: id.parse().unwrap(),
            tenant: "acme".parse().unwrap(),
            kind,
            name: id.to_owned(),
            workspace: None,
            scopes: crate::domain::ScopeSet::default(),
            allow_bypass: vec![],
            delegates: vec![],
            require_dpop: false,
            groups: groups.iter().map(|g| g.parse().unwrap()).collect(),
            owner: owner.map(|o| o.parse().unwrap()),
            disabled: false,
            created_at: 0,
        }
    }

    fn facts<'a>(principal: &'a ClientRecord, requester: &'a ClientRecord, action: &'a str, now: i64) -> Facts<'a> {
        Facts {
            principal,
            approval: ApprovalFacts {
                approval_id: "ap_1",
                action,
                resource: "workspaces/ws-1",
                tenant: "acme",
                params: r#"{"name":"prod-db","size":3}"#,
                reason: "rotate",
            },
            requester,
            actors: &[],
            now,
        }
    }

    #[test]
    fn the_shipped_schema_and_examples_validate() {
        schema().unwrap();
        for (name, text) in [
            ("secret-writes-need-security.cedar", include_str!("../../policy/secret-writes-need-security.cedar")),
            ("org-token-mint-in-office-hours.cedar", include_str!("../../policy/org-token-mint-in-office-hours.cedar")),
            (
                "workspace-delete-needs-independent-platform.cedar",
                include_str!("../../policy/workspace-delete-needs-independent-platform.cedar"),
            ),
        ] {
            let r = Rules::parse(text, name).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(r.mentions_permit_for(RuleAction::Decide), "{name} leaves decisions to nobody");
        }
    }

    #[test]
    fn a_policy_that_does_not_validate_is_named() {
        let text = r#"
            @id("fine") permit(principal, action == Tessera::Action::"decide", resource);
            @id("typo") permit(principal, action == Tessera::Action::"decide", resource) when { resource.acton == "x" };
        "#;
        let e = Rules::parse(text, "p.cedar").unwrap_err().0;
        assert!(e.contains("\"typo\"") && e.contains("p.cedar"), "{e}");
        let e = Rules::parse(r#"@id("n") permit(principal, action, resource) when { context.now.hour == "9" };"#, "p")
            .unwrap_err()
            .0;
        assert!(e.contains("\"n\""), "{e}");
        assert!(Rules::parse("permit(principal, action, resource", "p").unwrap_err().0.contains("does not parse"));
        assert!(Rules::parse("", "p").unwrap_err().0.contains("no policy"));
        let twice = r#"@id("a") permit(principal, action, resource); @id("a") forbid(principal, action, resource);"#;
        assert!(Rules::parse(twice, "p").unwrap_err().0.contains("two policies"));
    }

    #[test]
    fn groups_owners_params_and_the_clock_reach_the_rules() {
        let text = r#"
            @id("security-decides") permit(principal in Tessera::Group::"security", action == Tessera::Action::"decide", resource);
            @id("not-own-owner") forbid(principal, action == Tessera::Action::"decide", resource)
              when { principal has owner && resource.requester has owner && principal.owner == resource.requester.owner };
            @id("no-prod-at-night") forbid(principal, action == Tessera::Action::"request", resource)
              when { resource.hasTag("name") && resource.getTag("name") like "prod-*" && context.now.hour < 8 };
            @id("weekend") forbid(principal, action == Tessera::Action::"request", resource)
              when { resource.action == "org_token_mint" && ["Saturday", "Sunday"].contains(context.now.weekday) };
        "#;
        let r = Rules::parse(text, "t").unwrap();
        let agent = client("tc_agent", CallerKind::Agent, &[], Some("ana@acme.example"));
        let sec = client("tc_sec", CallerKind::Operator, &["security"], None);
        let sec_ana = client("tc_sec_ana", CallerKind::Operator, &["security"], Some("ana@acme.example"));
        let plat = client("tc_plat", CallerKind::Operator, &["platform"], None);
        // 2026-12-07 is a Monday; 10:00 and 03:00 UTC; 2026-12-05, a Saturday.
        let (mon_10, mon_03, sat_10) = (1_796_637_600, 1_796_612_400, 1_796_464_800);
        assert!(r.evaluate(RuleAction::Decide, &facts(&sec, &agent, "secret_write", mon_10)).allowed);
        let o = r.evaluate(RuleAction::Decide, &facts(&plat, &agent, "secret_write", mon_10));
        assert!(!o.allowed && o.forbids.is_empty(), "{o:?}");
        let o = r.evaluate(RuleAction::Decide, &facts(&sec_ana, &agent, "secret_write", mon_10));
        assert_eq!((o.allowed, o.forbids.as_slice()), (false, &["not-own-owner".to_owned()][..]));
        assert!(r.evaluate(RuleAction::Request, &facts(&agent, &agent, "secret_write", mon_10)).allowed);
        let o = r.evaluate(RuleAction::Request, &facts(&agent, &agent, "secret_write", mon_03));
        assert_eq!(o.forbids, ["no-prod-at-night"]);
        let o = r.evaluate(RuleAction::Request, &facts(&agent, &agent, "org_token_mint", sat_10));
        assert_eq!(o.forbids, ["weekend"]);
        let why = r.explain(RuleAction::Decide, &facts(&sec_ana, &agent, "secret_write", mon_10)).unwrap();
        let applies: Vec<(&str, bool)> = why.iter().map(|v| (v.id.as_str(), v.applies)).collect();
        assert_eq!(
            applies,
            [("security-decides", true), ("not-own-owner", true), ("no-prod-at-night", false), ("weekend", false)]
        );
    }
}
