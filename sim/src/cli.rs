//! The `azure-sim` program: the simulated Azure on loopback, for the README demo and the benchmark;
//! also the fake agent package's `Agent.Listener` (`azure-sim fake-listener …`).

use std::path::PathBuf;

use crate::{SimConfig, Simulator};

fn usage() -> ! {
    eprintln!(
        "usage:\n  azure-sim serve [--port N] [--work-dir DIR] [--package-mb N] [--package-files N] [--throttle-mbps N]\n  \
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
        _ => usage(),
    }
}

fn serve(args: &[String]) {
    let mut port = 0u16;
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
    let sim = Simulator::start(config, port).unwrap_or_else(|e| {
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
    loop {
        std::thread::park();
    }
}
