//! The fake agent package: a `.tar.gz` laid out like the real `vsts-agent-linux-x64-<ver>.tar.gz`
//! (`agent.md` §6.1: no top-level folder, entries start with `./`), whose scripts behave like the
//! real ones where agent-bootstrap depends on them.
//!
//! `config.sh` keeps the real script's order (root check, the `ldd` dependency check with paths
//! relative to the current directory, `cd`, `source ./env.sh`, dispatch with `nocasematch`);
//! `bin/Agent.Listener` runs the simulator's fake listener ([`super::listener`]); the svc.sh template
//! is the real one's logic with `systemctl` replaced by a recorder. Filler files bring the package to
//! a realistic size and file count for the benchmark.

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

#[derive(Debug, Clone)]
pub struct PackageSpec {
    pub version: String,
    pub platform: String,
    /// Filler files and their total size, to reach a realistic package.
    pub filler_files: u32,
    pub filler_bytes: u64,
}

impl PackageSpec {
    pub fn small(version: &str) -> Self {
        Self {
            version: version.to_owned(),
            platform: "linux-x64".to_owned(),
            filler_files: 40,
            filler_bytes: 2_000_000,
        }
    }

    /// The same agent for Windows: a `.zip` whose `bin\Agent.Listener.exe` is a Windows build of
    /// the simulator.
    pub fn windows(version: &str) -> Self {
        Self {
            platform: "win-x64".to_owned(),
            filler_files: 10,
            filler_bytes: 200_000,
            ..Self::small(version)
        }
    }

    pub fn file_name(&self) -> String {
        let ext = if self.platform.starts_with("win-") {
            "zip"
        } else {
            "tar.gz"
        };
        format!("vsts-agent-{}-{}.{ext}", self.platform, self.version)
    }
}

#[derive(Debug, Clone)]
pub struct BuiltPackage {
    pub path: PathBuf,
    pub sha256: String,
    pub size: u64,
}

/// A newer package the simulated Azure DevOps asks agents to update to (`State::agent_update`): the
/// download host serves it, and an online agent of an older version gets an `AgentRefresh` message
/// naming it at its next poll, once per session. The message carries the package's URL and SHA-256
/// (the real listener asks the packages API for the target version with its own credentials). An
/// agent that was asked and has not come back on the new version gets no job: the service waits for
/// the update before it considers the agent available (reported in microsoft/azure-pipelines-agent
/// issue 2455 and microsoft/vsts-agent-docker issue 63 for agents that set `agent.disableupdate`).
#[derive(Debug, Clone)]
pub struct AgentUpdate {
    pub spec: PackageSpec,
    pub package: BuiltPackage,
    /// Agents (ids) sent the message in their current session.
    pub told: Vec<u64>,
}

impl AgentUpdate {
    /// The simulator's package at `version` (same platform, same fake listener).
    pub fn build(sim: &crate::Simulator, version: &str) -> std::io::Result<Self> {
        let spec = PackageSpec {
            version: version.to_owned(),
            ..sim.config.package.clone()
        };
        let package = build(
            &sim.config.work_dir.join("packages"),
            &spec,
            &sim.config.listener_exe,
        )?;
        Ok(Self {
            spec,
            package,
            told: vec![],
        })
    }
}

/// Whether agent version `a` is older than `b` (`major.minor.patch`).
pub fn older(a: &str, b: &str) -> bool {
    let parse = |v: &str| -> Vec<u64> { v.split('.').map(|p| p.parse().unwrap_or(0)).collect() };
    parse(a) < parse(b)
}

