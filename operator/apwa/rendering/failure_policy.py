"""The subtask Job's podFailurePolicy: the template's rules behind the operator's own one.

Kubernetes applies the first rule that matches a failed pod. The operator's rule fails the Job at
once on FINAL_EXIT_CODE (what `apwa.worker.fail(..., final=True)` exits with) and comes first,
unless the template's own rules already decide that exit code for the main container: then the
template wins. `action_for` evaluates a policy the way the Job controller does for exit codes, so
the local runner retries exactly as a cluster would.
"""

from __future__ import annotations

from typing import Any

from apwa.api.models import MAX_POD_FAILURE_RULES, JobTemplate
from apwa.results.protocol import FINAL_EXIT_CODE


def _matches_exit_code(rule: dict[str, Any], container: str, exit_code: int) -> bool:
    on = rule.get("onExitCodes")
    if not on or on.get("containerName") not in (None, container):
        return False
    return (exit_code in on["values"]) == (on["operator"] == "In")


def action_for(policy: dict[str, Any], container: str, exit_code: int) -> str | None:
    """The action of the first rule matching `container` exiting with `exit_code` (a failure, not 0),
    or None: no rule matches, the failure counts against backoffLimit."""
    for rule in policy.get("rules") or []:
        if _matches_exit_code(rule, container, exit_code):
            return rule["action"]
    return None


def covers_final_exit_code(policy: dict[str, Any], main: str) -> bool:
    """True when the template's rules already decide what exit code 86 of the main container means."""
    return action_for(policy, main, FINAL_EXIT_CODE) is not None


def final_rule(main: str) -> dict[str, Any]:
    return {
        "action": "FailJob",
        "onExitCodes": {"containerName": main, "operator": "In", "values": [FINAL_EXIT_CODE]},
    }


def pod_failure_policy(template: JobTemplate, main: str) -> dict[str, Any]:
    """The rendered policy; ValueError when the operator's rule leaves no room."""
    own = template.pod_failure_policy.dump() if template.pod_failure_policy else {"rules": []}
    if covers_final_exit_code(own, main):
        return own
    if len(own["rules"]) >= MAX_POD_FAILURE_RULES:
        raise ValueError(
            f"{len(own['rules'])} rules and the operator adds one for the final "
            f"exit code {FINAL_EXIT_CODE}; Kubernetes allows {MAX_POD_FAILURE_RULES}: use at most "
            f"{MAX_POD_FAILURE_RULES - 1}, or decide exit code {FINAL_EXIT_CODE} in a rule of your own"
        )
    return {"rules": [final_rule(main), *own["rules"]]}
