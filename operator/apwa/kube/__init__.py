"""Async access to the Kubernetes API: bounded, retried, never blocking the event loop."""

from apwa.kube.client import ApiError, Kube

__all__ = ["ApiError", "Kube"]
