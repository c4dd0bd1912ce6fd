#!/usr/bin/env bash
# Installs what the integration tests need, idempotently: a Python virtual
# environment with the OpenTelemetry SDK (and moto, DuckDB, the Prometheus
# parser, Playwright, and deploy/'s linters: helm, hadolint, kubernetes-validate)
# under target/test-env, and Debian's Chromium for the
# dashboard test. Safe to run again; does nothing when all is current.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
env_dir="$root/target/test-env"
venv="$env_dir/venv"
# The tests' packages, and deploy/'s linters (deploy/lint.sh).
reqs=("$root/tests/sdk/requirements.txt" "$root/deploy/requirements.txt")
stamp="$venv/.requirements"

if [ ! -x "$venv/bin/python" ]; then
  mkdir -p "$env_dir"
  python3 -m venv "$venv"
fi
if ! cat "${reqs[@]}" | cmp -s - "$stamp"; then
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    -r "${reqs[0]}" -r "${reqs[1]}"
  cat "${reqs[@]}" > "$stamp"
fi
# The dashboard test drives a real browser: Debian's Chromium (Playwright's
# own browser download is not used).
if ! command -v chromium >/dev/null 2>&1; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y -q chromium >/dev/null \
    || { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q chromium >/dev/null; }
fi
echo "test environment ready: $venv, $(chromium --version 2>/dev/null)"
