//! The trust boundary, attacked. Pipeline jobs run as the agent user: they can rewrite anything in
//! the agent dir and leave processes running. Each test here does what such a job could do, as the
//! agent user, then runs the real binary as root (at boot, by hand) and checks that root's files,
//! units and token were not the job's to take.

// These tests drive the Linux binary as root; the Windows build is tested by tests/windows.rs.
#![cfg(unix)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use azure_sim::SimConfig;
use common::*;

fn agent_json(w: &World) -> serde_json::Value {
    read_agent_json(&w.agent_dir().join(".agent"))
}

/// Writes `.agent` with these changes, as the agent user (the file keeps its BOM).
fn rewrite_agent_file(w: &World, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut v = agent_json(w);
    edit(&mut v);
    let staged = w.dir.path().join("staged-agent-file");
    std::fs::write(
        &staged,
        format!("\u{feff}{}", serde_json::to_string_pretty(&v).unwrap()),
    )
    .unwrap();
    let mode = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).unwrap()
    };
    mode(&staged);
    as_agent_user_ok(&format!(
        "cat '{}' > '{}'",
        staged.display(),
        w.agent_dir().join(".agent").display()
    ));
}

fn lose_the_unit(w: &World) {
    // What a reimage of /etc or a cleanup would do (root's side, not the attack).
    let _ = std::fs::remove_file(w.units_dir().join(UNIT));
    for s in ["active", "enabled"] {
        let _ = std::fs::remove_file(w.sim.systemd_dir().join(format!("state/{UNIT}.{s}")));
    }
}

#[test]
fn unit_text_never_comes_from_the_agent_dir() {
    let w = installed();
    let injected = "Default\n[Service]\nExecStartPre=+/bin/sh -c 'touch /tmp/pwned'";
    rewrite_agent_file(&w, |v| v["poolName"] = injected.into());
    as_agent_user_ok(&format!(
        "rm -f '{}'",
        w.agent_dir().join(".service").display()
    ));
    lose_the_unit(&w);

    let run = w.reconcile();
    run.assert_code(0);
    assert!(
        run.stderr.contains("does not match the saved settings"),
        "{}",
        run.stderr
    );
    let unit = std::fs::read_to_string(w.units_dir().join(UNIT)).unwrap();
    assert!(!unit.contains("ExecStartPre"), "{unit}");
    assert!(
        unit.contains("Description=Azure Pipelines Agent (127.Default.test-agent)\n"),
        "{unit}"
    );
    // Only our two units exist: nothing named after the injected pool.
    let mut names: Vec<String> = std::fs::read_dir(w.units_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.iter().any(|n| n == UNIT), "{names:?}");
    // And the agent was configured again from root's settings: pool Default.
    assert_eq!(agent_json(&w)["poolName"], "Default");
}

#[test]
fn names_a_shell_would_run_are_refused_before_anything_happens() {
    let w = World::new();
    for (flag, value) in [
        ("--pool", "Default$(touch /tmp/pwned)"),
        ("--pool", "Default`id`"),
        ("--pool", "Default\n[Service]"),
        ("--agent-name", "vm\"; reboot; \""),
        ("--agent-name", "vm\\x"),
        ("--agent-dir", "/opt/agent dir"),
        ("--agent-dir", "/opt/agent%i"),
        ("--agent-dir", "/opt/agent\nExecStartPre=/bin/sh"),
    ] {
        let run = w.install(&[flag, value]);
        run.assert_code(2);
        assert!(
            run.stderr.contains(flag),
            "{flag} {value:?}: {}",
            run.stderr
        );
        assert!(w.requests().is_empty(), "{flag}: contacted something");
    }
    assert!(!w.agent_dir().exists());
}

