//! Azure Arc-enabled servers: the Connected Machine agent's identity endpoint (`identity.md` §3).
//!
//! The endpoint is `IDENTITY_ENDPOINT` when the agent has set `IDENTITY_ENDPOINT` and
//! `IMDS_ENDPOINT`, else `http://localhost:40342/…` when the agent is installed (its `himds` binary
//! exists; services started before it set the machine environment have no variables). A first
//! request with `Metadata: true` is answered `401` with `WWW-Authenticate: Basic realm=<key file>`;
//! the key file's path is checked before anything is read (in the agent's tokens directory, a
//! `.key`, a regular file of at most 4096 bytes, no link), and the same request is sent again with
//! `Authorization: Basic <file content>`. Reading the key needs root (or the `himds` group), which
//! provisioning has. Arc servers have only a system-assigned identity: a selector is refused.
//! Both requests follow IMDS's column of the retry table, as the Azure SDKs do.

use std::path::{Component, Path, PathBuf};

use url::Url;

use super::{AccessToken, Found, IdentityError, Kind, Selector, check_endpoint, parse_token};
use crate::clock::Budget;
use crate::env::Env;
use crate::net::{Answer, Net, Service};
use crate::os::Os;
use crate::secret::{Masker, Secret};

pub(crate) const ENDPOINT_ENV: &str = "IDENTITY_ENDPOINT";
pub(crate) const IMDS_ENDPOINT_ENV: &str = "IMDS_ENDPOINT";
const DEFAULT_ENDPOINT: &str = "http://localhost:40342/metadata/identity/oauth2/token";
const API_VERSION: &str = "2020-06-01";
/// The largest key file read (all Azure SDKs use the same limit).
const MAX_KEY: u64 = 4096;
/// Debug builds only: a directory standing in for the Arc agent's (`himds`, `tokens/`), so the
/// tests neither find nor need a real agent.
pub(crate) const TEST_DIR_ENV: &str = "AGENT_BOOTSTRAP_TEST_ARC_DIR";
const SOURCE: &str = "the Azure Arc identity endpoint";

pub struct Arc {
    endpoint: Url,
    tokens_dir: PathBuf,
    pub(super) net: Net,
}

/// Where the Connected Machine agent keeps its binary and its key files.
struct Layout {
    himds: PathBuf,
    tokens_dir: PathBuf,
}

fn layout(env: &Env, os: &Os) -> Layout {
    if cfg!(debug_assertions)
        && let Some(dir) = env.var(TEST_DIR_ENV)
    {
        let dir = PathBuf::from(dir);
        return Layout {
            himds: dir.join("himds"),
            tokens_dir: dir.join("tokens"),
        };
    }
    if os.is_windows() {
        let program_files = env.var("ProgramFiles").unwrap_or(r"C:\Program Files");
        let program_data = env.var("ProgramData").unwrap_or(r"C:\ProgramData");
        Layout {
            himds: Path::new(program_files).join(r"AzureConnectedMachineAgent\himds.exe"),
            tokens_dir: Path::new(program_data).join(r"AzureConnectedMachineAgent\Tokens"),
        }
    } else {
        Layout {
            himds: PathBuf::from("/opt/azcmagent/bin/himds"),
            tokens_dir: PathBuf::from("/var/opt/azcmagent/tokens"),
        }
    }
}

/// Whether this is an Arc-enabled server: the agent's variables, or its binary.
pub(crate) fn detect(
    env: &Env,
    selector: &Selector,
    os: &Os,
    net: &Net,
) -> Result<Found<Arc>, IdentityError> {
    let l = layout(env, os);
    let (endpoint, why) = match (env.var(ENDPOINT_ENV), env.var(IMDS_ENDPOINT_ENV)) {
        (Some(e), Some(_)) => (
            check_endpoint(ENDPOINT_ENV, e)?,
            format!("{ENDPOINT_ENV} and {IMDS_ENDPOINT_ENV} are set"),
        ),
        _ if l.himds.is_file() => (
            Url::parse(DEFAULT_ENDPOINT).expect("a valid constant"),
            format!(
                "the Azure Connected Machine agent is installed ({})",
                l.himds.display()
            ),
        ),
        _ => {
            return Ok(Found::Absent(format!(
                "{ENDPOINT_ENV} and {IMDS_ENDPOINT_ENV} are not set and the Azure Connected \
                 Machine agent is not installed (no {})",
                l.himds.display()
            )));
        }
    };
    if let Some(flag) = selector.flag() {
        return Err(IdentityError::UnsupportedSelector {
            flag,
            kind: Kind::Arc,
            why: "Azure Arc servers have only a system-assigned identity",
        });
    }
    Ok(Found::Here {
        source: Arc {
            endpoint,
            tokens_dir: l.tokens_dir,
            net: net.clone(),
        },
        why,
    })
}

impl Arc {
    pub fn describe(&self) -> String {
        format!(
            "the Azure Arc identity endpoint {} (the server's system-assigned identity)",
            self.endpoint
        )
    }