/// Builds (or reuses) the package in `dir`. `listener_exe` is the simulator binary the package's
/// `bin/Agent.Listener` runs.
pub fn build(dir: &Path, spec: &PackageSpec, listener_exe: &Path) -> std::io::Result<BuiltPackage> {
    fs_err::create_dir_all(dir)?;
    let key = {
        let mut h = Sha256::new();
        h.update(SCRIPTS_REVISION.as_bytes());
        h.update(spec.version.as_bytes());
        h.update(spec.platform.as_bytes());
        h.update(spec.filler_files.to_le_bytes());
        h.update(spec.filler_bytes.to_le_bytes());
        h.update(listener_exe.as_os_str().as_encoded_bytes());
        hex::encode(&h.finalize()[..8])
    };
    let path = dir.join(format!("{key}-{}", spec.file_name()));
    let sha_file = path.with_extension("sha256");
    if let (Ok(sha), Ok(meta)) = (fs_err::read_to_string(&sha_file), fs_err::metadata(&path)) {
        return Ok(BuiltPackage {
            path,
            sha256: sha.trim().to_owned(),
            size: meta.len(),
        });
    }
    if spec.platform.starts_with("win-") {
        return build_zip(dir, spec, listener_exe, &path, &sha_file);
    }
    let tmp = tempfile::NamedTempFile::new_in(dir)?;
    {
        let file = std::io::BufWriter::with_capacity(1 << 20, tmp.reopen()?);
        let gz = flate2::write::GzEncoder::new(file, flate2::Compression::new(6));
        let mut tar = tar::Builder::new(gz);
        let mut dirs = std::collections::BTreeSet::new();
        // Entries are written as `tar -czf NAME -C layout .` writes them: `./`, `./bin/`, `./bin/x`.
        // (The tar crate's own path setter would strip the leading `./`.)
        let raw = |tar: &mut tar::Builder<_>,
                   name: &str,
                   mode: u32,
                   kind: tar::EntryType,
                   data: &[u8]|
         -> std::io::Result<()> {
            let mut h = tar::Header::new_gnu();
            let bytes = name.as_bytes();
            assert!(bytes.len() < 100, "simulated package names stay short");
            h.as_gnu_mut().expect("gnu header").name[..bytes.len()].copy_from_slice(bytes);
            h.set_size(data.len() as u64);
            h.set_mode(mode);
            h.set_mtime(1_700_000_000);
            h.set_entry_type(kind);
            h.set_cksum();
            tar.append(&h, data)
        };
        raw(&mut tar, "./", 0o755, tar::EntryType::Directory, &[])?;
        let mut add = |name: &str, mode: u32, data: &[u8]| -> std::io::Result<()> {
            let mut parent = String::from(".");
            let parts: Vec<&str> = name.split('/').collect();
            for p in &parts[..parts.len() - 1] {
                parent = format!("{parent}/{p}");
                if dirs.insert(parent.clone()) {
                    raw(
                        &mut tar,
                        &format!("{parent}/"),
                        0o755,
                        tar::EntryType::Directory,
                        &[],
                    )?;
                }
            }
            raw(
                &mut tar,
                &format!("./{name}"),
                mode,
                tar::EntryType::Regular,
                data,
            )
        };
        let listener = format!(
            "#!/bin/sh\n# Simulated Agent.Listener: the simulator's fake listener.\n\
             root=\"$(cd \"$(dirname \"$0\")/..\" && pwd)\"\n\
             exec '{}' fake-listener --root \"$root\" --agent-version '{}' -- \"$@\"\n",
            listener_exe.display(),
            spec.version
        );
        add("bin/Agent.Listener", 0o755, listener.as_bytes())?;
        add("config.sh", 0o755, CONFIG_SH.as_bytes())?;
        add("reauth.sh", 0o755, REAUTH_SH.as_bytes())?;
        add("env.sh", 0o755, ENV_SH.as_bytes())?;
        add("run.sh", 0o755, RUN_SH.as_bytes())?;
        add("run-docker.sh", 0o755, RUN_DOCKER_SH.as_bytes())?;
        add(
            "license.html",
            0o644,
            b"<html><body>Simulated agent license</body></html>\n",
        )?;
        add(
            "bin/systemd.svc.sh.template",
            0o644,
            SVC_TEMPLATE.as_bytes(),
        )?;
        add(
            "bin/vsts.agent.service.template",
            0o644,
            UNIT_TEMPLATE.as_bytes(),
        )?;
        add("bin/runsvc.sh", 0o755, RUNSVC_SH.as_bytes())?;
        add(
            "bin/AgentService.js",
            0o644,
            b"// simulated AgentService.js: the package's node (externals/node20_1/bin/node) runs the\n\
              // simulator's port of it (azure-sim fake-listener --agent-service)\n",
        )?;
        let node = format!(
            "#!/bin/sh\n# Simulated node: `--version`, and `AgentService.js`, which it runs as the simulator's\n\
             # port of it (the real runsvc.sh runs `node ./bin/AgentService.js`).\n\
             case \"$1\" in\n\
             --version) echo v20.19.4; exit 0;;\n\
             *AgentService.js) script=\"$1\"; shift; exec '{}' fake-listener --agent-service \"$script\" -- \"$@\";;\n\
             *) echo \"simulated node runs only bin/AgentService.js\" >&2; exit 1;;\n\
             esac\n",
            listener_exe.display()
        );
        add("externals/node20_1/bin/node", 0o755, node.as_bytes())?;
        add(
            "bin/update.sh.template",
            0o644,
            UPDATE_SH_TEMPLATE.as_bytes(),
        )?;
        add(
            "bin/installdependencies.sh",
            0o755,
            INSTALLDEPENDENCIES_SH.as_bytes(),
        )?;
        for so in [
            "libcoreclr.so",
            "libSystem.Security.Cryptography.Native.OpenSsl.so",
            "libSystem.IO.Compression.Native.so",
        ] {
            add(&format!("bin/{so}"), 0o644, b"simulated runtime library\n")?;
        }
        // Filler: half incompressible, half text, about the real package's compression ratio.
        let n = spec.filler_files.max(1);
        let per = spec.filler_bytes / u64::from(n);
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut buf = vec![0u8; per as usize];
        for i in 0..n {
            let half = buf.len() / 2;
            for chunk in buf[..half].chunks_mut(8) {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let bytes = rng.to_le_bytes();
                chunk.copy_from_slice(&bytes[..chunk.len()]);
            }
            let text = format!("// agent runtime file {i}: simulated content for the benchmark\n");
            for (j, b) in buf[half..].iter_mut().enumerate() {
                *b = text.as_bytes()[j % text.len()];
            }
            let name = if i % 2 == 0 {
                format!("bin/lib/System.Sim.{i:05}.dll")
            } else {
                format!("externals/node20_1/lib/node_modules/sim/{i:05}.js")
            };
            add(&name, 0o644, &buf)?;
        }
        let gz = tar.into_inner()?;
        let mut file = gz.finish()?;
        file.flush()?;
    }
    let mut f = fs_err::File::open(tmp.path())?;
    let mut hasher = Sha256::new();
    let size = std::io::copy(&mut f, &mut hasher)?;
    let sha256 = hex::encode(hasher.finalize());
    tmp.persist(&path).map_err(|e| e.error)?;
    fs_err::write(&sha_file, &sha256)?;
    Ok(BuiltPackage { path, sha256, size })
}

