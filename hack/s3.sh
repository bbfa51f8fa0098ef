#!/usr/bin/env bash
# The S3-compatible server of the test environment: versitygw with its posix backend (objects are
# plain files), built from Go modules (hack/testenv-build.sh versitygw) into a versioned cache
# directory outside the repo. One server per cluster; hack/cluster.sh up starts it, down stops it.
#
#   hack/s3.sh build    build the binary (a no-op when it is there); prints its path last
#   hack/s3.sh start    run it in the background (a no-op when it runs; a stale pid file of an earlier
#                       killed session is adopted or removed); waits until it answers, then creates
#                       the bucket (idempotent); fails naming its log
#   hack/s3.sh stop     stop the server this state dir started (only that pid); idempotent
#   hack/s3.sh status   print whether it runs (exit 0) or not (exit 1)
#   hack/s3.sh env      print one export line (APWA_S3_ENDPOINT APWA_S3_NODE_ENDPOINT
#                       APWA_S3_ACCESS_KEY APWA_S3_SECRET_KEY APWA_S3_BUCKET APWA_S3_REGION):
#                       eval "$(bash hack/s3.sh env)"
#
# The root credentials below are fixed and TEST-ONLY: they guard a throwaway server on this machine.
# It listens on every address so that pods on the real node reach it at the node's address
# (APWA_S3_NODE_ENDPOINT, 10.254.0.1, which exists only while the real node is up).
# Port: 9000 for the cluster apwa, 9000 + (cksum of the name % 1000) for another one (the API
# servers use 6443 and 7000-7999; kwokctl picks its component ports above 10000).
#
# Environment: APWA_CLUSTER_NAME (apwa), APWA_CACHE_DIR (~/.cache/apwa; the state dir, with data,
# pid and log, is $APWA_CACHE_DIR/kwok/clusters/<name>/s3, inside the cluster's state),
# APWA_S3_PORT (the port above), APWA_NODE_IP (10.254.0.1), APWA_S3_TIMEOUT (seconds to wait, 60).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=../testenv/versions.env
source "$here/testenv/versions.env"
cache=${APWA_CACHE_DIR:-$HOME/.cache/apwa}
name=${APWA_CLUSTER_NAME:-apwa}
bin="$cache/s3-versitygw-$VERSITYGW_VERSION/bin/versitygw" # same formula as hack/testenv-build.sh
state="$cache/kwok/clusters/$name/s3"                        # the cluster's state dir (hack/cluster.sh)
data="$state/data"
pidfile="$state/versitygw.pid"
logfile="$state/versitygw.log"
if [ "$name" = apwa ]; then
  port=${APWA_S3_PORT:-9000}
else
  port=${APWA_S3_PORT:-$((9000 + $(printf %s "$name" | cksum | cut -d' ' -f1) % 1000))}
fi
node_ip=${APWA_NODE_IP:-10.254.0.1}
timeout_s=${APWA_S3_TIMEOUT:-60}
access_key=apwa-test
secret_key=apwa-test-secret-key-not-for-production # test-only, like the server
bucket=apwa-test
region=us-east-1
endpoint="http://127.0.0.1:$port"
log() { printf '[s3] %s\n' "$*" >&2; }

build() {
  mkdir -p "$cache"
  [ -x "$bin" ] || flock "$cache/.build.lock" bash "$here/hack/testenv-build.sh" versitygw >/dev/null
  echo "$bin"
}

ours() { # is $1 the versitygw serving our data dir? (its exact command line; no fork per process)
  local -a argv
  [ -n "$1" ] && [ -r "/proc/$1/cmdline" ] || return 1
  mapfile -d '' argv <"/proc/$1/cmdline" 2>/dev/null || return 1
  [ "${argv[*]:-}" = "$bin --quiet --port :$port posix $data" ]
}

running_pid() { # prints the pid of our server when it runs
  local pid
  pid=$(cat "$pidfile" 2>/dev/null) || return 1
  ours "$pid" || return 1
  echo "$pid"
}

