//! The agent's own dependencies, checked before configure the way its `config.sh` checks them,
//! and installed on request by the package's own `bin/installdependencies.sh`.
//!
//! On a minimal image the agent's `config.sh` stops with "libicu's dependencies missing for .NET 6"
//! (microsoft/azure-pipelines-agent `src/Misc/layoutroot/config.sh`): it runs `ldd` on
//! `bin/libcoreclr.so`, `bin/libSystem.Security.Cryptography.Native.OpenSsl.so` and
//! `bin/libSystem.IO.Compression.Native.so` looking for "not found", then `ldconfig -NXv` looking
//! for `libicu` (on Alpine: `apk info` for `icu-libs`). The same checks run here on the verified
//! staging extraction, before anything is registered, and the failure names the distribution's
//! packages and its install command (`src/Misc/layoutbin/installdependencies.sh` holds the agent's
//! own package names per distribution), exit 6.
//!
//! `--install-dependencies` runs that `installdependencies.sh` as root, as the scale-set extension
//! does, but only from the verified, root-owned staging extraction: never from the agent dir,
//! which the agent user can write.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::env::Env;
use crate::host::{Facts, OsRelease};
use crate::process::{Child, ProcessError};
use crate::secret::Masker;

/// The libraries `config.sh` runs `ldd` on, relative to the package root.
pub const LDD_CHECKED: &[&str] = &[
    "bin/libcoreclr.so",
    "bin/libSystem.Security.Cryptography.Native.OpenSsl.so",
    "bin/libSystem.IO.Compression.Native.so",
];

/// The agent's dependency installer, relative to the package root.
pub const INSTALLER: &str = "bin/installdependencies.sh";

/// Package managers are slow on a cold cache; the agent's script runs `apt update` first.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(20 * 60);
const CHECK_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum DepsError {
    #[error(
        "the agent's dependencies are missing here: {}\n\
         hint: install them with `{command}`, or run install again with --install-dependencies \
         (runs the agent package's own bin/installdependencies.sh as root)",
        missing.describe()
    )]
    Missing { missing: Missing, command: String },
    /// A program the agent's scripts need is not on this machine (minimal images).
    #[error(
        "{tool} is not installed here: {why}\n\
         hint: install it with `{command}`"
    )]
    MissingTool {
        tool: &'static str,
        why: &'static str,
        command: String,
    },
    #[error("could not check the agent's dependencies")]
    Check(#[source] ProcessError),
    #[error("refusing to run {}: {reason}", path.display())]
    UnsafeInstaller { path: PathBuf, reason: String },
    #[error("the agent's installdependencies.sh failed (exit {code}): {line}")]
    InstallerFailed { code: i32, line: String },
    #[error("could not run the agent's installdependencies.sh")]
    Installer(#[source] ProcessError),
}

/// What the checks found missing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Missing {
    /// Shared libraries `ldd` reported "not found" (sonames).
    pub libraries: Vec<String>,
    /// No libicu known to the dynamic linker (`ldconfig`), or `icu-libs` on Alpine.
    pub icu: bool,
}

impl Missing {
    pub fn is_empty(&self) -> bool {
        self.libraries.is_empty() && !self.icu
    }

    fn describe(&self) -> String {
        let mut parts = self.libraries.clone();
        if self.icu {
            parts.push("libicu".into());
        }
        parts.join(", ")
    }
}

/// The sonames `ldd` output reports "not found" (`libssl.so.3 => not found`).
pub fn ldd_missing(ldd_stdout: &str) -> Vec<String> {
    ldd_stdout
        .lines()
        .filter(|l| l.contains("not found") || l.contains("No such"))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// Whether `ldconfig -NXv` (or `apk info` on Alpine) output shows an ICU: `config.sh` greps
/// for `libicu` (`icu-libs` on Alpine).
pub fn icu_listed(output: &str, alpine: bool) -> bool {
    output.contains(if alpine { "icu-libs" } else { "libicu" })
}

/// Which distribution family's package names and tool apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Debian,
    Dnf,
    Tdnf,
    Alpine,
    Suse,
}

