#!/usr/bin/env bash
# Builds the local control plane (kube-apiserver, kube-controller-manager, kube-scheduler,
# kubectl, etcd and etcdctl, and kubelet + kube-proxy for the real node, kwok, kwokctl) and the chart tools (helm, kubeconform) from Go modules only,
# into a versioned cache directory outside the repo. A no-op when the binaries are there.
# Prints the bin directory on its last line. Also builds the S3 server (versitygw, hack/s3.sh) into
# its own versioned directory, $APWA_CACHE_DIR/s3-versitygw-<version>/bin, Kueue (hack/kueue.sh)
# with its CRDs into $APWA_CACHE_DIR/kueue-<version>/{bin,crds}, and promtool (the alert rules'
# checker and unit-test runner) into $APWA_CACHE_DIR/promtool-<version>/bin, the directory
# `testenv-build.sh promtool` prints.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=../testenv/versions.env
source "$here/testenv/versions.env"
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false
cache=${APWA_CACHE_DIR:-$HOME/.cache/apwa}
bin="$cache/testenv-k8s${KUBE_VERSION}-etcd${ETCD_VERSION}-kwok${KWOK_VERSION}-helm${HELM_VERSION}-kc${KUBECONFORM_VERSION}/bin"
mkdir -p "$bin"
mods="$here/testenv/go"
log() { printf '[testenv-build] %s\n' "$*" >&2; }

have() { for b in "$@"; do [ -x "$bin/$b" ] || return 1; done; }

