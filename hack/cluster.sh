#!/usr/bin/env bash
# Local Kubernetes control plane for integration tests and benchmarks: a kwokctl cluster with the
# binary runtime (real etcd, kube-apiserver, kube-controller-manager, kube-scheduler; kwok fakes the
# nodes and pod lifecycles, see testenv/kwok-stages.yaml). No Docker, nothing downloaded.
#
#   hack/cluster.sh up       create (or reuse) the cluster and its S3 server (hack/s3.sh); last stdout
#                            line is an export line (KUBECONFIG, PATH and the APWA_S3_* settings):
#                            eval "$(bash hack/cluster.sh up | tail -n 1)"
#   hack/cluster.sh down     delete the cluster, its S3 server and their state (no error if there is none)
#   hack/cluster.sh status   exit 0 if the cluster is running and its API server answers
#   hack/cluster.sh env      print only the export line
#
# Environment:
#   APWA_CACHE_DIR       cache root (default ~/.cache/apwa); kwok state is in $APWA_CACHE_DIR/kwok
#   APWA_CLUSTER_NAME    cluster name (default apwa)
#   APWA_CLUSTER_NODES   number of fake nodes (default 4), each with room for 5000 pods
#   APWA_CLUSTER_TIMEOUT seconds to wait for the cluster to become ready (default 180)
#   APWA_REAL_NODE=1     also start the real node (hack/realnode.sh: containerd, kubelet,
#                        kube-proxy, CoreDNS, a NetworkPolicy engine; needs root)
#   APWA_APISERVER_PORT  the API server's port (default 6443 for the cluster apwa)
#   APWA_ETCD_QUOTA      etcd's backend quota (--quota-backend-bytes; default 8Gi, see below)
# Everything except the final export line goes to stderr. ~/.kube/config is never touched.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=../testenv/versions.env
source "$here/testenv/versions.env"

cache=${APWA_CACHE_DIR:-$HOME/.cache/apwa}
name=${APWA_CLUSTER_NAME:-apwa}
nodes=${APWA_CLUSTER_NODES:-4}
timeout_s=${APWA_CLUSTER_TIMEOUT:-180}
real_node=${APWA_REAL_NODE:-0}
# The real node's own address (a dummy interface made by hack/realnode.sh): the kubernetes
# Service's endpoint, and never the address of a kwok node.
node_ip=${APWA_NODE_IP:-10.254.0.1}
if [ "$name" = apwa ]; then
  apiserver_port=${APWA_APISERVER_PORT:-6443}
else # another cluster beside the default one gets its own fixed port, outside the NodePort range
  apiserver_port=${APWA_APISERVER_PORT:-$((7000 + $(printf %s "$name" | cksum | cut -d' ' -f1) % 1000))}
fi
# etcd refuses writes (alarm NOSPACE) once its database reaches this. etcd's own default is 2 GiB;
# kwokctl passes 8Gi unless told otherwise, which holds a 100,000-subtask run (bench/scale.py
# records etcd's database size: docs/scale-profile.md has the figures). Pinned
# here so that a kwokctl upgrade can't lower it, and a cluster created before it was pinned (8Gi
# too) is current: only another value enters the config hash and recreates the cluster.
etcd_quota=${APWA_ETCD_QUOTA:-8Gi}
kwokctl_etcd_quota=8Gi
# Same formula as hack/testenv-build.sh (checked against its output in `up`).
bin="$cache/testenv-k8s${KUBE_VERSION}-etcd${ETCD_VERSION}-kwok${KWOK_VERSION}-helm${HELM_VERSION}-kc${KUBECONFORM_VERSION}/bin"
export KWOK_WORKDIR="$cache/kwok"
cdir="$KWOK_WORKDIR/clusters/$name"
kc="$KWOK_WORKDIR/kubeconfig-$name.yaml"   # scratch kubeconfig: the only one kwokctl writes to
gen_conf="$KWOK_WORKDIR/kwokctl-$name.yaml" # generated KwokctlConfiguration (machine-specific paths)
stages="$here/testenv/kwok-stages.yaml"
stamp="$cdir/apwa-config.sha256"            # which config the running cluster was created with
# kwokctl merges a context into $KUBECONFIG and kubectl reads it: pin both to the scratch file.
export KUBECONFIG="$kc"