fn family(os: &OsRelease) -> Option<Family> {
    if os.is_like(&["azurelinux", "mariner"]) {
        Some(Family::Tdnf)
    } else if os.is_like(&["debian", "ubuntu"]) {
        Some(Family::Debian)
    } else if os.is_like(&[
        "rhel",
        "fedora",
        "centos",
        "almalinux",
        "rocky",
        "ol",
        "amzn",
    ]) {
        Some(Family::Dnf)
    } else if os.is_like(&["alpine"]) {
        Some(Family::Alpine)
    } else if os.is_like(&["suse", "sles", "opensuse"]) {
        Some(Family::Suse)
    } else {
        None
    }
}

/// The ICU package of a Debian or Ubuntu release (installdependencies.sh tries libicu78 down to
/// libicu52 in turn; each release has one of them).
fn debian_icu(os: &OsRelease) -> &'static str {
    match (os.id.as_str(), os.version_id.as_str()) {
        ("debian", "10") => "libicu63",
        ("debian", "11") => "libicu67",
        ("debian", "12") => "libicu72",
        ("debian", "13") => "libicu76",
        ("ubuntu", "20.04") => "libicu66",
        ("ubuntu", "22.04") => "libicu70",
        ("ubuntu", "24.04") => "libicu74",
        _ => "libicu72",
    }
}

/// The package that ships `soname` in `family` (the agent's installdependencies.sh names).
fn package_for(soname: &str, family: Family, os: &OsRelease) -> String {
    let stem = soname.split(".so").next().unwrap_or(soname);
    let debian_ssl = if os.id == "debian" && os.major().is_some_and(|m| m < 12)
        || os.id == "ubuntu" && os.major().is_some_and(|m| m < 22)
    {
        "libssl1.1"
    } else {
        "libssl3"
    };
    let name = match (stem, family) {
        ("libssl" | "libcrypto", Family::Debian) => debian_ssl,
        ("libssl" | "libcrypto", Family::Dnf | Family::Tdnf) => "openssl-libs",
        ("libssl" | "libcrypto", Family::Alpine) => "libssl3",
        ("libssl" | "libcrypto", Family::Suse) => "libopenssl3",
        ("libgssapi_krb5" | "libkrb5", Family::Debian) => "libkrb5-3",
        ("libgssapi_krb5" | "libkrb5", Family::Dnf | Family::Alpine) => "krb5-libs",
        ("libgssapi_krb5" | "libkrb5", Family::Tdnf | Family::Suse) => "krb5",
        ("libz", Family::Debian) => "zlib1g",
        ("libz", Family::Suse) => "libz1",
        ("libz", _) => "zlib",
        ("liblttng-ust", Family::Debian) => "liblttng-ust1",
        ("liblttng-ust", _) => "lttng-ust",
        ("libstdc++", Family::Debian) => "libstdc++6",
        ("libstdc++", Family::Suse) => "libstdc++6",
        ("libstdc++", _) => "libstdc++",
        ("libgcc_s", Family::Debian) => "libgcc-s1",
        ("libgcc_s", Family::Suse) => "libgcc_s1",
        ("libgcc_s", _) => "libgcc",
        _ => return soname.to_owned(),
    };
    name.to_owned()
}

/// The distribution's command that installs what is missing (root's; `None` when the
/// distribution is not one the agent's installdependencies.sh knows).
pub fn install_command(missing: &Missing, os: Option<&OsRelease>) -> Option<String> {
    let os = os?;
    let family = family(os)?;
    let mut packages: Vec<String> = missing
        .libraries
        .iter()
        .map(|l| package_for(l, family, os))
        .collect();
    if missing.icu {
        packages.push(
            match family {
                Family::Debian => debian_icu(os),
                Family::Dnf | Family::Suse => "libicu",
                Family::Tdnf => "icu",
                Family::Alpine => "icu-libs",
            }
            .to_owned(),
        );
    }
    packages.dedup();
    let packages: Vec<&str> = packages.iter().map(String::as_str).collect();
    install_packages(&packages, Some(os))
}