    fn token_url(&self) -> Url {
        let mut url = self.endpoint.clone();
        url.query_pairs_mut()
            .append_pair("api-version", API_VERSION)
            .append_pair("resource", super::AZURE_DEVOPS_RESOURCE);
        url
    }

    pub async fn token(
        &self,
        budget: Budget,
        masker: &Masker,
    ) -> Result<AccessToken, IdentityError> {
        let url = self.token_url();
        let shown = super::url_without_query(&url);
        let gave_up = |g| {
            IdentityError::gave_up(
                SOURCE,
                &shown,
                "is the Azure Connected Machine agent running (`azcmagent show`)?",
                g,
            )
        };
        let client = self.net.client(Service::Imds);

        // 1. The challenge: a 401 naming the key file.
        let realm = self
            .net
            .retry("Azure Arc challenge", budget, async |_| {
                let answer = self
                    .net
                    .fetch(client.get(url.clone()).header("Metadata", "true"))
                    .await;
                self.net.settle(
                    Service::Imds,
                    answer,
                    |a| {
                        Err(IdentityError::BadResponse {
                            source_name: SOURCE,
                            url: shown.clone(),
                            detail: format!("answered {} instead of the 401 challenge", a.status),
                        })
                    },
                    |a| challenge(a, &shown),
                )
            })
            .await
            .map_err(gave_up)??;

        // 2. The key, read only from where the agent keeps keys.
        let path = check_key_path(&realm, &self.tokens_dir)?;
        let key = read_key(&path)?;
        masker.add(&key);

        // 3. The token.
        let outcome = self
            .net
            .retry("Azure Arc token", budget, async |_| {
                let request = client
                    .get(url.clone())
                    .header("Metadata", "true")
                    .header("Authorization", format!("Basic {}", key.expose()));
                let answer = self.net.fetch(request).await;
                let now = self.net.clock().unix_now();
                self.net.settle(
                    Service::Imds,
                    answer,
                    |a| parse_token(SOURCE, &a.body, &shown, now),
                    |a| {
                        Err(IdentityError::Refused {
                            source_name: SOURCE,
                            url: shown.clone(),
                            status: a.status,
                            detail: super::error_detail(&a.body),
                            hint: String::new(),
                        })
                    },
                )
            })
            .await;
        outcome.map_err(gave_up)?
    }
}

/// The key file a 401 names (`WWW-Authenticate: Basic realm=<path>`); any other refusal is one.
fn challenge(a: Answer, url: &str) -> Result<String, IdentityError> {
    let refused = |a: &Answer, detail: String| IdentityError::Refused {
        source_name: SOURCE,
        url: url.to_owned(),
        status: a.status,
        detail,
        hint: String::new(),
    };
    if a.status != 401 {
        return Err(refused(&a, super::error_detail(&a.body)));
    }
    let header = a
        .headers
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let realm = header
        .split_once("realm=")
        .map(|(_, r)| r.trim().trim_matches('"').to_owned())
        .filter(|r| !r.is_empty());
    realm.ok_or_else(|| {
        refused(
            &a,
            format!("401 without a key file in WWW-Authenticate ({header:?})"),
        )
    })
}

/// The realm's path, if it names a `.key` file directly in the agent's tokens directory (no `..`,
/// no other directory): the check every Azure SDK makes before reading.
fn check_key_path(realm: &str, tokens_dir: &Path) -> Result<PathBuf, IdentityError> {
    let bad = |problem: &str| IdentityError::ArcKey {
        path: realm.to_owned(),
        problem: problem.to_owned(),
    };
    let path = PathBuf::from(realm);
    if !path.is_absolute()
        || path
            .components()
            .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(bad("is not a plain absolute path"));
    }
    let same_dir = match path.parent() {
        Some(p) if cfg!(windows) => p
            .to_string_lossy()
            .eq_ignore_ascii_case(&tokens_dir.to_string_lossy()),
        Some(p) => p == tokens_dir,
        None => false,
    };
    if !same_dir {
        return Err(bad(&format!(
            "is not in the agent's key directory {}",
            tokens_dir.display()
        )));
    }
    if path.extension().and_then(|e| e.to_str()) != Some("key") {
        return Err(bad("is not a .key file"));
    }
    Ok(path)
}

