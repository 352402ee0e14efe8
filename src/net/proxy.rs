//! Egress proxies and private certificate authorities: what the tool uses and what it tells the
//! agent (`agent.md` §1.1, §4: `--proxyurl`, `--proxyusername`, the password only in
//! `VSTS_AGENT_INPUT_PROXYPASSWORD`, `--sslcacert`, `.proxybypass`).
//!
//! [`Network`] is resolved once per run, from the flags, else the environment as curl reads it
//! (`https_proxy`/`HTTPS_PROXY`, then `all_proxy`/`ALL_PROXY`; `no_proxy`/`NO_PROXY`) and then as
//! the agent reads it (`VSTS_HTTP_PROXY`, `http_proxy`), else the settings install saved. The proxy carries Azure DevOps, the download host and Entra; identity
//! endpoints on the machine (IMDS, App Service, Arc) never go through it ([`super::Service`]).
//! The proxy password comes from `AGENT_BOOTSTRAP_PROXY_PASSWORD`, a file (`--proxy-password-file`,
//! whose path is saved for later runs; the password never is), or the environment's proxy URL;
//! never from argv, never logged.

use std::path::{Path, PathBuf};

use url::Url;

use crate::env::Env;
use crate::secret::Secret;

pub const PASSWORD_ENV: &str = "AGENT_BOOTSTRAP_PROXY_PASSWORD";
/// A password is a line, not a file's worth.
const MAX_PASSWORD: u64 = 4096;

#[derive(Debug, thiserror::Error)]
#[error("invalid {what}: {problem}")]
pub struct NetworkError {
    pub what: String,
    pub problem: String,
}

fn bad(what: impl Into<String>, problem: impl Into<String>) -> NetworkError {
    NetworkError {
        what: what.into(),
        problem: problem.into(),
    }
}

/// The proxy, without credentials in its URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proxy {
    /// `http://host:port` (no user, password, path or query).
    pub url: Url,
    /// Where it came from, for messages: `--proxy`, `HTTPS_PROXY`, `the saved settings`.
    pub from: String,
    pub user: Option<String>,
    pub password: Option<Secret>,
    /// The file the password is read from, saved for later runs.
    pub password_file: Option<PathBuf>,
}

/// The network a run uses: a proxy (or none), the hosts that bypass it, extra trusted CAs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Network {
    pub proxy: Option<Proxy>,
    /// `NO_PROXY` as given (comma-separated hosts, domains, IPs, CIDRs, `*`).
    pub no_proxy: Option<String>,
    /// A PEM file of CA certificates trusted in addition to the system's.
    pub ca_file: Option<PathBuf>,
    /// Its certificates (DER), checked when the settings were resolved.
    pub ca_certs: Vec<Vec<u8>>,
}

/// The raw values a command was given.
#[derive(Debug, Clone, Default)]
pub struct Given<'a> {
    pub proxy: Option<&'a str>,
    pub proxy_user: Option<&'a str>,
    pub proxy_password_file: Option<&'a Path>,
    pub ca_file: Option<&'a Path>,
}

