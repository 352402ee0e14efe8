//! The process environment, read once and passed down.
//!
//! Deep logic never calls `std::env`: `main` captures an [`Env`] and every function that needs a
//! variable, the host name or "am I root" takes it as a value, so tests build one by hand.

use std::collections::BTreeMap;
use std::ffi::OsString;

#[derive(Debug, Clone, Default)]
pub struct Env {
    vars: BTreeMap<String, String>,
    hostname: String,
    is_root: bool,
    username: String,
}

impl Env {
    /// Snapshot of the real process environment.
    pub fn capture() -> Self {
        let vars = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
        let hostname = nix::unistd::gethostname()
            .ok()
            .and_then(|h: OsString| h.into_string().ok())
            .unwrap_or_default();
        let uid = nix::unistd::geteuid();
        let username = nix::unistd::User::from_uid(uid)
            .ok()
            .flatten()
            .map(|u| u.name)
            .unwrap_or_default();
        Self {
            vars,
            hostname,
            is_root: uid.is_root(),
            username,
        }
    }

    /// An environment for tests.
    pub fn fake(vars: &[(&str, &str)], hostname: &str, is_root: bool) -> Self {
        Self {
            vars: vars
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            hostname: hostname.to_owned(),
            is_root,
            username: if is_root {
                "root".into()
            } else {
                "builder".into()
            },
        }
    }

    /// A variable's value; empty values count as unset.
    pub fn var(&self, name: &str) -> Option<&str> {
        self.vars
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.trim().is_empty())
    }

    pub fn vars(&self) -> impl Iterator<Item = (&str, &str)> {
        self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// The account this process runs as.
    pub fn username(&self) -> &str {
        &self.username
    }

    pub fn is_root(&self) -> bool {
        self.is_root
    }

    pub fn flag(&self, name: &str) -> bool {
        matches!(
            self.var(name).map(str::to_ascii_lowercase).as_deref(),
            Some("1" | "true" | "yes")
        )
    }
}
