"""PSNR/SSIM of a DRSAN checkpoint on benchmark sets, beside the paper and the bicubic floor.

    python eval/benchmark.py --variant 32s --scale 4 [--weights W] [--data DIR] [--json]

DIR (or $DRSAN_BENCHMARKS) holds sets in the usual layout (SET/HR, SET/LR_bicubic/X<s>);
LR missing from a set is made with the kit's MATLAB-compatible bicubic. Protocol (docs/model.md): clip
and round to 8 bit, Y of BT.601, shave `scale` pixels, mean PSNR per set.
"""
from __future__ import annotations

if __name__ == "__main__" and not __package__:   # run by path, e.g. python eval/benchmark.py
    import importlib

    __package__ = "drsan_kit.eval"   # so that the relative imports below resolve (PEP 366)
    importlib.import_module(__package__)

import argparse
import json
import sys

import numpy as np
from tqdm import tqdm

from ..core.datasets import BENCHMARKS_ENV, Pair, benchmark_root, find_sets, load_pairs
from ..core.imresize import imresize
from ..core.metrics import CONVENTIONS, psnr_y, ssim_y
from ..core.variants import PAPER_RESULTS, SCALES, VARIANTS
from ..edge_runtime.contract import DEFAULT_MARGIN, WHOLE_FRAME, argtype, parse_margin, parse_window, window_tile
from ..core import provenance
from . import cli

DATA_HELP = f"folder of benchmark sets, SET/HR/*.png (default: ${BENCHMARKS_ENV})"


def score(sr: np.ndarray, pair: Pair, scale: int, convention: str) -> tuple[float, float]:
    return (psnr_y(sr, pair.hr, scale, convention, pair.gray), ssim_y(sr, pair.hr, scale, convention, pair.gray))


def bicubic_floor(pairs: list[Pair], scale: int) -> tuple[float, float]:
    """Bicubic upscaling under the MATLAB convention, the one the published floor uses."""
    res = [score(imresize(p.lr, scale), p, scale, "matlab") for p in pairs]
    return float(np.mean([r[0] for r in res])), float(np.mean([r[1] for r in res]))


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="Evaluate a DRSAN checkpoint on SR benchmark sets (PSNR/SSIM on Y).")
    ap.add_argument("--variant", default="32s", choices=list(VARIANTS), help="model variant (default 32s)")
    ap.add_argument("--scale", type=int, default=4, choices=SCALES, help="upscaling factor (default 4)")
    ap.add_argument("--weights", default=None, help="checkpoint (default: the shipped weights/drsan_<variant>_x<scale>.pt)")
    ap.add_argument("--data", default=None, help=DATA_HELP)
    ap.add_argument("--tile", type=argtype(parse_window), default=WHOLE_FRAME,
                    help="run in LR windows HxW, or N for NxN (default 0: whole image, as the paper)")
    ap.add_argument("--margin", type=argtype(parse_margin), default=DEFAULT_MARGIN,
                    help=f"tile context margin, as in the runtime (default {DEFAULT_MARGIN})")
    ap.add_argument("--convention", choices=CONVENTIONS, default="authors",
                    help="Y convention: authors (float Y, the paper's DRSAN numbers) or matlab (rounded Y)")
    ap.add_argument("--no-bicubic", action="store_true", help="skip computing the bicubic floor")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    data = benchmark_root(args.data)
    from ..edge_runtime.backends import open_backend
    from ..edge_runtime.tiler import Tiler

    backend = open_backend("torch", args.weights, variant=args.variant, scale=args.scale)
    tile = window_tile(args.tile)
    tiler = Tiler(args.scale, tile, margin=args.margin)
    paper = PAPER_RESULTS.get((args.variant, args.scale), {})
    report = {"provenance": provenance.header(), "variant": args.variant, "scale": args.scale,
              "weights": provenance.relative(backend.weights), "data": provenance.relative(data),
              "convention": args.convention, "tile": list(tile) if tile else None,
              "margin": args.margin if tile else None, "device": backend.name, "sets": {}}
    for set_dir in find_sets(data):
        pairs = load_pairs(set_dir, args.scale)
        scores = []
        for p in tqdm(pairs, desc=set_dir.name, leave=False, disable=None):
            sr = tiler.run(p.lr.astype(np.float32) / 255.0, backend)
            scores.append(score(sr, p, args.scale, args.convention))
        entry = {"images": len(pairs), "psnr": float(np.mean([s[0] for s in scores])),
                 "ssim": float(np.mean([s[1] for s in scores]))}
        if set_dir.name in paper:
            entry["paper"] = {"psnr": paper[set_dir.name][0], "ssim": paper[set_dir.name][1]}
        if not args.no_bicubic:
            bp, bs = bicubic_floor(pairs, args.scale)
            entry["bicubic"] = {"psnr": bp, "ssim": bs}
        report["sets"][set_dir.name] = entry
    print(json.dumps(report, indent=2) if args.json else format_table(report))


def format_table(report: dict) -> str:
    lines = [provenance.text(report["provenance"]),
             f"DRSAN-{report['variant']} x{report['scale']}  weights={report['weights']}  "
             f"data={report['data']}  Y convention={report['convention']}  device={report['device']}",
             f"{'set':<8} {'images':>6}  {'PSNR':>7} {'SSIM':>7}   {'paper':>15}   {'bicubic (matlab Y)':>18}"]
    for name, e in report["sets"].items():
        paper = f"{e['paper']['psnr']:.2f} / {e['paper']['ssim']:.4f}" if "paper" in e else "-"
        bic = f"{e['bicubic']['psnr']:.2f} / {e['bicubic']['ssim']:.4f}" if "bicubic" in e else "-"
        lines.append(f"{name:<8} {e['images']:>6}  {e['psnr']:7.2f} {e['ssim']:7.4f}   {paper:>15}   {bic:>18}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(cli.run(main))
