"""Staggered copies of the direct path (core/stagger.py, converters/to_tflite.py --stagger)."""
import json

import numpy as np
import pytest
import torch

from conftest import CONVERT_TILE, SHIPPED_X4, run_tool
from drsan_kit.core import qat
from drsan_kit.core.checkpoint import load_checkpoint
from drsan_kit.core.stagger import concatenation_tensors, direct_path_tensors, flags_problem, stagger_direct_path
from drsan_kit.core.stagger import flags as stagger_flags
from drsan_kit.eval.int8_budget import rounded_parts


@pytest.fixture(scope="module")
def x4_qat():
    model, blob = load_checkpoint(SHIPPED_X4.with_name("drsan_32s_x4_qat.pt"))
    return model.eval(), blob["meta"]["qat"]["ranges"]


def _images(seed=0, shape=(2, 3, 20, 28)):
    # smooth content plus texture: the direct path spans most of its range
    g = torch.Generator().manual_seed(seed)
    base = torch.nn.functional.interpolate(torch.rand(shape[0], 3, 5, 7, generator=g), size=shape[2:], mode="bilinear")
    return (0.8 * base + 0.2 * torch.rand(shape, generator=g)).clamp(0, 1)


def test_stagger_keeps_the_float_function_border_included(x4_qat):
    model, ranges = x4_qat
    staggered, new_ranges, about = stagger_direct_path(model, ranges, 2)
    assert staggered is not model and model.tail.out_channels == 32   # the input model is left alone
    assert staggered.tail.out_channels == 64 and staggered.skip_head.out_channels == 64
    assert staggered.upsampler.convs[0].in_channels == 64
    x = _images()
    with torch.no_grad():
        assert torch.allclose(staggered(x), model(x), atol=1e-5)
    # only the three split tensors change range, each widened by its copies' shifts
    changed = {n for n in ranges if new_ranges[n] != ranges[n]}
    assert changed == set(direct_path_tensors(model).values()) == set(about["tensors"])
    assert all(new_ranges[n][0] < ranges[n][0] and new_ranges[n][1] > ranges[n][1] for n in changed)
    assert about["sum_stagger_error_steps"] < 0.05


@pytest.mark.parametrize("copies", [2, 4])
def test_staggered_copies_round_the_direct_path_on_a_finer_grid(x4_qat, copies):
    """With only the three split tensors rounded, K staggered copies cut the rounding error's power
    by about K squared (one rounding on a K times finer grid); unstaggered copies would not cut it."""
    model, ranges = x4_qat
    x = _images(seed=1)
    with torch.no_grad():
        want = model(x).clamp(0, 1)

    def error(m, r):
        sim = qat.prepare(m)
        qat.load_ranges(sim, r)
        split = set(direct_path_tensors(model).values())
        for name, mod in rounded_parts(sim):
            mod.mode = "quantize" if name in split else "off"
        with torch.no_grad():
            return float(((sim.eval()(x) - want) ** 2).mean())

    plain = error(model, ranges)
    staggered = error(*stagger_direct_path(model, ranges, copies)[:2])
    assert staggered < plain / (0.6 * copies**2)


def test_stagger_refuses_a_graph_without_a_skip_head():
    from drsan_kit.core.model import build_model

    model = build_model("32s", 2)
    with pytest.raises(ValueError, match="skip head"):
        stagger_direct_path(model, {}, 2)


def test_stagger_needs_qat_ranges(tmp_path):
    proc = run_tool("converters/to_tflite.py", "--variant", "32s", "--scale", "4", "--quant", "int8", "--stagger", "2",
                    "--out", tmp_path / "out", check=False)
    assert proc.returncode != 0 and "--stagger needs --qat" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()


