"""`make demo`: the wordcount example on real pods, printed.

On a machine with a working Docker daemon and kind, the kind flow of tests/e2e/test_kind.py;
otherwise (as here) the local control plane with the real node of hack/realnode.sh (root needed):
images built on this machine, the chart installed with them, the example run in namespace
apwa-demo. APWA_DEMO=kind|real picks one.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]
from e2e_examples import ROOT, example_docs, wait_finished, workload_name  # noqa: E402
from real_node import OPERATOR_NS, RELEASE, bring_up, helm_install  # noqa: E402

NAMESPACE = "apwa-demo"


def real() -> int:
    if os.geteuid() != 0:
        print("make demo without Docker runs a real kubelet node here, which needs root", file=sys.stderr)
        return 1
    print("starting the control plane and the real node, building the images (first time: ~30 min)...", flush=True)
    node = bring_up()
    print("installing charts/apwa with the locally built operator image...", flush=True)
    helm_install(node, namespaces=None)
    node.kubectl("-n", OPERATOR_NS, "rollout", "status", f"deployment/{RELEASE}", "--timeout=300s", timeout=320)
    example = ROOT / "examples" / "wordcount.yaml"
    name = workload_name(example)
    node.kubectl("apply", "-f", "-", stdin=f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NAMESPACE}}}\n")
    node.kubectl("-n", NAMESPACE, "delete", "parallelworkload", name, "--ignore-not-found", "--wait=true")
    node.kubectl("-n", NAMESPACE, "apply", "-f", "-", stdin=example_docs(example, node.images["worker"], node.place))
    print(f"waiting for ParallelWorkload {NAMESPACE}/{name} (kubectl get pwl -n {NAMESPACE} -w shows progress)...")
    status = wait_finished(lambda: node.get("-n", NAMESPACE, "parallelworkload", name), f"{NAMESPACE}/{name}")["status"]
    print(yaml.safe_dump({"phase": status["phase"], "message": status["message"], "result": status.get("result")}))
    print(f"The cluster keeps running. Next:\n  export KUBECONFIG={node.kubeconfig} PATH={node.bin_dir}:$PATH")
    print(f"  kubectl get pwl -n {NAMESPACE}; kubectl get pods -n {NAMESPACE} -o wide")
    print("  make cluster-down    # when done: stops everything, removes the node's state")
    return 0 if status["phase"] == "Succeeded" else 1


def main() -> int:
    choice = os.environ.get("APWA_DEMO", "")
    if choice not in ("", "kind", "real"):
        print(f"APWA_DEMO must be kind or real, not {choice!r}", file=sys.stderr)
        return 2
    if choice == "kind" or not choice:
        from test_kind import demo, missing

        reason = missing()
        if choice == "kind" or reason is None:
            return demo()
        print(f"kind is not usable here ({reason}): running on the local real node instead", flush=True)
    return real()


if __name__ == "__main__":
    sys.exit(main())
