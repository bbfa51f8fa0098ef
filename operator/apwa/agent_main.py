"""`apwa-agent`: the built-in agent of a subtask (apwa.agent), or, in the pod of an LLM reduce
($APWA_AGENT_REDUCE set by the operator), the merge of every result (apwa.agent_reduce)."""

from __future__ import annotations

import logging
import os
import sys

from apwa import agent, agent_reduce
from apwa.api.models import ENV_AGENT_REDUCE


def main() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    if ENV_AGENT_REDUCE in os.environ:
        agent_reduce.run()
    else:
        agent.run()