/// The distribution's command that installs `packages` (their names on this distribution).
pub fn install_packages(packages: &[&str], os: Option<&OsRelease>) -> Option<String> {
    let os = os?;
    let family = family(os)?;
    let tool = match family {
        Family::Debian => "apt-get install -y",
        Family::Dnf if os.major().is_some_and(|m| m < 8) && os.id != "fedora" => "yum install -y",
        Family::Dnf => "dnf install -y",
        Family::Tdnf => "tdnf install -y",
        Family::Alpine => "apk add",
        Family::Suse => "zypper -n install",
    };
    Some(format!("{tool} {}", packages.join(" ")))
}

fn blocking_run(child: &Child) -> Result<crate::process::Finished, ProcessError> {
    crate::process::run(child, &Masker::default())
}

/// `name` on the environment's `PATH` (then the usual system directories), as a shell finds it.
fn find(name: &str, env: &Env) -> Option<PathBuf> {
    let path = format!(
        "{}:/usr/sbin:/usr/bin:/sbin:/bin",
        env.var("PATH").unwrap_or_default()
    );
    which::which_in(name, Some(path), "/").ok()
}

fn program(name: &str, env: &Env) -> PathBuf {
    find(name, env).unwrap_or_else(|| PathBuf::from(name))
}

/// The programs the agent's scripts run before anything else, each with why and the package
/// that ships it: its scripts are `#!/bin/bash` (`config.sh`, `run.sh`, `env.sh`), and
/// `config.sh` stops with "Can not find 'ldd'" / "Can not find 'ldconfig'" without them
/// (microsoft/azure-pipelines-agent `src/Misc/layoutroot/config.sh`). Minimal images lack them:
/// Alpine has no bash, a distroless or scratch-based one has none of the three.
pub fn check_tools(facts: &Facts, env: &Env) -> Result<(), DepsError> {
    let os = facts.os_release.as_ref();
    let alpine = os.is_some_and(|r| r.is_like(&["alpine"]));
    let family = os.and_then(family);
    let missing = |tool: &'static str, why: &'static str, package: &str| {
        let command = install_packages(&[package], os).unwrap_or_else(|| {
            format!("your distribution's package manager (the package that ships {tool})")
        });
        DepsError::MissingTool { tool, why, command }
    };
    // The kernel runs `#!/bin/bash` by that path, whatever PATH says.
    if !crate::fsx::is_executable_file(Path::new("/bin/bash")) {
        return Err(missing(
            "bash",
            "the agent's scripts (config.sh, run.sh, env.sh) start with #!/bin/bash",
            "bash",
        ));
    }
    let libc_tools = match family {
        Some(Family::Alpine) => "musl-utils",
        Some(Family::Debian) => "libc-bin",
        Some(Family::Dnf) => "glibc-common",
        _ => "glibc",
    };
    if find("ldd", env).is_none() {
        return Err(missing(
            "ldd",
            "the agent's config.sh runs it on the .NET runtime's libraries and stops without it",
            libc_tools,
        ));
    }
    if !alpine && find("ldconfig", env).is_none() {
        return Err(missing(
            "ldconfig",
            "the agent's config.sh runs `ldconfig -NXv` to find libicu and stops without it",
            if family == Some(Family::Dnf) {
                "glibc"
            } else {
                libc_tools
            },
        ));
    }
    Ok(())
}

