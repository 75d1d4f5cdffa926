"""Parameter counts and Multi-Adds of all 15 DRSAN models beside the paper's (Markdown table).

"expected" is the exact count the authors' structure implies (docs/model.md); the
paper's Multi-Adds are its Table II values for a 1280x720 output.

    python eval/model_stats.py [--height 720 --width 1280]
"""
from __future__ import annotations

if __name__ == "__main__" and not __package__:   # run by path, e.g. python eval/model_stats.py
    import importlib

    __package__ = "drsan_kit.eval"   # so that the relative imports below resolve (PEP 366)
    importlib.import_module(__package__)

import argparse

from ..core.model import build_model, count_macs, count_params
from ..core.variants import PAPER_GMACS, PAPER_PARAMS, SCALES, VARIANTS


def main(argv=None):
    ap = argparse.ArgumentParser(description="Print parameters and Multi-Adds of every DRSAN variant and scale.")
    ap.add_argument("--height", type=int, default=720, help="HR output height for Multi-Adds (default 720)")
    ap.add_argument("--width", type=int, default=1280, help="HR output width for Multi-Adds (default 1280)")
    args = ap.parse_args(argv)
    print(f"| variant | scale | parameters | expected | Multi-Adds ({args.width}x{args.height} output) | paper | diff |")
    print("|---|---|---|---|---|---|---|")
    for v in VARIANTS:
        for s in SCALES:
            m = build_model(v, s)
            p, g = count_params(m), count_macs(m, args.height, args.width) / 1e9
            paper = PAPER_GMACS[v][s]
            diff = f"{(g / paper - 1) * 100:+.2f}%" if paper else "-"
            print(f"| {v} | x{s} | {p:,} | {PAPER_PARAMS[v][s]:,} | {g:.1f} G | "
                  f"{f'{paper:.1f} G' if paper else '-'} | {diff} |")


if __name__ == "__main__":
    main()