impl Network {
    /// From the flags, else the environment (curl's variables).
    pub fn resolve(given: &Given, env: &Env) -> Result<Self, NetworkError> {
        let from_env = |names: &[&'static str]| {
            names
                .iter()
                .find_map(|n| env.var(n).filter(|v| !v.trim().is_empty()).map(|v| (*n, v)))
        };
        let (raw, from, flag) = match given.proxy {
            Some(p) => (Some(p), "--proxy".to_owned(), true),
            // curl's variables for https, then the agent's own (`AgentKnobs.ProxyAddress`:
            // `VSTS_HTTP_PROXY`, then lowercase `http_proxy`), so that the tool never goes direct
            // where the agent would use a proxy; the agent is then given this one (`--proxyurl`).
            None => match from_env(&[
                "https_proxy",
                "HTTPS_PROXY",
                "all_proxy",
                "ALL_PROXY",
                "VSTS_HTTP_PROXY",
                "http_proxy",
            ]) {
                Some((name, v)) => (Some(v), name.to_owned(), false),
                None => (None, String::new(), false),
            },
        };
        let mut proxy = match raw {
            Some(raw) => Some(parse_proxy(raw, &from, flag)?),
            None => None,
        };
        if let Some(user) = given.proxy_user {
            let p = proxy.as_mut().ok_or_else(|| {
                bad(
                    "--proxy-user",
                    "there is no proxy (give --proxy, or set HTTPS_PROXY)",
                )
            })?;
            let user = user.trim();
            if user.is_empty() || user.chars().any(|c| c.is_control() || c == ':') {
                return Err(bad(
                    "--proxy-user",
                    "must be a user name (no ':' or control characters)",
                ));
            }
            p.user = Some(user.to_owned());
        }
        if let Some(file) = given.proxy_password_file {
            let p = proxy
                .as_mut()
                .filter(|p| p.user.is_some())
                .ok_or_else(|| bad("--proxy-password-file", "needs --proxy and --proxy-user"))?;
            p.password = Some(read_password(file)?);
            p.password_file = Some(file.to_owned());
        } else if let Some(pw) = env.var(PASSWORD_ENV) {
            if let Some(p) = proxy.as_mut().filter(|p| p.user.is_some()) {
                p.password = Some(Secret::new(pw));
            } else {
                return Err(bad(
                    PASSWORD_ENV,
                    "is set, but there is no --proxy-user to go with it",
                ));
            }
        }
        if let Some(p) = &proxy
            && p.user.is_some()
            && p.password.is_none()
        {
            return Err(bad(
                "--proxy-user",
                format!(
                    "has no password: put it in {PASSWORD_ENV} or a file only root can read \
                     (--proxy-password-file)"
                ),
            ));
        }
        let no_proxy = from_env(&["no_proxy", "NO_PROXY"]).map(|(_, v)| v.trim().to_owned());
        let mut network = Network {
            proxy,
            no_proxy,
            ..Default::default()
        };
        if let Some(ca) = given.ca_file {
            network.set_ca_file("--ca-file", ca)?;
        }
        Ok(network)
    }

    /// What install saved, for a later run (reconcile at boot, remove, status, watch); the proxy
    /// password is read again from its saved file, else `AGENT_BOOTSTRAP_PROXY_PASSWORD`.
    pub fn from_saved(saved: &crate::state::Saved, env: &Env) -> Result<Self, NetworkError> {
        let proxy = match &saved.proxy_url {
            None => None,
            Some(raw) => {
                let mut p = parse_proxy(raw, "the saved proxy", false)?;
                p.user = saved.proxy_user.clone();
                if p.user.is_some() {
                    if let Some(file) = &saved.proxy_password_file {
                        p.password = Some(read_password(file)?);
                        p.password_file = Some(file.clone());
                    } else if let Some(pw) = env.var(PASSWORD_ENV) {
                        p.password = Some(Secret::new(pw));
                    }
                }
                Some(p)
            }
        };
        let mut network = Network {
            proxy,
            no_proxy: saved.no_proxy.clone(),
            ..Default::default()
        };
        if let Some(ca) = &saved.ca_file {
            network.set_ca_file("the saved CA file", ca)?;
        }
        Ok(network)
    }

    fn set_ca_file(&mut self, what: &str, path: &Path) -> Result<(), NetworkError> {
        if !path.is_absolute() {
            return Err(bad(
                what,
                format!(
                    "'{}' must be an absolute path (the agent reads it on every start)",
                    path.display()
                ),
            ));
        }
        let meta =
            std::fs::metadata(path).map_err(|e| bad(what, format!("{}: {e}", path.display())))?;
        if !meta.is_file() || meta.len() > 1024 * 1024 {
            return Err(bad(
                what,
                format!("{} is not a PEM file of certificates", path.display()),
            ));
        }
        let certs = super::tls::read_pem_certs(path)
            .map_err(|e| bad(what, format!("{}: {e}", path.display())))?;
        self.ca_file = Some(path.to_owned());
        self.ca_certs = certs;
        Ok(())
    }

    /// Whether a request to `url` goes through the proxy (curl's `NO_PROXY` rules).
    pub fn proxied(&self, url: &Url) -> bool {
        self.proxy.is_some()
            && !url.host_str().is_some_and(|h| {
                bypassed(
                    self.no_proxy.as_deref().unwrap_or(""),
                    h,
                    url.port_or_known_default(),
                )
            })
    }

