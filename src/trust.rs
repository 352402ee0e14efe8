//! The system trust store, where a private CA (`--ca-file`) must be for the agent to trust it.
//!
//! The agent's listener (.NET) trusts only the machine's store for its own connections to Azure
//! DevOps: its HTTP handlers get no custom roots (`VssUtil.InitializeVssClientSettings`,
//! `HostContextExtension.CreateHttpClientHandler` in microsoft/azure-pipelines-agent), and
//! `--sslcacert` is only saved in `.certificates` for git (`http.sslcainfo`) and tasks
//! (`agent.cainfo`). On Linux .NET verifies through OpenSSL's default store. So install puts the
//! CA there, with the distribution's own tool, before configure:
//!
//! | distribution (`/etc/os-release`) | file | tool | bundle it builds |
//! |---|---|---|---|
//! | Debian, Ubuntu, Alpine | `/usr/local/share/ca-certificates/agent-bootstrap-<hash>.crt` | `update-ca-certificates` | `/etc/ssl/certs/ca-certificates.crt` |
//! | SUSE, openSUSE | `/etc/pki/trust/anchors/agent-bootstrap-<hash>.crt` | `update-ca-certificates` | `/var/lib/ca-certificates/ca-bundle.pem` |
//! | RHEL, Fedora, CentOS, Alma, Rocky, Oracle, Amazon, Azure Linux | `/etc/pki/ca-trust/source/anchors/agent-bootstrap-<hash>.crt` | `update-ca-trust extract` | `/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem` |
//! | Windows | `LocalMachine\Root` | `certutil -addstore Root` | |
//!
//! One file per certificate (`<hash>`: the first 16 hex digits of its SHA-256), written as PEM
//! (nothing but the certificate) through a descriptor of the directory, under a new name renamed
//! into place, mode 0644. A certificate the bundle already holds, and not through a file of ours,
//! is the machine's own: left alone and never removed. After the tool ran, the bundle must hold
//! every certificate, or the files written are taken out again and install stops before configure
//! (exit 6). A file named `agent-bootstrap-*.crt` is ours, whoever's install wrote it: `remove`
//! takes one out (and runs the tool again) only when no other agent dir's saved settings list it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::env::Env;
use crate::host::{CaTool, Facts};
use crate::process::{self, Child};
use crate::secret::Masker;
use crate::state::TrustedCa;

/// Where a Linux distribution keeps local CAs, and the tool that folds them into its bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub tool: &'static str,
    pub tool_args: &'static [&'static str],
    /// The directory of local CA files, relative to the store's root.
    pub anchors: &'static str,
    /// The PEM bundle the tool builds (what OpenSSL reads), relative to the store's root.
    pub bundle: &'static str,
}

pub const DEBIAN: Layout = Layout {
    tool: "update-ca-certificates",
    tool_args: &[],
    anchors: "usr/local/share/ca-certificates",
    bundle: "etc/ssl/certs/ca-certificates.crt",
};
pub const SUSE: Layout = Layout {
    tool: "update-ca-certificates",
    tool_args: &[],
    anchors: "etc/pki/trust/anchors",
    bundle: "var/lib/ca-certificates/ca-bundle.pem",
};
pub const RED_HAT: Layout = Layout {
    tool: "update-ca-trust",
    tool_args: &["extract"],
    anchors: "etc/pki/ca-trust/source/anchors",
    bundle: "etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
};

/// Where OpenSSL finds the system's bundle on the distributions whose layout is not known here
/// (openssl-probe's list, most common first): a CA already there is found even so.
const OTHER_BUNDLES: &[&str] = &[
    "etc/ssl/certs/ca-certificates.crt",
    "etc/pki/tls/certs/ca-bundle.crt",
    "etc/ssl/ca-bundle.pem",
    "etc/pki/tls/cacert.pem",
    "etc/ssl/cert.pem",
];

/// Names of the files agent-bootstrap writes into the store.
const FILE_PREFIX: &str = "agent-bootstrap-";

/// A certificate of the CA file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cert {
    pub der: Vec<u8>,
    pub sha256: String,
    pub subject: String,
}

