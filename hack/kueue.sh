#!/usr/bin/env bash
# Kueue beside the local control plane: the kueue manager (built from Go modules by
# hack/testenv-build.sh kueue) runs as a HOST PROCESS against the cluster's API server, and its
# admission webhooks are registered with `url: https://127.0.0.1:<port>` and a self-signed CA made
# here with openssl. Why not in-cluster: the kwok nodes run no containers, the real node exists only
# beside the default cluster, and without cert-manager Kueue's internal certificates name the
# Service (<svc>.<ns>.svc), which the API server of this environment can't reach. docs/kueue.md.
#
#   hack/kueue.sh build    build (or reuse) the binary and the CRDs; prints the binary's path last
#   hack/kueue.sh start    install the CRDs, start Kueue for this cluster (a no-op when it already runs
#                          for this very cluster), register its webhooks and wait until a queued Job
#                          really gets suspended by them (a server-side dry run); fails naming its log
#   hack/kueue.sh stop     remove the webhooks (a labelled Job must not wait on a stopped Kueue) and
#                          stop the process this state dir started (only that pid); idempotent
#   hack/kueue.sh status   exit 0 when it runs and answers its readiness probe
#
# Configuration (written to the state dir): batch/job integration only, manageJobsWithoutQueueName
# false (only Jobs labelled kueue.x-k8s.io/queue-name are Kueue's), no leader election, no metrics
# server, no visibility API server. Two ports per cluster: the webhook server and the health probe,
# 5000 + 2k and 5001 + 2k with k = cksum(cluster name) % 500 (k = 0 for the cluster apwa); the API
# servers use 6443 and 7000-7999, the S3 servers 9000-9999.
#
# Kueue reads a metrics serving certificate from the fixed path /etc/kueue/metrics/certs whenever its
# internal certificate management is off (cmd/kueue/main.go), even with the metrics server disabled:
# a TEST-ONLY self-signed pair is written there once if missing (the CI and this machine run as root).
#
# Environment: APWA_CLUSTER_NAME (apwa), APWA_CACHE_DIR (~/.cache/apwa; state in
# $APWA_CACHE_DIR/kwok/clusters/<name>/kueue, inside the cluster's state), APWA_KUEUE_PORT (the webhook
# port; the probe uses the next one), APWA_KUEUE_TIMEOUT (seconds to wait for readiness, 90).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=../testenv/versions.env
source "$here/testenv/versions.env"
cache=${APWA_CACHE_DIR:-$HOME/.cache/apwa}
name=${APWA_CLUSTER_NAME:-apwa}
dir="$cache/kueue-$KUEUE_VERSION" # same formula as hack/testenv-build.sh
bin="$dir/bin/kueue"
kbin="$cache/testenv-k8s${KUBE_VERSION}-etcd${ETCD_VERSION}-kwok${KWOK_VERSION}-helm${HELM_VERSION}-kc${KUBECONFORM_VERSION}/bin"
kc="$cache/kwok/kubeconfig-$name.yaml" # the cluster's kubeconfig (hack/cluster.sh)
state="$cache/kwok/clusters/$name/kueue"
pidfile="$state/kueue.pid"
logfile="$state/kueue.log"
certs="$state/certs"
metrics_certs=/etc/kueue/metrics/certs
if [ "$name" = apwa ]; then
  port=${APWA_KUEUE_PORT:-5000}
else
  port=${APWA_KUEUE_PORT:-$((5000 + 2 * ($(printf %s "$name" | cksum | cut -d' ' -f1) % 500)))}
