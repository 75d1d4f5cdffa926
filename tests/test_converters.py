"""Every converter end to end on the shipped 32s x4 checkpoint, with a small tile to stay fast."""
import json
import platform

import numpy as np
import pytest

from conftest import CONVERT_TILE, run_tool


def _manifest(folder):
    return json.loads((folder / "manifest.json").read_text())


def test_onnx_fixed_and_dynamic_pass_their_checks(onnx_artifacts):
    m = _manifest(onnx_artifacts)
    assert m["model"]["variant"] == "32s" and m["model"]["scale"] == 4
    files = {a["file"]: a for a in m["artifacts"]}
    fixed, dyn = files[f"drsan_32s_x4_{CONVERT_TILE}.onnx"], files["drsan_32s_x4_dynamic.onnx"]
    assert fixed["tile"] == [24, 32] and dyn["tile"] is None and dyn["dynamic_shape"]
    for a in (fixed, dyn):
        assert a["check"]["passed"] and a["check"]["psnr_vs_reference_db"] > 60 and a["check"]["max_abs_error"] < 2e-3
        assert len(a["sha256"]) == 64


def test_onnx_graph_uses_dcr_depth_to_space_and_clamps(onnx_artifacts):
    import onnx

    g = onnx.load(str(onnx_artifacts / f"drsan_32s_x4_{CONVERT_TILE}.onnx")).graph
    modes = [a.s for n in g.node if n.op_type == "DepthToSpace" for a in n.attribute if a.name == "mode"]
    assert modes == [b"DCR", b"DCR"]
    # relu then clip(max=1): the relu fuses into the last conv in TFLite
    ops = [n.op_type for n in g.node if n.op_type != "Constant"]
    assert ops[-3:] == ["Conv", "Relu", "Clip"]


def test_tflite_all_modes_convert_and_pass(tflite_artifacts):
    m = _manifest(tflite_artifacts)
    got = {a["precision"]: a for a in m["artifacts"]}
    assert set(got) == {"fp32", "fp16", "int8", "int8_io", "int16x8"}
    assert got["fp32"]["check"]["psnr_vs_reference_db"] > 60
    assert got["int8"]["calibration"].startswith("scikit-image sample photographs")
    assert got["int8_io"]["io"] == "int8"
    for a in got.values():
        assert a["check"]["passed"] and (tflite_artifacts / a["file"]).stat().st_size == a["size_bytes"]
    # int8 models are about a quarter of fp32
    assert got["int8"]["size_bytes"] < 0.5 * got["fp32"]["size_bytes"]


@pytest.mark.parametrize("precision", ["int8", "int8_io"])
def test_tflite_int8_has_no_standalone_relu_or_prelu(tflite_artifacts, precision):
    # Neither has an int8 XNNPACK kernel: each would run as a single-threaded loop
    # between delegate partitions (about 20x slower than the fused form, eval/op_speed.py).
    from drsan_kit.edge_runtime.backends.tflite import TFLiteBackend

    b = TFLiteBackend(tflite_artifacts / f"drsan_32s_x4_{CONVERT_TILE}_{precision}.tflite", threads=1)
    ops = [op["op_name"] for op in b.interp._get_ops_details()]
    assert "CONV_2D" in ops and "RELU" not in ops and "PRELU" not in ops


def test_tflite_int8_io_has_quantized_tensors(tflite_artifacts):
    from drsan_kit.edge_runtime.backends.tflite import TFLiteBackend

    b = TFLiteBackend(tflite_artifacts / f"drsan_32s_x4_{CONVERT_TILE}_int8_io.tflite")
    assert b.inp["dtype"] == np.int8 and b.out["dtype"] == np.int8 and b.scale == 4


def test_coreml_converts_with_metadata(tmp_path, shipped_x4):
    ct = pytest.importorskip("coremltools")
    run_tool("converters/to_coreml.py", "--variant", "32s", "--tile", CONVERT_TILE, "--extra-tiles", "16x16",
             "--out", tmp_path)
    entry = _manifest(tmp_path)["artifacts"][0]
    assert entry["format"] == "coreml" and entry["precision"] == "fp16"
    assert entry["check"]["structure"]["enumerated_shapes"] == [[1, 3, 24, 32], [1, 3, 16, 16]]
    if platform.system() != "Darwin":
        assert entry["check"]["estimate"] is True and "ESTIMATE" in entry["check"]["method"]
    meta = ct.models.MLModel(str(tmp_path / entry["file"]), skip_model_load=True).user_defined_metadata
    assert meta["variant"] == "32s" and meta["scale"] == "4" and meta["tile"] == "24x32"


@pytest.mark.parametrize("args,message", [
    (["--variant", "99z"], "invalid choice"),
    (["--weights", "/nonexistent/w.pt"], "checkpoint not found"),
    (["--tile", "abc"], "HxW"),
    (["--out", "/proc/forbidden"], "cannot write to output folder"),
])
def test_bad_arguments_are_one_line_errors(args, message):
    proc = run_tool("converters/to_onnx.py", *args, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_wrong_variant_for_checkpoint_names_both(shipped_x4, tmp_path):
    proc = run_tool("converters/to_onnx.py", "--variant", "48s", "--weights", shipped_x4, "--out", tmp_path,
                    check=False)
    assert proc.returncode == 2 and "DRSAN-32s" in proc.stderr and "48s" in proc.stderr


def test_check_fails_loudly_when_tolerance_is_missed():
    from drsan_kit.converters import common

    ref = np.zeros((2, 8, 8, 3), np.float32)
    with pytest.raises(common.ConversionError, match="outside the fp32 tolerance"):
        common.enforce(common.compare(ref + 0.01, ref), "fp32", "x.onnx")


def test_coreml_int8_weight_compression_shrinks_the_model(tmp_path, shipped_x4):
    pytest.importorskip("coremltools")
    for extra in ([], ["--weights-int8"]):
        run_tool("converters/to_coreml.py", "--variant", "32s", "--tile", "16x16", "--extra-tiles", "", *extra,
                 "--out", tmp_path)
    sizes = {a["precision"]: a["size_bytes"] for a in _manifest(tmp_path)["artifacts"]}
    assert set(sizes) == {"fp16", "fp16_w8"} and sizes["fp16_w8"] < 0.7 * sizes["fp16"]


def test_calibration_leaves_out_outlier_crops():
    import numpy as np
    import torch

    from drsan_kit.converters.common import drop_outlier_crops, random_crops

    # identity conv: a crop's activation peak is its brightest pixel
    model = torch.nn.Conv2d(3, 3, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(3)[:, :, None, None])
    images = [np.full((40, 40, 3), 50, np.uint8) for _ in range(5)]
    images[3][10:30, 10:30] = 255   # one image 5x brighter than the others
    candidates = random_crops(images, (20, 20), 10, seed=2)
    crops, dropped = drop_outlier_crops(model, candidates, outlier=2.0)
    assert dropped == 2 and len(crops) == 8 and crops.max() < 0.5
    kept, none = drop_outlier_crops(model, candidates, outlier=0)
    assert none == 0 and len(kept) == 10 and kept.max() == 1.0
