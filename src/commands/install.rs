//! `agent-bootstrap install`: managed identity → preflight → verified package → unattended
//! configuration as an unprivileged user → service → saved settings.
//!
//! The order is chosen so that a mistake costs nothing: input is validated before anything else, the
//! token and the organization/pool permissions are checked before the disk is touched, the package
//! is verified before it is moved into place, and an agent that is already configured and known to
//! the server is left alone (exit 0, no change).

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::agent::config::{self, Configure, TOKEN_ENV};
use crate::agent::{AgentDir, AgentSettings, same_server};
use crate::clock::Clock;
use crate::devops::{DevOpsClient, Pool};
use crate::env::Env;
use crate::error::Error;
use crate::identity::ImdsClient;
use crate::package::{self, PackageError, Request, Source};
use crate::process::{self, Child, RunAs};
use crate::progress::Progress;
use crate::secret::{Masker, Secret};
use crate::service;
use crate::settings::{AgentUser, InstallSettings, PackageChoice};
use crate::state::{self, Saved};
use crate::user;

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

/// How long a run waits for another one working on the same agent dir.
pub const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(20 * 60);

pub async fn run(
    s: &InstallSettings,
    env: &Env,
    clock: Clock,
    progress: &Progress,
) -> Result<(), Error> {
    if s.dry_run {
        return run_locked(s, env, clock, progress, "installed").await;
    }
    let _lock = crate::lock::acquire(&s.state_dir, &s.agent_dir, LOCK_WAIT).await?;
    run_locked(s, env, clock, progress, "installed").await
}

