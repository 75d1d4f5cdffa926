"""Time DRSAN training steps on this machine: bf16 or fp32, channels_last or contiguous.

    python eval/train_speed.py --variant 32s --scale 4 --patch 64 --batch 16 --threads 2

Why it exists: `core/train.py` picks bf16 autocast and the channels_last layout on a
CPU by default; this shows what each choice is worth here. The arms take turns
(round robin) so that a machine's drift over the run hits them alike, and each
reports the median of its timed steps. One step = forward, L1 loss, backward, Adam.
"""
from __future__ import annotations

import argparse
import itertools
import statistics
import time

import torch
import torch.nn.functional as F

from drsan_kit.core.model import build_model
from drsan_kit.core.train import LAYOUTS, cpu_has_fast_bf16, train_step
from drsan_kit.core.variants import SCALES, VARIANTS


def make_arm(variant, scale, amp, layout, lr, hr):
    """A timed step of the trainer's own train_step for one precision (dtype or None) and layout."""
    torch.manual_seed(0)
    model = build_model(variant, scale).to(memory_format=LAYOUTS[layout]).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)
    x = lr.contiguous(memory_format=LAYOUTS[layout])

    def step() -> float:
        start = time.perf_counter()
        train_step(model, opt, F.l1_loss, x, hr, amp)
        return time.perf_counter() - start
    return step


def main(argv=None):
    ap = argparse.ArgumentParser(description="Time DRSAN training steps for each precision and memory layout.")
    ap.add_argument("--variant", default="32s", choices=list(VARIANTS), help="model variant (default 32s)")
    ap.add_argument("--scale", type=int, default=4, choices=SCALES, help="upscaling factor (default 4)")
    ap.add_argument("--patch", type=int, default=48, help="LR patch size (default 48, the paper's)")
    ap.add_argument("--batch", type=int, default=16, help="patches per step (default 16)")
    ap.add_argument("--steps", type=int, default=6, help="timed steps per arm, after 2 warm-up steps (default 6)")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    amps = {"bf16": torch.bfloat16, "fp32": None}
    if not cpu_has_fast_bf16():
        amps.pop("bf16")
        print("note: this CPU has no fast bf16; timing fp32 only")
    gen = torch.Generator().manual_seed(0)
    lr = torch.rand(args.batch, 3, args.patch, args.patch, generator=gen)
    hr = torch.rand(args.batch, 3, args.patch * args.scale, args.patch * args.scale, generator=gen)
    arms = {(a, m): make_arm(args.variant, args.scale, amps[a], m, lr, hr) for a, m in itertools.product(amps, LAYOUTS)}
    times = {key: [] for key in arms}
    for round_ in range(args.steps + 2):
        for key, step in arms.items():
            seconds = step()
            if round_ >= 2:
                times[key].append(seconds)
    base = statistics.median(times[next(iter(arms))])
    print(f"DRSAN-{args.variant} x{args.scale}, batch {args.batch} of {args.patch}x{args.patch} LR patches, "
          f"{torch.get_num_threads()} threads, median of {args.steps} steps\n")
    print("| precision | layout | s / step | vs. first row |\n|---|---|---|---|")
    for (amp, layout), ts in times.items():
        median = statistics.median(ts)
        print(f"| {amp} | {layout} | {median:.3f} | {median / base:.2f}x |")


if __name__ == "__main__":
    main()
