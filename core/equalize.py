"""Channel equalization of DRSAN's direct path, for int8 builds.

    python core/equalize.py --variant 32s --scale 4 --weights runs/qat_x4/model.pt \
        --data /path/to/train_images --out runs/qat_x4/model_equalized.pt

converters/to_tflite.py equalizes every post-training int8 build on its calibration
crops; this command does the same to a quantization-aware checkpoint (core/train.py
--qat), carrying its learned int8 ranges over, so that `to_tflite.py --qat` builds
the same graph.

An int8 tensor has one scale for all its channels, so a channel whose values span a
third of the tensor's range is stored with a third of the levels it could have. On
the direct path (global skip, tail, skip sum, upsampler convs) nothing downstream
averages that rounding away, and there it costs most (docs/qat.md). Scaling a
channel by s > 0 where it is produced and by 1/s where it is consumed computes the
same function in float; choosing s so that every channel reaches the tensor's range
gives each channel all the levels.

The scales are exact reparametrizations: convs are linear, depth-to-space moves
values without mixing channels, and the skip sum adds two tensors scaled alike. The
head's features cannot be rescaled where DRAG 0 reads them (its sigmoid gate is not
scale-invariant), so the skip gets a head conv of its own (`DRSAN.skip_head`): one
3-to-C conv at LR, about 0.1% of the model's multiply-adds.
"""
from __future__ import annotations

if __name__ == "__main__" and not __package__:   # run by path, e.g. python core/equalize.py
    import importlib

    __package__ = "drsan_kit.core"   # so that the relative imports below resolve (PEP 366)
    importlib.import_module(__package__)

import argparse
import copy
import sys
from pathlib import Path

import numpy as np
import torch

from .model import DRSAN


@torch.no_grad()
def channel_ranges(model: DRSAN, images) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per-channel (min, max) over `images` (N, 3, H, W) of the direct path's tensors:
    "skip" (the skip head's output), "tail", "sum" (the skip sum) and "up<k>" (upsampler conv k,
    before depth-to-space)."""
    found: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def keep(name):
        def hook(_mod, _inp, out):
            lo, hi = out.amin(dim=(0, 2, 3)), out.amax(dim=(0, 2, 3))
            if name in found:
                lo, hi = torch.minimum(lo, found[name][0]), torch.maximum(hi, found[name][1])
            found[name] = (lo, hi)
        return hook

    def keep_sum(_mod, inp):
        keep("sum")(None, None, inp[0])

    handles = [model.skip_head.register_forward_hook(keep("skip")), model.tail.register_forward_hook(keep("tail")),
               model.upsampler.register_forward_pre_hook(keep_sum)]
    handles += [conv.register_forward_hook(keep(f"up{k}")) for k, conv in enumerate(model.upsampler.convs)]
    try:
        for x in images:
            model(x[None] if x.dim() == 3 else x)
    finally:
        for h in handles:
            h.remove()
    return found


def fill_factors(lo: torch.Tensor, hi: torch.Tensor, box_lo: float, box_hi: float) -> torch.Tensor:
    """The largest s per channel with [s * lo, s * hi] inside [box_lo, box_hi] (box_lo < 0 < box_hi)."""
    up = torch.where(hi > 0, box_hi / hi.clamp(min=1e-12), torch.full_like(hi, float("inf")))
    down = torch.where(lo < 0, box_lo / lo.clamp(max=-1e-12), torch.full_like(lo, float("inf")))
    s = torch.minimum(up, down)
    return torch.where(torch.isfinite(s), s, torch.ones_like(s))


def _box(lo: torch.Tensor, hi: torch.Tensor) -> tuple[float, float]:
    return min(float(lo.min()), -1e-6), max(float(hi.max()), 1e-6)


def _grouped(lo, hi, s: int, order: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel (min, max) of a conv feeding a depth-to-space of block s: the s*s
    channels that become one channel share a scale."""
    c = lo.numel() // (s * s)
    view = (lambda t: t.view(c, s * s)) if order == "crd" else (lambda t: t.view(s * s, c).t())
    return view(lo).amin(1), view(hi).amax(1)