/// The install flow, with the agent dir's lock held by the caller (install or reconcile).
pub async fn run_locked(
    s: &InstallSettings,
    env: &Env,
    clock: Clock,
    progress: &Progress,
    headline: &str,
) -> Result<(), Error> {
    let agent = AgentDir::new(&s.agent_dir, &s.os);

    // 1. Input and local state that make the request impossible, before any network call.
    let existing = agent.settings()?;
    if let Some(cfg) = &existing {
        check_same_agent(cfg, s)?;
    }

    // 2. Token.
    let imds = ImdsClient::from_env(env, clock.clone())?;
    let token = imds.token(&s.selector).await?.token;
    let masker = Masker::with(&token);

    // 3. Preflight against Azure DevOps.
    let devops = DevOpsClient::new(&s.url, token.clone(), clock.clone());
    let me = devops.connection_data().await?.authenticated_user;
    let who = me
        .provider_display_name
        .clone()
        .unwrap_or_else(|| me.id.clone());
    tracing::info!(identity = %who, org = %s.url, "token accepted by Azure DevOps");
    let pool = devops.manageable_pool(&s.pool, &who).await?;
    tracing::info!(pool = %pool.name, pool_id = pool.id, "identity may manage the pool");

    // 4. An existing registration: healthy → nothing to do; gone from the server → register again.
    let mut reregister = false;
    if let Some(cfg) = &existing {
        match devops.find_agent(pool.id, &cfg.agent_name).await? {
            Some(a) if a.id == cfg.agent_id => {
                return already_installed(s, env, &agent, cfg, &pool, &masker).await;
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

    // 5. Which package.
    let package = plan_package(s, &agent, &devops).await?;
    let run_as_root = s.user.name() == "root";
    if s.dry_run {
        return print_plan(s, &agent, &who, &pool, &package, reregister);
    }

    // 6. The account, then the files.
    let user = user::ensure(&s.user).await?;
    if run_as_root {
        tracing::warn!(
            "the agent will run as root (--user root): jobs get full control of this machine"
        );
    }
    let mut agent_version = None;
    let mut package_sha256 = None;
    match &package {
        PackagePlan::Keep { reason } => {
            tracing::info!(
                "keeping the agent package in {}: {reason}",
                s.agent_dir.display()
            );
            ensure_owner(&s.agent_dir, &user)?;
        }
        PackagePlan::Fetch { request, version } => {
            let fetched = fetch_into_place(s, request, &user, progress, &clock).await?;
            package_sha256 = Some(fetched);
            agent_version = version.clone();
        }
    }
    if agent_version.is_none() {
        agent_version = installed_version(&agent).await;
    }

    // 7. Configure.
    if reregister {
        // A listener still running with the old key would not pick up the new one.
        if s.service
            && let Some(unit) = agent.service_name()
            && let Some(sc) = service::Systemctl::find()
        {
            sc.run(&["stop", &unit]).await?;
        }
        agent.remove_registration()?;
    }
    if agent.has_stale_registration() {
        tracing::warn!("removing a registration left by an interrupted configuration");
        agent.remove_registration()?;
    }
    configure(s, &agent, &user, &token, &masker).await?;
    let settings = agent.settings()?.ok_or_else(|| Error::Configure {
        message: format!(
            "{} reported success but wrote no .agent file",
            s.os.config_script()
        ),
    })?;

    // 8. Service (Windows: configure installed it, --runAsService).
    if s.service && !s.os.is_windows() {
        let fresh = matches!(package, PackagePlan::Fetch { .. });
        service::install_and_start_agent(
            env,
            &s.os,
            &s.agent_dir,
            &user,
            fresh,
            s.no_block_start,
            &settings,
            &masker,
        )
        .await?;
    }

    // 9. Later boots, then remember and report.
    let boot_unit = ensure_boot_unit(s, env, &agent).await?;
    let mut saved = saved_settings(s, &settings, &pool, &agent, agent_version, package_sha256);
    saved.vm_id = imds.vm_id().await;
    saved.boot_unit = boot_unit;
    let path = state::save(&s.state_dir, &saved)?;
    tracing::info!(file = %path.display(), "saved settings for later runs");
    print_summary(headline, &saved)
}

/// Writes and enables the unit that runs `reconcile` at boot (install's `--no-boot` skips it).
/// Returns its name, or `None` where there is none.
pub async fn ensure_boot_unit(
    s: &InstallSettings,
    env: &Env,
    agent: &AgentDir,
) -> Result<Option<String>, Error> {
    if !s.boot || s.os.is_windows() {
        return Ok(None);
    }
    if !service::systemd_available(env) {
        tracing::warn!(
            "systemd is not running here: no boot unit installed; run `agent-bootstrap reconcile \
             --agent-dir {}` at start yourself",
            s.agent_dir.display()
        );
        return Ok(None);
    }
    let name = service::boot_unit_name(&s.agent_dir);
    let exe = std::env::current_exe().map_err(|source| Error::Io {
        action: "finding",
        path: "the agent-bootstrap binary".into(),
        source,
    })?;
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
    let text = service::render_boot_unit(
        &exe,
        &s.agent_dir,
        &s.state_dir,
        agent.service_name().as_deref(),
    );
    let dir = service::unit_dir(env);
    let path = dir.join(&name);
    let unchanged = fs_err::read_to_string(&path).is_ok_and(|t| t == text);
    let systemctl = service::Systemctl::require()?;
    if !unchanged {
        let write = |source| Error::Io {
            action: "writing the boot unit",
            path: path.clone(),
            source,
        };
        fs_err::create_dir_all(&dir).map_err(write)?;
        fs_err::write(&path, &text).map_err(write)?;
        systemctl.run(&["daemon-reload"]).await?;
        tracing::info!(unit = %name, "installed the boot unit that runs reconcile");
    }
    if unchanged && systemctl.state(&name).await?.enabled {
        return Ok(Some(name));
    }
    systemctl.run(&["enable", &name]).await?;
    Ok(Some(name))
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
        cfg.agent_name,
        cfg.pool_name.as_deref().unwrap_or("?"),
        cfg.server_url,
    )))
}

