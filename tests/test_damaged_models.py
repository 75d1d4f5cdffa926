"""A real TFLite artifact cut short and with bytes flipped, run through edge_runtime/run.py as users run it.

No run may end by a signal (a segfault in the interpreter) or print a traceback. A file the runtime can
tell is damaged is refused with exit status 2 and nothing written: every damage when the manifest.json
beside it records the file's SHA-256, every cut without one.
"""
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import CONVERT_TILE, run_tool

MODEL = f"drsan_32s_x4_{CONVERT_TILE}_int8.tflite"
CUTS = [0.0, 8, 100, 5000, 0.25, 0.5, 0.75, -100, -8, -1]   # bytes kept: a count, a fraction, or all but n
FLIPS = [0, 4, 16, 64, 256, 1024, 0.3, 0.6, 0.9]               # byte inverted: an offset, or a fraction


def _cut(data: bytes, keep) -> bytes:
    n = len(data)
    return data[: int(keep * n) if isinstance(keep, float) else keep if keep >= 0 else n + keep]


def _flip(data: bytes, at) -> bytes:
    i = int(at * len(data)) if isinstance(at, float) else at
    out = bytearray(data)
    out[i] ^= 0xFF
    return bytes(out)


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 28, 3), dtype=np.uint8)).save(path)
    return path


def _damaged(tflite_artifacts, tmp_path, damage, with_manifest: bool):
    folder = tmp_path / "model"
    folder.mkdir()
    data = (tflite_artifacts / MODEL).read_bytes()
    kind, how = damage
    (folder / MODEL).write_bytes(_cut(data, how) if kind == "cut" else _flip(data, how))
    if with_manifest:
        shutil.copy(tflite_artifacts / "manifest.json", folder / "manifest.json")
    return folder / MODEL


def _run(model, image, out):
    proc = run_tool("edge_runtime/run.py", "--tflite", model, image, "--out", out, "--quiet", check=False)
    assert proc.returncode >= 0, f"run.py died by signal {-proc.returncode}"
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


DAMAGES = [("cut", c) for c in CUTS] + [("flip", f) for f in FLIPS]


@pytest.mark.parametrize("damage", DAMAGES, ids=[f"{k}-{v}" for k, v in DAMAGES])
def test_damage_is_refused_by_the_manifest_hash(tflite_artifacts, tmp_path, image, damage):
    model = _damaged(tflite_artifacts, tmp_path, damage, with_manifest=True)
    out = tmp_path / "out"
    proc = _run(model, image, out)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(model) in lines[0] and "manifest.json" in lines[0], proc.stderr
    assert not out.exists()


@pytest.mark.parametrize("damage", DAMAGES, ids=[f"{k}-{v}" for k, v in DAMAGES])
def test_damage_without_manifest_never_crashes(tflite_artifacts, tmp_path, image, damage):
    model = _damaged(tflite_artifacts, tmp_path, damage, with_manifest=False)
    out = tmp_path / "out"
    proc = _run(model, image, out)
    if damage[0] == "cut":   # a cut file is always caught; a flipped weight byte may still be a working model
        assert proc.returncode == 2, proc.stderr
    assert proc.returncode in (0, 2), proc.stderr
    if proc.returncode == 2:
        assert str(model) in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert not out.exists()
    else:
        assert Image.open(out / "in_x4.png").size == (112, 80)


def test_intact_model_passes_both_checks(tflite_artifacts, tmp_path, image):
    from drsan_kit.edge_runtime.verify import verify_artifact

    assert "SHA-256" in verify_artifact(tflite_artifacts / MODEL, "tflite")
    alone = tmp_path / MODEL
    shutil.copy(tflite_artifacts / MODEL, alone)
    assert "separate process" in verify_artifact(alone, "tflite")
    _run(alone, image, tmp_path / "out")
    assert (tmp_path / "out" / "in_x4.png").exists()


def test_damaged_onnx_and_mlpackage_are_refused(onnx_artifacts, tmp_path):
    from drsan_kit.edge_runtime.verify import ArtifactError, verify_artifact

    data = (onnx_artifacts / "drsan_32s_x4_dynamic.onnx").read_bytes()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="cut.onnx"):
        verify_artifact(cut, "onnx", scale=4)
    pkg = tmp_path / "m.mlpackage"
    (pkg / "Data" / "com.apple.CoreML").mkdir(parents=True)
    (pkg / "Manifest.json").write_text(json.dumps({
        "rootModelIdentifier": "a", "itemInfoEntries": {"a": {"path": "com.apple.CoreML/model.mlmodel"}}}))
    with pytest.raises(ArtifactError, match="model.mlmodel is missing or empty"):
        verify_artifact(pkg, "coreml")
    (pkg / "Manifest.json").write_text("{")
    with pytest.raises(ArtifactError, match="Manifest.json missing or unreadable"):
        verify_artifact(pkg, "coreml")


@pytest.mark.parametrize("tile,says", [([64, 64], "64x64"), (None, "any size")])
def test_manifest_with_another_input_shape_is_refused(tflite_artifacts, tmp_path, image, tile, says):
    """The manifest's tile is what the runtime reports: an edited one must not pass for the model's."""
    folder = tmp_path / "model"
    folder.mkdir()
    shutil.copy(tflite_artifacts / MODEL, folder / MODEL)
    manifest = json.loads((tflite_artifacts / "manifest.json").read_text())
    for entry in manifest["artifacts"]:
        if entry["file"] == MODEL:
            entry["tile"] = tile
    (folder / "manifest.json").write_text(json.dumps(manifest))
    proc = _run(folder / MODEL, image, tmp_path / "out")
    assert proc.returncode == 2 and f"the manifest says its input is {says}" in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()
