//! `agent-bootstrap prune`: a pool without the offline agents scale-in, eviction and dead
//! containers leave behind.
//!
//! Deletes the agents of a pool that are offline and whose status has not changed for longer than
//! `--offline-for` (Azure DevOps' `statusChangedOn`, else `createdOn`), optionally only those whose
//! name starts with `--name-prefix`. Never an agent that is online, runs a job (`assignedRequest`)
//! or changed recently, and never one whose age cannot be read. The identity needs Manage on the
//! pool (checked first, with the fix when it is missing). What it deletes (or, with `--dry-run`,
//! would) is printed as a table or JSON on stdout; an agent that turned busy meanwhile is kept and
//! said so. Meant for a scheduled pipeline or a timer, with the identity's token.

use std::io::Write;
use std::time::Duration;

use serde::Serialize;

use crate::devops::{DevOpsClient, DevOpsError, ServerAgent};
use crate::env::Env;
use crate::error::Error;
use crate::identity::Request;
use crate::net::Net;
use crate::os::Os;
use crate::output::Out;
use crate::settings::PruneSettings;

/// Listing and deleting, together.
const BUDGET: Duration = Duration::from_secs(600);

/// What became of one agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Deleted,
    WouldDelete,
    /// It was idle when listed and busy when deleted.
    KeptBusy,
    Failed,
}

#[derive(Debug, Serialize)]
struct Row {
    action: Verdict,
    name: String,
    id: u64,
    status: String,
    /// Seconds since its status last changed.
    unchanged_for_s: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// Why an agent is not a candidate, or `None` when it is one.
pub fn keep_reason(agent: &ServerAgent, now: u64, offline_for: Duration) -> Option<String> {
    if agent.is_online() {
        return Some("online".into());
    }
    if agent.is_busy() {
        return Some("runs a job".into());
    }
    let Some(changed) = agent.last_change() else {
        return Some("its last status change is not known".into());
    };
    let age = now.saturating_sub(changed);
    if age <= offline_for.as_secs() {
        return Some(format!("offline for {} only", span(age)));
    }
    None
}

pub async fn run(
    s: &PruneSettings,
    request: &Request,
    env: &Env,
    os: Os,
    net: &Net,
    out: &Out,
) -> Result<(), Error> {
    let clock = net.clock().clone();
    let budget = clock.budget(BUDGET);
    let tokens = super::tokens(request, env, &os, net).await?;
    let devops = DevOpsClient::new(&s.url, tokens, net);
    let pool = devops.access(&s.pool, None, &budget).await?.pool;
    let agents = devops.list_agents(pool.id, &budget).await?;
    let now = clock.unix_now();
    let mut rows = vec![];
    let mut kept = 0;
    for agent in agents {
        if let Some(prefix) = &s.name_prefix
            && !agent.name.starts_with(prefix.as_str())
        {
            continue;
        }
        if let Some(why) = keep_reason(&agent, now, s.offline_for) {
            tracing::debug!(agent = %agent.name, id = agent.id, "kept: {why}");
            kept += 1;
            continue;
        }
        let unchanged_for_s = now.saturating_sub(agent.last_change().unwrap_or(now));
        let mut row = Row {
            action: Verdict::WouldDelete,
            name: agent.name.clone(),
            id: agent.id,
            status: agent.status.clone().unwrap_or_default(),
            unchanged_for_s,
            error: None,
        };
        if !s.dry_run {
            row.action = match devops.delete_agent(pool.id, agent.id, &budget).await {
                Ok(()) => {
                    tracing::info!(agent = %agent.name, id = agent.id, "deleted");
                    Verdict::Deleted
                }
                Err(e) if e.is_agent_busy() => {
                    tracing::warn!(agent = %agent.name, "busy now: kept");
                    Verdict::KeptBusy
                }
                Err(e) => {
                    tracing::warn!(agent = %agent.name, "{}", crate::report::report(&e));
                    row.error = Some(e.to_string());
                    Verdict::Failed
                }
            };
        }
        rows.push(row);
    }
    tracing::info!(
        pool = %pool.name,
        candidates = rows.len(),
        kept,
        "pruned agents offline for longer than {}",
        span(s.offline_for.as_secs())
    );
    if out.is_json() {
        out.report(serde_json::to_value(&rows).expect("serializable"));
    } else {
        print(&rows, s.json)?;
    }
    let failed: Vec<&Row> = rows
        .iter()
        .filter(|r| r.action == Verdict::Failed)
        .collect();
    if let Some(first) = failed.first() {
        return Err(DevOpsError::NotAllDeleted {
            failed: failed.len(),
            of: rows.len(),
            name: first.name.clone(),
            detail: first.error.clone().unwrap_or_default(),
        }
        .into());
    }
    Ok(())
}

/// "9d 3h", "5h 2m", "40m".
fn span(secs: u64) -> String {
    match secs {
        s if s >= 86_400 => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
        s if s >= 3600 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        s => format!("{}m", s / 60),
    }
}

fn print(rows: &[Row], json: bool) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    let text = if json {
        serde_json::to_string_pretty(rows).expect("serializable") + "\n"
    } else if rows.is_empty() {
        "nothing to prune\n".to_owned()
    } else {
        let mut t = format!(
            "{:<14} {:<32} {:>8}  {:<8} {}\n",
            "ACTION", "NAME", "ID", "STATUS", "UNCHANGED FOR"
        );
        for r in rows {
            let action = match r.action {
                Verdict::Deleted => "deleted",
                Verdict::WouldDelete => "would delete",
                Verdict::KeptBusy => "kept (busy)",
                Verdict::Failed => "FAILED",
            };
            t.push_str(&format!(
                "{action:<14} {:<32} {:>8}  {:<8} {}\n",
                r.name,
                r.id,
                r.status,
                span(r.unchanged_for_s)
            ));
        }
        t
    };
    out.write_all(text.as_bytes()).map_err(|source| Error::Io {
        action: "writing to",
        path: "stdout".into(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(status: &str, changed: Option<&str>, busy: bool) -> ServerAgent {
        serde_json::from_value(serde_json::json!({
            "id": 1, "name": "a", "status": status,
            "createdOn": "2026-01-01T00:00:00Z",
            "statusChangedOn": changed,
            "assignedRequest": if busy { serde_json::json!({"requestId": 7}) } else { serde_json::Value::Null },
        }))
        .unwrap()
    }

    #[test]
    fn only_long_offline_idle_agents_are_candidates() {
        let now = crate::clock::parse_rfc3339("2026-11-30T00:00:00Z").unwrap();
        let week = Duration::from_secs(7 * 86_400);
        let old = Some("2026-11-01T00:00:00Z");
        assert_eq!(keep_reason(&agent("offline", old, false), now, week), None);
        assert_eq!(
            keep_reason(&agent("online", old, false), now, week).as_deref(),
            Some("online")
        );
        assert_eq!(
            keep_reason(&agent("offline", old, true), now, week).as_deref(),
            Some("runs a job")
        );
        assert!(
            keep_reason(
                &agent("offline", Some("2026-11-28T00:00:00Z"), false),
                now,
                week
            )
            .unwrap()
            .contains("only")
        );
        // No statusChangedOn: createdOn counts.
        assert_eq!(keep_reason(&agent("offline", None, false), now, week), None);
    }
}
