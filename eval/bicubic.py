"""Bicubic upscaling of the benchmark LR images under both Y conventions, beside the published floor.

    python eval/bicubic.py [--data DIR]
"""
from __future__ import annotations

if __name__ == "__main__" and not __package__:   # run by path, e.g. python eval/bicubic.py
    import importlib

    __package__ = "drsan_kit.eval"   # so that the relative imports below resolve (PEP 366)
    importlib.import_module(__package__)

import argparse

import numpy as np

from ..core.datasets import benchmark_root, find_sets, load_pairs
from ..core.imresize import imresize
from ..core.metrics import psnr_y, ssim_y
from ..core.variants import BICUBIC_PUBLISHED, SCALES
from . import cli
from .benchmark import DATA_HELP


def main(argv=None):
    ap = argparse.ArgumentParser(description="Reproduce the published bicubic PSNR/SSIM with the kit's protocol.")
    ap.add_argument("--data", default=None, help=DATA_HELP)
    args = ap.parse_args(argv)
    data = benchmark_root(args.data)
    print("| set | scale | MATLAB Y (PSNR / SSIM) | authors' Y | published |")
    print("|---|---|---|---|---|")
    for set_dir in find_sets(data):
        for s in SCALES:
            pairs = load_pairs(set_dir, s)
            sr = [imresize(p.lr, s) for p in pairs]
            cells = []
            for conv in ("matlab", "authors"):
                ps = np.mean([psnr_y(x, p.hr, s, conv, p.gray) for x, p in zip(sr, pairs)])
                ss = np.mean([ssim_y(x, p.hr, s, conv, p.gray) for x, p in zip(sr, pairs)])
                cells.append(f"{ps:.2f} / {ss:.4f}")
            pub = BICUBIC_PUBLISHED.get(s, {}).get(set_dir.name)
            print(f"| {set_dir.name} | x{s} | {cells[0]} | {cells[1]} | "
                  f"{f'{pub[0]:.2f} / {pub[1]:.4f}' if pub else '-'} |")


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
