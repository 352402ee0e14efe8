//! The `azure-sim` program: the simulated Azure on loopback, for the README demo and the benchmark;
//! also the fake agent package's `Agent.Listener` (`azure-sim fake-listener …`).

use std::path::PathBuf;

use crate::{SimConfig, Simulator};

fn usage() -> ! {
    eprintln!(
        "usage:\n  azure-sim serve [--port N] [--work-dir DIR] [--package-mb N] [--package-files N] [--throttle-mbps N]\n    \
         [--listen ADDR:PORT]... [--tls-listen ADDR:PORT]... [--tls-dir DIR] [--tls-name NAME]...\n    \
         [--download-base URL] [--files DIR] [--state-file FILE]\n    \
         [--deployment-group PROJECT/NAME]... [--environment PROJECT/NAME]...\n  \
         azure-sim make-tls --dir DIR [--tls-name NAME]...\n  \
         azure-sim fake-listener --root DIR --agent-version V -- ARGS"
    );
    std::process::exit(2);
}

/// `azure-sim serve …` or `azure-sim fake-listener …`; copied into a Windows package as
/// `bin\Agent.Listener.exe`, the fake listener itself (the root is the exe's parent's parent, the
/// version is in `bin\sim-version.txt`).
pub fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let exe = std::env::current_exe().unwrap_or_default();
    let stem = exe
        .file_stem()
        .map(|s| s.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    if stem == "az" {
        std::process::exit(crate::fake_az::main(&args));
    }
    if stem == "agent.listener" {
        let bin = exe.parent().unwrap_or(std::path::Path::new("."));
        let root = bin.parent().unwrap_or(bin).display().to_string();
        let version = fs_err::read_to_string(bin.join("sim-version.txt")).unwrap_or_default();
        let mut full = vec![
            "--root".to_owned(),
            root,
            "--agent-version".to_owned(),
            version.trim().to_owned(),
            "--".to_owned(),
        ];
        full.extend(args);
        std::process::exit(crate::listener::main(&full));
    }
    match args.first().map(String::as_str) {
        Some("fake-listener") => std::process::exit(crate::listener::main(&args[1..])),
        Some("serve") => serve(&args[1..]),
        Some("make-tls") => make_tls(&args[1..]),
        _ => usage(),
    }
}

/// `make-tls --dir DIR [--tls-name NAME]...`: the test CA and a server certificate for the names,
/// made ahead (the booted-VM test puts the CA into the guest's trust store before the simulator
/// runs there, then `serve --tls-dir DIR` uses them).
fn make_tls(args: &[String]) {
    let mut dir = None;
    let mut names = vec![];
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().cloned().unwrap_or_else(|| usage());
        match a.as_str() {
            "--dir" => dir = Some(PathBuf::from(value())),
            "--tls-name" => names.push(value()),
            _ => usage(),
        }
    }
    let dir = dir.unwrap_or_else(|| usage());
    if let Err(e) = crate::tls::load_or_make(&dir, &names) {
        eprintln!("azure-sim: {e}");
        std::process::exit(1);
    }
}

