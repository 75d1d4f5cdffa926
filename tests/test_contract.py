"""The contract shared by converters, runtime and eval: tile spec (fast, torch-free)."""
import argparse

import pytest

from conftest import run_tool
from drsan_kit.edge_runtime.contract import (DEFAULT_MARGIN, DEFAULT_TILE, WHOLE_FRAME, argtype, format_tile,
                                             parse_artifact_tile, parse_tile, parse_tiles, parse_window,
                                             window_tile)


@pytest.mark.parametrize("text,tile", [("192x336", (192, 336)), ("24X32", (24, 32)), (" 48 ", (48, 48))])
def test_parse_tile_reads_hxw_and_square(text, tile):
    assert parse_tile(text) == tile
    assert parse_tile(format_tile(tile)) == tile


@pytest.mark.parametrize("text,message", [("abc", "HxW"), ("3x4x5", "HxW"), ("0x8", "positive"), ("", "HxW")])
def test_parse_tile_names_the_problem(text, message):
    with pytest.raises(ValueError, match=message):
        parse_tile(text)


def test_artifact_tiles_have_a_minimum():
    assert parse_artifact_tile("8x8") == (8, 8)
    with pytest.raises(ValueError, match="at least 8x8"):
        parse_artifact_tile("4x64")


def test_windows_and_lists():
    assert parse_window("0") == parse_window("full") == WHOLE_FRAME
    assert window_tile(parse_window("0")) is None and window_tile(None) is None
    assert window_tile(parse_window("16x24")) == (16, 24)
    with pytest.raises(ValueError, match="0 for the whole frame"):
        parse_window("big")
    assert parse_tiles("48,96,192x336") == [(48, 48), (96, 96), DEFAULT_TILE]
    assert parse_tiles("") == []


def test_argtype_turns_errors_into_usage_errors():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tile", type=argtype(parse_tile))
    with pytest.raises(argparse.ArgumentTypeError, match="HxW"):
        argtype(parse_tile)("nope")
    assert ap.parse_args(["--tile", "8x16"]).tile == (8, 16)


def test_every_tiler_default_is_the_contract_margin():
    from drsan_kit.edge_runtime.tiler import Tiler
    from drsan_kit.edge_runtime.upscaler import Upscaler

    class Flexible:
        name, scale, input_hw = "fake", 2, None

    assert Tiler(2, (64, 64)).margin == DEFAULT_MARGIN
    assert Upscaler(Flexible(), tile=(64, 64)).tiler.margin == DEFAULT_MARGIN


@pytest.mark.parametrize("script", ["edge_runtime/run.py", "converters/to_onnx.py", "eval/drift.py",
                                    "eval/benchmark.py"])
def test_bad_tile_is_a_one_line_usage_error(script, tmp_path):
    proc = run_tool(script, "--tile", "abc", "--artifacts", tmp_path, "x.png", check=False)
    assert proc.returncode == 2 and "HxW" in proc.stderr and "Traceback" not in proc.stderr


def test_precision_table_knows_every_tflite_mode_and_its_sources():
    from drsan_kit.converters.to_tflite import parse_quant
    from drsan_kit.edge_runtime.contract import PRECISIONS, PTQ, QAT, TFLITE_MODES, precision

    assert parse_quant("all") == list(TFLITE_MODES) == ["fp32", "fp16", "int8", "int8_io", "int16x8"]
    assert {m for m in TFLITE_MODES if QAT in precision(m).quantization} == {"int8", "int8_io"}
    assert all(PTQ in p.quantization for p in PRECISIONS.values() if p.integer)
    assert [m for m in TFLITE_MODES if precision(m).io == "int8"] == ["int8_io"]
    assert all(p.prelu == ("decomposed" if p.integer else "native") for p in PRECISIONS.values())
    with pytest.raises(ValueError, match="unknown precision"):
        precision("int4")
    with pytest.raises(argparse.ArgumentTypeError, match="int4"):
        parse_quant("fp32,int4")


