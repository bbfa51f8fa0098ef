"""The operator: kopf handlers that feed one reconcile loop per ParallelWorkload."""
