#!/usr/bin/env bash
# Benchmark (not a test): see scripts/bench.py. Run as root.
exec python3 "$(dirname "$0")/bench.py" "$@"
