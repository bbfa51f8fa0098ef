"""APWA: run massively parallel agent workloads on Kubernetes."""

__version__ = "0.1.0"

GROUP = "apwa.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ParallelWorkload"
PLURAL = "parallelworkloads"
SINGULAR = "parallelworkload"
SHORT_NAMES = ["pwl"]
