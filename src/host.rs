//! The host as it is: libc, architecture, distribution and init, learned at run time from the
//! sources the system itself uses, never from how this binary was built.
//!
//! A static musl build of agent-bootstrap runs on every distribution, so `cfg!(target_env)` says
//! nothing about the machine; and a musl loader lying in `/lib` of a Debian machine (Debian's
//! `musl` package, pulled in by `musl-tools`) does not make it Alpine. Each fact comes from where
//! the system keeps it:
//!
//! - **libc**: the ELF interpreter (`PT_INTERP`) of `<root>/bin/sh`, the way Python's `packaging`
//!   picks musllinux tags from an executable's interpreter; `/etc/os-release` only when `/bin/sh`
//!   says nothing (a static shell).
//! - **architecture**: the kernel's (`uname -m`), compared with the binary's: an x86_64 binary run
//!   by emulation on an arm64 kernel says so and picks the arm64 package.
//! - **distribution**: `/etc/os-release` (`ID`, `ID_LIKE`, `VERSION_ID`, os-release(5)), which
//!   tells which CA-store tool applies (`update-ca-certificates` on Debian, Ubuntu, Alpine and
//!   SUSE; `update-ca-trust` on RHEL, Fedora, Azure Linux), and `/sys/fs/selinux/enforce`.
//! - **init**: systemd runs as init when `/run/systemd/system` is a directory (sd_booted(3)).
//!
//! The package platform names are the agent's own runtime ids (`PackageRuntime` in
//! microsoft/azure-pipelines-agent `src/Common.props`: linux-x64, linux-arm64, linux-arm,
//! linux-musl-x64, linux-musl-arm64, win-x64, win-x86, win-arm64, osx-x64, osx-arm64).
//!
//! The probe takes a root directory, so every fact is tested from fixture roots.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::os::{Arch, Family, Os};

/// Which C library the system's own programs use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Libc {
    Glibc,
    Musl,
    /// Not Linux, or nothing could tell.
    Unknown,
}

/// What `/etc/os-release` says (os-release(5)).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OsRelease {
    pub id: String,
    pub id_like: Vec<String>,
    pub version_id: String,
    pub pretty_name: String,
}

impl OsRelease {
    /// Parses os-release(5): `KEY=value` lines, values optionally quoted, `#` comments.
    pub fn parse(text: &str) -> Self {
        let mut r = Self::default();
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let value = unquote(value.trim());
            match key.trim() {
                "ID" => r.id = value.to_ascii_lowercase(),
                "ID_LIKE" => {
                    r.id_like = value
                        .split_whitespace()
                        .map(str::to_ascii_lowercase)
                        .collect();
                }
                "VERSION_ID" => r.version_id = value,
                "PRETTY_NAME" => r.pretty_name = value,
                _ => {}
            }
        }
        r
    }

    /// `ID` or one of `ID_LIKE` is one of `ids`.
    pub fn is_like(&self, ids: &[&str]) -> bool {
        ids.contains(&self.id.as_str()) || self.id_like.iter().any(|l| ids.contains(&l.as_str()))
    }

    /// The major version (`VERSION_ID` up to the first dot), when numeric.
    pub fn major(&self) -> Option<u32> {
        self.version_id.split('.').next()?.parse().ok()
    }
}

fn unquote(v: &str) -> String {
    let v = v
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
        .unwrap_or(v);
    v.replace("\\\"", "\"")
        .replace("\\$", "$")
        .replace("\\`", "`")
        .replace("\\\\", "\\")
}

/// The tool that rebuilds the system trust store after a CA is added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CaTool {
    /// Debian, Ubuntu, Alpine, SUSE: `/usr/local/share/ca-certificates/*.crt`.
    UpdateCaCertificates,
    /// RHEL, Fedora, CentOS, Alma, Rocky, Oracle, Amazon, Azure Linux / Mariner:
    /// `/etc/pki/ca-trust/source/anchors/`.
    UpdateCaTrust,
}

