//! The process environment, read once and passed down.
//!
//! Deep logic never calls `std::env`: `main` captures an [`Env`] and every function that needs a
//! variable, the host name, "am I root" or "does systemd run here" takes it as a value, so tests
//! build one by hand. [`Env::for_children`] is the short list of variables a child process may
//! inherit: root's environment at provisioning holds whatever cloud-init or the extension put there
//! (secrets included), and none of it has any business in the agent's scripts.

use std::collections::BTreeMap;
use std::path::PathBuf;

/// Debug builds only: `yes`/`no` overrides "does systemd run here", so the suite behaves the same
/// on machines with and without systemd.
pub const SYSTEMD_ENV: &str = "AGENT_BOOTSTRAP_TEST_SYSTEMD";

/// The dedicated account the agent runs as unless `--user` names another (the agent's own
/// documentation's example name).
pub const DEFAULT_USER: &str = "azpagent";

/// Overrides for where agent-bootstrap keeps its state and cache (tests, unusual layouts, a
/// writable volume under a read-only root).
pub const STATE_DIR_ENV: &str = "AGENT_BOOTSTRAP_STATE_DIR";
pub const CACHE_DIR_ENV: &str = "AGENT_BOOTSTRAP_CACHE_DIR";

/// The pipe `run` reads its secrets from after it started itself again without them
/// (`crate::scrub`); never passed on.
pub const SECRETS_FD_ENV: &str = "AGENT_BOOTSTRAP_SECRETS_FD";

/// Debug builds only: the name of the dedicated agent account ([`Env::dedicated_user`]).
pub const AGENT_USER_ENV: &str = "AGENT_BOOTSTRAP_TEST_AGENT_USER";

/// Debug builds only: the directory the system trust store lives under instead of `/` (its
/// `usr/local/share/ca-certificates`, `etc/ssl/certs/ca-certificates.crt`, … for `crate::trust`),
/// so tests never change the machine's. With it, the distribution's CA tool is looked for on `PATH`
/// alone (where the tests put a fake), and `SSL_CERT_FILE` / `SSL_CERT_DIR` reach children: they
/// tell the agent, as they tell OpenSSL, where that store's bundle is.
pub const CA_STORE_ENV: &str = "AGENT_BOOTSTRAP_TEST_CA_STORE";

/// What OpenSSL (and so .NET, so the agent) reads instead of its default store.
const OPENSSL_STORE_VARS: &[&str] = &["SSL_CERT_FILE", "SSL_CERT_DIR"];

/// Variables children inherit: locale, time zone, proxies, and what the agent's `env.sh` snapshots
/// for its jobs. Not the agent's own proxy variables (`VSTS_HTTP_PROXY`, `_USERNAME`, `_PASSWORD`):
/// env.sh would freeze them into `.env` for good (it never replaces a line), and the agent gets the
/// proxy the tool resolved (them included) as `--proxyurl` instead.
const CHILD_VARS: &[&str] = &[
    "PATH",
    "LANG",
    "LANGUAGE",
    "TZ",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "all_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
    "JAVA_HOME",
    "ANT_HOME",
    "M2_HOME",
    "ANDROID_HOME",
    "GRADLE_HOME",
    "NVM_BIN",
    "NVM_PATH",
    "LD_LIBRARY_PATH",
    "PERL5LIB",
    "AGENT_TOOLSDIRECTORY",
    "VSO_AGENT_IGNORE",
];
const CHILD_PREFIXES: &[&str] = &["LC_"];
/// What a Windows program needs to start at all (and what `config.cmd` and the listener use).
const WINDOWS_CHILD_VARS: &[&str] = &[
    "SystemRoot",
    "SystemDrive",
    "windir",
    "ComSpec",
    "PATHEXT",
    "TEMP",
    "TMP",
    "USERPROFILE",
    "ProgramData",
    "ProgramFiles",
    "ProgramFiles(x86)",
    "ProgramW6432",
    "CommonProgramFiles",
    "APPDATA",
    "LOCALAPPDATA",
    "ALLUSERSPROFILE",
    "PUBLIC",
    "COMPUTERNAME",
    "USERNAME",
    "USERDOMAIN",
    "NUMBER_OF_PROCESSORS",
    "PROCESSOR_ARCHITECTURE",
    "OS",
];
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, Clone, Default)]
pub struct Env {
    vars: BTreeMap<String, String>,
    hostname: String,
    is_root: bool,
    uid: u32,
    username: String,
    home: Option<PathBuf>,
    systemd: bool,
}

