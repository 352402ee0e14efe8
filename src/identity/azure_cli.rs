//! The Azure CLI: `az account get-access-token --resource 499b84ac-…` (`identity.md` §6), the way
//! the project's source material first shows, for a login that exists (a developer's `az login`, an
//! image's service principal) or, with `--az-login`, after `az login --identity` with the machine's
//! managed identity (`--client-id`/`--object-id`/`--resource-id` choose a user-assigned one).
//!
//! `az` is found on `PATH` with `which` and run through the one child-process helper under a
//! timeout, from the cleared environment plus what `az` needs to find its login (`HOME`,
//! `AZURE_CONFIG_DIR`, a CA bundle). Its stdout (the token, as JSON) is parsed and never logged;
//! its stderr is shown when it fails. As root, an `az` another account could replace is refused: it
//! would be run as root with the machine's identity.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{AccessToken, Found, IdentityError, Kind, Selector};
use crate::clock::{Budget, Clock};
use crate::env::Env;
use crate::process::Child;
use crate::secret::{Masker, Secret};

/// What `az` needs besides the common allowlist to find its login and reach Entra ID.
const AZ_VARS: &[&str] = &[
    "AZURE_CONFIG_DIR",
    "AZURE_EXTENSION_DIR",
    "REQUESTS_CA_BUNDLE",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
];
const LOGIN_TIMEOUT: Duration = Duration::from_secs(120);
const TOKEN_TIMEOUT: Duration = Duration::from_secs(60);

pub struct AzureCli {
    az: PathBuf,
    /// `--az-login`: log in with the managed identity first (this selector).
    pub(super) login: Option<Selector>,
    env: Env,
    pub(super) clock: Clock,
}

