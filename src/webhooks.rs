//! Notifications of approvals (requested, decided, expired, break-glass; design §19): each
//! configured webhook gets a JSON POST signed with HMAC-SHA256, retried with backoff: the
//! broker's own JSON, or a Slack or Teams message that links to the console and never carries a
//! decision button. Delivery never blocks or fails the request that
//! caused it; failures are logged (the hook's host only) and counted, and a hook's queue is
//! bounded: past it the oldest notification is dropped and counted.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ring::hmac;
use serde::Deserialize;
use serde_json::Value;

/// The header carrying `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`.
pub const SIGNATURE_HEADER: &str = "Tessera-Signature";

/// A webhook's shared secret; redacted in Debug.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct WebhookSecret(String);

impl WebhookSecret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        WebhookSecret(s.into())
    }
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(***)")
    }
}

/// One `[[webhooks]]` entry.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where to POST.
    pub url: String,
    /// The HMAC key.
    pub secret: WebhookSecret,
    /// What the body is: the broker's JSON (default), or a chat message.
    #[serde(default)]
    pub format: Format,
}

/// A webhook's body format.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// `{"event", "approval", "console_url", …}`.
    #[default]
    Json,
    /// A Slack incoming-webhook message: `text` and Block Kit `blocks`.
    Slack,
    /// A Microsoft Teams incoming-webhook message: one Adaptive Card.
    Teams,
}

/// Longest piece of requester-supplied text (reason, resource) put in a chat message.
const CHAT_TEXT_CHARS: usize = 300;

fn clip(s: &str) -> String {
    let mut out: String = s.chars().filter(|c| !c.is_control() || *c == '\n').take(CHAT_TEXT_CHARS).collect();
    if s.chars().count() > CHAT_TEXT_CHARS {
        out.push('…');
    }
    out
}

/// Slack's mrkdwn control characters (its documented escapes): so text an agent wrote can
/// never become a link or a mention.
fn slack_escape(s: &str) -> String {
    clip(s).replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Markdown's control characters, escaped for a Teams TextBlock.
fn teams_escape(s: &str) -> String {
    let mut out = String::new();
    for c in clip(s).chars() {
        if "\\`*_{}[]()#+-.!<>|~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// What a chat message says of a notification: a title, facts, and the console link.
struct Said {
    title: String,
    facts: Vec<(&'static str, String)>,
    link: String,
}

fn said(payload: &Value) -> Said {
    let a = &payload["approval"];
    let t = |v: &Value| v.as_str().unwrap_or("").to_owned();
    let event = payload["event"].as_str().unwrap_or("");
    let action = t(&a["action"]);
    let title = match event {
        "approval.requested" => format!("Approval requested: {action}"),
        "approval.decided" => {
            format!("Decision on {action}: {} ({})", t(&payload["decision"]["decision"]), t(&a["status"]))
        }
        "approval.expired" => format!("Approval expired: {action}"),
        "approval.break_glass" => format!("BREAK-GLASS approval: {action}, approved by one operator alone; review it"),
        other => format!("{other}: {action}"),
    };
    let mut facts = vec![
        ("Resource", t(&a["resource"])),
        ("Requester", format!("{} ({})", t(&a["requester"]), t(&a["requester_kind"]))),
        ("Reason", t(&a["reason"])),
        ("Status", t(&a["status"])),
    ];
    if let Some(op) = payload["decision"]["operator"].as_str() {
        facts.push(("Operator", op.to_owned()));
        if let Some(note) = payload["decision"]["note"].as_str() {
            facts.push(("Note", note.to_owned()));
        }
    }
    Said { title, facts, link: t(&payload["console_url"]) }
}

/// A notification as a Slack incoming-webhook message (Block Kit `section` and `context`
/// blocks; no `actions` block, so no button decides anything from chat).
pub fn slack_message(payload: &Value) -> Value {
    let s = said(payload);
    let facts: String = s.facts.iter().map(|(k, v)| format!("*{k}:* {}\n", slack_escape(v))).collect();
    serde_json::json!({
        "text": slack_escape(&s.title),
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": format!("*{}*", slack_escape(&s.title))}},
            {"type": "section", "text": {"type": "mrkdwn", "text": facts}},
            {"type": "context", "elements": [
                {"type": "mrkdwn", "text": format!("<{}|Open it in the Tessera console> to decide.", s.link)}
            ]}
        ]
    })
}

/// A notification as a Microsoft Teams incoming-webhook message: one Adaptive Card of text
/// blocks and facts, the console link in its text; no actions.
pub fn teams_message(payload: &Value) -> Value {
    let s = said(payload);
    let facts: Vec<Value> =
        s.facts.iter().map(|(k, v)| serde_json::json!({"title": k, "value": teams_escape(v)})).collect();
    serde_json::json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": "1.4",
                "body": [
                    {"type": "TextBlock", "text": teams_escape(&s.title), "weight": "Bolder", "wrap": true},
                    {"type": "FactSet", "facts": facts},
                    {"type": "TextBlock", "text": format!("[Open it in the Tessera console]({}) to decide.", s.link), "wrap": true}
                ]
            }
        }]
    })
}

