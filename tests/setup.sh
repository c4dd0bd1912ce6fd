#!/usr/bin/env bash
# Installs what the integration tests need, idempotently: a Python virtual
# environment with the OpenTelemetry SDK under target/test-env. Safe to run
# again; does nothing when the environment is already current.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
env_dir="$root/target/test-env"
venv="$env_dir/venv"
req="$root/tests/sdk/requirements.txt"
stamp="$venv/.requirements"

if [ ! -x "$venv/bin/python" ]; then
  mkdir -p "$env_dir"
  python3 -m venv "$venv"
fi
if ! cmp -s "$req" "$stamp"; then
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
  cp "$req" "$stamp"
fi
echo "test environment ready: $venv"
