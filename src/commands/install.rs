//! `agent-bootstrap install`: managed identity → preflight → verified package → unattended
//! configuration as an unprivileged user → service → saved settings → boot unit.
//!
//! The order is chosen so that a mistake costs nothing: input is validated before anything else,
//! the token and the organization/pool permissions are checked before the disk is touched (the
//! three preflight requests run at once), the package is verified before it is moved into place,
//! and an agent that is already configured and known to the server is left alone (exit 0, no
//! change). What will happen is computed once as a [`Plan`]: `--dry-run` prints it, a real run
//! carries it out, step by step, so the two cannot disagree.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::agent::config::{self, Configure, TOKEN_ENV};
use crate::agent::{AgentDir, AgentSettings, same_server};
use crate::clock::Budget;
use crate::devops::{DevOpsClient, PackageMetadata, Pool};
use crate::env::Env;
use crate::error::Error;
use crate::identity::{Request as IdentityRequest, Tokens};
use crate::net::Net;
use crate::output::{AgentRef, Out, Outcome};
use crate::package::{self, Limits, Owner, PackageError, Request, Source};
use crate::process::{self, Child, RunAs};
use crate::progress::Progress;
use crate::secret::Secret;
use crate::service::{self, AgentUnit, Systemctl};
use crate::settings::{AgentUser, InstallSettings, PackageChoice};
use crate::state::{self, Saved, TrustedCa};
use crate::trust;
use crate::user;

/// How long install waits for another run working on the same agent dir (cloud-init's install
/// waits out the boot unit's reconcile, which ends within [`service::BOOT_TIMEOUT`]).
pub const LOCK_WAIT: Duration = Duration::from_secs(20 * 60);
/// All of install's talking to IMDS and Azure DevOps (preflight, packages API, the agent lookup):
/// one budget, so a throttled scale set waits out `Retry-After` instead of giving up after a few
/// seconds, and a dead network still ends the run in bounded time.
pub const NETWORK_BUDGET: Duration = Duration::from_secs(300);

/// What will be installed, once the packages API (or `--package`) has been asked.
#[derive(Debug, Clone)]
enum PackagePlan {
    /// The agent dir already has a usable package.
    Keep { reason: String },
    Fetch {
        request: Request,
        version: Option<String>,
    },
}

/// One step of an install, as `--dry-run` prints it and the executor runs it.
#[derive(Debug, Clone)]
enum Step {
    /// Something a person should know (no boot unit here, and why).
    Note(String),
    CreateUser {
        name: String,
    },
    /// Put the CA file's certificates into the system trust store (the agent's listener trusts
    /// nothing else), or leave them where the store has them already ([`crate::trust`]).
    TrustCa {
        ca_file: PathBuf,
        tool: String,
        /// Each certificate's subject, the file of ours it goes to (Linux), and what is done.
        certs: Vec<(String, Option<PathBuf>, trust::Action)>,
    },
    KeepPackage {
        reason: String,
    },
    /// Give a package root extracted (an image build) to the agent user, by descriptor.
    GiveAgentDir {
        user: String,
    },
    Fetch {
        request: Request,
        version: Option<String>,
        cached: Option<PathBuf>,
    },
    StopService {
        unit: String,
    },
    /// End every process of the agent's account and see them gone, before anything a configure
    /// with the token runs from is put in place ([`user::end_processes`]).
    EndUserProcesses {
        user: String,
    },
    RemoveRegistration,
    Configure {
        program: PathBuf,
        args: Vec<String>,
        user: String,
    },
    InstallUnit {
        unit: AgentUnit,
        user: String,
    },
    StartService {
        unit: String,
        no_block: bool,
    },
    SaveSettings {
        path: PathBuf,
    },
    BootUnit {
        name: String,
        path: PathBuf,
    },
    /// The service that runs `watch` (`--scale-in-drain`).
    WatchUnit {
        name: String,
        path: PathBuf,
    },
    /// Windows: the agent dir's ACL (SYSTEM and Administrators full, the service account modify).
    SecureAgentDir {
        account: String,
    },
    /// Windows: stop the service configure is about to replace.
    StopWindowsService {
        name: String,
    },
    /// Windows: the service configure created is running (started if it is not).
    WindowsService {
        name: String,
    },
    /// Windows: the scheduled task that runs `reconcile` at startup.
    BootTask {
        name: String,
    },
}

/// The steps of one install, in order.
#[derive(Debug, Clone)]
struct Plan {
    steps: Vec<Step>,
}

/// The agent dir as it was seen once, before the network.
struct Seen {
    configured: bool,
    self_updated: bool,
    package_present: bool,
    /// Only root could have written the extracted package (an image build's): root may configure
    /// from it. Anything the agent user ever owned is replaced by a fresh verified extraction.
    root_only: bool,
}

/// The CA file's certificates and what install does with each ([`trust::assess`]).
pub struct TrustPlan {
    store: trust::Store,
    certs: Vec<trust::Cert>,
    actions: Vec<trust::Action>,
    /// What any install recorded as added (this agent dir's saved settings included): such a
    /// certificate in the store is ours, not the machine's.
    known: Vec<TrustedCa>,
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
    fn step(&self) -> Step {
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
                file = %c.file.as_ref().map(|f| f.display().to_string()).unwrap_or_else(|| "LocalMachine\\Root".into()),
                tool = %self.store.tool_display(),
                "added the CA certificate to the system trust store (the agent trusts only that \
                 store for its connections); `agent-bootstrap remove` takes it out again"
            );
        }
        Ok(done)
    }
}