async fn already_installed(
    s: &InstallSettings,
    env: &Env,
    agent: &AgentDir,
    cfg: &AgentSettings,
    pool: &Pool,
    masker: &Masker,
) -> Result<(), Error> {
    tracing::info!(
        agent = %cfg.agent_name,
        id = cfg.agent_id,
        "already configured and known to the server"
    );
    if s.dry_run {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "dry run: nothing would change");
        let _ = writeln!(
            out,
            "agent '{}' (id {}) is already configured in {} and registered in pool '{}'",
            cfg.agent_name,
            cfg.agent_id,
            s.agent_dir.display(),
            pool.name
        );
        return Ok(());
    }
    // A configured agent whose service is missing (configure ran, the service step did not).
    if s.service && !s.os.is_windows() && agent.service_name().is_none() {
        let user = user::ensure(&s.user).await?;
        service::install_and_start_agent(
            env,
            &s.os,
            &s.agent_dir,
            &user,
            false,
            s.no_block_start,
            cfg,
            masker,
        )
        .await?;
    }
    let previous = state::load(&s.state_dir, &s.agent_dir)?;
    let mut saved = saved_settings(
        s,
        cfg,
        pool,
        agent,
        previous.as_ref().and_then(|p| p.agent_version.clone()),
        previous.as_ref().and_then(|p| p.package_sha256.clone()),
    );
    saved.machine_id = previous
        .as_ref()
        .map_or(saved.machine_id.clone(), |p| p.machine_id.clone());
    saved.vm_id = previous.as_ref().and_then(|p| p.vm_id.clone());
    saved.boot_unit = ensure_boot_unit(s, env, agent).await?;
    if previous.as_ref() != Some(&saved) {
        state::save(&s.state_dir, &saved)?;
    }
    print_summary("already installed, nothing to do", &saved)
}

async fn plan_package(
    s: &InstallSettings,
    agent: &AgentDir,
    devops: &DevOpsClient,
) -> Result<PackagePlan, Error> {
    if agent.is_configured() {
        return Ok(PackagePlan::Keep {
            reason: "the agent is configured (never re-extracted over)".into(),
        });
    }
    if agent.self_updated() {
        return Ok(PackagePlan::Keep {
            reason: "the agent updated itself (bin is a link); never downgraded".into(),
        });
    }
    let kind = s.os.archive_kind();
    let (request, version) = match &s.package {
        PackageChoice::Explicit { source, sha256 } => (
            Request {
                source: source.clone(),
                sha256: sha256.clone(),
                kind,
            },
            None,
        ),
        PackageChoice::Latest | PackageChoice::Version(_) => {
            let wanted = match &s.package {
                PackageChoice::Version(v) => Some(v.as_str()),
                _ => None,
            };
            let meta = devops.agent_package(&s.os.rid(), wanted).await?;
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
    };
    // A package already extracted (an image with the agent baked in, a re-run after a failed
    // configuration) is kept when it is the wanted version.
    if agent.package_present()
        && let Some(v) = &version
        && let Some(have) = installed_version(agent).await
        && &have == v
    {
        return Ok(PackagePlan::Keep {
            reason: format!("version {v} is already extracted"),
        });
    }
    Ok(PackagePlan::Fetch { request, version })
}

/// `bin/Agent.Listener --version` without switching user (used before the user exists; the files
/// are then root's own).
/// The extracted agent's version (`bin/Agent.Listener --version`), run as the account that owns
/// it: root never executes a file another account controls.
pub async fn installed_version(agent: &AgentDir) -> Option<String> {
    let owner = crate::user::owner_of(&agent.root.join(agent.listener))?;
    let child = Child::new("Agent.Listener --version", agent.root.join(agent.listener))
        .args(["--version"])
        .cwd(&agent.root)
        .run_as(owner.unless_root())
        .timeout(std::time::Duration::from_secs(30));
    let done = process::run_async(child, Masker::new()).await.ok()?;
    if !done.success() {
        return None;
    }
    done.stdout
        .iter()
        .rev()
        .map(|l| l.trim())
        .find(|l| !l.is_empty())
        .map(str::to_owned)
}

fn ensure_owner(dir: &Path, user: &RunAs) -> Result<(), Error> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs_err::metadata(dir).map_err(|source| Error::Io {
        action: "reading",
        path: dir.to_owned(),
        source,
    })?;
    if meta.uid() != user.uid {
        user::chown_tree(dir, user)?;
    }
    Ok(())
}