impl CaTool {
    pub fn command(self) -> &'static str {
        match self {
            Self::UpdateCaCertificates => "update-ca-certificates",
            Self::UpdateCaTrust => "update-ca-trust",
        }
    }
}

/// Distributions whose packages are built like Red Hat's (their `ID` or `ID_LIKE`).
const RED_HAT_LIKE: &[&str] = &[
    "rhel",
    "fedora",
    "centos",
    "almalinux",
    "rocky",
    "ol",
    "amzn",
    "azurelinux",
    "mariner",
];
const DEBIAN_LIKE: &[&str] = &["debian", "ubuntu"];
const SUSE_LIKE: &[&str] = &["suse", "sles", "opensuse"];
/// Distributions whose own programs use musl.
const MUSL_DISTROS: &[&str] = &["alpine", "chimera", "postmarketos"];

/// The facts of one machine (or a fixture root standing in for one).
#[derive(Debug, Clone, Serialize)]
pub struct Facts {
    /// `uname -m` as the kernel reports it.
    pub kernel_machine: String,
    /// The architecture the kernel runs programs for (`None`: a machine name not known here).
    #[serde(serialize_with = "ser_arch_opt")]
    pub kernel_arch: Option<Arch>,
    /// The architecture this binary was built for.
    #[serde(serialize_with = "ser_arch")]
    pub binary_arch: Arch,
    pub libc: Libc,
    /// Where the libc fact came from.
    pub libc_from: String,
    /// The ELF interpreter of `/bin/sh`, if it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shell_interpreter: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub os_release: Option<OsRelease>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_tool: Option<CaTool>,
    /// `Some(true)`: SELinux is enforcing; `None`: no SELinux.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selinux_enforcing: Option<bool>,
    /// systemd runs as init (sd_booted).
    pub systemd: bool,
}

fn ser_arch<S: serde::Serializer>(a: &Arch, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(a.name())
}

fn ser_arch_opt<S: serde::Serializer>(a: &Option<Arch>, s: S) -> Result<S::Ok, S::Error> {
    match a {
        Some(a) => s.serialize_str(a.name()),
        None => s.serialize_none(),
    }
}

/// The package platform chosen, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Choice {
    pub platform: String,
    pub why: Vec<String>,
}

/// The architecture `uname -m` names.
pub fn arch_of_machine(machine: &str) -> Option<Arch> {
    let m = machine.to_ascii_lowercase();
    match m.as_str() {
        "x86_64" | "amd64" | "x64" => Some(Arch::X64),
        "aarch64" | "arm64" | "aarch64_be" | "armv8b" | "armv8l" => Some(Arch::Arm64),
        "i386" | "i486" | "i586" | "i686" | "x86" => Some(Arch::X86),
        _ if m.starts_with("armv") || m == "arm" => Some(Arch::Arm),
        _ => None,
    }
}

/// The architecture this binary was compiled for.
pub fn binary_arch() -> Arch {
    arch_of_machine(std::env::consts::ARCH).unwrap_or(Arch::X64)
}

/// The kernel's machine name (`uname -m`).
pub fn kernel_machine() -> String {
    #[cfg(unix)]
    {
        nix::sys::utsname::uname().map_or_else(
            |_| std::env::consts::ARCH.to_owned(),
            |u| u.machine().to_string_lossy().into_owned(),
        )
    }
    #[cfg(not(unix))]
    {
        std::env::consts::ARCH.to_owned()
    }
}

/// The machine this binary runs on: on Linux, libc and architecture from the host itself, never
/// from how this binary was built.
pub fn current_os() -> Os {
    if cfg!(windows) {
        Os {
            arch: binary_arch(),
            ..Os::windows_x64()
        }
    } else if cfg!(target_os = "macos") {
        Os {
            family: Family::MacOs,
            arch: binary_arch(),
            musl: false,
        }
    } else {
        Facts::current().os()
    }
}

