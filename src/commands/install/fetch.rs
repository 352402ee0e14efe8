//! Which agent package an install uses (the one in the agent dir, or the verified archive of the
//! version wanted) and putting a fresh one in place with the agent's work and logs carried over.

use std::path::Path;
use std::time::Duration;

use crate::agent::AgentDir;
use crate::devops::PackageMetadata;
use crate::env::Env;
use crate::error::Error;
use crate::net::Net;
use crate::package::{Limits, Owner, PackageError, Request, Source};
use crate::process::{Child, RunAs};
use crate::progress::Progress;
use crate::settings::{InstallSettings, PackageChoice};
use crate::{package, process, state};

use super::Seen;
use super::plan::PackagePlan;

pub(super) async fn plan_package(
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
pub(super) fn carried_dirs(work_dir: &str) -> Vec<String> {
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
pub(super) async fn fetch_into_place(
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
    // The dependency check's library listing does not depend on the package: made while it
    // downloads (not with --install-dependencies, which may add libraries first).
    let listing = (checks_dependencies(s) && !s.install_dependencies).then(|| {
        let env = env.clone();
        tokio::task::spawn_blocking(move || {
            crate::deps::list_libraries(&crate::host::Facts::current(), &env)
        })
    });
    let fetched = package::fetch_and_extract(request, parent, target, net, progress).await;
    let listing = match listing {
        Some(task) => task.await.ok(),
        None => None,
    };
    let (staging, fetched) = fetched?;
    agent_dependencies(s, env, staging.path(), listing).await?;
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

/// The agent's own dependencies, checked on the verified extraction before it is put in place
/// (nothing registered yet), after running its `bin/installdependencies.sh` as root from there when
/// asked (`--install-dependencies`): the staging directory is root's and `0700`, out of the agent
/// user's reach. Linux only (the agent's `config.sh` checks the same).
pub(super) async fn agent_dependencies(
    s: &InstallSettings,
    env: &Env,
    staging: &Path,
    listing: Option<crate::deps::Listing>,
) -> Result<(), Error> {
    if !checks_dependencies(s) {
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
        crate::deps::check(&staging, &crate::host::Facts::current(), &env, listing)?;
        Ok(())
    })
    .await
    .map_err(|e| Error::Configure {
        message: format!("the dependency check did not finish: {e}"),
    })?
}

/// Linux only (the agent's `config.sh` checks the same).
fn checks_dependencies(s: &InstallSettings) -> bool {
    !s.os.is_windows() && cfg!(target_os = "linux")
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