impl Cert {
    pub fn new(der: Vec<u8>) -> Self {
        use sha2::Digest;
        let sha256 = hex::encode(sha2::Sha256::digest(&der));
        let subject = crate::net::tls::names(&der)
            .map(|(s, _)| s)
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| format!("sha256 {}", &sha256[..16]));
        Self {
            der,
            sha256,
            subject,
        }
    }

    /// `agent-bootstrap-<16 hex digits of its SHA-256>.crt`.
    pub fn file_name(&self) -> String {
        format!("{FILE_PREFIX}{}.crt", &self.sha256[..16])
    }

    /// The certificate alone, as PEM (64-column base64).
    pub fn pem(&self) -> String {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(&self.der);
        let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
        for chunk in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
        out
    }

    /// Its SHA-1 thumbprint, upper-case hex: how `certutil` names it in a store.
    pub fn thumbprint(&self) -> String {
        let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &self.der);
        hex::encode_upper(digest.as_ref())
    }
}

/// Which store, where, for what the machine is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A Linux distribution whose layout is known.
    Linux(Layout),
    /// A Linux distribution whose layout is not known: a CA already in its bundle is found, none
    /// can be added.
    Unknown { distribution: String },
    /// `LocalMachine\Root`, through `certutil`.
    Windows,
}

#[derive(Debug, Clone)]
pub struct Store {
    pub kind: Kind,
    /// `/`, or the tests' scratch store ([`Env::ca_store_root`]).
    pub root: PathBuf,
    /// The CA file the certificates come from (`--ca-file`), for messages.
    pub ca_file: PathBuf,
    /// The tool is looked for in the system's directories after `PATH` (not for a test's scratch
    /// store: the machine's own tool is never run on it).
    pub system_dirs: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error(
        "cannot add the CA certificate '{subject}' of {ca_file} to this machine's trust store: \
         {reason}; the agent trusts only that store for its connections to Azure DevOps, so \
         configure would fail\n  fix: {fix}, then run again"
    )]
    CannotAdd {
        ca_file: PathBuf,
        subject: String,
        reason: String,
        fix: String,
    },
    #[error(
        "could not take the CA certificate '{subject}' ({what}) out of the system trust store: \
         {reason}\n  fix: {fix}"
    )]
    CannotRemove {
        subject: String,
        what: String,
        reason: String,
        fix: String,
    },
}

/// What install does with one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// The store has it, not through a file of ours: the machine's own, left alone.
    Present,
    /// Ours already (a file of ours, or a record of another agent dir's install); in the bundle or
    /// not (the tool runs again when not).
    Ours { in_bundle: bool },
    /// Not there: written, then the tool runs.
    Add,
}

/// What [`ensure`] did.
#[derive(Debug, Default, Clone)]
pub struct Ensured {
    /// Every certificate that is in the store because of agent-bootstrap (added now or before):
    /// what the saved settings record.
    pub ours: Vec<TrustedCa>,
    /// Those written by this call (taken out again if the install fails before it saves them).
    pub added_now: Vec<TrustedCa>,
    /// Certificates the store had already, left alone.
    pub present: Vec<Cert>,
}

impl Store {
    /// The store of this machine (`facts` from `/etc/os-release`), for the certificates of
    /// `ca_file`.
    pub fn for_machine(windows: bool, facts: &Facts, env: &Env, ca_file: &Path) -> Self {
        let kind = if windows {
            Kind::Windows
        } else {
            match facts.ca_tool {
                Some(CaTool::UpdateCaTrust) => Kind::Linux(RED_HAT),
                Some(CaTool::UpdateCaCertificates) if facts.is_suse() => Kind::Linux(SUSE),
                Some(CaTool::UpdateCaCertificates) => Kind::Linux(DEBIAN),
                None => Kind::Unknown {
                    distribution: facts
                        .os_release
                        .as_ref()
                        .map_or_else(|| "no /etc/os-release".into(), |r| format!("ID={}", r.id)),
                },
            }
        };
        let test_root = env.ca_store_root();
        Self {
            kind,
            system_dirs: test_root.is_none(),
            root: test_root.unwrap_or_else(|| PathBuf::from("/")),
            ca_file: ca_file.to_owned(),
        }
    }