impl Facts {
    /// Linux as these facts describe it.
    pub fn os(&self) -> Os {
        Os {
            family: Family::Linux,
            arch: self.arch(),
            musl: self.libc == Libc::Musl,
        }
    }

    /// The machine this process runs on.
    pub fn current() -> Self {
        Self::probe(Path::new("/"), &kernel_machine(), binary_arch())
    }

    /// The facts of the system under `root`, whose kernel reports `machine`, as seen by a binary
    /// built for `binary`.
    pub fn probe(root: &Path, machine: &str, binary: Arch) -> Self {
        let os_release = ["etc/os-release", "usr/lib/os-release"]
            .iter()
            .find_map(|p| std::fs::read_to_string(root.join(p)).ok())
            .map(|t| OsRelease::parse(&t));
        let interp = within(root, Path::new("/bin/sh"))
            .and_then(|sh| std::fs::read(sh).ok())
            .map(|bytes| elf_interpreter(&bytes));
        let (libc, libc_from, shell_interpreter) = match interp {
            Some(Interp::Dynamic(i)) if i.contains("ld-musl") => {
                (Libc::Musl, format!("/bin/sh is linked by {i}"), Some(i))
            }
            Some(Interp::Dynamic(i)) => (Libc::Glibc, format!("/bin/sh is linked by {i}"), Some(i)),
            other => {
                let why = match other {
                    Some(Interp::Static) => "/bin/sh is statically linked",
                    Some(_) => "/bin/sh is not an ELF program",
                    None => "/bin/sh cannot be read",
                };
                match &os_release {
                    Some(r) if r.is_like(MUSL_DISTROS) => (
                        Libc::Musl,
                        format!("{why}; /etc/os-release says {}", r.id),
                        None,
                    ),
                    Some(r) => (
                        Libc::Glibc,
                        format!("{why}; /etc/os-release says {}", r.id),
                        None,
                    ),
                    None => (Libc::Unknown, format!("{why}; no /etc/os-release"), None),
                }
            }
        };
        let ca_tool = os_release.as_ref().and_then(|r| {
            if r.is_like(RED_HAT_LIKE) {
                Some(CaTool::UpdateCaTrust)
            } else if r.is_like(DEBIAN_LIKE) || r.is_like(SUSE_LIKE) || r.is_like(MUSL_DISTROS) {
                Some(CaTool::UpdateCaCertificates)
            } else {
                None
            }
        });
        let selinux_enforcing = std::fs::read_to_string(root.join("sys/fs/selinux/enforce"))
            .ok()
            .map(|v| v.trim() == "1");
        Self {
            kernel_machine: machine.to_owned(),
            kernel_arch: arch_of_machine(machine),
            binary_arch: binary,
            libc,
            libc_from,
            shell_interpreter,
            os_release,
            ca_tool,
            selinux_enforcing,
            systemd: root.join("run/systemd/system").is_dir(),
        }
    }

    /// SUSE or openSUSE (`update-ca-certificates` with its own directories).
    pub fn is_suse(&self) -> bool {
        self.os_release
            .as_ref()
            .is_some_and(|r| r.is_like(SUSE_LIKE))
    }

    /// The architecture of the package to install: the kernel's, else the binary's.
    pub fn arch(&self) -> Arch {
        self.kernel_arch.unwrap_or(self.binary_arch)
    }

    /// The Linux package platform for this host, and why.
    pub fn linux_choice(&self) -> Choice {
        let arch = self.arch();
        let musl = self.libc == Libc::Musl;
        let os = Os {
            family: Family::Linux,
            arch,
            musl,
        };
        let mut why = vec![format!(
            "{} libc ({})",
            if musl { "musl" } else { "glibc" },
            self.libc_from
        )];
        match self.kernel_arch {
            Some(k) if k != self.binary_arch => why.push(format!(
                "the kernel runs {} ({}), this binary is built for {} (emulated): the {} package",
                k.name(),
                self.kernel_machine,
                self.binary_arch.name(),
                k.name()
            )),
            Some(k) => why.push(format!("{} kernel ({})", k.name(), self.kernel_machine)),
            None => why.push(format!(
                "the kernel's machine '{}' is not one the agent is built for; this binary's {}",
                self.kernel_machine,
                self.binary_arch.name()
            )),
        }
        Choice {
            platform: os.rid(),
            why,
        }
    }