#[test]
fn a_planted_runsvc_link_is_never_followed_by_root() {
    let w = installed();
    let decoy = Decoy::new(&w);
    let dir = w.agent_dir();
    let marker = w.dir.path().join("ran-as-root");
    // The job wipes the registration and bin, plants links and a script, keeps some work.
    as_agent_user_ok(&format!(
        "cd '{dir}' && rm -rf .agent .credentials .credentials_rsaparams .service bin runsvc.sh .path \
         && ln -s '{file}' runsvc.sh && ln -s '{file}' .path \
         && printf '#!/bin/sh\\ntouch {marker}\\n' > svc.sh \
         && mkdir -p _work/1 && echo job > _work/1/log && echo planted > planted.txt",
        dir = dir.display(),
        file = decoy.file.display(),
        marker = marker.display(),
    ));
    let run = w.reconcile();
    run.assert_code(0);
    decoy.assert_untouched();
    assert!(!marker.exists(), "root ran the agent user's svc.sh");
    // A fresh tree: the package again, the job's work kept, nothing else of the old tree.
    assert!(
        fsx_regular(&dir.join("runsvc.sh")),
        "runsvc.sh is a file again"
    );
    assert_eq!(owner(&dir.join("runsvc.sh")), agent_user().uid.as_raw());
    assert_eq!(
        std::fs::read_to_string(dir.join("_work/1/log")).unwrap(),
        "job\n"
    );
    assert!(!dir.join("planted.txt").exists());
    assert!(dir.join("bin/Agent.Listener").is_file());
    assert!(w.unit_active(UNIT));
    assert!(
        w.staging_leftovers().is_empty(),
        "{:?}",
        w.staging_leftovers()
    );
}

fn fsx_regular(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_file())
}

#[test]
fn ownership_is_never_changed_through_a_path_the_agent_user_can_swap() {
    // A slow download keeps staging around long enough for the attacker to try.
    let w = World::with(|c: &mut SimConfig| c.throttle = Some(1_000_000));
    w.install(&[]).assert_code(0);
    let decoy = Decoy::new(&w);
    let dir = w.agent_dir();
    let parent = w.dir.path();
    // The attacker appends here whenever it managed to list root's staging directory (for a moment
    // after the swap, the staging name holds the old agent dir, the agent user's own: not that).
    let saw = w.dir.path().join("attacker-looked-inside");
    std::fs::write(&saw, "").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&saw, std::fs::Permissions::from_mode(0o666)).unwrap();
    }
    // The job leaves a process behind: it swaps every directory it can find in a staging tree or
    // in the agent dir for a link to root's directory, over and over.
    as_agent_user_ok(&format!(
        "cd '{dir}' && rm -rf .agent .credentials .credentials_rsaparams bin",
        dir = dir.display()
    ));
    let attacker_script = format!(
        "end=$(( $(date +%s) + 20 )); while [ $(date +%s) -lt $end ]; do \
           for d in '{parent}'/.agent-bootstrap-staging-* '{dir}'; do \
             [ \"$d\" != '{dir}' ] && ls -lan \"$d\" 2>/dev/null | awk '$NF == \".\" && $3 == \"0\" {{ f = 1 }} END {{ exit !f }}' && echo \"$d\" >> '{saw}'; \
             for s in bin externals _work; do \
               mv \"$d/$s\" \"$d/$s.moved\" 2>/dev/null && ln -s '{decoy}' \"$d/$s\" 2>/dev/null; \
             done; \
           done; \
         done",
        parent = parent.display(),
        dir = dir.display(),
        saw = saw.display(),
        decoy = decoy.dir.display(),
    );
    let user = agent_user();
    let mut attacker = std::process::Command::new("/bin/sh");
    attacker
        .arg("-c")
        .arg(&attacker_script)
        .env_clear()
        .env("PATH", "/usr/bin:/bin");
    std::os::unix::process::CommandExt::uid(&mut attacker, user.uid.as_raw());
    std::os::unix::process::CommandExt::gid(&mut attacker, user.gid.as_raw());
    let mut attacker = attacker.spawn().unwrap();
    let run = w.reconcile();
    let _ = attacker.kill();
    let _ = attacker.wait();
    decoy.assert_untouched();
    assert_eq!(
        std::fs::read_to_string(&saw).unwrap(),
        "",
        "the agent user could look into a staging directory"
    );
    // The job may well have broken its own agent (exit 6 or 7); root's files are what matter.
    assert!([0, 6, 7].contains(&run.code), "{run:?}");
    assert!(
        w.staging_leftovers().is_empty(),
        "{:?}",
        w.staging_leftovers()
    );
}

#[test]
fn a_package_an_image_baked_in_is_handed_over_only_if_nobody_else_can_write_it() {
    let w = World::new();
    let dir = w.agent_dir();
    w.extract_package_into(&dir);
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.join("bin"), std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let run = w.install(&[]);
    run.assert_code(2);
    assert!(run.stderr.contains("--agent-dir"), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("can be changed by an account other than root")
    );
    assert!(w.server_agents(1).is_empty(), "nothing registered");
}

