//! `--ca-file` and the system trust store: what an install adds, and taking out again what no
//! install needs any more.

use crate::env::Env;
use crate::error::Error;
use crate::settings::InstallSettings;
use crate::state::TrustedCa;
use crate::{state, trust};

use super::plan::Step;

/// The CA file's certificates and what install does with each ([`trust::assess`]).
pub struct TrustPlan {
    pub(super) store: trust::Store,
    pub(super) certs: Vec<trust::Cert>,
    pub(super) actions: Vec<trust::Action>,
    /// What any install recorded as added (this agent dir's saved settings included): such a
    /// certificate in the store is ours, not the machine's.
    pub(super) known: Vec<TrustedCa>,
}

/// Looks at the system trust store for `--ca-file` (nothing changed). What cannot be done (no
/// root, no tool, an unknown distribution) stops the install here, before anything is contacted.
pub async fn trust_plan(s: &InstallSettings, env: &Env) -> Result<Option<TrustPlan>, Error> {
    let Some(ca_file) = &s.network.ca_file else {
        return Ok(None);
    };
    let mut certs: Vec<trust::Cert> = vec![];
    for cert in s.network.ca_certs.iter().cloned().map(trust::Cert::new) {
        // A bundle may name a certificate twice.
        if !certs.iter().any(|c| c.sha256 == cert.sha256) {
            certs.push(cert);
        }
    }
    let store = trust::Store::for_machine(
        s.os.is_windows(),
        &crate::host::Facts::current(),
        env,
        ca_file,
    );
    let mut known = state::trusted_elsewhere(&s.state_dir, &s.agent_dir);
    if let Ok(Some(own)) = state::load(&s.state_dir, &s.agent_dir) {
        known.extend(own.trusted_cas);
    }
    let actions = trust::assess(&store, &certs, &known, s.as_root, env).await?;
    let plan = TrustPlan {
        store,
        certs,
        actions,
        known,
    };
    // A full disk there would fail the distribution's tool after the download, naming a file.
    if plan.needs_work() {
        crate::preflight::check_space(&plan.store.places())?;
    }
    Ok(Some(plan))
}

impl TrustPlan {
    pub(super) fn step(&self) -> Step {
        Step::TrustCa {
            ca_file: self.store.ca_file.clone(),
            tool: self.store.tool_display(),
            certs: self
                .certs
                .iter()
                .zip(&self.actions)
                .map(|(c, a)| (c.subject.clone(), self.store.file_for(c), a.clone()))
                .collect(),
        }
    }

    /// What root's settings will record as in the store because of agent-bootstrap once the plan
    /// ran: the certificates that are ours already (as recorded) or will be added.
    pub(super) fn kept(&self) -> Vec<TrustedCa> {
        self.certs
            .iter()
            .zip(&self.actions)
            .filter(|(_, a)| !matches!(a, trust::Action::Present))
            .map(|(c, _)| {
                self.known
                    .iter()
                    .find(|k| k.sha256 == c.sha256)
                    .cloned()
                    .unwrap_or_else(|| TrustedCa {
                        subject: c.subject.clone(),
                        sha256: c.sha256.clone(),
                        file: self.store.file_for(c),
                        thumbprint: None,
                    })
            })
            .collect()
    }

    /// Whether something must be written or the tool run.
    pub fn needs_work(&self) -> bool {
        self.actions.iter().any(|a| {
            matches!(
                a,
                trust::Action::Add | trust::Action::Ours { in_bundle: false }
            )
        })
    }

    /// Puts the certificates into the store; logs what was done. Returns what the saved settings
    /// record, and what this call added.
    pub async fn ensure(&self, s: &InstallSettings, env: &Env) -> Result<trust::Ensured, Error> {
        if s.os.is_windows() {
            // certutil reads each certificate from a file in SYSTEM's private directory.
            crate::fsx::create_private_dir_all(&s.state_dir).map_err(|source| Error::Io {
                action: "creating",
                path: s.state_dir.clone(),
                source,
            })?;
        }
        let done = trust::ensure(&self.store, &self.certs, &self.known, &s.state_dir, env).await?;
        for c in &done.present {
            tracing::info!(
                ca = %c.subject,
                "the CA certificate is already in the system trust store; left as it is"
            );
        }
        for c in &done.added_now {
            tracing::info!(
                ca = %c.subject,
                file = %c.file.as_ref().map_or_else(|| "LocalMachine\\Root".into(), |f| f.display().to_string()),
                tool = %self.store.tool_display(),
                "added the CA certificate to the system trust store (the agent trusts only that \
                 store for its connections); `agent-bootstrap remove` takes it out again"
            );
        }
        Ok(done)
    }
}

/// The CA certificates an earlier install of this agent dir added (`previous`) that neither this
/// one keeps (`kept`) nor another agent dir's install recorded.
pub(super) fn unneeded_cas(
    s: &InstallSettings,
    previous: &[TrustedCa],
    kept: &[TrustedCa],
) -> Vec<TrustedCa> {
    if previous.is_empty() {
        return vec![];
    }
    let elsewhere = state::trusted_elsewhere(&s.state_dir, &s.agent_dir);
    previous
        .iter()
        .filter(|p| !kept.iter().chain(&elsewhere).any(|k| k.sha256 == p.sha256))
        .cloned()
        .collect()
}

/// Takes `cas` out of the system trust store; a failure is reported, not fatal (the agent is
/// registered and its settings saved).
pub(super) async fn release_cas(s: &InstallSettings, env: &Env, cas: &[TrustedCa]) {
    let ca_file = s.network.ca_file.clone().unwrap_or_default();
    let store = trust::Store::for_machine(
        s.os.is_windows(),
        &crate::host::Facts::current(),
        env,
        &ca_file,
    );
    match trust::release(&store, cas, env).await {
        Ok(removed) => {
            for c in removed {
                tracing::info!(
                    ca = %c.subject,
                    "took the CA certificate an earlier install added out of the system trust store \
                     (no longer asked for)"
                );
            }
        }
        Err(e) => tracing::warn!("{e}"),
    }
}
