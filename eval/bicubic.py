"""Bicubic upscaling of the benchmark LR images under both Y conventions, beside the published floor.

    python eval/bicubic.py [--data DIR]
"""
from __future__ import annotations

import argparse

import numpy as np

from drsan_kit.core.datasets import benchmark_root, find_sets, load_pairs
from drsan_kit.core.imresize import imresize
from drsan_kit.core.metrics import psnr_y, ssim_y
from drsan_kit.core.variants import BICUBIC_PUBLISHED, SCALES
from drsan_kit.eval import cli
from drsan_kit.eval.benchmark import DATA_HELP


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