/// Takes out of the system trust store what an install had added and no longer needs (`previous`
/// less `kept`), unless another agent dir's install recorded it too. Best effort: logged.
async fn release_unneeded(
    s: &InstallSettings,
    env: &Env,
    previous: &[TrustedCa],
    kept: &[TrustedCa],
) {
    let elsewhere = state::trusted_elsewhere(&s.state_dir, &s.agent_dir);
    let unneeded: Vec<TrustedCa> = previous
        .iter()
        .filter(|p| !kept.iter().chain(&elsewhere).any(|k| k.sha256 == p.sha256))
        .cloned()
        .collect();
    if unneeded.is_empty() {
        return;
    }
    let ca_file = s.network.ca_file.clone().unwrap_or_default();
    let store = trust::Store::for_machine(
        s.os.is_windows(),
        &crate::host::Facts::current(),
        env,
        &ca_file,
    );
    match trust::release(&store, &unneeded, env).await {
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

/// What the preflight found, for planning and for the saved settings.
struct Checked {
    who: String,
    pool: Pool,
    /// The agent is configured here and the server has lost it (or another agent took the name).
    reregister: bool,
    /// The VM id, when it was asked for alongside the preflight.
    vm_id: Option<String>,
    /// This machine, as the registration names it ([`MACHINE_CAPABILITY`]).
    machine: Option<String>,
    /// systemd knows the agent's unit: it is stopped before the account's processes are ended
    /// (systemd would start the agent again).
    unit_exists: bool,
}

pub async fn run(
    s: &InstallSettings,
    env: &Env,
    net: &Net,
    progress: &Progress,
    out: &Out,
) -> Result<(), Error> {
    check_location(s, env)?;
    let done = if s.dry_run {
        run_locked(s, env, net, progress, "installed").await?
    } else {
        let _lock = crate::lock::acquire(&s.state_dir, &s.agent_dir, LOCK_WAIT).await?;
        run_locked(s, env, net, progress, "installed").await?
    };
    out.outcome(done)
}

/// Refuses, before anything is contacted, an agent dir that root could be tricked into acting on
/// through a path another account controls, or (without root) one this account cannot create,
/// and a read-only or `noexec` file system where the agent dir, the state or the cache would go
/// (before the lock, which lives in the state dir).
pub fn check_location(s: &InstallSettings, env: &Env) -> Result<(), Error> {
    let mut places = crate::preflight::install_places(&s.agent_dir, &s.state_dir, &s.cache_dir);
    // The units go into the unit directory after the agent is registered: a read-only or full
    // /etc is found now, before anything is contacted.
    if manages_units(s, env) && (s.service || s.boot || s.scale_in_drain) {
        places.push(crate::preflight::Place {
            what: "the systemd unit directory",
            path: service::unit_dir(env),
            exec: false,
            room: crate::preflight::UNIT_ROOM,
            fix: "pass --no-service and --no-boot to install no unit".into(),
        });
    }
    let agent_uid = user::lookup(s.user.name()).ok().flatten().map(|u| u.uid);
    // The dedicated account is made by useradd, which writes /etc: on a read-only root that
    // fails only after the package is downloaded, with useradd's "cannot lock /etc/passwd".
    if s.as_root
        && !s.os.is_windows()
        && agent_uid.is_none()
        && matches!(s.user, crate::settings::AgentUser::Dedicated(_))
    {
        let name = s.user.name();
        places.push(crate::preflight::Place {
            what: "the account database",
            path: "/etc/passwd".into(),
            exec: false,
            room: 0,
            fix: format!(
                "the agent's account '{name}' does not exist and cannot be created here: create \
                 it in the image (useradd --system --create-home {name}), or pass --user with an \
                 existing account"
            ),
        });
    }
    crate::preflight::check(&places)?;
    super::check_agent_dir(&s.agent_dir, env, agent_uid)?;
    if matches!(
        boot_step(s, env),
        Some(Step::BootUnit { .. } | Step::BootTask { .. })
    ) || matches!(watch_step(s, env), Some(Step::WatchUnit { .. }))
    {
        boot_program()?;
    }
    if !s.as_root {
        let mut existing = s.agent_dir.as_path();
        while !existing.exists() {
            existing = existing.parent().unwrap_or(Path::new("/"));
        }
        if !crate::platform::writable(existing) {
            return Err(Error::Input(format!(
                "invalid --agent-dir {}: {} is not writable by {}; choose a directory you can \
                 write (the default is ~/azure-pipelines-agent), or run as root",
                s.agent_dir.display(),
                existing.display(),
                env.username()
            )));
        }
    }
    Ok(())
}

/// The install flow, with the agent dir's lock held by the caller (install or reconcile).
pub async fn run_locked(
    s: &InstallSettings,
    env: &Env,
    net: &Net,
    progress: &Progress,
    headline: &str,
) -> Result<Outcome, Error> {
    let agent = AgentDir::new(&s.agent_dir, &s.os);
    let clock = net.clock().clone();

    // 0. What a killed run left (staging trees, partial downloads), under the lock.
    if !s.dry_run
        && let Some(parent) = s.agent_dir.parent()
    {
        for p in package::remove_stale(parent, &s.cache_dir, &state::tag(&s.agent_dir)) {
            tracing::info!(path = %p.display(), "removed what an interrupted run left");
        }
    }

    // 1. Local state that makes the request impossible, before any network call.
    let existing = agent.settings()?;
    if let Some(cfg) = &existing {
        check_same_agent(cfg, s)?;
    }

    // The CA file's certificates must reach the system trust store, which is all the agent
    // trusts: what cannot be done stops here, before anything is contacted or changed.
    let trust = trust_plan(s, env).await?;

    // 2. Token, then the preflight requests at once (after waiting for access, if asked).
    if let Some(limit) = s.wait_for_access {
        wait_for_access(s, env, net, limit).await?;
    }
    let budget = clock.budget(NETWORK_BUDGET);
    let tokens = super::tokens(&s.identity, env, &s.os, net).await?;
    let identity = tokens.source().request();
    if identity.kind == crate::identity::Kind::Pat
        && identity.pat_file.is_none()
        && matches!(
            boot_step(s, env),
            Some(Step::BootUnit { .. } | Step::BootTask { .. })
        )
    {
        tracing::warn!(
            "the PAT came from AZP_TOKEN, which is not saved: reconcile at boot will have no token \
             and cannot re-register the agent; put the PAT in a file only root can read and pass \
             AZP_TOKEN_FILE instead"
        );
    }
    if s.network
        .proxy
        .as_ref()
        .is_some_and(|p| p.user.is_some() && p.password_file.is_none())
        && matches!(
            boot_step(s, env),
            Some(Step::BootUnit { .. } | Step::BootTask { .. })
        )
    {
        tracing::warn!(
            "the proxy password did not come from a file, and it is not saved: reconcile at boot \
             will have no proxy password; put it in a file only root can read and pass \
             --proxy-password-file instead"
        );
    }
    tokens.get(&budget).await?;
    let devops = DevOpsClient::new(&s.url, tokens.clone(), net);
    // Looked at once: the agent user can change the dir at any time, and every decision below must
    // rest on the same view.
    let package_present = agent.package_present();
    let seen = Seen {
        configured: existing.is_some() || agent.is_configured(),
        self_updated: agent.self_updated(),
        package_present,
        root_only: s.as_root && package_present && crate::fsx::root_only_tree(&agent.root),
    };
    // As root (SYSTEM) a configured or self-updated agent dir is never configured from: only a
    // registration that needs repair gets this far, and it gets a fresh package.
    let wants_api = !seen.configured
        && (s.as_root || !seen.self_updated)
        && matches!(s.package, PackageChoice::Latest | PackageChoice::Version(_));
    let wanted_version = match &s.package {
        PackageChoice::Version(v) => Some(v.as_str()),
        _ => None,
    };
    let rid = s.os.rid();
    let (me, pool, meta, vm_id) = tokio::join!(
        devops.connection_data(&budget),
        devops.pool_if_manageable(&s.pool, &budget),
        async {
            if wants_api {
                Some(devops.agent_package(&rid, wanted_version, &budget).await)
            } else {
                None
            }
        },
        // Saved to tell a clone of this machine later; only a fresh install needs it.
        async {
            if existing.is_none() {
                tokens.source().vm_id().await
            } else {
                None
            }
        },
    );
    let me = me?.authenticated_user;
    let who = me
        .provider_display_name
        .clone()
        .unwrap_or_else(|| me.id.clone());
    tracing::info!(identity = %who, org = %s.url, "token accepted by Azure DevOps");
    let pool = match pool? {
        Some(p) => p,
        None => {
            return Err(devops
                .explain_unmanageable(&s.pool, &who, &budget)
                .await
                .into());
        }
    };
    tracing::info!(pool = %pool.name, pool_id = pool.id, "identity may manage the pool");
    let mut meta = meta.transpose()?;

    // 3. An existing registration: healthy → nothing to do; gone from the server → register again.
    let mut reregister = false;
    let mut server_version = None;
    if let Some(cfg) = &existing {
        let found = devops.find_agent(pool.id, &s.agent_name, &budget).await?;
        server_version = found.as_ref().and_then(|a| a.version.clone());
        match found {
            Some(a) if a.id == cfg.agent_id && network_matches(&agent, &s.network) => {
                return already_installed(
                    s,
                    env,
                    &agent,
                    cfg,
                    &pool,
                    &a,
                    &identity,
                    trust.as_ref(),
                )
                .await;
            }
            Some(_) if !network_matches(&agent, &s.network) => {
                tracing::warn!(
                    "the agent's proxy or CA settings differ from these; configuring it again \
                     (--replace keeps its registration)"
                );
                reregister = true;
            }
            Some(a) => {
                tracing::warn!(
                    local_id = cfg.agent_id,
                    server_id = a.id,
                    "the pool has another agent with this name; registering this one again (--replace)"
                );
                reregister = true;
            }
            None => {
                tracing::warn!(
                    agent = %cfg.agent_name,
                    "the agent is configured here but unknown to the server (deleted?); registering it again"
                );
                reregister = true;
            }
        }
    }
    // No registration here, but the pool may have an agent of this name: this machine's own (an
    // install or re-registration killed after the server registered it and before `.agent` was
    // written; this VM reimaged) is replaced; another machine's only with --replace.
    let machine = vm_id.clone().or_else(state::machine_id);
    if existing.is_none()
        && let Some(a) = devops.find_agent(pool.id, &s.agent_name, &budget).await?
    {
        let previous = state::load(&s.state_dir, &s.agent_dir).ok().flatten();
        adopt_or_refuse(s, &a, &pool, machine.as_deref(), previous.as_ref())?;
        server_version = a.version.clone();
    }
    // Root configures a registration again only from a fresh package: the version from root's
    // settings or the server's record of the agent (it may have updated itself), whichever is
    // newer, never from the agent's files.
    if s.as_root
        && meta.is_none()
        && matches!(s.package, PackageChoice::Latest | PackageChoice::Version(_))
    {
        let wanted = newest(wanted_version, server_version.as_deref());
        meta = Some(devops.agent_package(&rid, wanted, &budget).await?);
    }
    // Only to know whether to stop it first: a machine where systemctl cannot answer (a chroot, a
    // dry run on an image) has no unit of ours running; installing one later says what is wrong.
    let unit_exists = match Systemctl::find(env).filter(|_| manages_units(s, env) && s.service) {
        Some(sc) => sc
            .state(&agent_unit(s, &pool.name).name)
            .await
            .is_ok_and(|st| st.exists),
        None => false,
    };
    let checked = Checked {
        who,
        pool,
        reregister,
        vm_id,
        machine,
        unit_exists,
    };

    // 4. The account (a real run creates it now: the version check below runs as it).
    let account = match user::lookup(s.user.name())? {
        Some(u) => Some(u),
        None if s.dry_run => None,
        None => Some(user::ensure(&s.user, env).await?),
    };

    // 5. Which package, then the whole plan.
    if let Some(account) = &account {
        check_shared_account(s, account, &checked)?;
    }
    let package = plan_package(s, &agent, &seen, meta, account.as_ref(), env).await?;
    let mut plan = make_plan(s, env, &agent, &checked, &package, account.as_ref());
    if let Some(t) = &trust {
        // First: a certificate that cannot be added stops the install with nothing else done.
        let at = plan
            .steps
            .iter()
            .take_while(|st| matches!(st, Step::CreateUser { .. }))
            .count();
        plan.steps.insert(at, t.step());
    }
    if s.dry_run {
        return print_plan(s, &checked, &package, &plan);
    }
    let account = account.expect("a real run has created the account");
    let mut done = Progressed::default();
    let result = execute(
        s,
        env,
        net,
        progress,
        &agent,
        &checked,
        &devops,
        &tokens,
        &budget,
        &plan,
        account,
        headline,
        trust.as_ref(),
        &mut done,
    )
    .await;
    if result.is_err() && !done.saved && !done.added_now.is_empty() {
        // Nothing registered was saved: what this run added to the trust store goes again (unless
        // an install recorded it, this agent dir's included).
        let store = &trust.as_ref().expect("added through the plan").store;
        let known = &trust.as_ref().expect("added through the plan").known;
        let ours: Vec<TrustedCa> = done
            .added_now
            .iter()
            .filter(|a| !known.iter().any(|k| k.sha256 == a.sha256))
            .cloned()
            .collect();
        match trust::release(store, &ours, env).await {
            Ok(removed) if !removed.is_empty() => tracing::info!(
                "took the CA certificates this install added out of the system trust store again"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!("{e}"),
        }
    }
    result
}

/// The unit the agent's service gets, from root's own settings.
pub fn agent_unit(s: &InstallSettings, pool: &str) -> AgentUnit {
    AgentUnit::new(s.url.as_str(), pool, &s.agent_name)
}

/// The Windows service configure creates, from root's own settings.
pub fn windows_service_name(s: &InstallSettings, pool: &str) -> String {
    service::windows::service_name(s.url.as_str(), pool, &s.agent_name)
}

/// Whether install writes units here (root, systemd, not Windows).
fn manages_units(s: &InstallSettings, env: &Env) -> bool {
    s.as_root && !s.os.is_windows() && service::systemd_available(env)
}

fn make_plan(
    s: &InstallSettings,
    env: &Env,
    agent: &AgentDir,
    c: &Checked,
    package: &PackagePlan,
    account: Option<&RunAs>,
) -> Plan {
    let mut steps = vec![];
    let windows = s.os.is_windows();
    if account.is_none() && !windows {
        steps.push(Step::CreateUser {
            name: s.user.name().to_owned(),
        });
    }
    let unit = agent_unit(s, &c.pool.name);
    let units = manages_units(s, env);
    let win_service = windows_service_name(s, &c.pool.name);
    // The agent stops before its files change: a listener still running with the old key would
    // not pick up the new one, and systemd would start again what is ended below.
    if s.service && units && (c.reregister || c.unit_exists) {
        steps.push(Step::StopService {
            unit: unit.name.clone(),
        });
    }
    if s.service && windows && c.reregister {
        steps.push(Step::StopWindowsService {
            name: win_service.clone(),
        });
    }
    if ends_user_processes(s, account) {
        steps.push(Step::EndUserProcesses {
            user: s.user.name().to_owned(),
        });
    }
    match package {
        PackagePlan::Keep { reason } => {
            steps.push(Step::KeepPackage {
                reason: reason.clone(),
            });
            let owned_by_user =
                account.is_some_and(|u| crate::platform::owner_id(&s.agent_dir) == Some(u.uid));
            if s.as_root && !owned_by_user && !windows {
                steps.push(Step::GiveAgentDir {
                    user: s.user.name().to_owned(),
                });
            }
        }
        PackagePlan::Fetch { request, version } => steps.push(Step::Fetch {
            request: request.clone(),
            version: version.clone(),
            cached: request
                .sha256
                .as_ref()
                .map(|h| package::cache_path(&s.cache_dir, h, request.kind))
                .filter(|p| p.is_file()),
        }),
    }
    if windows && s.as_root {
        steps.push(Step::SecureAgentDir {
            account: s.user.name().to_owned(),
        });
    }
    if c.reregister || agent.has_stale_registration() {
        steps.push(Step::RemoveRegistration);
    }
    let (program, args) = configure_command(s, agent);
    steps.push(Step::Configure {
        program,
        args,
        user: s.user.name().to_owned(),
    });
    // Saved as soon as the agent is registered: whatever fails after, reconcile and remove know it.
    steps.push(Step::SaveSettings {
        path: state::file_for(&s.state_dir, &s.agent_dir),
    });
    if s.service && windows {
        steps.push(Step::WindowsService { name: win_service });
    }
    if s.service && !windows {
        if units {
            steps.push(Step::InstallUnit {
                unit: unit.clone(),
                user: s.user.name().to_owned(),
            });
            steps.push(Step::StartService {
                unit: unit.name.clone(),
                no_block: s.no_block_start,
            });
        } else {
            steps.push(Step::Note(
                "systemd is not running here: the agent's service is not installed; start \
                 ./run.sh yourself"
                    .into(),
            ));
        }
    }
    if let Some(step) = boot_step(s, env) {
        steps.push(step);
    }
    if let Some(step) = watch_step(s, env) {
        steps.push(step);
    }
    Plan { steps }
}

/// Whether configuring ends the account's processes first: as root on Linux, for an account that
/// is not root (the agent's jobs run as it, and the token passes through its configure).
fn ends_user_processes(s: &InstallSettings, account: Option<&RunAs>) -> bool {
    s.as_root && cfg!(unix) && !s.os.is_windows() && account.is_none_or(|a| a.uid != 0)
}

/// An account the user named (`--user`) that runs programs of its own (not the agent's service,
/// which is stopped first) is not ended without `--end-user-processes`: refused, exit 2.
#[cfg(unix)]
fn check_shared_account(s: &InstallSettings, account: &RunAs, c: &Checked) -> Result<(), Error> {
    if !ends_user_processes(s, Some(account))
        || s.end_user_processes
        || matches!(s.user, AgentUser::Dedicated(_))
    {
        return Ok(());
    }
    let unit = agent_unit(s, &c.pool.name).name;
    let others: Vec<_> = user::processes_of(account.uid)
        .into_iter()
        .filter(|p| !service::process_in_unit(p.pid, &unit))
        .collect();
    if others.is_empty() {
        return Ok(());
    }
    Err(user::UserError::Shared {
        name: account.name.clone(),
        running: user::describe(&others),
    }
    .into())
}

#[cfg(not(unix))]
fn check_shared_account(_: &InstallSettings, _: &RunAs, _: &Checked) -> Result<(), Error> {
    Ok(())
}

/// The newer of two agent versions (either may be missing).
fn newest<'a>(a: Option<&'a str>, b: Option<&'a str>) -> Option<&'a str> {
    let key = |v: &str| super::reconcile::parse_version(v);
    match (a, b) {
        (Some(a), Some(b)) if key(b) > key(a) => Some(b),
        (Some(a), _) => Some(a),
        (None, b) => b,
    }
}

/// The watcher's unit step (`--scale-in-drain`), or the note saying why there is none.
fn watch_step(s: &InstallSettings, env: &Env) -> Option<Step> {
    if !s.scale_in_drain {
        return None;
    }
    if !service::systemd_available(env) {
        return Some(Step::Note(format!(
            "systemd is not running here: no scale-in watcher installed; run `agent-bootstrap \
             watch --agent-dir {}` as root yourself",
            s.agent_dir.display()
        )));
    }
    let name = service::watch_unit_name(&s.agent_dir);
    Some(Step::WatchUnit {
        path: service::unit_dir(env).join(&name),
        name,
    })
}

/// The boot unit step, or the note saying why there is none.
fn boot_step(s: &InstallSettings, env: &Env) -> Option<Step> {
    if !s.boot {
        return None;
    }
    let by_hand = format!(
        "run `agent-bootstrap reconcile --agent-dir {}` at start yourself",
        s.agent_dir.display()
    );
    if s.os.is_windows() {
        return Some(if s.as_root {
            Step::BootTask {
                name: service::windows::boot_task_name(&s.agent_dir),
            }
        } else {
            Step::Note(format!(
                "not elevated: no boot task (it would run as SYSTEM); {by_hand}"
            ))
        });
    }
    if !s.as_root {
        return Some(Step::Note(format!(
            "not running as root: no boot unit (it would run as root); {by_hand}"
        )));
    }
    if !service::systemd_available(env) {
        return Some(Step::Note(format!(
            "systemd is not running here: no boot unit installed; {by_hand}"
        )));
    }
    let name = service::boot_unit_name(&s.agent_dir);
    Some(Step::BootUnit {
        path: service::unit_dir(env).join(&name),
        name,
    })
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Note(text) => write!(f, "note: {text}"),
            Step::CreateUser { name } => write!(
                f,
                "create system user '{name}' (useradd --system --create-home)"
            ),
            Step::TrustCa {
                ca_file,
                tool,
                certs,
            } => {
                write!(
                    f,
                    "put the CA certificates of {} into the system trust store (the agent's \
                     listener trusts only that store):",
                    ca_file.display()
                )?;
                for (subject, file, action) in certs {
                    let place = file
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|| "LocalMachine\\Root".into());
                    match action {
                        trust::Action::Present => {
                            write!(f, " '{subject}' is there already: left as it is;")?
                        }
                        trust::Action::Ours { in_bundle: true } => write!(
                            f,
                            " '{subject}' is there already ({place}, added by agent-bootstrap);"
                        )?,
                        trust::Action::Ours { in_bundle: false } => {
                            write!(f, " '{subject}' in {place}, then {tool};")?
                        }
                        trust::Action::Add => {
                            write!(f, " add '{subject}' as {place}, then {tool};")?
                        }
                    }
                }
                write!(f, " `remove` takes out what was added")
            }
            Step::KeepPackage { reason } => {
                write!(f, "keep the agent package in the agent dir ({reason})")
            }
            Step::GiveAgentDir { user } => write!(
                f,
                "give the agent dir to '{user}' (through directory descriptors, children first)"
            ),
            Step::Fetch {
                request, cached, ..
            } => {
                match cached {
                    Some(p) => write!(f, "read the cached package {}", p.display())?,
                    None => write!(f, "download {} into the cache", request.source)?,
                }
                write!(
                    f,
                    ", verifying its SHA-256 ({}), extracting it into a private staging \
                     directory, then swap it in as the agent dir (its _work and _diag kept)",
                    request.sha256.as_deref().unwrap_or("not given: unverified")
                )
            }
            Step::StopService { unit } => write!(f, "run as root: systemctl stop {unit}"),
            Step::EndUserProcesses { user } => write!(
                f,
                "end every process of '{user}' (stopped, then killed) and wait until none is \
                 left: none may read the token from configure or change the package it runs"
            ),
            Step::RemoveRegistration => write!(
                f,
                "remove the local registration (.agent, .credentials, .credentials_rsaparams)"
            ),
            Step::Configure {
                program,
                args,
                user,
            } => {
                let child = Child::new("configure", program, &Env::default())
                    .args(args.clone())
                    .secret_env(TOKEN_ENV, Secret::new(String::new()));
                let as_root = if user == "root" {
                    format!("{}=1 ", config::ALLOW_RUN_AS_ROOT_ENV)
                } else {
                    String::new()
                };
                if program.extension().is_some_and(|e| e == "cmd")
                    || program.to_string_lossy().ends_with(".cmd")
                {
                    write!(f, "run elevated: {}", child.display())
                } else {
                    write!(f, "run as '{user}': {as_root}{}", child.display())
                }
            }
            Step::InstallUnit { unit, user } => write!(
                f,
                "write the unit {} (the agent's template, User={user}), systemctl daemon-reload, \
                 systemctl enable {}",
                unit.name, unit.name
            ),
            Step::StartService { unit, no_block } => write!(
                f,
                "systemctl start{} {unit} (restart if it runs)",
                if *no_block { " --no-block" } else { "" }
            ),
            Step::SaveSettings { path } => {
                write!(f, "save settings (no secret) to {}", path.display())
            }
            Step::BootUnit { name, path } => write!(
                f,
                "write {} and enable {name} (runs `agent-bootstrap reconcile` at every boot)",
                path.display()
            ),
            Step::WatchUnit { name, path } => write!(
                f,
                "write {} and enable and start {name} (runs `agent-bootstrap watch`: drains and \
                 unregisters the agent on a scale-in or eviction)",
                path.display()
            ),
            Step::SecureAgentDir { account } => write!(
                f,
                "set the agent dir's ACL: SYSTEM and Administrators full control, '{account}' \
                 modify, nobody else"
            ),
            Step::StopWindowsService { name } => write!(f, "sc.exe stop {name}"),
            Step::WindowsService { name } => write!(
                f,
                "check the service {name} configure created (sc.exe query), start it if it is stopped"
            ),
            Step::BootTask { name } => write!(
                f,
                "register the scheduled task {name} (runs `agent-bootstrap reconcile` as SYSTEM \
                 at every startup)"
            ),
        }
    }
}