/// Downloads and extracts into a staging directory beside the agent dir, then moves it into place.
/// Returns the verified SHA-256.
async fn fetch_into_place(
    s: &InstallSettings,
    request: &Request,
    user: &RunAs,
    progress: &Progress,
    clock: &Clock,
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
    // Same file system as the agent dir, so moving it into place is a rename; removed on any error.
    let staging = tempfile::Builder::new()
        .prefix(".agent-bootstrap-staging-")
        .tempdir_in(parent)
        .map_err(|source| Error::Io {
            action: "creating a staging directory in",
            path: parent.to_owned(),
            source,
        })?;
    tracing::info!(source = %request.source, "fetching the agent package");
    let fetched =
        package::fetch_and_extract(request, &s.cache_dir, staging.path(), progress, clock).await?;
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
    {
        use std::os::unix::fs::PermissionsExt;
        fs_err::set_permissions(staging.path(), std::fs::Permissions::from_mode(0o755)).map_err(
            |source| Error::Io {
                action: "setting permissions on",
                path: staging.path().to_owned(),
                source,
            },
        )?;
    }
    user::chown_tree(staging.path(), user)?;
    let staged: PathBuf = staging.keep();
    if let Err(e) = package::move_into_place(&staged, &s.agent_dir) {
        let _ = fs_err::remove_dir_all(&staged);
        return Err(e.into());
    }
    Ok(fetched.sha256)
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
            windows_service: s.service,
        },
    )
}

pub async fn configure(
    s: &InstallSettings,
    agent: &AgentDir,
    user: &RunAs,
    token: &Secret,
    masker: &Masker,
) -> Result<(), Error> {
    let (program, args) = configure_command(s, agent);
    let child = super::agent_child(
        s.os.config_script(),
        program,
        &agent.root,
        Some(user),
        token,
        s.config_timeout,
    )
    .args(args);
    tracing::info!(command = %child.display(), user = %user.name, "configuring the agent");
    super::agent_script(child, masker).await
}

fn saved_settings(
    s: &InstallSettings,
    cfg: &AgentSettings,
    pool: &Pool,
    agent: &AgentDir,
    agent_version: Option<String>,
    package_sha256: Option<String>,
) -> Saved {
    Saved {
        schema: 1,
        url: s.url.to_string(),
        pool: pool.name.clone(),
        pool_id: pool.id,
        agent_name: cfg.agent_name.clone(),
        agent_id: cfg.agent_id,
        agent_dir: s.agent_dir.clone(),
        work_dir: s.work_dir.clone(),
        user: s.user.name().to_owned(),
        dedicated_user: matches!(s.user, AgentUser::Dedicated(_)),
        service: s.service,
        service_unit: agent.service_name(),
        identity: s.selector.to_saved(),
        agent_version,
        package_sha256,
        machine_id: state::machine_id(),
        vm_id: None,
        package: match &s.package {
            PackageChoice::Explicit { source, .. } => Some(source.to_string()),
            _ => None,
        },
        boot_unit: None,
    }
}

fn out_err(source: std::io::Error) -> Error {
    Error::Io {
        action: "writing to",
        path: "stdout".into(),
        source,
    }
}

pub fn print_summary(headline: &str, saved: &Saved) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    let service = match (&saved.service_unit, saved.service) {
        (Some(unit), _) => unit.clone(),
        (None, true) => "installed by configure".into(),
        (None, false) => "none (--no-service): start it with ./run.sh".into(),
    };
    writeln!(out, "{headline}").map_err(out_err)?;
    writeln!(
        out,
        "  agent:        {} (id {})",
        saved.agent_name, saved.agent_id
    )
    .map_err(out_err)?;
    writeln!(out, "  pool:         {} (id {})", saved.pool, saved.pool_id).map_err(out_err)?;
    writeln!(out, "  organization: {}", saved.url).map_err(out_err)?;
    writeln!(
        out,
        "  version:      {}",
        saved.agent_version.as_deref().unwrap_or("unknown")
    )
    .map_err(out_err)?;
    writeln!(out, "  agent dir:    {}", saved.agent_dir.display()).map_err(out_err)?;
    writeln!(out, "  runs as:      {}", saved.user).map_err(out_err)?;
    writeln!(out, "  service:      {service}").map_err(out_err)?;
    writeln!(
        out,
        "  logs:         {}",
        saved.agent_dir.join("_diag").display()
    )
    .map_err(out_err)?;
    Ok(())
}