/// The key's content, verbatim: a regular file (not a link) of at most [`MAX_KEY`] bytes, checked
/// before it is read.
fn read_key(path: &Path) -> Result<Secret, IdentityError> {
    let bad = |problem: String| IdentityError::ArcKey {
        path: path.display().to_string(),
        problem,
    };
    let meta = fs_err::symlink_metadata(path).map_err(|e| bad(format!("cannot be read: {e}")))?;
    if !meta.file_type().is_file() {
        return Err(bad("is not a regular file".into()));
    }
    if meta.len() > MAX_KEY {
        return Err(bad(format!("is larger than {MAX_KEY} bytes")));
    }
    let text = crate::fsx::read_untrusted(path, MAX_KEY)
        .map_err(|e| bad(format!("cannot be read: {e}")))?;
    if text.is_empty() {
        return Err(bad("is empty".into()));
    }
    Ok(Secret::new(text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;

    #[test]
    fn key_paths_must_be_keys_in_the_agents_directory() {
        let (d, sep, other) = if cfg!(windows) {
            (
                r"C:\ProgramData\AzureConnectedMachineAgent\Tokens",
                r"\",
                r"C:\Windows",
            )
        } else {
            ("/var/opt/azcmagent/tokens", "/", "/etc")
        };
        let dir = Path::new(d);
        assert!(check_key_path(&format!("{d}{sep}abc.key"), dir).is_ok());
        for (realm, problem) in [
            (
                format!("{d}{sep}..{sep}..{sep}x{sep}shadow.key"),
                "plain absolute",
            ),
            (format!("{d}{sep}sub{sep}abc.key"), "key directory"),
            (format!("{other}{sep}abc.key"), "key directory"),
            (format!("{d}{sep}abc.txt"), ".key"),
            ("abc.key".to_owned(), "plain absolute"),
        ] {
            let e = check_key_path(&realm, dir).unwrap_err();
            assert!(e.to_string().contains(problem), "{realm}: {e}");
        }
    }

    #[test]
    fn key_files_are_read_only_when_small_and_regular() {
        let d = tempfile::tempdir().unwrap();
        let key = d.path().join("a.key");
        std::fs::write(&key, "k3y").unwrap();
        assert_eq!(read_key(&key).unwrap().expose(), "k3y");
        let big = d.path().join("big.key");
        std::fs::write(&big, vec![b'x'; 4097]).unwrap();
        let e = read_key(&big).unwrap_err();
        assert!(e.to_string().contains("4096"), "{e}");
        #[cfg(unix)]
        {
            let link = d.path().join("link.key");
            std::os::unix::fs::symlink(&key, &link).unwrap();
            assert!(read_key(&link).is_err());
        }
    }

    #[test]
    fn challenges_must_name_a_key() {
        let mut a = Answer {
            status: 401,
            headers: Default::default(),
            body: String::new(),
        };
        a.headers.insert(
            "www-authenticate",
            "Basic realm=/var/opt/azcmagent/tokens/x.key"
                .parse()
                .unwrap(),
        );
        assert_eq!(
            challenge(a, "u").unwrap(),
            "/var/opt/azcmagent/tokens/x.key"
        );
        let bare = Answer {
            status: 401,
            headers: Default::default(),
            body: String::new(),
        };
        assert!(challenge(bare, "u").is_err());
    }

    #[test]
    fn the_test_dir_knob_only_works_in_debug_builds() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("himds"), "").unwrap();
        let env = Env::fake(&[(TEST_DIR_ENV, d.path().to_str().unwrap())], "h", true);
        let found = detect(
            &env,
            &Selector::Default,
            &crate::host::current_os(),
            &Net::new(Clock::virtual_clock()),
        );
        let real_agent = Path::new("/opt/azcmagent/bin/himds").is_file();
        assert_eq!(
            matches!(found, Ok(Found::Here { .. })),
            cfg!(debug_assertions) || real_agent
        );
    }

    #[test]
    fn arc_has_only_the_system_assigned_identity() {
        let net = Net::new(Clock::virtual_clock());
        let env = Env::fake(
            &[
                (
                    ENDPOINT_ENV,
                    "http://localhost:40342/metadata/identity/oauth2/token",
                ),
                (IMDS_ENDPOINT_ENV, "http://localhost:40342"),
            ],
            "h",
            true,
        );
        let os = crate::host::current_os();
        assert!(matches!(
            detect(&env, &Selector::Default, &os, &net),
            Ok(Found::Here { .. })
        ));
        let e = detect(&env, &Selector::ClientId("c".into()), &os, &net)
            .err()
            .unwrap();
        assert!(e.to_string().contains("--client-id"), "{e}");
        assert!(e.is_input());
        let nothing = Env::fake(&[(TEST_DIR_ENV, "/nonexistent")], "h", true);
        assert!(matches!(
            detect(&nothing, &Selector::Default, &os, &net),
            Ok(Found::Absent(_))
        ));
        // No variables (a service started before the agent set them), but the agent is
        // installed: its well-known local endpoint.
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("himds"), "").unwrap();
        let installed = Env::fake(&[(TEST_DIR_ENV, d.path().to_str().unwrap())], "h", true);
        let Ok(Found::Here { source, why }) = detect(&installed, &Selector::Default, &os, &net)
        else {
            panic!("the installed agent was not found")
        };
        assert_eq!(source.endpoint.as_str(), DEFAULT_ENDPOINT);
        assert!(
            why.contains("Connected Machine agent is installed"),
            "{why}"
        );
    }
}
