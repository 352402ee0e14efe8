#!/usr/bin/python3
"""The booted-VM test's checks, run inside the guest by vmtest-probe.service at every boot.

scripts/vm-test.sh boots the guest three times; the phase is on the kernel command line
(`vmtest.phase=`). Each check prints one `VMTEST PASS|FAIL <what>: <detail>` line to the serial
console, which the host reads back; `VMTEST DONE <phase>` ends a phase, then the guest powers off.

Everything the probe learns about the server it asks the way an operator would: over HTTPS to
dev.azure.com (the simulator, with a certificate from the private test CA the image carries as a
file) with a token from IMDS (169.254.169.254), plus the simulator's kept state for what only the
server knows (requests). Whether the system trust store holds that CA (install --ca-file puts it
there, remove takes it out) is asked of the system's own OpenSSL, through Python's default context.
"""

import glob
import json
import os
import pwd
import re
import socket
import ssl
import stat
import subprocess
import sys
import time
import urllib.request

ORG = "https://dev.azure.com/myorg"
POOL_ID = 1
AGENT_USER = "azpagent"
STATE = "/var/lib/azure-sim/state.json"
KEEP = "/var/lib/vmtest"
CA_FILE = "/etc/ssl/corp/corp-root-ca.pem"  # scripts/vm-test.sh, CA_FILE in the user-data
CA_CONTEXT = ssl.create_default_context(cafile=CA_FILE)
failures = 0


def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def check(what, ok, detail=""):
    global failures
    if not ok:
        failures += 1
    say(f"VMTEST {'PASS' if ok else 'FAIL'} {what}: {detail}")
    return ok


def sh(*argv, timeout=120):
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    return p.returncode, (p.stdout + p.stderr).strip()


