"""`apwa run --local`: the same plan, executed as local processes."""

from apwa.local.runner import LocalRunError, run_local

__all__ = ["LocalRunError", "run_local"]