/// The body `payload` is sent as to a hook of `format`.
pub fn body_for(format: Format, payload: &Value) -> Vec<u8> {
    match format {
        Format::Json => payload.to_string().into_bytes(),
        Format::Slack => slack_message(payload).to_string().into_bytes(),
        Format::Teams => teams_message(payload).to_string().into_bytes(),
    }
}

/// The signature header value for `body` sent at `t`.
pub fn sign(secret: &WebhookSecret, t: i64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.0.as_bytes());
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(t.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    let tag = ctx.sign();
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("t={t},v1={hex}")
}

/// The host (and port) of a webhook URL: all of it that is ever logged. Chat webhooks carry
/// their secret in the path, so the path and query never reach a log line.
pub fn host_of(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => match (u.host_str(), u.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_owned(),
            (None, _) => "(no host)".to_owned(),
        },
        Err(_) => "(unparsable URL)".to_owned(),
    }
}

/// Most notifications waiting per hook; past it the oldest is dropped (and counted).
pub const QUEUE_CAP: usize = 1_000;

/// Delivers notifications in the background: one bounded queue and one worker per hook, so
/// a dead hook holds at most [`QUEUE_CAP`] notifications, never an unbounded pile of tasks.
#[derive(Debug)]
pub struct Notifier {
    hooks: Vec<Hook>,
    http: reqwest::Client,
    delivered: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    retried: AtomicU64,
    backoff: Duration,
    cap: usize,
}

#[derive(Debug)]
struct Hook {
    config: WebhookConfig,
    host: String,
    queue: Mutex<VecDeque<(Vec<u8>, String)>>,
    ready: tokio::sync::Notify,
    started: AtomicBool,
}

/// Attempts per delivery.
const ATTEMPTS: u32 = 4;

impl Notifier {
    /// A notifier for `hooks`; the first retry waits `backoff`, each next one twice as long.
    pub fn new(hooks: Vec<WebhookConfig>, backoff: Duration) -> Notifier {
        Self::with_cap(hooks, backoff, QUEUE_CAP)
    }

    /// As [`Notifier::new`], with at most `cap` notifications waiting per hook.
    pub fn with_cap(hooks: Vec<WebhookConfig>, backoff: Duration, cap: usize) -> Notifier {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        let hooks = hooks
            .into_iter()
            .map(|config| Hook {
                host: host_of(&config.url),
                config,
                queue: Mutex::new(VecDeque::new()),
                ready: tokio::sync::Notify::new(),
                started: AtomicBool::new(false),
            })
            .collect();
        Notifier {
            hooks,
            http,
            delivered: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            backoff,
            cap: cap.max(1),
        }
    }

    /// Whether no hook is configured (nothing to notify).
    pub fn is_empty(&self) -> bool {
        self.hooks.is_empty()
    }

    /// Deliveries that succeeded.
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Deliveries that failed after every retry.
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// Notifications dropped, oldest first, because a hook's queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Attempts made again after a failed one.
    pub fn retried(&self) -> u64 {
        self.retried.load(Ordering::Relaxed)
    }

    /// Notifications waiting, over all hooks.
    pub fn queued(&self) -> usize {
        self.hooks.iter().map(|h| lock(&h.queue).len()).sum()
    }