def _expand(t: torch.Tensor, s: int, order: str) -> torch.Tensor:
    """A per-output-channel factor spread over the s*s conv channels that feed each channel."""
    return t.repeat_interleave(s * s) if order == "crd" else t.repeat(s * s)


def _scale_out(conv, factor):
    conv.weight.mul_(factor.view(-1, 1, 1, 1))
    conv.bias.mul_(factor)


def _scale_in(conv, factor):
    conv.weight.div_(factor.view(1, -1, 1, 1))


# the skip head's output, the tail's and their sum: an ADD needs its inputs scaled alike
SHARED = ("skip", "tail", "sum")


@torch.no_grad()
def equalize_direct_path(model: DRSAN, images) -> tuple[DRSAN, dict]:
    """A copy of `model` with a skip head and the direct path's channels rescaled, computing the
    same function in float; and a summary of the factors. `images`: (N, 3, H, W) in [0, 1], the
    calibration crops (training images, never a benchmark set)."""
    model = copy.deepcopy(model).eval()
    if model.skip_head is None:
        model.skip_head = copy.deepcopy(model.head)
    ranges = channel_ranges(model, images)
    # one factor per channel for all three: the largest that keeps each inside its own range
    shared = torch.stack([fill_factors(*ranges[t], *_box(*ranges[t])) for t in SHARED]).amin(0)
    _scale_out(model.skip_head, shared)
    _scale_out(model.tail, shared)
    _scale_in(model.upsampler.convs[0], shared)
    summary = {"skip": shared}
    order, convs = model.upsample_order, model.upsampler.convs
    consumers = list(convs[1:]) + [model.recon]
    for k, (conv, s) in enumerate(zip(convs, model.upsampler.factors)):
        lo, hi = _grouped(*ranges[f"up{k}"], s, order)
        # measured before any rescaling: what an earlier step divides into this conv's input
        # weights cancels what it multiplied, so this conv's output, and its range, stay
        factor = fill_factors(lo, hi, *_box(lo, hi))
        _scale_out(conv, _expand(factor, s, order))
        _scale_in(consumers[k], factor)
        summary[f"up{k}"] = factor
    return model, {k: {"min": round(float(v.min()), 4), "median": round(float(v.median()), 4),
                       "max": round(float(v.max()), 4)} for k, v in summary.items()}


def _node(name: str) -> str:
    """The traced node a simulated tensor belongs to: 'aq_003_head' -> 'head'."""
    parts = name.split("_", 2)
    return parts[2] if len(parts) == 3 and parts[0] == "aq" and parts[1].isdigit() else name


def _carried(learned: float, before: float, after: float) -> float:
    # the learned range keeps its proportion to the float range it was learned on
    return learned * after / before if abs(before) > 1e-9 else after


def carry_ranges(old_model: DRSAN, old_ranges: dict, new_model: DRSAN, images) -> dict[str, list[float]]:
    """The int8 ranges of a quantization-aware checkpoint, carried over to its equalized copy.

    Tensors the equalization left alone keep their learned range. A rescaled one keeps the
    proportion its learned range had to its float min/max over `images`, applied to its new
    float min/max; the skip head's output starts from the head's.
    """
    from . import qat

    old_sim, new_sim = qat.prepare(old_model), qat.prepare(new_model)
    qat.load_ranges(old_sim, old_ranges)
    old_rec, new_rec = qat.recorded_ranges(old_sim, images), qat.recorded_ranges(new_sim, images)
    by_node = {_node(n): n for n in qat.act_quants(old_sim)}
    out = {}
    for name in qat.act_quants(new_sim):
        node = _node(name)
        old = by_node.get("head" if node == "skip_head" else node)
        if old is None:
            raise ValueError(f"no range to carry over for {name}")
        (lo_l, hi_l), (lo_o, hi_o), (lo_n, hi_n) = old_ranges[old], old_rec[old], new_rec[name]
        if abs(lo_n - lo_o) <= 1e-5 * max(1.0, abs(lo_o)) and abs(hi_n - hi_o) <= 1e-5 * max(1.0, abs(hi_o)):
            out[name] = [lo_l, hi_l]
        else:
            out[name] = [_carried(lo_l, lo_o, lo_n), _carried(hi_l, hi_o, hi_n)]
    return out


