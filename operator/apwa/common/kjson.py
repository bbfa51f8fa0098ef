"""JSON as Kubernetes carries it: what the operator reads from outside (termination messages,
ConfigMap items) and writes back into a status, a Job or a ConfigMap must fit there.

Python's json module reads more than the API server takes: NaN and Infinity (not JSON at all),
numbers beyond float64 (the API server answers 400 to 1e400 or a 400-digit integer, so one such
value would fail every status write of its workload), and nesting as deep as the text is long
(RecursionError past Python's recursion limit, in the reader or in any later serialiser). `loads`
refuses all of them with `UnfitJson` instead.
"""

from __future__ import annotations

import json
import sys
from typing import Any

# Deep enough for any real document; shallow enough that every serialiser on the operator's
# stack (json, the kubernetes client's sanitiser, pydantic) stays far from the recursion limit.
MAX_DEPTH = 100
_FLOAT64_MAX = sys.float_info.max


class UnfitJson(ValueError):
    """Text that parses as Python's json does, but that Kubernetes can't carry (the message says why)."""


class NotJsonConstant(UnfitJson):
    """NaN or Infinity: Python's json reads them; RFC 8259, and so the API server, does not."""


def _no_constant(name: str) -> Any:
    raise NotJsonConstant(f"{name} is not a JSON number (Kubernetes' JSON has no NaN or Infinity): send it as a string")


def _finite_float(text: str) -> float:
    value = float(text)
    if abs(value) > _FLOAT64_MAX:
        raise UnfitJson(
            f"the number {text[:40]} is beyond float64, which Kubernetes' JSON can't hold: send it as a string"
        )
    return value


def _bounded_int(text: str) -> int:
    value = int(text)  # ValueError past Python's 4,300 digits, turned into UnfitJson by loads
    if abs(value) > _FLOAT64_MAX:
        raise UnfitJson(
            f"the integer {text[:20]}... ({len(text)} digits) is beyond float64, which Kubernetes' JSON can't hold: "
            "send it as a string"
        )
    return value


def depth(value: Any) -> int:
    """Nesting depth of a decoded JSON value (a scalar is 0), without recursion (it may be deep)."""
    deepest, stack = 0, [(value, 1)] if isinstance(value, dict | list) else []
    while stack:
        node, level = stack.pop()
        deepest = max(deepest, level)
        children = node.values() if isinstance(node, dict) else node
        stack.extend((c, level + 1) for c in children if isinstance(c, dict | list))
    return deepest


def loads(text: str | bytes) -> Any:
    """json.loads for what Kubernetes carries: json.JSONDecodeError for text that is not JSON,
    UnfitJson (NotJsonConstant for NaN and Infinity) for JSON that Kubernetes can't hold."""
    try:
        value = json.loads(text, parse_constant=_no_constant, parse_float=_finite_float, parse_int=_bounded_int)
    except RecursionError:
        raise UnfitJson(f"the JSON is nested deeper than {MAX_DEPTH} levels") from None
    except (json.JSONDecodeError, UnfitJson):
        raise
    except ValueError as e:  # an integer past Python's digit limit
        raise UnfitJson(f"a number in the JSON can't be read ({e}): send it as a string") from None
    if depth(value) > MAX_DEPTH:
        raise UnfitJson(f"the JSON is nested deeper than {MAX_DEPTH} levels")
    return value