/// The Windows package (`ZipFile.CreateFromDirectory`: no top-level folder): `config.cmd`,
/// `reauth.cmd`, `run.cmd` as the real ones dispatch (`agent.md` §3.2), and `bin\Agent.Listener.exe`
/// (`listener_exe`, a Windows build of the simulator) with its version beside it.
fn build_zip(
    dir: &Path,
    spec: &PackageSpec,
    listener_exe: &Path,
    path: &Path,
    sha_file: &Path,
) -> std::io::Result<BuiltPackage> {
    use zip::write::SimpleFileOptions;
    let tmp = tempfile::NamedTempFile::new_in(dir)?;
    {
        let mut z = zip::ZipWriter::new(std::io::BufWriter::new(tmp.reopen()?));
        let deflated = SimpleFileOptions::default();
        let stored =
            SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        let crlf = |s: &str| s.replace('\n', "\r\n");
        let mut add =
            |name: &str, data: &[u8], options: SimpleFileOptions| -> std::io::Result<()> {
                z.start_file(name, options).map_err(std::io::Error::other)?;
                z.write_all(data)
            };
        add("config.cmd", crlf(CONFIG_CMD).as_bytes(), deflated)?;
        add("reauth.cmd", crlf(REAUTH_CMD).as_bytes(), deflated)?;
        add("run.cmd", crlf(RUN_CMD).as_bytes(), deflated)?;
        add("bin/sim-version.txt", spec.version.as_bytes(), deflated)?;
        add(
            "bin/Agent.Listener.exe",
            &fs_err::read(listener_exe)?,
            stored,
        )?;
        let n = spec.filler_files.max(1);
        let per = (spec.filler_bytes / u64::from(n)) as usize;
        for i in 0..n {
            let text = format!("// agent runtime file {i}\n").repeat(per / 24 + 1);
            add(
                &format!("bin/System.Sim.{i:05}.dll"),
                &text.as_bytes()[..per],
                deflated,
            )?;
        }
        z.finish().map_err(std::io::Error::other)?.flush()?;
    }
    let mut f = fs_err::File::open(tmp.path())?;
    let mut hasher = Sha256::new();
    let size = std::io::copy(&mut f, &mut hasher)?;
    let sha256 = hex::encode(hasher.finalize());
    tmp.persist(path).map_err(|e| e.error)?;
    fs_err::write(sha_file, &sha256)?;
    Ok(BuiltPackage {
        path: path.to_owned(),
        sha256,
        size,
    })
}

const CONFIG_CMD: &str = r#"@echo off
rem Simulated config.cmd: the real one's dispatch (agent.md §3.2), without the Unblock-File step.
setlocal
if /i "%~1" equ "remove" (
    "%~dp0bin\Agent.Listener.exe" %*
) else (
    "%~dp0bin\Agent.Listener.exe" configure %*
)
"#;

const REAUTH_CMD: &str = r#"@echo off
setlocal
"%~dp0bin\Agent.Listener.exe" reauth %*
"#;

const RUN_CMD: &str = r#"@echo off
setlocal
"%~dp0bin\Agent.Listener.exe" run %*
"#;

/// Bump when a script below changes, so cached packages are rebuilt.
const SCRIPTS_REVISION: &str = "scripts-7";

/// Simulated `bin/installdependencies.sh`: root only, then the distribution's package manager
/// (the real one reads /etc/os-release and installs libkrb5, zlib and libicu; this one asks apt-get
/// or dnf for libicu, whichever is on PATH).
const INSTALLDEPENDENCIES_SH: &str = r#"#!/bin/bash
user_id=`id -u`
if [ $user_id -ne 0 ]; then
    echo "Need to run with sudo privilege"
    exit 1
fi
if [ -x "$(command -v apt-get)" ]; then
    apt-get install -y libicu72 || { echo "'apt-get' failed with exit code '$?'"; exit 1; }
