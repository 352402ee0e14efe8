//! The operating system as a value.
//!
//! Everything that differs between Linux and Windows (package runtime id and archive format, script
//! names, default directories, how the service is installed) is decided from an [`Os`] passed in, never
//! from `cfg!` deep in the logic, so the Windows plan is built and tested on Linux too. Which one
//! this machine is comes from [`crate::host::current_os`], which reads the system itself.

use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Linux,
    Windows,
    MacOs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    X64,
    X86,
    Arm,
    Arm64,
}

impl Arch {
    /// The architecture part of the agent's runtime ids.
    pub fn name(self) -> &'static str {
        match self {
            Self::X64 => "x64",
            Self::X86 => "x86",
            Self::Arm => "arm",
            Self::Arm64 => "arm64",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Os {
    pub family: Family,
    pub arch: Arch,
    /// Linux whose own programs use musl libc (Alpine): the agent ships separate
    /// `linux-musl-*` packages. From [`crate::host`], never from how this binary was built.
    pub musl: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveKind {
    TarGz,
    Zip,
}

impl ArchiveKind {
    pub fn extension(self) -> &'static str {
        match self {
            Self::TarGz => "tar.gz",
            Self::Zip => "zip",
        }
    }
}

/// The agent's platforms (`PackageRuntime` in the agent's `src/Common.props`).
pub const AGENT_PLATFORMS: &[&str] = &[
    "linux-x64",
    "linux-arm64",
    "linux-arm",
    "linux-musl-x64",
    "linux-musl-arm64",
    "win-x64",
    "win-x86",
    "win-arm64",
    "osx-x64",
    "osx-arm64",
];

impl Os {
    pub fn linux_x64() -> Self {
        Self {
            family: Family::Linux,
            arch: Arch::X64,
            musl: false,
        }
    }

    pub fn windows_x64() -> Self {
        Self {
            family: Family::Windows,
            arch: Arch::X64,
            musl: false,
        }
    }

    /// The platform a runtime id names (`linux-musl-arm64`, `win-x86`, …), or `None` when it is not
    /// one of the agent's.
    pub fn from_rid(rid: &str) -> Option<Self> {
        let rid = rid.trim().to_ascii_lowercase();
        let (family, musl, arch) = if let Some(a) = rid.strip_prefix("linux-musl-") {
            (Family::Linux, true, a)
        } else if let Some(a) = rid.strip_prefix("linux-") {
            (Family::Linux, false, a)
        } else if let Some(a) = rid.strip_prefix("win-") {
            (Family::Windows, false, a)
        } else if let Some(a) = rid.strip_prefix("osx-") {
            (Family::MacOs, false, a)
        } else {
            return None;
        };
        let arch = [Arch::X64, Arch::X86, Arch::Arm, Arch::Arm64]
            .into_iter()
            .find(|x| x.name() == arch)?;
        let os = Self { family, arch, musl };
        AGENT_PLATFORMS.contains(&os.rid().as_str()).then_some(os)
    }

    /// The agent's runtime id, the `platform` of the packages API (`agent.md` §6.1).
    pub fn rid(&self) -> String {
        let os = match self.family {
            Family::Linux if self.musl => "linux-musl",
            Family::Linux => "linux",
            Family::Windows => "win",
            Family::MacOs => "osx",
        };
        format!("{os}-{}", self.arch.name())
    }

    pub fn archive_kind(&self) -> ArchiveKind {
        match self.family {
            Family::Windows => ArchiveKind::Zip,
            _ => ArchiveKind::TarGz,
        }
    }

    pub fn is_windows(&self) -> bool {
        self.family == Family::Windows
    }

    /// `config.sh` or `config.cmd`.
    pub fn config_script(&self) -> &'static str {
        if self.is_windows() {
            "config.cmd"
        } else {
            "config.sh"
        }
    }

    /// The script that runs the agent in the foreground.
    pub fn run_script(&self) -> &'static str {
        if self.is_windows() {
            "run.cmd"
        } else {
            "run.sh"
        }
    }

    pub fn listener_binary(&self) -> &'static str {
        if self.is_windows() {
            "bin\\Agent.Listener.exe"
        } else {
            "bin/Agent.Listener"
        }
    }

    pub fn default_agent_dir(&self) -> PathBuf {
        match self.family {
            Family::Windows => PathBuf::from(r"C:\azagent"),
            _ => PathBuf::from("/opt/azure-pipelines-agent"),
        }
    }

    /// Where settings saved by `install` live (root-owned, outside the agent dir, which the agent
    /// user can write to). Windows: under `program_data` (`%ProgramData%`).
    pub fn default_state_dir(&self, program_data: Option<&str>) -> PathBuf {
        match self.family {
            Family::Windows => {
                PathBuf::from(program_data.unwrap_or(r"C:\ProgramData")).join("agent-bootstrap")
            }
            _ => PathBuf::from("/var/lib/agent-bootstrap"),
        }
    }

    /// Where verified agent packages are cached, keyed by SHA-256.
    pub fn default_cache_dir(&self, program_data: Option<&str>) -> PathBuf {
        match self.family {
            Family::Windows => self.default_state_dir(program_data).join("cache"),
            _ => PathBuf::from("/var/cache/agent-bootstrap"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_ids_match_the_agent_release_names() {
        assert_eq!(Os::linux_x64().rid(), "linux-x64");
        assert_eq!(Os::windows_x64().rid(), "win-x64");
        let musl = Os {
            musl: true,
            arch: Arch::Arm64,
            ..Os::linux_x64()
        };
        assert_eq!(musl.rid(), "linux-musl-arm64");
        let mac = Os {
            family: Family::MacOs,
            arch: Arch::Arm64,
            musl: false,
        };
        assert_eq!(mac.rid(), "osx-arm64");
    }

    /// Every platform the agent ships (`PackageRuntime` in the agent's `src/Common.props`).
    #[test]
    fn every_agent_platform_name() {
        use Arch::*;
        use Family::*;
        for (family, arch, musl, rid) in [
            (Linux, X64, false, "linux-x64"),
            (Linux, Arm64, false, "linux-arm64"),
            (Linux, Arm, false, "linux-arm"),
            (Linux, X64, true, "linux-musl-x64"),
            (Linux, Arm64, true, "linux-musl-arm64"),
            (Windows, X64, false, "win-x64"),
            (Windows, X86, false, "win-x86"),
            (Windows, Arm64, false, "win-arm64"),
            (MacOs, X64, false, "osx-x64"),
            (MacOs, Arm64, false, "osx-arm64"),
        ] {
            assert_eq!(Os { family, arch, musl }.rid(), rid);
            assert_eq!(Os::from_rid(rid), Some(Os { family, arch, musl }), "{rid}");
        }
        assert_eq!(AGENT_PLATFORMS.len(), 10);
        for bad in [
            "linux-x86",
            "win-arm",
            "osx-musl-x64",
            "linux",
            "x64",
            "linux-musl-arm",
        ] {
            assert_eq!(Os::from_rid(bad), None, "{bad}");
        }
        assert_eq!(
            Os::from_rid(" Linux-ARM64 ").map(|o| o.rid()).as_deref(),
            Some("linux-arm64")
        );
    }

    #[test]
    fn windows_uses_zip_and_cmd() {
        let w = Os::windows_x64();
        assert_eq!(w.archive_kind(), ArchiveKind::Zip);
        assert_eq!(w.config_script(), "config.cmd");
        assert_eq!(Os::linux_x64().archive_kind(), ArchiveKind::TarGz);
        assert_eq!(Os::linux_x64().config_script(), "config.sh");
    }
}