def test_staggered_artifact_is_closer_to_the_float_model(tflite_artifacts, tmp_path):
    """The int8 file built with --stagger 2 from the shipped x4 QAT checkpoint says so in its manifest
    and follows the float model more closely than the plain QAT file built from the same ranges; with
    --stagger-upsampler as well, more closely still."""
    pytest.importorskip("tensorflow")
    from drsan_kit.edge_runtime.backends.tflite import TFLiteBackend

    ckpt = SHIPPED_X4.with_name("drsan_32s_x4_qat.pt")
    out = tmp_path / "staggered"
    for extra in ([], ["--stagger", "2"], ["--stagger", "2", "--stagger-upsampler"]):
        run_tool("converters/to_tflite.py", "--variant", "32s", "--scale", "4", "--tile", CONVERT_TILE,
                 "--quant", "int8", "--calib-count", "4", "--qat", ckpt, *extra, "--out", out)
    entries = {e["file"]: e for e in json.loads((out / "manifest.json").read_text())["artifacts"]}
    plain_file, staggered_file, upsampler_file = (f"drsan_32s_x4_{CONVERT_TILE}_int8_qat{s}.tflite"
                                                  for s in ("", "_stagger2", "_stagger2u"))
    assert set(entries) == {plain_file, staggered_file, upsampler_file}
    assert entries[staggered_file]["stagger"]["copies"] == 2 and "stagger" not in entries[plain_file]
    assert "upsampler" not in entries[staggered_file]["stagger"]
    assert entries[upsampler_file]["stagger"]["upsampler"] is True
    assert entries[staggered_file]["quantization"] == "qat"

    model, _ = load_checkpoint(SHIPPED_X4)
    th, tw = (int(v) for v in CONVERT_TILE.split("x"))
    x = torch.cat([_images(seed=s, shape=(1, 3, th, tw)) for s in range(8)])
    with torch.no_grad():
        want = model.eval()(x).clamp(0, 1).numpy().transpose(0, 2, 3, 1)
    crops = x.numpy().transpose(0, 2, 3, 1)

    def error(name):
        backend = TFLiteBackend(out / name, threads=1)
        return float(np.mean((np.stack([backend(c) for c in crops]) - want) ** 2))

    assert error(staggered_file) < 0.9 * error(plain_file)
    assert error(upsampler_file) < error(staggered_file)


def test_manifest_stagger_field_is_read_defensively():
    from drsan_kit.edge_runtime.contract import ArtifactEntry

    base = {"file": "m.tflite", "format": "tflite", "precision": "int8", "quantization": "qat"}
    assert ArtifactEntry.from_dict(base | {"stagger": {"copies": 2}}).stagger == 2
    for bad in ({"copies": True}, {"copies": "2"}, {"copies": -3}, "2", None, [2]):
        assert ArtifactEntry.from_dict(base | {"stagger": bad}).stagger == 1
    assert ArtifactEntry.from_dict(base).stagger == 1


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_upsampler_copies_keep_the_float_function(scale):
    """--stagger-upsampler: the output conv reads the upsampler's copies one after another; the
    float function stays the same, through the export's depth-to-space order (dcr) too."""
    from drsan_kit.converters.export import to_dcr
    from drsan_kit.core.model import build_model

    torch.manual_seed(scale)
    model = build_model("32s", scale, skip_head=True).eval()
    for p in model.parameters():   # PReLU slopes start at 0; any values will do
        torch.nn.init.uniform_(p, -0.1, 0.1)
    ranges = {n: list(r) for n, r in qat.recorded_ranges(qat.prepare(model), [_images(seed=2)]).items()}
    staggered, new_ranges, about = stagger_direct_path(model, ranges, 2, upsampler=True)
    names = direct_path_tensors(model, upsampler=True)
    assert about["upsampler"] is True and names["upsampler"] in about["tensors"]
    assert staggered.upsampler.convs[-1].out_channels == 2 * model.upsampler.convs[-1].out_channels
    assert staggered.recon.in_channels == 64
    assert new_ranges[names["upsampler"]][1] > ranges[names["upsampler"]][1]
    x = _images(seed=3)
    with torch.no_grad():
        assert torch.allclose(staggered(x), model(x), atol=1e-5)
        assert torch.allclose(to_dcr(staggered)(x), model(x), atol=1e-5)


@pytest.mark.parametrize("order", ["crd", "dcr"])
def test_upsampler_copies_follow_the_depth_to_space_order(order):
    from drsan_kit.core.model import Upsampler
    from drsan_kit.core.stagger import _copied_before_shuffle

    torch.manual_seed(0)
    up = Upsampler(4, 2, order)
    x = torch.rand(1, 4, 5, 6)
    conv = up.convs[0]
    weight, bias = _copied_before_shuffle(up, conv.out_channels, 3, 0.0)(conv.weight, conv.bias)
    with torch.no_grad():
        once = up(x)
        up.convs[0] = torch.nn.Conv2d(4, weight.shape[0], 3, padding=1)
        up.convs[0].weight.copy_(weight)
        up.convs[0].bias.copy_(bias)
        assert torch.allclose(up(x), torch.cat([once] * 3, dim=1))


def test_upsampler_copies_round_its_output_on_a_finer_grid(x4_qat):
    """With only the upsampler's output rounded, two staggered copies cut its error's power by
    about four."""
    model, ranges = x4_qat
    x = _images(seed=4)
    with torch.no_grad():
        want = model(x)
    name = direct_path_tensors(model, upsampler=True)["upsampler"]

    def error(m, r):
        sim = qat.prepare(m)
        qat.load_ranges(sim, r)
        for n, mod in rounded_parts(sim):
            mod.mode = "quantize" if n == name else "off"
        with torch.no_grad():
            return float(((sim.eval()(x) - want) ** 2).mean())

    plain = error(model, ranges)
    assert error(*stagger_direct_path(model, ranges, 2, upsampler=True)[:2]) < plain / 2.4