    fn at(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// The file of ours for `cert` (Linux).
    pub fn file_for(&self, cert: &Cert) -> Option<PathBuf> {
        match &self.kind {
            Kind::Linux(l) => Some(self.at(l.anchors).join(cert.file_name())),
            _ => None,
        }
    }

    /// The directories a change to the store writes (Linux: the certificate's and the bundle's),
    /// with the room the rebuilt bundle needs.
    pub fn places(&self) -> Vec<crate::preflight::Place> {
        let Kind::Linux(l) = &self.kind else {
            return vec![];
        };
        let bundle = self.at(l.bundle);
        [
            self.at(l.anchors),
            bundle.parent().unwrap_or(&bundle).to_owned(),
        ]
        .into_iter()
        .map(|path| crate::preflight::Place {
            what: "the system trust store",
            path,
            exec: false,
            room: crate::preflight::TRUST_ROOM,
            fix: format!(
                "add the CA in the image instead of passing --ca-file ({})",
                self.manual_fix()
            ),
        })
        .collect()
    }

    /// How a person adds the CA by hand (or in the image build).
    pub fn manual_fix(&self) -> String {
        let file = self.ca_file.display();
        match &self.kind {
            Kind::Linux(l) => format!(
                "as root: cp {file} /{}/corp-ca.crt && {}",
                l.anchors,
                std::iter::once(l.tool)
                    .chain(l.tool_args.iter().copied())
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            Kind::Unknown { .. } => format!(
                "add {file} to the system trust store with the distribution's own tool (what \
                 OpenSSL reads)"
            ),
            Kind::Windows => format!("elevated: certutil -addstore Root {file}"),
        }
    }

    /// The tool's command line, for plans and messages.
    pub fn tool_display(&self) -> String {
        match &self.kind {
            Kind::Linux(l) => std::iter::once(l.tool)
                .chain(l.tool_args.iter().copied())
                .collect::<Vec<_>>()
                .join(" "),
            Kind::Unknown { .. } => "none known".into(),
            Kind::Windows => "certutil -addstore Root".into(),
        }
    }

    fn cannot(&self, cert: &Cert, reason: impl Into<String>, fix: Option<String>) -> TrustError {
        TrustError::CannotAdd {
            ca_file: self.ca_file.clone(),
            subject: cert.subject.clone(),
            reason: reason.into(),
            fix: fix.unwrap_or_else(|| self.manual_fix()),
        }
    }

    /// The distribution's tool: on `PATH`, then the system's directories (a test's scratch store:
    /// `PATH` alone, so the machine's own tool is never run on it).
    fn tool(&self, env: &Env) -> Option<PathBuf> {
        let Kind::Linux(l) = &self.kind else {
            return None;
        };
        let path = env.var("PATH").unwrap_or_default();
        let path = if self.system_dirs {
            format!("{path}:/usr/sbin:/usr/bin:/sbin:/bin")
        } else {
            path.to_owned()
        };
        which::which_in(l.tool, Some(path), "/").ok()
    }

    /// The SHA-256 of every certificate of the system's bundle (none when it cannot be read).
    fn bundle(&self) -> BTreeSet<String> {
        let candidates: Vec<&str> = match &self.kind {
            Kind::Linux(l) => vec![l.bundle],
            Kind::Unknown { .. } => OTHER_BUNDLES.to_vec(),
            Kind::Windows => vec![],
        };
        candidates
            .into_iter()
            .map(|rel| self.at(rel))
            .find(|p| p.is_file())
            .and_then(|p| std::fs::read(p).ok())
            .map(|pem| bundle_hashes(&pem))
            .unwrap_or_default()
    }
}

/// The SHA-256 of each certificate in a PEM bundle (text between the blocks, such as the comments
/// of RHEL's bundle, is skipped).
pub fn bundle_hashes(pem: &[u8]) -> BTreeSet<String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    use sha2::Digest;
    CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .map(|c| hex::encode(sha2::Sha256::digest(c.as_ref())))
        .collect()
}

/// What install will do with each certificate, from a look at the store (nothing changed).
/// `elsewhere`: the certificates other agent dirs' installs added ([`crate::state::trusted_elsewhere`]).
/// Fails, before anything is changed, when a certificate must be added and cannot be: no root, an
/// unknown distribution, the tool missing.
pub async fn assess(
    store: &Store,
    certs: &[Cert],
    elsewhere: &[TrustedCa],
    as_root: bool,
    env: &Env,
) -> Result<Vec<Action>, TrustError> {
    let mut actions = vec![];
    let bundle = store.bundle();
    for cert in certs {
        let recorded = elsewhere.iter().any(|e| e.sha256 == cert.sha256);
        let action = match &store.kind {
            Kind::Windows => {
                let present = windows_present(env, &cert.thumbprint()).await;
                match (present, recorded) {
                    (true, true) => Action::Ours { in_bundle: true },
                    (true, false) => Action::Present,
                    (false, _) => Action::Add,
                }
            }
            _ => {
                let ours = store.file_for(cert).is_some_and(|f| is_regular(&f));
                let in_bundle = bundle.contains(&cert.sha256);
                match (ours, in_bundle) {
                    (true, _) => Action::Ours { in_bundle },
                    (false, true) => Action::Present,
                    (false, false) => Action::Add,
                }
            }
        };
        if matches!(action, Action::Add | Action::Ours { in_bundle: false }) {
            if !as_root {
                return Err(store.cannot(
                    cert,
                    "only root (an elevated administrator on Windows) can add it",
                    Some(format!(
                        "{}, or run agent-bootstrap as root",
                        store.manual_fix()
                    )),
                ));
            }
            match &store.kind {
                Kind::Unknown { distribution } => {
                    return Err(store.cannot(
                        cert,
                        format!(
                            "this distribution ({distribution}) is not one whose trust store \
                             agent-bootstrap knows (Debian, Ubuntu, Alpine, SUSE, RHEL and its \
                             rebuilds, Fedora, Azure Linux)"
                        ),
                        None,
                    ));
                }
                Kind::Linux(l) if store.tool(env).is_none() => {
                    return Err(store.cannot(
                        cert,
                        format!("{} was not found", l.tool),
                        Some(format!(
                            "install the distribution's ca-certificates package (it provides {}), \
                             or {}",
                            l.tool,
                            store.manual_fix()
                        )),
                    ));
                }
                _ => {}
            }
        }
        actions.push(action);
    }
    Ok(actions)
}

/// Puts every certificate into the system trust store (see the module's rules), running the tool
/// once when anything changed, and checks the result. On a failure, what this call wrote is taken
/// out again. Call [`assess`] first (it refuses what cannot be done).
pub async fn ensure(
    store: &Store,
    certs: &[Cert],
    elsewhere: &[TrustedCa],
    scratch: &Path,
    env: &Env,
) -> Result<Ensured, TrustError> {
    let actions = assess(store, certs, elsewhere, true, env).await?;
    let mut done = Ensured::default();
    let mut run_tool = false;
    for (cert, action) in certs.iter().zip(actions) {
        let entry = record(store, cert);
        match action {
            Action::Present => done.present.push(cert.clone()),
            Action::Ours { in_bundle } => {
                run_tool |= !in_bundle;
                done.ours.push(entry);
            }
            Action::Add => {
                if let Err(e) = add(store, cert, scratch, env).await {
                    undo(store, &done.added_now, false, env).await;
                    return Err(e);
                }
                run_tool = true;
                done.ours.push(entry.clone());
                done.added_now.push(entry);
            }
        }
    }
    if run_tool && let Kind::Linux(layout) = &store.kind {
        let first = certs
            .iter()
            .find(|c| done.ours.iter().any(|o| o.sha256 == c.sha256))
            .expect("something to add");
        if let Err(reason) = rebuild(store, env).await {
            undo(store, &done.added_now, false, env).await;
            return Err(store.cannot(first, reason, None));
        }
        let bundle = store.bundle();
        if let Some(missing) = done
            .ours
            .iter()
            .find(|o| !bundle.contains(&o.sha256))
            .cloned()
        {
            undo(store, &done.added_now, true, env).await;
            let cert = certs
                .iter()
                .find(|c| c.sha256 == missing.sha256)
                .unwrap_or(first);
            return Err(store.cannot(
                cert,
                format!(
                    "{} ran, but {} does not hold it",
                    store.tool_display(),
                    store.at(layout.bundle).display()
                ),
                None,
            ));
        }
    }
    Ok(done)
}

/// How the saved settings record `cert` in this store.
fn record(store: &Store, cert: &Cert) -> TrustedCa {
    TrustedCa {
        subject: cert.subject.clone(),
        sha256: cert.sha256.clone(),
        file: store.file_for(cert),
        thumbprint: matches!(store.kind, Kind::Windows).then(|| cert.thumbprint()),
    }
}

async fn add(store: &Store, cert: &Cert, scratch: &Path, env: &Env) -> Result<(), TrustError> {
    match &store.kind {
        Kind::Linux(_) => {
            let path = store.file_for(cert).expect("a Linux store");
            let dir = path.parent().expect("a file in a directory");
            write_file(dir, &cert.file_name(), cert.pem().as_bytes()).map_err(|e| {
                store.cannot(
                    cert,
                    format!("writing {}: {e}", path.display()),
                    Some(if e.raw_os_error() == Some(30) {
                        format!(
                            "the file system is read-only: add the CA to the image's trust store \
                             when it is built ({})",
                            store.manual_fix()
                        )
                    } else {
                        store.manual_fix()
                    }),
                )
            })
        }
        Kind::Windows => {
            // certutil reads the certificate from a file: SYSTEM's private directory.
            let file = scratch.join(format!("ca-{}.cer", &cert.sha256[..16]));
            std::fs::write(&file, &cert.der).map_err(|e| {
                store.cannot(cert, format!("writing {}: {e}", file.display()), None)
            })?;
            let file_arg = file.display().to_string();
            let done = certutil(env, &["-addstore", "Root", &file_arg]).await;
            let _ = std::fs::remove_file(&file);
            match done {
                Ok(f) if f.success() => Ok(()),
                Ok(f) => Err(store.cannot(
                    cert,
                    format!(
                        "certutil -addstore Root failed (exit {}): {}",
                        f.code,
                        f.error_line().unwrap_or_default()
                    ),
                    None,
                )),
                Err(e) => Err(store.cannot(cert, e, None)),
            }
        }
        Kind::Unknown { .. } => Err(store.cannot(cert, "unknown distribution", None)),
    }
}

/// Runs the distribution's tool (Linux): `Err` says why it failed.
async fn rebuild(store: &Store, env: &Env) -> Result<(), String> {
    let Kind::Linux(l) = &store.kind else {
        return Ok(());
    };
    let program = store
        .tool(env)
        .ok_or_else(|| format!("{} was not found", l.tool))?;
    let child = Child::new(store.tool_display(), program, env)
        .args(l.tool_args.iter().copied())
        .timeout(Duration::from_secs(120));
    match process::run_async(child, Masker::new()).await {
        Ok(done) if done.success() => Ok(()),
        Ok(done) => Err(format!(
            "{} failed (exit {}): {}",
            store.tool_display(),
            done.code,
            done.error_line().unwrap_or_default()
        )),
        Err(e) => Err(format!(
            "{}: {}",
            store.tool_display(),
            crate::report::one_line(&e)
        )),
    }
}

/// Takes out what a failed [`ensure`] wrote, best effort (logged); the tool runs again only when
/// it ran fine before (`rebuild`): its bundle may hold what was written.
async fn undo(store: &Store, added: &[TrustedCa], rebuild: bool, env: &Env) {
    if added.is_empty() {
        return;
    }
    let taken = if rebuild {
        release(store, added, env).await
    } else {
        delete_files(store, added).map(|_| vec![])
    };
    if let Err(e) = taken {
        tracing::warn!("{e}");
    }
}

/// Takes `entries` (recorded by install) out of the store and runs the tool again. Returns the
/// ones that were there. Only files of ours in the store's directory are ever deleted, whatever
/// the record says.
pub async fn release(
    store: &Store,
    entries: &[TrustedCa],
    env: &Env,
) -> Result<Vec<TrustedCa>, TrustError> {
    let mut removed = delete_files(store, entries)?;
    if let Kind::Windows = store.kind {
        for e in entries {
            let Some(thumb) = &e.thumbprint else { continue };
            let done = certutil(env, &["-delstore", "Root", thumb])
                .await
                .map_err(|reason| cannot_remove(e, reason, "certutil -delstore Root"))?;
            if done.success() {
                removed.push(e.clone());
            } else if windows_present(env, thumb).await {
                return Err(cannot_remove(
                    e,
                    format!(
                        "certutil -delstore Root failed (exit {}): {}",
                        done.code,
                        done.error_line().unwrap_or_default()
                    ),
                    &format!("elevated: certutil -delstore Root {thumb}"),
                ));
            }
        }
    }
    if let Kind::Linux(l) = &store.kind {
        // Also when the files were gone already (an earlier remove stopped before the tool ran):
        // the bundle must not keep what was taken out.
        let bundle = store.bundle();
        let stale = entries.iter().find(|e| bundle.contains(&e.sha256));
        if let Some(first) = removed.first().or(stale) {
            rebuild(store, env)
                .await
                .map_err(|reason| cannot_remove(first, reason, &format!("as root: {}", l.tool)))?;
        }
    }
    Ok(removed)
}

/// Deletes the files of ours `entries` name (Linux), never anything else: a file outside the
/// store's directory or not named like ours is left alone, whatever the record says. Returns the
/// entries whose file was there.
fn delete_files(store: &Store, entries: &[TrustedCa]) -> Result<Vec<TrustedCa>, TrustError> {
    let Kind::Linux(l) = &store.kind else {
        return Ok(vec![]);
    };
    let dir = store.at(l.anchors);
    let mut removed = vec![];
    for e in entries {
        let Some(file) = &e.file else { continue };
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if file.parent() != Some(dir.as_path())
            || !name.starts_with(FILE_PREFIX)
            || !name.ends_with(".crt")
        {
            tracing::warn!(
                file = %file.display(),
                "not a file of agent-bootstrap's in {}; left alone",
                dir.display()
            );
            continue;
        }
        match crate::fsx::remove_atomic(&dir, &name) {
            Ok(true) => removed.push(e.clone()),
            Ok(false) => {}
            Err(err) => {
                return Err(cannot_remove(
                    e,
                    format!("deleting {}: {err}", file.display()),
                    &format!("as root: rm {} && {}", file.display(), l.tool),
                ));
            }
        }
    }
    Ok(removed)
}

fn cannot_remove(e: &TrustedCa, reason: impl Into<String>, fix: &str) -> TrustError {
    TrustError::CannotRemove {
        subject: e.subject.clone(),
        what: e
            .file
            .as_ref()
            .map(|f| f.display().to_string())
            .or_else(|| e.thumbprint.as_ref().map(|t| format!("thumbprint {t}")))
            .unwrap_or_default(),
        reason: reason.into(),
        fix: fix.to_owned(),
    }
}

async fn certutil(env: &Env, args: &[&str]) -> Result<process::Finished, String> {
    let program = crate::service::windows::system32(env, "certutil.exe");
    let child = Child::new(format!("certutil {}", args.join(" ")), program, env)
        .args(args.iter().copied())
        .timeout(Duration::from_secs(120))
        .probe();
    process::run_async(child, Masker::new())
        .await
        .map_err(|e| crate::report::one_line(&e))
}

/// Whether `LocalMachine\Root` has the certificate of this thumbprint.
async fn windows_present(env: &Env, thumbprint: &str) -> bool {
    certutil(env, &["-store", "Root", thumbprint])
        .await
        .is_ok_and(|f| f.success())
}

fn is_regular(path: &Path) -> bool {
    crate::fsx::is_regular(path)
}

/// Writes `name` into `dir` (created 0755 if missing) as root's 0644 file, atomically and never
/// through a link ([`crate::fsx::write_atomic`]).
#[cfg(unix)]
fn write_file(dir: &Path, name: &str, contents: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)?;
    crate::fsx::write_atomic(dir, name, contents, 0o644)
}

