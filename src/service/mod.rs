//! Installing and starting the agent's service.
//!
//! Linux: root writes the agent's systemd unit itself ([`unit`]): the name the agent would give it
//! (`vsts.agent.<org>.<pool>.<agent>.service`, `systemd-escape --path`d), the agent's own template
//! with `User=` the agent user, computed only from root's settings. The agent's generated `svc.sh`
//! is never run: configure writes it as the agent user, and pipeline jobs can rewrite it (and every
//! file its `cp`/`chown` would touch) before root would get to run it. Windows: `config.cmd
//! --runAsService` installs and starts the service during configuration (`agent.md` §5.2), so there
//! is no separate step ([`windows`]: the Service Control Manager and the boot task). [`systemctl`]
//! talks to systemd; [`boot`] holds our own units: the one that runs `reconcile` at every boot and
//! the scale-in watcher (`watch`). Unit files are written atomically ([`write_unit_file`]) and, where
//! SELinux is enabled, labelled as the agent's `svc.sh` labels them ([`selinux`]).

pub mod boot;
pub mod selinux;
pub mod systemctl;
pub mod unit;
pub mod windows;

use std::path::{Path, PathBuf};

pub use boot::{
    BOOT_TIMEOUT, boot_unit_name, render_boot_unit, render_watch_unit, watch_unit_name,
};
pub use systemctl::{Systemctl, UNIT_DIR_ENV, UnitState, systemd_available, unit_dir};
pub use unit::{
    AgentUnit, ReadyUnit, agent_unit_name, agent_unit_off, install_agent_unit, is_agent_unit_name,
    render_agent_unit, systemd_escape_path, uninstall_agent_unit,
};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{step} failed (exit code {code}): {line}")]
    Failed {
        step: String,
        code: i32,
        line: String,
    },
    #[error("could not run {step}")]
    Run {
        step: String,
        #[source]
        source: crate::process::ProcessError,
    },
    #[error("could not write the unit file '{path}'")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} belongs to the agent in {other}, not to the one in {ours}; it is left alone \
         (remove that agent first, or choose another agent name)"
    )]
    Foreign {
        path: PathBuf,
        ours: PathBuf,
        other: String,
    },
    #[error("{what} cannot go into a unit file: {value:?} contains a control character")]
    Unsafe { what: &'static str, value: String },
    #[error("systemctl was not found on PATH")]
    NoSystemctl,
    #[error(
        "SELinux enforces here, and {path} could not be labelled {label} for systemd, which would \
         refuse it; fix: chcon -h {label} {path}, then run again"
    )]
    Selinux {
        path: PathBuf,
        label: String,
        #[source]
        source: Box<ServiceError>,
    },
    #[error("could not delete the unit file '{path}'")]
    Remove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Disables one of agent-bootstrap's own units (`stop`: and stops it, without waiting: the
/// watcher may be the caller's parent), deletes its file and reloads systemd. False when there
/// was no unit file.
pub async fn delete_own_unit(
    env: &crate::env::Env,
    name: &str,
    stop: bool,
) -> Result<bool, ServiceError> {
    let path = unit_dir(env).join(name);
    if !path.is_file() {
        return Ok(false);
    }
    let sc = Systemctl::find(env);
    if let Some(sc) = &sc {
        if stop {
            sc.run(&["disable", "--now", "--no-block", name]).await?;
        } else {
            sc.run(&["disable", name]).await?;
        }
    }
    remove_unit_file(&path)?;
    if let Some(sc) = &sc {
        sc.run(&["daemon-reload"]).await?;
    }
    Ok(true)
}

/// Whether the process runs in the unit's control group (`/proc/PID/cgroup` names it): the agent's
/// own service, which is stopped through systemd rather than counted as another program of its
/// account.
pub fn process_in_unit(pid: i32, unit: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|text| {
        text.lines()
            .filter_map(|l| l.rsplit(':').next())
            .any(|path| path.split('/').any(|part| part == unit))
    })
}

