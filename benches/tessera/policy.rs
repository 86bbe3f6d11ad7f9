//! The approval policy's cost (design §19): Cedar evaluation per decision in process, and the
//! approval round trip over HTTP with a ten-policy file against a broker with none, the two
//! brokers side by side on the same core, measured in alternating rounds.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tessera::domain::CallerKind;
use tessera::domain::client::ClientRecord;
use tessera::policy::rules::{ApprovalFacts, Facts, RuleAction, Rules};

use super::load::round;
use super::procs::{self, Pinning};
use super::{Opts, approval_round_trips};

/// Ten policies of the kinds an operator writes: time windows, groups, owners, parameters,
/// actors. Each is evaluated on every decision; the bench operator is permitted by one.
pub const TEN_POLICIES: &str = r#"
@id("org-token-mint-in-office-hours")
forbid (principal, action == Tessera::Action::"request", resource)
when { resource.action == "org_token_mint" }
unless { context.now.hour >= 8 && context.now.hour < 18 && !["Saturday", "Sunday"].contains(context.now.weekday) };

@id("no-prod-secrets-from-delegated-agents")
forbid (principal, action == Tessera::Action::"request", resource)
when { resource.action == "secret_write" && resource.hasTag("key") && resource.getTag("key") like "PROD_*" && !context.requester_actors.isEmpty() };

@id("reason-required-for-deprovision")
forbid (principal, action == Tessera::Action::"request", resource)
when { resource.action == "workspace_deprovision" && context.reason like "*test*" };

@id("security-decides-prod-secrets")
permit (principal in Tessera::Group::"security", action == Tessera::Action::"decide", resource)
when { resource.action == "secret_write" && resource.params like "*PROD_*" };

@id("operators-decide-secret-writes")
permit (principal, action == Tessera::Action::"decide", resource)
when { principal.kind == "operator" && resource.action == "secret_write" };

@id("platform-decides-workspace-deletion")
permit (principal in Tessera::Group::"platform", action == Tessera::Action::"decide", resource)
when { resource.action == "workspace_delete" || resource.action == "workspace_deprovision" };

@id("independent-of-the-owner")
forbid (principal, action == Tessera::Action::"decide", resource)
when { principal has owner && resource.requester has owner && principal.owner == resource.requester.owner };

@id("same-tenant-only")
forbid (principal, action == Tessera::Action::"decide", resource)
unless { principal.tenant == resource.tenant };

@id("no-decisions-at-night-on-mints")
forbid (principal, action == Tessera::Action::"decide", resource)
when { resource.action == "org_token_mint" && (context.now.hour < 6 || context.now.hour >= 22) };

@id("oncall-breaks-glass")
permit (principal in Tessera::Group::"oncall", action == Tessera::Action::"break_glass", resource)
when { resource.action != "org_token_mint" };
"#;

fn client(id: &str, kind: CallerKind, groups: &[&str], owner: Option<&str>) -> ClientRecord {
    ClientRecord {
        client_id: id.parse().unwrap(),
        tenant: "org-bench".parse().unwrap(),
        kind,
        name: id.to_owned(),
        workspace: None,
        scopes: tessera::domain::ScopeSet::default(),
        allow_bypass: vec![],
        delegates: vec![],
        require_dpop: false,
        groups: groups.iter().map(|g| g.parse().unwrap()).collect(),
        owner: owner.map(|o| o.parse().unwrap()),
        disabled: false,
        created_at: 0,
    }
}