@pytest.mark.parametrize("name,level", [("int8_io", "int8"), ("fp16_w8", "fp16"), ("int16x8", "int16x8")])
def test_checks_use_the_tolerance_of_their_precision(name, level):
    import numpy as np

    from drsan_kit.converters import common
    from drsan_kit.edge_runtime.contract import TOLERANCES

    ref = np.random.default_rng(0).random((2, 8, 8, 3), dtype=np.float32)
    tol = TOLERANCES[level]
    small = min(tol.max_abs, 10 ** (-tol.min_psnr / 20)) / 2   # inside both limits
    ok = common.enforce(common.compare(ref + small, ref), name, "x")
    assert ok["passed"] and ok["tolerance"] == {"min_psnr": tol.min_psnr, "max_abs": tol.max_abs}
    with pytest.raises(common.ConversionError, match=f"outside the {level} tolerance"):
        common.enforce(common.compare(ref + tol.max_abs * 2, ref), name, "x")


# A manifest as converters wrote it before the schema had a version: an ONNX entry, a PTQ int8 entry
# without the "quantization" field, a QAT one with it, and an entry without hash or size.
OLD_MANIFEST = {
    "model": {"variant": "32s", "scale": 4, "checkpoint": "weights/drsan_32s_x4.pt", "checkpoint_sha256": "ab"},
    "artifacts": [
        {"file": "m_dynamic.onnx", "format": "onnx", "precision": "fp32", "tile": None, "dynamic_shape": True,
         "sha256": "00", "check": {"passed": True}, "size_bytes": 10, "opset": 17},
        {"file": "m_int8.tflite", "format": "tflite", "precision": "int8", "tile": [24, 32], "dynamic_shape": False,
         "sha256": "11", "check": {}, "size_bytes": 20, "io": "float32", "calibration": "8 crops", "prelu": "sub"},
        {"file": "m_int8_qat.tflite", "format": "tflite", "precision": "int8", "tile": [24, 32],
         "dynamic_shape": False, "sha256": "22", "check": {}, "size_bytes": 30, "io": "float32",
         "calibration": None, "quantization": "qat", "qat": {"iterations": 5}, "prelu": "sub"},
        {"file": "m_fp16.mlpackage", "format": "coreml", "precision": "fp16_w8", "tile": [24, 32],
         "dynamic_shape": False, "check": {}},
    ],
}


def test_manifest_written_before_versions_reads_and_round_trips(tmp_path):
    import json

    from drsan_kit.edge_runtime.contract import SCHEMA_VERSION, QAT, read_manifest, write_manifest

    (tmp_path / "manifest.json").write_text(json.dumps(OLD_MANIFEST))
    m = read_manifest(tmp_path)
    assert m.schema_version == 1 and (m.model.variant, m.model.scale) == ("32s", 4)
    onnx, ptq, qat, coreml = m.artifacts
    assert onnx.tile is None and onnx.dynamic_shape and onnx.extra == {"opset": 17}
    assert ptq.tile == (24, 32) and ptq.quantization is None and qat.quantization == QAT
    assert qat.extra["qat"] == {"iterations": 5} and coreml.sha256 is None and coreml.size_bytes is None
    assert m.entry("m_int8_qat.tflite") is qat and m.entry("other.onnx") is None
    write_manifest(tmp_path, m)
    again = json.loads((tmp_path / "manifest.json").read_text())
    assert again == {"schema_version": SCHEMA_VERSION, **OLD_MANIFEST}