/// What the executor learned along the way.
#[derive(Default)]
struct Progressed {
    package_sha256: Option<String>,
    agent_version: Option<String>,
    /// The CA certificates in the system trust store because of agent-bootstrap (saved).
    trusted: Vec<TrustedCa>,
    /// Those this run added (taken out again if it fails before the settings are saved).
    added_now: Vec<TrustedCa>,
    /// The settings were saved.
    saved: bool,
}

#[allow(clippy::too_many_arguments)]
async fn execute(
    s: &InstallSettings,
    env: &Env,
    net: &Net,
    progress: &Progress,
    agent: &AgentDir,
    c: &Checked,
    devops: &DevOpsClient,
    tokens: &Tokens,
    budget: &Budget,
    plan: &Plan,
    user: RunAs,
    headline: &str,
    trust: Option<&TrustPlan>,
    done: &mut Progressed,
) -> Result<Outcome, Error> {
    if user.uid == 0 && s.user.name() == "root" {
        tracing::warn!(
            "the agent will run as root (--user root): jobs get full control of this machine"
        );
    }
    let owner = (s.as_root && user.uid != 0).then_some(Owner {
        uid: user.uid,
        gid: user.gid,
    });
    let mut saved: Option<Saved> = None;
    for step in &plan.steps {
        match step {
            Step::Note(text) => tracing::warn!("{text}"),
            // A real run creates the account before planning (the version check runs as it), so
            // only a dry run's plan shows this step.
            Step::CreateUser { .. } => {}
            Step::TrustCa { .. } => {
                let t = trust.expect("planned from the trust plan");
                let ensured = t.ensure(s, env).await?;
                done.trusted = ensured.ours;
                done.added_now = ensured.added_now;
            }
            Step::KeepPackage { reason } => tracing::info!(
                "keeping the agent package in {}: {reason}",
                s.agent_dir.display()
            ),
            Step::GiveAgentDir { .. } => {
                crate::fsx::give_tree(&s.agent_dir, user.uid, user.gid).map_err(|e| {
                    Error::Input(format!(
                        "invalid --agent-dir {}: {e}",
                        s.agent_dir.display()
                    ))
                })?;
            }
            Step::Fetch {
                request, version, ..
            } => {
                done.package_sha256 =
                    Some(fetch_into_place(s, env, request, owner, net, progress).await?);
                done.agent_version = version.clone();
            }
            Step::StopService { unit } => {
                // A unit that is not there (never installed) has nothing to stop.
                if let Err(e) = Systemctl::require(env)?.run(&["stop", unit]).await {
                    tracing::warn!("{e}");
                }
            }
            Step::EndUserProcesses { .. } => {
                end_user_processes(&user).await?;
            }
            Step::RemoveRegistration => {
                if !c.reregister {
                    tracing::warn!("removing a registration left by an interrupted configuration");
                }
                agent.remove_registration()?;
            }
            Step::Configure { program, args, .. } => {
                if ends_user_processes(s, Some(&user)) {
                    nothing_started_since(&user).await?;
                }
                let command = (program.clone(), args.clone());
                write_capabilities(s, env, agent, &user, c.machine.as_deref()).await?;
                configure_with(s, env, agent, &user, tokens, budget, command).await?;
                let local = agent.settings()?.ok_or_else(|| Error::Configure {
                    message: format!(
                        "{} reported success but wrote no .agent file",
                        s.os.config_script()
                    ),
                })?;
                // The server says which agent now has our name; `.agent` is the agent user's.
                let server = devops
                    .find_agent(c.pool.id, &s.agent_name, budget)
                    .await?
                    .ok_or_else(|| Error::Configure {
                        message: format!(
                            "{} reported success but the pool has no agent '{}'",
                            s.os.config_script(),
                            s.agent_name
                        ),
                    })?;
                if done.agent_version.is_none() {
                    // The version the agent reported to the server, never its files' word.
                    done.agent_version = server.version.clone();
                }
                let mut record = saved_settings(
                    s,
                    &tokens.source().request(),
                    &c.pool,
                    server.id,
                    done.agent_version.clone(),
                    done.package_sha256.clone(),
                );
                if local.agent_id != server.id {
                    tracing::warn!(
                        local = local.agent_id,
                        server = server.id,
                        "the agent's .agent names another id than the server; the server's is saved"
                    );
                }
                record.vm_id = match &c.vm_id {
                    Some(id) => Some(id.clone()),
                    None => tokens.source().vm_id().await,
                };
                saved = Some(record);
            }
            Step::InstallUnit { unit, .. } => {
                let sc = Systemctl::require(env)?;
                service::install_agent_unit(env, &sc, unit, &s.agent_dir, &user).await?;
            }
            Step::StartService { unit, no_block } => {
                start_service(env, unit, *no_block).await?;
            }
            Step::SaveSettings { .. } => {
                let record = saved
                    .as_mut()
                    .expect("configure ran before the settings are saved");
                record.boot_unit = plan.steps.iter().find_map(|st| match st {
                    Step::BootUnit { name, .. } | Step::BootTask { name } => Some(name.clone()),
                    _ => None,
                });
                record.watch_unit = plan.steps.iter().find_map(|st| match st {
                    Step::WatchUnit { name, .. } => Some(name.clone()),
                    _ => None,
                });
                record.trusted_cas = done.trusted.clone();
                let previous = state::load(&s.state_dir, &s.agent_dir)
                    .ok()
                    .flatten()
                    .map(|p| p.trusted_cas)
                    .unwrap_or_default();
                let path = state::save(&s.state_dir, record)?;
                done.saved = true;
                release_unneeded(s, env, &previous, &done.trusted).await;
                if s.os.is_windows() && s.as_root {
                    // Readable by SYSTEM and Administrators only.
                    service::windows::make_private(env, &s.state_dir).await?;
                    if s.cache_dir.is_dir() {
                        service::windows::make_private(env, &s.cache_dir).await?;
                    }
                }
                tracing::info!(file = %path.display(), "saved settings for later runs");
            }
            Step::BootUnit { .. } => {
                ensure_boot_unit(s, env, &c.pool.name).await?;
            }
            Step::WatchUnit { .. } => {
                ensure_watch_unit(s, env).await?;
            }
            Step::SecureAgentDir { account } => {
                service::windows::secure_agent_dir(env, &s.agent_dir, account).await?;
            }
            Step::StopWindowsService { name } => {
                if let Err(e) = service::windows::stop(env, name).await {
                    tracing::warn!("{e}");
                }
            }
            Step::WindowsService { name } => {
                ensure_windows_service(env, name).await?;
            }
            Step::BootTask { .. } => {
                ensure_boot_task(s, env).await?;
            }
        }
    }
    drop_watch_unit(s, env).await?;
    Ok(summary(headline, saved.as_ref().expect("configure ran")))
}