# The wrapper modules are committed (go.mod + go.sum) so builds are reproducible; the
# functions below only create them when they are missing (a version bump: delete the dir).
init_kube_module() {
  local d="$mods/kube"
  [ -f "$d/go.mod" ] && return 0
  mkdir -p "$d"
  local gomod
  gomod=$(cd /tmp && go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  # k8s.io/kubernetes replaces every staging module with ./staging/...; go refuses that for
  # a dependency, so the wrapper pins each staging module to its published version instead.
  {
    echo "module apwa.dev/testenv/kube"
    echo
    echo "go 1.26"
    echo
    echo "replace ("
    grep -E '^\s*k8s\.io/[^ ]+ => \./staging/' "$gomod" | awk -v v="$KUBE_STAGING_VERSION" '{print "\t" $1 " => " $1 " " v}'
    echo ")"
  } >"$d/go.mod"
  (cd "$d" && go get -tool "k8s.io/kubernetes/cmd/kube-apiserver@$KUBE_VERSION" \
      "k8s.io/kubernetes/cmd/kube-controller-manager@$KUBE_VERSION" \
      "k8s.io/kubernetes/cmd/kube-scheduler@$KUBE_VERSION" \
      "k8s.io/kubernetes/cmd/kubectl@$KUBE_VERSION" "k8s.io/kubernetes/cmd/kubelet@$KUBE_VERSION" \
      "k8s.io/kubernetes/cmd/kube-proxy@$KUBE_VERSION")
}

init_simple_module() { # dir, module path@version, packages...
  local d="$mods/$1" modver=$2; shift 2
  [ -f "$d/go.mod" ] && return 0
  mkdir -p "$d"
  (cd "$d" && go mod init "apwa.dev/testenv/$(basename "$d")" >/dev/null 2>&1 && go get -tool "$@")
  : "$modver"
}

build_kube() {
  have kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy && return 0
  init_kube_module
  local minor=${KUBE_VERSION#v1.}; minor=${minor%%.*}
  local ld=""
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $p.gitVersion=$KUBE_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
  done
  log "building kubernetes $KUBE_VERSION (slow the first time: 15-30 min on 2 cores)"
  (cd "$mods/kube" && go build -trimpath -ldflags "-s -w $ld" -o "$bin/" \
      k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl \
      k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy)
}

build_etcd() {
  have etcd && return 0
  init_simple_module etcd "" "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
  log "building etcd $ETCD_VERSION"
  (cd "$mods/etcd" && go build -trimpath -ldflags "-s -w" -o "$bin/etcd" go.etcd.io/etcd/server/v3)
}

# etcdctl, for the fault test that compacts etcd mid-run (tests/integration/test_faults.py: a 410
# Gone comes only from resuming a watch at a compacted revision). Same version as etcd.
build_etcdctl() {
  have etcdctl && return 0
  init_simple_module etcdctl "" "go.etcd.io/etcd/etcdctl/v3@$ETCD_VERSION"
  log "building etcdctl $ETCD_VERSION"
  (cd "$mods/etcdctl" && go build -trimpath -ldflags "-s -w" -o "$bin/etcdctl" go.etcd.io/etcd/etcdctl/v3)
}

build_kwok() {
  have kwok kwokctl && return 0
  init_simple_module kwok "" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION" "sigs.k8s.io/kwok/cmd/kwokctl@$KWOK_VERSION"
  log "building kwok $KWOK_VERSION"
  (cd "$mods/kwok" && go build -trimpath -ldflags "-s -w" -o "$bin/" sigs.k8s.io/kwok/cmd/kwok sigs.k8s.io/kwok/cmd/kwokctl)
}

build_helm() {
  have helm && return 0
  init_simple_module helm "" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  local minor=${KUBE_VERSION#v1.}; minor=${minor%%.*}
  # Without these helm reports v0.0.0 and assumes Kubernetes 1.20 for capability checks.
  local ld="-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
  ld+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$minor"
  ld+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$minor"
  log "building helm $HELM_VERSION"
  (cd "$mods/helm" && go build -trimpath -ldflags "-s -w $ld" -o "$bin/helm" helm.sh/helm/v3/cmd/helm)
}

build_kubeconform() {
  have kubeconform && return 0
  init_simple_module kubeconform "" "github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION"
  log "building kubeconform $KUBECONFORM_VERSION"
  (cd "$mods/kubeconform" && go build -trimpath -ldflags "-s -w" -o "$bin/kubeconform" github.com/yannh/kubeconform/cmd/kubeconform)
}

# The S3 server of the test environment (hack/s3.sh runs it; same path formula there).
build_versitygw() {
  local out="$cache/s3-versitygw-$VERSITYGW_VERSION/bin/versitygw"
  [ -x "$out" ] && return 0
  init_simple_module versitygw "" "github.com/versity/versitygw/cmd/versitygw@$VERSITYGW_VERSION"
  log "building versitygw $VERSITYGW_VERSION (about 2.5 min on 2 cores with a cold Go cache)"
  mkdir -p "$(dirname "$out")"
  (cd "$mods/versitygw" && go build -trimpath -ldflags "-s -w -X main.Version=$VERSITYGW_VERSION" \
      -o "$out.tmp" github.com/versity/versitygw/cmd/versitygw)
  mv "$out.tmp" "$out"
}

# Kueue (hack/kueue.sh runs it; same path formula there): the manager binary, and the release's
# CRDs copied out of the module so that starting it needs no Go toolchain. sigs.k8s.io/kueue has
# no replace directives, so a plain wrapper module (testenv/go/kueue) builds it.
build_kueue() {
  local dir="$cache/kueue-$KUEUE_VERSION"
  [ -x "$dir/bin/kueue" ] && [ -f "$dir/crds/.complete" ] && return 0
  init_simple_module kueue "" "sigs.k8s.io/kueue/cmd/kueue@$KUEUE_VERSION"
  log "building kueue $KUEUE_VERSION (about 4 min of CPU on 2 cores with a cold Go cache)"
  mkdir -p "$dir/bin" "$dir/crds"
  (cd "$mods/kueue" && go build -trimpath -ldflags "-s -w -X sigs.k8s.io/kueue/pkg/version.GitVersion=$KUEUE_VERSION" \
      -o "$dir/bin/kueue.tmp" sigs.k8s.io/kueue/cmd/kueue)
  mv "$dir/bin/kueue.tmp" "$dir/bin/kueue"
  local src
  src=$(cd "$mods/kueue" && go list -m -f '{{.Dir}}' sigs.k8s.io/kueue)
  cp "$src"/config/components/crd/bases/*.yaml "$dir/crds/"
  chmod u+w "$dir"/crds/*.yaml
  touch "$dir/crds/.complete"
}

# promtool, for the chart's alert rules (tests/integration/test_monitoring.py). Prometheus's
# module has no replace directives, so a plain wrapper module works. The tag remove_all_sd leaves
# out the service discovery plugins (every cloud SDK), which rule checks and rule unit tests never
# use: without it the cold build had not finished after 20 minutes here; with it, cold (empty Go
# module and build caches) 7m20s and 9m35s wall on 2 cores shared with other builds (load 10-17),
# 4m45s and 4m16s of CPU, downloads included: about 3 minutes on 2 idle cores.
promtool_bin="$cache/promtool-$PROMETHEUS_VERSION/bin"
build_promtool() {
  [ -x "$promtool_bin/promtool" ] && return 0
  init_simple_module promtool "" "github.com/prometheus/prometheus/cmd/promtool@$PROMETHEUS_VERSION"
  log "building promtool (prometheus module $PROMETHEUS_VERSION)"
  mkdir -p "$promtool_bin"
  # Module v0.3MM.P is Prometheus 3.MM.P: `promtool --version` says so.
  local ld="-X github.com/prometheus/common/version.Version=3.${PROMETHEUS_VERSION#v0.3}"
  (cd "$mods/promtool" && go build -tags remove_all_sd -trimpath -ldflags "-s -w $ld" -o "$promtool_bin/promtool.tmp" \
      github.com/prometheus/prometheus/cmd/promtool)
  mv "$promtool_bin/promtool.tmp" "$promtool_bin/promtool"
}

what=${1:-all}
case "$what" in
  all) build_etcd; build_etcdctl; build_kwok; build_helm; build_kubeconform; build_versitygw; build_kueue; build_promtool; build_kube ;;
  promtool) build_promtool; echo "$promtool_bin"; exit 0 ;;
  kube|etcd|etcdctl|kwok|helm|kubeconform|versitygw|kueue) "build_$what" ;;
  *) echo "usage: $0 [all|kube|etcd|etcdctl|kwok|helm|kubeconform|versitygw|kueue|promtool]" >&2; exit 2 ;;
esac
echo "$bin"
