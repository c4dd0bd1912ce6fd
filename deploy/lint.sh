#!/usr/bin/env bash
# Lints everything in deploy/ with the tools their projects ship (installed
# into the test venv by tests/setup.sh from deploy/requirements.txt):
# hadolint on the Dockerfile, yamllint and Kubernetes' own schemas on the
# manifests, helm lint and template on the chart (with its values.schema.json
# checked and enforced), and the binary itself on the configuration and
# rules the manifests carry. Run by .ci/run; needs a built binary
# (deploy/build.sh dev).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
tests/setup.sh >/dev/null
bin="$root/target/test-env/venv/bin"
export PATH="$bin:$PATH"
homeostat="${HOMEOSTAT_BIN:-$root/target/debug/homeostat}"
[ -x "$homeostat" ] || deploy/build.sh dev
chart=deploy/helm/homeostat
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

echo "== hadolint deploy/Dockerfile"
hadolint deploy/Dockerfile

echo "== yamllint"
yamllint --strict -d '{extends: default, rules: {line-length: {max: 120}, document-start: disable, comments: {min-spaces-from-content: 1}}}' \
  deploy/kubernetes deploy/collector "$chart/values.yaml" "$chart/ci" "$chart/Chart.yaml"

echo "== kubernetes-validate deploy/kubernetes"
kubernetes-validate --strict deploy/kubernetes/*.yaml

echo "== values.schema.json is a JSON Schema"
check-jsonschema --check-metaschema "$chart/values.schema.json"

echo "== helm lint"
helm lint --strict "$chart"
helm lint --strict "$chart" -f "$chart/ci/example-values.yaml"

echo "== helm template | kubernetes-validate"
helm template homeostat "$chart" -n homeostat -f "$chart/ci/example-values.yaml" > "$out/chart.yaml"
kubernetes-validate --strict "$out/chart.yaml"

echo "== the chart's schema refuses bad values"
for bad in "data=/var/lib/homeostat" "replicaCount=0" "cluster.lease=soon" "unknownKey=1"; do
  if helm template homeostat "$chart" --set "$bad" > /dev/null 2> "$out/err"; then
    echo "values.schema.json accepted --set $bad" >&2
    exit 1
  fi
  echo "refused --set $bad: $(grep -o 'values don.t meet.*\|- .*' "$out/err" | head -1)"
done

echo "== homeostat check on the manifests' configuration and rules; Collector routing"
"$bin/python" deploy/check_manifests.py "$homeostat" "$out/chart.yaml"
echo "deploy/ lint passed"