/// [`user::end_processes`] for the agent's account (Linux, root).
#[cfg(unix)]
async fn end_user_processes(user: &RunAs) -> Result<(), Error> {
    user::end_processes(user).await?;
    Ok(())
}

#[cfg(not(unix))]
async fn end_user_processes(_: &RunAs) -> Result<(), Error> {
    Ok(())
}

/// Right before configure: nothing of the account started since its processes were ended (a cron
/// or at job); the package it could have changed is not run with the token.
#[cfg(unix)]
async fn nothing_started_since(user: &RunAs) -> Result<(), Error> {
    let appeared = user::processes_of(user.uid);
    if appeared.is_empty() {
        return Ok(());
    }
    end_user_processes(user).await?;
    Err(user::UserError::Respawned {
        name: user.name.clone(),
        which: user::describe(&appeared),
    }
    .into())
}

#[cfg(not(unix))]
async fn nothing_started_since(_: &RunAs) -> Result<(), Error> {
    Ok(())
}

/// `systemctl start` the unit, or `restart` it when it already runs (it must pick up a new
/// registration). `--no-block` at boot: the agent's unit is ordered after ours.
pub async fn start_service(env: &Env, unit: &str, no_block: bool) -> Result<(), Error> {
    let sc = Systemctl::require(env)?;
    let verb = if sc.state(unit).await?.active {
        "restart"
    } else {
        "start"
    };
    let mut args = vec![verb];
    if no_block {
        args.push("--no-block");
    }
    args.push(unit);
    sc.run(&args).await?;
    Ok(())
}