    /// Why the agent does not support this release, if it does not: its `config.sh` refuses
    /// RHEL (and rebuilds of it) before 7 ("RHEL supported for version 7 and higher").
    pub fn unsupported_release(&self) -> Option<String> {
        let r = self.os_release.as_ref()?;
        let rhel = r.is_like(&["rhel", "centos"]) && r.id != "fedora";
        match r.major() {
            Some(m) if rhel && m < 7 => Some(format!(
                "{} {}: the agent supports RHEL 7 and later (its config.sh)",
                r.id, r.version_id
            )),
            _ => None,
        }
    }

    /// The message for a machine where systemd is not init: no service, and what to run instead.
    pub fn no_systemd_hint() -> &'static str {
        "systemd is not running as init here (a container, WSL without systemd, or another init): \
         no service is installed; run the agent in the foreground with `agent-bootstrap run` \
         (containers), or start it from your init with the agent's run.sh"
    }
}

/// What `doctor` and `status` show: the facts and the package platform chosen, with why.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub platform: String,
    pub why: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub facts: Option<Facts>,
}

impl Report {
    /// The report for `os` (what [`current_os`] chose): on Linux with this machine's facts.
    pub fn for_os(os: &Os) -> Self {
        if os.family != Family::Linux {
            return Self {
                platform: os.rid(),
                why: vec![format!(
                    "this binary's own system and architecture ({})",
                    os.rid()
                )],
                facts: None,
            };
        }
        let facts = Facts::current();
        let choice = facts.linux_choice();
        Self {
            platform: os.rid(),
            why: choice.why,
            facts: Some(facts),
        }
    }

    /// Human-readable lines (no trailing newline on the last).
    pub fn lines(&self) -> Vec<String> {
        let mut out = vec![format!(
            "platform: {} ({})",
            self.platform,
            self.why.join("; ")
        )];
        if let Some(f) = &self.facts {
            if let Some(r) = &f.os_release {
                let name = if r.pretty_name.is_empty() {
                    format!("{} {}", r.id, r.version_id)
                } else {
                    r.pretty_name.clone()
                };
                out.push(format!(
                    "distribution: {name}; CA store: {}",
                    f.ca_tool.map_or("unknown", CaTool::command)
                ));
            }
            if let Some(why) = f.unsupported_release() {
                out.push(format!("agent support: NOT SUPPORTED: {why}"));
            }
            if let Some(e) = f.selinux_enforcing {
                out.push(format!(
                    "SELinux: {}",
                    if e { "enforcing" } else { "not enforcing" }
                ));
            }
            out.push(if f.systemd {
                "init: systemd".to_owned()
            } else {
                format!("init: not systemd: {}", Facts::no_systemd_hint())
            });
        }
        out
    }
}

/// `path` (absolute) resolved inside `root`: symbolic links, absolute ones included, are followed
/// relative to `root`, as a chroot would, so a fixture root never reaches into the real `/`.
fn within(root: &Path, path: &Path) -> Option<PathBuf> {
    let mut pending: Vec<std::ffi::OsString> = path
        .components()
        .rev()
        .filter_map(|c| match c {
            std::path::Component::Normal(n) => Some(n.to_owned()),
            _ => None,
        })
        .collect();
    let mut resolved = PathBuf::new();
    let mut hops = 0;
    while let Some(name) = pending.pop() {
        if name == ".." {
            resolved.pop();
            continue;
        }
        if name == "." {
            continue;
        }
        let candidate = resolved.join(&name);
        match std::fs::read_link(root.join(&candidate)) {
            Ok(target) => {
                hops += 1;
                if hops > 40 {
                    return None;
                }
                if target.is_absolute() {
                    resolved = PathBuf::new();
                }
                for c in target.components().rev() {
                    match c {
                        std::path::Component::Normal(n) => pending.push(n.to_owned()),
                        std::path::Component::ParentDir => pending.push("..".into()),
                        _ => {}
                    }
                }
            }
            Err(_) => resolved = candidate,
        }
    }
    Some(root.join(resolved))
}

