#!/usr/bin/env python3
"""Benchmark: agent-bootstrap install vs. the documented shell ways, against the simulator.

Installs a ~150 MB, ~3000-file agent-like package served by azure-sim on loopback, throttled to
50 MB/s, three ways in the same run, each from an empty directory and cold cache:

  ours        agent-bootstrap install --no-service (download, SHA-256, extract, configure)
  ms-doc      Microsoft's documented way: curl URL | tar -xz, then ./config.sh (no verification)
  verified    the careful sequential way: curl -o, sha256sum -c, tar -xzf, then ./config.sh

Reports the median wall time of each, the ratios, and agent-bootstrap's peak RSS. The shell ways run
as the agent user, as the documentation has users do; agent-bootstrap runs as root, as it is meant
to (it also creates the user and hands it the files). Run as root: scripts/bench.sh [--rounds N].
"""

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def timed(cmd, env=None, log=None):
    """Wall seconds and peak RSS (KiB) of one command (its own process tree); with `log` (a
    list), the wall-clock start and its stderr are appended to it."""
    start = time.monotonic()
    started_at = time.time()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = proc.stderr.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - start
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        sys.exit(f"command failed ({code}): {' '.join(cmd)}\n{err}")
    if log is not None:
        log.append((started_at, wall, err))
    return wall, usage.ru_maxrss


# The log lines (`--log-format json`) that end each phase of an install, in order.
MILESTONES = (
    ("token, preflight, packages API, agent lookup", "fetching the agent package"),
    ("download, SHA-256, extraction, dependency check, swap into place", "configuring the agent"),
    ("config.sh (the agent's own configuration)", "saved settings for later runs"),
)


def phases(started_at, wall, stderr):
    """Seconds of each install phase, from the log's timestamps; the rest is after the settings
    were saved (service and boot units, none in the benchmark) and the process's exit."""
    import datetime
    import json
    at = {}
    for line in stderr.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        msg = event.get("message") or event.get("fields", {}).get("message", "")
        ts = event.get("timestamp")
        if msg and ts and msg not in at:
            at[msg] = datetime.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
    out, prev = [], started_at
    for label, msg in MILESTONES:
        if msg not in at:
            return None
        out.append((label, at[msg] - prev))
        prev = at[msg]
    out.append(("the rest, and exit", started_at + wall - prev))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--package-mb", type=int, default=290, help="uncompressed filler (about half compressible)")
    ap.add_argument("--files", type=int, default=3000)
    ap.add_argument("--mbps", type=float, default=50.0)
    ap.add_argument("--work", default="/tmp/agent-bootstrap-bench")
    ap.add_argument("--binary", help="agent-bootstrap to measure (e.g. the static musl build, "
                    "target/x86_64-unknown-linux-musl/release/agent-bootstrap) instead of building "
                    "target/release/agent-bootstrap")
    ap.add_argument("--sim", help="azure-sim program to serve the package [default: build "
                    "target/release/examples/azure-sim]")
    ap.add_argument("--kill-runs", type=int, metavar="N",
                    help="instead of the benchmark: the kill-anywhere property test "
                    "(tests/kill_anywhere.rs) with N kills per command (CI runs 3); "
                    "AGENT_BOOTSTRAP_KILL_SEED repeats a seed")
    args = ap.parse_args()
    if args.kill_runs is not None:
        env = dict(os.environ, AGENT_BOOTSTRAP_KILL_RUNS=str(args.kill_runs))
        sys.exit(subprocess.call(["cargo", "test", "--test", "kill_anywhere", "--", "--nocapture"],
                                 cwd=ROOT, env=env))
    if os.geteuid() != 0:
        sys.exit("run as root (the benchmark creates the agent user and runs config.sh as it)")

    build = [] if args.binary else ["--bins"]
    build += [] if args.sim else ["--example", "azure-sim"]
    if build:
        sh(["cargo", "build", "--quiet", "--release", *build], cwd=ROOT)
    work = args.work
    os.makedirs(work, exist_ok=True)
    os.chmod(work, 0o755)
    sim_bin = os.path.join(work, "azure-sim")
    shutil.copy(args.sim or os.path.join(ROOT, "target/release/examples/azure-sim"), sim_bin)
    os.chmod(sim_bin, 0o755)
    ours = os.path.abspath(args.binary) if args.binary else os.path.join(ROOT, "target/release/agent-bootstrap")

    sim, env_vars = start_sim(sim_bin, os.path.join(work, "sim"), args.package_mb, args.files, args.mbps)
    small, small_vars = start_sim(sim_bin, os.path.join(work, "sim-small"), 2, 40, None)
    try:
        run(args, work, ours, env_vars, small_vars)
    finally:
        sim.terminate()
        small.terminate()


