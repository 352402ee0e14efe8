//! The operating system as a value.
//!
//! Everything that differs between Linux and Windows (package runtime id and archive format, script
//! names, default directories, how the service is installed) is decided from an [`Os`] passed in, never
//! from `cfg!` deep in the logic, so the Windows plan is built and tested on Linux too.

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Os {
    pub family: Family,
    pub arch: Arch,
    /// Linux with musl libc (Alpine): the agent ships separate `linux-musl-*` packages.
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

    /// The machine this binary runs on.
    pub fn current() -> Self {
        let family = if cfg!(windows) {
            Family::Windows
        } else if cfg!(target_os = "macos") {
            Family::MacOs
        } else {
            Family::Linux
        };
        let arch = match std::env::consts::ARCH {
            "aarch64" => Arch::Arm64,
            "arm" => Arch::Arm,
            "x86" => Arch::X86,
            _ => Arch::X64,
        };
        // The system's own shell names its program interpreter near the start of the file.
        let musl = family == Family::Linux
            && std::fs::read("/bin/sh").is_ok_and(|b| {
                let head = &b[..b.len().min(4096)];
                head.windows(8).any(|w| w == b"ld-musl-")
            });
        Self { family, arch, musl }
    }

    /// The agent's runtime id, the `platform` of the packages API (`agent.md` §6.1).
    pub fn rid(&self) -> String {
        let os = match self.family {
            Family::Linux if self.musl => "linux-musl",
            Family::Linux => "linux",
            Family::Windows => "win",
            Family::MacOs => "osx",
        };
        let arch = match self.arch {
            Arch::X64 => "x64",
            Arch::X86 => "x86",
            Arch::Arm => "arm",
            Arch::Arm64 => "arm64",
        };
        format!("{os}-{arch}")
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

    #[test]
    fn windows_uses_zip_and_cmd() {
        let w = Os::windows_x64();
        assert_eq!(w.archive_kind(), ArchiveKind::Zip);
        assert_eq!(w.config_script(), "config.cmd");
        assert_eq!(Os::linux_x64().archive_kind(), ArchiveKind::TarGz);
        assert_eq!(Os::linux_x64().config_script(), "config.sh");
    }
}
