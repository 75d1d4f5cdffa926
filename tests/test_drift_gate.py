"""eval/drift.py on bad input and on artifacts it cannot run: one-line errors, checks before the long work,
and a --max-drift gate that never passes on an artifact it did not measure."""
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import CONVERT_TILE, run_tool

FIXED = f"drsan_32s_x4_{CONVERT_TILE}.onnx"
DYNAMIC = "drsan_32s_x4_dynamic.onnx"


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """One set of one small image: a drift run on it takes a second or two."""
    from skimage import data

    root = tmp_path_factory.mktemp("data")
    (root / "TinyB" / "HR").mkdir(parents=True)
    Image.fromarray(data.chelsea()[:48, :64]).save(root / "TinyB" / "HR" / "chelsea.png")
    return root


@pytest.fixture(scope="module")
def two_onnx(tmp_path_factory, shipped_x4):
    """A fixed-shape and a dynamic ONNX of the shipped x4 weights, with their manifest (a few seconds)."""
    out = tmp_path_factory.mktemp("arts")
    run_tool("converters/to_onnx.py", "--tile", CONVERT_TILE, "--out", out)
    run_tool("converters/to_onnx.py", "--dynamic", "--tile", CONVERT_TILE, "--out", out)
    return out


@pytest.fixture
def one_damaged(two_onnx, tmp_path):
    """The two ONNX files, the dynamic one changed after conversion (its SHA-256 no longer matches)."""
    arts = tmp_path / "damaged"
    shutil.copytree(two_onnx, arts)
    blob = bytearray((arts / DYNAMIC).read_bytes())
    blob[-1] ^= 0xFF
    (arts / DYNAMIC).write_bytes(bytes(blob))
    return arts


def drift(*args):
    proc = run_tool("eval/drift.py", *args, check=False)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def one_error_line(proc) -> str:
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr
    return errors[0]


def test_gate_fails_when_an_artifact_was_skipped(one_damaged, tiny_data, tmp_path):
    proc = drift("--artifacts", one_damaged, "--data", tiny_data, "--out", tmp_path / "rep", "--max-drift", "1")
    assert proc.returncode == 4, proc.stderr
    assert "gate passed" not in proc.stderr
    failed = [line for line in proc.stderr.splitlines() if line.startswith("DRIFT GATE FAILED")]
    assert len(failed) == 1 and DYNAMIC in failed[0] and "not measured" in failed[0] and "SHA-256" in failed[0]
    assert [a["file"] for a in json.loads((tmp_path / "rep" / "drift.json").read_text())["artifacts"]] == [FIXED]


def test_skipped_artifacts_are_listed_in_the_output_and_reports(one_damaged, tiny_data, tmp_path):
    proc = drift("--artifacts", one_damaged, "--data", tiny_data, "--out", tmp_path / "rep")
    assert proc.returncode == 0, proc.stderr
    rep = json.loads((tmp_path / "rep" / "drift.json").read_text())
    assert [s["file"] for s in rep["skipped"]] == [DYNAMIC] and "SHA-256" in rep["skipped"][0]["reason"]
    for text in (proc.stdout, (tmp_path / "rep" / "drift.md").read_text()):
        assert "Skipped artifacts (NOT measured)" in text and f"- {DYNAMIC}: " in text


def test_gate_status_for_drift_and_for_skipped_artifacts():
    from drsan_kit.eval.drift import GATE_EXCEEDED, GATE_UNMEASURED, gate

    def report(dpsnr, skipped):
        return {"artifacts": [{"label": "a.onnx", "sets": {"S": {"dpsnr": dpsnr}}}],
                "skipped": [{"file": "b.onnx", "reason": "damaged"}] if skipped else []}

    assert (GATE_EXCEEDED, GATE_UNMEASURED) == (3, 4)
    assert gate(report(-0.1, False), 0.5) == 0
    assert gate(report(-0.1, True), 0.5) == GATE_UNMEASURED
    assert gate(report(-0.9, True), 0.5) == GATE_EXCEEDED   # the measured failure comes first
    assert gate(report(-0.9, True), None) == 0               # no gate asked for


def test_a_set_without_images_is_a_one_line_error(two_onnx, tmp_path):
    (tmp_path / "data" / "Empty" / "HR").mkdir(parents=True)
    proc = drift("--artifacts", two_onnx, "--data", tmp_path / "data", "--out", tmp_path / "rep")
    assert "set Empty has no images" in one_error_line(proc)
    assert not (tmp_path / "rep").exists()


