"""Time DRSAN training steps on this machine: bf16 or fp32, channels_last or contiguous;
or, with --data, the trainer end to end with the training set held on the device.

    python eval/train_speed.py --variant 32s --scale 4 --patch 64 --batch 16 --threads 2
    python eval/train_speed.py --data /path/to/train_images --batch 256 --steps 200 --compile --out speed.md

Why it exists: `core/train.py` picks bf16 autocast and the channels_last layout on a
CPU by default; this shows what each choice is worth here. The arms take turns
(round robin) so that a machine's drift over the run hits them alike, and each
reports the median of its timed steps. One step = forward, L1 loss, backward, Adam.

With --data the figure is patches per second with the data included, on CUDA when
present, else on the CPU: the set is decoded and its LR made once (timed apart), then
each step cuts its batch with core/device_sampler.py and runs the trainer's own step
under the trainer's defaults (bf16 where supported, channels_last); the clock runs
from the first timed step to the end of the last one (the GPU's queue drained).
"""
from __future__ import annotations

if __name__ == "__main__" and not __package__:   # run by path, e.g. python eval/train_speed.py
    import importlib

    __package__ = "drsan_kit.eval"   # so that the relative imports below resolve (PEP 366)
    importlib.import_module(__package__)

import argparse
import itertools
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..core.atomic import atomic_path
from ..core.device_sampler import DeviceSampler, load_pairs
from ..core.images import list_images
from ..core.model import build_model
from ..core.train import LAYOUTS, autocast_dtype, cpu_has_fast_bf16, memory_format, train_step
from ..core.variants import SCALES, VARIANTS
from ..core import provenance
from ..edge_runtime.contract import argtype, parse_threads
from . import cli
from .cli import EvalError


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


def end_to_end(args, device) -> tuple[str, float]:
    """(report, patches/s) of the trainer's step fed by the device sampler, data included."""
    start = time.perf_counter()
    files = list_images(args.data)
    pairs = load_pairs(files, args.scale, args.patch, log=lambda *a: None)
    if not pairs:
        raise EvalError(f"no image under {args.data} holds a {args.patch}x{args.patch} LR patch at x{args.scale}")
    sampler = DeviceSampler(pairs, args.scale, args.patch, seed=0, device=device)
    used = len(pairs)
    del pairs
    load_s = time.perf_counter() - start
    settings = argparse.Namespace(amp="auto", memory_format="auto")
    amp, layout = autocast_dtype(settings, device), memory_format(settings, device)
    torch.manual_seed(0)
    model = build_model(args.variant, args.scale).to(device, memory_format=layout).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-5, fused=device.type == "cuda")
    net = torch.compile(model) if args.compile else model
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    loss_sum = torch.zeros((), device=device)
    for it in range(args.warmup + args.steps):
        if it == args.warmup:
            sync()
            t0 = time.perf_counter()
        lr_b, hr_b = (t.float().div_(255.0) for t in sampler.batch(args.batch, it))
        loss_sum += train_step(net, opt, F.l1_loss, lr_b.contiguous(memory_format=layout), hr_b, amp).detach()
    sync()
    seconds = time.perf_counter() - t0
    if not torch.isfinite(loss_sum):
        raise EvalError("the loss is not finite; the figure would mean nothing")
    rate = args.batch * args.steps / seconds
    # the data's share: the same batches cut again, alone
    t0 = time.perf_counter()
    for it in range(args.warmup, args.warmup + args.steps):
        sampler.batch(args.batch, it)
    sync()
    cut = (time.perf_counter() - t0) / args.steps
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    precision = {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}[amp]
    rate_text = f"{rate:,.0f}" if rate >= 100 else f"{rate:.2f}"
    report = "\n".join([
        provenance.markdown(provenance.header(["eval/train_speed.py", *(sys.argv[1:] if args.argv is None
                                                                       else args.argv)])),
        f"Device: {device} ({name}), torch {torch.__version__}, {torch.get_num_threads()} CPU threads", "",
        f"DRSAN-{args.variant} x{args.scale}, {args.patch}x{args.patch} LR patches from {used} images "
        f"held on the device, {args.steps} timed steps after {args.warmup} warm-up steps", "",
        "| batch | precision | layout | compile | patches/s | s / step | of which cutting the batch | load + LR s |",
        "|---|---|---|---|---|---|---|---|",
        f"| {args.batch} | {precision} | {str(layout).split('.')[-1]} | {'yes' if args.compile else 'no'} "
        f"| {rate_text} | {seconds / args.steps:.4f} | {cut:.4f} | {load_s:.1f} |", ""])
    return report, rate


def main(argv=None):
    ap = argparse.ArgumentParser(description="Time DRSAN training steps for each precision and memory layout, "
                                             "or (--data) the trainer end to end with its data on the device.")
    ap.add_argument("--variant", default="32s", choices=list(VARIANTS), help="model variant (default 32s)")
    ap.add_argument("--scale", type=int, default=4, choices=SCALES, help="upscaling factor (default 4)")
    ap.add_argument("--patch", type=int, default=48, help="LR patch size (default 48, the paper's)")
    ap.add_argument("--batch", type=int, default=16, help="patches per step (default 16)")
    ap.add_argument("--steps", type=int, default=6, help="timed steps per arm, after 2 warm-up steps (default 6)")
    ap.add_argument("--threads", type=argtype(parse_threads), default=0,
                    help="CPU threads, up to 256; 0 (the default) keeps torch's own choice, usually the "
                         "physical cores rather than every core")
    ap.add_argument("--data", default=None,
                    help="folder of training images: time the end-to-end step (device sampler + train step, "
                         "patches/s) instead of the precision x layout arms")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                    help="with --data: where to train (auto: CUDA when present)")
    ap.add_argument("--compile", action="store_true", help="with --data: torch.compile the model, as train.py --compile")
    ap.add_argument("--warmup", type=int, default=2,
                    help="with --data: untimed steps first (torch.compile compiles in them; default 2)")
    ap.add_argument("--out", default=None, help="with --data: also write the report to this Markdown file")
    args = ap.parse_args(argv)
    args.argv = argv
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.data is not None:
        if args.steps < 1 or args.warmup < 0:
            raise SystemExit("error: --steps must be at least 1 and --warmup at least 0")
        if not Path(args.data).is_dir():
            raise SystemExit(f"error: --data {args.data}: no such folder")
        if args.device == "cuda" and not torch.cuda.is_available():
            raise SystemExit("error: --device cuda asked for, but torch sees no CUDA device")
        device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                              else "cpu")
        report, _ = end_to_end(args, device)
        print(report, end="")
        if args.out:
            with atomic_path(args.out) as tmp:
                tmp.write_text(report)
        return
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
    raise SystemExit(cli.run(main))
