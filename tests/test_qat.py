"""Quantization-aware fine-tuning: the int8 simulation (core/qat.py) and its ranges in the TFLite artifact."""
import json
import re
from collections import Counter

import numpy as np
import pytest
import torch

from conftest import CONVERT_TILE, SHIPPED_X4, run_tool
from drsan_kit.core import qat
from drsan_kit.core.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def x4():
    model, _ = load_checkpoint(SHIPPED_X4)
    return model


def _photos(n=4, size=48, seed=0, width=None):
    import skimage.data as data

    rng = np.random.default_rng(seed)
    out = []
    h, w = size, width or size
    for name in ("astronaut", "coffee", "chelsea", "rocket")[:n]:
        img = getattr(data, name)()[..., :3]
        y, x = rng.integers(0, img.shape[0] - h), rng.integers(0, img.shape[1] - w)
        out.append(img[y : y + h, x : x + w])
    return torch.from_numpy(np.stack(out).transpose(0, 3, 1, 2).astype(np.float32) / 255.0)


def test_simulation_shares_the_models_parameters_and_is_float_when_off(x4):
    sim = qat.prepare(x4)
    x = _photos()
    qat.set_mode(sim, "off")
    with torch.no_grad():
        assert torch.allclose(sim(x), x4(x).clamp(0, 1), atol=1e-5)
    qat.set_mode(sim, "quantize")
    sim.train()
    with torch.no_grad():
        sim(x)   # tracks the ranges
        sim.eval()
        err = (sim(x) - x4(x).clamp(0, 1)).abs()
    assert 1e-4 < float(err.mean()) < 0.02   # rounded, and close
    # the optimizer trains the model itself: the simulation holds no copy
    assert {id(p) for p in sim.parameters()} == {id(p) for p in x4.parameters()}


def test_concatenation_inputs_are_requantized_to_its_range_and_keep_their_own(x4):
    sim = qat.prepare(x4)
    sim.train()
    with torch.no_grad():
        sim(_photos())
    tied = {n: m for n, m in sim.named_modules() if isinstance(m, qat.TiedQuant)}
    # each DRAG concatenates its input and its N block outputs
    assert len(tied) == len(x4.body) * (x4.variant.blocks + 1)
    got = qat.ranges(sim)
    for name, m in tied.items():
        assert got[name] == [float(m.owner.lo), float(m.owner.hi)]
    # the head features feed DRAG 0's concatenation through a requantization, and keep their own
    # (narrower) range for the blocks, the DRA sums and the global skip
    head = next(n for n in got if n.endswith("_head"))
    cat0 = tied[next(n for n in tied if n.endswith("_in0"))].owner
    assert isinstance(dict(sim.named_modules())[head], qat.ActQuant)
    assert got[head][1] - got[head][0] < float(cat0.hi - cat0.lo)
    # an old checkpoint's ranges (a requantized input stored under its source's name) still load
    qat.load_ranges(sim, {n: r for n, r in got.items() if n not in tied})


def test_frozen_ranges_stop_moving(x4):
    sim = qat.prepare(x4)
    sim.train()
    with torch.no_grad():
        sim(_photos(seed=0))
        qat.freeze_ranges(sim)
        before = qat.ranges(sim)
        sim(_photos(seed=1) * 0.5)
    assert qat.ranges(sim) == before


def test_learned_ranges_start_on_the_tracked_grid_and_get_gradients(x4):
    sim = qat.prepare(x4)
    sim.train()
    x = _photos()
    with torch.no_grad():
        sim(x)   # tracks the ranges
        qat.freeze_ranges(sim)
        tracked = sim(x)
    params = qat.learn_ranges(sim)
    assert len(params) == 2 * len(qat.learnable_quants(sim))
    for m in qat.learnable_quants(sim).values():
        m.frozen.fill_(False)
    out = sim(x)
    # log-width and shift 0: the tracked ranges' int8 grids, rounded alike to the bit (ties included)
    assert torch.equal(out.detach(), tracked)
    (out - x4(x).clamp(0, 1).detach()).pow(2).mean().backward()
    assert sum(float(p.grad.abs()) > 0 for p in params if p.grad is not None) > len(params) // 2
    # a moved range is what ships and what the simulation then rounds to
    with torch.no_grad():
        for p in params[::2]:
            p.fill_(-0.1)
    qat.freeze_ranges(sim)
    for m, r in ((m, qat.ranges(sim)[name]) for name, m in qat.learnable_quants(sim).items()):
        assert not m.log_width.requires_grad and r[1] - r[0] == pytest.approx(float((m.anchor[1] - m.anchor[0]) * np.exp(-0.1)), rel=1e-5)
    with torch.no_grad():
        narrowed = sim(x)
    assert not torch.equal(narrowed, tracked)