#[cfg(not(unix))]
fn write_file(dir: &Path, name: &str, contents: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    crate::fsx::replace_file_no_follow(dir, name, contents)
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    fn facts(os_release: Option<&str>) -> Facts {
        let root = tempfile::tempdir().unwrap();
        if let Some(text) = os_release {
            std::fs::create_dir_all(root.path().join("etc")).unwrap();
            std::fs::write(root.path().join("etc/os-release"), text).unwrap();
        }
        Facts::probe(root.path(), "x86_64", crate::os::Arch::X64)
    }

    /// The simulator's test CA, as the CA file and its one certificate.
    fn test_ca(dir: &Path) -> (PathBuf, Cert) {
        let ca = azure_sim::tls::make(dir).unwrap();
        let der = crate::net::tls::read_pem_certs(&ca.ca_file).unwrap();
        (ca.ca_file, Cert::new(der.into_iter().next().unwrap()))
    }

    #[test]
    fn each_distribution_gets_its_own_store() {
        let env = Env::fake(&[("PATH", "/usr/bin")], "h", true);
        let cases = [
            ("ID=debian\n", DEBIAN),
            ("ID=ubuntu\nID_LIKE=debian\n", DEBIAN),
            ("ID=alpine\n", DEBIAN),
            ("ID=\"opensuse-leap\"\nID_LIKE=\"suse opensuse\"\n", SUSE),
            ("ID=\"sles\"\n", SUSE),
            ("ID=\"rhel\"\nID_LIKE=\"fedora\"\n", RED_HAT),
            (
                "ID=\"almalinux\"\nID_LIKE=\"rhel centos fedora\"\n",
                RED_HAT,
            ),
            ("ID=azurelinux\n", RED_HAT),
            ("ID=mariner\n", RED_HAT),
            ("ID=fedora\n", RED_HAT),
        ];
        for (text, layout) in cases {
            let store = Store::for_machine(false, &facts(Some(text)), &env, Path::new("/ca.pem"));
            assert_eq!(store.kind, Kind::Linux(layout), "{text}");
            assert_eq!(store.root, Path::new("/"));
            assert!(store.system_dirs);
            assert!(
                store
                    .manual_fix()
                    .contains(&format!("/{}/", layout.anchors)),
                "{text}: {}",
                store.manual_fix()
            );
        }
        let arch = Store::for_machine(false, &facts(Some("ID=arch\n")), &env, Path::new("/c"));
        assert_eq!(
            arch.kind,
            Kind::Unknown {
                distribution: "ID=arch".into()
            }
        );
        let none = Store::for_machine(false, &facts(None), &env, Path::new("/c"));
        assert!(matches!(none.kind, Kind::Unknown { .. }));
        let win = Store::for_machine(true, &facts(None), &env, Path::new(r"C:\ca.pem"));
        assert_eq!(win.kind, Kind::Windows);
        assert_eq!(
            win.manual_fix(),
            r"elevated: certutil -addstore Root C:\ca.pem"
        );
    }

    #[test]
    fn a_certificate_is_written_alone_as_pem_under_a_stable_name() {
        let dir = tempfile::tempdir().unwrap();
        let (_, cert) = test_ca(dir.path());
        let name = cert.file_name();
        assert!(name.starts_with("agent-bootstrap-") && name.ends_with(".crt"));
        assert_eq!(name.len(), "agent-bootstrap-".len() + 16 + 4);
        let pem = cert.pem();
        assert!(pem.lines().all(|l| l.len() <= 64), "{pem}");
        assert_eq!(
            bundle_hashes(pem.as_bytes()),
            BTreeSet::from([cert.sha256.clone()])
        );
        // RHEL's bundle has comments between the certificates.
        let commented = format!("# Corp Root\n{pem}\n# another\n{pem}");
        assert_eq!(bundle_hashes(commented.as_bytes()).len(), 1);
        assert_eq!(cert.thumbprint().len(), 40);
        assert!(
            cert.subject.contains("CN=Simulated Corp Root CA"),
            "{}",
            cert.subject
        );
    }

    /// A scratch RHEL-like root with a fake `update-ca-trust` that rebuilds the bundle from the
    /// anchors (and logs its calls), and the environment that finds it.
    fn red_hat(dir: &Path) -> (Store, Env) {
        let root = dir.join("root");
        let bin = dir.join("bin");
        std::fs::create_dir_all(root.join(RED_HAT.anchors)).unwrap();
        std::fs::create_dir_all(&bin).unwrap();
        let tool = bin.join("update-ca-trust");
        std::fs::write(
            &tool,
            format!(
                "#!/bin/sh\nroot='{}'\necho \"$*\" >> \"$root/calls\"\n\
                 b=\"$root/{}\"; mkdir -p \"$(dirname \"$b\")\"\n\
                 cat \"$root/{}\"/* > \"$b\" 2>/dev/null || : > \"$b\"\n",
                root.display(),
                RED_HAT.bundle,
                RED_HAT.anchors
            ),
        )
        .unwrap();
        std::fs::set_permissions(&tool, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let store = Store {
            kind: Kind::Linux(RED_HAT),
            root,
            ca_file: dir.join("ca.pem"),
            system_dirs: false,
        };
        // The fake first; the shell's own tools after it.
        let path = format!("{}:/usr/bin:/bin", bin.display());
        (store, Env::fake(&[("PATH", path.as_str())], "h", true))
    }

    fn calls(store: &Store) -> Vec<String> {
        std::fs::read_to_string(store.root.join("calls"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[tokio::test]
    async fn a_red_hat_store_gets_the_ca_once_and_loses_it_on_release() {
        let dir = tempfile::tempdir().unwrap();
        let (store, env) = red_hat(dir.path());
        let (_, cert) = test_ca(dir.path());
        let certs = vec![cert.clone()];

        assert_eq!(
            assess(&store, &certs, &[], true, &env).await.unwrap(),
            [Action::Add]
        );
        let done = ensure(&store, &certs, &[], dir.path(), &env).await.unwrap();
        let file = store.root.join(RED_HAT.anchors).join(cert.file_name());
        assert_eq!(done.added_now.len(), 1);
        assert_eq!(done.ours, done.added_now);
        assert_eq!(done.ours[0].file.as_deref(), Some(file.as_path()));
        assert_eq!(std::fs::read_to_string(&file).unwrap(), cert.pem());
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o644);
        }
        assert!(store.bundle().contains(&cert.sha256));
        assert_eq!(calls(&store), ["extract"]);

        // Again: ours already, in the bundle: nothing written, the tool not run.
        let again = ensure(&store, &certs, &[], dir.path(), &env).await.unwrap();
        assert!(again.added_now.is_empty());
        assert_eq!(again.ours, done.ours);
        assert_eq!(calls(&store).len(), 1);

        // A record naming anything else than a file of ours is never acted on.
        let decoy = store.root.join("etc/passwd");
        std::fs::write(&decoy, "root:x:0:0::/root:/bin/sh\n").unwrap();
        let forged = TrustedCa {
            file: Some(decoy.clone()),
            ..done.ours[0].clone()
        };
        release(&store, &[forged], &env).await.unwrap();
        assert!(decoy.is_file());

        let removed = release(&store, &done.ours, &env).await.unwrap();
        assert_eq!(removed, done.ours);
        assert!(!file.exists());
        assert!(!store.bundle().contains(&cert.sha256));
        // Released twice: nothing left to do.
        assert!(release(&store, &done.ours, &env).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_ca_the_store_has_is_left_alone_and_one_that_cannot_be_added_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (store, env) = red_hat(dir.path());
        let (_, cert) = test_ca(dir.path());
        let certs = vec![cert.clone()];

        // Without root, or without the tool: refused before anything is written.
        let e = assess(&store, &certs, &[], false, &env).await.unwrap_err();
        assert!(e.to_string().contains("only root"), "{e}");
        let no_tool = Env::fake(&[("PATH", "/nonexistent")], "h", true);
        let e = ensure(&store, &certs, &[], dir.path(), &no_tool)
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains("update-ca-trust was not found"),
            "{e}"
        );
        assert!(e.to_string().contains("ca-certificates package"), "{e}");
        assert!(calls(&store).is_empty());

        // The administrator's own anchor: present, left alone, nothing run.
        let admin = store.root.join(RED_HAT.anchors).join("corp.pem");
        std::fs::write(&admin, cert.pem()).unwrap();
        crate::process::run(
            &Child::new("t", dir.path().join("bin/update-ca-trust"), &env).args(["extract"]),
            &Masker::new(),
        )
        .unwrap();
        assert_eq!(
            assess(&store, &certs, &[], false, &env).await.unwrap(),
            [Action::Present]
        );
        let done = ensure(&store, &certs, &[], dir.path(), &env).await.unwrap();
        assert!(done.ours.is_empty() && done.added_now.is_empty());
        assert_eq!(done.present, certs);
        assert_eq!(calls(&store).len(), 1);

        // A distribution not known here: a CA in OpenSSL's usual bundle is found all the same.
        let unknown = Store {
            kind: Kind::Unknown {
                distribution: "ID=arch".into(),
            },
            ..store.clone()
        };
        let e = assess(&unknown, &certs, &[], true, &env).await.unwrap_err();
        assert!(e.to_string().contains("ID=arch"), "{e}");
        std::fs::create_dir_all(unknown.root.join("etc/ssl")).unwrap();
        std::fs::write(unknown.root.join("etc/ssl/cert.pem"), cert.pem()).unwrap();
        assert_eq!(
            assess(&unknown, &certs, &[], false, &env).await.unwrap(),
            [Action::Present]
        );
    }
}