def calibration_crops(data, val_split: int, scale: int, count: int, crop_size: int) -> list[torch.Tensor]:
    """LR centre crops of the first `count` training images outside the held-out split."""
    from .holdout import holdout_pairs, split_holdout

    train, _ = split_holdout(data, val_split)
    pairs = holdout_pairs(train[:count], scale, crop_size)
    return [torch.from_numpy(p.lr.transpose(2, 0, 1).astype(np.float32) / 255.0) for p in pairs]


def equalize_checkpoint(weights, out, data, val_split: int = 24, count: int = 16, crop_size: int = 192,
                        variant: str | None = None, scale: int | None = None) -> dict:
    """Equalize a checkpoint (float or quantization-aware) and save it to `out`; returns the factors."""
    from .checkpoint import load_checkpoint, save_checkpoint
    from .datapack import file_sha256

    if not Path(data).is_dir():
        raise ValueError(f"{data}: not a folder of training images")
    if Path(out).resolve() == Path(weights).resolve():
        raise ValueError(f"{out}: would overwrite the input checkpoint; give another --out")
    model, blob = load_checkpoint(weights, variant, scale)
    if model.skip_head is not None:
        raise ValueError(f"{weights}: already equalized (it has a skip head)")
    images = calibration_crops(data, val_split, model.scale, count, crop_size)
    if not images:
        raise ValueError(f"{data}: no training images outside the held-out split")
    equalized, factors = equalize_direct_path(model, images)
    meta = copy.deepcopy(blob.get("meta", {}))
    if (meta.get("qat") or {}).get("ranges"):
        meta["qat"]["ranges"] = carry_ranges(model, meta["qat"]["ranges"], equalized, images)
    meta["equalized"] = {"from": str(weights), "from_sha256": file_sha256(Path(weights)), "factors": factors,
                         "images": f"{len(images)} centre crops of {crop_size} px, training images outside "
                                   f"the {val_split} held out"}
    save_checkpoint(out, equalized, meta)
    return factors


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description="Rescale the direct path's channels of a DRSAN checkpoint so that each fills its int8 "
                    "range (same float outputs; see docs/qat.md). A quantization-aware checkpoint keeps its "
                    "learned ranges, carried over to the rescaled tensors.")
    ap.add_argument("--variant", default=None, help="expected variant, e.g. 32s (default: the checkpoint's)")
    ap.add_argument("--scale", type=int, default=None, help="expected scale (default: the checkpoint's)")
    ap.add_argument("--weights", required=True, help="checkpoint to equalize (left unchanged)")
    ap.add_argument("--data", required=True, help="folder of training images; the channel ranges are measured "
                                                  "on images outside the held-out split")
    ap.add_argument("--val-split", type=int, default=24,
                    help="held-out images left out, the same rule as core/train.py --val-split (default 24)")
    ap.add_argument("--crops", type=int, default=16, help="training images measured (default 16)")
    ap.add_argument("--crop-size", type=int, default=192, help="HR centre crop per image, pixels (default 192)")
    ap.add_argument("--out", required=True, help="where to write the equalized checkpoint")
    args = ap.parse_args(argv)
    from .checkpoint import CheckpointError

    try:
        factors = equalize_checkpoint(args.weights, args.out, args.data, args.val_split, args.crops,
                                      args.crop_size, args.variant, args.scale)
    except (CheckpointError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for name, f in factors.items():
        print(f"{name}: channel factors {f['min']:g} to {f['max']:g} (median {f['median']:g})")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