/// Whether `az` is on `PATH` (and, as root, only root can replace it).
pub(crate) fn detect(
    env: &Env,
    selector: &Selector,
    az_login: bool,
    clock: &Clock,
) -> Result<Found<AzureCli>, IdentityError> {
    let name = if cfg!(windows) { "az.cmd" } else { "az" };
    let path = env.var("PATH").unwrap_or_default().to_owned();
    let cwd = env.home().map_or_else(|| "/".into(), PathBuf::from);
    let Ok(az) = which::which_in(name, Some(path), cwd) else {
        return Ok(Found::Absent(format!("{name} is not on PATH")));
    };
    if !az_login && let Some(flag) = selector.flag() {
        return Err(IdentityError::UnsupportedSelector {
            flag,
            kind: Kind::AzureCli,
            why: "a selector chooses the managed identity `az login --identity` logs in with: \
                  add --az-login, or drop it to use the existing login",
        });
    }
    #[cfg(unix)]
    if env.is_root()
        && let Err(e) = crate::fsx::check_root_only_program(&az)
    {
        return Err(IdentityError::Unsafe {
            what: format!("to run {} as root", az.display()),
            why: format!(
                "{}; another account could replace what root runs with the machine's identity",
                e.0
            ),
        });
    }
    let why = format!("az found at {}", az.display());
    Ok(Found::Here {
        source: AzureCli {
            az,
            login: az_login.then(|| selector.clone()),
            env: env.clone(),
            clock: clock.clone(),
        },
        why,
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AzToken {
    access_token: Option<String>,
    /// Unix seconds (az 2.54.0 and later); `expiresOn` is local time without a zone: not used.
    #[serde(rename = "expires_on")]
    expires_on: Option<serde_json::Value>,
}

impl AzureCli {
    pub fn describe(&self) -> String {
        match &self.login {
            Some(s) => format!(
                "the Azure CLI ({}) logged in with {}",
                self.az.display(),
                s.describe()
            ),
            None => format!("the Azure CLI's current login ({})", self.az.display()),
        }
    }

    fn child(&self, label: &str, args: &[&str], timeout: Duration) -> Child {
        let mut child = Child::new(label, &self.az, &self.env)
            .args(args.iter().copied())
            .timeout(timeout)
            .env("AZURE_CORE_NO_COLOR", "true")
            .env("AZURE_CORE_SURVEY_MESSAGE", "false");
        for var in AZ_VARS {
            if let Some(v) = self.env.var(var) {
                child = child.env(*var, v);
            }
        }
        child
    }

    async fn run(
        &self,
        child: Child,
        masker: &Masker,
    ) -> Result<crate::process::Finished, IdentityError> {
        let command = format!("az {}", child.args.join(" "));
        let finished = crate::process::run_async(child, masker.clone())
            .await
            .map_err(|source| IdentityError::CommandRun {
                command: command.clone(),
                source,
            })?;
        if finished.success() {
            return Ok(finished);
        }
        let stderr: Vec<&str> = finished
            .stderr
            .iter()
            .map(|l| l.trim())
            .filter(|l| !l.is_empty())
            .collect();
        let detail = if stderr.is_empty() {
            "no error message".to_owned()
        } else {
            stderr.join(" / ")
        };
        let not_logged_in = detail.contains("az login") || detail.contains("Please run");
        let hint = if not_logged_in && self.login.is_none() {
            "\nhint: log in with `az login` first, or pass --az-login to log in with this \
             machine's managed identity"
                .to_owned()
        } else if self.login.is_some() && command.starts_with("az login") {
            "\nhint: does this machine have that managed identity (and does IMDS answer)?"
                .to_owned()
        } else {
            String::new()
        };
        Err(IdentityError::Command {
            command,
            code: finished.code,
            detail,
            hint,
        })
    }

    /// Time left for one `az` run: at most `cap`, at least a few seconds.
    fn timeout(&self, budget: &Budget, cap: Duration) -> Duration {
        budget
            .remaining(&self.clock)
            .clamp(Duration::from_secs(5), cap)
    }

    pub async fn token(
        &self,
        budget: &Budget,
        masker: &Masker,
    ) -> Result<AccessToken, IdentityError> {
        if let Some(selector) = &self.login {
            let mut args = vec!["login", "--identity"];
            let value;
            if let (Some(flag), Some((_, v))) =
                (selector.flag(), selector.query(super::SelectorNames::IMDS))
            {
                value = v.to_owned();
                args.extend([flag, value.as_str()]);
            }
            args.extend(["--allow-no-subscriptions", "--output", "none"]);
            let timeout = self.timeout(budget, LOGIN_TIMEOUT);
            self.run(self.child("az login", &args, timeout), masker)
                .await?;
        }
        let args = [
            "account",
            "get-access-token",
            "--resource",
            super::AZURE_DEVOPS_RESOURCE,
            "--output",
            "json",
        ];
        let timeout = self.timeout(budget, TOKEN_TIMEOUT);
        let finished = self
            .run(
                self.child("az account get-access-token", &args, timeout)
                    .quiet_stdout(),
                masker,
            )
            .await?;
        let text = finished.stdout.join("\n");
        parse(&text)
    }
}

fn parse(text: &str) -> Result<AccessToken, IdentityError> {
    let bad = |detail: String| IdentityError::BadResponse {
        source_name: "az account get-access-token",
        url: "stdout".into(),
        detail,
    };
    // Never quote the output: it holds the token.
    let parsed: AzToken = serde_json::from_str(text).map_err(|e| {
        bad(format!(
            "not the expected JSON (line {}, column {})",
            e.line(),
            e.column()
        ))
    })?;
    let token = parsed
        .access_token
        .filter(|t| !t.trim().is_empty())
        .ok_or_else(|| bad("no accessToken".into()))?;
    Ok(AccessToken {
        token: Secret::new(token.trim()),
        expires_on: parsed.expires_on.as_ref().and_then(super::number),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn az_output_is_parsed_without_quoting_it() {
        let t = parse(
            r#"{"accessToken":"eyJ0.secret-part.sig","expiresOn":"2026-12-01 10:00:00.000000","expires_on":1900000000,"subscription":"s","tenant":"t","tokenType":"Bearer"}"#,
        )
        .unwrap();
        assert_eq!(t.token.expose(), "eyJ0.secret-part.sig");
        assert_eq!(t.expires_on, Some(1_900_000_000));
        // An old az without expires_on: expiry unknown.
        let t = parse(r#"{"accessToken":"abc","expiresOn":"2026-12-01 10:00:00.000000"}"#).unwrap();
        assert_eq!(t.expires_on, None);
        let e = parse(r#"{"accessToken": "leaky-token" "#).unwrap_err();
        assert!(!e.to_string().contains("leaky-token"), "{e}");
    }

    #[test]
    fn az_is_looked_up_on_the_given_path() {
        let clock = Clock::virtual_clock();
        let env = Env::fake(&[("PATH", "/nonexistent")], "h", false);
        assert!(matches!(
            detect(&env, &Selector::Default, false, &clock),
            Ok(Found::Absent(_))
        ));
    }
}