#[test]
fn a_fifo_in_place_of_the_agent_files_blocks_nothing() {
    let w = installed();
    let dir = w.agent_dir();
    as_agent_user_ok(&format!(
        "cd '{}' && rm -f .agent .service && mkfifo .agent .service",
        dir.display()
    ));
    let start = Instant::now();
    let run = w.status(&[]);
    run.assert_code(0);
    assert!(run.stdout.contains("unreadable .agent"), "{}", run.stdout);
    let run = w.reconcile();
    run.assert_code(0);
    assert!(start.elapsed() < Duration::from_secs(60));
    // Repaired: a real .agent again, from root's settings.
    assert!(fsx_regular(&dir.join(".agent")));
    assert_eq!(agent_json(&w)["agentName"], "test-agent");
    assert!(w.unit_active(UNIT));
}

#[test]
fn the_version_probe_runs_as_the_agent_user_whoever_owns_the_file() {
    let w = installed();
    let dir = w.agent_dir();
    // A root-owned "listener" that records who ran it.
    let probe = w.dir.path().join("probe");
    std::fs::create_dir(&probe).unwrap();
    let out = w.dir.path().join("probe-ran-as");
    std::fs::write(&out, "").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o666)).unwrap();
        std::fs::set_permissions(&probe, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let listener = probe.join("Agent.Listener");
    std::fs::write(
        &listener,
        format!("#!/bin/sh\nid -u > '{}'\necho 9.9.9\n", out.display()),
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&listener, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    // The job points bin at root's directory (what an update looks like: bin is a link).
    as_agent_user_ok(&format!(
        "cd '{}' && mv bin bin.old && ln -s '{}' bin",
        dir.display(),
        probe.display()
    ));
    let run = w.status(&["--json"]);
    run.assert_code(0);
    let ran_as: u32 = std::fs::read_to_string(&out)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(
        ran_as,
        agent_user().uid.as_raw(),
        "run as the agent user, not root"
    );
}

#[test]
fn the_token_goes_only_to_the_organization_root_saved() {
    let w = installed();
    // The attacker's server, also on loopback.
    let attacker = World::new();
    let evil = format!("{}/", attacker.org_url());
    rewrite_agent_file(&w, |v| v["serverUrl"] = evil.clone().into());

    w.status(&[]).assert_code(0);
    assert!(
        attacker.requests().is_empty(),
        "status sent something to .agent's server"
    );

    // Without saved settings nothing gets a token: status says so, remove refuses.
    let saved = w.saved_settings_files();
    for f in &saved {
        std::fs::remove_file(f).unwrap();
    }
    let run = w.status(&[]);
    run.assert_code(0);
    assert!(
        run.stdout.contains("not trusted with a token"),
        "{}",
        run.stdout
    );
    let run = w.run(&["remove", "--agent-dir", w.agent_dir().to_str().unwrap()]);
    run.assert_code(2);
    assert!(run.stderr.contains("no saved settings"), "{}", run.stderr);
    assert!(attacker.requests().is_empty(), "{:?}", attacker.requests());
    assert_eq!(w.server_agents(1).len(), 1, "nothing unregistered");
}

#[test]
fn reconcile_reregisters_from_saved_settings_when_agent_points_elsewhere() {
    let w = installed();
    let attacker = World::new();
    let evil = format!("{}/", attacker.org_url());
    rewrite_agent_file(&w, |v| v["serverUrl"] = evil.clone().into());
    let run = w.reconcile();
    run.assert_code(0);
    assert!(attacker.requests().is_empty(), "{:?}", attacker.requests());
    assert!(
        agent_bootstrap::agent::same_server(
            agent_json(&w)["serverUrl"].as_str().unwrap(),
            &w.org_url()
        ),
        "configured again at the saved organization"
    );
    // No agent script got the token with .agent pointing at the attacker: the configure that ran
    // was given the saved URL on its command line.
    let last = w.sim.state().listener_reports.last().cloned().unwrap();
    assert_eq!(last.verb, "configure");
    assert!(
        last.argv.iter().any(|a| a == &w.org_url()),
        "{:?}",
        last.argv
    );
}

#[test]
fn children_do_not_inherit_roots_environment() {
    let w = World::new();
    let mut cmd = w.install_command(&[]);
    cmd.env("CUSTOM_SCRIPT_PROTECTED_SETTING", "hunter2")
        .env("AZP_TOKEN", "a-pat-from-somewhere")
        .env("LANG", "C.UTF-8");
    w.run_cmd(cmd).assert_code(0);
    let report = w.sim.state().listener_reports[0].clone();
    for secret in [
        "CUSTOM_SCRIPT_PROTECTED_SETTING",
        "AZP_TOKEN",
        "AGENT_BOOTSTRAP_STATE_DIR",
    ] {
        assert!(
            !report.env_names.iter().any(|n| n == secret),
            "{secret} reached config.sh: {:?}",
            report.env_names
        );
    }
    assert!(report.env_names.iter().any(|n| n == "LANG"));
    assert!(report.env_names.iter().any(|n| n == "PATH"));
}

#[test]
fn a_hostile_link_chain_in_the_package_is_refused() {
    let w = World::new();
    let evil = w.dir.path().join("chain.tar.gz");
    {
        let f = std::fs::File::create(&evil).unwrap();
        let gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
        let mut b = tar::Builder::new(gz);
        let mut entry = |name: &str, kind: tar::EntryType, link: Option<&str>, data: &[u8]| {
            let mut h = tar::Header::new_old();
            h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            if let Some(l) = link {
                h.as_old_mut().linkname[..l.len()].copy_from_slice(l.as_bytes());
            }
            h.set_size(data.len() as u64);
            h.set_mode(0o777);
            h.set_entry_type(kind);
            h.set_cksum();
            b.append(&h, data).unwrap();
        };
        entry(
            "bin/Agent.Listener",
            tar::EntryType::Regular,
            None,
            b"#!/bin/sh\n",
        );
        entry("b/", tar::EntryType::Directory, None, b"");
        entry("b/c", tar::EntryType::Symlink, Some(".."), b"");
        entry("a", tar::EntryType::Symlink, Some("b/c/.."), b"");
        b.into_inner().unwrap().finish().unwrap();
    }
    let run = w.install(&["--package", evil.to_str().unwrap()]);
    run.assert_code(5);
    assert!(
        run.stderr
            .contains("is a link to 'b/c/..', outside the agent directory"),
        "{}",
        run.stderr
    );
    assert!(!w.agent_dir().exists());
    assert!(w.staging_leftovers().is_empty());
    assert!(w.server_agents(1).is_empty());
}

#[test]
fn extracted_files_are_never_group_or_world_writable_or_setuid() {
    let w = World::new();
    // The simulator's package again, with every mode opened up and setuid on the listener.
    let loose = w.dir.path().join("loose.tar.gz");
    {
        let input = std::fs::File::open(&w.sim.package.path).unwrap();
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(input));
        let out = std::fs::File::create(&loose).unwrap();
        let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
            out,
            flate2::Compression::fast(),
        ));
        for e in archive.entries().unwrap() {
            let mut e = e.unwrap();
            let mut h = e.header().clone();
            let extra = if e.path().unwrap().ends_with("Agent.Listener") {
                0o4000
            } else {
                0
            };
            h.set_mode(h.mode().unwrap() | 0o777 | extra);
            h.set_cksum();
            let mut data = vec![];
            std::io::Read::read_to_end(&mut e, &mut data).unwrap();
            b.append(&h, &data[..]).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap();
    }
    w.install(&["--package", loose.to_str().unwrap()])
        .assert_code(0);
    let mut checked = 0;
    for e in walkdir::WalkDir::new(w.agent_dir().join("bin")) {
        let e = e.unwrap();
        if e.file_type().is_symlink() {
            continue;
        }
        use std::os::unix::fs::PermissionsExt;
        let m = std::fs::metadata(e.path()).unwrap().permissions().mode();
        assert_eq!(m & 0o7022, 0, "{} has mode {m:o}", e.path().display());
        checked += 1;
    }
    assert!(checked > 10);
}

