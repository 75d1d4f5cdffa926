"""Which int8 tensors cost the most? The int8 error budget of a DRSAN, tensor by tensor.

    python eval/int8_budget.py --variant 32s --scale 2 --weights weights/drsan_32s_x2_qat.pt \\
        --data /path/to/train_images --val-split 24 --out reports/int8_budget_32s_x2.md

Runs the int8 simulation of core/qat.py (the graph the int8 TFLite artifact computes)
on held-out crops of a training folder, with one tensor rounded at a time and everything
else in float, and reports each tensor's share of the output error (mean squared error
against the same weights in float, in 8-bit levels squared). The shares add up to about
the error of rounding everything at once: the roundings are nearly independent.

A quantization-aware checkpoint (core/train.py --qat) brings its own ranges; a float one
is calibrated on the same crops (min/max, as post-training quantization does). Where the
error sits tells what can help: fine-tuning spreads it out, but a tensor whose rounding
reaches the output directly (the head features the global skip carries, the last convs)
keeps its share whatever the weights, because its int8 grid is fixed by its own range.
"""
from __future__ import annotations

if __name__ == "__main__" and not __package__:   # run by path, e.g. python eval/int8_budget.py
    import importlib

    __package__ = "drsan_kit.eval"   # so that the relative imports below resolve (PEP 366)
    importlib.import_module(__package__)

import argparse
import json
import re
from pathlib import Path

import numpy as np

from ..core import provenance
from ..core.atomic import atomic_path
from ..core.variants import SCALES, VARIANTS
from ..edge_runtime.contract import argtype, parse_threads
from .cli import EvalError, run


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description="Share of each int8 tensor in the output error of the int8 simulation, "
                    "measured on held-out crops of a training folder (never a benchmark set).")
    ap.add_argument("--variant", default="32s", choices=list(VARIANTS))
    ap.add_argument("--scale", type=int, default=4, choices=SCALES)
    ap.add_argument("--weights", default=None,
                    help="checkpoint: a --qat one brings its int8 ranges, a float one is calibrated "
                         "on the crops (default: the shipped float weights)")
    ap.add_argument("--reference", default=None,
                    help="float checkpoint the dPSNR column compares with (default: the shipped float weights)")
    ap.add_argument("--data", required=True, help="folder of training images; the held-out split is used")
    ap.add_argument("--val-split", type=int, default=24,
                    help="held-out images, the same rule as core/train.py --val-split (default 24)")
    ap.add_argument("--crops", type=int, default=8, help="held-out images to use (default 8)")
    ap.add_argument("--crop-size", type=int, default=96, help="HR centre crop per image, pixels (default 96)")
    ap.add_argument("--whole", action="store_true",
                    help="whole held-out images instead of centre crops, flat skies and walls included (where "
                         "int8 rounding costs the most PSNR); the summary rows only, no per-tensor shares")
    ap.add_argument("--artifact", type=Path, default=None,
                    help="an int8 TFLite file built from --weights (converters/to_tflite.py --qat): run on the same "
                         "images as the runtime runs it, and compared with the simulation, which it should match")
    ap.add_argument("--stagger", type=int, default=1, metavar="K",
                    help="simulate the graph with the direct path carried K times, staggered by 1/K of an int8 "
                         "step (core/stagger.py; converters/to_tflite.py --stagger K builds it); needs a --qat "
                         "checkpoint for --weights (default 1: the plain graph)")
    ap.add_argument("--stagger-upsampler", action="store_true",
                    help="with --stagger K: carry the upsampler's last conv output K times as well "
                         "(converters/to_tflite.py --stagger-upsampler builds it)")
    ap.add_argument("--stagger-concat", action="store_true",
                    help="with --stagger K: carry each DRAG's concatenation (its 1x1 fuse conv's input) K times as "
                         "well (converters/to_tflite.py --stagger-concat builds it)")
    ap.add_argument("--top", type=int, default=15, help="tensors listed one by one (default 15)")
    ap.add_argument("--threads", type=argtype(parse_threads), default=0,
                    help="CPU threads for torch and the --artifact interpreter; 0 (the default): torch's own default, "
                         "and every core for the interpreter")
    ap.add_argument("--out", type=Path, default=None, help="write the report here (Markdown) as well")
    ap.add_argument("--json", type=Path, default=None,
                    help="write the rows and tensors here too, unrounded (JSON), for comparisons finer than "
                         "the report's 0.001 dB")
    args = ap.parse_args(argv)
    from ..core.stagger import flags_problem
    problem = flags_problem(args.stagger, args.stagger_upsampler, args.stagger_concat)
    if problem:   # before any image is read
        ap.error(problem)
    return args