/// Windows: the service configure created runs; started through the SCM when it does not.
pub async fn ensure_windows_service(env: &Env, name: &str) -> Result<(), Error> {
    let state = service::windows::query(env, name).await?;
    if !state.exists {
        return Err(service::ServiceError::Failed {
            step: format!("sc.exe query {name}"),
            code: 1060,
            line: "configure reported success but created no service of that name".into(),
        }
        .into());
    }
    if !state.running {
        service::windows::start(env, name).await?;
    }
    Ok(())
}

/// Windows: registers the boot task (replacing an older definition). Returns its name.
pub async fn ensure_boot_task(s: &InstallSettings, env: &Env) -> Result<Option<String>, Error> {
    let Some(Step::BootTask { name }) = boot_step(s, env) else {
        return Ok(None);
    };
    let exe = boot_program()?;
    let default_state = crate::settings::paths(env, &s.os).map(|p| p.state_dir).ok();
    let state =
        (default_state.as_deref() != Some(s.state_dir.as_path())).then_some(s.state_dir.as_path());
    let xml = service::windows::render_boot_task(&exe, &s.agent_dir, state)?;
    service::windows::install_boot_task(env, &name, &xml, &s.state_dir).await?;
    tracing::info!(task = %name, "registered the boot task that runs reconcile");
    Ok(Some(name))
}

/// This binary, which the boot unit will run as root at every boot: refused (exit 2, before
/// anything is contacted) unless only root can replace it, see
/// [`crate::fsx::check_root_only_program`].
#[cfg(unix)]
fn boot_program() -> Result<std::path::PathBuf, Error> {
    let exe = std::env::current_exe().map_err(|source| Error::Io {
        action: "finding",
        path: "the agent-bootstrap binary".into(),
        source,
    })?;
    crate::fsx::check_root_only_program(&exe).map_err(|e| {
        Error::Input(format!(
            "the boot unit would run {} as root at every boot, but {}: another account could \
             replace what root runs; install agent-bootstrap in a directory only root can change \
             (e.g. /usr/local/bin), or pass --no-boot",
            exe.display(),
            e.0
        ))
    })?;
    Ok(exe)
}

/// Windows: the boot task runs this binary as SYSTEM at every startup; refused (exit 2, before
/// anything is contacted) unless only SYSTEM, Administrators and TrustedInstaller can replace it
/// (`scripts/install.ps1` places it under Program Files), see
/// [`crate::fsx::check_root_only_program`].
#[cfg(not(unix))]
fn boot_program() -> Result<std::path::PathBuf, Error> {
    let exe = std::env::current_exe().map_err(|source| Error::Io {
        action: "finding",
        path: "the agent-bootstrap binary".into(),
        source,
    })?;
    crate::fsx::check_root_only_program(&exe).map_err(|e| {
        Error::Input(format!(
            "the boot task would run {} as SYSTEM at every startup, but {}: another account \
             could replace what SYSTEM runs; install agent-bootstrap under Program Files \
             (scripts/install.ps1 does), or pass --no-boot",
            exe.display(),
            e.0
        ))
    })?;
    Ok(exe)
}

/// Writes and enables the unit that runs `reconcile` at boot. Returns its name, or `None` where
/// there is none (not root, no systemd, `--no-boot`).
pub async fn ensure_boot_unit(
    s: &InstallSettings,
    env: &Env,
    pool: &str,
) -> Result<Option<String>, Error> {
    let Some(Step::BootUnit { name, .. }) = boot_step(s, env) else {
        return Ok(None);
    };
    let exe = boot_program()?;
    if ["/tmp/", "/var/tmp/", "/dev/shm/"]
        .iter()
        .any(|t| exe.starts_with(t))
    {
        tracing::warn!(
            exe = %exe.display(),
            "the boot unit runs agent-bootstrap from a temporary directory, which may be gone at the \
             next boot; install it in /usr/local/bin"
        );
    }
    let before = (s.service && s.as_root).then(|| agent_unit(s, pool).name);
    let text = service::render_boot_unit(&exe, &s.agent_dir, &s.state_dir, before.as_deref())?;
    let systemctl = Systemctl::require(env)?;
    let unchanged = !service::put_unit_file(env, &systemctl, &name, &text).await?;
    if !unchanged {
        tracing::info!(unit = %name, "installed the boot unit that runs reconcile");
    }
    if unchanged && systemctl.state(&name).await?.enabled {
        return Ok(Some(name));
    }
    systemctl.run(&["enable", &name]).await?;
    Ok(Some(name))
}

/// Writes, enables and starts the unit that runs `watch` (`--scale-in-drain`); restarts it when
/// its text changed. Returns its name, or `None` where there is none.
pub async fn ensure_watch_unit(s: &InstallSettings, env: &Env) -> Result<Option<String>, Error> {
    let Some(Step::WatchUnit { name, .. }) = watch_step(s, env) else {
        drop_watch_unit(s, env).await?;
        return Ok(None);
    };
    let exe = boot_program()?;
    let boot = match boot_step(s, env) {
        Some(Step::BootUnit { name, .. }) => Some(name),
        _ => None,
    };
    let text = service::render_watch_unit(&exe, &s.agent_dir, &s.state_dir, boot.as_deref())?;
    let systemctl = Systemctl::require(env)?;
    let unchanged = !service::put_unit_file(env, &systemctl, &name, &text).await?;
    if !unchanged {
        tracing::info!(unit = %name, "installed the scale-in watcher");
    }
    let state = systemctl.state(&name).await?;
    if !state.enabled {
        systemctl.run(&["enable", &name]).await?;
    }
    if !unchanged {
        systemctl.run(&["restart", "--no-block", &name]).await?;
    } else if !state.active {
        systemctl.run(&["start", "--no-block", &name]).await?;
    }
    Ok(Some(name))
}

/// An install without `--scale-in-drain` over one with it: the watcher goes.
async fn drop_watch_unit(s: &InstallSettings, env: &Env) -> Result<(), Error> {
    if s.scale_in_drain || !s.as_root || s.os.is_windows() || !service::systemd_available(env) {
        return Ok(());
    }
    let name = service::watch_unit_name(&s.agent_dir);
    if service::delete_own_unit(env, &name, true).await? {
        tracing::info!(unit = %name, "removed the scale-in watcher (no --scale-in-drain)");
    }
    Ok(())
}

fn check_same_agent(cfg: &AgentSettings, s: &InstallSettings) -> Result<(), Error> {
    let same_pool = cfg
        .pool_name
        .as_deref()
        .is_none_or(|p| p.eq_ignore_ascii_case(&s.pool));
    if same_server(&cfg.server_url, s.url.as_str())
        && same_pool
        && cfg.agent_name.eq_ignore_ascii_case(&s.agent_name)
    {
        return Ok(());
    }
    Err(Error::Input(format!(
        "--agent-dir {} already holds agent '{}' of pool '{}' at {}; \
         remove it first (./config.sh remove, or agent-bootstrap remove) or choose another --agent-dir",
        s.agent_dir.display(),
        cfg.agent_name.escape_debug(),
        cfg.pool_name.as_deref().unwrap_or("?").escape_debug(),
        cfg.server_url.escape_debug(),
    )))
}

