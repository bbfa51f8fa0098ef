#!/usr/bin/env bash
# Runs the isolation suite (tests/isolation, docs/isolation.md) against the cluster of the
# current KUBECONFIG: the same probes, guarded and control cases, as on the project's test node.
#
#   hack/verify-isolation.sh IMAGE [LABEL=VALUE[,...]] [pytest args...]
#
# IMAGE: an image with python3 and a numeric non-root user (the apwa worker image). LABEL=VALUE:
# run the probe pods only on nodes with these labels (they then tolerate every taint).
# Needs kubectl and helm on PATH and the project's venv (make install). Creates two namespaces
# apwa-iso-*, deletes them at the end. With APWA_ISOLATION_LOCAL_OPERATOR=1 it also applies crds/
# and runs `apwa operator` from this checkout for the operator cases (not beside an operator that
# is installed in the cluster); without it those cases are skipped.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
image=${1:?usage: $0 IMAGE [LABEL=VALUE[,...]] [pytest args...]}
selector=${2:-}
shift $(($# < 2 ? $# : 2))
for tool in kubectl helm; do
  command -v "$tool" >/dev/null || { echo "verify-isolation: $tool is not on PATH" >&2; exit 2; }
done
[ -x "$here/.venv/bin/pytest" ] || { echo "verify-isolation: run 'make install' first" >&2; exit 2; }
export APWA_ISOLATION_EXISTING=1 APWA_ISOLATION_IMAGE="$image" APWA_ISOLATION_NODE_SELECTOR="$selector"
exec "$here/.venv/bin/pytest" "$here/tests/isolation" -p no:cacheprovider "$@"