/// What an executable's program headers say about its loader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interp {
    /// Dynamically linked, loaded by this program (`PT_INTERP`).
    Dynamic(String),
    /// An ELF program with no interpreter: statically linked.
    Static,
    /// Not an ELF program at all (a script, garbage).
    NotElf,
}

/// The `PT_INTERP` of an ELF image.
pub fn elf_interpreter(data: &[u8]) -> Interp {
    use object::read::elf::{FileHeader, ProgramHeader};
    fn interp<H: FileHeader>(data: &[u8]) -> Interp {
        let Ok(header) = H::parse(data) else {
            return Interp::NotElf;
        };
        let Ok(endian) = header.endian() else {
            return Interp::NotElf;
        };
        let Ok(headers) = header.program_headers(endian, data) else {
            return Interp::NotElf;
        };
        for ph in headers {
            if let Ok(Some(bytes)) = ph.interpreter(endian, data) {
                return Interp::Dynamic(String::from_utf8_lossy(bytes).into_owned());
            }
        }
        Interp::Static
    }
    match object::FileKind::parse(data) {
        Ok(object::FileKind::Elf64) => {
            interp::<object::elf::FileHeader64<object::Endianness>>(data)
        }
        Ok(object::FileKind::Elf32) => {
            interp::<object::elf::FileHeader32<object::Endianness>>(data)
        }
        _ => Interp::NotElf,
    }
}

#[cfg(all(test, unix))]
pub mod tests {
    use super::*;