    /// Queues `payload` for every hook; each hook's worker sends it in the background.
    pub fn notify(self: &Arc<Self>, payload: &Value, now: i64) {
        for (i, hook) in self.hooks.iter().enumerate() {
            let body = body_for(hook.config.format, payload);
            let signature = sign(&hook.config.secret, now, &body);
            let dropped = {
                let mut q = lock(&hook.queue);
                q.push_back((body, signature));
                let mut dropped = 0;
                while q.len() > self.cap {
                    q.pop_front();
                    dropped += 1;
                }
                dropped
            };
            if dropped > 0 {
                let total = self.dropped.fetch_add(dropped, Ordering::Relaxed) + dropped;
                // One line for the first drop and then at powers of two: a dead hook under a
                // flood of requests must not flood the log as well.
                if total.is_power_of_two() {
                    tracing::warn!(host = %hook.host, dropped_total = total, "webhook queue full; dropped the oldest notification");
                }
            }
            hook.ready.notify_one();
            if !hook.started.swap(true, Ordering::AcqRel) {
                let this = Arc::clone(self);
                tokio::spawn(async move { this.work(i).await });
            }
        }
    }

    /// Sends hook `i`'s notifications, oldest first, for as long as the notifier lives.
    async fn work(self: Arc<Self>, i: usize) {
        let Some(hook) = self.hooks.get(i) else { return };
        loop {
            let next = lock(&hook.queue).pop_front();
            let Some((body, signature)) = next else {
                hook.ready.notified().await;
                continue;
            };
            self.deliver(hook, body, &signature).await;
        }
    }

    async fn deliver(&self, hook: &Hook, body: Vec<u8>, signature: &str) {
        let mut wait = self.backoff;
        for attempt in 1..=ATTEMPTS {
            let res = self
                .http
                .post(&hook.config.url)
                .header("content-type", "application/json")
                .header(SIGNATURE_HEADER, signature)
                .body(body.clone())
                .send()
                .await;
            match res {
                Ok(r) if r.status().is_success() => {
                    self.delivered.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Ok(r) => tracing::warn!(host = %hook.host, status = %r.status(), attempt, "webhook refused"),
                // `without_url`: reqwest's error text would otherwise carry the whole URL.
                Err(e) => tracing::warn!(host = %hook.host, error = %e.without_url(), attempt, "webhook unreachable"),
            }
            if attempt < ATTEMPTS {
                tokio::time::sleep(wait).await;
                wait *= 2;
                self.retried.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.failed.fetch_add(1, Ordering::Relaxed);
        tracing::error!(host = %hook.host, "webhook delivery failed after retries");
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_of_timestamp_dot_body() {
        // Reference computed independently: HMAC-SHA256("k", "1.{}").
        let s = sign(&WebhookSecret::new("k"), 1, b"{}");
        assert_eq!(s, "t=1,v1=3dd49b2593d0f9a349e9e71c4bde3e2b862c2be4003fe9b4ba81332029310158");
        assert_ne!(s, sign(&WebhookSecret::new("k"), 2, b"{}"));
        assert!(!format!("{:?}", WebhookSecret::new("hunter2")).contains("hunter2"));
    }

    #[test]
    fn only_the_host_of_a_hook_is_ever_logged() {
        assert_eq!(host_of("https://hooks.slack.com/services/T000/B000/XXXXSECRET"), "hooks.slack.com");
        assert_eq!(host_of("http://127.0.0.1:9/hook?token=abc"), "127.0.0.1:9");
        assert_eq!(host_of("not a url/with/secret"), "(unparsable URL)");
    }

    #[tokio::test]
    async fn a_dead_hook_holds_a_bounded_queue_and_drops_the_oldest() {
        // A hook that accepts connections and never answers: every delivery hangs.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let hooks = vec![WebhookConfig { url, secret: WebhookSecret::new("k"), format: Format::Json }];
        let n = Arc::new(Notifier::with_cap(hooks, Duration::from_millis(10), 3));
        for i in 0..50 {
            n.notify(&serde_json::json!({ "i": i }), 1);
        }
        // Let the worker take one notification into its (hanging) delivery.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(n.queued() <= 3, "queued {}", n.queued());
        assert!((46..=47).contains(&n.dropped()), "dropped {}", n.dropped());
        // The newest are the ones kept.
        let kept: Vec<Value> =
            lock(&n.hooks[0].queue).iter().map(|(b, _)| serde_json::from_slice(b).unwrap()).collect();
        assert_eq!(kept.last().unwrap()["i"], 49);
    }
}
