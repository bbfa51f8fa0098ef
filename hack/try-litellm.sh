#!/usr/bin/env bash
# The code-review example against a real OpenAI-compatible server: the LiteLLM proxy (PyPI) with a
# mock response (no model weights, no network beyond loopback). Not part of `make test`: LiteLLM's
# proxy extra is a large install (about 150 packages); the scripted server (apwa-model-stub) is the
# tests' model. Usage: hack/try-litellm.sh [ITEMS]   (ITEMS: how many modules to review, default all)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cache=${APWA_CACHE_DIR:-$HOME/.cache/apwa}
venv=$cache/litellm-venv
port=${APWA_LITELLM_PORT:-4000}
key=sk-apwa-litellm-local
work=$(mktemp -d)
log() { printf 'try-litellm: %s\n' "$*" >&2; }

if [ ! -x "$venv/bin/litellm" ]; then
  log "installing litellm[proxy] into $venv (once)"
  python3.11 -m venv "$venv"
  "$venv/bin/pip" install -q 'litellm[proxy]>=1.50'
fi
cat > "$work/litellm.yaml" <<YAML
model_list:
  - model_name: mock-reviewer
    litellm_params:
      model: openai/mock-reviewer
      api_key: unused
      mock_response: '{"module": "(mock)", "findings": []}'
YAML
LITELLM_MASTER_KEY=$key "$venv/bin/litellm" --config "$work/litellm.yaml" --host 127.0.0.1 --port "$port" \
  >"$work/litellm.log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 120); do
  curl -sf -m 2 "http://127.0.0.1:$port/health/liveliness" >/dev/null && break
  kill -0 "$pid" 2>/dev/null || { tail -20 "$work/litellm.log" >&2; exit 1; }
  sleep 1
done
"$here/.venv/bin/python" - "$work/workload.yaml" "$port" "${1:-0}" <<'PY'
import sys, yaml
out, port, items = sys.argv[1], sys.argv[2], int(sys.argv[3])
doc = next(d for d in yaml.safe_load_all(open("examples/agents/code-review.yaml")) if d)
doc["spec"]["agent"].update(url=f"http://127.0.0.1:{port}/v1", model="mock-reviewer",
                            apiKeySecretRef={"name": "litellm", "key": "key"})
if items:
    doc["spec"]["decomposition"]["items"] = doc["spec"]["decomposition"]["items"][:items]
yaml.safe_dump(doc, open(out, "w"))
PY
log "apwa run --local against LiteLLM on 127.0.0.1:$port"
cd "$here"
APWA_AGENT_API_KEY=$key .venv/bin/apwa run --local "$work/workload.yaml" --quiet
