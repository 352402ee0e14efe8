#!/usr/bin/env bash
# The real install flow, end to end, against the project's simulated Azure on loopback.
#
#   scripts/demo.sh            # as root: the dedicated 'azpagent' user and the (recorded) service
#   scripts/demo.sh            # as another user: configures as that user, --no-service
#
# Nothing leaves this machine: IMDS, Azure DevOps and the package server are `azure-sim` on
# 127.0.0.1, and the agent's systemctl calls (and the boot unit) go to a recorder in the demo
# directory, never to this machine's systemd.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --quiet --bins --example azure-sim
BIN=target/debug

DEMO=$(mktemp -d /tmp/agent-bootstrap-demo.XXXXXX)
chmod 755 "$DEMO"
cleanup() { if [ -n "${SIM_PID:-}" ]; then kill "$SIM_PID" 2>/dev/null || true; fi; }
trap cleanup EXIT

# The agent user must be able to run the simulator's fake listener.
cp "$BIN/examples/azure-sim" "$DEMO/azure-sim" && chmod 755 "$DEMO/azure-sim"
"$DEMO/azure-sim" serve --work-dir "$DEMO/sim" > "$DEMO/sim.env" 2> "$DEMO/sim.log" &
SIM_PID=$!
for _ in $(seq 1 100); do grep -q SIM_READY "$DEMO/sim.env" 2>/dev/null && break; sleep 0.1; done
grep -q SIM_READY "$DEMO/sim.env" || { cat "$DEMO/sim.log"; exit 1; }
set -a
# shellcheck source=/dev/null
. "$DEMO/sim.env"
set +a

export AGENT_BOOTSTRAP_STATE_DIR="$DEMO/state" AGENT_BOOTSTRAP_CACHE_DIR="$DEMO/cache"
export PATH="$SIM_SYSTEMD_DIR/bin:$PATH" NO_PROXY=127.0.0.1,localhost
EXTRA=()
if [ "$(id -u)" -ne 0 ]; then EXTRA=(--no-service); fi

echo "== agent-bootstrap doctor (which identity, may it register agents in the pool?)"
"$BIN/agent-bootstrap" doctor --url "$SIM_ORG_URL" --pool Default 2>/dev/null

echo
echo "== agent-bootstrap install (simulated organization at $SIM_ORG_URL)"
"$BIN/agent-bootstrap" install --url "$SIM_ORG_URL" --pool Default --agent-name demo-agent \
    --agent-dir "$DEMO/agent" "${EXTRA[@]}"

echo
echo "== the agent's own settings file ($DEMO/agent/.agent)"
sed '1s/^\xEF\xBB\xBF//' "$DEMO/agent/.agent"
echo
if [ -f "$SIM_SYSTEMD_DIR/systemctl.log" ]; then
    echo "== systemctl calls agent-bootstrap made (recorded, not this machine's systemd)"
    cat "$SIM_SYSTEMD_DIR/systemctl.log"
fi

echo
echo "== running it again changes nothing"
"$BIN/agent-bootstrap" install --url "$SIM_ORG_URL" --pool Default --agent-name demo-agent \
    --agent-dir "$DEMO/agent" "${EXTRA[@]}" 2>/dev/null

echo
echo "== agent-bootstrap reconcile (what the boot unit runs at every boot)"
"$BIN/agent-bootstrap" reconcile --agent-dir "$DEMO/agent" 2>/dev/null

echo
echo "== agent-bootstrap status"
"$BIN/agent-bootstrap" status --agent-dir "$DEMO/agent" 2>/dev/null

echo
echo "== agent-bootstrap token | cut -c1-40"
"$BIN/agent-bootstrap" token | cut -c1-40
echo
echo "demo files are in $DEMO"