def test_output_is_on_the_8bit_levels_whatever_the_data(x4):
    sim = qat.prepare(x4)
    images = [m for m in sim.modules() if isinstance(m, qat.ImageQuant)]
    assert len(images) == 1
    sim.train()
    with torch.no_grad():
        sim(_photos() * 1.5)   # brighter than any image: a tracked range would widen
        qat.load_ranges(sim, qat.ranges(sim) | {name: [0.0, 1.3] for name, m in sim.named_modules()
                                                if isinstance(m, qat.ImageQuant)})
        sim.eval()
        out = sim(_photos(seed=2)) * 255
    for image in images:
        assert qat.qparams(*qat.ranges(sim)[next(n for n, m in sim.named_modules() if m is image)]) == (1 / 255, -128)
    assert torch.allclose(out, out.round(), atol=1e-3) and float(out.min()) >= 0 and float(out.max()) <= 255


@pytest.fixture(scope="module")
def qat_checkpoint(tmp_path_factory):
    """A short quantization-aware run from the shipped x4 weights on a few photographs."""
    from PIL import Image

    from drsan_kit.core.train import main as train_main

    root = tmp_path_factory.mktemp("qat")
    data = root / "photos"
    data.mkdir()
    for i, img in enumerate(_photos(4, size=160)):
        Image.fromarray((img.numpy().transpose(1, 2, 0) * 255).round().astype(np.uint8)).save(data / f"{i}.png")
    # as the shipped QAT checkpoints are made: equalize the float weights, then fine-tune
    run_tool("core/equalize.py", "--weights", SHIPPED_X4, "--data", data, "--val-split", "0", "--crops", "4",
             "--crop-size", "160", "--out", root / "equalized.pt")
    train_main(["--variant", "32s", "--scale", "4", "--data", str(data), "--out", str(root / "run"),
                "--init-from", str(root / "equalized.pt"), "--qat", "--qat-freeze", "8", "--loss", "l2", "--lr", "1e-5",
                "--schedule", "cosine", "--warmup", "1", "--iters", "10", "--batch", "4", "--patch", "24",
                "--threads", "2", "--save-every", "10"])
    return root / "run" / "model.pt"


