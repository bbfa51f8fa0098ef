#!/usr/bin/env bash
# A real Kubernetes node beside the kwok nodes of hack/cluster.sh: containerd + runc (Debian),
# kubelet and kube-proxy (built with the control plane), the Debian CNI bridge plugin, CoreDNS as a
# pod, and a NetworkPolicy engine (hack/netpol.sh). Pods land there only when they tolerate its
# taint; everything else stays on kwok. Started by `APWA_REAL_NODE=1 hack/cluster.sh up`.
#
#   hack/realnode.sh up       start (or adopt) the node; a no-op when it runs and is Ready
#   hack/realnode.sh down     stop every process it started (by PID), remove its pods, containers,
#                             mounts, network devices, iptables rules and state; no error if none
#   hack/realnode.sh status   exit 0 when every process runs and the node is Ready
#
# Needs root (containers, mounts, iptables). Called by hack/cluster.sh with KUBECONFIG (admin),
# KUBECTL, APWA_BIN (the control-plane bin dir), APWA_PKI (the cluster's CA and admin cert) set.
# Facts and pitfalls behind the choices here: shared/notes/real-node.md and docs/real-node.md.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cache=${APWA_CACHE_DIR:-$HOME/.cache/apwa}
rn=$cache/realnode                  # all state of the node: configs, pids, logs, containerd, kubelet
node=apwa-real-0
node_ip=${APWA_NODE_IP:-10.254.0.1} # on a device of its own (below): never a kwok node's address
node_dev=apwa-node0
pod_cidr=10.244.0.0/24
bridge=apwa-br0
dns_ip=10.0.0.10                    # in the API server's default service range 10.0.0.0/24
service_cidr=10.0.0.0/24
sock=$rn/containerd/containerd.sock
timeout_s=${APWA_REALNODE_TIMEOUT:-180}
if [ -z "${APWA_BIN:-}" ]; then # called directly: the bin dir of hack/testenv-build.sh
  # shellcheck source=../testenv/versions.env
  source "$here/testenv/versions.env"
  APWA_BIN="$cache/testenv-k8s${KUBE_VERSION}-etcd${ETCD_VERSION}-kwok${KWOK_VERSION}-helm${HELM_VERSION}-kc${KUBECONFORM_VERSION}/bin"
fi
bin=$APWA_BIN
kubectl_bin=${KUBECTL:-$bin/kubectl}
export PATH=/usr/sbin:/sbin:$PATH