@pytest.mark.parametrize("change,message", [
    (lambda d: d.update(schema_version=99), "newer than this kit"),
    (lambda d: d["model"].pop("scale"), "scale"),
    (lambda d: d["artifacts"][1].update(tile=[24]), "not \\[height, width\\]"),
    (lambda d: d["artifacts"][1].update(file="../m_int8.tflite"), "not a plain name"),
    (lambda d: d["artifacts"][0].pop("format"), "needs file, format and precision"),
    (lambda d: d["model"].update(scale=True), "scale \\(positive integer\\)"),
    (lambda d: d["artifacts"][1].update(tile=[True, True]), "not \\[height, width\\]"),
    (lambda d: d["artifacts"][1].update(size_bytes="big"), "size_bytes 'big' is not a byte count"),
    (lambda d: d["artifacts"][1].update(sha256=12345), "sha256 12345 is not a hex digest"),
    (lambda d: d["artifacts"][1].update(check=[1, 2]), "check \\[1, 2\\] is not an object"),
    (lambda d: d["artifacts"][1].update(dynamic_shape="no"), "dynamic_shape 'no' is not true or false"),
    # names the runtime would print or act on as if they were true
    (lambda d: d["artifacts"][1].update(precision="int4"), "unknown precision 'int4'"),
    (lambda d: d["artifacts"][1].update(format="zzz"), "unknown format 'zzz'"),
    (lambda d: d["artifacts"][1].update(format="onnx"), "format onnx does not match the file name"),
    (lambda d: d["artifacts"][0].update(precision="int8"), "precision int8 is not built as onnx"),
    (lambda d: d["model"].update(variant="zzz"), "unknown variant 'zzz'"),
    (lambda d: d["model"].update(scale=5), "scale 5 is not one of"),
    (lambda d: d["model"].update(checkpoint=5), "checkpoint 5 is not a path"),
    (lambda d: d["artifacts"].append(dict(d["artifacts"][1], sha256="ff")), "m_int8.tflite is listed twice"),
    (lambda d: d["artifacts"][1].update(quantization="bogus"), "quantization 'bogus' is not one of int8's"),
    (lambda d: d["artifacts"][0].update(quantization="ptq"), "not one of fp32's \\(none\\)"),
    (lambda d: d["artifacts"][2].update(qat="yes"), "qat 'yes' is not an object"),
    (lambda d: d["artifacts"][2].update(stagger=[2]), "stagger is not an object on a QAT file"),
    (lambda d: d["artifacts"][1].update(stagger={"copies": 2}), "stagger is not an object on a QAT file"),
    (lambda d: d["artifacts"][2].update(stagger={"copies": 2.0}), "stagger copies 2.0 is not a whole number"),
    (lambda d: d["artifacts"][2].update(stagger={"copies": 2, "upsampler": "yes"}),
     "stagger upsampler 'yes' is not true or false"),
    (lambda d: d["artifacts"][1]["check"].update(psnr_vs_reference_db="44.7"), "psnr_vs_reference_db '44.7' is not a number"),
])
def test_manifest_breaking_the_schema_is_named(tmp_path, change, message):
    import copy
    import json

    from drsan_kit.edge_runtime.contract import ManifestError, read_manifest

    data = copy.deepcopy(OLD_MANIFEST)
    change(data)
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=message):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match="unreadable"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").unlink()
    (tmp_path / "manifest.json").mkdir()
    with pytest.raises(ManifestError, match="manifest.json: not a file"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").rmdir()
    (tmp_path / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ManifestError, match="nested too deeply"):
        read_manifest(tmp_path)


def test_update_merges_by_file_and_refuses_another_model_or_a_damaged_manifest(tmp_path):
    from drsan_kit.edge_runtime.contract import (ArtifactEntry, ManifestError, ModelInfo, check_manifest_target,
                                                 read_manifest, update_manifest)

    x4 = ModelInfo("32s", 4, "a.pt", {"checkpoint_sha256": "aa"})
    update_manifest(tmp_path, x4, [ArtifactEntry("b.onnx", "onnx", "fp32"), ArtifactEntry("a.onnx", "onnx", "fp32")])
    update_manifest(tmp_path, x4, [ArtifactEntry("b.onnx", "onnx", "fp32", (8, 8), sha256="ff")])
    m = read_manifest(tmp_path)
    assert [a.file for a in m.artifacts] == ["a.onnx", "b.onnx"] and m.entry("b.onnx").sha256 == "ff"
    before = (tmp_path / "manifest.json").read_bytes()
    for other, message in ((ModelInfo("32s", 2, "b.pt"), "lists artifacts of DRSAN-32s x4"),
                           (ModelInfo("32s", 4, "c.pt", {"checkpoint_sha256": "cc"}), "other weights \\(a.pt")):
        with pytest.raises(ManifestError, match=message):
            check_manifest_target(tmp_path, other)
        with pytest.raises(ManifestError, match=message):
            update_manifest(tmp_path, other, [ArtifactEntry("c.onnx", "onnx", "fp32")])
        assert (tmp_path / "manifest.json").read_bytes() == before   # the entries it protects stay
    (tmp_path / "manifest.json").write_text('{"model": {"variant": "32s", "scale": 4}, "artifacts": [{"file": 1}]}')
    with pytest.raises(ManifestError, match="needs file, format and precision"):
        update_manifest(tmp_path, x4, [ArtifactEntry("c.onnx", "onnx", "fp32")])


def test_verify_checks_a_file_against_its_typed_entry(tmp_path):
    from drsan_kit.edge_runtime.contract import ArtifactEntry, ModelInfo, artifact_size, sha256, update_manifest
    from drsan_kit.edge_runtime.verify import ArtifactError, verify_artifact

    model = tmp_path / "m.tflite"
    model.write_bytes(b"\0" * 64)
    update_manifest(tmp_path, ModelInfo("32s", 4), [ArtifactEntry(model.name, "tflite", "int8", (8, 8), False,
                                                                  sha256(model), artifact_size(model))])
    assert "SHA-256 matches" in verify_artifact(model, "tflite", 4)
    model.write_bytes(b"\1" * 64)
    with pytest.raises(ArtifactError, match="SHA-256 differs"):
        verify_artifact(model, "tflite", 4)
    model.write_bytes(b"\0" * 60)
    with pytest.raises(ArtifactError, match="cut short"):
        verify_artifact(model, "tflite", 4)


def test_manifest_tool_prints_a_table_or_one_line_error(tmp_path):
    import json

    (tmp_path / "manifest.json").write_text(json.dumps(OLD_MANIFEST))
    proc = run_tool("edge_runtime/manifest.py", tmp_path)
    assert "| m_int8_qat.tflite | int8 (qat) | 24x32 | 0.00 MB |" in proc.stdout and "| m_fp16.mlpackage | fp16_w8" in proc.stdout
    data = json.loads(json.dumps(OLD_MANIFEST))
    data["artifacts"][1]["check"] = {"psnr_vs_reference_db": None, "max_abs_error": None}
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    proc = run_tool("edge_runtime/manifest.py", tmp_path)
    assert "| m_int8.tflite | int8 | 24x32 | 0.00 MB | - | - | run |" in proc.stdout
    proc = run_tool("edge_runtime/manifest.py", tmp_path / "none", check=False)
    assert proc.returncode == 2 and "no manifest.json" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_tool("edge_runtime/manifest.py", tmp_path, "--md", tmp_path / "manifest.json" / "table.md", check=False)
    assert proc.returncode == 2 and "cannot write" in proc.stderr and "Traceback" not in proc.stderr


def test_deep_manifest_is_an_error_even_where_the_recursion_limit_was_raised(tmp_path):
    """onnx2tf raises the recursion limit to 2**31 in every process that imports it (the converters); there
    json's C parser would overflow the C stack on a deeply nested manifest instead of raising."""
    import subprocess
    import sys

    (tmp_path / "manifest.json").write_text("[" * 200_000 + "]" * 200_000)
    code = ("import sys; sys.setrecursionlimit(2**31 - 1)\n"
            "from drsan_kit.edge_runtime.contract import ManifestError, read_manifest\n"
            f"try:\n    read_manifest({str(tmp_path)!r})\nexcept ManifestError as exc:\n    print(exc)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "nested too deeply" in proc.stdout, proc.stderr[-300:]
