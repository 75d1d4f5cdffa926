"""Train DRSAN with the paper's recipe (docs/model.md), resumable, on CPU, CUDA or several GPUs.

    python core/train.py --variant 32s --scale 4 --data /path/to/train_images --out runs/32s_x4 --iters 20000

Random 48x48 LR patches (LR made from HR with the kit's MATLAB-compatible bicubic),
flips and 90-degree rotations, batch 16, Adam (0.9, 0.999, 1e-8), L1 loss (or
--loss l2 for a last fine-tuning stage: PSNR is a function of the mean squared
error, which L1 does not minimise exactly), and
either the paper's step schedule (2e-4, x0.85 every 2e5 iterations) or a short
cosine schedule for CPU-sized runs. `runs/<name>/last.pt` is written every
--save-every iterations; run the same command again to resume exactly where it
stopped. Several GPUs: `torchrun --nproc_per_node 4 core/train.py ...` (DDP).
"""
from __future__ import annotations

if __name__ == "__main__" and not __package__:   # run by path, e.g. python core/train.py
    import importlib

    __package__ = "drsan_kit.core"   # so that the relative imports below resolve (PEP 366)
    importlib.import_module(__package__)

import argparse
import csv
import itertools
import math
import os
import platform
import random
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from .datasets import load_pairs
from .holdout import describe, holdout_pairs, split_holdout
from .checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from .datapack import file_sha256
from .device_sampler import DeviceSampler, image_weights
from .device_sampler import load_pairs as load_training_pairs
from .images import list_images
from .metrics import psnr_y
from .provenance import usable_cores
from .model import build_model
from . import qat, stagger
from .variants import SCALES, VARIANTS


class TrainingError(ValueError):
    """A training run that cannot start as asked; the message says why in one line."""


class PatchSampler(torch.utils.data.Dataset):
    """Holds every training image (HR and its bicubic LR) in memory and draws random patch pairs.

    Batch i is a pure function of (seed, i), so a resumed run draws the same patches as an
    unbroken one, and DataLoader workers can prepare batches ahead without sharing an RNG.
    """

    def __init__(self, folder, scale: int, patch: int, seed: int, log=print, sampling: str = "area",
                 files=None):
        self.scale, self.patch = scale, patch
        files = list_images(folder) if files is None else files
        if not files:
            raise TrainingError(f"no images (png, jpg, bmp, tif, webp) found under {folder}")
        self.pairs = load_training_pairs(files, scale, patch, log)
        if not self.pairs:
            raise TrainingError(f"no image under {folder} is large enough for {patch}x{patch} LR patches at x{scale}")
        # "area": images drawn in proportion to how many patches they hold, so every LR pixel
        # counts the same; "uniform": every image equally often (small images weigh more).
        self.weights = image_weights([lr.shape[:2] for lr, _ in self.pairs], sampling)
        self.seed, self.batch_size = seed, 16

    def batch(self, size: int, iteration: int = 0):
        """(LR, HR) uint8 tensors (B, 3, h, w) for this iteration; the trainer scales them to [0, 1] on its device."""
        rng = np.random.default_rng((self.seed, iteration))
        lrs, hrs = [], []
        p, s = self.patch, self.scale
        for i in rng.choice(len(self.pairs), size=size, p=self.weights):
            lr, hr = self.pairs[i]
            y = int(rng.integers(0, lr.shape[0] - p + 1))
            x = int(rng.integers(0, lr.shape[1] - p + 1))
            lp, hp = lr[y : y + p, x : x + p], hr[y * s : (y + p) * s, x * s : (x + p) * s]
            k, flip = int(rng.integers(0, 4)), bool(rng.integers(0, 2))
            if flip:
                lp, hp = lp[:, ::-1], hp[:, ::-1]
            lrs.append(np.rot90(lp, k))
            hrs.append(np.rot90(hp, k))
        to_t = lambda arr: torch.from_numpy(np.ascontiguousarray(np.stack(arr).transpose(0, 3, 1, 2)))
        return to_t(lrs), to_t(hrs)

    # Dataset protocol: item i is the batch of iteration i (a DataLoader with batch_size=None).
    def __len__(self):
        return 2**62

    def __getitem__(self, iteration):
        return self.batch(self.batch_size, iteration)


def batches(sampler, size: int, start: int, workers: int, pin: bool):
    """Batches for iterations start, start+1, ...; with workers > 0 they are prepared in background processes."""
    sampler.batch_size = size
    if workers == 0:
        return (sampler.batch(size, it) for it in itertools.count(start))
    loader = torch.utils.data.DataLoader(sampler, batch_size=None, sampler=itertools.count(start),
                                         num_workers=workers, pin_memory=pin, prefetch_factor=4)
    return iter(loader)


