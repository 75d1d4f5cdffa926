"""open_artifact(): a model file made ready to run, decided in one place.

It finds the file's manifest entry, checks that the file is intact (edge_runtime/verify.py),
opens the backend its format is registered with, and decides the window and padding with
contract.choose_window. run.py, bench.py and eval/drift.py all open artifacts this way, so
they run a model exactly as each other does.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .backends import BackendError, open_backend
from .contract import (DEFAULT_TILE, ArtifactEntry, ManifestError, ModelInfo, Tile, Window, abilities, artifact_entry,
                       artifact_extensions, backend_spec, choose_window, format_tile, kind_of_path)
from .verify import ArtifactError, verify_artifact


@dataclass
class OpenedArtifact:
    path: Path
    kind: str
    backend: object
    window: Window
    model: ModelInfo | None = None       # from the manifest beside the file, when there is one
    entry: ArtifactEntry | None = None

    @property
    def precision(self) -> str | None:
        return self.entry.precision if self.entry else None


def open_artifact(path, kind: str | None = None, scale: int | None = None, window: Tile | int | None = None,
                  threads: int = 0, flexible_default: Tile | int = DEFAULT_TILE) -> OpenedArtifact:
    """Verify and open the artifact at `path` and choose its window.

    kind: the format (default: from the file extension). scale: what the caller expects; the manifest's
    scale wins when none is given, and a different one is an error. window: a window the caller asks for
    (a tile, WHOLE_FRAME, or None for the default); a fixed-shape model honours it only when its runtime
    can resize the model (TFLite), otherwise it runs its own tile. flexible_default: the window of a
    shape-flexible model when none is asked for (see contract.choose_window). Raises BackendError (a damaged file is
    its subclass ArtifactError) with a one-line reason.
    """
    path = Path(path)
    kind = kind or kind_of_path(path)
    if kind is None or not backend_spec(kind).artifact:
        raise BackendError(f"{path}: not a model format this kit runs (expected {artifact_extensions()})")
    try:
        found = artifact_entry(path)
    except ManifestError as exc:
        raise BackendError(str(exc)) from None
    model, entry = found if found else (None, None)
    if model is not None:
        if scale and scale != model.scale:
            raise BackendError(f"{path}: manifest says x{model.scale}, but x{scale} was asked for")
        scale = model.scale
    verify_artifact(path, kind, scale)   # a damaged file would crash the interpreter instead of raising
    backend = open_backend(kind, path, threads=threads, scale=scale)
    _check_entry_shape(path, entry, backend)
    resizable = abilities(backend).resizable
    if window is not None and resizable and backend.input_hw is not None:
        backend.take_any_window()   # the caller's windows (or whole frames) run as they come
    return OpenedArtifact(path, kind, backend, choose_window(backend.input_hw, resizable, window, flexible_default),
                         model, entry)


def _check_entry_shape(path: Path, entry: ArtifactEntry | None, backend):
    """The manifest's tile is what run.py prints and drift records: it must be the model's own input."""
    listed = tuple(entry.tile) if entry and entry.tile else None
    actual = tuple(backend.input_hw) if backend.input_hw else None
    if entry is not None and listed != actual:
        raise ArtifactError(f"{path}: the manifest says its input is {_shown(listed)}, but the model takes "
                            f"{_shown(actual)}; the manifest does not describe this file")


def _shown(hw: Tile | None) -> str:
    return format_tile(hw) if hw else "any size"