/// Runs `config.sh`'s checks against the package extracted at `package_root` (the verified
/// staging tree): `Err(DepsError::Missing)` names what is missing and the command that installs
/// it. Blocking (call from `spawn_blocking`).
///
/// `listed`: the library listing, when the caller had it made already (it does not depend on
/// the package: install makes it while the package downloads, [`list_libraries`]).
pub fn check(
    package_root: &Path,
    facts: &Facts,
    env: &Env,
    listed: Option<Listing>,
) -> Result<(), DepsError> {
    check_tools(facts, env)?;
    let alpine = is_alpine(facts);
    // The three `ldd` runs and the library listing are independent: at once, not in turn (they
    // sit between the extraction and configure, on every install's path).
    let (ldd_outputs, listing) = std::thread::scope(|scope| {
        let ldds: Vec<_> = LDD_CHECKED
            .iter()
            .map(|lib| package_root.join(lib))
            .filter(|path| path.is_file())
            .map(|path| {
                let ldd = Child::new("ldd", program("ldd", env), env)
                    .args([path.display().to_string()])
                    .probe()
                    .timeout(CHECK_TIMEOUT);
                scope.spawn(move || blocking_run(&ldd))
            })
            .collect();
        let listing = listed.map_or_else(|| library_listing(alpine, env), |l| l.0);
        let ldds: Vec<_> = ldds
            .into_iter()
            .map(|h| h.join().expect("an ldd thread does not panic"))
            .collect();
        (ldds, listing)
    });
    let mut missing = Missing::default();
    for out in ldd_outputs {
        let out = out.map_err(DepsError::Check)?;
        for l in ldd_missing(&out.stdout.join("\n")) {
            if !missing.libraries.contains(&l) {
                missing.libraries.push(l);
            }
        }
    }
    let out = listing.map_err(DepsError::Check)?;
    let text = format!("{}\n{}", out.stdout.join("\n"), out.stderr.join("\n"));
    missing.icu = !icu_listed(&text, alpine);
    if missing.is_empty() {
        return Ok(());
    }
    let command = install_command(&missing, facts.os_release.as_ref()).unwrap_or_else(|| {
        format!(
            "your distribution's package manager ({} has no known package names)",
            facts
                .os_release
                .as_ref()
                .map_or("this system", |r| r.id.as_str())
        )
    });
    Err(DepsError::Missing { missing, command })
}

/// What [`list_libraries`] found, for [`check`].
pub struct Listing(Result<crate::process::Finished, ProcessError>);

/// The library listing [`check`] reads, made ahead (blocking): it does not depend on the package.
pub fn list_libraries(facts: &Facts, env: &Env) -> Listing {
    Listing(library_listing(is_alpine(facts), env))
}

fn is_alpine(facts: &Facts) -> bool {
    facts
        .os_release
        .as_ref()
        .is_some_and(|r| r.is_like(&["alpine"]))
}

/// The libraries the dynamic linker knows (`ldconfig -NXv`; config.sh: `ldconfig` on PATH, else
/// /sbin/ldconfig), or Alpine's installed packages (`apk info`).
fn library_listing(alpine: bool, env: &Env) -> Result<crate::process::Finished, ProcessError> {
    let listing = if alpine {
        Child::new("apk info", program("apk", env), env).args(["info"])
    } else {
        Child::new("ldconfig", program("ldconfig", env), env).args(["-NXv"])
    };
    blocking_run(&listing.probe().timeout(CHECK_TIMEOUT))
}

