#!/usr/bin/env bash
# Builds the project's container images on this machine (no Docker, no registry) as OCI archives
# under ${APWA_CACHE_DIR:-~/.cache/apwa}/images/, cached by content: the tag is a hash of every
# build input, so a second run with nothing changed is a no-op.
#
#   bash hack/images.sh build [pause|worker|operator|coredns ...]   (default: all)
#   bash hack/images.sh refs  [NAME ...]      the same lines, without building
#   bash hack/images.sh import SOCKET [NAME ...]
#       builds if needed, then `ctr -a SOCKET -n k8s.io images import`s each archive whose ref is
#       not already there with the same manifest digest
#   bash hack/images.sh lock                  refresh images/requirements.lock with uv ($UV or on PATH;
#                                             `make lock` installs the pinned uv and runs this)
#
# stdout: one line per image, `<name> <image ref> <archive path>`, e.g.
#   worker apwa.local/apwa-worker:0123456789ab /root/.cache/apwa/images/apwa-worker-0123456789ab.oci.tar
# Refs: apwa.local/{pause,apwa-worker,apwa-operator}:<hash>, apwa.local/coredns:<version>-<hash>.
# Logs go to stderr and ${cache}/images/logs/; a failure names the step and its log.
# worker and operator need root (debootstrap, chroot); missing debootstrap is installed with apt-get.
# How each image is made, and why: hack/images.py.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false
py=${PYTHON:-python3}
exec "$py" "$here/hack/images.py" "$@"
