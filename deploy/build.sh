#!/usr/bin/env bash
# Builds the homeostat binary: the one build command the Dockerfile and CI
# share. CI runs it on the dev profile (`deploy/build.sh dev`), the image on
# the release profile (the default). `--locked`: Cargo.lock decides every
# dependency's version, as in the tests.
set -euo pipefail
profile="${1:-release}"
cargo build --locked --profile "$profile" --bin homeostat
