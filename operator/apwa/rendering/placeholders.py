"""`{{ index }}`, `{{ count }}`, `{{ workload }}`, `{{ item }}` and `{{ item.a.b }}` in command,
args and env values. Strings are inserted as they are; other JSON values as compact JSON.

Kubernetes' own `$(APWA_INDEX)` expansion works too; placeholders add access to item fields.
"""

from __future__ import annotations

import json
import re
from typing import Any

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_.-]*)\s*\}\}")


class PlaceholderError(ValueError):
    pass


# A context key no placeholder can name: why index and item are missing from this context.
WHY_MISSING = "\0why"


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), sort_keys=True)


def _lookup(name: str, context: dict[str, Any]) -> Any:
    head, _, rest = name.partition(".")
    if head in ("index", "count", "workload", "item") and head not in context:
        why = context.get(WHY_MISSING, "a reduce step has no item or index")
        raise PlaceholderError(f"{{{{ {name} }}}} is not available in this Job ({why})")
    if head not in context:
        raise PlaceholderError(f"unknown placeholder {{{{ {name} }}}} (use index, count, workload or item)")
    value = context[head]
    path = head
    for part in rest.split(".") if rest else []:
        path += "." + part
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise PlaceholderError(f"{{{{ {name} }}}}: the item has no field {path!r}")
    return value


def substitute(text: str, context: dict[str, Any]) -> str:
    return _PLACEHOLDER.sub(lambda m: _text(_lookup(m.group(1), context)), text)