def test_stagger_upsampler_needs_stagger(tmp_path):
    proc = run_tool("converters/to_tflite.py", "--variant", "32s", "--scale", "4", "--quant", "int8",
                    "--qat", SHIPPED_X4.with_name("drsan_32s_x4_qat.pt"), "--stagger-upsampler",
                    "--out", tmp_path / "out", check=False)
    assert proc.returncode != 0 and "--stagger-upsampler needs --stagger" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()


def test_manifest_stagger_tag():
    from drsan_kit.edge_runtime.contract import ArtifactEntry

    base = {"file": "m.tflite", "format": "tflite", "precision": "int8", "quantization": "qat"}
    assert ArtifactEntry.from_dict(base).stagger_tag == ""
    assert ArtifactEntry.from_dict(base | {"stagger": {"copies": 2}}).stagger_tag == "stagger2"
    assert ArtifactEntry.from_dict(base | {"stagger": {"copies": 2, "upsampler": True}}).stagger_tag == "stagger2u"
    assert ArtifactEntry.from_dict(base | {"stagger": {"copies": 2, "upsampler": "yes"}}).stagger_tag == "stagger2"
    both = {"copies": 2, "upsampler": True, "concatenations": ["aq_063_cat"]}
    assert ArtifactEntry.from_dict(base | {"stagger": both}).stagger_tag == "stagger2uc"


@pytest.mark.parametrize("upsampler,concat", [(False, False), (True, False), (True, True)])
def test_staggered_simulation_computes_the_rewritten_graph_and_trains_the_plain_model(x4_qat, upsampler, concat):
    """core/train.py --stagger trains through StaggeredSimulation: it must compute exactly what the int8
    simulation of stagger_direct_path's rewrite computes, and send its gradients to the unstaggered
    model's own parameters and the shared ranges, never to the held ranges of the copied tensors."""
    from drsan_kit.core.stagger import StaggeredSimulation

    model, ranges = x4_qat
    staggered, new_ranges, about = stagger_direct_path(model, ranges, 2, upsampler=upsampler, concatenations=concat)
    want_sim = qat.prepare(staggered)
    qat.load_ranges(want_sim, new_ranges)
    scored = qat.prepare(model)
    qat.load_ranges(scored, ranges, frozen=False)
    qat.learn_ranges(scored)
    held = list(direct_path_tensors(model, upsampler=upsampler).values())
    held += list(concatenation_tensors(model).values()) if concat else []
    for name in held:
        qat.act_quants(scored)[name].freeze()
    sim = StaggeredSimulation(model, scored, 2, upsampler=upsampler, concatenations=concat)
    assert sim.about == about and sorted(sim.split) == sorted(held)
    x = _images(seed=5)
    with torch.no_grad():
        assert torch.equal(sim.eval()(x), want_sim.eval()(x))
    model.zero_grad()
    sim.train()(x).square().mean().backward()
    assert model.skip_head.bias.grad.abs().sum() > 0 and model.recon.weight.grad.abs().sum() > 0
    quants = qat.learnable_quants(scored)
    assert all(quants[n].log_width.grad is None for n in sim.split)
    assert sum(q.log_width.grad is not None and bool(q.log_width.grad != 0) for q in quants.values()) > 200
    model.zero_grad()
    with pytest.raises(ValueError, match="copies must be 2"):
        StaggeredSimulation(model, scored, 1)


def test_converter_reads_the_graph_a_checkpoint_was_trained_for(tmp_path):
    import argparse

    from drsan_kit.converters.tflite import load_qat
    from drsan_kit.core.checkpoint import read_checkpoint, save_checkpoint
    from conftest import SHIPPED_X2_QAT

    model, blob = load_checkpoint(SHIPPED_X2_QAT)
    args = argparse.Namespace(variant="32s", scale=2)
    both = {"copies": 2, "upsampler": True, "concatenations": True}
    assert load_qat(str(SHIPPED_X2_QAT), args)[2]["trained_stagger"] == both
    for stagger, want in ((both, both), ({"copies": 2, "upsampler": True}, {"copies": 2, "upsampler": True}),
                          (None, None), ([2], None)):
        meta = blob["meta"] | {"qat": blob["meta"]["qat"] | {"stagger": stagger}}
        path = save_checkpoint(tmp_path / "trained.pt", model, meta)
        assert read_checkpoint(path)["meta"]["qat"]["stagger"] == stagger
        assert load_qat(str(path), args)[2].get("trained_stagger") == want


