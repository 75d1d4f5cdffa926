"""docs/extending.md's promise: a new runtime is one backend class plus one registry entry, and
the runtime's window rule, open_artifact and Upscaler then work with it unchanged."""
from __future__ import annotations

import numpy as np

from drsan_kit.edge_runtime import contract
from drsan_kit.edge_runtime.artifact import open_artifact
from drsan_kit.edge_runtime.upscaler import Upscaler


class NearestBackend:
    """A stand-in runtime: nearest-neighbour x2 of whatever window it gets."""
    kind = "nearest"

    def __init__(self, path, threads: int = 0, scale: int | None = None):
        self.scale, self.input_hw, self.precision, self.name = 2, None, "fp32", "nearest (test)"
        self.calls = 0

    def __call__(self, tile: np.ndarray) -> np.ndarray:
        self.calls += 1
        return tile.repeat(2, axis=0).repeat(2, axis=1)


def test_a_new_backend_is_one_class_and_one_registry_entry(tmp_path, monkeypatch):
    monkeypatch.setattr(contract, "BACKENDS", dict(contract.BACKENDS))   # the entry lives for this test only
    contract.register_backend(contract.BackendSpec("nearest", (".nearest",), __name__, "NearestBackend",
                                                   help="a test model"))
    model = tmp_path / "m.nearest"
    model.write_bytes(b"any bytes: the manifest's SHA-256 is what verification checks")
    entry = contract.ArtifactEntry(model.name, "nearest", "fp32", None, True, contract.sha256(model),
                                   contract.artifact_size(model))
    contract.write_manifest(tmp_path, contract.Manifest(contract.ModelInfo("32s", 2), [entry]))

    assert contract.kind_of_path(model) == "nearest" and "nearest" in contract.artifact_kinds()
    art = open_artifact(model, window=(32, 40))
    assert isinstance(art.backend, NearestBackend) and art.entry.format == "nearest"
    assert art.window == contract.Window((32, 40), pad=False)
    frame = np.random.default_rng(0).random((70, 90, 3), dtype=np.float32)
    out = Upscaler(art.backend, window=art.window).frame(frame)
    assert np.array_equal(out, frame.repeat(2, axis=0).repeat(2, axis=1)) and art.backend.calls > 1


def test_registry_refuses_a_taken_kind_or_extension(monkeypatch):
    monkeypatch.setattr(contract, "BACKENDS", dict(contract.BACKENDS))
    for spec in (contract.BackendSpec("onnx", (".x",), "m", "C"), contract.BackendSpec("y", (".tflite",), "m", "C")):
        try:
            contract.register_backend(spec)
        except ValueError as exc:
            assert "already" in str(exc)
        else:
            raise AssertionError(f"{spec.kind} was registered twice")
