//! A personal access token, for sites that have no identity yet: `AZP_TOKEN_FILE` (which wins, as in
//! Microsoft's Docker sample) or `AZP_TOKEN`.
//!
//! Azure DevOps accepts a PAT only as HTTP Basic (any user name, the PAT as the password), never as
//! a Bearer token: the source says [`super::Scheme::Basic`] and every REST call follows it. The agent
//! gets the PAT the way it gets an Entra token, in `VSTS_AGENT_INPUT_TOKEN` for `--auth pat`; the
//! variables themselves never reach it (children start from a cleared environment; the listener
//! would upload them as capabilities). The file must not be readable by every account. Later runs
//! (the boot unit's reconcile) read the same file again: its path is saved, the token never is.

use std::path::{Path, PathBuf};

use super::{AccessToken, Found, IdentityError, Kind, Selector};
use crate::clock::Clock;
use crate::env::Env;
use crate::secret::Secret;

pub(crate) const TOKEN_ENV: &str = "AZP_TOKEN";
pub(crate) const FILE_ENV: &str = "AZP_TOKEN_FILE";
/// PATs are 52 to 84 characters; anything near this is not one.
const MAX_PAT: u64 = 4096;

enum Origin {
    Env(Secret),
    File(PathBuf),
}

pub struct Pat {
    origin: Origin,
    pub(super) clock: Clock,
}

/// Whether a PAT was given: `AZP_TOKEN_FILE`, `AZP_TOKEN`, or the file install remembered.
pub(crate) fn detect(
    env: &Env,
    selector: &Selector,
    saved_file: Option<&Path>,
    clock: &Clock,
) -> Result<Found<Pat>, IdentityError> {
    let (origin, why) = if let Some(f) = env.var(FILE_ENV) {
        let path = PathBuf::from(f.trim());
        if !path.is_absolute() {
            return Err(IdentityError::BadSetting {
                name: FILE_ENV.into(),
                value: f.to_owned(),
                problem: "must be an absolute path".into(),
            });
        }
        (Origin::File(path), format!("{FILE_ENV} is set"))
    } else if let Some(t) = env.var(TOKEN_ENV) {
        (
            Origin::Env(Secret::new(t.trim())),
            format!("{TOKEN_ENV} is set"),
        )
    } else if let Some(f) = saved_file {
        (
            Origin::File(f.to_owned()),
            format!("install read the PAT from {}", f.display()),
        )
    } else {
        return Ok(Found::Absent(format!(
            "{TOKEN_ENV} and {FILE_ENV} are not set"
        )));
    };
    if let Some(flag) = selector.flag() {
        return Err(IdentityError::UnsupportedSelector {
            flag,
            kind: Kind::Pat,
            why: "a personal access token belongs to the user who made it",
        });
    }
    let pat = Pat {
        origin,
        clock: clock.clone(),
    };
    // Checked now, so a bad file fails before anything else happens.
    pat.token()?;
    Ok(Found::Here { source: pat, why })
}

impl Pat {
    /// The file the PAT comes from, if it comes from one (saved for later runs).
    pub fn file(&self) -> Option<&Path> {
        match &self.origin {
            Origin::File(p) => Some(p),
            Origin::Env(_) => None,
        }
    }

    pub fn describe(&self) -> String {
        match &self.origin {
            Origin::File(p) => format!("a personal access token from {}", p.display()),
            Origin::Env(_) => format!("a personal access token from {TOKEN_ENV}"),
        }
    }

    /// The PAT, read again from its file each time (it may have been rotated). Its expiry is not
    /// known to us.
    pub fn token(&self) -> Result<AccessToken, IdentityError> {
        let token = match &self.origin {
            Origin::Env(s) => s.clone(),
            Origin::File(p) => read(p)?,
        };
        if token.is_empty() || !token.expose().chars().all(|c| c.is_ascii_graphic()) {
            return Err(IdentityError::BadSetting {
                name: match &self.origin {
                    Origin::Env(_) => TOKEN_ENV.into(),
                    Origin::File(p) => format!("{FILE_ENV} {}", p.display()),
                },
                value: crate::secret::REDACTED.into(),
                problem: "not a personal access token (empty, or spaces or control characters \
                          inside)"
                    .into(),
            });
        }
        Ok(AccessToken {
            token,
            expires_on: None,
        })
    }
}

fn read(path: &Path) -> Result<Secret, IdentityError> {
    let err = |detail: String| IdentityError::Read {
        what: "the PAT file",
        path: path.to_owned(),
        detail,
    };
    // Kubernetes mounts secrets as links (`..data/…`): fsx accepts those only where root made them.
    let text = crate::fsx::read_secret(path, MAX_PAT).map_err(|e| match e {
        crate::fsx::SecretFileRefused::Unsafe(why) => IdentityError::Unsafe {
            what: format!("the PAT file {} ({FILE_ENV})", path.display()),
            why,
        },
        crate::fsx::SecretFileRefused::Unreadable(detail) => err(detail),
    })?;
    Ok(Secret::new(text.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_wins_and_must_not_be_world_readable() {
        let clock = Clock::virtual_clock();
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("pat");
        std::fs::write(&f, "abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnop\n").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
            let env = Env::fake(
                &[(FILE_ENV, f.to_str().unwrap()), (TOKEN_ENV, "from-env")],
                "h",
                true,
            );
            let e = detect(&env, &Selector::Default, None, &clock)
                .err()
                .unwrap();
            assert!(e.to_string().contains("every account"), "{e}");
            assert!(e.is_input());
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let env = Env::fake(
            &[(FILE_ENV, f.to_str().unwrap()), (TOKEN_ENV, "from-env")],
            "h",
            true,
        );
        let Found::Here { source, .. } = detect(&env, &Selector::Default, None, &clock).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            source.token().unwrap().token.expose(),
            "abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnop"
        );
        assert_eq!(source.file(), Some(f.as_path()));
        // The saved file serves later runs without the variables.
        let bare = Env::fake(&[], "h", true);
        assert!(matches!(
            detect(&bare, &Selector::Default, Some(&f), &clock),
            Ok(Found::Here { .. })
        ));
        assert!(matches!(
            detect(&bare, &Selector::Default, None, &clock),
            Ok(Found::Absent(_))
        ));
    }

    #[test]
    fn a_pat_has_no_selector_and_no_spaces() {
        let clock = Clock::virtual_clock();
        let env = Env::fake(&[(TOKEN_ENV, "abc")], "h", true);
        let e = detect(&env, &Selector::ClientId("c".into()), None, &clock)
            .err()
            .unwrap();
        assert!(e.to_string().contains("--client-id"), "{e}");
        let env = Env::fake(&[(TOKEN_ENV, "two words")], "h", true);
        let e = detect(&env, &Selector::Default, None, &clock)
            .err()
            .unwrap();
        assert!(!e.to_string().contains("two words"), "{e}");
    }
}
