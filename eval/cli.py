"""How every eval tool ends: library code raises, `run` turns the kit's errors into one line and exit 2."""
from __future__ import annotations

import sys

from ..core.datasets import BenchmarkDataError
from ..edge_runtime.backends import BackendError
from ..edge_runtime.contract import ManifestError


class EvalError(RuntimeError):
    """A problem with what an eval tool was asked to do; the message says what, in one line."""


def _known_errors() -> tuple[type[BaseException], ...]:
    known = [EvalError, BenchmarkDataError, BackendError, ManifestError]
    root = __package__.rsplit(".", 1)[0]
    # modules that need torch or the converters' tools are looked up only if the tool loaded them
    for module, name in ((".core.checkpoint", "CheckpointError"), (".converters.common", "ConversionError")):
        if (loaded := sys.modules.get(root + module)) is not None:
            known.append(getattr(loaded, name))
    return tuple(known)


def run(main, argv=None) -> int:
    """main(argv)'s exit status; the kit's errors and Ctrl-C become `error: ...` on stderr."""
    try:
        return main(argv) or 0
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if not isinstance(exc, _known_errors()):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