elif [ -x "$(command -v dnf)" ]; then
    dnf install -y libicu || { echo "'dnf' failed with exit code '$?'"; exit 1; }
else
    echo "Can't detect current OS type based on /etc/os-release."
    exit 1
fi
echo "-----------------------------"
echo " Finish Install Dependencies"
echo "-----------------------------"
"#;

const CONFIG_SH: &str = r#"#!/bin/bash
# Simulated config.sh: the real script's order (agent.md §3.1).

user_id=`id -u`

# we want to snapshot the environment of the config user
if [ $user_id -eq 0 -a -z "$AGENT_ALLOW_RUNASROOT" ]; then
    echo "Must not run with sudo"
    exit 1
fi

# Check dotnet Core dependencies for Linux, relative to the current directory (as the real one)
if [[ "$(uname)" == "Linux" ]]; then
    command -v ldd > /dev/null
    if [ $? -ne 0 ]; then
        echo "Can not find 'ldd'. Please install 'ldd' and try again."
        exit 1
    fi
    for lib in ./bin/libcoreclr.so ./bin/libSystem.Security.Cryptography.Native.OpenSsl.so ./bin/libSystem.IO.Compression.Native.so; do
        ldd $lib 2>&1 | grep -E "not found|No such" > /dev/null
        if [ $? -eq 0 ]; then
            echo "Dependencies missing for .NET 8"
            echo "Execute ./bin/installdependencies.sh to install any missing dependencies."
            exit 1
        fi
    done

    # libicu, as the real script looks for it
    if [ -x "$(command -v ldconfig)" ]; then
        LDCONFIG_COMMAND="ldconfig"
    else
        LDCONFIG_COMMAND="/sbin/ldconfig"
    fi
    libpath=${LD_LIBRARY_PATH:-}
    $LDCONFIG_COMMAND -NXv ${libpath//:/ } 2>&1 | grep libicu >/dev/null 2>&1
    if [ $? -ne 0 ]; then
        echo "Libicu's dependencies is missing for Dotnet Core 6.0"
        echo "Execute ./bin/installdependencies.sh to install any missing Dotnet Core 6.0 dependencies."
        exit 1
    fi
fi

# Change directory to the script root
cd "$(dirname "$0")"

source ./env.sh

shopt -s nocasematch
if [[ "$1" == "remove" ]]; then
    ./bin/Agent.Listener "$@"
else
    ./bin/Agent.Listener configure "$@"
fi
"#;

const REAUTH_SH: &str = r#"#!/bin/bash
user_id=`id -u`
if [ $user_id -eq 0 -a -z "$AGENT_ALLOW_RUNASROOT" ]; then
    echo "Must not run with sudo"
    exit 1
fi
cd "$(dirname "$0")"
source ./env.sh
./bin/Agent.Listener reauth "$@"
"#;

const ENV_SH: &str = r#"#!/bin/bash
# Simulated env.sh: snapshots PATH into .path and selected variables into .env.
varCheckList=('LANG' 'JAVA_HOME' 'ANT_HOME' 'M2_HOME' 'ANDROID_HOME' 'GRADLE_HOME' 'NVM_BIN' 'NVM_PATH' 'VSTS_HTTP_PROXY' 'VSTS_HTTP_PROXY_USERNAME' 'VSTS_HTTP_PROXY_PASSWORD' 'LD_LIBRARY_PATH' 'PERL5LIB' 'AGENT_TOOLSDIRECTORY')
envContents=""
if [ -f ".env" ]; then
    envContents=`cat .env`
else
    touch .env
fi
function writeVar() {
    checkVar="$1"
    checkDelim="${1}="
    if test "${envContents#*$checkDelim}" = "$envContents"
    then
        if [ ! -z "${!checkVar}" ]; then
            echo "${checkVar}=${!checkVar}">>.env
        fi
    fi
}
echo $PATH>.path
for var_name in ${varCheckList[@]}
do
    writeVar "${var_name}"
done
"#;

/// The real `run.sh` (`src/Misc/layoutroot/run.sh`): the root check, its own directory with links
/// resolved (no `cd`), `bin/Agent.Listener run $*`; on exit 4 (an update under `--once`) at least 5 s,
/// up to 15 s more for `bin/Agent.Listener` to be executable again, then one more run. Any other
/// code, 3 (an update without `--once`) included, is the script's exit code: the update script
/// starts `run.sh` again itself, in the background.
const RUN_SH: &str = r#"#!/bin/bash
user_id=`id -u`
if [ $user_id -eq 0 -a -z "$AGENT_ALLOW_RUNASROOT" ]; then
    echo "Must not run interactively with sudo"
    exit 1
fi

SOURCE="${BASH_SOURCE[0]}"
while [ -h "$SOURCE" ]; do
  DIR="$( cd -P "$( dirname "$SOURCE" )" && pwd )"
  SOURCE="$(readlink "$SOURCE")"
  [[ $SOURCE != /* ]] && SOURCE="$DIR/$SOURCE"
done
DIR="$( cd -P "$( dirname "$SOURCE" )" && pwd )"

shopt -s nocasematch
if [[ "$1" == "localRun" ]]; then
    "$DIR"/bin/Agent.Listener $*
else
    "$DIR"/bin/Agent.Listener run $*

    # Return code 4 means the run once agent received an update message.
    returnCode=$?
    if [[ $returnCode == 4 ]]; then
        sleep 5

        retry=0
        while [[ $retry != 15 ]] && [ ! -x "$DIR"/bin/Agent.Listener ]; do
            sleep 1
            retry=$[retry+1]
        done

        if [ ! -x "$DIR"/bin/Agent.Listener ]; then
            echo "Failed to update within 20 seconds." >&2
            exit 1
        fi

        "$DIR"/bin/Agent.Listener run $*
    else
        exit $returnCode
    fi
fi
"#;

/// The real `run-docker.sh` (`src/Misc/layoutroot/run-docker.sh`): without `--once` the listener
/// runs with `--startuptype service` ("to prevent running of an agent in a separate process after
/// self-update"), and on exit 3 or 4 it is run again after at least 5 s, once `bin/Agent.Listener`
/// is executable (at most 15 s more).
const RUN_DOCKER_SH: &str = r#"#!/bin/bash
user_id=`id -u`
if [ $user_id -eq 0 -a -z "$AGENT_ALLOW_RUNASROOT" ]; then
    echo "Must not run interactively with sudo"
    exit 1
fi

SOURCE="${BASH_SOURCE[0]}"
while [ -h "$SOURCE" ]; do
  DIR="$( cd -P "$( dirname "$SOURCE" )" && pwd )"
  SOURCE="$(readlink "$SOURCE")"
  [[ $SOURCE != /* ]] && SOURCE="$DIR/$SOURCE"
done
DIR="$( cd -P "$( dirname "$SOURCE" )" && pwd )"

shopt -s nocasematch

ONCE=false
for a in $*; do
    if [[ "$a" == "--once" ]]; then
        ONCE=true
    fi
done

FIRST_ARG=$1
ARGUMENTS=$*

function runAgent {
    if [[ "$FIRST_ARG" == "localRun" ]]; then
        "$DIR"/bin/Agent.Listener $ARGUMENTS
    else
        if [[ "$ONCE" = true ]]; then
            "$DIR"/bin/Agent.Listener run $ARGUMENTS
        else
            echo "Starting Agent listener with startup type: service - to prevent running of an agent in a separate process after self-update"
            "$DIR"/bin/Agent.Listener run --startuptype service $ARGUMENTS
        fi

        returnCode=$?
        echo "Agent exit code $returnCode"

        if [[ $returnCode == 3 || $returnCode == 4 ]]; then
            sleep 5

            retry=0
            while [[ $retry != 15 ]] && [ ! -x "$DIR"/bin/Agent.Listener ]; do
                sleep 1
                retry=$[retry+1]
            done

            if [ ! -x "$DIR"/bin/Agent.Listener ]; then
                echo "Failed to update within 20 seconds." >&2
                exit 1
            fi

            runAgent
        else
            exit $returnCode
        fi
    fi
}

runAgent
"#;

/// The real `bin/runsvc.sh` (`src/Misc/layoutbin/runsvc.sh`, what the unit's `ExecStart=` runs once
/// `svc.sh install` copied it to the root): `PATH` from `.path`, the package's node running
/// `bin/AgentService.js` in the background, SIGTERM and SIGINT turned into SIGINT for it. The fake
/// node runs the simulator's port of `AgentService.js` ([`crate::agent_service`]): the listener run
/// with `--startuptype service` and launched again 5 s after any exit code but 0 and 1.
const RUNSVC_SH: &str = r#"#!/bin/bash

# convert SIGTERM signal to SIGINT
trap 'kill -INT $PID' TERM INT

if [ -f ".path" ]; then
    # configure
    export PATH=`cat .path`
    echo ".path=${PATH}"
fi

# Prefer Node24, fall back to Node20, then Node16 only if present
./externals/node24/bin/node --version 2>/dev/null
if [ $? == 0 ]; then
    NODE_VER="node24"
else
    ./externals/node20_1/bin/node --version 2>/dev/null
    if [ $? == 0 ]; then
        NODE_VER="node20_1"
    elif [ -f "./externals/node16/bin/node" ]; then
        ./externals/node16/bin/node --version 2>/dev/null
        if [ $? == 0 ]; then
            NODE_VER="node16"
        else
            echo "ERROR: No compatible Node.js runtime found." >&2
            exit 1
        fi
    else
        echo "ERROR: No compatible Node.js runtime found. Requires Node 20 or later." >&2
        exit 1
    fi
fi

# run the host process which keep the listener alive
./externals/"$NODE_VER"/bin/node ./bin/AgentService.js &
PID=$!
wait $PID
trap - TERM INT
wait $PID
"#;

/// The real `bin/update.sh.template` (`src/Misc/layoutbin/update.sh.template`), which the listener's
/// `SelfUpdater` renders into `_work/_update.sh` and starts with `bash` before it exits 3 (or 4 under
/// `--once`): it waits for the listener's pid to be gone, renames `bin` and `externals` to
/// `bin.<old>` and `externals.<old>` (or deletes them when they are links already), links them to
/// `bin.<new>` and `externals.<new>`, renames the log to `.succeed` (`.failed` on an error) and, when
/// `_RESTART_INTERACTIVE_AGENT_` is 1 (the listener ran without `--once` and not as a service), starts
/// `run.sh` again in the background. `sleep 1` stands in for its `ping -c 2 -i 1 127.0.0.1`.
const UPDATE_SH_TEMPLATE: &str = r#"#!/bin/bash

agentpid=_PROCESS_ID_
agentprocessname=_AGENT_PROCESS_NAME_
rootfolder="_ROOT_FOLDER_"
existagentversion=_EXIST_AGENT_VERSION_
downloadagentversion=_DOWNLOAD_AGENT_VERSION_
logfile="_UPDATE_LOG_"
restartinteractiveagent=_RESTART_INTERACTIVE_AGENT_

date "+[%F %T-%4N] --------whoami--------" >> "$logfile" 2>&1
whoami >> "$logfile" 2>&1
date "+[%F %T-%4N] --------whoami--------" >> "$logfile" 2>&1

date "+[%F %T-%4N] Waiting for $agentprocessname ($agentpid) to complete" >> "$logfile" 2>&1
while [ -e /proc/$agentpid ]
do
    date "+[%F %T-%4N] Process $agentpid still running" >> "$logfile" 2>&1
    sleep 1
done
date "+[%F %T-%4N] Process $agentpid finished running" >> "$logfile" 2>&1

date "+[%F %T-%4N] Sleep 1 more second to make sure process exited" >> "$logfile" 2>&1
sleep 1

function fail() {
    date "+[%F %T-%4N] $1" >> "$logfile" 2>&1
    mv -fv "$logfile" "$logfile.failed"
    exit 1
}

if [[ -L "$rootfolder/bin" && -d "$rootfolder/bin" ]]
then
    date "+[%F %T-%4N] Delete existing junction bin folder" >> "$logfile" 2>&1
    rm -f "$rootfolder/bin" >> "$logfile" 2>&1 || fail "Cannot delete existing junction bin folder"
else
    date "+[%F %T-%4N] move $rootfolder/bin $rootfolder/bin.$existagentversion" >> "$logfile" 2>&1
    mv -fv "$rootfolder/bin" "$rootfolder/bin.$existagentversion" >> "$logfile" 2>&1 || fail "Cannot move $rootfolder/bin to $rootfolder/bin.$existagentversion"
fi

if [[ -L "$rootfolder/externals" && -d "$rootfolder/externals" ]]
then
    date "+[%F %T-%4N] Delete existing junction externals folder" >> "$logfile" 2>&1
    rm -f "$rootfolder/externals" >> "$logfile" 2>&1 || fail "Cannot delete existing junction externals folder"
else
    date "+[%F %T-%4N] move $rootfolder/externals $rootfolder/externals.$existagentversion" >> "$logfile" 2>&1
    mv -fv "$rootfolder/externals" "$rootfolder/externals.$existagentversion" >> "$logfile" 2>&1 || fail "Cannot move $rootfolder/externals to $rootfolder/externals.$existagentversion"
fi

date "+[%F %T-%4N] Create junction bin folder" >> "$logfile" 2>&1
ln -s "$rootfolder/bin.$downloadagentversion" "$rootfolder/bin" >> "$logfile" 2>&1 || fail "Cannot create junction bin folder"

date "+[%F %T-%4N] Create junction externals folder" >> "$logfile" 2>&1
ln -s "$rootfolder/externals.$downloadagentversion" "$rootfolder/externals" >> "$logfile" 2>&1 || fail "Cannot create junction externals folder"

date "+[%F %T-%4N] Update succeed" >> "$logfile" 2>&1

date "+[%F %T-%4N] Rename $logfile to be $logfile.succeed" >> "$logfile" 2>&1
mv -fv "$logfile" "$logfile.succeed"

if [ $restartinteractiveagent -ne 0 ]
then
    date "+[%F %T-%4N] Restarting interactive agent"  >> "$logfile.succeed" 2>&1
    "$rootfolder/run.sh" &
fi
"#;

/// The real `systemd.svc.sh.template` logic; configure renders `{{SvcNameVar}}`,
/// `{{SvcDescription}}` and (simulator only) `{{SimSystemdDir}}`, where the recorder `systemctl`
/// and the unit files live instead of `/etc/systemd/system`.
const SVC_TEMPLATE: &str = r#"#!/bin/bash

SVC_NAME="{{SvcNameVar}}"
if command -v systemd-escape > /dev/null; then
    SVC_NAME=`systemd-escape --path "${SVC_NAME}"`
else
    SVC_NAME=`echo "${SVC_NAME}" | sed 's/-/\\\\x2d/g'`
fi
SVC_DESCRIPTION="{{SvcDescription}}"
SIM_SYSTEMD="{{SimSystemdDir}}"
SYSTEMCTL="${SIM_SYSTEMD}/bin/systemctl"

SVC_CMD=$1
arg_2=${2}

AGENT_ROOT=`pwd`

UNIT_PATH=${SIM_SYSTEMD}/units/${SVC_NAME}
TEMPLATE_PATH=./bin/vsts.agent.service.template
TEMP_PATH=./bin/vsts.agent.service.temp
CONFIG_PATH=.service

user_id=`id -u`

# systemctl must run as sudo
# this script is a convenience wrapper around systemctl
if [ $user_id -ne 0 ]; then
    echo "Must run as sudo"
    exit 1
fi

function failed()
{
   local error=${1:-Undefined error}
   echo "Failed: $error" >&2
   exit 1
}

if [ ! -f "${TEMPLATE_PATH}" ]; then
    failed "Must run from agent root or install is corrupt"
fi

#check if we run as root
if [[ $(id -u) != "0" ]]; then
    echo "Failed: This script requires to run with sudo." >&2
    exit 1
fi

function install()
{
    echo "Creating launch agent in ${UNIT_PATH}"
    if [ -f "${UNIT_PATH}" ]; then
        failed "error: exists ${UNIT_PATH}"
    fi

    if [ -f "${TEMP_PATH}" ]; then
      rm "${TEMP_PATH}" || failed "failed to delete ${TEMP_PATH}"
    fi

    # can optionally use username supplied
    run_as_user=${arg_2:-$SUDO_USER}
    echo "Run as user: ${run_as_user}"

    run_as_uid=$(id -u ${run_as_user}) || failed "User does not exist"
    echo "Run as uid: ${run_as_uid}"

    run_as_gid=$(id -g ${run_as_user}) || failed "Group not available"
    echo "gid: ${run_as_gid}"

    sed "s/{{User}}/${run_as_user}/g; s/{{Description}}/$(echo ${SVC_DESCRIPTION} | sed -e 's/[\/&]/\\&/g')/g; s/{{AgentRoot}}/$(echo ${AGENT_ROOT} | sed -e 's/[\/&]/\\&/g')/g;" "${TEMPLATE_PATH}" > "${TEMP_PATH}" || failed "failed to create replacement temp file"
    mkdir -p "${SIM_SYSTEMD}/units"
    mv "${TEMP_PATH}" "${UNIT_PATH}" || failed "failed to copy unit file"

    # Recent Fedora based Linux (CentOS/Redhat) has SELinux enabled by default
    # We need to restore security context on the unit file we added otherwise SystemD have no access to it.
    command -v getenforce > /dev/null
    if [ $? -eq 0 ]
    then
        selinuxEnabled=$(getenforce)
        if [[ $selinuxEnabled == "Enforcing" ]]
        then
            # SELinux is enabled, we will need to Restore SELinux Context for the service file
            restorecon -r -v "${UNIT_PATH}" || failed "failed to restore SELinux context on ${UNIT_PATH}"
        fi
    fi

    # unit file should not be executable and world writable
    chmod 664 "${UNIT_PATH}" || failed "failed to set permissions on ${UNIT_PATH}"
    "${SYSTEMCTL}" daemon-reload || failed "failed to reload daemons"

    # Since we started with sudo, runsvc.sh will be owned by root. Change this to current login user.
    cp ./bin/runsvc.sh ./runsvc.sh || failed "failed to copy runsvc.sh"
    chown ${run_as_uid}:${run_as_gid} ./runsvc.sh || failed "failed to set owner for runsvc.sh"
    chmod 755 ./runsvc.sh || failed "failed to set permission for runsvc.sh"

    "${SYSTEMCTL}" enable ${SVC_NAME} || failed "failed to enable ${SVC_NAME}"

    echo "${SVC_NAME}" > ${CONFIG_PATH} || failed "failed to create .service file"
    chown ${run_as_uid}:${run_as_gid} ${CONFIG_PATH} || failed "failed to set permission for ${CONFIG_PATH}"
}

function start()
{
    "${SYSTEMCTL}" start ${SVC_NAME} || failed "failed to start ${SVC_NAME}"
    status
}

function stop()
{
    "${SYSTEMCTL}" stop ${SVC_NAME} || failed "failed to stop ${SVC_NAME}"
    status
}

function uninstall()
{
    if service_exists; then
        stop
        "${SYSTEMCTL}" disable ${SVC_NAME} || failed "failed to disable ${SVC_NAME}"
        rm "${UNIT_PATH}" || failed "failed to delete ${UNIT_PATH}"
    else
        echo "Service ${SVC_NAME} is not installed"
    fi
    if [ -f "${CONFIG_PATH}" ]; then
      rm "${CONFIG_PATH}" || failed "failed to delete ${CONFIG_PATH}"
    fi
    "${SYSTEMCTL}" daemon-reload || failed "failed to reload daemons"
}

function service_exists() {
    if [ -f "${UNIT_PATH}" ]; then
        return 0
    else
        return 1
    fi
}

function status()
{
    if service_exists; then
        echo
        echo "${UNIT_PATH}"
    else
        echo
        echo "not installed"
        echo
        exit 1
    fi

    "${SYSTEMCTL}" --no-pager status ${SVC_NAME}
}

function usage()
{
    echo
    echo Usage:
    echo "./svc.sh [install, start, stop, status, uninstall]"
    echo "Commands:"
    echo "   install [user]: Install agent service as Root or specified user."
    echo "   start: Manually start the agent service."
    echo "   stop: Manually stop the agent service."
    echo "   status: Display status of agent service."
    echo "   uninstall: Uninstall agent service."
    echo
}

case $SVC_CMD in
   "install") install;;
   "status") status;;
   "uninstall") uninstall;;
   "start") start;;
   "stop") stop;;
   "restart") stop; start;;
   *) usage;;
esac

exit 0
"#;

const UNIT_TEMPLATE: &str = r#"[Unit]
Description={{Description}}
After=network.target

[Service]
ExecStart={{AgentRoot}}/runsvc.sh
User={{User}}
WorkingDirectory={{AgentRoot}}
KillMode=process
KillSignal=SIGTERM
TimeoutStopSec=5min

[Install]
WantedBy=multi-user.target
"#;

/// The recorder that stands in for `systemctl`: appends each call to `systemctl.log` and keeps
/// enabled/active state as files, answering `is-active`/`is-enabled` like systemd. Tests make it
/// fail: `fail-start` fails every start, `fail-enable` fails enabling units whose name starts with
/// the file's content.
pub const SYSTEMCTL_RECORDER: &str = r#"#!/bin/bash
# Simulated systemctl: records calls, keeps state in files. Never touches the real systemd.
DIR="$(cd "$(dirname "$0")/.." && pwd)"
mkdir -p "$DIR/state"
echo "$*" >> "$DIR/systemctl.log"
# The token belongs in config.sh's environment only: record it if it ever reaches a service step.
env | grep -q '^VSTS_AGENT_INPUT_' && echo "systemctl $* saw VSTS_AGENT_INPUT_*" >> "$DIR/env-leaks.log"
args=()
now=
for a in "$@"; do
    case "$a" in --now) now=1;; --*) ;; *) args+=("$a");; esac
done
cmd="${args[0]}"
unit="${args[1]}"
case "$cmd" in
    daemon-reload) exit 0;;
    enable)  [ -f "$DIR/units/$unit" ] || { echo "Failed to enable unit: Unit file $unit does not exist." >&2; exit 1; }
             if [ -f "$DIR/fail-enable" ]; then
                 case "$unit" in "$(cat "$DIR/fail-enable")"*) echo "Failed to enable unit: simulated failure" >&2; exit 1;; esac
             fi
             touch "$DIR/state/$unit.enabled";;
    disable) [ -f "$DIR/units/$unit" ] || { echo "Failed to disable unit: Unit file $unit does not exist." >&2; exit 1; }
             rm -f "$DIR/state/$unit.enabled"
             [ -n "$now" ] && rm -f "$DIR/state/$unit.active";;
    start|restart)
             [ -f "$DIR/units/$unit" ] || { echo "Failed to start $unit: Unit $unit not found." >&2; exit 5; }
             [ -f "$DIR/fail-start" ] && { echo "Job for $unit failed because the control process exited with error code." >&2; exit 1; }
             touch "$DIR/state/$unit.active";;
    stop)    [ -f "$DIR/units/$unit" ] || [ -f "$DIR/state/$unit.active" ] || { echo "Failed to stop $unit: Unit $unit not loaded." >&2; exit 5; }
             rm -f "$DIR/state/$unit.active";;
    is-active)  if [ -f "$DIR/state/$unit.active" ]; then echo active; exit 0; else echo inactive; exit 3; fi;;
    is-enabled) if [ ! -f "$DIR/units/$unit" ]; then echo "Failed to get unit file state for $unit: No such file or directory" >&2; exit 1; elif [ -f "$DIR/state/$unit.enabled" ]; then echo enabled; exit 0; else echo disabled; exit 1; fi;;
    status)  if [ -f "$DIR/state/$unit.active" ]; then echo "● $unit - active (running)"; exit 0; else echo "○ $unit - inactive (dead)"; exit 3; fi;;
    *) echo "simulated systemctl: unsupported command $cmd" >&2; exit 1;;
esac
exit 0
"#;
