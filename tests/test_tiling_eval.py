"""eval/tiling.py on held-out training images: the padding comparison the runtime's choice rests on."""
import json

import numpy as np
from PIL import Image

from drsan_kit.eval import tiling


def _photos(folder, n=4):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:40, 0:56]
    for k in range(n):
        base = np.stack([np.sin(xx / (5 + k)) + np.cos(yy / (7 + c)) for c in range(3)], axis=2)
        img = (base - base.min()) / np.ptp(base) * 200 + rng.integers(0, 40, base.shape)
        Image.fromarray(img.astype(np.uint8)).save(folder / f"img{k}.png")


def test_holdout_padding_comparison(tmp_path):
    train = tmp_path / "train"
    train.mkdir()
    _photos(train)
    out = tmp_path / "report"
    assert tiling.main(["--scale", "2", "--holdout", str(train), "--val-split", "2", "--tiles", "24x32",
                        "--modes", "tile", "--frames", "0", "--pad", "symmetric,edge", "--out", str(out)]) in (0, None)
    report = json.loads((out / "tiling.json").read_text())
    assert report["holdout"]["val_split"] == 2 and report["padded"] == ["symmetric", "edge"]
    (name, rows), = report["sets"].items()
    assert name == "held-out 2" and set(rows) == {"24x32|tile|symmetric", "24x32|tile|edge"}
    for row in rows.values():
        assert row["images"] == 2 and row["worst_dpsnr"] <= row["dpsnr"]
    # 20x28 LR images in a 24x32 window: padding changes the output, and the two modes differently
    sym, edge = rows["24x32|tile|symmetric"], rows["24x32|tile|edge"]
    assert sym["fidelity_psnr"] < 99 and edge["fidelity_psnr"] < 99 and sym["dpsnr"] != edge["dpsnr"]
    md = (out / "tiling.md").read_text()
    assert "| 24x32 | tile | symmetric |" in md and "held-out images" in md