/// Makes the unit file `name` say `text`: when it does not (missing, an older version's, cut short
/// or changed: reported), writes it ([`write_unit_file`]), labels it for SELinux and reloads
/// systemd. Returns whether it was written. Enabling and starting are the caller's.
pub async fn put_unit_file(
    env: &crate::env::Env,
    sc: &Systemctl,
    name: &str,
    text: &str,
) -> Result<bool, ServiceError> {
    let path = unit_dir(env).join(name);
    // What a killed write of this unit left, even when the unit itself is right.
    if let Some(dir) = path.parent() {
        crate::fsx::remove_dead_temps(dir, Some(name));
    }
    match fs_err::read_to_string(&path) {
        Ok(t) if t == text => return Ok(false),
        Ok(_) => tracing::warn!(
            unit = %name,
            "the unit file is not what it should be (an older version's, cut short or changed); \
             rewriting it"
        ),
        Err(_) => {}
    }
    write_unit_file(&path, text)?;
    selinux::label(env, &path, selinux::UNIT_FILE).await?;
    sc.run(&["daemon-reload"]).await?;
    Ok(true)
}

/// Deletes a unit file, and any temporary file a killed [`write_unit_file`] of it left.
pub fn remove_unit_file(path: &Path) -> Result<(), ServiceError> {
    let err = |source| ServiceError::Remove {
        path: path.to_owned(),
        source,
    };
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Ok(());
    };
    crate::fsx::remove_atomic(dir, &name.to_string_lossy()).map_err(err)?;
    Ok(())
}

/// Writes a unit file atomically (a temporary file in the same directory, fsynced, then renamed
/// over the old one), mode 0644. A crash leaves the old unit or the new one, never half of one.
pub fn write_unit_file(path: &Path, text: &str) -> Result<(), ServiceError> {
    let err = |source| ServiceError::Write {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().expect("unit files live in a directory");
    let name = path.file_name().expect("a unit file has a name");
    fs_err::create_dir_all(dir).map_err(err)?;
    crate::fsx::write_atomic(dir, &name.to_string_lossy(), text.as_bytes(), 0o644).map_err(err)
}

/// The value for a unit-file setting that takes a plain string (`Description=`,
/// `WorkingDirectory=`): `%` doubled (systemd expands specifiers), control characters refused.
pub fn unit_value(what: &'static str, value: &str) -> Result<String, ServiceError> {
    if value.chars().any(char::is_control) {
        return Err(ServiceError::Unsafe {
            what,
            value: value.to_owned(),
        });
    }
    Ok(value.replace('%', "%%"))
}

/// One word of an `ExecStart=` command line: specifiers and variables escaped (`%%`, `$$`), and
/// quoted with `\` and `"` escaped when it has whitespace or quotes (`systemd.service(5)`).
pub fn exec_word(what: &'static str, value: &str) -> Result<String, ServiceError> {
    let v = unit_value(what, value)?.replace('$', "$$");
    if v.is_empty()
        || v.chars()
            .any(|c| c.is_whitespace() || matches!(c, '"' | '\'' | '\\' | ';'))
    {
        Ok(format!(
            "\"{}\"",
            v.replace('\\', "\\\\").replace('"', "\\\"")
        ))
    } else {
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_values_are_escaped_for_systemd() {
        assert_eq!(unit_value("x", "50% off").unwrap(), "50%% off");
        assert!(unit_value("x", "a\nExecStartPre=+/bin/sh").is_err());
        assert_eq!(exec_word("x", "/usr/bin/a").unwrap(), "/usr/bin/a");
        assert_eq!(
            exec_word("x", "/opt/my tools/a$b%c").unwrap(),
            "\"/opt/my tools/a$$b%%c\""
        );
        assert_eq!(exec_word("x", "a\"b\\c").unwrap(), "\"a\\\"b\\\\c\"");
    }

    #[test]
    fn unit_files_are_replaced_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.service");
        write_unit_file(&path, "one").unwrap();
        write_unit_file(&path, "two").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "two");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(names.len(), 1, "no temporary file left");
    }
}