    /// `.proxybypass` for the agent: one regex per line, matched (case-insensitively, anywhere)
    /// against `scheme://host[:port]` (`VstsAgentWebProxy`). Entries that cannot be expressed are
    /// left out, each with the reason.
    pub fn agent_bypass(&self) -> (String, Vec<String>) {
        let mut lines = vec![];
        let mut skipped = vec![];
        for entry in self.no_proxy.as_deref().unwrap_or("").split([',', ';']) {
            let entry = entry.trim();
            if entry.is_empty() {
                continue;
            }
            match bypass_regex(entry) {
                Ok(r) => lines.push(r),
                Err(why) => skipped.push(format!("{entry}: {why}")),
            }
        }
        let mut text = lines.join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        (text, skipped)
    }
}

fn parse_proxy(raw: &str, from: &str, flag: bool) -> Result<Proxy, NetworkError> {
    let raw = raw.trim();
    // curl takes a bare host:port as http://host:port.
    let with_scheme = if raw.contains("://") {
        raw.to_owned()
    } else {
        format!("http://{raw}")
    };
    let mut url =
        Url::parse(&with_scheme).map_err(|e| bad(from, format!("'{raw}' is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad(
            from,
            format!(
                "'{}' proxies are not supported: use an http:// or https:// proxy",
                url.scheme()
            ),
        ));
    }
    if url.host_str().is_none() {
        return Err(bad(from, "the proxy URL has no host"));
    }
    if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
        return Err(bad(
            from,
            "a proxy URL is scheme://host:port, without a path or query",
        ));
    }
    let user = (!url.username().is_empty()).then(|| decode(url.username()));
    let password = url.password().map(|p| Secret::new(decode(p)));
    if password.is_some() && flag {
        return Err(bad(
            "--proxy",
            format!(
                "carries a password, which every account on this machine can read in the process \
                 list: give the user with --proxy-user and the password in {PASSWORD_ENV} or \
                 --proxy-password-file"
            ),
        ));
    }
    let _ = url.set_username("");
    let _ = url.set_password(None);
    Ok(Proxy {
        url,
        from: from.to_owned(),
        user,
        password,
        password_file: None,
    })
}

fn decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// A password file: absolute, a regular file not readable by every account, one line.
fn read_password(path: &Path) -> Result<Secret, NetworkError> {
    let what = format!("--proxy-password-file {}", path.display());
    if !path.is_absolute() {
        return Err(bad(what, "must be an absolute path"));
    }
    let text = crate::fsx::read_secret(path, MAX_PASSWORD).map_err(|e| match e {
        crate::fsx::SecretFileRefused::Unsafe(why) => bad(&what, format!("refused: {why}")),
        crate::fsx::SecretFileRefused::Unreadable(detail) => bad(&what, detail),
    })?;
    let pw = text.lines().next().unwrap_or("").trim_end_matches('\r');
    if pw.is_empty() || pw.chars().any(char::is_control) {
        return Err(bad(&what, "holds no password (an empty first line)"));
    }
    Ok(Secret::new(pw))
}

/// curl's `NO_PROXY`: `*`; a host or domain (matching itself and its subdomains, a leading dot
/// optional); an IP address; a CIDR block; each optionally with `:port`.
pub fn bypassed(no_proxy: &str, host: &str, port: Option<u16>) -> bool {
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    no_proxy
        .split([',', ';'])
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .any(|entry| {
            if entry == "*" {
                return true;
            }
            let (name, entry_port) = split_port(entry);
            if let Some(p) = entry_port
                && Some(p) != port
            {
                return false;
            }
            let name = name
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_ascii_lowercase();
            if let Some((net, bits)) = name.split_once('/') {
                return in_cidr(&host, net, bits);
            }
            let name = name.trim_start_matches("*.").trim_start_matches('.');
            host == name || host.ends_with(&format!(".{name}"))
        })
}

fn split_port(entry: &str) -> (&str, Option<u16>) {
    // An IPv6 address has colons of its own: only `[v6]:port` carries a port.
    if let Some(rest) = entry.strip_prefix('[') {
        if let Some((addr, after)) = rest.split_once(']') {
            let port = after.strip_prefix(':').and_then(|p| p.parse().ok());
            return (addr, port);
        }
        return (entry, None);
    }
    match entry.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') => match port.parse() {
            Ok(p) => (name, Some(p)),
            Err(_) => (entry, None),
        },
        _ => (entry, None),
    }
}

