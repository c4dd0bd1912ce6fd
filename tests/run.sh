#!/usr/bin/env bash
# The whole test suite: installs what the tests need (tests/setup.sh), then
# runs every test, including the benches once each in test mode, then lints
# deploy/ (deploy/lint.sh).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
tests/setup.sh
export HOMEOSTAT_TEST_PYTHON="$root/target/test-env/venv/bin/python"
cargo test --all-targets "$@"
# deploy/: the image's build command, then every manifest linted and the
# configuration and rules they carry checked by the binary just built.
deploy/build.sh dev
deploy/lint.sh
