"""eval/int8_budget.py: each int8 tensor's share of the simulation's output error."""
import json
import re

import pytest
from PIL import Image

from conftest import SHIPPED_X4, run_tool
from drsan_kit.eval.int8_budget import HEAD, SKIP_HEAD


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    import skimage.data as data

    folder = tmp_path_factory.mktemp("train")
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        Image.fromarray(getattr(data, name)()[..., :3]).save(folder / f"{name}.png")
    return folder


def _shares(text):
    rows = re.findall(r"^\| ([^|]+) \| ([\d.]+)% \|$", text, flags=re.M)
    return {role: float(share) for role, share in rows}


@pytest.mark.parametrize("weights", [SHIPPED_X4, SHIPPED_X4.with_name("drsan_32s_x4_qat.pt")])
def test_budget_splits_the_error_among_the_tensors(photos, tmp_path, weights):
    out = tmp_path / "budget.md"
    run_tool("eval/int8_budget.py", "--scale", "4", "--weights", weights, "--data", photos, "--val-split", "2",
             "--crops", "2", "--crop-size", "48", "--top", "40", "--threads", "1", "--out", out)
    text = out.read_text()
    assert ("ranges learned in quantization-aware training" if "qat" in str(weights) else "calibrated on the crops") in text
    rows = dict(re.findall(r"^\| ([^|]+) \| ([\d.]+) \| [\d.]+ dB \| [-+][\d.]+ dB \|$", text, flags=re.M))
    everything = float(rows["every tensor and weight rounded"])
    only_weights = float(rows["weights only"])
    direct_in_float = float(next(v for k, v in rows.items() if k.startswith("all but the direct path")))
    summed = float(re.search(r"summed: (\d+\.\d+)", text).group(1))
    assert everything > direct_in_float > 0 and everything > only_weights > 0
    # the roundings are nearly independent: the singles add up to about the whole
    assert 0.5 < summed / everything < 2.0
    shares = _shares(text)
    assert abs(sum(shares.values()) - 100) < 0.5
    assert {HEAD, "output image", "DRAG 0", "DRAG 3"} <= set(shares)
    # the shipped QAT checkpoint is equalized (core/equalize.py): the global skip has its own head conv
    assert (SKIP_HEAD in shares) == ("qat" in str(weights))
    # the output image sits on the 8-bit levels: its range is [0, 1] whatever the weights
    assert re.search(r"\| output image \| \[0\.000, 1\.000\] \|", text)


def test_a_missing_folder_is_one_line_and_exit_2(tmp_path):
    proc = run_tool("eval/int8_budget.py", "--data", tmp_path / "nope", check=False)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "nope" in proc.stderr
    assert not list(tmp_path.iterdir())


def test_whole_images_give_the_summary_rows_only(photos, tmp_path):
    out = tmp_path / "whole.md"
    run_tool("eval/int8_budget.py", "--scale", "4", "--weights", SHIPPED_X4.with_name("drsan_32s_x4_qat.pt"),
             "--data", photos, "--val-split", "2", "--crops", "2", "--whole", "--threads", "1", "--out", out,
             "--json", tmp_path / "whole.json")
    text = out.read_text()
    assert "2 whole held-out images" in text and "Per-tensor shares: run on crops" in text
    rows = dict(re.findall(r"^\| ([^|]+) \| ([\d.]+) \| [\d.]+ dB \| [-+][\d.]+ dB \|$", text, flags=re.M))
    everything = float(rows["every tensor and weight rounded"])
    assert everything > float(next(v for k, v in rows.items() if k.startswith("all but the direct path"))) > 0
    assert everything > float(rows["every weight, and every activation but the direct path's, rounded"]) > 0
    assert not _shares(text)
    # the JSON holds the same rows unrounded
    unrounded = json.loads((tmp_path / "whole.json").read_text())["rows"]
    assert set(unrounded) == set(rows)
    for label, row in unrounded.items():
        assert f"{row['error']:.4f}" == rows[label]
        assert f"| {row['dpsnr_db']:+.3f} dB |" in text