/// `install_command(extra)`, but running the binary at `exe`.
fn install_with_binary(w: &World, exe: &Path, extra: &[&str]) -> Run {
    let base = w.install_command(extra);
    let mut cmd = std::process::Command::new(exe);
    cmd.args(base.get_args());
    for (k, v) in base.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    w.run_cmd(cmd)
}

#[test]
fn a_boot_unit_never_runs_a_binary_the_agent_user_could_replace() {
    let w = World::new();
    let user = agent_user();
    // root's binary, in a directory the agent user owns: it could swap the file before the next
    // boot, and the boot unit would run the job's program as root.
    let theirs = w.dir.path().join("agent-user-bin");
    std::fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(user.uid.as_raw()), Some(user.gid.as_raw())).unwrap();
    let exe = theirs.join("agent-bootstrap");
    std::fs::copy(BIN, &exe).unwrap();

    let run = install_with_binary(&w, &exe, &[]);
    run.assert_code(2);
    assert!(
        run.stderr.contains(&theirs.display().to_string()),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("--no-boot"), "{}", run.stderr);
    assert!(
        w.requests().is_empty(),
        "contacted something before refusing"
    );
    assert!(!w.agent_dir().exists());
    assert!(!w.units_dir().exists() || std::fs::read_dir(w.units_dir()).unwrap().next().is_none());

    // Without a boot unit nothing runs it as root later: the install goes ahead.
    let run = install_with_binary(&w, &exe, &["--no-boot"]);
    run.assert_code(0);
    let units: Vec<String> = std::fs::read_dir(w.units_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(units, vec![UNIT.to_string()], "only the agent's own unit");

    // The same binary where only root can change it gets its boot unit.
    let roots = w.dir.path().join("root-bin");
    std::fs::create_dir(&roots).unwrap();
    std::fs::copy(BIN, roots.join("agent-bootstrap")).unwrap();
    let run = install_with_binary(&w, &roots.join("agent-bootstrap"), &[]);
    run.assert_code(0);
    assert_eq!(std::fs::read_dir(w.units_dir()).unwrap().count(), 2);
}