def token():
    req = urllib.request.Request(
        "http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01"
        "&resource=499b84ac-1321-427f-aa17-267ca6975798",
        headers={"Metadata": "true"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)["access_token"]


def ado(method, path):
    req = urllib.request.Request(
        f"{ORG}/_apis/{path}",
        method=method,
        headers={"Authorization": "Bearer " + token(), "Accept": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10, context=CA_CONTEXT) as r:
        body = r.read()
        return json.loads(body) if body else None


def agents():
    return ado("GET", f"distributedtask/pools/{POOL_ID}/agents?api-version=7.1")["value"]


def online_agent(wait=90):
    """The pool's one agent once it is online (the listener reports in after the unit starts)."""
    deadline = time.time() + wait
    found = []
    while time.time() < deadline:
        found = agents()
        if len(found) == 1 and found[0].get("status") == "online":
            return found[0], found
        time.sleep(1)
    return None, found


def kept_state():
    time.sleep(0.5)  # the simulator writes its state every 100 ms
    with open(STATE) as f:
        return json.load(f)


def registrations(state):
    path = f"/myorg/_apis/distributedtask/pools/{POOL_ID}/agents"
    return sum(1 for r in state["requests"] if r["method"] == "POST" and r["path"] == path)


def pem_body(text):
    return "".join(l for l in text.splitlines() if l and not l.startswith("-----"))


def system_store_verifies():
    """Whether the system's OpenSSL (its default store, no extra CA) accepts dev.azure.com."""
    try:
        with socket.create_connection(("dev.azure.com", 443), timeout=10) as raw:
            with ssl.create_default_context().wrap_socket(raw, server_hostname="dev.azure.com"):
                return True, "verified"
    except ssl.SSLCertVerificationError as e:
        return False, e.verify_message
    except OSError as e:
        return False, repr(e)


def store_checks(expect):
    """The private CA in the system trust store (expect=True) or not: our file, the bundle
    update-ca-certificates made, and the system's OpenSSL verifying the server."""
    with open(CA_FILE) as f:
        ca = pem_body(f.read())
    ours = glob.glob("/usr/local/share/ca-certificates/agent-bootstrap-*.crt")
    with open("/etc/ssl/certs/ca-certificates.crt") as f:
        in_bundle = ca in pem_body(f.read())
    verified, why = system_store_verifies()
    if expect:
        held = False
        for path in ours:
            with open(path) as f:
                held |= pem_body(f.read()) == ca
        check("install --ca-file put the CA into the system store", len(ours) == 1 and held,
              " ".join(ours))
        check("update-ca-certificates put it into the bundle", in_bundle, "")
        check("the system's OpenSSL verifies the server", verified, why)
    else:
        check("remove took our CA file out of the store", ours == [], " ".join(ours))
        check("the bundle no longer holds the CA", not in_bundle, "")
        check("the system's OpenSSL refuses the server again", not verified, why)


def unit_files(pattern):
    return sorted(glob.glob(f"/etc/systemd/system/{pattern}"))


def boot_unit():
    units = [u for u in unit_files("agent-bootstrap-*.service") if "-watch-" not in u]
    return units[0] if len(units) == 1 else None


def agent_unit_checks():
    units = unit_files("vsts.agent.*.service")
    if not check("one agent unit", len(units) == 1, " ".join(units)):
        return
    name = os.path.basename(units[0])
    deadline = time.time() + 30
    while True:
        _, active = sh("systemctl", "is-active", name)
        if active == "active" or time.time() > deadline:
            break
        time.sleep(1)
    check("real systemd runs the agent's unit", active == "active", f"{name} is {active}")
    _, cgroup = sh("systemctl", "show", "-P", "ControlGroup", name)
    try:
        with open(f"/sys/fs/cgroup{cgroup}/cgroup.procs") as f:
            pids = [int(p) for p in f.read().split()]
    except OSError as e:
        pids = []
        check("the agent unit's processes", False, str(e))
    users, listener = set(), False
    for pid in pids:
        try:
            users.add(pwd.getpwuid(os.stat(f"/proc/{pid}").st_uid).pw_name)
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
            listener |= b"Agent.Listener" in cmdline or b"fake-listener" in cmdline
        except (OSError, KeyError):
            pass
    check(
        "the agent runs as the agent user",
        bool(pids) and listener and users == {AGENT_USER},
        f"{len(pids)} processes (listener among them: {listener}), users {sorted(users)}",
    )


def boot_unit_ran():
    unit = boot_unit()
    if not check("one boot unit", unit is not None, " ".join(unit_files("agent-bootstrap-*"))):
        return
    name = os.path.basename(unit)
    _, state = sh("systemctl", "show", "-P", "ActiveState", name)
    _, result = sh("systemctl", "show", "-P", "Result", name)
    check("the boot unit reconciled at boot", state == "active" and result == "success",
          f"{name}: {state}, {result}")


def phase_install():
    rc, out = sh("cloud-init", "status", "--long")
    check("cloud-init ran the user-data", "status: done" in out, out.replace("\n", " | "))
    rc, out = sh("dpkg-query", "-W", "-f", "${Status} ${Version}", "agent-bootstrap")
    check("dpkg installed our .deb", rc == 0 and out.startswith("install ok installed"), out)
    agent, found = online_agent()
    check("the agent is online on the server", agent is not None, json.dumps(found)[:300])
    state = kept_state()
    check("one registration", registrations(state) == 1, str(registrations(state)))
    imds = [r for r in state["requests"] if r["path"].startswith("/metadata/identity")]
    check("the token came from IMDS at 169.254.169.254", bool(imds), f"{len(imds)} requests")
    agent_unit_checks()
    store_checks(True)
    rc, out = sh("agent-bootstrap", "status")
    check("status names the CA it added", rc == 0 and "trusted CA:" in out,
          out[-400:].replace("\n", " | "))
    unit = boot_unit()
    if check("one boot unit", unit is not None, " ".join(unit_files("agent-bootstrap-*"))):
        rc, out = sh("systemd-analyze", "verify", unit)
        check("the boot unit passes systemd-analyze verify", rc == 0, out.replace("\n", " | "))
        _, enabled = sh("systemctl", "is-enabled", os.path.basename(unit))
        check("the boot unit is enabled", enabled == "enabled", enabled)
        with open(unit) as f:
            text = f.read()
        check("no test override in the boot unit",
              not re.search(r"AGENT_BOOTSTRAP_TEST|AZURE_POD_IDENTITY|UNIT_DIR", text), text[:200])
    os.makedirs(KEEP, exist_ok=True)
    with open(f"{KEEP}/downloads", "w") as f:
        f.write(str(state["package_downloads"]))


def phase_reboot():
    boot_unit_ran()
    agent, found = online_agent()
    check("the agent is online after the reboot", agent is not None, json.dumps(found)[:300])
    state = kept_state()
    check("still one registration", registrations(state) == 1, str(registrations(state)))
    with open(f"{KEEP}/downloads") as f:
        before = int(f.read())
    check("nothing reinstalled", state["package_downloads"] == before,
          f"{before} → {state['package_downloads']} package downloads")
    agent_unit_checks()
    store_checks(True)
    if agent is not None:
        ado("DELETE", f"distributedtask/pools/{POOL_ID}/agents/{agent['id']}?api-version=7.1")
        check("the agent is deleted on the server", agents() == [], "")
        with open(f"{KEEP}/deleted-id", "w") as f:
            f.write(str(agent["id"]))


def phase_deleted():
    boot_unit_ran()
    agent, found = online_agent()
    check("re-registered and online after the reboot", agent is not None, json.dumps(found)[:300])
    with open(f"{KEEP}/deleted-id") as f:
        deleted = int(f.read())
    check("a new registration", agent is not None and agent["id"] != deleted,
          f"deleted {deleted}, now {agent and agent['id']}")
    state = kept_state()
    check("two registrations in all", registrations(state) == 2, str(registrations(state)))
    agent_unit_checks()

    rc, out = sh("agent-bootstrap", "remove", timeout=300)
    check("agent-bootstrap remove", rc == 0, out[-400:].replace("\n", " | "))
    check("no unit left", unit_files("vsts.agent.*") == [] and unit_files("agent-bootstrap-*") == [],
          " ".join(unit_files("vsts.agent.*") + unit_files("agent-bootstrap-*")))
    _, listed = sh("systemctl", "list-units", "--all", "--plain", "--no-legend", "vsts.agent.*")
    check("systemd knows no agent unit", listed == "", listed)
    uid = pwd.getpwnam(AGENT_USER).pw_uid
    left = [p for p in os.listdir("/proc") if p.isdigit() and os.stat(f"/proc/{p}").st_uid == uid]
    check("no process of the agent user", left == [], " ".join(left))
    check("deregistered on the server", agents() == [], json.dumps(agents())[:300])
    store_checks(False)

    tokens = [t for t in kept_state()["tokens"] if len(t) >= 16]
    check("the simulator issued tokens", bool(tokens), str(len(tokens)))
    # Canaries first, so the searches below are shown able to find what they look for: a line
    # logged to the journal, and a file holding an issued token.
    canary = "vmtest-canary-%d" % os.getpid()
    sh("logger", "-t", "vmtest", canary)
    with open("/var/tmp/vmtest-canary", "w") as f:
        f.write(tokens[0] if tokens else canary)
    time.sleep(1)
    _, journal = sh("journalctl", "--no-pager", "-o", "cat", timeout=300)
    check("the journal search finds a line logged now", canary in journal, "")
    leaks = [t[:12] for t in tokens if t in journal]
    check("no token in the journal", not leaks, " ".join(leaks))
    found, scanned = [], 0
    # Everywhere a process could have written but /usr, which only dpkg writes (the simulator's own
    # state holds the tokens it issued; the journal was searched above, through journalctl).
    skip = ("/var/lib/azure-sim", "/var/log/journal", "/var/cache/apt", "/var/lib/dpkg")
    needles = [t.encode() for t in tokens]
    for top in ("/etc", "/home", "/opt", "/root", "/run", "/srv", "/tmp", "/usr/local", "/var"):
        for d, dirs, files in os.walk(top):
            dirs[:] = [x for x in dirs if not os.path.join(d, x).startswith(skip)]
            for name in files:
                path = os.path.join(d, name)
                try:
                    st = os.lstat(path)
                    # Regular files only: a FIFO in /run would block the read for ever.
                    if not stat.S_ISREG(st.st_mode) or st.st_size > 64 << 20:
                        continue
                    with open(path, "rb") as f:
                        data = f.read()
                except OSError:
                    continue
                scanned += 1
                if any(n in data for n in needles):
                    found.append(path)
    check("the file search finds a token planted for it", "/var/tmp/vmtest-canary" in found, "")
    os.unlink("/var/tmp/vmtest-canary")
    found = [p for p in found if p != "/var/tmp/vmtest-canary"]
    check("no token in any file", not found, f"{scanned} files searched; found in: " + " ".join(found[:10]))


def main():
    with open("/proc/cmdline") as f:
        m = re.search(r"vmtest\.phase=(\w+)", f.read())
    phase = m.group(1) if m else "none"
    say(f"VMTEST BEGIN {phase}")
    rc, out = sh("systemctl", "is-system-running", "--wait", timeout=600)
    say(f"VMTEST INFO system {out}")
    _, blame = sh("systemd-analyze", "blame")
    say("VMTEST INFO slowest units: " + " | ".join(blame.splitlines()[:8]))
    if out != "running":
        _, failed = sh("systemctl", "--failed", "--no-legend", "--plain")
        say(f"VMTEST INFO failed units: {failed}")
    try:
        {"install": phase_install, "reboot": phase_reboot, "deleted": phase_deleted}[phase]()
    except Exception as e:  # a probe error is a failed check, with what happened
        check(f"the {phase} phase ran to its end", False, repr(e))
    if failures:
        _, journal = sh("journalctl", "-b", "--no-pager", "-n", "150")
        for line in journal.splitlines():
            say("VMTEST LOG " + line)
    say(f"VMTEST DONE {phase} {failures}")
    sh("systemctl", "poweroff", "--no-block")


if __name__ == "__main__":
    main()