fi
probe_port=$((port + 1))
timeout_s=${APWA_KUEUE_TIMEOUT:-90}
# CRDs whose v1beta1 <-> v1beta2 conversion Kueue serves (its config/components/crd/kustomization.yaml).
converted=(localqueues clusterqueues cohorts workloads multikueueclusters)
log() { printf '[kueue] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
kctl() { "$kbin/kubectl" --kubeconfig "$kc" --request-timeout=20s "$@"; }

build() {
  mkdir -p "$cache"
  if ! [ -x "$bin" ] || ! [ -f "$dir/crds/.complete" ]; then
    flock "$cache/.build.lock" bash "$here/hack/testenv-build.sh" kueue >/dev/null
  fi
  echo "$bin"
}

ours() { # is $1 the kueue of this state dir? (its exact command line)
  local -a argv
  [ -n "$1" ] && [ -r "/proc/$1/cmdline" ] || return 1
  mapfile -d '' argv <"/proc/$1/cmdline" 2>/dev/null || return 1
  [ "${argv[*]:-}" = "$bin --config $state/config.yaml --kubeconfig $kc" ]
}
running_pid() {
  local pid
  pid=$(cat "$pidfile" 2>/dev/null || true)
  ours "$pid" && echo "$pid"
}
# GET /readyz of the health probe answers 200 (plain HTTP; bash's /dev/tcp, so no curl needed).
ready() {
  local status
  status=$(timeout 3 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" && printf "GET /readyz HTTP/1.0\r\n\r\n" >&3 && head -n 1 <&3' _ "$probe_port" 2>/dev/null) || return 1
  [[ $status == *" 200 "* ]]
}

# openssl makes the certificates; install it where it is missing (the CI runs as root on Debian).
need_openssl() {
  command -v openssl >/dev/null && return 0
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || die "openssl is needed: install it (apt-get install openssl)"
  log "installing openssl with apt-get"
  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends openssl; } >&2 ||
    die "apt-get install openssl failed"
}

# A CA and a serving certificate for 127.0.0.1 (the webhook URL's host), kept with the cluster's state.
make_certs() {
  [ -f "$certs/tls.crt" ] && [ -f "$certs/ca.crt" ] && return 0
  mkdir -p "$certs"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=apwa-kueue-test-ca" \
    -keyout "$certs/ca.key" -out "$certs/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout "$certs/tls.key" -out "$certs/tls.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >"$certs/ext.cnf"
  openssl x509 -req -in "$certs/tls.csr" -CA "$certs/ca.crt" -CAkey "$certs/ca.key" -CAcreateserial -days 3650 \
    -extfile "$certs/ext.cnf" -out "$certs/tls.crt" 2>/dev/null
}

# The fixed path Kueue insists on (see the header). Written atomically: clusters may start together.
metrics_cert() {
  [ -f "$metrics_certs/tls.crt" ] && [ -f "$metrics_certs/tls.key" ] && return 0
  mkdir -p "$metrics_certs" 2>/dev/null || die "Kueue needs $metrics_certs (a fixed path in Kueue); run as root or create it"
  local tmp
  tmp=$(mktemp -d "$metrics_certs/.new.XXXXXX")
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=kueue-metrics-test-only" \
    -keyout "$tmp/tls.key" -out "$tmp/tls.crt" 2>/dev/null
  mv -n "$tmp/tls.key" "$metrics_certs/tls.key"
  mv -n "$tmp/tls.crt" "$metrics_certs/tls.crt"
  rm -rf "$tmp"
}

write_config() {
  cat >"$state/config.yaml.tmp" <<EOF
# Generated by hack/kueue.sh; rewritten on every start.
apiVersion: config.kueue.x-k8s.io/v1beta2
kind: Configuration
namespace: kueue-system
manageJobsWithoutQueueName: false
integrations:
  frameworks: ["batch/job"]
health:
  healthProbeBindAddress: 127.0.0.1:$probe_port
metrics:
  bindAddress: "0"
webhook:
  host: 127.0.0.1
  port: $port
  certDir: $certs
leaderElection:
  leaderElect: false
internalCertManagement:
  enable: false
featureGates:
  VisibilityOnDemand: false
EOF
  mv -f "$state/config.yaml.tmp" "$state/config.yaml"
}

# Which cluster and which settings the running process was started for: a recreated cluster (new
# CA, same kubeconfig path) or another config means a restart.
fingerprint() { cat "$kc" "$state/config.yaml" "$certs/ca.crt" | sha256sum | cut -d' ' -f1; }

install_crds() {
  kctl apply --server-side --force-conflicts -f "$dir/crds/" >/dev/null
  local ca crd patch
  ca=$(base64 -w0 <"$certs/ca.crt")
  for crd in "${converted[@]}"; do
    patch="{\"spec\":{\"conversion\":{\"strategy\":\"Webhook\",\"webhook\":{\"conversionReviewVersions\":[\"v1\"],"
    patch+="\"clientConfig\":{\"url\":\"https://127.0.0.1:$port/convert\",\"caBundle\":\"$ca\"}}}}}"
    kctl patch crd "$crd.kueue.x-k8s.io" --type merge -p "$patch" >/dev/null
  done
  kctl wait --for=condition=Established crd --all --timeout=60s >/dev/null
  kctl get namespace kueue-system >/dev/null 2>&1 || kctl create namespace kueue-system >/dev/null
}

register_webhooks() {
  local ca
  ca=$(base64 -w0 <"$certs/ca.crt")
  sed -e "s|@URL@|https://127.0.0.1:$port|g" -e "s|@CA_BUNDLE@|$ca|g" "$here/testenv/kueue/webhooks.yaml" |
    kctl apply --server-side --force-conflicts -f - >/dev/null
}

# The proof that admission works end to end: Kueue's mutating webhook suspends a queued Job.
webhook_suspends() {
  local got
  got=$(kctl -n default create --dry-run=server -o jsonpath='{.spec.suspend}' -f - <<'EOF'
apiVersion: batch/v1
kind: Job
metadata: {name: apwa-kueue-probe, labels: {kueue.x-k8s.io/queue-name: probe}}
spec:
  template:
    spec:
      restartPolicy: Never
      containers: [{name: c, image: registry.invalid/probe:0}]
EOF
  ) || return 1
  [ "$got" = true ]
}

wait_until() { # seconds, what, command...
  local secs=$1 what=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@"; do
    # Alive, not "ours": between the fork and the exec its command line is still this script's, and
    # on a loaded machine the first check can fall in that gap (a CI run died of it).
    if ! kill -0 "$(cat "$pidfile" 2>/dev/null)" 2>/dev/null; then
      log "kueue exited; last lines of $logfile:"
      tail -n 20 "$logfile" >&2 || true
      die "kueue did not start (log: $logfile)"
    fi
    ((SECONDS < deadline)) || die "timed out after ${secs}s waiting for $what (log: $logfile)"
    sleep 1
  done
}

start() {
  build >/dev/null
  kctl get --raw /readyz >/dev/null 2>&1 || die "cluster $name does not answer: start it first (hack/cluster.sh up)"
  mkdir -p "$state"
  need_openssl
  make_certs
  metrics_cert
  write_config
  install_crds
  local want pid
  want=$(fingerprint)
  pid=$(running_pid || true)
  if [ -n "$pid" ] && [ "$(cat "$state/fingerprint" 2>/dev/null)" = "$want" ] && ready; then
    log "kueue already runs for cluster $name (pid $pid)"
  else
    [ -z "$pid" ] || { log "restarting kueue (pid $pid): the cluster or its config changed"; stop_process "$pid"; }
    ss -Hltn "sport = :$port" | grep -q . && die "port $port is taken; set APWA_KUEUE_PORT"
    ss -Hltn "sport = :$probe_port" | grep -q . && die "port $probe_port is taken; set APWA_KUEUE_PORT"
    log "starting kueue $KUEUE_VERSION for cluster $name (webhooks https://127.0.0.1:$port, log $logfile)"
    # setsid: its own session, so the caller's terminal or test session ending does not signal it.
    setsid "$bin" --config "$state/config.yaml" --kubeconfig "$kc" >"$logfile" 2>&1 </dev/null 9>&- &
    echo $! >"$pidfile"
    echo "$want" >"$state/fingerprint"
    wait_until "$timeout_s" "its readiness probe" ready
  fi
  register_webhooks
  wait_until "$timeout_s" "its webhook to suspend a queued Job" webhook_suspends
  log "kueue ready for cluster $name"
}

stop_process() {
  local pid=$1 i
  kill "$pid" 2>/dev/null || return 0
  for i in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.2
  done
  kill -9 "$pid" 2>/dev/null || true
}

stop() {
  if [ -f "$kc" ] && kctl get --raw /readyz >/dev/null 2>&1; then
    kctl delete mutatingwebhookconfiguration apwa-kueue-mutating --ignore-not-found >/dev/null || true
    kctl delete validatingwebhookconfiguration apwa-kueue-validating --ignore-not-found >/dev/null || true
  fi
  local pid
  pid=$(running_pid || true)
  if [ -n "$pid" ]; then
    stop_process "$pid"
    log "kueue stopped (pid $pid)"
  fi
  rm -f "$pidfile" "$state/fingerprint"
}

status() {
  local pid
  pid=$(running_pid || true)
  if [ -n "$pid" ] && ready; then
    log "kueue runs for cluster $name (pid $pid, webhooks on 127.0.0.1:$port)"
    return 0
  fi
  log "kueue is not running for cluster $name"
  return 1
}

case "${1:-}" in
  build) build ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 build|start|stop|status" >&2; exit 2 ;;
esac