def held_out_pairs(args):
    """Held-out (LR, HR) crops (or, with --whole, images) of --data, and the LR inputs: a list of
    (N, 3, h, w) tensors in [0, 1], one batch of all crops or one tensor per whole image."""
    import torch

    from ..core.holdout import holdout_pairs, split_holdout

    if not Path(args.data).is_dir():
        raise EvalError(f"{args.data}: not a folder of training images")
    try:
        _, held = split_holdout(args.data, args.val_split)
    except ValueError as exc:
        raise EvalError(str(exc)) from None
    if args.crops < 1 or args.crop_size < 8 * args.scale:
        raise EvalError(f"--crops must be >= 1 and --crop-size >= {8 * args.scale} at x{args.scale}")
    if args.whole:
        pairs = holdout_pairs(held, args.scale)[: args.crops]
        return pairs, [_as_input(p.lr[None]) for p in pairs]
    pairs = [p for p in holdout_pairs(held, args.scale, args.crop_size)
             if p.hr.shape[:2] == (args.crop_size // args.scale * args.scale,) * 2][: args.crops]
    if not pairs:
        raise EvalError(f"no held-out image of {args.data} has a {args.crop_size}px crop")
    return pairs, [_as_input(np.stack([p.lr for p in pairs]))]


def _as_input(lr):
    """(N, H, W, 3) uint8 -> the (N, 3, H, W) float tensor in [0, 1] the models take."""
    import torch

    return torch.from_numpy(lr.transpose(0, 3, 1, 2).astype(np.float32) / 255.0)


def simulation(args, inputs):
    """(int8 simulation with ranges, where the ranges came from)."""
    from ..core import qat
    from ..core.checkpoint import load_checkpoint, resolve_weights

    model, blob = load_checkpoint(resolve_weights(args.weights, args.variant, args.scale), args.variant, args.scale)
    saved = blob.get("meta", {}).get("qat", {}).get("ranges")
    if args.stagger != 1:
        if not saved:
            raise EvalError("--stagger needs a quantization-aware checkpoint (--weights from core/train.py --qat)")
        from ..core.stagger import stagger_direct_path
        try:
            model, saved, _ = stagger_direct_path(model, saved, args.stagger, upsampler=args.stagger_upsampler,
                                                concatenations=args.stagger_concat)
        except ValueError as exc:
            raise EvalError(str(exc)) from None
    sim = qat.prepare(model)
    if saved:
        qat.load_ranges(sim, saved)
        info = blob["meta"]["qat"]
        how = "learned" if info.get("ranges_mode") == "learned" else "tracked"   # older checkpoints: tracked
        if info.get("ranges_frozen_at") == 0 and info.get("init_from"):   # a run that only held what it carried
            sha = (info.get("init_from_sha256") or "")[:12]
            how = f"carried from the checkpoint it started from ({info['init_from']}, SHA-256 {sha}...) and held"
        source = f"{how} in quantization-aware training ({info.get('iterations')} QAT iterations)"
    else:
        qat.load_ranges(sim, {n: list(r) for n, r in qat.recorded_ranges(sim, inputs).items()})
        source = "calibrated on the crops (min/max)"
    return sim.eval(), source


def tensor_roles(sim) -> dict[str, str]:
    """Simulated tensor name -> the part of the network it belongs to, in graph order."""
    from ..core import qat

    roles, part = {}, "head"
    names = {id(m): n for n, m in sim.named_modules()}
    requantized = {}
    for name, m in sim.named_modules():
        if isinstance(m, qat.TiedQuant):   # a concatenation input: the concatenation's part
            requantized[name] = names[id(m.owner)]
            continue
        if not isinstance(m, (qat.ActQuant, qat.SigmoidQuant)):
            continue
        if isinstance(m, qat.ImageQuant):
            roles[name] = "output image"
            continue
        if re.fullmatch(r"aq_\d+_x", name):
            roles[name] = "input image"
            continue
        body = re.search(r"body_(\d+)_", name)
        if body:
            part = f"DRAG {body.group(1)}"
        elif name.endswith("_tail"):
            part = "tail conv"
        elif "upsampler" in name:
            part = "upsampler conv"
        elif part == "tail conv":
            part = "global skip sum (tail + head)"
        roles[name] = SKIP_HEAD if name.endswith("_skip_head") else HEAD if name.endswith("_head") else part
    return roles | {name: roles[owner] for name, owner in requantized.items()}


# the tensors between the image and the DRAGs' output on one side and the output image on the
# other: the head features (which the global skip carries to the end), the skip sum, the convs
HEAD = "head conv (also the global skip's, in a graph without a skip head)"
SKIP_HEAD = "skip head conv (the global skip's own, equalized, copy of the head)"
DIRECT_ROLES = (HEAD, SKIP_HEAD, "global skip sum (tail + head)", "tail conv", "upsampler conv", "output image")
DIRECT_CONVS = r"q_(head|skip_head|tail|upsampler_convs_\d+|recon)"


def rounded_parts(sim):
    from ..core import qat

    return [(n, m) for n, m in sim.named_modules()
            if isinstance(m, (qat.ActQuant, qat.TiedQuant, qat.SigmoidQuant, qat.QuantConv))]


ALL_ROUNDED = "every tensor and weight rounded"


def configurations(sim, roles) -> dict[str, object]:
    """What is rounded in each row of the summary: a predicate on (name, module)."""
    from ..core import qat

    direct = {n for n, r in roles.items() if r in DIRECT_ROLES}
    return {
        ALL_ROUNDED: lambda n, m: True,
        "weights only": lambda n, m: isinstance(m, qat.QuantConv),
        "all but the direct path (head, skip head, tail, skip sum, upsampler and output convs, output image) rounded":
            lambda n, m: n not in direct and not re.fullmatch(DIRECT_CONVS, n),
        # what a graph that kept the image content off those tensors could reach: its convs' weights stay int8
        "every weight, and every activation but the direct path's, rounded":
            lambda n, m: isinstance(m, qat.QuantConv) or n not in direct,
    }


def artifact_outputs(path: Path, pairs, inputs, scale: int, threads: int | None):
    """The artifact's outputs on the same LR images, shaped like `inputs` (one batch of crops or one
    tensor per image), each image run whole by the runtime's own backend."""
    import torch

    from ..edge_runtime.artifact import open_artifact
    from ..edge_runtime.contract import WHOLE_FRAME
    from ..edge_runtime.upscaler import Upscaler

    opened = open_artifact(path, scale=scale, window=WHOLE_FRAME, threads=threads or 0)
    up = Upscaler(opened.backend, window=opened.window)
    outs = [torch.from_numpy(np.ascontiguousarray(up.frame(p.lr).transpose(2, 0, 1)))[None] for p in pairs]
    return outs if len(inputs) == len(pairs) else [torch.cat(outs)]


def budget(sim, reference, pairs, inputs, roles, scale: int, shares: bool = True, artifact=None):
    """({row: (error, dPSNR)}, [(error, name, range)] one activation at a time, sorted; [] without shares).

    inputs: the LR tensors, one batch of crops or one tensor per whole image (in pairs' order).
    artifact: (label, outputs shaped like inputs) of an int8 file, given a row of its own and one for
    its difference from the simulation with everything rounded.
    error: MSE against the same weights in float, in 8-bit levels squared;
    dPSNR: PSNR(Y) against HR minus that of `reference` (the float model a user compares with).
    """
    import torch

    from ..core import qat
    from ..core.metrics import psnr_y

    parts = rounded_parts(sim)

    def run(rounded):
        for n, m in parts:
            m.mode = "quantize" if rounded(n, m) else "off"
        with torch.no_grad():
            return [sim(x) for x in inputs]

    def mean_psnr(outs):
        sr = [o for out in outs for o in out.clamp(0, 1).numpy().transpose(0, 2, 3, 1)]
        return float(np.mean([psnr_y(o, p.hr, shave=scale, gray=p.gray) for o, p in zip(sr, pairs)]))

    with torch.no_grad():
        base = mean_psnr([reference(x) for x in inputs])
    same_float = run(lambda n, m: False)

    def error_between(outs, others) -> float:
        squared = sum(float(((o - f) ** 2).sum()) for o, f in zip(outs, others))
        return squared / sum(f.numel() for f in others) * 255.0**2

    def error(outs) -> float:
        return error_between(outs, same_float)

    rows = {}
    for label, rounded in configurations(sim, roles).items():
        out = run(rounded)
        score = mean_psnr(out)
        rows[label] = (error(out), score - base)
        if artifact is not None and label == ALL_ROUNDED:
            name, outs = artifact
            file_score = mean_psnr(outs)
            rows[f"{name}: the int8 file, as the runtime runs it"] = (error(outs), file_score - base)
            rows[f"{name} against the simulation (error: their difference; dPSNR: file minus simulation)"] = (
                error_between(outs, out), file_score - score)
    if not shares:
        return rows, []
    ranges = qat.ranges(sim)
    alone = [(error(run(lambda n, m, one=name: n == one)), name, ranges.get(name))
             for name, m in parts if not isinstance(m, qat.QuantConv)]
    for _, m in parts:
        m.mode = "quantize"
    return rows, sorted(alone, reverse=True)


def psnr_of(mse: float) -> str:
    return f"{10 * np.log10(255.0**2 / mse):.2f} dB" if mse > 0 else "exact"


def report(args, source, n_crops, rows, alone, roles, prov) -> str:
    total = sum(e for e, _, _ in alone) or 1.0
    what = "whole held-out images" if args.whole else f"held-out crops of {args.crop_size} px (HR)"
    lines = [f"# int8 error budget: DRSAN-{args.variant} x{args.scale}", "", provenance.markdown(prov),
             f"Weights: {args.weights or 'shipped float'}; ranges {source}"
             + (f"; the direct path carried {args.stagger} times, staggered (--stagger {args.stagger})" if args.stagger != 1 else "")
             + (", the upsampler's output too (--stagger-upsampler)" if args.stagger != 1 and args.stagger_upsampler else "")
             + (", each DRAG's concatenation too (--stagger-concat)" if args.stagger != 1 and args.stagger_concat else "")
             + f". {n_crops} {what} "
             f"from `{provenance.relative(args.data)}` (--val-split {args.val_split}).",
             "Error: mean squared difference from the same weights in float, in 8-bit levels squared. "
             f"dPSNR: PSNR(Y) against HR on the same images, minus that of {args.reference or 'the shipped float model'}.",
             "", "| rounded | error | fidelity | dPSNR |", "|---|---|---|---|"]
    lines += [f"| {label} | {e:.4f} | {psnr_of(e)} | {d:+.3f} dB |" for label, (e, d) in rows.items()]
    if not alone:
        return "\n".join(lines + ["", "Per-tensor shares: run on crops (without --whole)."]) + "\n"
    lines += ["", f"One activation at a time (everything else in float), summed: {total:.4f}. Shares of that sum:",
              "", "| part of the network | share |", "|---|---|"]
    by_role: dict[str, float] = {}
    for e, name, _ in alone:
        by_role[roles.get(name, "other")] = by_role.get(roles.get(name, "other"), 0.0) + e
    lines += [f"| {role} | {100 * e / total:.1f}% |" for role, e in sorted(by_role.items(), key=lambda kv: -kv[1])]
    lines += ["", "The output image's error alone is its rounding to 8-bit levels, which every saved output gets, the "
              "float model's too: it costs no dPSNR."]
    lines += ["", f"The {args.top} costliest tensors:", "", "| tensor | part | range | error alone | share |",
              "|---|---|---|---|---|"]
    for e, name, rng in alone[: args.top]:
        shown = "fixed grid" if rng is None else f"[{rng[0]:.3f}, {rng[1]:.3f}]"
        lines.append(f"| {name} | {roles.get(name, 'other')} | {shown} | {e:.4f} | {100 * e / total:.1f}% |")
    return "\n".join(lines) + "\n"


def as_json(rows, alone, roles, prov) -> dict:
    return {"provenance": prov,
            "rows": {label: {"error": e, "dpsnr_db": d} for label, (e, d) in rows.items()},
            "tensors": [{"name": name, "part": roles.get(name, "other"), "range": rng, "error_alone": e}
                        for e, name, rng in alone]}


def reference_model(args):
    from ..core.checkpoint import load_checkpoint, resolve_weights

    model, _ = load_checkpoint(resolve_weights(args.reference, args.variant, args.scale), args.variant, args.scale)
    return model.eval()


def main(argv=None):
    args = parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    pairs, inputs = held_out_pairs(args)
    sim, source = simulation(args, inputs)
    roles = tensor_roles(sim)
    artifact = None
    if args.artifact is not None:
        artifact = (args.artifact.name, artifact_outputs(args.artifact, pairs, inputs, args.scale, args.threads))
    rows, alone = budget(sim, reference_model(args), pairs, inputs, roles, args.scale, shares=not args.whole,
                         artifact=artifact)
    prov = provenance.header(argv)
    text = report(args, source, len(pairs), rows, alone, roles, prov)
    print(text, end="")
    data = json.dumps(as_json(rows, alone, roles, prov), indent=1) + "\n"
    for path, content in ((args.out, text), (args.json, data)):
        if path:
            with atomic_path(path) as tmp:
                tmp.write_text(content)
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