/// Whether systemd runs here: what the machine says, unless a debug build is told otherwise by
/// [`SYSTEMD_ENV`] (a release build ignores it).
fn systemd_from(vars: &BTreeMap<String, String>, booted: bool) -> bool {
    if !cfg!(debug_assertions) {
        return booted;
    }
    match vars
        .get(SYSTEMD_ENV)
        .map(|v| v.to_ascii_lowercase())
        .as_deref()
    {
        Some("yes" | "1" | "true") => true,
        Some("no" | "0" | "false") => false,
        _ => booted,
    }
}

impl Env {
    /// Snapshot of the real process environment.
    pub fn capture() -> Self {
        let vars: BTreeMap<String, String> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
        let account = crate::platform::current_account();
        let home = vars
            .get("HOME")
            .filter(|h| std::path::Path::new(h).is_absolute())
            .map(PathBuf::from)
            .or(account.home);
        // sd_booted(): systemd manages this machine.
        let systemd =
            cfg!(unix) && systemd_from(&vars, std::path::Path::new("/run/systemd/system").is_dir());
        Self {
            vars,
            hostname: crate::platform::hostname(),
            is_root: account.privileged,
            uid: account.id,
            username: account.name,
            home,
            systemd,
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
            uid: if is_root { 0 } else { 1000 },
            username: if is_root {
                "root".into()
            } else {
                "builder".into()
            },
            home: Some(if is_root {
                "/root".into()
            } else {
                "/home/builder".into()
            }),
            systemd: true,
        }
    }

    /// The same environment, with systemd running or not (tests).
    pub fn with_systemd(mut self, systemd: bool) -> Self {
        self.systemd = systemd;
        self
    }