/// Runs the package's own `bin/installdependencies.sh` as root from `staging` (the verified
/// extraction; never the agent dir): `staging` and every directory above it must be root's and
/// writable by no one else, and `staging` closed to everyone else (`0700`), so nothing in it is
/// within another account's reach whoever its files are given to; the script must be a regular
/// file, not a link. Returns the lines it printed. Blocking.
pub fn install(staging: &Path, env: &Env) -> Result<Vec<String>, DepsError> {
    let script = staging.join(INSTALLER);
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let unsafe_installer = |reason: String| DepsError::UnsafeInstaller {
            path: script.clone(),
            reason,
        };
        crate::fsx::check_root_only_program(staging).map_err(|e| unsafe_installer(e.0))?;
        let closed = fs_err::symlink_metadata(staging).is_ok_and(|m| m.mode() & 0o077 == 0);
        if !closed {
            return Err(unsafe_installer(format!(
                "{} is open to other accounts",
                staging.display()
            )));
        }
        if !crate::fsx::is_regular(&script) {
            return Err(unsafe_installer("it is not a regular file".into()));
        }
    }
    let child = Child::new("installdependencies.sh", program("bash", env), env)
        .args([script.display().to_string()])
        .cwd(staging.join("bin"))
        .timeout(INSTALL_TIMEOUT);
    let out = crate::process::run(&child, &Masker::default()).map_err(DepsError::Installer)?;
    if !out.success() {
        return Err(DepsError::InstallerFailed {
            code: out.code,
            line: out.error_line().unwrap_or_default(),
        });
    }
    Ok(out.stdout)
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    fn os(text: &str) -> OsRelease {
        OsRelease::parse(text)
    }

    #[test]
    fn ldd_not_found_lines() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibssl.so.3 => not found\n\tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x7f)\n\tliblttng-ust.so.1 => not found\n";
        assert_eq!(ldd_missing(out), ["libssl.so.3", "liblttng-ust.so.1"]);
        assert!(ldd_missing("\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6\n").is_empty());
    }

    #[test]
    fn icu_from_ldconfig_and_apk() {
        assert!(icu_listed(
            "/lib/x86_64-linux-gnu:\n\tlibicuuc.so.72 -> libicuuc.so.72.1\n",
            false
        ));
        assert!(!icu_listed("/lib:\n\tlibz.so.1 -> libz.so.1.2.13\n", false));
        assert!(icu_listed("musl\nicu-libs\nbusybox\n", true));
        assert!(!icu_listed("musl\nbusybox\n", true));
    }

    #[test]
    fn the_install_command_per_distribution() {
        let icu = Missing {
            libraries: vec![],
            icu: true,
        };
        let ssl_icu = Missing {
            libraries: vec!["libssl.so.3".into(), "libz.so.1".into()],
            icu: true,
        };
        for (text, missing, want) in [
            (
                "ID=debian\nVERSION_ID=\"12\"\n",
                &icu,
                "apt-get install -y libicu72",
            ),
            (
                "ID=debian\nVERSION_ID=\"11\"\n",
                &ssl_icu,
                "apt-get install -y libssl1.1 zlib1g libicu67",
            ),
            (
                "ID=ubuntu\nID_LIKE=debian\nVERSION_ID=\"22.04\"\n",
                &icu,
                "apt-get install -y libicu70",
            ),
            (
                "ID=ubuntu\nID_LIKE=debian\nVERSION_ID=\"24.04\"\n",
                &ssl_icu,
                "apt-get install -y libssl3 zlib1g libicu74",
            ),
            (
                "ID=\"rhel\"\nID_LIKE=\"fedora\"\nVERSION_ID=\"8.9\"\n",
                &ssl_icu,
                "dnf install -y openssl-libs zlib libicu",
            ),
            (
                "ID=\"almalinux\"\nID_LIKE=\"rhel centos fedora\"\nVERSION_ID=\"9.4\"\n",
                &icu,
                "dnf install -y libicu",
            ),
            (
                "ID=azurelinux\nVERSION_ID=\"3.0\"\n",
                &icu,
                "tdnf install -y icu",
            ),
            (
                "ID=alpine\nVERSION_ID=3.20.3\n",
                &ssl_icu,
                "apk add libssl3 zlib icu-libs",
            ),
            (
                "ID=\"sles\"\nID_LIKE=\"suse\"\nVERSION_ID=\"15.6\"\n",
                &icu,
                "zypper -n install libicu",
            ),
        ] {
            assert_eq!(
                install_command(missing, Some(&os(text))).as_deref(),
                Some(want),
                "{text}"
            );
        }
        assert_eq!(install_command(&icu, Some(&os("ID=nixos\n"))), None);
        assert_eq!(install_command(&icu, None), None);
    }

    #[test]
    fn the_missing_message_names_packages_and_the_flag() {
        let e = DepsError::Missing {
            missing: Missing {
                libraries: vec!["libssl.so.3".into()],
                icu: true,
            },
            command: "apt-get install -y libssl3 libicu72".into(),
        };
        let text = crate::report::report(&e);
        assert!(text.contains("libssl.so.3, libicu"), "{text}");
        assert!(
            text.contains("`apt-get install -y libssl3 libicu72`"),
            "{text}"
        );
        assert!(text.contains("--install-dependencies"), "{text}");
    }

    #[test]
    fn the_installer_runs_only_from_a_root_only_tree() {
        use std::os::unix::fs::PermissionsExt;
        let env = Env::fake(&[("PATH", "/usr/bin:/bin")], "h", true);
        let root = tempfile::tempdir().unwrap();
        let staging = root.path().join("staging");
        std::fs::create_dir_all(staging.join("bin")).unwrap();
        let marker = root.path().join("ran");
        std::fs::write(
            staging.join(INSTALLER),
            format!("echo installing libicu72\ntouch '{}'\n", marker.display()),
        )
        .unwrap();
        for p in [root.path(), &staging, &staging.join("bin")] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::set_permissions(
            staging.join(INSTALLER),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        // Writable by others (the agent dir's case): refused, not run.
        std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = install(&staging, &env).unwrap_err();
        assert!(matches!(e, DepsError::UnsafeInstaller { .. }), "{e}");
        assert!(!marker.exists());
        // Root's alone (the suite runs as root, like the tool): runs, as root, and reports.
        if nix::unistd::geteuid().is_root() {
            std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o755)).unwrap();
            match install(&staging, &env) {
                Ok(lines) => {
                    assert!(marker.exists());
                    assert_eq!(lines, ["installing libicu72"]);
                }
                // A temp dir under a directory writable by others (no sticky bit) is refused too.
                Err(DepsError::UnsafeInstaller { reason, .. }) => {
                    println!("SKIPPED: the temp dir is not root-only: {reason}");
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    #[test]
    fn a_failing_installer_is_reported_with_its_last_line() {
        let env = Env::fake(&[("PATH", "/usr/bin:/bin")], "h", true);
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("bin")).unwrap();
        std::fs::write(
            root.path().join(INSTALLER),
            "echo \"Can not find 'apt' or 'apt-get'\" >&2\nexit 1\n",
        )
        .unwrap();
        match install(root.path(), &env) {
            Err(DepsError::InstallerFailed { code, line }) => {
                assert_eq!(code, 1);
                assert!(line.contains("Can not find 'apt'"), "{line}");
            }
            Err(DepsError::UnsafeInstaller { reason, .. }) => {
                println!("SKIPPED: the temp dir is not root-only: {reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_check_finds_a_missing_icu_with_the_real_ldconfig() {
        // This machine's own ldconfig: whatever it lists, the verdict matches a direct grep.
        let env = Env::fake(&[("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")], "h", true);
        let root = tempfile::tempdir().unwrap();
        let facts = Facts::current();
        let listed = std::process::Command::new("ldconfig")
            .arg("-NXv")
            .output()
            .or_else(|_| {
                std::process::Command::new("/sbin/ldconfig")
                    .arg("-NXv")
                    .output()
            });
        let Ok(listed) = listed else {
            return println!("SKIPPED: no ldconfig here");
        };
        let has_icu = String::from_utf8_lossy(&listed.stdout).contains("libicu")
            || String::from_utf8_lossy(&listed.stderr).contains("libicu");
        match check(root.path(), &facts, &env, None) {
            Ok(()) => assert!(has_icu),
            Err(DepsError::Missing { missing, command }) => {
                assert!(!has_icu);
                assert!(missing.icu && missing.libraries.is_empty());
                assert!(
                    command.contains("libicu") || command.contains("icu"),
                    "{command}"
                );
            }
            Err(e) => panic!("{e}"),
        }
        // The listing made ahead (while the package downloads) gives the same verdict.
        let ahead = check(
            root.path(),
            &facts,
            &env,
            Some(list_libraries(&facts, &env)),
        );
        assert_eq!(ahead.is_ok(), has_icu, "{ahead:?}");
    }
}