log() { printf '[cluster] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
[[ $nodes =~ ^[1-9][0-9]*$ ]] || die "APWA_CLUSTER_NODES must be a positive integer, got '$nodes'"
[[ $timeout_s =~ ^[1-9][0-9]*$ ]] || die "APWA_CLUSTER_TIMEOUT must be a positive integer, got '$timeout_s'"
[[ $name =~ ^[a-z0-9]([-a-z0-9]*[a-z0-9])?$ ]] || die "APWA_CLUSTER_NAME must be a DNS label, got '$name'"
[[ $etcd_quota =~ ^[1-9][0-9]*(Ki|Mi|Gi|Ti)?$ ]] || die "APWA_ETCD_QUOTA must be a size like 8Gi or 12884901888, got '$etcd_quota'"
# KUBECONFIG first and PATH second (parsers rely on it), then hack/s3.sh env's variables.
export_line() {
  local s3
  s3=$(bash "$here/hack/s3.sh" env)
  printf 'export KUBECONFIG=%q PATH=%q:$PATH %s\n' "$kc" "$bin" "${s3#export }"
}
s3() { bash "$here/hack/s3.sh" "$@" 9>&-; }
# Kueue is started on demand (hack/kueue.sh start, by the tests that use it); stopped with the cluster.
kueue_stop() { APWA_CLUSTER_NAME="$name" bash "$here/hack/kueue.sh" stop 9>&-; }
kctl() { "$bin/kubectl" --kubeconfig "$kc" --request-timeout=10s "$@"; }

# Poll "$@" until it succeeds or $1 seconds pass.
wait_until() {
  local secs=$1 what=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      log "timed out after ${secs}s waiting for: $what"
      return 1
    fi
    sleep 1
  done
}

write_config() {
  mkdir -p "$KWOK_WORKDIR"
  cat >"$gen_conf.tmp.$$" <<EOF
# Generated by hack/cluster.sh; do not edit (rewritten on every 'up').
apiVersion: config.kwok.x-k8s.io/v1alpha1
kind: KwokctlConfiguration
options:
  runtime: binary
  kubeVersion: $KUBE_VERSION
  etcdVersion: ${ETCD_VERSION#v}
  kwokVersion: $KWOK_VERSION
  bindAddress: 127.0.0.1
  kubeApiserverBinary: $bin/kube-apiserver
  kubeControllerManagerBinary: $bin/kube-controller-manager
  kubeSchedulerBinary: $bin/kube-scheduler
  kubectlBinary: $bin/kubectl
  etcdBinary: $bin/etcd
  kwokControllerBinary: $bin/kwok
  quietPull: true
  # Outside the NodePort range (30000-32767): a NetworkPolicy engine lets NodePort-range traffic
  # to the host through, which would hide a pod reaching the API server (notes/real-node.md).
  kubeApiserverPort: $apiserver_port
  # Pods on the real node reach the API server through the kubernetes Service (10.0.0.1) and
  # its endpoint (the node address): both must be in the serving certificate.
  kubeApiserverCertSANs: ["10.0.0.1", "$node_ip"]
componentsPatches:
# The API server listens on every address (pods reach it on the real node's address, which the
# kubernetes Service advertises) and dials kubelets by InternalIP with a client certificate (the
# kubelet allows no anonymous access).
- name: kube-apiserver
  extraArgs:
  - key: bind-address
    value: 0.0.0.0
  - key: advertise-address
    value: "$node_ip"
  - key: kubelet-preferred-address-types
    value: InternalIP
  - key: kubelet-client-certificate
    value: $cdir/pki/admin.crt
  - key: kubelet-client-key
    value: $cdir/pki/admin.key
# kwok fakes only its own nodes (annotated by kwokctl): the real node's pods are the kubelet's.
- name: kwok-controller
  extraArgs:
  - key: manage-all-nodes
    value: "false"
  - key: manage-nodes-with-annotation-selector
    value: kwok.x-k8s.io/node=fake
# Raise the client rate limits of the controllers that create pods (job controller, garbage
# collector) and bind them (scheduler; its default 50 QPS caps binding at ~50 pods/s).
# Deliberately NOT --disable-qps-limits: that also turns off the API server's inflight limits
# and priority & fairness, the very limits a benchmark should meet.
- name: kube-controller-manager
  extraArgs:
  - key: kube-api-qps
    value: "500"
  - key: kube-api-burst
    value: "1000"
- name: kube-scheduler
  extraArgs:
  - key: kube-api-qps
    value: "500"
  - key: kube-api-burst
    value: "1000"
EOF
  mv -f "$gen_conf.tmp.$$" "$gen_conf"
}

config_hash() {
  cat "$gen_conf" "$stages" | sha256sum | cut -d' ' -f1
  echo "nodes=$nodes"
  # kwokctl's own default adds nothing: clusters made before the quota was pinned stay current.
  if [ "$etcd_quota" != "$kwokctl_etcd_quota" ]; then echo "etcd_quota=$etcd_quota"; fi
}

exists() { [ -f "$cdir/kwok.yaml" ]; }
# State of a half-created or half-deleted cluster: anything in $cdir but the S3 server's (hack/s3.sh
# may run before the cluster exists; kwokctl creates a cluster beside it).
leftovers() { [ -d "$cdir" ] && [ -n "$(ls -A "$cdir" | grep -vx s3)" ]; }

healthy() {
  exists && [ -x "$bin/kubectl" ] && [ -f "$kc" ] && kctl get --raw /readyz >/dev/null 2>&1
}

kwokctl_delete() {
  # A real node registered with this cluster must go with it: its kubelet would keep running and,
  # registered once at its start, never register with the new cluster (node "not found").
  if [ "$name" = apwa ]; then
    KUBECTL="$bin/kubectl" APWA_BIN="$bin" bash "$here/hack/realnode.sh" down || log "real node cleanup failed (continuing)"
  fi
  kueue_stop || log "stopping Kueue failed (continuing)"
  s3 stop || log "stopping the S3 server failed (continuing)" # its data lives in $cdir/s3
  if [ -x "$bin/kwokctl" ] && [ -d "$cdir" ]; then
    "$bin/kwokctl" --name "$name" delete cluster --kubeconfig "$kc" >&2 || log "kwokctl delete failed (continuing)"
  fi
  # kwokctl kills the components listed in pids/; anything still alive there is a leftover.
  if [ -d "$cdir/pids" ]; then
    local f pid
    for f in "$cdir"/pids/*.pid; do
      [ -f "$f" ] || continue
      pid=$(cat "$f")
      if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        log "stopping leftover $(basename "$f" .pid) (pid $pid)"
        kill "$pid" 2>/dev/null || true
      fi
    done
  fi
  rm -rf "$cdir"
  rm -f "$kc" "$kc.lock"
}

port_free() { ! ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }
port_owner() { ss -Hltnp "sport = :$1" 2>/dev/null | head -n 1 | sed 's/.*users:/users:/'; }

cmd_down() {
  # The real node first (it needs the API server to drain its pods); a no-op without one.
  if [ "$name" = apwa ]; then
    KUBECTL="$bin/kubectl" APWA_BIN="$bin" bash "$here/hack/realnode.sh" down || log "real node cleanup failed (continuing)"
  fi
  if ! exists && ! leftovers; then
    kueue_stop || log "stopping Kueue failed (continuing)"
    s3 stop || log "stopping the S3 server failed (continuing)"
    log "cluster $name is not running"
    rm -rf "$cdir" # at most an S3 server's state (started without a cluster)
    rm -f "$kc" "$gen_conf"
    return 0
  fi
  log "deleting cluster $name"
  kwokctl_delete
  rm -f "$gen_conf"
  log "cluster $name deleted"
}

cmd_status() {
  if healthy; then
    log "cluster $name is running: $(kctl get --raw /version 2>/dev/null | tr -d '\n ' | head -c 120)"
    log "logs: $cdir/logs"
    return 0
  fi
  if exists; then
    log "cluster $name exists but its API server does not answer (logs: $cdir/logs)"
  else
    log "cluster $name is not running"
  fi
  return 1
}

cmd_env() { export_line; }

nodes_ready() {
  local n
  n=$(kctl get nodes -l type=kwok -o jsonpath='{range .items[*]}{range .status.conditions[?(@.type=="Ready")]}{.status}{"\n"}{end}{end}' | grep -c '^True$' || true)
  [ "${n:-0}" -ge "$nodes" ]
}

# Everything `up` guarantees: API server ready, $nodes nodes Ready, ServiceAccount default/default.
ready() {
  healthy && nodes_ready && kctl -n default get serviceaccount default >/dev/null 2>&1
}

current() { [ "$(cat "$stamp" 2>/dev/null)" = "$1" ]; }

cmd_up() {
  local t0=$SECONDS built want
  mkdir -p "$cache"
  log "building/reusing binaries (hack/testenv-build.sh)"
  # flock(1) serialises builds started through this script (two concurrent `go build`s of the
  # same tree would only slow each other down on 2 cores).
  built=$(flock "$cache/.build.lock" bash "$here/hack/testenv-build.sh" all | tail -n 1)
  [ "$built" = "$bin" ] || die "hack/testenv-build.sh printed $built, expected $bin"
  for b in etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok kwokctl; do
    [ -x "$bin/$b" ] || die "missing $bin/$b"
  done
  write_config
  want=$(config_hash)

  if exists && current "$want" && ready; then
    log "cluster $name is already running"
  else
    # Serialise concurrent `up`s (e.g. two test sessions). fd 9 must not leak into the cluster's
    # processes (they outlive this script and would hold the lock): kwokctl runs with 9>&-.
    exec 9>"$cache/.cluster-$name.lock"
    flock -w "$timeout_s" 9 || die "another 'hack/cluster.sh up' holds $cache/.cluster-$name.lock"
    if exists && ! current "$want"; then
      log "cluster $name was created with another config/stages: recreating it"
      kwokctl_delete
    elif exists && ! healthy; then
      log "cluster $name exists but does not answer: recreating it"
      kwokctl_delete
    elif ! exists && leftovers; then
      log "removing half-created cluster state $cdir"
      kwokctl_delete
    fi

    if ! exists; then
      # A just-deleted cluster's API server may still be closing its listener: give it 20 s.
      wait_until 20 "port $apiserver_port to be free" port_free "$apiserver_port" ||
        die "port $apiserver_port (the API server's) is taken by: $(port_owner "$apiserver_port"); free it or set APWA_APISERVER_PORT"
      log "creating cluster $name (workdir $KWOK_WORKDIR)"
      if ! "$bin/kwokctl" --name "$name" -c "$gen_conf" -c "$stages" create cluster \
          --runtime binary --kubeconfig "$kc" --wait "${timeout_s}s" \
          --etcd-quota-backend-size "$etcd_quota" >&2 9>&-; then
        log "kwokctl create cluster failed; last lines of the component logs:"
        tail -n 20 "$cdir"/logs/*.log >&2 2>/dev/null || true
        die "cluster $name did not come up (logs: $cdir/logs)"
      fi
      echo "$want" >"$stamp"
    fi

    wait_until "$timeout_s" "API server /readyz" kctl get --raw /readyz ||
      die "API server not ready (logs: $cdir/logs)"
    local have
    have=$(kctl get nodes -l type=kwok -o name | wc -l)
    if [ "$have" -lt "$nodes" ]; then
      log "scaling to $nodes fake nodes"
      "$bin/kwokctl" --name "$name" scale node --replicas "$nodes" \
        --param '.allocatable.pods=5000' --param '.allocatable.cpu="1k"' \
        --param '.allocatable.memory="4Ti"' --param '.podCIDRs=["10.128.0.0/16"]' \
        --param '.nodeIPs=["10.253.0.1"]' >&2 9>&-
    fi
    wait_until "$timeout_s" "$nodes nodes Ready" nodes_ready ||
      die "nodes not Ready (logs: $cdir/logs/kwok-controller.log)"
    wait_until "$timeout_s" "ServiceAccount default/default" kctl -n default get serviceaccount default ||
      die "no default ServiceAccount (logs: $cdir/logs/kube-controller-manager.log)"
    exec 9>&-
  fi
  # Not fatal: the tiers that do not use S3 go on; the s3_server fixture starts it again and fails there.
  s3 start || log "WARNING: the S3 server did not start (see above); tests that need it will fail"

  if [ "$real_node" = 1 ]; then
    [ "$name" = apwa ] || die "the real node runs beside the default cluster only (APWA_CLUSTER_NAME=apwa)"
    KUBECTL="$bin/kubectl" APWA_BIN="$bin" APWA_PKI="$cdir/pki" APWA_NODE_IP="$node_ip" \
      bash "$here/hack/realnode.sh" up 9>&- || die "the real node did not come up (see above)"
  fi
  log "cluster $name ready in $((SECONDS - t0))s: $nodes fake nodes$([ "$real_node" = 1 ] && echo " + real node apwa-real-0"), kubeconfig $kc"
  log "component logs: $cdir/logs"
  export_line
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  env) cmd_env ;;
  *) echo "usage: $0 up|down|status|env" >&2; exit 2 ;;
esac