def test_qat_artifact_carries_the_learned_ranges(qat_checkpoint, tflite_artifacts, tmp_path):
    """The int8 artifact built with --qat uses the checkpoint's ranges, not a fresh calibration, and
    computes what the simulation computes more closely than the post-training int8 artifact does."""
    pytest.importorskip("tensorflow")
    from drsan_kit.edge_runtime.backends.tflite import TFLiteBackend

    out = tmp_path / "qat"
    run_tool("converters/to_tflite.py", "--variant", "32s", "--scale", "4", "--tile", CONVERT_TILE, "--quant", "int8",
             "--qat", qat_checkpoint, "--out", out)
    entry = json.loads((out / "manifest.json").read_text())["artifacts"][0]
    assert entry["file"] == f"drsan_32s_x4_{CONVERT_TILE}_int8_qat.tflite"
    assert entry["quantization"] == "qat" and entry["qat"]["iterations"] == 10
    assert entry["qat"]["ranges"]["tensors_with_learned_range"] > 250
    ptq = {a["precision"]: a for a in json.loads((tflite_artifacts / "manifest.json").read_text())["artifacts"]}
    assert ptq["int8"]["quantization"] == "ptq"
    # both int8 graphs have the equalized direct path (core/equalize.py); int16x8 has no need of it
    assert entry["direct_path_equalized"] and ptq["int8"]["direct_path_equalized"]
    assert not ptq["int16x8"]["direct_path_equalized"]

    # every learned range shows up as an activation scale of the artifact
    blob = torch.load(qat_checkpoint, weights_only=False)
    learned = blob["meta"]["qat"]["ranges"]
    backend = TFLiteBackend(out / entry["file"], threads=1)
    scales = np.array(sorted({float(d["quantization_parameters"]["scales"][0])
                              for d in backend.interp.get_tensor_details()
                              if len(d["quantization_parameters"]["scales"]) == 1}))
    expected = [qat.qparams(lo, hi)[0] for lo, hi in learned.values()]
    found = [np.isclose(scales, s, rtol=1e-5).any() for s in expected]
    assert np.mean(found) > 0.9

    # the output image is on the 8-bit levels, as the simulation rounds it (qat.ImageQuant), whatever
    # the float ranges of the crops: min(., 1) and its input share the scale 1/255
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    flat = flatbuffer_utils.read_model(str(out / entry["file"]))
    graph, codes = flat.subgraphs[0], [max(c.builtinCode, c.deprecatedBuiltinCode) for c in flat.operatorCodes]
    minimum = [op for op in graph.operators if codes[op.opcodeIndex] == schema.BuiltinOperator.MINIMUM]
    assert len(minimum) == 1 and entry["qat"]["ranges"]["tensors_with_image_range"] == 1
    for idx in (minimum[0].inputs[0], minimum[0].outputs[0]):
        q = graph.tensors[idx].quantization
        assert np.isclose(q.scale[0], 1 / 255, rtol=1e-4) and q.zeroPoint[0] == -128

    # every concatenation input comes from a requantizing identity 1x1 conv on the concatenation's
    # grid, so the head conv keeps its own, finer, learned scale; no ReLU was un-fused on the way
    # (a standalone int8 RELU or PRELU has no XNNPACK kernel)
    assert not {schema.BuiltinOperator.RELU, schema.BuiltinOperator.PRELU} & {codes[op.opcodeIndex] for op in graph.operators}
    made_by = {o: op for op in graph.operators for o in op.outputs}
    concats = [op for op in graph.operators if codes[op.opcodeIndex] == schema.BuiltinOperator.CONCATENATION]
    assert len(concats) == 4
    for op in concats:
        out_scale = graph.tensors[op.outputs[0]].quantization.scale[0]
        for i in op.inputs:
            assert codes[made_by[i].opcodeIndex] == schema.BuiltinOperator.CONV_2D
            assert np.isclose(graph.tensors[i].quantization.scale[0], out_scale, rtol=1e-6)
    # the head conv: of the convs that read the image (the first conv does), the one read by DRAG 0's
    # many ops; the skip head's output goes to the skip sum alone
    convs = [op for op in graph.operators if codes[op.opcodeIndex] == schema.BuiltinOperator.CONV_2D]
    readers = Counter(i for op in graph.operators for i in op.inputs)
    head_conv, = [op for op in convs if op.inputs[0] == convs[0].inputs[0] and readers[op.outputs[0]] > 1]
    head_scale = graph.tensors[head_conv.outputs[0]].quantization.scale[0]
    head_range = next(r for n, r in learned.items() if re.fullmatch(r"aq_\d+_head", n))
    assert np.isclose(head_scale, qat.qparams(*head_range)[0], rtol=1e-5)
    assert head_scale < graph.tensors[concats[0].outputs[0]].quantization.scale[0]

    # the artifact follows its simulation: closer than the post-training artifact does
    model, _ = load_checkpoint(qat_checkpoint)
    sim = qat.prepare(model)
    qat.load_ranges(sim, learned)
    sim.eval()
    th, tw = (int(v) for v in CONVERT_TILE.split("x"))
    x = _photos(4, size=th, width=tw, seed=5)
    with torch.no_grad():
        want = sim(x).numpy().transpose(0, 2, 3, 1)
    crops = x.numpy().transpose(0, 2, 3, 1)

    def gap(path):
        b = TFLiteBackend(path, threads=1)
        got = np.stack([b(c) for c in crops])
        return float(np.mean((got - want) ** 2))

    ptq_file = tflite_artifacts / f"drsan_32s_x4_{CONVERT_TILE}_int8.tflite"
    assert gap(out / entry["file"]) < 0.5 * gap(ptq_file)

    # eval/int8_budget.py --artifact runs the file as the runtime does, beside its simulation: the two
    # lose about as much against the float weights
    report = tmp_path / "budget.md"
    run_tool("eval/int8_budget.py", "--scale", "4", "--weights", qat_checkpoint, "--reference", SHIPPED_X4,
             "--data", qat_checkpoint.parent.parent / "photos", "--val-split", "2", "--crops", "2", "--whole",
             "--artifact", out / entry["file"], "--threads", "1", "--out", report)
    rows = dict(re.findall(r"^\| ([^|]+) \| ([\d.]+) \| [\d.]+ dB \| [-+][\d.]+ dB \|$", report.read_text(), flags=re.M))
    simulated = float(rows["every tensor and weight rounded"])
    in_file = float(rows[f"{entry['file']}: the int8 file, as the runtime runs it"])
    assert 0.5 < in_file / simulated < 2.0
    assert any(k.startswith(f"{entry['file']} against the simulation") for k in rows)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_shipped_qat_checkpoints_carry_ranges_that_fit_their_graph(scale):
    """What converters/to_tflite.py --qat needs from each shipped QAT checkpoint: the equalized graph
    (a skip head) and a learned range for every tensor of its simulation."""
    model, blob = load_checkpoint(SHIPPED_X4.with_name(f"drsan_32s_x{scale}_qat.pt"), "32s", scale)
    assert model.skip_head is not None
    sim = qat.prepare(model)
    qat.load_ranges(sim, blob["meta"]["qat"]["ranges"])   # raises if a tensor has no range or one is unknown
    assert qat.is_frozen(sim) and blob["meta"]["qat"]["iterations"] > 0