def test_x2_qat_checkpoint_was_trained_for_the_graph_it_ships_in():
    """weights/drsan_32s_x2_qat.pt was fine-tuned through the --stagger 2 --stagger-upsampler
    --stagger-concat graph with the copied tensors' ranges held, so the converter's rewrite of it
    with those flags is the graph that was trained."""
    from conftest import SHIPPED_X2_QAT
    from drsan_kit.core.checkpoint import read_checkpoint

    meta = read_checkpoint(SHIPPED_X2_QAT)["meta"]["qat"]
    assert meta["stagger"] == {"copies": 2, "upsampler": True, "concatenations": True}
    model, _ = load_checkpoint(SHIPPED_X2_QAT)
    about = stagger_direct_path(model, meta["ranges"], 2, upsampler=True, concatenations=True)[2]
    assert sorted(about["tensors"] + about["concatenations"]) == meta["ranges_held"]

def test_concatenation_copies_keep_the_float_function_through_the_export(x4_qat):
    """--stagger-concat: each DRAG's concatenation carried twice, shifted, the fuse conv averaging the
    copies; the same float function in the model and in the graph the converters export."""
    from drsan_kit.converters.export import deploy_model

    model, ranges = x4_qat
    staggered, new_ranges, about = stagger_direct_path(model, ranges, 2, concatenations=True)
    concat = concatenation_tensors(model)
    assert sorted(concat) == list(range(len(model.body))) and set(about["concatenations"]) == set(concat.values())
    assert staggered.body[0].fuse.in_channels == 2 * model.body[0].fuse.in_channels
    assert all(s[0] == -s[1] and s[1] > 0 for s in about["concat_shifts"])
    x = _images()
    with torch.no_grad():
        want = model(x).clamp(0, 1)
        assert torch.allclose(staggered(x).clamp(0, 1), want, atol=1e-5)
        assert torch.allclose(deploy_model(staggered, decompose_prelu=True)(x), want, atol=1e-5)
    # the concatenations (and their requantized inputs, which share their range) widen, and the direct path
    changed = {n for n in ranges if new_ranges[n] != ranges[n]}
    tied = {n for n, owner in qat.tied_inputs(qat.prepare(model)).items() if owner in concat.values()}
    assert changed == set(direct_path_tensors(model).values()) | set(concat.values()) | tied
    assert len(tied) == sum(d.n_blocks + 1 for d in model.body)


def test_concatenation_copies_round_it_on_a_finer_grid(x4_qat):
    """With only the concatenations rounded, two staggered copies cut their error's power by about four."""
    model, ranges = x4_qat
    x = _images(seed=5)
    with torch.no_grad():
        want = model(x)
    concat = set(concatenation_tensors(model).values())

    def error(m, r):
        sim = qat.prepare(m)
        qat.load_ranges(sim, r)
        tied = qat.tied_inputs(sim)
        for n, mod in rounded_parts(sim):
            mod.mode = "quantize" if n in concat or tied.get(n) in concat else "off"
        with torch.no_grad():
            return float(((sim.eval()(x) - want) ** 2).mean())

    plain = error(model, ranges)
    assert plain > 0
    assert error(*stagger_direct_path(model, ranges, 2, concatenations=True)[:2]) < plain / 2.4


def test_stagger_concat_needs_stagger(tmp_path):
    for tool, extra in (("converters/to_tflite.py", ["--quant", "int8", "--out", tmp_path / "out"]),
                        ("eval/int8_budget.py", ["--data", tmp_path, "--out", tmp_path / "out"])):
        proc = run_tool(tool, "--variant", "32s", "--scale", "4", "--weights" if "eval" in tool else "--qat",
                        SHIPPED_X4.with_name("drsan_32s_x4_qat.pt"), "--stagger-concat", *extra, check=False)
        assert proc.returncode != 0 and "--stagger-concat needs --stagger" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()


def test_stagger_flags_are_checked_and_spelled_in_one_place():
    """The converter, the trainer and eval/int8_budget.py share this check and spelling."""
    assert flags_problem(1, False, False) is None and flags_problem(4, True, True) is None
    assert "--stagger must be 1 to 4, not 5" == flags_problem(5, False, False)
    assert "not 0" in flags_problem(0, False, False)
    assert flags_problem(1, True, False) == "--stagger-upsampler needs --stagger K (2 or more copies)"
    assert flags_problem(1, False, True) == "--stagger-concat needs --stagger K (2 or more copies)"
    assert stagger_flags(2, True, True) == "--stagger 2 --stagger-upsampler --stagger-concat"
    assert stagger_flags(3) == "--stagger 3" and "no --stagger" in stagger_flags(1)