def test_a_set_without_images_is_left_out_when_another_has_some(two_onnx, tiny_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    (data / "Empty" / "HR").mkdir(parents=True)
    proc = drift("--artifacts", two_onnx, "--data", data, "--out", tmp_path / "rep")
    assert proc.returncode == 0 and "note: set Empty has no images" in proc.stderr, proc.stderr
    rep = json.loads((tmp_path / "rep" / "drift.json").read_text())
    assert rep["empty_sets"] == ["Empty"] and all(set(a["sets"]) == {"TinyB"} for a in rep["artifacts"])


def _npz_without_meta(path):
    np.savez(path, x=np.zeros(3))


def _npz_with_deep_meta(path):
    np.savez(path, __meta__=np.frombuffer(b"[" * 100_000 + b"]" * 100_000, dtype=np.uint8))


@pytest.mark.parametrize("make,message", [
    (None, "not found"),
    (lambda p: Image.new("RGB", (4, 4)).save(p, format="PNG"), "is not a reference saved with --save-reference"),
    (lambda p: p.write_text("hello"), "is not a reference saved with --save-reference"),
    (_npz_without_meta, "is not a reference saved with --save-reference"),
    (_npz_with_deep_meta, "(nested too deeply)"),
    (lambda p: p.mkdir(), "not found (a folder)"),
], ids=["missing", "png", "text", "npz-without-meta", "deep-meta", "folder"])
def test_a_bad_reference_file_is_a_one_line_error(make, message, two_onnx, tiny_data, tmp_path):
    ref = tmp_path / "ref.npz"
    if make:
        make(ref)
    proc = drift("--artifacts", two_onnx, "--data", tiny_data, "--reference", ref, "--out", tmp_path / "rep")
    assert message in one_error_line(proc)
    assert not (tmp_path / "rep").exists()


@pytest.mark.parametrize("flag", ["--out", "--save-reference"])
def test_an_output_that_cannot_be_written_is_refused_before_the_evaluation(flag, one_damaged, tiny_data, tmp_path):
    taken = tmp_path / ("a_file.png" if flag == "--out" else "a_folder")
    if flag == "--out":
        taken.write_bytes(b"keep me")
    else:
        taken.mkdir()
    args = ["--artifacts", one_damaged, "--data", tiny_data, "--out", tmp_path / "rep", flag, taken]
    proc = drift(*args)
    assert one_error_line(proc).startswith(f"error: {flag} {taken}: it is a")
    assert "skipped" not in proc.stderr   # stopped before any artifact was opened, let alone run
    assert flag != "--out" or taken.read_bytes() == b"keep me"


def test_save_reference_never_overwrites_the_reference_it_reads(two_onnx, tiny_data, tmp_path):
    ref = tmp_path / "ref.npz"
    drift("--artifacts", two_onnx, "--data", tiny_data, "--out", tmp_path / "r1", "--save-reference", ref)
    before = ref.read_bytes()
    proc = drift("--artifacts", two_onnx, "--data", tiny_data, "--out", tmp_path / "r2", "--reference", ref,
                 "--save-reference", ref)
    assert "would overwrite the --reference input" in one_error_line(proc)
    assert ref.read_bytes() == before


def test_a_model_the_manifest_does_not_list_fails_the_gate(two_onnx, tiny_data, tmp_path):
    arts = tmp_path / "extra"
    shutil.copytree(two_onnx, arts)
    shutil.copy(arts / FIXED, arts / "extra_model.onnx")
    proc = drift("--artifacts", arts, "--data", tiny_data, "--out", tmp_path / "rep", "--max-drift", "1")
    assert proc.returncode == 4 and "extra_model.onnx was skipped, not measured (not listed in manifest.json" \
        in proc.stderr, proc.stderr


@pytest.mark.parametrize("args,message", [
    (["--exclude", "int9"], "--exclude int9: not a precision"),
    (["--sets", ",,"], "--sets ',,' names no set"),
])
def test_names_that_match_nothing_are_refused(two_onnx, tiny_data, tmp_path, args, message):
    proc = drift("--artifacts", two_onnx, "--data", tiny_data, "--out", tmp_path / "rep", *args)
    assert message in one_error_line(proc)


def test_a_reference_saved_from_other_images_is_not_completed_silently(two_onnx, tiny_data, tmp_path):
    ref = tmp_path / "ref.npz"
    drift("--artifacts", two_onnx, "--data", tiny_data, "--out", tmp_path / "r1", "--save-reference", ref)
    proc = drift("--artifacts", two_onnx, "--data", tiny_data, "--out", tmp_path / "r2", "--reference", ref,
                 "--margin", "4")
    assert "has no reference output for" in one_error_line(proc) and "save it again" in proc.stderr