# --distill-weighting relative and --loss psnr: a patch's squared error is set against an error
# floored at 45 dB (MSE 10^-4.5) so that a perfectly flat patch cannot take the batch
RELATIVE_FLOOR = 10 ** -4.5


def patch_mse(pred, target):
    """Each patch's mean squared error (the batch's first dimension kept)."""
    return ((pred - target) ** 2).flatten(1).mean(1)


def psnr_loss(pred, target):
    """Minus the patches' mean PSNR (each patch's MSE floored at 45 dB).

    Benchmarks average PSNR over images, not MSE: an error costs a flat image, where the model is
    nearly exact, far more dB than a textured one. The gradient of this loss is L2's with each patch
    weighted by the inverse of its own error, so flat patches weigh as much as the dB they lose.
    """
    return 10.0 * torch.log10(patch_mse(pred, target) + RELATIVE_FLOOR).mean()


# PSNR is 10*log10(1/MSE): L2 targets it directly, L1 (the paper's) trains faster and more robustly;
# psnr follows the benchmarks' per-image average
LOSSES = {"l1": F.l1_loss, "l2": F.mse_loss, "psnr": psnr_loss}
LAYOUTS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}


def relative_weights(teacher_out, hr):
    """Per-patch weights, mean 1: the inverse of the teacher's MSE to HR (floored).

    The PSNR an added error e costs on a patch is about 4.34 * e / m, m being the teacher's own MSE:
    so weighted, the loss follows the PSNR drop a student adds, patch by patch, which is what drift
    reports measure; flat patches, where the teacher is nearly exact and any rounding shows, weigh more.
    """
    m = patch_mse(teacher_out, hr).clamp(min=RELATIVE_FLOOR)
    w = 1.0 / m
    return w / w.mean()


def weighted_l2(weights):
    def loss(pred, target):
        return (patch_mse(pred, target) * weights).mean()
    return loss