    /// A minimal little-endian ELF64 executable with one `PT_INTERP` naming `interp` (or none).
    pub fn tiny_elf(interp: Option<&str>) -> Vec<u8> {
        let mut out = vec![0u8; 64];
        out[..4].copy_from_slice(b"\x7fELF");
        out[4] = 2; // ELFCLASS64
        out[5] = 1; // little endian
        out[6] = 1; // EV_CURRENT
        out[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        out[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
        out[20..24].copy_from_slice(&1u32.to_le_bytes());
        let phnum: u16 = u16::from(interp.is_some());
        out[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        out[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
        out[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
        out[56..58].copy_from_slice(&phnum.to_le_bytes());
        if let Some(i) = interp {
            let mut name = i.as_bytes().to_vec();
            name.push(0);
            let offset = 64u64 + 56;
            let mut ph = vec![0u8; 56];
            ph[..4].copy_from_slice(&3u32.to_le_bytes()); // PT_INTERP
            ph[4..8].copy_from_slice(&4u32.to_le_bytes()); // PF_R
            ph[8..16].copy_from_slice(&offset.to_le_bytes());
            ph[32..40].copy_from_slice(&(name.len() as u64).to_le_bytes()); // p_filesz
            ph[40..48].copy_from_slice(&(name.len() as u64).to_le_bytes()); // p_memsz
            ph[48..56].copy_from_slice(&1u64.to_le_bytes());
            out.extend(ph);
            out.extend(name);
        }
        out
    }

    pub const GLIBC_X64: &str = "/lib64/ld-linux-x86-64.so.2";
    pub const MUSL_X64: &str = "/lib/ld-musl-x86_64.so.1";

    /// A fixture root: `os-release` text and a `/bin/sh` with `interp`.
    pub fn root(os_release: &str, interp: Option<&str>) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::create_dir_all(dir.path().join("usr/bin")).unwrap();
        std::fs::write(dir.path().join("etc/os-release"), os_release).unwrap();
        std::fs::write(dir.path().join("usr/bin/dash"), tiny_elf(interp)).unwrap();
        // Merged /usr with an absolute link, as on current Debian: must resolve inside the root.
        std::os::unix::fs::symlink("usr/bin", dir.path().join("bin")).unwrap();
        std::os::unix::fs::symlink("/usr/bin/dash", dir.path().join("usr/bin/sh")).unwrap();
        dir
    }

    const DEBIAN_11: &str = "PRETTY_NAME=\"Debian GNU/Linux 11 (bullseye)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"11\"\nVERSION=\"11 (bullseye)\"\nVERSION_CODENAME=bullseye\nID=debian\n";
    const DEBIAN_12: &str = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nID=debian\n";
    const UBUNTU_2204: &str = "PRETTY_NAME=\"Ubuntu 22.04.4 LTS\"\nNAME=\"Ubuntu\"\nVERSION_ID=\"22.04\"\nID=ubuntu\nID_LIKE=debian\n";
    const UBUNTU_2404: &str = "PRETTY_NAME=\"Ubuntu 24.04 LTS\"\nNAME=\"Ubuntu\"\nVERSION_ID=\"24.04\"\nID=ubuntu\nID_LIKE=debian\n";
    const RHEL_8: &str = "NAME=\"Red Hat Enterprise Linux\"\nVERSION=\"8.9 (Ootpa)\"\nID=\"rhel\"\nID_LIKE=\"fedora\"\nVERSION_ID=\"8.9\"\nPRETTY_NAME=\"Red Hat Enterprise Linux 8.9 (Ootpa)\"\n";
    const ALMA_9: &str = "NAME=\"AlmaLinux\"\nVERSION=\"9.4 (Seafoam Ocelot)\"\nID=\"almalinux\"\nID_LIKE=\"rhel centos fedora\"\nVERSION_ID=\"9.4\"\nPRETTY_NAME=\"AlmaLinux 9.4 (Seafoam Ocelot)\"\n";
    const AZURE_LINUX_3: &str = "NAME=\"Microsoft Azure Linux\"\nVERSION=\"3.0.20240727\"\nID=azurelinux\nVERSION_ID=\"3.0\"\nPRETTY_NAME=\"Microsoft Azure Linux 3.0\"\n";
    const ALPINE_3: &str =
        "NAME=\"Alpine Linux\"\nID=alpine\nVERSION_ID=3.20.3\nPRETTY_NAME=\"Alpine Linux v3.20\"\n";

    fn facts(os_release: &str, interp: Option<&str>, machine: &str) -> Facts {
        let r = root(os_release, interp);
        Facts::probe(r.path(), machine, Arch::X64)
    }

    #[test]
    fn each_distribution_from_its_root() {
        use CaTool::{UpdateCaCertificates, UpdateCaTrust};
        use Libc::{Glibc, Musl};
        // (os-release, interpreter, machine) -> (libc, CA tool, id, major, platform)
        let cases = [
            (
                (DEBIAN_11, GLIBC_X64, "x86_64"),
                (Glibc, UpdateCaCertificates, "debian", 11, "linux-x64"),
            ),
            (
                (DEBIAN_12, GLIBC_X64, "x86_64"),
                (Glibc, UpdateCaCertificates, "debian", 12, "linux-x64"),
            ),
            (
                (UBUNTU_2204, GLIBC_X64, "x86_64"),
                (Glibc, UpdateCaCertificates, "ubuntu", 22, "linux-x64"),
            ),
            (
                (UBUNTU_2404, "/lib/ld-linux-aarch64.so.1", "aarch64"),
                (Glibc, UpdateCaCertificates, "ubuntu", 24, "linux-arm64"),
            ),
            (
                (RHEL_8, GLIBC_X64, "x86_64"),
                (Glibc, UpdateCaTrust, "rhel", 8, "linux-x64"),
            ),
            (
                (ALMA_9, GLIBC_X64, "x86_64"),
                (Glibc, UpdateCaTrust, "almalinux", 9, "linux-x64"),
            ),
            (
                (AZURE_LINUX_3, "/lib/ld-linux-aarch64.so.1", "aarch64"),
                (Glibc, UpdateCaTrust, "azurelinux", 3, "linux-arm64"),
            ),
            (
                (ALPINE_3, MUSL_X64, "x86_64"),
                (Musl, UpdateCaCertificates, "alpine", 3, "linux-musl-x64"),
            ),
            (
                (ALPINE_3, "/lib/ld-musl-aarch64.so.1", "aarch64"),
                (Musl, UpdateCaCertificates, "alpine", 3, "linux-musl-arm64"),
            ),
            (
                (DEBIAN_12, "/lib/ld-linux-armhf.so.3", "armv7l"),
                (Glibc, UpdateCaCertificates, "debian", 12, "linux-arm"),
            ),
        ];
        for ((text, interp, machine), (libc, ca, id, major, platform)) in cases {
            let f = facts(text, Some(interp), machine);
            let r = f.os_release.as_ref().unwrap();
            assert_eq!(f.libc, libc, "{id} {machine}");
            assert_eq!(f.shell_interpreter.as_deref(), Some(interp));
            assert_eq!(f.ca_tool, Some(ca), "{id}");
            assert_eq!(r.id, id);
            assert_eq!(r.major(), Some(major), "{id}");
            assert_eq!(f.linux_choice().platform, platform, "{id} {machine}");
            assert!(!f.systemd, "no /run/systemd/system in the fixture");
            assert_eq!(f.selinux_enforcing, None);
        }
    }

    #[test]
    fn a_musl_loader_in_lib_of_a_glibc_system_does_not_count() {
        let r = root(DEBIAN_12, Some(GLIBC_X64));
        std::fs::create_dir_all(r.path().join("lib")).unwrap();
        std::fs::write(r.path().join("lib/ld-musl-x86_64.so.1"), tiny_elf(None)).unwrap();
        let f = Facts::probe(r.path(), "x86_64", Arch::X64);
        assert_eq!(f.libc, Libc::Glibc);
        let c = f.linux_choice();
        assert_eq!(c.platform, "linux-x64");
        assert!(c.why[0].contains(GLIBC_X64), "{:?}", c.why);
    }

    #[test]
    fn os_release_is_the_second_opinion_for_a_static_shell() {
        let f = facts(ALPINE_3, None, "x86_64");
        assert_eq!(f.libc, Libc::Musl);
        assert!(f.libc_from.contains("statically linked"), "{}", f.libc_from);
        assert!(f.libc_from.contains("alpine"));
        assert_eq!(facts(DEBIAN_12, None, "x86_64").libc, Libc::Glibc);
        // Neither: unknown, and the glibc package (what almost every machine runs).
        let empty = tempfile::tempdir().unwrap();
        let f = Facts::probe(empty.path(), "x86_64", Arch::X64);
        assert_eq!(f.libc, Libc::Unknown);
        assert_eq!(f.os_release, None);
        assert_eq!(f.ca_tool, None);
        assert_eq!(f.linux_choice().platform, "linux-x64");
    }

    #[test]
    fn an_emulated_binary_says_so_and_picks_the_kernels_package() {
        let r = root(UBUNTU_2404, Some("/lib/ld-linux-aarch64.so.1"));
        let f = Facts::probe(r.path(), "aarch64", Arch::X64);
        let c = f.linux_choice();
        assert_eq!(c.platform, "linux-arm64");
        assert!(c.why[1].contains("emulated"), "{:?}", c.why);
        // Native: no such remark.
        let f = Facts::probe(r.path(), "aarch64", Arch::Arm64);
        assert!(!f.linux_choice().why[1].contains("emulated"));
    }

    #[test]
    fn the_agent_supports_rhel_7_and_later() {
        for (text, unsupported) in [
            (
                "ID=\"centos\"\nID_LIKE=\"rhel fedora\"\nVERSION_ID=\"6.10\"\n",
                true,
            ),
            ("ID=\"rhel\"\nVERSION_ID=\"6.9\"\n", true),
            (RHEL_8, false),
            (ALMA_9, false),
            (DEBIAN_11, false),
            (AZURE_LINUX_3, false),
        ] {
            let f = facts(text, Some(GLIBC_X64), "x86_64");
            assert_eq!(f.unsupported_release().is_some(), unsupported, "{text}");
        }
    }

    #[test]
    fn selinux_and_systemd_from_the_root() {
        let r = root(ALMA_9, Some(GLIBC_X64));
        std::fs::create_dir_all(r.path().join("sys/fs/selinux")).unwrap();
        std::fs::write(r.path().join("sys/fs/selinux/enforce"), "1").unwrap();
        std::fs::create_dir_all(r.path().join("run/systemd/system")).unwrap();
        let f = Facts::probe(r.path(), "x86_64", Arch::X64);
        assert_eq!(f.selinux_enforcing, Some(true));
        assert!(f.systemd);
        std::fs::write(r.path().join("sys/fs/selinux/enforce"), "0").unwrap();
        assert_eq!(
            Facts::probe(r.path(), "x86_64", Arch::X64).selinux_enforcing,
            Some(false)
        );
    }

    #[test]
    fn links_never_leave_the_root() {
        let r = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(r.path().join("bin")).unwrap();
        // An absolute link to the real /bin/sh resolves to <root>/bin/dash, which is missing.
        std::os::unix::fs::symlink("/bin/dash", r.path().join("bin/sh")).unwrap();
        assert_eq!(
            within(r.path(), Path::new("/bin/sh")),
            Some(r.path().join("bin/dash"))
        );
        std::os::unix::fs::symlink("../../../../etc/x", r.path().join("bin/up")).unwrap();
        assert_eq!(
            within(r.path(), Path::new("/bin/up")),
            Some(r.path().join("etc/x"))
        );
        std::os::unix::fs::symlink("loop", r.path().join("bin/loop")).unwrap();
        assert_eq!(within(r.path(), Path::new("/bin/loop")), None);
    }

    #[test]
    fn machine_names_map_to_the_agents_architectures() {
        for (m, a) in [
            ("x86_64", Some(Arch::X64)),
            ("aarch64", Some(Arch::Arm64)),
            ("arm64", Some(Arch::Arm64)),
            ("armv7l", Some(Arch::Arm)),
            ("armv6l", Some(Arch::Arm)),
            ("i686", Some(Arch::X86)),
            ("riscv64", None),
            ("s390x", None),
        ] {
            assert_eq!(arch_of_machine(m), a, "{m}");
        }
    }

    #[test]
    fn the_interpreter_of_real_programs() {
        assert_eq!(
            elf_interpreter(&tiny_elf(Some(MUSL_X64))),
            Interp::Dynamic(MUSL_X64.to_owned())
        );
        assert_eq!(elf_interpreter(&tiny_elf(None)), Interp::Static);
        assert_eq!(elf_interpreter(b"#!/bin/sh\n"), Interp::NotElf);
        // This machine's own shell (the suite runs on glibc Linux).
        let sh = std::fs::read("/bin/sh").unwrap();
        let Interp::Dynamic(i) = elf_interpreter(&sh) else {
            panic!("/bin/sh has no interpreter")
        };
        assert!(i.contains("ld-linux") || i.contains("ld-musl"), "{i}");
    }

    #[test]
    fn os_release_quoting() {
        let r = OsRelease::parse(
            "# c\nID='opensuse-leap'\nID_LIKE=\"suse opensuse\"\nVERSION_ID=\"15.6\"\nPRETTY_NAME=\"a \\\"b\\\"\"\n",
        );
        assert_eq!(r.id, "opensuse-leap");
        assert_eq!(r.id_like, ["suse", "opensuse"]);
        assert_eq!(r.pretty_name, "a \"b\"");
        assert!(r.is_like(SUSE_LIKE));
    }
}
