//! Webhook notifications (design §19) follow the audit records this process commits: an
//! approval requested, decided (a break-glass approval as its own event), or expired, however
//! it came about (an API call, the console, the expiry sweep, a read that found it overdue).
//! Each replica notifies of what it wrote, once.

use serde_json::{Value, json};
use tokio::sync::broadcast::Receiver;
use tokio::sync::broadcast::error::RecvError;

use super::AppState;
use crate::audit::{Event, EventName};
use crate::store::Committed;

/// Sends the notifications of every committed record, for as long as the server runs.
pub(super) async fn follow(state: AppState, mut records: Receiver<Committed>) {
    loop {
        match records.recv().await {
            Ok(c) => {
                if let Err(e) = notice(&state, &c).await {
                    request_log!(WARN, approval_id = %c.subject, error = %e, "approval notification not sent");
                }
            }
            Err(RecvError::Lagged(missed)) => {
                request_log!(WARN, missed, "approval notifications fell behind; the oldest were not sent");
            }
            Err(RecvError::Closed) => return,
        }
    }
}

/// The webhook event a record means, with what it adds to the approval.
fn meaning(c: &Committed) -> Option<(&'static str, Value)> {
    let name = EventName::parse(&c.event)?;
    match name {
        EventName::ApprovalRequested => Some(("approval.requested", Value::Null)),
        EventName::ApprovalExpired => {
            let what = match Event::read(&c.event, &c.detail) {
                Ok(Event::ApprovalExpired(e)) => e.expired,
                _ => String::new(),
            };
            Some(("approval.expired", json!({ "expired": what })))
        }
        EventName::ApprovalDecided => {
            let Ok(Event::ApprovalDecided(d)) = Event::read(&c.event, &c.detail) else { return None };
            let decision = json!({
                "operator": c.actor,
                "decision": d.decision,
                "note": d.note,
                "method": d.method,
                "break_glass": d.break_glass,
            });
            let event = if d.break_glass { "approval.break_glass" } else { "approval.decided" };
            Some((event, json!({ "decision": decision })))
        }
        _ => None,
    }
}

async fn notice(state: &AppState, c: &Committed) -> anyhow::Result<()> {
    if state.notifier().is_empty() {
        return Ok(());
    }
    let Some((event, extra)) = meaning(c) else { return Ok(()) };
    let Some(row) = crate::approvals::get_unchecked(state.store(), &c.subject).await? else { return Ok(()) };
    // An allowed bypass is approved at once: nobody is asked to decide it.
    if row.bypass {
        return Ok(());
    }
    let now = state.now();
    let mut payload = json!({
        "event": event,
        "approval": super::approvals::approval_json(&row, now, None),
        "console_url": format!("{}/console/approvals/{}", state.config().issuer, row.approval_id),
    });
    if let (Value::Object(p), Value::Object(e)) = (&mut payload, extra) {
        p.extend(e);
    }
    state.notifier().notify(&payload, now);
    Ok(())
}