fn serve(args: &[String]) {
    let mut port = 0u16;
    let mut listen: Vec<std::net::SocketAddr> = vec![];
    let mut tls_listen: Vec<std::net::SocketAddr> = vec![];
    let mut tls_dir = None;
    let mut tls_names = vec![];
    let mut download_base = None;
    let mut files_dir = None;
    let mut state_file = None;
    let mut groups = vec![];
    let mut environments = vec![];
    let mut work_dir = std::env::temp_dir().join("azure-sim");
    let mut package_mb = None;
    let mut package_files = None;
    let mut throttle = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().cloned().unwrap_or_else(|| usage());
        match a.as_str() {
            "--port" => port = value().parse().unwrap_or_else(|_| usage()),
            "--work-dir" => work_dir = PathBuf::from(value()),
            "--package-mb" => package_mb = Some(value().parse::<u64>().unwrap_or_else(|_| usage())),
            "--package-files" => {
                package_files = Some(value().parse::<u32>().unwrap_or_else(|_| usage()))
            }
            "--throttle-mbps" => {
                throttle = Some(value().parse::<f64>().unwrap_or_else(|_| usage()))
            }
            "--listen" => listen.push(value().parse().unwrap_or_else(|_| usage())),
            "--tls-listen" => tls_listen.push(value().parse().unwrap_or_else(|_| usage())),
            "--tls-dir" => tls_dir = Some(PathBuf::from(value())),
            "--tls-name" => tls_names.push(value()),
            "--download-base" => download_base = Some(value()),
            "--files" => files_dir = Some(PathBuf::from(value())),
            "--state-file" => state_file = Some(PathBuf::from(value())),
            "--deployment-group" => groups.push(project_and_name(&value())),
            "--environment" => environments.push(project_and_name(&value())),
            _ => usage(),
        }
    }
    let exe = std::env::current_exe().expect("own path");
    let _ = fs_err::create_dir_all(&work_dir);
    let mut config = SimConfig::standard(&exe, &work_dir);
    if let Some(mb) = package_mb {
        config.package.filler_bytes = mb * 1_000_000;
    }
    if let Some(n) = package_files {
        config.package.filler_files = n;
    }
    config.throttle = throttle.map(|mbps| (mbps * 1_000_000.0) as u64);
    config.tls_dir = tls_dir;
    config.tls_names = tls_names;
    config.download_base = download_base;
    config.files_dir = files_dir;
    config.state_file = state_file.clone();
    for (project, name) in groups {
        add_deployment_group(&mut config, &project, &name);
    }
    for (project, name) in environments {
        add_environment(&mut config, &project, &name);
    }
    if listen.is_empty() {
        listen.push(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    }
    let sim = Simulator::start_on(config, &listen, &tls_listen).unwrap_or_else(|e| {
        eprintln!("azure-sim: {e}");
        std::process::exit(1);
    });
    // Data for scripts on stdout, one KEY=VALUE per line.
    for (k, v) in sim.client_env() {
        println!("{k}={v}");
    }
    println!("SIM_ORG_URL={}", sim.org_url());
    println!("SIM_SYSTEMD_DIR={}", sim.systemd_dir().display());
    println!("SIM_PACKAGE_SHA256={}", sim.package.sha256);
    println!("SIM_PACKAGE_BYTES={}", sim.package.size);
    println!("SIM_PACKAGE_PATH={}", sim.package.path.display());
    println!("SIM_READY=1");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    eprintln!("azure-sim: serving on {} (Ctrl-C to stop)", sim.base_url());
    wait_for_stop();
    // What the last tenth of a second changed, kept before the machine powers off.
    if let Some(path) = state_file {
        let kept = crate::Persisted::of(&sim.state());
        if let Err(e) = kept.save(&path) {
            eprintln!(
                "azure-sim: cannot keep the state in {}: {e}",
                path.display()
            );
        }
    }
    std::process::exit(0);
}

/// `PROJECT/NAME` (`--deployment-group`, `--environment`).
fn project_and_name(v: &str) -> (String, String) {
    match v.split_once('/') {
        Some((p, n)) if !p.is_empty() && !n.is_empty() => (p.to_owned(), n.to_owned()),
        _ => usage(),
    }
}

/// The project of this name, added (with a made-up GUID) if the world has none.
fn ensure_project(config: &mut SimConfig, name: &str) -> crate::ProjectSpec {
    if let Some(p) = config
        .projects
        .iter()
        .find(|p| p.name.eq_ignore_ascii_case(name))
    {
        return p.clone();
    }
    let p = crate::ProjectSpec {
        id: format!(
            "7a1b2c3d-0000-4000-8000-{:012x}",
            config.projects.len() + 0xa1
        ),
        name: name.to_owned(),
    };
    config.projects.push(p.clone());
    p
}

/// A pool id no pool, deployment group or environment uses yet.
fn free_pool_id(config: &SimConfig) -> u64 {
    let used = config
        .pools
        .iter()
        .map(|p| p.id)
        .chain(config.deployment_groups.iter().map(|g| g.pool_id))
        .chain(config.environments.iter().map(|e| e.pool_id));
    used.max().unwrap_or(100).max(100) + 1
}

/// `--deployment-group PROJECT/NAME`: a group whose Administrators are the VM's identities that
/// administer `Default`.
fn add_deployment_group(config: &mut SimConfig, project: &str, name: &str) {
    let project = ensure_project(config, project);
    let id = config
        .deployment_groups
        .iter()
        .map(|g| g.id)
        .max()
        .unwrap_or(0)
        + 1;
    let pool_id = free_pool_id(config);
    let admins = [crate::ids::SYSTEM_OBJECT, crate::ids::UAMI_OBJECT];
    config
        .deployment_groups
        .push(crate::DeploymentGroupSpec::new(
            id,
            &project.name,
            name,
            pool_id,
            &admins,
        ));
}

/// `--environment PROJECT/NAME`, like [`add_deployment_group`].
fn add_environment(config: &mut SimConfig, project: &str, name: &str) {
    let project = ensure_project(config, project);
    let id = config.environments.iter().map(|e| e.id).max().unwrap_or(0) + 1;
    let pool_id = free_pool_id(config);
    let admins = [crate::ids::SYSTEM_OBJECT, crate::ids::UAMI_OBJECT];
    config.environments.push(crate::EnvironmentSpec::new(
        id, &project, name, pool_id, &admins,
    ));
}

/// Until SIGTERM or SIGINT (Ctrl-C).
fn wait_for_stop() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("signal runtime");
    rt.block_on(async {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            if let Ok(mut term) = signal(SignalKind::terminate()) {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
                return;
            }
        }
        let _ = tokio::signal::ctrl_c().await;
    });
}