def start_sim(sim_bin, work_dir, mb, files, mbps):
    cmd = [sim_bin, "serve", "--work-dir", work_dir, "--package-mb", str(mb), "--package-files", str(files)]
    if mbps:
        cmd += ["--throttle-mbps", str(mbps)]
    sim = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    env_vars = {}
    for line in sim.stdout:
        k, _, v = line.strip().partition("=")
        env_vars[k] = v
        if k == "SIM_READY":
            break
    return sim, env_vars


def run(args, work, ours, sim, small):
    env = dict(os.environ)
    for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        env.pop(k, None)
    env.update({
        "AZURE_POD_IDENTITY_AUTHORITY_HOST": sim["AZURE_POD_IDENTITY_AUTHORITY_HOST"],
        "AGENT_BOOTSTRAP_UNIT_DIR": sim["AGENT_BOOTSTRAP_UNIT_DIR"],
        "AGENT_BOOTSTRAP_STATE_DIR": os.path.join(work, "state"),
        "NO_PROXY": "127.0.0.1,localhost",
        "PATH": sim["SIM_SYSTEMD_DIR"] + "/bin:" + env.get("PATH", ""),
    })
    org = sim["SIM_ORG_URL"]
    size_mb = int(sim["SIM_PACKAGE_BYTES"]) / 1e6
    url = f"{org.rsplit('/', 1)[0]}/_download/agent/4.264.2/vsts-agent-linux-x64-4.264.2.tar.gz"
    sha = sim["SIM_PACKAGE_SHA256"]
    token = subprocess.run([ours, "token"], env=env, check=True, capture_output=True, text=True).stdout.strip()
    # Make sure the agent user exists (agent-bootstrap creates it on first install).
    subprocess.run(["useradd", "--system", "--create-home", "azpagent"], stderr=subprocess.DEVNULL)

    files = int(sim.get("SIM_PACKAGE_FILES", args.files))
    print(f"package: {size_mb:.0f} MB compressed, ~{files} files, link throttled to {args.mbps:.0f} MB/s, "
          f"{args.rounds} rounds, cold cache each time")
    results = {"ours": [], "ms-doc": [], "verified": [], "download-only": []}
    rss = []
    logs = []
    cfg = "./config.sh --unattended --url {org} --auth pat --pool Default --agent {name} --replace --acceptTeeEula >/dev/null"
    for i in range(args.rounds):
        for method in ("download-only", "ours", "ms-doc", "verified"):
            d = os.path.join(work, f"agent-{method}-{i}")
            shutil.rmtree(d, ignore_errors=True)
            cache = os.path.join(work, f"cache-{method}-{i}")
            shutil.rmtree(cache, ignore_errors=True)
            name = f"bench-{method}-{i}-{int(time.time())}"
            if method == "ours":
                e = dict(env, AGENT_BOOTSTRAP_CACHE_DIR=cache)
                wall, maxrss = timed([ours, "install", "--url", org, "--agent-name", name, "--agent-dir", d,
                                      "--no-service", "--no-boot", "--log-format", "json"], env=e, log=logs)
                rss.append(maxrss)
            else:
                os.makedirs(d)
                shutil.chown(d, "azpagent", "azpagent")
                if method == "download-only":
                    script = f"curl -fsS -o /dev/null {url}"
                elif method == "ms-doc":
                    script = f"cd {d} && curl -fsSL {url} | tar -xz && " + cfg.format(org=org, name=name)
                else:
                    script = (f"cd {d} && curl -fsS -o pkg.tar.gz {url} && echo '{sha}  pkg.tar.gz' | sha256sum -c --quiet"
                              f" && tar -xzf pkg.tar.gz && rm pkg.tar.gz && " + cfg.format(org=org, name=name))
                e = dict(env, VSTS_AGENT_INPUT_TOKEN=token)
                wall, _ = timed(["runuser", "-u", "azpagent", "--", "bash", "-c", script], env=e)
            results[method].append(wall)
            shutil.rmtree(d, ignore_errors=True)
            shutil.rmtree(cache, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in results.items()}
    print()
    print("| method | median wall time | vs agent-bootstrap |")
    print("|---|---|---|")
    for k, label in (("ours", "agent-bootstrap install (verified, streamed)"),
                     ("ms-doc", "curl \\| tar -xz, then config.sh (unverified)"),
                     ("verified", "curl -o, sha256sum -c, tar -xzf, then config.sh"),
                     ("download-only", "curl -o /dev/null (the link alone)")):
        print(f"| {label} | {med[k]:.2f} s | {med[k] / med['ours']:.2f}x |")
    print()
    print(f"agent-bootstrap at {med['ours'] / med['ms-doc']:.2f}x of curl | tar (goal: at most 1.0x), "
          f"{med['ours'] / med['verified']:.2f}x of the verified sequential way, "
          f"{med['ours'] / med['download-only']:.2f}x of the bare link (goal: within 1.05x)")
    split = [p for p in (phases(*l) for l in logs) if p]
    if split:
        print()
        print("| where agent-bootstrap's time goes (median over rounds) | seconds | share |")
        print("|---|---|---|")
        for i, (label, _) in enumerate(split[0]):
            secs = statistics.median(p[i][1] for p in split)
            print(f"| {label} | {secs:.2f} | {secs / med['ours'] * 100:.0f} % |")
    # The same install of a 2 MB package: peak memory must not depend on the package size.
    d = os.path.join(work, "agent-small")
    shutil.rmtree(d, ignore_errors=True)
    e = dict(env, AZURE_POD_IDENTITY_AUTHORITY_HOST=small["AZURE_POD_IDENTITY_AUTHORITY_HOST"],
             AGENT_BOOTSTRAP_UNIT_DIR=small["AGENT_BOOTSTRAP_UNIT_DIR"],
             AGENT_BOOTSTRAP_CACHE_DIR=os.path.join(work, "cache-small"))
    _, small_rss = timed([ours, "install", "--url", small["SIM_ORG_URL"], "--agent-name", f"bench-small-{int(time.time())}",
                          "--agent-dir", d, "--no-service", "--no-boot"], env=e)
    shutil.rmtree(d, ignore_errors=True)
    shutil.rmtree(os.path.join(work, "cache-small"), ignore_errors=True)
    small_mb = int(small["SIM_PACKAGE_BYTES"]) / 1e6
    print()
    print(f"agent-bootstrap peak RSS: {max(rss) / 1024:.1f} MiB with the {size_mb:.0f} MB package "
          f"(max over {len(rss)} runs), {small_rss / 1024:.1f} MiB with a {small_mb:.1f} MB package")

    # reconcile on a healthy agent: what every boot costs.
    d = os.path.join(work, "agent-reconcile")
    shutil.rmtree(d, ignore_errors=True)
    e = dict(env, AGENT_BOOTSTRAP_CACHE_DIR=os.path.join(work, "cache-reconcile"))
    subprocess.run([ours, "install", "--url", org, "--agent-name", f"bench-reconcile-{int(time.time())}",
                    "--agent-dir", d], env=e, check=True, capture_output=True)
    stats_url = org.rsplit("/", 1)[0] + "/_sim/stats"
    import json
    import urllib.request
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    def stats():
        return json.load(opener.open(stats_url))
    times = []
    before = stats()
    n = 10
    for _ in range(n):
        wall, _ = timed([ours, "reconcile", "--agent-dir", d], env=e)
        times.append(wall)
    after = stats()
    print()
    print(f"reconcile on a healthy agent ({n} runs): median {statistics.median(times) * 1000:.0f} ms, "
          f"{(after['ado_requests'] - before['ado_requests']) / n:.0f} Azure DevOps request(s) and "
          f"{(after['imds_requests'] - before['imds_requests']) / n:.0f} IMDS requests per run")
    subprocess.run([ours, "remove", "--agent-dir", d, "--purge"], env=e, capture_output=True)


if __name__ == "__main__":
    main()