#[allow(clippy::too_many_arguments)]
async fn already_installed(
    s: &InstallSettings,
    env: &Env,
    agent: &AgentDir,
    cfg: &AgentSettings,
    pool: &Pool,
    server: &crate::devops::ServerAgent,
    identity: &IdentityRequest,
    trust: Option<&TrustPlan>,
) -> Result<Outcome, Error> {
    let server_id = server.id;
    tracing::info!(
        agent = %s.agent_name,
        id = cfg.agent_id,
        "already configured and known to the server"
    );
    if s.dry_run {
        return Ok(Outcome::new(
            format!(
                "dry run: nothing would change\n\
                 agent '{}' (id {}) is already configured in {} and registered in pool '{}'\n",
                s.agent_name,
                server_id,
                s.agent_dir.display(),
                pool.name
            ),
            None,
        ));
    }
    // The CA the agent needs is in the system trust store (a reinstall after it was taken out,
    // or an agent configured before install added it there).
    let trusted = match trust {
        Some(t) => t.ensure(s, env).await?.ours,
        None => vec![],
    };
    // NO_PROXY changed: the agent reads .proxybypass when it starts.
    let account = user::lookup(s.user.name())?;
    let bypass_changed = write_proxy_bypass(s, env, agent, account.as_ref()).await?;
    // --disable-update added or dropped: the agent reads .env when it starts.
    let switch_changed = write_update_switch(s, env, agent, account.as_ref()).await?;
    // A configured agent whose service is missing or stopped (configure ran, the service step did not).
    if s.service && s.os.is_windows() && s.as_root {
        ensure_windows_service(env, &windows_service_name(s, &pool.name)).await?;
    }
    if s.service && manages_units(s, env) {
        let user = user::ensure(&s.user, env).await?;
        let sc = Systemctl::require(env)?;
        let unit = agent_unit(s, &pool.name);
        let ready = service::install_agent_unit(env, &sc, &unit, &s.agent_dir, &user).await?;
        if !ready.active {
            start_service(env, &unit.name, s.no_block_start).await?;
        } else if bypass_changed || switch_changed {
            sc.run(&["restart", &unit.name]).await?;
        }
    }
    let previous = state::load_or_replace(&s.state_dir, &s.agent_dir)?;
    // What the agent reports to the server follows its self-updates; root's record follows it.
    let agent_version = newest(
        previous.as_ref().and_then(|p| p.agent_version.as_deref()),
        server.version.as_deref(),
    )
    .map(str::to_owned);
    let mut saved = saved_settings(
        s,
        identity,
        pool,
        server_id,
        agent_version,
        previous.as_ref().and_then(|p| p.package_sha256.clone()),
    );
    saved.machine_id = previous
        .as_ref()
        .map_or(saved.machine_id.clone(), |p| p.machine_id.clone());
    saved.vm_id = previous.as_ref().and_then(|p| p.vm_id.clone());
    saved.boot_unit = match boot_step(s, env) {
        Some(Step::BootUnit { name, .. } | Step::BootTask { name }) => Some(name),
        _ => None,
    };
    saved.watch_unit = match watch_step(s, env) {
        Some(Step::WatchUnit { name, .. }) => Some(name),
        _ => None,
    };
    saved.trusted_cas = trusted;
    if previous.as_ref() != Some(&saved) {
        state::save(&s.state_dir, &saved)?;
    }
    if let Some(p) = &previous {
        release_unneeded(s, env, &p.trusted_cas, &saved.trusted_cas).await;
    }
    if s.os.is_windows() {
        ensure_boot_task(s, env).await?;
    } else {
        ensure_boot_unit(s, env, &pool.name).await?;
        ensure_watch_unit(s, env).await?;
    }
    Ok(summary("already installed, nothing to do", &saved))
}

async fn plan_package(
    s: &InstallSettings,
    agent: &AgentDir,
    seen: &Seen,
    meta: Option<PackageMetadata>,
    account: Option<&RunAs>,
    env: &Env,
) -> Result<PackagePlan, Error> {
    // Without root the agent runs as this very account: its files are this account's own. As root
    // (SYSTEM) a registration is configured again only from a fresh package (the version from
    // root's record or the server's, never the agent's files).
    if !s.as_root && seen.configured {
        return Ok(PackagePlan::Keep {
            reason: "the agent is configured (never re-extracted over)".into(),
        });
    }
    // The agent dir is this account's own (no root), or only root could have written it.
    let ours = !s.as_root || (seen.root_only && !seen.configured);
    if ours && seen.self_updated {
        return Ok(PackagePlan::Keep {
            reason: "the agent updated itself (bin is a link); never downgraded".into(),
        });
    }
    let kind = s.os.archive_kind();
    let (request, version) = match (&s.package, meta) {
        (PackageChoice::Explicit { source, sha256 }, _) => (
            Request {
                source: source.clone(),
                sha256: sha256.clone(),
                kind,
            },
            None,
        ),
        (_, Some(meta)) => {
            let url =
                crate::settings::check_url("the packages API's downloadUrl", &meta.download_url)
                    .map_err(|e| PackageError::Refused {
                        url: meta.download_url.clone(),
                        reason: e.to_string(),
                    })?;
            let sha = meta
                .hash_value
                .as_deref()
                .and_then(package::normalize_sha256)
                .ok_or_else(|| PackageError::Refused {
                    url: meta.download_url.clone(),
                    reason: "the packages API gave no SHA-256 for it, and an unverified agent is never installed".into(),
                })?;
            (
                Request {
                    source: Source::Url(url),
                    sha256: Some(sha),
                    kind,
                },
                Some(meta.version.to_string()),
            )
        }
        (_, None) => {
            return Err(Error::Input(
                "the packages API was not asked for a package (internal: the agent dir changed \
                 while it was being looked at); run again"
                    .into(),
            ));
        }
    };
    // A package already extracted is kept when it is the wanted version: as root only one that only
    // root could have written (an image with the agent baked in); its version is asked of it as the
    // agent user, never as root.
    if seen.package_present
        && ours
        && let Some(v) = &version
        && let Some(have) = installed_version(agent, account, env).await
        && &have == v
    {
        return Ok(PackagePlan::Keep {
            reason: format!("version {v} is already extracted"),
        });
    }
    Ok(PackagePlan::Fetch { request, version })
}

/// The extracted agent's version (`bin/Agent.Listener --version`), run as the agent user, never as
/// root; asked only of a package this account owns (no root) or only root could have written (an
/// image build's). `None` without an account to run it as (a dry run before the user exists) or
/// when it does not answer.
pub async fn installed_version(
    agent: &AgentDir,
    user: Option<&RunAs>,
    env: &Env,
) -> Option<String> {
    let user = user?;
    let child = Child::new(
        "Agent.Listener --version",
        agent.root.join(agent.listener),
        env,
    )
    .args(["--version"])
    .cwd(&agent.root)
    .run_as(user.unless_root())
    .timeout(Duration::from_secs(30));
    let done = process::run_async(child, crate::secret::Masker::new())
        .await
        .ok()?;
    if !done.success() {
        return None;
    }
    done.stdout
        .iter()
        .rev()
        .map(|l| l.trim())
        .find(|l| !l.is_empty() && l.len() <= 64 && !l.chars().any(char::is_control))
        .map(str::to_owned)
}

/// The directories of the agent user that survive a fresh extraction: the work folder (when it is
/// inside the agent dir) and the logs.
fn carried_dirs(work_dir: &str) -> Vec<String> {
    let mut carry = vec!["_diag".to_owned()];
    let work = Path::new(work_dir);
    if !work.is_absolute()
        && let Some(std::path::Component::Normal(first)) = work.components().next()
        && let Some(name) = first.to_str()
        && name != "_diag"
    {
        carry.push(name.to_owned());
    }
    carry
}

/// Downloads and extracts into a private staging directory beside the agent dir, then moves it
/// into place. Returns the verified SHA-256.
async fn fetch_into_place(
    s: &InstallSettings,
    env: &Env,
    request: &Request,
    owner: Option<Owner>,
    net: &Net,
    progress: &Progress,
) -> Result<String, Error> {
    let parent = s
        .agent_dir
        .parent()
        .expect("validated: the agent dir has a parent");
    fs_err::create_dir_all(parent).map_err(|source| Error::Io {
        action: "creating",
        path: parent.to_owned(),
        source,
    })?;
    tracing::info!(source = %request.source, "fetching the agent package");
    let tag = state::tag(&s.agent_dir);
    let target = package::Target {
        cache_dir: &s.cache_dir,
        tag: &tag,
        owner,
        limits: Limits::default(),
    };
    let (staging, fetched) =
        package::fetch_and_extract(request, parent, target, net, progress).await?;
    agent_dependencies(s, env, staging.path()).await?;
    if request.sha256.is_none() {
        tracing::warn!(
            sha256 = %fetched.sha256,
            "no --package-sha256 given: the package was not verified; pass this digest next time"
        );
    }
    tracing::info!(
        sha256 = %fetched.sha256,
        files = fetched.stats.files,
        mb = fetched.bytes / 1_000_000,
        cached = fetched.from_cache,
        "package verified and extracted"
    );
    package::place(staging, &s.agent_dir, &carried_dirs(&s.work_dir), owner)?;
    Ok(fetched.sha256)
}

/// The capability every registration of ours carries, naming the machine that registered it
/// (the Azure VM id, else `/etc/machine-id`): the evidence a later run recognises its own
/// registration by when `.agent` is missing.
pub const MACHINE_CAPABILITY: &str = "AgentBootstrap.Machine";