    /// A variable's value; empty values count as unset.
    pub fn var(&self, name: &str) -> Option<&str> {
        self.vars
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.trim().is_empty())
    }

    /// The dedicated account install creates when no `--user` is given: `azpagent`, or in a debug
    /// build the name in [`AGENT_USER_ENV`] (parallel tests each get an account of their own, since
    /// configuring ends every process of the account). A release build ignores the variable.
    pub fn dedicated_user(&self) -> String {
        match self.var(AGENT_USER_ENV) {
            Some(name) if cfg!(debug_assertions) => name.to_owned(),
            _ => DEFAULT_USER.to_owned(),
        }
    }

    /// The root of the system trust store's files: [`CA_STORE_ENV`] in a debug build that sets
    /// it, else `None` (the machine's own, under `/`). A release build ignores the variable.
    pub fn ca_store_root(&self) -> Option<PathBuf> {
        if !cfg!(debug_assertions) {
            return None;
        }
        self.var(CA_STORE_ENV).map(PathBuf::from)
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

    pub fn uid(&self) -> u32 {
        self.uid
    }

    pub fn is_root(&self) -> bool {
        self.is_root
    }

    /// The home directory of the account this process runs as.
    pub fn home(&self) -> Option<&std::path::Path> {
        self.home.as_deref()
    }

    /// systemd manages this machine (`/run/systemd/system` exists).
    pub fn systemd_running(&self) -> bool {
        self.systemd
    }

    pub fn flag(&self, name: &str) -> bool {
        matches!(
            self.var(name).map(str::to_ascii_lowercase).as_deref(),
            Some("1" | "true" | "yes")
        )
    }

    /// The variables a child process starts with (nothing else of ours is inherited).
    pub fn for_children(&self) -> Vec<(String, String)> {
        let store_moved = self.ca_store_root().is_some();
        let mut out: Vec<(String, String)> = self
            .vars
            .iter()
            .filter(|(k, _)| {
                // Windows variable names are case-insensitive (`Path`, `PATH`).
                let is = |name: &&str| {
                    if cfg!(windows) {
                        name.eq_ignore_ascii_case(k)
                    } else {
                        *name == k.as_str()
                    }
                };
                CHILD_VARS.iter().any(is)
                    || (store_moved && OPENSSL_STORE_VARS.iter().any(is))
                    || CHILD_PREFIXES.iter().any(|p| k.starts_with(p))
                    || (cfg!(windows) && WINDOWS_CHILD_VARS.iter().any(is))
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if cfg!(unix) && !out.iter().any(|(k, _)| k == "PATH") {
            out.push(("PATH".into(), DEFAULT_PATH.into()));
        }
        out
    }
}

/// Variables that carry a credential: never in the agent's environment under `run` (the listener
/// uploads its environment as capabilities, which anyone who can view the pool reads, and jobs
/// inherit it).
const CREDENTIAL_VARS: &[&str] = &[
    "AZP_TOKEN",
    "IDENTITY_HEADER",
    "MSI_SECRET",
    "AZURE_CLIENT_SECRET",
    "AZURE_CLIENT_CERTIFICATE_PASSWORD",
    "AGENT_BOOTSTRAP_PROXY_PASSWORD",
    "VSTS_HTTP_PROXY_PASSWORD",
];
/// Prefixes of the same: the agent's own inputs (`VSTS_AGENT_INPUT_TOKEN`, a proxy password).
const CREDENTIAL_PREFIXES: &[&str] = &["VSTS_AGENT_INPUT_"];
/// Names that say where a credential is (a file, an endpoint): kept for jobs that use them, but
/// listed in `VSO_AGENT_IGNORE` so they are not published as capabilities.
const NOT_CAPABILITIES: &[&str] = &[
    "AZP_TOKEN_FILE",
    "AZURE_FEDERATED_TOKEN_FILE",
    "IDENTITY_ENDPOINT",
    "MSI_ENDPOINT",
    "IMDS_ENDPOINT",
    "AZURE_CLIENT_ID",
    "AZURE_TENANT_ID",
    "AZURE_AUTHORITY_HOST",
];

/// A proxy variable's URL without its password (`http://user:pw@proxy` → `http://user@proxy`).
fn without_password(name: &str, value: &str) -> Option<String> {
    if !name.to_ascii_lowercase().ends_with("_proxy") {
        return Some(value.to_owned());
    }
    let strip = |mut u: url::Url| {
        let _ = u.set_password(None);
        u.to_string()
    };
    match url::Url::parse(value) {
        Ok(u) if u.has_host() && u.password().is_some() => Some(strip(u)),
        Ok(u) if u.has_host() => Some(value.to_owned()),
        // No scheme (`bob:pw@proxy:3128` reads as scheme `bob`): read it as http://.
        _ => match url::Url::parse(&format!("http://{value}")) {
            Ok(u) if u.has_host() && u.password().is_some() => Some(strip(u)),
            Ok(u) if u.has_host() => Some(value.to_owned()),
            // Something with an `@` that is no URL: dropped rather than guessed at.
            _ if value.contains('@') => None,
            _ => Some(value.to_owned()),
        },
    }
}

/// `vars` with the password taken out of every proxy URL (`HTTPS_PROXY=http://u:pw@p:3128` →
/// `http://u@p:3128/`; a proxy value with an `@` that is no URL is dropped). The agent's code
/// (`config.sh`/`config.cmd`, `run.sh`, the listener, a shell run as the agent user) starts with
/// these: the proxy password reaches the agent only as its own input at configuration, never in
/// an environment a job inherits or `env.sh` copies into `.env`.
/// Whether a variable carries a secret: a credential ([`CREDENTIAL_VARS`], `VSTS_AGENT_INPUT_*`,
/// the proxy password variable) or a proxy URL with a password in it.
pub fn is_secret(name: &str, value: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    CREDENTIAL_VARS.iter().any(|c| *c == upper)
        || CREDENTIAL_PREFIXES.iter().any(|p| upper.starts_with(p))
        || upper == "AGENT_BOOTSTRAP_PROXY_PASSWORD"
        || without_password(name, value).as_deref() != Some(value)
}

impl Env {
    /// The secrets the process moved out of its own environment ([`crate::scrub`]), back into the
    /// environment the program works with.
    pub fn with_vars(mut self, vars: Vec<(String, String)>) -> Self {
        self.vars.extend(vars);
        self.vars.remove(SECRETS_FD_ENV);
        self
    }
}

pub fn without_proxy_passwords(vars: Vec<(String, String)>) -> Vec<(String, String)> {
    vars.into_iter()
        .filter_map(|(k, v)| without_password(&k, &v).map(|v| (k, v)))
        .collect()
}

impl Env {
    /// The environment of an agent `run` starts in the foreground (a container's entrypoint): the
    /// container's own variables, which its author set for the agent's jobs and capabilities, less
    /// every variable that carries a credential ([`CREDENTIAL_VARS`]), with the names of
    /// credential locations added to `VSO_AGENT_IGNORE`.
    pub fn for_agent(&self) -> Vec<(String, String)> {
        let is_credential = |k: &str| {
            let upper = k.to_ascii_uppercase();
            CREDENTIAL_VARS.iter().any(|c| *c == upper)
                || CREDENTIAL_PREFIXES.iter().any(|p| upper.starts_with(p))
                || upper.starts_with("AGENT_BOOTSTRAP_")
        };
        let mut out: Vec<(String, String)> = self
            .vars
            .iter()
            .filter(|(k, _)| !is_credential(k) && k.as_str() != "VSO_AGENT_IGNORE")
            .filter_map(|(k, v)| without_password(k, v).map(|v| (k.clone(), v)))
            .collect();
        let mut ignore: Vec<String> = self
            .var("VSO_AGENT_IGNORE")
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        for name in NOT_CAPABILITIES {
            if self.var(name).is_some() && !ignore.iter().any(|i| i.eq_ignore_ascii_case(name)) {
                ignore.push((*name).to_owned());
            }
        }
        if !ignore.is_empty() {
            out.push(("VSO_AGENT_IGNORE".into(), ignore.join(",")));
        }
        if cfg!(unix) && !out.iter().any(|(k, _)| k == "PATH") {
            out.push(("PATH".into(), DEFAULT_PATH.into()));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_gets_the_containers_variables_without_credentials() {
        let env = Env::fake(
            &[
                ("PATH", "/usr/bin"),
                ("MY_CAPABILITY", "1"),
                ("AZP_TOKEN", "pat-secret"),
                ("IDENTITY_HEADER", "header-secret"),
                ("VSTS_AGENT_INPUT_TOKEN", "x"),
                ("vsts_agent_input_proxypassword", "y"),
                ("AGENT_BOOTSTRAP_PROXY_PASSWORD", "z"),
                ("AZURE_FEDERATED_TOKEN_FILE", "/var/run/secrets/token"),
                ("VSO_AGENT_IGNORE", "MINE"),
                ("HTTPS_PROXY", "http://bob:pw-secret@proxy:3128"),
            ],
            "h",
            false,
        );
        let vars: BTreeMap<String, String> = env.for_agent().into_iter().collect();
        assert_eq!(vars["MY_CAPABILITY"], "1");
        assert_eq!(vars["AZURE_FEDERATED_TOKEN_FILE"], "/var/run/secrets/token");
        assert_eq!(vars["VSO_AGENT_IGNORE"], "MINE,AZURE_FEDERATED_TOKEN_FILE");
        assert_eq!(vars["HTTPS_PROXY"], "http://bob@proxy:3128/");
        for gone in [
            "AZP_TOKEN",
            "IDENTITY_HEADER",
            "VSTS_AGENT_INPUT_TOKEN",
            "vsts_agent_input_proxypassword",
            "AGENT_BOOTSTRAP_PROXY_PASSWORD",
        ] {
            assert!(!vars.contains_key(gone), "{gone}");
        }
    }

    #[test]
    fn the_agent_user_knob_only_works_in_debug_builds() {
        let env = Env::fake(&[(AGENT_USER_ENV, "azp-test-1")], "h", true);
        let want = if cfg!(debug_assertions) {
            "azp-test-1"
        } else {
            DEFAULT_USER
        };
        assert_eq!(env.dedicated_user(), want);
        assert_eq!(Env::fake(&[], "h", true).dedicated_user(), "azpagent");
    }

    #[test]
    fn proxy_passwords_are_taken_out_of_what_the_agent_gets() {
        let vars = |pairs: &[(&str, &str)]| {
            without_proxy_passwords(
                pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            )
            .into_iter()
            .collect::<BTreeMap<_, _>>()
        };
        let got = vars(&[
            ("HTTPS_PROXY", "http://bob:pw-secret@proxy:3128"),
            ("http_proxy", "bob:pw-secret@proxy:3128"),
            ("ALL_PROXY", "http://proxy:3128"),
            ("VSTS_HTTP_PROXY", "http://al:pw-secret@p:1/"),
            ("NO_PROXY", "127.0.0.1,localhost"),
            ("https_proxy", "weird:pw-secret@@"),
            ("LANG", "C.UTF-8"),
        ]);
        assert_eq!(got["HTTPS_PROXY"], "http://bob@proxy:3128/");
        assert_eq!(got["http_proxy"], "http://bob@proxy:3128/");
        assert_eq!(got["ALL_PROXY"], "http://proxy:3128");
        assert_eq!(got["VSTS_HTTP_PROXY"], "http://al@p:1/");
        assert_eq!(got["NO_PROXY"], "127.0.0.1,localhost");
        assert_eq!(got["LANG"], "C.UTF-8");
        assert!(!got.values().any(|v| v.contains("pw-secret")), "{got:?}");
    }

    #[test]
    fn the_ca_store_knob_only_works_in_debug_builds() {
        let vars = [
            ("PATH", "/usr/bin"),
            (
                "SSL_CERT_FILE",
                "/scratch/etc/ssl/certs/ca-certificates.crt",
            ),
            (CA_STORE_ENV, "/scratch"),
        ];
        let env = Env::fake(&vars, "h", true);
        let names: Vec<String> = env.for_children().into_iter().map(|(k, _)| k).collect();
        if cfg!(debug_assertions) {
            assert_eq!(env.ca_store_root(), Some(PathBuf::from("/scratch")));
            assert!(names.contains(&"SSL_CERT_FILE".to_owned()), "{names:?}");
        } else {
            assert_eq!(env.ca_store_root(), None);
            assert!(!names.contains(&"SSL_CERT_FILE".to_owned()), "{names:?}");
        }
        // Without the knob, root's own OpenSSL variables never reach the agent: it must trust
        // the store its service will have, not the one root's shell happened to name.
        let env = Env::fake(&vars[..2], "h", true);
        assert_eq!(env.ca_store_root(), None);
        let names: Vec<String> = env.for_children().into_iter().map(|(k, _)| k).collect();
        assert_eq!(names, vec!["PATH"]);
    }

    #[test]
    fn the_systemd_knob_only_works_in_debug_builds() {
        let told = |v: &str| BTreeMap::from([(SYSTEMD_ENV.to_owned(), v.to_owned())]);
        assert_eq!(systemd_from(&told("yes"), false), cfg!(debug_assertions));
        assert_eq!(systemd_from(&told("no"), true), !cfg!(debug_assertions));
        assert!(systemd_from(&BTreeMap::new(), true));
        assert!(!systemd_from(&BTreeMap::new(), false));
    }

    #[test]
    fn children_get_only_the_allowlist() {
        let env = Env::fake(
            &[
                ("PATH", "/usr/bin"),
                ("LANG", "C.UTF-8"),
                ("LC_ALL", "C"),
                ("HTTPS_PROXY", "http://proxy:3128"),
                ("CUSTOM_SCRIPT_SECRET", "hunter2"),
                ("AZP_TOKEN", "pat"),
                ("VSTS_AGENT_INPUT_TOKEN", "t"),
                ("VSTS_HTTP_PROXY_PASSWORD", "p"),
            ],
            "h",
            true,
        );
        let names: Vec<String> = env.for_children().into_iter().map(|(k, _)| k).collect();
        assert_eq!(names, vec!["HTTPS_PROXY", "LANG", "LC_ALL", "PATH"]);
        // Unix children always get a PATH; Windows ones only what they had (and what Windows
        // programs need to start: SystemRoot and the like).
        let bare = Env::fake(&[], "h", true);
        assert_eq!(
            bare.for_children().first().map(|(k, _)| k.as_str()),
            cfg!(unix).then_some("PATH")
        );
        let win = Env::fake(&[("SystemRoot", "C:\\windows"), ("SECRET", "x")], "h", true);
        let names: Vec<String> = win.for_children().into_iter().map(|(k, _)| k).collect();
        assert_eq!(names.contains(&"SystemRoot".to_owned()), cfg!(windows));
        assert!(!names.contains(&"SECRET".to_owned()));
    }
}