fn in_cidr(host: &str, net: &str, bits: &str) -> bool {
    use std::net::IpAddr;
    let (Ok(h), Ok(n), Ok(bits)) = (
        host.parse::<IpAddr>(),
        net.parse::<IpAddr>(),
        bits.parse::<u32>(),
    ) else {
        return false;
    };
    match (h, n) {
        (IpAddr::V4(h), IpAddr::V4(n)) if bits <= 32 => {
            let mask = if bits == 0 {
                0
            } else {
                u32::MAX << (32 - bits)
            };
            u32::from(h) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(h), IpAddr::V6(n)) if bits <= 128 => {
            let mask = if bits == 0 {
                0
            } else {
                u128::MAX << (128 - bits)
            };
            u128::from(h) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// One `NO_PROXY` entry as the agent's bypass regex, anchored to the whole `scheme://host[:port]`
/// (the agent matches anywhere: an unanchored `\.corp\.int` would also bypass `corp.internal.com`).
fn bypass_regex(entry: &str) -> Result<String, &'static str> {
    const SCHEME: &str = "^[a-z][a-z0-9+.-]*://";
    if entry == "*" {
        return Ok(".*".into());
    }
    let (name, port) = split_port(entry);
    let port_re = match port {
        Some(p) => format!(":{p}$"),
        None => "(:[0-9]+)?$".into(),
    };
    if let Some((net, bits)) = name.split_once('/') {
        let Ok(std::net::IpAddr::V4(ip)) = net.parse::<std::net::IpAddr>() else {
            return Err("only IPv4 CIDR blocks can be written for the agent");
        };
        let octets = match bits.parse::<u32>() {
            Ok(b) if b % 8 == 0 && b <= 32 => (b / 8) as usize,
            _ => {
                return Err(
                    "a CIDR block the agent's bypass list can express is /8, /16, /24 or /32",
                );
            }
        };
        let mut parts: Vec<String> = ip.octets()[..octets].iter().map(u8::to_string).collect();
        parts.extend(std::iter::repeat_n("[0-9]+".to_owned(), 4 - octets));
        return Ok(format!("{SCHEME}{}{port_re}", parts.join("\\.")));
    }
    if name.contains(':') {
        return Err(
            "IPv6 addresses are left out (the agent's bypass matching does not see them reliably)",
        );
    }
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '*'))
    {
        return Err("not a host name, domain or address");
    }
    let domain = name.trim_start_matches("*.").trim_start_matches('.');
    if domain.contains('*') {
        return Err("a wildcard is only understood at the start (*.example.com)");
    }
    let escaped = domain.replace('.', "\\.");
    let is_ip = domain.parse::<std::net::Ipv4Addr>().is_ok();
    let host_re = if is_ip {
        escaped
    } else {
        // The domain itself and its subdomains, as curl treats it.
        format!("([a-z0-9-]+\\.)*{escaped}")
    };
    Ok(format!("{SCHEME}{host_re}{port_re}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Env {
        Env::fake(vars, "h", true)
    }

    #[test]
    fn flag_wins_over_the_environment_and_credentials_stay_out_of_argv() {
        let e = env(&[
            ("HTTPS_PROXY", "http://envproxy:3128"),
            ("NO_PROXY", "corp.int"),
        ]);
        let n = Network::resolve(
            &Given {
                proxy: Some("http://flagproxy:8080"),
                ..Default::default()
            },
            &e,
        )
        .unwrap();
        let p = n.proxy.unwrap();
        assert_eq!(p.url.as_str(), "http://flagproxy:8080/");
        assert_eq!(p.from, "--proxy");
        assert_eq!(n.no_proxy.as_deref(), Some("corp.int"));

        let n = Network::resolve(&Given::default(), &e).unwrap();
        assert_eq!(n.proxy.unwrap().from, "HTTPS_PROXY");

        // curl reads the lower-case name first.
        let e2 = env(&[("https_proxy", "low:1"), ("HTTPS_PROXY", "http://up:2")]);
        let n = Network::resolve(&Given::default(), &e2).unwrap();
        assert_eq!(n.proxy.unwrap().url.as_str(), "http://low:1/");

        let err = Network::resolve(
            &Given {
                proxy: Some("http://u:secret@p:1"),
                ..Default::default()
            },
            &e,
        )
        .unwrap_err();
        assert!(err.to_string().contains("--proxy"), "{err}");
        assert!(!err.to_string().contains("secret"));

        // From the environment a URL with credentials is accepted; they leave the URL.
        let e3 = env(&[("HTTPS_PROXY", "http://bob:p%40ss@p:1")]);
        let p = Network::resolve(&Given::default(), &e3)
            .unwrap()
            .proxy
            .unwrap();
        assert_eq!(p.user.as_deref(), Some("bob"));
        assert_eq!(p.password.as_ref().unwrap().expose(), "p@ss");
        assert_eq!(p.url.as_str(), "http://p:1/");
        assert!(!format!("{p:?}").contains("p@ss"));
    }

    #[test]
    fn user_and_password_rules() {
        let e = env(&[(PASSWORD_ENV, "pw")]);
        let g = Given {
            proxy: Some("http://p:1"),
            proxy_user: Some("alice"),
            ..Default::default()
        };
        let p = Network::resolve(&g, &e).unwrap().proxy.unwrap();
        assert_eq!(p.password.unwrap().expose(), "pw");
        let err = Network::resolve(&g, &env(&[])).unwrap_err();
        assert!(err.to_string().contains(PASSWORD_ENV), "{err}");
        let err = Network::resolve(
            &Given {
                proxy_user: Some("a"),
                ..Default::default()
            },
            &env(&[]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("--proxy-user"), "{err}");
        let err = Network::resolve(
            &Given {
                proxy: Some("socks5://p:1"),
                ..Default::default()
            },
            &env(&[]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("socks5"), "{err}");
        let err = Network::resolve(
            &Given {
                proxy: Some("http://p:1/path"),
                ..Default::default()
            },
            &env(&[]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("without a path"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn password_files_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "s3cret\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let g = Given {
            proxy: Some("http://p:1"),
            proxy_user: Some("a"),
            proxy_password_file: Some(&f),
            ..Default::default()
        };
        let err = Network::resolve(&g, &env(&[])).unwrap_err();
        assert!(err.to_string().contains("chmod o-r"), "{err}");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        let p = Network::resolve(&g, &env(&[])).unwrap().proxy.unwrap();
        assert_eq!(p.password.unwrap().expose(), "s3cret");
        assert_eq!(p.password_file.as_deref(), Some(f.as_path()));
    }

    #[test]
    fn no_proxy_matches_as_curl_does() {
        let np = "localhost,.corp.int,example.com:8443,10.0.0.0/8,192.168.1.5,[::1]";
        assert!(bypassed(np, "localhost", Some(80)));
        assert!(bypassed(np, "dev.corp.int", Some(443)));
        assert!(bypassed(np, "corp.int", Some(443)));
        assert!(!bypassed(np, "corp.internal", Some(443)));
        assert!(!bypassed(np, "notcorp.int", Some(443)));
        assert!(bypassed(np, "example.com", Some(8443)));
        assert!(!bypassed(np, "example.com", Some(443)));
        assert!(bypassed(np, "10.1.2.3", Some(443)));
        assert!(!bypassed(np, "11.1.2.3", Some(443)));
        assert!(bypassed(np, "192.168.1.5", Some(443)));
        assert!(bypassed(np, "[::1]", Some(443)));
        assert!(bypassed("*", "anything", None));
        assert!(!bypassed("", "dev.azure.com", Some(443)));
    }

    #[test]
    fn the_agents_bypass_list_is_anchored_regexes() {
        let n = Network {
            no_proxy: Some("localhost, .corp.int,*.svc.local,10.0.0.0/8,10.1.0.0/12,example.com:8443,127.0.0.1,::1,bad host".into()),
            ..Default::default()
        };
        let (text, skipped) = n.agent_bypass();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "^[a-z][a-z0-9+.-]*://([a-z0-9-]+\\.)*localhost(:[0-9]+)?$",
                "^[a-z][a-z0-9+.-]*://([a-z0-9-]+\\.)*corp\\.int(:[0-9]+)?$",
                "^[a-z][a-z0-9+.-]*://([a-z0-9-]+\\.)*svc\\.local(:[0-9]+)?$",
                "^[a-z][a-z0-9+.-]*://10\\.[0-9]+\\.[0-9]+\\.[0-9]+(:[0-9]+)?$",
                "^[a-z][a-z0-9+.-]*://([a-z0-9-]+\\.)*example\\.com:8443$",
                "^[a-z][a-z0-9+.-]*://127\\.0\\.0\\.1(:[0-9]+)?$",
            ]
        );
        assert_eq!(skipped.len(), 3, "{skipped:?}");
        assert!(skipped[0].starts_with("10.1.0.0/12"));
    }
}