/// A directory the agent user owns, for an attack to plant files in.
fn agent_users_dir(w: &World, name: &str) -> std::path::PathBuf {
    let user = agent_user();
    let dir = w.dir.path().join(name);
    std::fs::create_dir(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(user.uid.as_raw()), Some(user.gid.as_raw())).unwrap();
    dir
}

/// Secret files (the PAT file, the proxy password file): a link the agent user planted, or a file
/// the agent user owns, is refused with exit 2 naming the setting and the file, before anything is
/// contacted; a root-owned private file, or a link root made in a root-owned directory (how
/// Kubernetes mounts secrets), is read.
#[test]
fn secret_files_the_agent_user_could_change_or_link_are_refused() {
    let w = World::new();
    let planted = agent_users_dir(&w, "job-secrets");
    let root_dir = w.dir.path().join("root-secrets");
    std::fs::create_dir(&root_dir).unwrap();
    let real = root_dir.join("real");
    std::fs::write(&real, "a-secret-value\n").unwrap();
    std::fs::set_permissions(&real, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    as_agent_user_ok(&format!(
        "ln -s {real} {p}/link && printf 'job-value\\n' > {p}/owned && chmod 600 {p}/owned",
        real = real.display(),
        p = planted.display()
    ));
    let link = planted.join("link");
    let owned = planted.join("owned");
    // A root-made link in a root-owned directory, like Kubernetes' `token -> ..data/token`.
    let roots_link = root_dir.join("token");
    std::os::unix::fs::symlink(&real, &roots_link).unwrap();

    let pat = |file: &Path| {
        let mut cmd = w.install_command(&["--identity", "pat"]);
        cmd.env("AZP_TOKEN_FILE", file);
        w.run_cmd(cmd)
    };
    for bad in [&link, &owned] {
        let run = pat(bad);
        run.assert_code(2);
        for want in ["AZP_TOKEN_FILE", &bad.display().to_string()] {
            assert!(run.stderr.contains(want), "missing {want}: {}", run.stderr);
        }
        assert!(
            w.requests().is_empty(),
            "contacted something: {}",
            run.stderr
        );
    }
    for good in [&real, &roots_link] {
        let run = pat(good);
        assert!(!run.stderr.contains("refusing"), "{}", run.stderr);
    }

    let proxy = |file: &Path| {
        let mut cmd = w.install_command(&[
            "--proxy",
            "http://127.0.0.1:9",
            "--proxy-user",
            "alice",
            "--proxy-password-file",
            file.to_str().unwrap(),
        ]);
        cmd.env_remove("HTTPS_PROXY");
        w.run_cmd(cmd)
    };
    for bad in [&link, &owned] {
        let run = proxy(bad);
        run.assert_code(2);
        for want in ["--proxy-password-file", &bad.display().to_string()] {
            assert!(run.stderr.contains(want), "missing {want}: {}", run.stderr);
        }
        assert!(!run.stderr.contains("job-value") && !run.stderr.contains("a-secret-value"));
    }
    for good in [&real, &roots_link] {
        let run = proxy(good);
        assert!(
            !run.stderr.contains("--proxy-password-file"),
            "{}",
            run.stderr
        );
    }
}
