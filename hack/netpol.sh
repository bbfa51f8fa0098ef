#!/usr/bin/env bash
# The NetworkPolicy engine of the real test node: kube-router in firewall-only mode (iptables +
# ipset), built from Go modules into a versioned cache directory outside the repo.
#
#   hack/netpol.sh build    build the binary (a no-op when it is there); prints its path last
#   hack/netpol.sh start    run it in the background for the real node (a no-op when it runs);
#                           waits until it is healthy, or fails naming its log
#   hack/netpol.sh stop     stop it and remove every chain, jump rule and ipset it made, also
#                           leftovers of an earlier session whose pid file is stale
#   hack/netpol.sh status   print whether it runs (exit 0) or not (exit 1)
#
# kube-router v2.1.0 is the only version the Go module proxy serves, and security flaws are
# reported for it. It is used here only as a test-local engine bound to this machine (a node
# whose pods and API server all live on this host); never ship or expose it.
#
# Environment: KUBECONFIG (admin kubeconfig of the local cluster), KUBECTL (kubectl), APWA_NODE_NAME (apwa-real-0),
# APWA_SERVICE_CIDR (10.0.0.0/24), APWA_REALNODE_DIR (pid and log; ~/.cache/apwa/realnode),
# APWA_CACHE_DIR (binaries; ~/.cache/apwa), APWA_NETPOL_HEALTH_PORT (20244).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=../testenv/versions.env
source "$here/testenv/versions.env"
cache=${APWA_CACHE_DIR:-$HOME/.cache/apwa}
bin="$cache/netpol-kube-router${KUBE_ROUTER_VERSION}/bin/kube-router"
state=${APWA_REALNODE_DIR:-$HOME/.cache/apwa/realnode}
pidfile="$state/kube-router.pid"
logfile="$state/kube-router.log"
node=${APWA_NODE_NAME:-apwa-real-0}
service_cidr=${APWA_SERVICE_CIDR:-10.0.0.0/24}
health_port=${APWA_NETPOL_HEALTH_PORT:-20244}
log() { printf '[netpol] %s\n' "$*" >&2; }

build() {
  [ -x "$bin" ] && { echo "$bin"; return 0; }
  log "building kube-router $KUBE_ROUTER_VERSION (about 4.5 min on 2 cores with a cold Go cache)"
  mkdir -p "$(dirname "$bin")"
  (cd "$here/testenv/go/kube-router" && GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false \
    go build -trimpath -ldflags "-s -w" -o "$bin.tmp" github.com/cloudnativelabs/kube-router/v2/cmd/kube-router)
  mv "$bin.tmp" "$bin"
  echo "$bin"
}

running_pid() { # prints the pid of our kube-router when it runs
  local pid
  pid=$(cat "$pidfile" 2>/dev/null) || return 1
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "kube-router .*--run-firewall=true" || return 1
  echo "$pid"
}

healthy() { curl -fsS -m 2 "http://127.0.0.1:$health_port/healthz" >/dev/null 2>&1; }

start() {
  if running_pid >/dev/null; then log "already running (pid $(running_pid))"; return 0; fi
  : "${KUBECONFIG:?KUBECONFIG must point at the cluster admin kubeconfig}"
  build >/dev/null
  cleanup_rules # a crashed earlier run may have left rules behind
  mkdir -p "$state"
  # It needs the node's podCIDR (a self-registered kubelet node has none unless the cluster
  # script patched it) and selects local pods by status.hostIP == the node's InternalIP.
  local cidr
  cidr=$("${KUBECTL:-kubectl}" get node "$node" -o 'jsonpath={.spec.podCIDR}') ||
    { log "cannot read node $node (KUBECONFIG=$KUBECONFIG)"; return 1; }
  [ -n "$cidr" ] || { log "node $node has no spec.podCIDR; kube-router needs it"; return 1; }
  setsid "$bin" --run-firewall=true --run-router=false --run-service-proxy=false --enable-cni=false \
    --kubeconfig="$KUBECONFIG" --hostname-override="$node" --service-cluster-ip-range="$service_cidr" \
    --health-port="$health_port" --v=2 </dev/null >"$logfile" 2>&1 &
  echo $! >"$pidfile"
  local i
  for i in $(seq 1 60); do
    # Healthy and one full sync done: the policies that exist now are enforced.
    if healthy && grep -q "sync iptables took" "$logfile"; then
      log "running (pid $(cat "$pidfile"), log $logfile)"
      return 0
    fi
    running_pid >/dev/null || break
    sleep 1
  done
  log "kube-router did not become healthy; see $logfile"
  tail -n 20 "$logfile" >&2 || true
  stop_process
  return 1
}

stop_process() {
  local pid i
  pid=$(running_pid) || { rm -f "$pidfile"; return 0; }
  log "stopping kube-router (pid $pid)"
  kill "$pid" 2>/dev/null || true
  for i in $(seq 1 50); do [ -d "/proc/$pid" ] || break; sleep 0.2; done
  [ -d "/proc/$pid" ] && kill -9 "$pid" 2>/dev/null || true
  rm -f "$pidfile"
}

# kube-router leaves all of this behind on SIGTERM. Its chains exist in the filter table only.
# Never while a kube-router runs (one started by another state dir): those rules are its own.
cleanup_rules() {
  local other
  other=$(pgrep -f -- "kube-router .*--run-firewall=true" | head -n 1 || true)
  if [ -n "$other" ]; then
    log "a kube-router runs (pid $other, not from $pidfile): its rules and ipsets are left in place"
    return 0
  fi
  local ipt
  for ipt in iptables ip6tables; do
    command -v "$ipt" >/dev/null || continue
    local hook
    for hook in INPUT FORWARD OUTPUT; do
      while "$ipt" -w -t filter -D "$hook" -j "KUBE-ROUTER-$hook" 2>/dev/null; do :; done
      # Jumps written with a comment or a match spec: delete them by rule number.
      local n
      while n=$("$ipt" -w -t filter -L "$hook" --line-numbers -n 2>/dev/null | awk '$2 ~ /^KUBE-ROUTER-/ {print $1; exit}') \
        && [ -n "$n" ]; do
        "$ipt" -w -t filter -D "$hook" "$n"
      done
    done
    local chains
    chains=$("$ipt" -w -t filter -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^(KUBE-ROUTER-|KUBE-NWPLCY-|KUBE-POD-FW-)/ {print $2}')
    local c
    for c in $chains; do "$ipt" -w -t filter -F "$c"; done
    for c in $chains; do "$ipt" -w -t filter -X "$c"; done
  done
  if command -v ipset >/dev/null; then
    local s
    for s in $(ipset list -n 2>/dev/null | grep -E '^(inet6:)?KUBE-(SRC|DST)-'); do
      ipset destroy "$s" 2>/dev/null || log "ipset $s is still in use; left in place"
    done
  fi
  log "kube-router's chains, jump rules and ipsets removed"
}

stop() {
  stop_process
  log "not running"
  cleanup_rules
}

status() {
  local pid
  if pid=$(running_pid); then
    if healthy; then echo "running (pid $pid, healthy, log $logfile)"; else echo "running (pid $pid, not healthy, log $logfile)"; fi
    return 0
  fi
  echo "not running"
  return 1
}

case "${1:-}" in
  build) build ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 build|start|stop|status" >&2; exit 2 ;;
esac