log() { printf '[realnode] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
kctl() { "$kubectl_bin" --request-timeout=15s "$@"; }

wait_until() { # seconds, description, command...
  local secs=$1 what=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || { log "timed out after ${secs}s waiting for: $what"; return 1; }
    sleep 1
  done
}

# ---- processes: one pid file each, started detached so they outlive this script ---------------

pidfile() { echo "$rn/pids/$1.pid"; }
running() { local p; p=$(cat "$(pidfile "$1")" 2>/dev/null) && [ -n "$p" ] && kill -0 "$p" 2>/dev/null; }

start() { # name, command...
  local name=$1; shift
  running "$name" && return 0
  mkdir -p "$rn/pids" "$rn/logs"
  log "starting $name (log: $rn/logs/$name.log)"
  # No inherited lock descriptors (8: ours, 9: hack/cluster.sh's): a daemon would hold them forever.
  setsid "$@" >>"$rn/logs/$name.log" 2>&1 </dev/null 8>&- 9>&- &
  echo $! >"$(pidfile "$name")"
}

stop() { # name: SIGTERM, then SIGKILL after 15 s
  local name=$1 p
  p=$(cat "$(pidfile "$name")" 2>/dev/null) || return 0
  if [ -n "$p" ] && kill -0 "$p" 2>/dev/null; then
    log "stopping $name (pid $p)"
    kill "$p" 2>/dev/null || true
    wait_until 15 "$name to exit" bash -c "! kill -0 $p" || kill -9 "$p" 2>/dev/null || true
  fi
  rm -f "$(pidfile "$name")"
}

# ---- preflight -----------------------------------------------------------------------------------

need_packages() {
  local missing=()
  command -v containerd >/dev/null || missing+=(containerd)
  command -v runc >/dev/null || missing+=(runc)
  [ -x /usr/lib/cni/bridge ] || missing+=(containernetworking-plugins)
  command -v iptables >/dev/null || missing+=(iptables)
  command -v ipset >/dev/null || missing+=(ipset)
  command -v conntrack >/dev/null || missing+=(conntrack)
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing ${missing[*]} with apt-get (log: $rn/logs/apt-get.log)"
  mkdir -p "$rn/logs"
  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"; } \
    >"$rn/logs/apt-get.log" 2>&1 || die "apt-get install ${missing[*]} failed (log: $rn/logs/apt-get.log)"
}

preflight() {
  [ "$(id -u)" = 0 ] || die "the real node needs root (containers, mounts, iptables); run as root or without APWA_REAL_NODE"
  [ -n "$bin" ] && [ -x "$bin/kubelet" ] && [ -x "$bin/kube-proxy" ] ||
    die "kubelet/kube-proxy missing in '$bin' (hack/testenv-build.sh builds them; APWA_BIN must name its bin dir)"
  [ -f "${APWA_PKI:-}/ca.crt" ] || die "the cluster's CA is not at APWA_PKI=${APWA_PKI:-} (start through hack/cluster.sh)"
  grep -qw overlay /proc/filesystems || modprobe overlay 2>/dev/null || die "the kernel has no overlay filesystem (containerd's snapshotter needs it)"
  [ -d /sys/fs/cgroup/memory ] || [ -f /sys/fs/cgroup/cgroup.controllers ] || die "no cgroup memory controller under /sys/fs/cgroup"
  need_packages
  # kube-proxy's Service rules must see traffic between pods on the same bridge.
  [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ] || modprobe br_netfilter 2>/dev/null ||
    die "br_netfilter is not available (kube-proxy needs bridge traffic to pass iptables)"
  sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1 ||
    die "cannot set net.ipv4.ip_forward / bridge-nf-call-iptables"
}

check_ports() {
  # Ports of the node's own servers (kubelet, its healthz, kube-proxy metrics/healthz, kube-router
  # health): taken by something else, the node would only time out later.
  local port owner
  running kubelet && return 0
  for port in 10250 10248 10249 10256 20244; do
    owner=$(ss -Hltnp "sport = :$port" 2>/dev/null | head -n 1)
    [ -z "$owner" ] || die "port $port (needed by the real node) is taken: ${owner##* }"
  done
}

# ---- network: the node's own address ------------------------------------------------------------

node_address() {
  # A bridge without ports holds the address: this kernel has no dummy device (CONFIG_DUMMY is
  # off), and an address of its own keeps the node apart from the VM's and the kwok nodes'.
  if ip -o link show "$node_dev" >/dev/null 2>&1; then
    [ -d "/sys/class/net/$node_dev/bridge" ] && [ -z "$(ls "/sys/class/net/$node_dev/brif" 2>/dev/null)" ] ||
      die "network device $node_dev exists and is not a port-less bridge: not ours; remove it (ip link del $node_dev)"
  else
    ip link add "$node_dev" type bridge || die "cannot create the bridge device $node_dev"
  fi
  ip addr replace "$node_ip/32" dev "$node_dev"
  ip link set "$node_dev" up
  # An address of ours on another device means another setup uses it.
  local other
  other=$(ip -o -4 addr show | awk -v a="$node_ip/32" -v d="$node_dev" '$4 == a && $2 != d {print $2}')
  [ -z "$other" ] || die "$node_ip is also on $other: set APWA_NODE_IP to a free address"
}

# ---- containerd ---------------------------------------------------------------------------------

write_containerd_config() {
  local pause=$1
  mkdir -p "$rn/containerd" "$rn/cni/net.d" "$rn/cni/ipam"
  cat >"$rn/containerd/config.toml" <<EOF
# Generated by hack/realnode.sh.
version = 2
root = "$rn/containerd/root"
state = "$rn/containerd/state"
[grpc]
  address = "$sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$pause"
  # Root may raise but not lower oom_score_adj in this sandbox; without this runc fails to start
  # the pod sandbox (notes/real-node.md).
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$rn/cni/net.d"
EOF
  # No masquerade: a pod's packets keep its own address, which the NetworkPolicy engine matches.
  cat >"$rn/cni/net.d/10-apwa.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "apwa",
  "plugins": [
    {"type": "bridge", "bridge": "$bridge", "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "dataDir": "$rn/cni/ipam", "ranges": [[{"subnet": "$pod_cidr"}]],
              "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
}

shared_netns_dir() {
  # What `ip netns` does on first use: /run/netns as a shared bind mount of itself. Made before
  # containerd creates any sandbox namespace there, so later `ip netns` calls (tests, debugging)
  # do not re-mount it over existing namespace mounts, which makes their removal fail with EBUSY.
  mkdir -p /run/netns
  mountpoint -q /run/netns || mount --bind /run/netns /run/netns
  mount --make-shared /run/netns
}

start_containerd() {
  shared_netns_dir
  start containerd containerd --config "$rn/containerd/config.toml"
  wait_until 60 "containerd to answer on $sock" ctr -a "$sock" version ||
    die "containerd did not start (log: $rn/logs/containerd.log)"
}

# ---- kubelet, kube-proxy ------------------------------------------------------------------------

write_kubelet_config() {
  mkdir -p "$rn/kubelet"
  cat >"$rn/kubelet/config.yaml" <<EOF
# Generated by hack/realnode.sh.
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# Reachable by the API server (kubectl logs/exec) on the node address, never anonymously: the API
# server's client certificate is checked against the cluster CA, requests are authorised by
# SubjectAccessReviews.
address: $node_ip
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $APWA_PKI/ca.crt}
authorization: {mode: Webhook}
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://$sock
clusterDNS: [$dns_ip]
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
enforceNodeAllocatable: []
localStorageCapacityIsolation: false
evictionHard: {imagefs.available: "1%", nodefs.available: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
registerWithTaints:
- {key: apwa.dev/real-node, value: "true", effect: NoSchedule}
maxPods: 110
serializeImagePulls: false
EOF
}

start_kubelet() {
  mkdir -p "$rn/kubelet/root" "$rn/kubelet/pki"
  start kubelet "$bin/kubelet" --config="$rn/kubelet/config.yaml" --kubeconfig="$KUBECONFIG" \
    --hostname-override="$node" --node-ip="$node_ip" --node-labels=apwa.dev/real-node=true \
    --root-dir="$rn/kubelet/root" --cert-dir="$rn/kubelet/pki" --v=1
}

node_ready() {
  [ "$(kctl get node "$node" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}

start_kube_proxy() {
  cat >"$rn/kube-proxy.yaml" <<EOF
# Generated by hack/realnode.sh.
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
hostnameOverride: $node
clusterCIDR: $pod_cidr
bindAddress: $node_ip
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
clientConnection: {kubeconfig: $KUBECONFIG}
conntrack: {maxPerCore: 0}
EOF
  start kube-proxy "$bin/kube-proxy" --config="$rn/kube-proxy.yaml" --v=1
  wait_until 60 "kube-proxy healthz" curl -fsS http://127.0.0.1:10256/healthz ||
    die "kube-proxy is not healthy (log: $rn/logs/kube-proxy.log)"
}

# ---- CoreDNS as a pod on the node (the rendered DNS egress rule selects k8s-app: kube-dns) ------

apply_coredns() {
  local image=$1
  sed -e "s|@IMAGE@|$image|g" -e "s|@DNS_IP@|$dns_ip|g" "$here/testenv/coredns.yaml" | kctl apply -f - >&2
  kctl -n kube-system rollout status deployment/coredns --timeout="${timeout_s}s" >&2 ||
    die "CoreDNS did not become ready (kubectl -n kube-system describe pod -l k8s-app=kube-dns)"
}

# ---- images ---------------------------------------------------------------------------------------

ref_of() { awk -v n="$1" '$1 == n {print $2}'; }

# ---- up / down / status ---------------------------------------------------------------------------

cmd_status() {
  local p
  for p in containerd kubelet kube-proxy; do running "$p" || return 1; done
  node_ready || return 1
  ip -o link show "$node_dev" >/dev/null 2>&1
}

cmd_up() {
  local t0=$SECONDS refs
  preflight
  mkdir -p "$rn"
  exec 8>"$cache/.realnode.lock"
  flock -w "$timeout_s" 8 || die "another 'hack/realnode.sh' holds $cache/.realnode.lock"
  if [ -f "$rn/kubelet/config.yaml" ] && ! running containerd && ! running kubelet; then
    log "found state of an earlier run that is not running: cleaning it up first"
    cmd_down_locked
  fi
  check_ports
  node_address
  # Images first: containerd's config names the sandbox (pause) image.
  refs=$(images_before_containerd)
  write_containerd_config "$(ref_of pause <<<"$refs")"
  start_containerd
  bash "$here/hack/images.sh" import "$sock" >/dev/null || die "importing the images into containerd failed"
  write_kubelet_config
  start_kubelet
  wait_until "$timeout_s" "node $node Ready" node_ready || die "node $node not Ready (log: $rn/logs/kubelet.log)"
  kctl uncordon "$node" >/dev/null 2>&1 || true # a Node object left by an interrupted 'down'
  # Self-registered nodes get no podCIDR here; the NetworkPolicy engine reads it.
  kctl patch node "$node" --type merge -p "{\"spec\":{\"podCIDR\":\"$pod_cidr\",\"podCIDRs\":[\"$pod_cidr\"]}}" >/dev/null 2>&1 || true
  start_kube_proxy
  apply_coredns "$(ref_of coredns <<<"$refs")"
  if [ -f "$here/hack/netpol.sh" ]; then
    APWA_REALNODE_DIR=$rn APWA_NODE_NAME=$node APWA_SERVICE_CIDR=$service_cidr bash "$here/hack/netpol.sh" start 8>&- ||
      die "the NetworkPolicy engine did not start (see above)"
  fi
  exec 8>&-
  log "real node $node Ready in $((SECONDS - t0))s (address $node_ip, pods $pod_cidr, logs $rn/logs)"
}

images_before_containerd() {
  bash "$here/hack/images.sh" build || die "building the images failed (see above)"
}

pods_gone() { [ -z "$(ctr -a "$sock" -n k8s.io tasks ls -q 2>/dev/null)" ]; }

drain() { # let the kubelet tear its pods down (CNI teardown included) while everything runs
  running kubelet && running containerd || return 0
  kctl get node "$node" >/dev/null 2>&1 || return 0
  log "deleting the pods on $node"
  # Cordoned first: the pods of Deployments (CoreDNS, an operator) would come straight back.
  kctl cordon "$node" >/dev/null 2>&1 || true
  kctl delete pods --all-namespaces --field-selector "spec.nodeName=$node" --grace-period=1 --wait=false >/dev/null 2>&1 || true
  wait_until 90 "the containers on $node to stop" pods_gone || log "some containers are still running: killing them"
}

kill_containers() {
  [ -S "$sock" ] && running containerd || return 0
  local t
  for t in $(ctr -a "$sock" -n k8s.io tasks ls -q 2>/dev/null); do
    ctr -a "$sock" -n k8s.io tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true
  done
}

remove_network() {
  ip link del "$bridge" 2>/dev/null || true
  ip link del "$node_dev" 2>/dev/null || true
  remove_netns
  # A namespace mounted under the /run/netns bind mount's own mount point is hidden by it (the
  # EBUSY of notes/real-node.md): when /run/netns holds nothing but sandboxes' namespaces, drop
  # the bind mount (`ip netns` and the next `up` make it again) and remove what it hid.
  if [ -z "$(find /run/netns -mindepth 1 -maxdepth 1 ! -name 'cni-*' 2>/dev/null)" ]; then
    while mountpoint -q /run/netns; do umount -l /run/netns 2>/dev/null || break; done
    remove_netns
  fi
  if [ -n "$bin" ] && [ -x "$bin/kube-proxy" ]; then
    "$bin/kube-proxy" --cleanup >/dev/null 2>&1 || true
  fi
  sysctl -qw net.ipv4.conf.all.route_localnet=0 2>/dev/null || true
  remove_kubelet_chains
}

remove_kubelet_chains() { # what the kubelet adds to iptables (kube-proxy --cleanup leaves them)
  local ipt table chain
  for ipt in iptables ip6tables; do
    command -v "$ipt" >/dev/null || continue
    while "$ipt" -t filter -D INPUT -j KUBE-FIREWALL 2>/dev/null; do :; done
    while "$ipt" -t filter -D OUTPUT -j KUBE-FIREWALL 2>/dev/null; do :; done
    for table in filter nat mangle; do
      for chain in KUBE-FIREWALL KUBE-KUBELET-CANARY KUBE-IPTABLES-HINT; do
        "$ipt" -t "$table" -F "$chain" 2>/dev/null && "$ipt" -t "$table" -X "$chain" 2>/dev/null || true
      done
    done
  done
}

remove_netns() { # namespaces of our sandboxes that no process uses; stacked mounts unmounted first
  local ns
  for ns in /run/netns/cni-*; do
    [ -e "$ns" ] || continue
    [ -z "$(ip netns pids "$(basename "$ns")" 2>/dev/null)" ] || continue
    while mountpoint -q "$ns" 2>/dev/null; do umount -l "$ns" 2>/dev/null || break; done
    rm -f "$ns" 2>/dev/null || true
  done
}

unmount_state() { # deepest first; lazily, so a busy mount cannot block the cleanup
  local m
  for m in $(awk -v p="$rn/" 'index($2, p) == 1 {print $2}' /proc/mounts | sort -r); do
    umount -l "$m" 2>/dev/null || true
  done
  if mountpoint -q "$rn/kubelet/root" 2>/dev/null; then umount -l "$rn/kubelet/root" || true; fi
}

kill_pod_processes() {
  # Containers whose shim is gone (a killed session) live on in the kubelet's pod cgroups and in
  # containerd's: only this node's containers are there on this machine.
  local f p d
  for f in $(find /sys/fs/cgroup/pids/kubepods /sys/fs/cgroup/pids/k8s.io -name cgroup.procs 2>/dev/null); do
    for p in $(cat "$f" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
  done
  for d in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/*/k8s.io; do
    [ -d "$d" ] || continue
    wait_until 10 "processes of $d to exit" bash -c "! find '$d' -name cgroup.procs -exec cat {} + | grep -q ." || true
    find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
}

kill_shims() { # shims of our containerd outlive it; they carry our socket path in their argv
  local p
  for p in $(pgrep -f "containerd-shim-runc-v2 .*-address $sock" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
}

cmd_down_locked() {
  drain
  if [ -f "$here/hack/netpol.sh" ]; then
    APWA_REALNODE_DIR=$rn APWA_NODE_NAME=$node bash "$here/hack/netpol.sh" stop || log "netpol.sh stop failed (continuing)"
  fi
  stop kube-proxy
  stop kubelet
  kill_containers
  stop containerd
  kill_shims
  kill_pod_processes
  unmount_state
  remove_network
  kctl delete node "$node" --wait=false >/dev/null 2>&1 || true
  rm -rf "$rn"
}

lock_holders() {
  local p
  for p in /proc/[0-9]*; do
    ls -l "$p/fd" 2>/dev/null | grep -q "$cache/.realnode.lock" && echo "${p#/proc/}:$(cat "$p/comm" 2>/dev/null)"
  done
}

cmd_down() {
  if [ ! -d "$rn" ] && ! ip -o link show "$node_dev" >/dev/null 2>&1 && ! ip -o link show "$bridge" >/dev/null 2>&1 &&
    [ ! -d /sys/fs/cgroup/pids/kubepods ]; then
    log "no real node"
    return 0
  fi
  [ "$(id -u)" = 0 ] || die "cleaning up the real node needs root"
  mkdir -p "$cache"
  exec 8>"$cache/.realnode.lock"
  if ! flock -w 60 8; then
    # A daemon of an older version of this script may still hold the lock it inherited; the
    # cleanup below stops those too, so waiting longer would only delay it.
    log "the lock $cache/.realnode.lock is held by: $(lock_holders | tr '\n' ' '); cleaning up anyway"
  fi
  log "stopping the real node"
  cmd_down_locked
  log "real node stopped and cleaned up"
}

case "${1:-}" in
  up)
    if cmd_status; then
      # Images change with the sources: build what changed and import it (a no-op otherwise).
      bash "$here/hack/images.sh" import "$sock" >/dev/null || die "building/importing the images failed (see above)"
      log "real node $node is already running"
    else
      cmd_up
    fi
    ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