fn print_plan(
    s: &InstallSettings,
    agent: &AgentDir,
    who: &str,
    pool: &Pool,
    package: &PackagePlan,
    reregister: bool,
) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    let mut step = 0;
    let mut line = |text: String| -> Result<(), Error> {
        step += 1;
        writeln!(out, "  {step}. {text}").map_err(out_err)
    };
    let user_exists = user::lookup(s.user.name()).ok().flatten().is_some();
    {
        let mut head = std::io::stdout().lock();
        writeln!(head, "dry run: nothing was changed").map_err(out_err)?;
        writeln!(head, "identity:     {who} (token accepted)").map_err(out_err)?;
        writeln!(head, "organization: {}", s.url).map_err(out_err)?;
        writeln!(
            head,
            "pool:         {} (id {}), Manage permission: yes",
            pool.name, pool.id
        )
        .map_err(out_err)?;
        writeln!(head, "agent:        {}", s.agent_name).map_err(out_err)?;
        writeln!(head, "agent dir:    {}", s.agent_dir.display()).map_err(out_err)?;
        match package {
            PackagePlan::Keep { reason } => writeln!(
                head,
                "package:      keep the one in the agent dir ({reason})"
            )
            .map_err(out_err)?,
            PackagePlan::Fetch { request, version } => writeln!(
                head,
                "package:      {} from {} (sha256 {})",
                version.as_deref().unwrap_or("as given"),
                request.source,
                request.sha256.as_deref().unwrap_or("not given: unverified")
            )
            .map_err(out_err)?,
        }
        writeln!(head, "steps:").map_err(out_err)?;
    }
    if !user_exists {
        line(format!(
            "create system user '{}' (useradd --system --create-home)",
            s.user.name()
        ))?;
    }
    if let PackagePlan::Fetch { request, .. } = package {
        let parent = s.agent_dir.parent().unwrap_or(Path::new("/"));
        let cached = request
            .sha256
            .as_ref()
            .map(|h| package::cache_path(&s.cache_dir, h, request.kind))
            .filter(|p| p.is_file());
        match cached {
            Some(p) => line(format!("read the cached package {}", p.display()))?,
            None => line(format!(
                "download {} into the cache {}, verifying its SHA-256",
                request.source,
                s.cache_dir.display()
            ))?,
        }
        line(format!(
            "extract into {}/.agent-bootstrap-staging-*, then move it to {}",
            parent.display(),
            s.agent_dir.display()
        ))?;
    }
    line(format!(
        "give {} to user '{}'",
        s.agent_dir.display(),
        s.user.name()
    ))?;
    if reregister || agent.has_stale_registration() {
        line(
            "remove the stale local registration (.agent, .credentials, .credentials_rsaparams)"
                .into(),
        )?;
    }
    let (program, args) = configure_command(s, agent);
    let child = Child::new(s.os.config_script(), program)
        .args(args)
        .secret_env(TOKEN_ENV, Secret::new(String::new()));
    let as_root = if s.user.name() == "root" {
        "AGENT_ALLOW_RUNASROOT=1 "
    } else {
        ""
    };
    line(format!(
        "run as '{}' in {}: {as_root}{}",
        s.user.name(),
        s.agent_dir.display(),
        child.display()
    ))?;
    if s.service {
        for st in service::plan(&s.os, s.user.name(), agent.service_name().is_some()) {
            line(format!("run as root: {} {}", st.program, st.args.join(" ")))?;
        }
    }
    if s.boot && s.service && !s.os.is_windows() {
        line(format!(
            "write and enable the boot unit {} (runs `agent-bootstrap reconcile` at boot), if systemd runs",
            service::boot_unit_name(&s.agent_dir)
        ))?;
    }
    line(format!(
        "save settings (no secret) to {}",
        state::file_for(&s.state_dir, &s.agent_dir).display()
    ))?;
    Ok(())
}