orphan_pid() { # our server running without a (valid) pid file: the exact command line, nothing broader
  local f pid
  for f in /proc/[0-9]*/cmdline; do
    pid=${f#/proc/}; pid=${pid%/cmdline}
    ours "$pid" && { echo "$pid"; return 0; }
  done
  return 1
}

s3curl() { # signed request: s3curl METHOD PATH [curl args...]; prints the HTTP status
  local method=(-X "$1") path=$2; shift 2
  [ "${method[1]}" = HEAD ] && method=(--head) # -X HEAD would wait for a body
  curl -sS -o /dev/null -w '%{http_code}' -m 5 "${method[@]}" --aws-sigv4 "aws:amz:$region:s3" \
    --user "$access_key:$secret_key" \
    -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' "$@" "$endpoint$path"
}

answers() { [ "$(s3curl GET / 2>/dev/null)" = 200 ]; } # ListBuckets, signed: the server and the keys work

# Poll "$@" until it succeeds, the server dies, or $timeout_s seconds pass.
wait_answers() {
  local deadline=$((SECONDS + timeout_s))
  until answers; do
    running_pid >/dev/null || { log "versitygw exited; see $logfile"; return 1; }
    ((SECONDS < deadline)) || { log "versitygw did not answer in ${timeout_s}s; see $logfile"; return 1; }
    sleep 0.2
  done
}

ensure_bucket() {
  local code
  code=$(s3curl HEAD "/$bucket") || true
  [ "$code" = 200 ] && return 0
  code=$(s3curl PUT "/$bucket") || true
  case "$code" in
    200 | 409) log "bucket $bucket ready" ;; # 409: BucketAlreadyOwnedByYou (a concurrent start)
    *) log "creating bucket $bucket failed (HTTP $code); see $logfile"; return 1 ;;
  esac
}

port_owner() { ss -Hltnp "sport = :$port" 2>/dev/null | head -n 1 | sed 's/.*users:/users:/'; }

start_locked() {
  local pid
  if pid=$(running_pid); then
    log "already running (pid $pid, $endpoint)"
    ensure_bucket
    return 0
  fi
  if pid=$(orphan_pid); then # an earlier session's server whose pid file was lost or overwritten
    log "adopting versitygw pid $pid (serving $data) and rewriting $pidfile"
    echo "$pid" >"$pidfile"
    wait_answers && ensure_bucket
    return
  fi
  [ -f "$pidfile" ] && { log "removing stale pid file $pidfile (pid $(cat "$pidfile") is not our server)"; rm -f "$pidfile"; }
  [ -z "$(port_owner)" ] || { log "port $port is taken by: $(port_owner); free it or set APWA_S3_PORT"; return 1; }
  build >/dev/null
  mkdir -p "$data"
  # Credentials through the environment, not argv (ps shows argv). 9>&-: the lock stays ours.
  ROOT_ACCESS_KEY="$access_key" ROOT_SECRET_KEY="$secret_key" VGW_REGION="$region" \
    setsid "$bin" --quiet --port ":$port" posix "$data" </dev/null >"$logfile" 2>&1 9>&- &
  echo $! >"$pidfile"
  if wait_answers && ensure_bucket; then
    log "running (pid $(cat "$pidfile"), $endpoint, data $data, log $logfile)"
    return 0
  fi
  tail -n 20 "$logfile" >&2 || true
  stop_locked
  return 1
}

stop_locked() {
  local pid
  pid=$(running_pid) || pid=$(orphan_pid) || { rm -f "$pidfile"; log "not running"; return 0; }
  log "stopping versitygw (pid $pid)"
  kill "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + 10))
  while [ -d "/proc/$pid" ] && ((SECONDS < deadline)); do sleep 0.1; done
  [ -d "/proc/$pid" ] && kill -9 "$pid" 2>/dev/null || true
  rm -f "$pidfile"
}

locked() { # serialise start/stop of one cluster's server (two test sessions starting it at once)
  mkdir -p "$state"
  exec 9>"$cache/.s3-$name.lock"
  flock -w "$timeout_s" 9 || { log "another hack/s3.sh holds $cache/.s3-$name.lock"; return 1; }
  "$@"
}

status() {
  local pid
  if pid=$(running_pid); then
    if answers; then echo "running (pid $pid, $endpoint, log $logfile)"; else echo "running (pid $pid, not answering, log $logfile)"; fi
    return 0
  fi
  echo "not running"
  return 1
}

env_line() {
  printf 'export APWA_S3_ENDPOINT=%q APWA_S3_NODE_ENDPOINT=%q APWA_S3_ACCESS_KEY=%q APWA_S3_SECRET_KEY=%q APWA_S3_BUCKET=%q APWA_S3_REGION=%q\n' \
    "$endpoint" "http://$node_ip:$port" "$access_key" "$secret_key" "$bucket" "$region"
}

case "${1:-}" in
  build) build ;;
  start) locked start_locked ;;
  stop) [ -d "$state" ] || { log "not running"; exit 0; }; locked stop_locked ;;
  status) status ;;
  env) env_line ;;
  *) echo "usage: $0 build|start|stop|status|env" >&2; exit 2 ;;
esac