/// Microseconds per evaluation of `decide` and of `request` against the ten policies, in
/// process (the entities and the request built each time, as the broker does).
pub fn evaluation_us(budget: Duration) -> (f64, f64) {
    let rules = Rules::parse(TEN_POLICIES, "bench").expect("the bench policies validate");
    let agent: &'static ClientRecord =
        Box::leak(Box::new(client("tc_agent", CallerKind::Agent, &[], Some("sam@org.example"))));
    let op: &'static ClientRecord =
        Box::leak(Box::new(client("tc_op", CallerKind::Operator, &["security", "oncall"], Some("ana@org.example"))));
    let params = r#"{"key":"PROD_STRIPE","value":{"$secret":{"fingerprint":"sha256:x","length":32}}}"#;
    let facts = |principal: &'static ClientRecord| Facts {
        principal,
        approval: ApprovalFacts {
            approval_id: "apr_bench",
            action: "secret_write",
            resource: "workspaces/ws-1/secrets/PROD_STRIPE",
            tenant: "org-bench",
            params,
            reason: "rotate the leaked key",
        },
        requester: agent,
        actors: &[],
        now: 1_796_637_600,
    };
    let time = |action: RuleAction, principal: &'static ClientRecord| {
        let f = facts(principal);
        assert!(rules.evaluate(action, &f).allowed, "the bench request is allowed");
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < budget {
            for _ in 0..100 {
                std::hint::black_box(rules.evaluate(action, std::hint::black_box(&f)));
            }
            n += 100;
        }
        start.elapsed().as_secs_f64() * 1e6 / n as f64
    };
    (time(RuleAction::Decide, op), time(RuleAction::Request, agent))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { f64::NAN } else { v[v.len() / 2] }
}

/// Two brokers, one without a policy file and one with [`TEN_POLICIES`], both on core 0; the
/// approval round trip on each in turn, `rounds` times.
pub async fn policy_step(opts: &Opts, pin: &Pinning, dir: &Path) -> Value {
    let (decide_us, request_us) =
        evaluation_us(if opts.quick { Duration::from_millis(300) } else { Duration::from_secs(2) });
    eprintln!("policy: Cedar evaluation {decide_us:.1} µs per decision, {request_us:.1} µs per request (ten policies)");
    let rules_path = dir.join("ten-policies.cedar");
    std::fs::write(&rules_path, TEN_POLICIES).unwrap();
    let rules_env = rules_path.to_str().unwrap().to_owned();
    let mut brokers = Vec::new();
    for (label, env) in [("no policy", vec![]), ("ten policies", vec![("TESSERA_POLICY_FILE", rules_env.as_str())])] {
        let sub = dir.join(label.replace(' ', "-"));
        std::fs::create_dir_all(&sub).unwrap();
        let url = format!("sqlite://{}/tessera.db", sub.display());
        let agent = procs::create_client(&sub, &url, "agent", "bench-agent").unwrap();
        let operator = procs::create_client(&sub, &url, "operator", "bench-operator").unwrap();
        let mut server = procs::start_broker(pin, &sub, &url, &label.replace(' ', "-"), &env).unwrap();
        server.wait_ready("/readyz").await.unwrap();
        brokers.push((label, server, agent, operator));
    }
    let rounds = if opts.quick { 2 } else { 4 };
    let budget = if opts.quick { Duration::from_millis(800) } else { Duration::from_secs(3) };
    let mut per_round = Vec::new();
    let mut ratios_p99 = Vec::new();
    let mut ratios_p50 = Vec::new();
    for r in 0..rounds {
        // Alternate which goes first, so neither always has the warmer machine.
        let order: Vec<usize> = if r % 2 == 0 { vec![0, 1] } else { vec![1, 0] };
        let mut got = [Value::Null, Value::Null];
        for i in order {
            let (_, server, agent, operator) = &brokers[i];
            got[i] = approval_round_trips(server.addr, agent, operator, budget).await.unwrap();
        }
        let p = |v: &Value, q: &str| v["round_trip"][q].as_f64().unwrap_or(f64::NAN);
        let (p99, p50) = (p(&got[1], "p99_ms") / p(&got[0], "p99_ms"), p(&got[1], "p50_ms") / p(&got[0], "p50_ms"));
        eprintln!(
            "  round {r}: p99 {} ms without, {} ms with ten policies ({p99:.3}×); p50 {p50:.3}×",
            p(&got[0], "p99_ms"),
            p(&got[1], "p99_ms")
        );
        ratios_p99.push(p99);
        ratios_p50.push(p50);
        per_round
            .push(json!({"without": got[0]["round_trip"], "with": got[1]["round_trip"], "p99_ratio": round(p99, 3)}));
    }
    for (_, server, _, _) in &mut brokers {
        server.stop();
    }
    json!({
        "cedar_decide_us": round(decide_us, 2),
        "cedar_request_us": round(request_us, 2),
        "rounds": per_round,
        "p99_ratio_median": round(median(ratios_p99), 3),
        "p50_ratio_median": round(median(ratios_p50), 3),
    })
}
