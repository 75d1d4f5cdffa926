"""JSON from files a user hands the kit, parsed with a nesting limit (stdlib only).

json's C parser recurses once per level of [ and { and stops at the interpreter's
recursion limit; a process that imported onnx2tf (the converters) has that limit
raised to 2**31, and there a deeply nested file overflows the C stack: a crash,
not an error. So the depth is counted first, without parsing.
"""
from __future__ import annotations

import json

# far deeper than anything the kit writes (manifests nest 5 levels, reference metadata 3)
MAX_NESTING = 64


class NestingError(ValueError):
    pass


def nesting(text: str) -> int:
    """How deep JSON text nests its [ and { (outside strings)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            escaped, in_string = (False, True) if escaped else (ch == "\\", ch != '"')
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def loads(text: str):
    """json.loads, refusing text nested deeper than MAX_NESTING (NestingError, a ValueError)."""
    if nesting(text) > MAX_NESTING:
        raise NestingError("nested too deeply")
    return json.loads(text)