/// The pool has an agent of the name this install registers, and this agent dir has no
/// registration: is it this machine's? Yes when root's saved settings for this agent dir name
/// that very agent (its id), or when the agent carries [`MACHINE_CAPABILITY`] with this machine's
/// id (written before configure, so an install killed after the server registered the agent, or
/// a reimaged VM, finds it). Anything else is another machine's (a clone has another VM id and
/// registers under its own name): refused, exit 4, unless `--replace`.
fn adopt_or_refuse(
    s: &InstallSettings,
    found: &crate::devops::ServerAgent,
    pool: &Pool,
    machine: Option<&str>,
    previous: Option<&Saved>,
) -> Result<(), Error> {
    let recorded = found.system_capabilities.get(MACHINE_CAPABILITY);
    let saved_id = previous
        .filter(|p| p.pool_id == pool.id && p.agent_name.eq_ignore_ascii_case(&found.name))
        .is_some_and(|p| p.agent_id == found.id);
    if saved_id || (machine.is_some() && recorded.map(String::as_str) == machine) {
        tracing::info!(
            agent = %found.name,
            id = found.id,
            "the pool's agent of this name was registered from this machine (an interrupted \
             install, or this machine reimaged): registering it again in its place"
        );
        return Ok(());
    }
    let by = match recorded {
        Some(m) => format!("registered from another machine ({MACHINE_CAPABILITY} {m})"),
        None => "not registered by agent-bootstrap on this machine".to_owned(),
    };
    if s.replace {
        tracing::warn!(
            agent = %found.name,
            id = found.id,
            "the pool's agent of this name was {by}; taking it over (--replace)"
        );
        return Ok(());
    }
    Err(crate::devops::DevOpsError::NameTakenByAnother {
        pool: pool.name.clone(),
        name: found.name.clone(),
        id: found.id,
        by,
    }
    .into())
}

/// Why `e` may pass by itself once access granted to a new machine has propagated, or `None`
/// when waiting cannot help: the identity not on the VM yet, not a member of the organization
/// yet (401), no Manage on the pool yet, the pool not visible yet. Azure DevOps Server's 401
/// (no Entra token is ever accepted there) is not one of them.
fn not_yet_allowed(e: &Error) -> Option<&'static str> {
    use crate::devops::DevOpsError as D;
    use crate::identity::IdentityError as I;
    let identity = |i: &I| {
        matches!(
            i,
            I::NoIdentity { .. } | I::SelectedIdentityNotAssigned { .. }
        )
        .then_some("this machine has no identity yet")
    };
    match e {
        Error::Identity(i) | Error::DevOps(D::Token(i)) => identity(i),
        Error::DevOps(D::Unauthorized { hint, .. }) if *hint != crate::devops::ON_PREMISES_HINT => {
            Some("the organization does not accept the identity yet")
        }
        Error::DevOps(D::NoManagePermission { .. }) => {
            Some("the identity may not manage the pool yet")
        }
        Error::DevOps(D::PoolNotFound { .. }) => {
            Some("the pool is not visible to the identity yet")
        }
        _ => None,
    }
}

/// `--wait-for-access`: asks for the token, the organization and the pool (with Manage) until
/// they all answer yes, while the answer is one that propagation changes by itself, with backoff
/// (5 s doubling to 60 s) for up to `limit`, saying each time what it waits for. Any other
/// failure, or the last "not yet" when the time is up, is returned as it is.
async fn wait_for_access(
    s: &InstallSettings,
    env: &Env,
    net: &Net,
    limit: Duration,
) -> Result<(), Error> {
    let clock = net.clock().clone();
    let until = clock.budget(limit);
    let mut delay = Duration::from_secs(5);
    loop {
        let attempt = async {
            let budget = clock.budget(NETWORK_BUDGET.min(until.remaining(&clock)));
            let tokens = super::tokens(&s.identity, env, &s.os, net).await?;
            tokens.get(&budget).await?;
            let devops = DevOpsClient::new(&s.url, tokens, net);
            let me = devops.connection_data(&budget).await?.authenticated_user;
            if devops.pool_if_manageable(&s.pool, &budget).await?.is_none() {
                let who = me.provider_display_name.unwrap_or(me.id);
                return Err(devops
                    .explain_unmanageable(&s.pool, &who, &budget)
                    .await
                    .into());
            }
            Ok::<(), Error>(())
        };
        let e = match attempt.await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        let left = until.remaining(&clock);
        let Some(why) = not_yet_allowed(&e) else {
            return Err(e);
        };
        if left < delay {
            tracing::warn!(
                "waited {}s for access (--wait-for-access); still: {why}",
                until.spent(&clock).as_secs()
            );
            return Err(e);
        }
        tracing::warn!(
            "waiting for access: {why}; asking again in {}s ({}s left of --wait-for-access)",
            delay.as_secs(),
            left.as_secs()
        );
        tracing::debug!("{}", crate::report::one_line(&e));
        clock.sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(60));
    }
}

/// The agent's own dependencies, checked on the verified extraction before it is put in place
/// (nothing registered yet), after running its `bin/installdependencies.sh` as root from there when
/// asked (`--install-dependencies`): the staging directory is root's and `0700`, out of the agent
/// user's reach. Linux only (the agent's `config.sh` checks the same).
async fn agent_dependencies(s: &InstallSettings, env: &Env, staging: &Path) -> Result<(), Error> {
    if s.os.is_windows() || !cfg!(target_os = "linux") {
        return Ok(());
    }
    let (env, staging) = (env.clone(), staging.to_owned());
    let install = s.install_dependencies && s.as_root;
    tokio::task::spawn_blocking(move || -> Result<(), Error> {
        if install {
            tracing::info!("running the agent's bin/installdependencies.sh as root");
            for line in crate::deps::install(&staging, &env)? {
                tracing::info!("installdependencies.sh: {line}");
            }
        }
        crate::deps::check(&staging, &crate::host::Facts::current(), &env)?;
        Ok(())
    })
    .await
    .map_err(|e| Error::Configure {
        message: format!("the dependency check did not finish: {e}"),
    })?
}

/// The unattended configure command line for these settings.
fn configure_command(s: &InstallSettings, agent: &AgentDir) -> (PathBuf, Vec<String>) {
    config::configure_command(
        &s.os,
        &agent.root,
        &Configure {
            url: s.url.to_string(),
            pool: s.pool.clone(),
            agent: s.agent_name.clone(),
            work: s.work_dir.clone(),
            windows_service: s.service.then(|| s.user.name().to_owned()),
            proxy_url: s.network.proxy.as_ref().map(|p| p.url.to_string()),
            proxy_user: s.network.proxy.as_ref().and_then(|p| p.user.clone()),
            ca_file: s.network.ca_file.as_ref().map(|p| p.display().to_string()),
        },
    )
}

/// Whether the agent was configured with this proxy and CA file (`.proxy`, `.certificates`).
pub fn network_matches(agent: &AgentDir, network: &crate::net::Network) -> bool {
    let norm = |u: &str| u.trim().trim_end_matches('/').to_ascii_lowercase();
    let (proxy, ca) = agent.network();
    let want_proxy = network.proxy.as_ref().map(|p| norm(p.url.as_str()));
    let want_ca = network.ca_file.as_ref().map(|p| p.display().to_string());
    proxy.as_deref().map(norm) == want_proxy && ca == want_ca
}

/// The secrets configure gets in its environment besides the token: the proxy's password.
fn network_secrets(s: &InstallSettings, child: Child) -> Child {
    match s.network.proxy.as_ref().and_then(|p| p.password.clone()) {
        Some(pw) => child.secret_env(config::PROXY_PASSWORD_ENV, pw),
        None => child,
    }
}

/// The one way the agent is configured: `.proxybypass` first (the agent reads it while it
/// configures: `SetupProxy` → `LoadProxyBypassList`, not only when it starts), then the configure
/// script as the agent user with the token (and a Windows logon password, a proxy password) only in
/// its environment, then the `.env` switches.
async fn configure_with(
    s: &InstallSettings,
    env: &Env,
    agent: &AgentDir,
    user: &RunAs,
    tokens: &Tokens,
    budget: &Budget,
    (program, args): (PathBuf, Vec<String>),
) -> Result<(), Error> {
    write_proxy_bypass(s, env, agent, Some(user)).await?;
    let token = tokens.get(budget).await?;
    let mut child = super::agent_child(
        env,
        s.os.config_script(),
        program,
        &agent.root,
        Some(user),
        &token,
        s.config_timeout,
    )
    .args(args);
    child = network_secrets(s, child);
    if let Some(password) = &s.logon_password {
        child = child.secret_env(config::LOGON_PASSWORD_ENV, password.clone());
    }
    tracing::info!(command = %child.display(), user = %user.name, "configuring the agent");
    super::agent_script(child, &network_masker(s, tokens)).await?;
    write_update_switch(s, env, agent, Some(user))
        .await
        .map(drop)
}

/// The token's masker, with the proxy password added.
fn network_masker(s: &InstallSettings, tokens: &Tokens) -> crate::secret::Masker {
    let masker = tokens.masker();
    if let Some(pw) = s.network.proxy.as_ref().and_then(|p| p.password.as_ref()) {
        masker.add(pw);
    }
    masker
}

/// `.proxybypass` from `NO_PROXY`, in the agent's regex form, when the agent has a proxy. Written
/// by the agent user (a shell as that account, the text in its environment): root opens nothing in
/// the agent dir. Returns whether the file changed.
pub async fn write_proxy_bypass(
    s: &InstallSettings,
    env: &Env,
    agent: &AgentDir,
    user: Option<&RunAs>,
) -> Result<bool, Error> {
    if s.network.proxy.is_none() {
        return Ok(false);
    }
    let (text, skipped) = s.network.agent_bypass();
    for entry in &skipped {
        tracing::warn!("NO_PROXY entry left out of the agent's .proxybypass: {entry}");
    }
    if agent.proxy_bypass().unwrap_or_default() == text {
        return Ok(false);
    }
    write_agent_file(s, env, agent, user, ".proxybypass", &text).await?;
    tracing::info!(
        entries = text.lines().count(),
        "wrote the agent's .proxybypass from NO_PROXY"
    );
    Ok(true)
}