def learning_rate(args, it: int, seconds: float = 0.0) -> float:
    """Step or cosine schedule; with --time-budget the cosine runs over training seconds, not iterations."""
    if args.schedule == "step":   # the paper: x0.85 every 2e5 iterations
        return args.lr * (0.85 ** (it // args.step_every))
    warm = min(1.0, (it + 1) / max(1, args.warmup))
    if args.time_budget:
        progress = min(1.0, seconds / (60 * args.time_budget))
    else:
        progress = min(1.0, it / max(1, args.iters))
    floor = min(args.min_lr, args.lr)   # --lr 0 keeps the weights as they are
    return floor + (args.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress)) * warm


def trainable(model, which: str) -> list:
    """The parameters training moves. 'bias' holds every convolution weight and moves the biases and
    PReLU slopes only: a few thousand numbers, enough to correct the mean shift that int8 rounding
    leaves behind each nonlinearity, too few to carry the model away from its float function."""
    if which == "all":
        return list(model.parameters())
    moved = []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if name == "bias" or isinstance(module, torch.nn.PReLU):
                moved.append(p)
            else:   # no gradient wanted: the backward pass skips the weight gradients too
                p.requires_grad_(False)
    return moved


def range_lr(args, it: int, seconds: float = 0.0) -> float:
    """The learned int8 ranges' learning rate: --qat-range-lr on the weights' schedule, down to 0."""
    return learning_rate(argparse.Namespace(**{**vars(args), "lr": args.qat_range_lr, "min_lr": 0.0}),
                         it, seconds)


@torch.no_grad()
def validate(model, pairs, scale: int, device) -> float:
    model.eval()
    scores = []
    for pair in pairs:
        x = torch.from_numpy(pair.lr.transpose(2, 0, 1)[None].astype(np.float32) / 255.0).to(device)
        sr = model(x).clamp(0, 1)[0].float().cpu().numpy().transpose(1, 2, 0)
        scores.append(psnr_y(sr, pair.hr, shave=scale, gray=pair.gray))
    model.train()
    return float(np.mean(scores))


def cpu_has_fast_bf16() -> bool:
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def autocast_dtype(args, device):
    if args.amp == "off":
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    supported = cpu_has_fast_bf16()
    if args.amp == "bf16" and not supported:
        raise TrainingError("--amp bf16 asked for, but this CPU has no fast bf16 support")
    return torch.bfloat16 if supported else None


def memory_format(args, device):
    # oneDNN's CPU convolutions run natively in NHWC (NCHW costs a reorder around every conv), and
    # so do cuDNN's bf16 tensor-core convolutions
    name = args.memory_format
    if name == "auto":
        name = "channels_last"
    return LAYOUTS[name]


LR_RULES = {"none": lambda batch: 1.0, "sqrt": lambda batch: math.sqrt(batch / 16), "linear": lambda batch: batch / 16}


def scaled_lr(lr: float, rule: str, batch: int) -> float:
    """The learning rate for a global batch: --lr is the paper's rate at batch 16, grown by the rule."""
    return lr * LR_RULES[rule](batch)


def data_on_device(args, device) -> bool:
    return args.data_on_device == "on" or (args.data_on_device == "auto" and device.type == "cuda")


def train_step(net, opt, loss_fn, lr_b, hr_b, amp):
    """One optimizer step (forward under autocast, loss, backward, update); returns the loss tensor."""
    with torch.autocast(lr_b.device.type, dtype=amp, enabled=amp is not None):
        loss = loss_fn(net(lr_b).float(), hr_b)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss


def ema_of(model, decay: float, saved: dict | None = None):
    """torch's AveragedModel as an EMA of `model`; `saved` (from a last.pt) restores it, None starts it
    at the current weights (also when --ema is switched on for a run that had none)."""
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    if saved is not None:
        ema.load_state_dict(saved)
    return ema


def init_from(model, path, src, log):
    """Copy every tensor of `src`, the checkpoint read from `path` (possibly of another scale), whose
    name and shape match (all but the upsampler)."""
    if src["variant"] != model.variant.name:
        raise TrainingError(f"--init-from {path} is DRSAN-{src['variant']}, this run trains {model.variant.name}")
    own = model.state_dict()
    taken = {k: v for k, v in src["state_dict"].items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(taken, strict=False)
    log(f"init from {path} (x{src['scale']}): {len(taken)}/{len(own)} tensors copied")
    # what the weights already went through: a QAT run that continues another counts both
    return {"path": str(path), "sha256": file_sha256(Path(path)),
            "qat_iterations": int((src.get("meta", {}).get("qat") or {}).get("iterations") or 0)}


def carry_qat_ranges(scored, path, src, log):
    """A QAT run that continues another (`src`, read from `path`) starts from its ranges (still tracked
    until --qat-freeze), not from the first batch's min/max; a float checkpoint, or one of another graph,
    starts afresh."""
    saved = (src.get("meta", {}).get("qat") or {}).get("ranges")
    if not saved:
        return
    try:
        qat.load_ranges(scored, saved, frozen=False)
    except ValueError as exc:
        log(f"int8 ranges of {path} not carried: {exc}")
        return
    log(f"int8 ranges carried from {path} ({len(saved)} tensors)")


def load_teacher(path, args, device, layout, log):
    """The frozen float model whose outputs --teacher trains towards."""
    try:
        teacher, _ = load_checkpoint(path, args.variant, args.scale)
    except (CheckpointError, OSError) as exc:
        raise TrainingError(f"--teacher: {exc}") from None
    teacher.to(device, memory_format=layout).eval().requires_grad_(False)
    log(f"distilling from {path}: the loss compares with its output, not the HR patch")
    return teacher


@contextmanager
def stop_on_signals():
    """Ctrl-C or SIGTERM: finish the iteration, save last.pt and model.pt, stop. A second Ctrl-C stops at once."""
    received = []

    def handler(signum, frame):
        if received and signum == signal.SIGINT:
            raise KeyboardInterrupt
        received.append(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="Train DRSAN (paper recipe; resumable; CPU, CUDA or DDP).")
    ap.add_argument("--variant", default="32s", choices=list(VARIANTS), help="model variant (default 32s)")
    ap.add_argument("--scale", type=int, default=4, choices=SCALES, help="upscaling factor (default 4)")
    ap.add_argument("--data", required=True, help="folder of training images, read recursively (e.g. DIV2K_train_HR)")
    ap.add_argument("--val-split", type=int, default=0, metavar="N",
                    help="hold out N images of --data (a fixed split by path hash, recorded in the checkpoint) and "
                         "validate on them; they are never trained on. The recommended validation: checkpoints and "
                         "schedules are then never chosen on a benchmark set")
    ap.add_argument("--val-max-side", type=int, default=256,
                    help="centre-crop held-out images to at most this many HR pixels a side (bounds validation "
                         "time on a CPU; 0 keeps them whole; default 256)")
    ap.add_argument("--val", default=None,
                    help="a separate validation folder with HR/ (and LR_bicubic/X<s>/) instead of --val-split; "
                         "never a benchmark set you report on")
    ap.add_argument("--out", required=True, help="run folder: last.pt (resume state), model.pt, log.csv")
    ap.add_argument("--iters", type=int, default=20000, help="total training iterations")
    ap.add_argument("--batch", type=int, default=16, help="patches per iteration (per GPU under DDP)")
    ap.add_argument("--patch", type=int, default=48, help="LR patch size in pixels")
    ap.add_argument("--sampling", choices=["area", "uniform"], default="area",
                    help="how images are drawn: area (by size, default) or uniform (each image equally often)")
    ap.add_argument("--loss", choices=list(LOSSES), default="l1",
                    help="l1: the paper's loss; l2: mean squared error, for a short last stage that "
                         "fine-tunes an L1-trained model towards PSNR; psnr: minus the patches' mean PSNR "
                         "(each patch's MSE floored at 45 dB), which weighs flat patches as the benchmarks' "
                         "per-image average does (logged loss: minus PSNR in dB)")
    ap.add_argument("--lr", type=float, default=2e-4, help="initial learning rate (paper: 2e-4 at batch 16)")
    ap.add_argument("--lr-scaling", choices=list(LR_RULES), default="none",
                    help="how the rate grows with the global batch (--batch x GPUs): sqrt uses "
                         "lr * sqrt(batch / 16), so 2e-4 becomes 8e-4 at batch 256; linear lr * batch / 16; "
                         "none (default) takes --lr as it is")
    ap.add_argument("--schedule", choices=["step", "cosine"], default="step",
                    help="step: the paper's x0.85 every --step-every; cosine: warm-up then cosine to --min-lr")
    ap.add_argument("--step-every", type=int, default=200_000)
    ap.add_argument("--warmup", type=int, default=500)
    ap.add_argument("--min-lr", type=float, default=1e-6)
    ap.add_argument("--amp", choices=["auto", "bf16", "off"], default="auto",
                    help="mixed precision: auto uses bf16 where the CPU/GPU supports it")
    ap.add_argument("--memory-format", choices=["auto", *LAYOUTS], default="auto",
                    help="tensor layout: auto is channels_last (on a CPU 1.2-1.4x faster per step here with bf16, "
                         "see eval/train_speed.py; on a GPU what bf16 tensor-core convolutions read natively)")
    ap.add_argument("--data-on-device", choices=["auto", "on", "off"], default="auto",
                    help="keep the decoded training set and its LR on the training device and cut patches there "
                         "(core/device_sampler.py); auto: on with CUDA, off on a CPU (batches then come from "
                         "--workers processes)")
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile the model for training; meant for CUDA (measure the gain with "
                         "eval/train_speed.py --data ... --compile). The first step compiles: 3.3 minutes for "
                         "32s on a 2-core CPU")
    ap.add_argument("--ema", type=float, default=0.0, metavar="DECAY",
                    help="keep an exponential moving average of the weights with this decay (e.g. 0.999) and "
                         "validate and write model.pt from it; last.pt keeps both (0: off, the default)")
    ap.add_argument("--qat", action="store_true",
                    help="quantization-aware fine-tuning: train through a simulation of the int8 TFLite graph "
                         "(core/qat.py; fp32, start from a float checkpoint with --init-from); model.pt then "
                         "carries the int8 ranges for converters/to_tflite.py --qat")
    ap.add_argument("--qat-freeze", type=int, default=None, metavar="ITER",
                    help="with --qat: stop tracking the int8 ranges at this iteration and fine-tune the weights "
                         "to the frozen ranges for the rest of the run")
    ap.add_argument("--qat-ranges", choices=["tracked", "learned"], default="tracked",
                    help="with --qat: tracked (default) follows each int8 range with a moving average of the "
                         "batches' min/max; learned trains each range's width and centre with the loss, starting "
                         "from the ranges of the --init-from QAT checkpoint (use --lr 0 to train the ranges alone)")
    ap.add_argument("--qat-range-lr", type=float, default=1e-3, metavar="LR",
                    help="with --qat-ranges learned: peak learning rate of the ranges' log-width and centre "
                         "(in units of the starting width); same schedule as --lr")
    ap.add_argument("--qat-hold-staggered", action="store_true",
                    help="with --qat-ranges learned: hold the ranges of the tensors that --stagger and "
                         "--stagger-upsampler copy (skip head, tail, their sum, the upsampler's output) and "
                         "learn the others; the copies' grids are set from those ranges, so ranges learned "
                         "for one copy need not suit two")
    ap.add_argument("--stagger", type=int, default=1, metavar="K",
                    help="with --qat, from a QAT checkpoint: train and validate through the int8 simulation of the "
                         "graph converters/to_tflite.py --qat --stagger K writes (the direct path carried K times, "
                         "core/stagger.py), so that the weights and ranges fit the file that ships; the ranges of "
                         "the copied tensors are held, since the copies' shifts follow from them "
                         f"(2 to {stagger.MAX_COPIES}; default 1, off)")
    ap.add_argument("--stagger-upsampler", action="store_true",
                    help="with --stagger K: the graph of --stagger K --stagger-upsampler (the upsampler's last conv "
                         "output carried K times as well)")
    ap.add_argument("--stagger-concat", action="store_true",
                    help="with --stagger K: the graph of converters/to_tflite.py --stagger-concat as well (each "
                         "DRAG's concatenation carried K times; their ranges are held too)")
    ap.add_argument("--train-params", choices=["all", "bias"], default="all",
                    help="which parameters training moves: all (default), or bias: the biases and PReLU slopes "
                         "only, every convolution weight held (with --qat: corrects the mean shift of the int8 "
                         "rounding without moving the model away from its float function)")
    ap.add_argument("--teacher", default=None, metavar="CKPT",
                    help="distil: the loss compares the output with this float checkpoint's output (same variant "
                         "and scale) instead of the HR patch. With --qat and the shipped float checkpoint as teacher "
                         "the loss is exactly the int8 error the drift report measures")
    ap.add_argument("--distill-weighting", choices=["uniform", "relative"], default="uniform",
                    help="with --teacher and --loss l2: uniform (default) averages the squared error over all "
                         "patches; relative divides each patch's error by the teacher's own squared error to the HR "
                         "patch (floored at 45 dB), so that flat patches, where any rounding costs the most PSNR, "
                         "weigh as much as the PSNR they lose")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    ap.add_argument("--init-from", default=None, help="checkpoint of another scale to start the body from")
    ap.add_argument("--save-every", type=int, default=250, help="write last.pt every N iterations")
    ap.add_argument("--val-every", type=int, default=1000, help="validate and write model.pt every N iterations")
    ap.add_argument("--stop-at", type=int, default=None,
                    help="save and exit at this iteration without changing the schedule (resume later)")
    ap.add_argument("--stop-after-minutes", type=float, default=None,
                    help="save and exit after this much wall time (for a machine held for a limited time)")
    ap.add_argument("--time-budget", type=float, default=None, metavar="MINUTES",
                    help="train for this many minutes of training time (resumes count what was spent): the cosine "
                         "schedule runs over time instead of iterations and ends annealed; --iters is then a cap")
    ap.add_argument("--workers", type=int, default=None,
                    help="background processes preparing batches (default: 4 on a GPU, 0 on a CPU)")
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args(argv)


def main(argv=None):
    """The command line: a TrainingError or a damaged checkpoint becomes `error: ...` and exit status 1,
    never a traceback."""
    try:
        train(parse_args(argv), argv)
    except (TrainingError, CheckpointError) as exc:
        raise SystemExit(f"error: {exc}") from None


def hold_staggered_ranges(model, scored, upsampler: bool, concatenations: bool = False) -> list[str]:
    """Freeze the ranges of the tensors --stagger copies (core/stagger.py names them); returns their names."""
    try:
        held = sorted(stagger.direct_path_tensors(model, upsampler=upsampler, sim=scored).values())
        if concatenations:
            held = sorted(held + list(stagger.concatenation_tensors(model, sim=scored).values()))
    except ValueError as exc:
        raise TrainingError(f"--stagger / --qat-hold-staggered: {exc}") from None
    # freezing stops their learning (no gradient reaches them) and keeps their carried range exactly
    quants = qat.act_quants(scored)
    for name in held:
        quants[name].freeze()
    return held


def train(args, argv=None):
    """One training run (resumed from args.out/last.pt when there is one)."""
    # flags that cannot go together fail before anything is read or written
    if args.qat and args.ema:
        raise TrainingError("--qat and --ema cannot be combined")
    if args.qat_ranges == "learned" and not args.qat:
        raise TrainingError("--qat-ranges learned needs --qat")
    if args.qat_hold_staggered and args.qat_ranges != "learned":
        raise TrainingError("--qat-hold-staggered needs --qat --qat-ranges learned")
    problem = stagger.flags_problem(args.stagger, args.stagger_upsampler, args.stagger_concat)
    if problem:
        raise TrainingError(problem)
    if args.stagger != 1 and not args.qat:
        raise TrainingError("--stagger needs --qat: the copies' shifts follow from int8 ranges")
    if args.stagger != 1 and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise TrainingError("--stagger trains on one device (not under torchrun)")
    if args.distill_weighting != "uniform" and not (args.teacher and args.loss == "l2"):
        raise TrainingError("--distill-weighting relative needs --teacher and --loss l2")
    args.lr = scaled_lr(args.lr, args.lr_scaling, args.batch * int(os.environ.get("WORLD_SIZE", "1")))
    ddp = int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank = int(os.environ.get("RANK", "0"))
    if ddp:
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    log = print if rank == 0 else (lambda *a, **k: None)
    out = Path(args.out)

    torch.manual_seed(args.seed)   # same initial weights for the same --seed
    random.seed(args.seed)
    resume = out / "last.pt"
    # read once for all it brings: an equalized checkpoint (core/equalize.py) its skip head,
    # --init-from its weights, a QAT one its int8 ranges
    source = resume if resume.is_file() else args.init_from
    start = read_checkpoint(source) if source else None
    if not resume.is_file() and not ((start or {}).get("meta", {}).get("qat") or {}).get("ranges"):
        if args.qat_ranges == "learned":
            raise TrainingError("--qat-ranges learned: learned ranges start from existing ones: "
                                "start from a QAT checkpoint (--init-from)")
        if args.stagger != 1:
            raise TrainingError("--stagger: the copies' shifts follow from int8 ranges: "
                                "start from a QAT checkpoint (--init-from)")
    out.mkdir(parents=True, exist_ok=True)   # only now: a damaged --init-from leaves nothing behind
    model = build_model(args.variant, args.scale, skip_head=bool(start and start.get("skip_head", False)))
    # fused Adam: one kernel per step instead of several per tensor (the model has ~100 small tensors)
    opt = torch.optim.Adam(trainable(model, args.train_params), lr=args.lr, betas=(0.9, 0.999), eps=1e-8,
                           fused=device.type == "cuda")
    state = {"iteration": 0, "seconds": 0.0, "best_val": None}
    ema_saved = None
    if args.val and args.val_split:
        raise TrainingError("give --val-split or --val, not both")
    try:
        train_files, held = split_holdout(args.data, args.val_split)
    except ValueError as exc:
        raise TrainingError(f"--val-split: {exc}") from None
    sampler = PatchSampler(args.data, args.scale, args.patch, seed=args.seed + rank, log=log,
                           sampling=args.sampling, files=train_files)
    on_device = data_on_device(args, device)
    if on_device:
        sampler = DeviceSampler(sampler.pairs, args.scale, args.patch, seed=args.seed + rank, device=device,
                                sampling=args.sampling)
        log(f"training set held on {device}: patches cut on {device.type}")
    if resume.is_file():
        _, blob = load_checkpoint(resume, args.variant, args.scale)
        model.load_state_dict(blob["state_dict"])
        ts = blob["train_state"]
        ema_saved = ts.get("ema")
        state = ts["state"]
        torch.set_rng_state(ts["torch_rng"])
        random.setstate(ts["python_rng"])
        log(f"resumed from {resume} at iteration {state['iteration']}")
    elif args.init_from:
        state["origin"] = init_from(model, args.init_from, start, log)
    layout = memory_format(args, device)
    model.to(device, memory_format=layout).train()
    net = torch.nn.parallel.DistributedDataParallel(model) if ddp else model
    ema = ema_of(model, args.ema, ema_saved) if args.ema else None
    # what validation measures and model.pt ships: the average when there is one
    shipped = ema.module if ema is not None else model
    scored = trained = shipped   # trained: what the loss and validation see
    held_ranges = None
    if args.qat:
        # the int8 simulation shares the model's parameters; validation scores what int8 will compute
        scored = trained = qat.prepare(model).to(device)
        if resume.is_file() and "qat" in ts:
            qat.load_range_state(scored, ts["qat"])
        elif args.init_from:
            # (resuming a run that kept no int8 state: `start` is its last.pt, not the --init-from file)
            carry_qat_ranges(scored, args.init_from,
                             read_checkpoint(args.init_from) if resume.is_file() else start, log)
        if args.qat_ranges == "learned":
            try:
                opt.add_param_group({"params": qat.learn_ranges(scored), "lr": args.qat_range_lr,
                                     "name": "ranges"})
            except ValueError as exc:
                raise TrainingError(f"--qat-ranges learned: {exc}") from None
        if args.qat_hold_staggered or args.stagger != 1:
            held_ranges = hold_staggered_ranges(model, scored, args.qat_hold_staggered or args.stagger_upsampler,
                                                args.stagger_concat)
        if args.stagger != 1:
            try:
                trained = stagger.StaggeredSimulation(model, scored, args.stagger, args.stagger_upsampler,
                                                      args.stagger_concat)
            except ValueError as exc:
                raise TrainingError(f"--stagger: {exc}") from None
            log("training through the int8 simulation of the "
                f"{stagger.flags(args.stagger, args.stagger_upsampler, args.stagger_concat)} graph")
        net = torch.nn.parallel.DistributedDataParallel(scored) if ddp else trained
        args.amp = "off"   # rounding to int8 steps needs fp32 arithmetic
    if resume.is_file():
        try:   # after the learned ranges' parameter group, which the saved optimizer has too
            opt.load_state_dict(ts["optimizer"])
        except ValueError:
            raise TrainingError(f"{resume} was written with other --qat/--qat-ranges/--train-params options: "
                                "resume with those, or give another --out") from None
    teacher = load_teacher(args.teacher, args, device, layout, log) if args.teacher else None
    if args.compile:
        net = torch.compile(net)
    amp = autocast_dtype(args, device)
    loss_fn = LOSSES[args.loss]
    if rank != 0:
        val_pairs = []
    elif args.val_split:
        val_pairs = holdout_pairs(held, args.scale, args.val_max_side)
        log(f"validation: {len(held)} held-out images of {args.data} (never trained on)")
    else:
        val_pairs = load_pairs(args.val, args.scale) if args.val else []
    val_info = (describe(args.data, held) | {"max_side": args.val_max_side} if args.val_split
                else {"set": str(args.val)})
    log(f"DRSAN-{args.variant} x{args.scale} on {device}, amp={amp}, {str(layout).split('.')[-1]}, "
        f"threads={torch.get_num_threads()}, "
        f"iterations {state['iteration']}->{args.iters}")

    def meta():
        return {"training": {
            "iterations": state["iteration"], "hours": round(state["seconds"] / 3600, 3),
            "data": str(args.data), "batch": args.batch, "patch": args.patch, "lr": args.lr, "loss": args.loss,
            "sampling": args.sampling,
            "schedule": args.schedule, "time_budget_minutes": args.time_budget, "amp": str(amp),
            "memory_format": str(layout), "ema_decay": args.ema or None, "lr_scaling": args.lr_scaling,
            "data_on_device": on_device, "compile": args.compile,
            "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
            "machine": f"{platform.machine()} {usable_cores()} cores", "init_from": args.init_from,
            "init_from_sha256": state.get("origin", {}).get("sha256"),
            "train_params": args.train_params,
            "teacher": args.teacher, "distill_weighting": args.distill_weighting if args.teacher else None,
            "command": "python core/train.py " + " ".join(sys.argv[1:]) if argv is None else "main(" + repr(argv) + ")",
        }, "validation": val_info | {"psnr_y": state.get("last_val"), "best_psnr_y": state["best_val"],
                                    "convention": "authors"},
            **({"qat": qat_meta()} if args.qat else {})}

    carried_mode = ((start or {}).get("meta", {}).get("qat") or {}).get("ranges_mode")

    def qat_meta():
        before = state.get("origin", {}).get("qat_iterations", 0)
        return {"ranges": qat.ranges(scored), "iterations": before + state["iteration"],
                "iterations_before": before, "init_from": args.init_from,
                "init_from_sha256": state.get("origin", {}).get("sha256"), "teacher": args.teacher,
                "ranges_frozen_at": args.qat_freeze if qat.is_frozen(scored) else None,
                # ranges frozen from the start are the carried ones, whatever their source's mode
                "ranges_mode": (carried_mode if args.qat_ranges == "tracked" and args.qat_freeze == 0
                                and carried_mode else args.qat_ranges),
                "range_lr": args.qat_range_lr if args.qat_ranges == "learned" else None,
                "ranges_held": held_ranges,
                "stagger": ({"copies": args.stagger, "upsampler": args.stagger_upsampler,
                             **({"concatenations": True} if args.stagger_concat else {})} if args.stagger != 1
                            else None),
                "graph": "int8 TFLite, PReLU spelled sub, concatenation inputs requantized",
                "validation": "int8 simulation" + (
                    f" of the {stagger.flags(args.stagger, args.stagger_upsampler, args.stagger_concat)} graph"
                    if args.stagger != 1 else "")}

    def save_all():
        if rank != 0:
            return
        save_checkpoint(resume, model, meta(), train_state={
            "optimizer": opt.state_dict(), "state": state, "torch_rng": torch.get_rng_state(),
            "python_rng": random.getstate(), "args": vars(args),
            **({"ema": {k: v.detach().cpu().contiguous() for k, v in ema.state_dict().items()}} if ema else {}),
            **({"qat": qat.range_state(scored)} if args.qat else {})})

    log_path = out / "log.csv"
    new_log = not log_path.exists()
    with open(log_path, "a", newline="") as fh, stop_on_signals() as signals:
        writer = csv.writer(fh)
        if new_log:
            writer.writerow(["iteration", "loss", "lr", "seconds", "val_psnr"])
        bar = tqdm(total=args.iters, initial=state["iteration"], disable=rank != 0, mininterval=5,
                   desc=f"train {args.variant} x{args.scale}")
        # the loss stays on the device between log lines: reading it every step would make the
        # CPU wait for the GPU instead of preparing the next step
        loss_acc, n_acc, t0 = torch.zeros((), device=device), 0, time.time()
        deadline = time.time() + 60 * args.stop_after_minutes if args.stop_after_minutes else None
        stop_at = min(args.iters, args.stop_at or args.iters)
        workers = args.workers if args.workers is not None else (4 if device.type == "cuda" else 0)
        feed = (sampler.batches(args.batch, state["iteration"]) if on_device
                else batches(sampler, args.batch, state["iteration"], workers, pin=device.type == "cuda"))
        while state["iteration"] < stop_at:
            it = state["iteration"]
            elapsed = state["seconds"] + time.time() - t0
            lr_now = learning_rate(args, it, elapsed)
            range_now = range_lr(args, it, elapsed) if args.qat_ranges == "learned" else None
            for g in opt.param_groups:
                g["lr"] = range_now if g.get("name") == "ranges" else lr_now
            if args.qat and it == args.qat_freeze:
                qat.freeze_ranges(scored)
            lr_b, hr_b = (t.to(device, non_blocking=True).float().div_(255.0) for t in next(feed))
            step_loss = loss_fn
            if teacher is not None:
                with torch.no_grad():
                    taught = teacher(lr_b.contiguous(memory_format=layout)).float()
                if args.distill_weighting == "relative":
                    step_loss = weighted_l2(relative_weights(taught, hr_b))
                hr_b = taught
            loss = train_step(net, opt, step_loss, lr_b.contiguous(memory_format=layout), hr_b, amp)
            if ema is not None:
                ema.update_parameters(model)
            state["iteration"] = it + 1
            loss_acc += loss.detach()
            n_acc += 1
            bar.update(1)
            done = state["iteration"]
            val = None
            # a signal, a time limit or a spent --time-budget stops the run early; it ends like a finished run
            spent = state["seconds"] + time.time() - t0
            stop_why = (f"signal {signals[0]}" if signals
                        else "--stop-after-minutes" if deadline is not None and time.time() > deadline
                        else "budget" if args.time_budget is not None and spent >= 60 * args.time_budget
                        else None)
            last = done in (args.iters, stop_at) or stop_why is not None
            if val_pairs and (done % args.val_every == 0 or last):
                val = validate(trained, val_pairs, args.scale, device)
                state["last_val"] = val   # model.pt holds these weights: its psnr_y is this score, not the best
                if state["best_val"] is None or val > state["best_val"]:
                    state["best_val"] = val
                log(f"\niteration {done}: validation PSNR(Y) {val:.3f} dB (best {state['best_val']:.3f})")
            if done % 100 == 0 or val is not None or last:
                now = time.time()
                state["seconds"] += now - t0
                t0 = now
                mean_loss = loss_acc.item() / max(1, n_acc)
                # with --time-budget the bar's ETA (from --iters, a mere cap) means nothing: show the budget left
                left = {} if args.time_budget is None else {
                    "budget_left": f"{max(0.0, args.time_budget - state['seconds'] / 60):.0f}min"}
                bar.set_postfix(loss=f"{mean_loss:.3g}", lr=f"{lr_now:.2e}", **left, refresh=False)
                if rank == 0:
                    writer.writerow([done, round(mean_loss, 6), lr_now, round(state["seconds"], 1),
                                     "" if val is None else round(val, 4)])
                    fh.flush()
                loss_acc, n_acc = torch.zeros((), device=device), 0
            if done % args.save_every == 0 or last:
                save_all()
            if rank == 0 and (val is not None or last):
                save_checkpoint(out / "model.pt", shipped, meta())
            if stop_why == "budget":
                log(f"\ntime budget of {args.time_budget:g} minutes spent at iteration {done}")
                break
            if stop_why:
                log(f"\nstopping at iteration {done} ({stop_why}); run the same command to resume")
                break
        bar.close()
    log(f"done: {out / 'model.pt'} ({state['iteration']} iterations, {state['seconds'] / 3600:.2f} h)")
    if ddp:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
