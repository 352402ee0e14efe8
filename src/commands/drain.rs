//! Draining an agent before it goes away (`run` on a stop, `watch` on a scale-in or eviction):
//! disabled on the server so no new job is assigned to it (Agents - Update, `enabled: false`),
//! then waiting, up to a deadline, for the job it runs (`assignedRequest`) to end.

use std::time::Duration;

use crate::devops::DevOpsClient;
use crate::net::Net;

/// One request to Azure DevOps during a drain (its retries included).
const REQUEST_BUDGET: Duration = Duration::from_secs(20);

pub struct Drain<'a> {
    devops: &'a DevOpsClient,
    pool_id: u64,
    agent_id: u64,
    net: &'a Net,
}

/// How the wait for the running job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waited {
    /// No job (any more), or the agent is gone from the server.
    Idle,
    /// The deadline came with this job still running.
    Deadline(u64),
    /// The reason to drain went away (a scheduled event was withdrawn).
    Withdrawn,
}

impl<'a> Drain<'a> {
    pub fn new(devops: &'a DevOpsClient, pool_id: u64, agent_id: u64, net: &'a Net) -> Self {
        Self {
            devops,
            pool_id,
            agent_id,
            net,
        }
    }

    fn budget(&self) -> crate::clock::Budget {
        self.net.clock().budget(REQUEST_BUDGET)
    }

    /// Disables the agent: no new job. A failure is logged, not fatal: the drain goes on.
    pub async fn disable(&self) -> bool {
        self.set_enabled(false).await
    }

    /// Enables it again (a scheduled event that went away).
    pub async fn enable(&self) -> bool {
        self.set_enabled(true).await
    }

    async fn set_enabled(&self, enabled: bool) -> bool {
        let verb = if enabled { "enabled" } else { "disabled" };
        match self
            .devops
            .set_agent_enabled(self.pool_id, self.agent_id, enabled, &self.budget())
            .await
        {
            Ok(()) => {
                tracing::info!(agent_id = self.agent_id, "{verb} the agent on the server");
                true
            }
            Err(e) => {
                tracing::warn!(
                    "could not mark the agent {verb}: {}",
                    crate::report::report(&e)
                );
                false
            }
        }
    }

    /// The job the agent runs now, if any (`None` too when the server no longer has the agent).
    /// A server that does not answer counts as "still busy": nothing is cut short on a guess.
    pub async fn job(&self) -> Result<Option<u64>, String> {
        match self
            .devops
            .agent(self.pool_id, self.agent_id, &self.budget())
            .await
        {
            Ok(Some(a)) => Ok(a.is_busy().then(|| {
                a.assigned_request
                    .as_ref()
                    .and_then(|r| r["requestId"].as_u64())
                    .unwrap_or(0)
            })),
            Ok(None) => Ok(None),
            Err(e) => Err(crate::report::report(&e)),
        }
    }

    /// Waits until the agent runs no job, or `until`, or `still_wanted` (asked each round) says
    /// the drain is off.
    pub async fn wait_idle(
        &self,
        until: tokio::time::Instant,
        every: Duration,
        mut still_wanted: impl AsyncFnMut() -> bool,
    ) -> Waited {
        let mut told = None;
        let mut last = 0;
        loop {
            if !still_wanted().await {
                return Waited::Withdrawn;
            }
            match self.job().await {
                Ok(None) => {
                    if told.is_some() {
                        tracing::info!("the running job has ended");
                    }
                    return Waited::Idle;
                }
                Ok(Some(job)) => {
                    last = job;
                    if told != Some(job) {
                        tracing::info!(job, "waiting for the running job to end");
                        told = Some(job);
                    }
                }
                Err(e) => tracing::warn!("could not ask whether the agent runs a job: {e}"),
            }
            if tokio::time::Instant::now() + every > until {
                tokio::time::sleep_until(until).await;
                tracing::warn!(
                    job = last,
                    "out of time: going on with the job still running"
                );
                return Waited::Deadline(last);
            }
            tokio::time::sleep(every).await;
        }
    }
}