/// The agent's `.capabilities` (its `UserCapabilitiesProvider` reads `KEY=VALUE` lines from the
/// agent root when it registers and whenever it starts:
/// src/Microsoft.VisualStudio.Services.Agent/Capabilities/UserCapabilitiesProvider.cs), before
/// configure, so the registration carries them: `--capability`, and [`MACHINE_CAPABILITY`] naming
/// this machine, the evidence a later run recognises its own registration by.
async fn write_capabilities(
    s: &InstallSettings,
    env: &Env,
    agent: &AgentDir,
    user: &RunAs,
    machine: Option<&str>,
) -> Result<(), Error> {
    let mut all = s.capabilities.clone();
    if let Some(m) = machine {
        all.insert(MACHINE_CAPABILITY.to_owned(), m.to_owned());
    }
    if all.is_empty() {
        return Ok(());
    }
    let text: String = all.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    write_agent_file(s, env, agent, Some(user), ".capabilities", &text).await?;
    tracing::info!(capabilities = all.len(), "wrote the agent's .capabilities");
    Ok(())
}

/// Replaces one of the agent's own files (`.proxybypass`, `.env`) with `text`, as the agent user (a
/// shell as that account, the text in its environment, a temporary file renamed over the old one):
/// root opens nothing in the agent dir. On Windows, SYSTEM writes it, never through a junction or
/// link the service account planted.
async fn write_agent_file(
    s: &InstallSettings,
    env: &Env,
    agent: &AgentDir,
    user: Option<&RunAs>,
    name: &str,
    text: &str,
) -> Result<(), Error> {
    if s.os.is_windows() {
        return crate::fsx::replace_file_no_follow(&agent.root, name, text.as_bytes()).map_err(
            |source| Error::Io {
                action: "writing",
                path: agent.root.join(name),
                source,
            },
        );
    }
    let child = Child::new(format!("write {name}"), "/bin/sh", env)
        .args([
            "-c",
            "umask 022 && printf '%s' \"$TEXT\" > \"$1.tmp\" && mv -f \"$1.tmp\" \"$1\"",
            "sh",
            name,
        ])
        .env("TEXT", text)
        .cwd(&agent.root)
        .run_as(user.and_then(RunAs::unless_root))
        .timeout(Duration::from_secs(30));
    let done = process::run_async(child, crate::secret::Masker::new())
        .await
        .map_err(Error::ConfigureRun)?;
    if done.success() {
        Ok(())
    } else {
        Err(Error::Configure {
            message: format!(
                "writing {name} failed: {}",
                done.error_line().unwrap_or_default()
            ),
        })
    }
}

/// `--disable-update`: `agent.disableupdate=true` in the agent's `.env`, which the listener loads
/// into its environment at every start (`Program.cs`) and checks before acting on an update request
/// (`Agent.cs` `RunAsync`); the agent has no configure option for it (`CommandSettings`,
/// `Constants.Agent.CommandLine`). Without the flag the line is taken out again; every other line
/// is kept. Written by the agent user, like `.proxybypass` (root writes nothing in the agent dir).
/// Returns whether the file changed.
pub async fn write_update_switch(
    s: &InstallSettings,
    env: &Env,
    agent: &AgentDir,
    user: Option<&RunAs>,
) -> Result<bool, Error> {
    let Some(text) = agent.env_with_update_switch(s.disable_update) else {
        return Ok(false);
    };
    write_agent_file(s, env, agent, user, ".env", &text).await?;
    if s.disable_update {
        tracing::info!("the agent's self-update is off (agent.disableupdate in its .env)");
    } else {
        tracing::info!(
            "the agent's self-update is on again (agent.disableupdate taken out of its .env)"
        );
    }
    Ok(true)
}

fn saved_settings(
    s: &InstallSettings,
    identity: &IdentityRequest,
    pool: &Pool,
    agent_id: u64,
    agent_version: Option<String>,
    package_sha256: Option<String>,
) -> Saved {
    Saved {
        schema: 1,
        url: s.url.to_string(),
        pool: pool.name.clone(),
        pool_id: pool.id,
        agent_name: s.agent_name.clone(),
        agent_id,
        agent_dir: s.agent_dir.clone(),
        work_dir: s.work_dir.clone(),
        user: s.user.name().to_owned(),
        dedicated_user: matches!(s.user, AgentUser::Dedicated(_)),
        service: s.service,
        service_unit: match (s.service, s.os.is_windows()) {
            (true, true) => Some(windows_service_name(s, &pool.name)),
            (true, false) if s.as_root => Some(agent_unit(s, &pool.name).name),
            _ => None,
        },
        identity: identity.selector.to_saved(),
        identity_source: Some(identity.kind.name().to_owned()),
        az_login: identity.az_login,
        pat_file: identity.pat_file.clone(),
        agent_version,
        package_sha256,
        machine_id: state::machine_id(),
        vm_id: None,
        package: match &s.package {
            PackageChoice::Explicit { source, .. } => Some(source.to_string()),
            _ => None,
        },
        end_user_processes: s.end_user_processes,
        install_dependencies: s.install_dependencies,
        platform: s.named_platform.clone(),
        boot_unit: None,
        watch_unit: None,
        proxy_url: s.network.proxy.as_ref().map(|p| p.url.to_string()),
        proxy_user: s.network.proxy.as_ref().and_then(|p| p.user.clone()),
        proxy_password_file: s
            .network
            .proxy
            .as_ref()
            .and_then(|p| p.password_file.clone()),
        no_proxy: s.network.no_proxy.clone(),
        ca_file: s.network.ca_file.clone(),
        trusted_cas: vec![],
        disable_update: s.disable_update,
        capabilities: s.capabilities.clone(),
    }
}

/// What install shows when it is done: the agent, where it is, how it runs.
pub fn summary(headline: &str, saved: &Saved) -> Outcome {
    use std::fmt::Write as _;
    let mut out = String::new();
    let service = match (&saved.service_unit, saved.service) {
        (Some(unit), _) => unit.clone(),
        (None, true) => "installed by configure".into(),
        (None, false) => "none (--no-service): start it with ./run.sh".into(),
    };
    writeln!(out, "{headline}").unwrap_or(());
    writeln!(
        out,
        "  agent:        {} (id {})",
        saved.agent_name, saved.agent_id
    )
    .unwrap_or(());
    writeln!(out, "  pool:         {} (id {})", saved.pool, saved.pool_id).unwrap_or(());
    writeln!(out, "  organization: {}", saved.url).unwrap_or(());
    writeln!(
        out,
        "  version:      {}",
        saved.agent_version.as_deref().unwrap_or("unknown")
    )
    .unwrap_or(());
    writeln!(out, "  agent dir:    {}", saved.agent_dir.display()).unwrap_or(());
    writeln!(out, "  runs as:      {}", saved.user).unwrap_or(());
    writeln!(out, "  service:      {service}").unwrap_or(());
    writeln!(
        out,
        "  logs:         {}",
        saved.agent_dir.join("_diag").display()
    )
    .unwrap_or(());
    for ca in &saved.trusted_cas {
        let place = match (&ca.file, &ca.thumbprint) {
            (Some(f), _) => f.display().to_string(),
            (None, Some(t)) => format!("LocalMachine\\Root, thumbprint {t}"),
            _ => String::new(),
        };
        writeln!(
            out,
            "  trusted CA:   {} (added to the system trust store: {place})",
            ca.subject
        )
        .unwrap_or(());
    }
    Outcome::new(out, Some(AgentRef::from(saved)))
}

/// What a dry run shows: what install would do, and that nothing was changed.
fn print_plan(
    s: &InstallSettings,
    c: &Checked,
    package: &PackagePlan,
    plan: &Plan,
) -> Result<Outcome, Error> {
    use std::fmt::Write as _;
    let mut out = String::new();
    writeln!(out, "dry run: nothing was changed").unwrap_or(());
    writeln!(out, "identity:     {} (token accepted)", c.who).unwrap_or(());
    writeln!(out, "organization: {}", s.url).unwrap_or(());
    writeln!(
        out,
        "pool:         {} (id {}), Manage permission: yes",
        c.pool.name, c.pool.id
    )
    .unwrap_or(());
    writeln!(out, "agent:        {}", s.agent_name).unwrap_or(());
    writeln!(out, "agent dir:    {}", s.agent_dir.display()).unwrap_or(());
    match package {
        PackagePlan::Keep { reason } => writeln!(
            out,
            "package:      keep the one in the agent dir ({reason})"
        )
        .unwrap_or(()),
        PackagePlan::Fetch { request, version } => writeln!(
            out,
            "package:      {} from {} (sha256 {})",
            version.as_deref().unwrap_or("as given"),
            request.source,
            request.sha256.as_deref().unwrap_or("not given: unverified")
        )
        .unwrap_or(()),
    }
    writeln!(out, "steps:").unwrap_or(());
    for (i, step) in plan.steps.iter().enumerate() {
        writeln!(out, "  {}. {step}", i + 1).unwrap_or(());
    }
    Ok(Outcome::new(out, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_and_log_directories_are_carried_over() {
        assert_eq!(carried_dirs("_work"), vec!["_diag", "_work"]);
        assert_eq!(carried_dirs("builds/w"), vec!["_diag", "builds"]);
        assert_eq!(carried_dirs("/mnt/work"), vec!["_diag"]);
        assert_eq!(carried_dirs("../work"), vec!["_diag"]);
    }
}
