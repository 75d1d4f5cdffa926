"""DRSAN checkpoint -> CoreML ML Program (.mlpackage), FP16 by default.

    python converters/to_coreml.py --variant 32s [--scale 4] [--tile 192x336] [--precision fp16|fp32]
                                   [--weights-int8] [--out artifacts]

The input "lr" is RGB in [0, 1], shape (1, 3, h, w), with a fixed default shape
(--tile) and enumerated extra shapes (--extra-tiles); enumerated rather than
ranged shapes keep the Neural Engine available. The output "sr" is clamped to [0, 1].

Prediction needs macOS. There the converter runs the model and checks it against
PyTorch; on Linux it checks the program's structure and estimates the FP16 error
by running the PyTorch model with FP16 rounding, and says that it did.
"""
from __future__ import annotations

if __name__ == "__main__" and not __package__:   # run by path, e.g. python converters/to_coreml.py
    import importlib

    __package__ = "drsan_kit.converters"   # so that the relative imports below resolve (PEP 366)
    importlib.import_module(__package__)

import argparse
import copy
import platform
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np

from . import common
from ..edge_runtime.backends import open_backend
from ..edge_runtime.contract import argtype, parse_artifact_tile, parse_tiles

LICENSE = "MIT (code and weights of drsan-edge-kit)"


def convert(model, tiles: list[tuple[int, int]], precision: str):
    import coremltools as ct
    import torch

    m = copy.deepcopy(model).eval()
    m.clamp = True   # CoreML has a native pixel_shuffle (CRD), so the upsampler stays as trained
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(m, torch.rand(1, 3, *tiles[0]))
    shape = (ct.EnumeratedShapes(shapes=[(1, 3, h, w) for h, w in tiles], default=(1, 3, *tiles[0]))
             if len(tiles) > 1 else (1, 3, *tiles[0]))
    return ct.convert(
        traced, convert_to="mlprogram", inputs=[ct.TensorType(name="lr", shape=shape, dtype=np.float32)],
        outputs=[ct.TensorType(name="sr", dtype=np.float32)],
        compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32,
        minimum_deployment_target=ct.target.iOS16)


def compress_weights_int8(mlmodel):
    import coremltools.optimize.coreml as cto

    config = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(mode="linear_symmetric"))
    return cto.linear_quantize_weights(mlmodel, config=config)


def describe(mlmodel, args, blob, tiles, label: str):
    meta = blob.get("meta", {})
    val = meta.get("validation", {})
    mlmodel.author = "drsan-edge-kit"
    mlmodel.license = LICENSE
    mlmodel.version = "1"
    mlmodel.short_description = (f"DRSAN-{args.variant} x{args.scale} single-image super-resolution ({label}). "
                                 f"Input lr: RGB in [0, 1], 1x3xHxW; output sr: RGB in [0, 1], 1x3x(H*{args.scale})x(W*{args.scale}).")
    mlmodel.input_description["lr"] = "low-resolution RGB tile, values in [0, 1], NCHW"
    mlmodel.output_description["sr"] = f"super-resolved RGB tile (x{args.scale}), values in [0, 1], NCHW"
    training = meta.get("training", {})
    mlmodel.user_defined_metadata.update({
        "variant": args.variant, "scale": str(args.scale), "tile": f"{tiles[0][0]}x{tiles[0][1]}",
        "enumerated_tiles": ",".join(f"{h}x{w}" for h, w in tiles), "precision": label,
        "training_data": str(training.get("data", "unknown")),
        "training_iterations": str(training.get("iterations", "unknown")),
        "checkpoint_psnr": (f"{val['psnr_y']:.3f} dB on {Path(str(val.get('set'))).name} (Y, x{args.scale})"
                            if val.get("psnr_y") else "unknown"),
    })


def structural_check(path: Path, tiles, scale: int) -> dict:
    """On any OS: the saved program loads as a spec with the expected I/O and shapes."""
    import coremltools as ct

    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    if spec.WhichOneof("Type") != "mlProgram":
        raise common.ConversionError(f"{path.name}: not an ML Program")
    ins, outs = spec.description.input, spec.description.output
    if [i.name for i in ins] != ["lr"] or [o.name for o in outs] != ["sr"]:
        raise common.ConversionError(f"{path.name}: unexpected inputs/outputs {[i.name for i in ins]} -> {[o.name for o in outs]}")
    arr = ins[0].type.multiArrayType
    default = list(arr.shape)
    enumerated = [list(s.shape) for s in arr.enumeratedShapes.shapes]
    if default != [1, 3, *tiles[0]]:
        raise common.ConversionError(f"{path.name}: default input shape {default}, expected {[1, 3, *tiles[0]]}")
    missing = [t for t in tiles if len(tiles) > 1 and [1, 3, *t] not in enumerated]
    if missing:
        raise common.ConversionError(f"{path.name}: enumerated shapes lack {missing}")
    ops = sum(len(b.operations) for f in spec.mlProgram.functions.values() for b in f.block_specializations.values())
    return {"default_shape": default, "enumerated_shapes": enumerated or [default], "program_ops": ops}


def emulated_backend(model, precision: str):
    """Off macOS: the PyTorch model with FP16 rounding of weights and layer outputs stands in for CoreML."""
    from ..core.fp16 import fp16_emulated
    from ..edge_runtime.backends import open_backend

    return open_backend("torch", model=fp16_emulated(model) if precision == "fp16" else model)


def main(argv=None):
    ap = argparse.ArgumentParser(description="Convert DRSAN to a CoreML ML Program (.mlpackage), checked "
                                             "against PyTorch (by prediction on macOS, by FP16 emulation elsewhere).")
    common.add_model_args(ap)
    ap.add_argument("--extra-tiles", type=argtype(lambda t: parse_tiles(t, parse_artifact_tile)),
                    default=[(128, 128), (256, 256)],
                    help="more input shapes HxW,HxW the model accepts besides --tile (default 128x128,256x256; "
                         "'' for the fixed tile only)")
    ap.add_argument("--precision", choices=["fp16", "fp32"], default="fp16", help="compute precision (default fp16)")
    ap.add_argument("--weights-int8", action="store_true", help="compress weights to int8 (coremltools.optimize)")
    args = ap.parse_args(argv)
    common.quiet_startup(args.verbose)
    model, blob, weights = common.load_reference(args)
    out = common.output_folder(args, blob, weights)
    tiles = [args.tile] + [t for t in args.extra_tiles if t != args.tile]
    crops, desc = common.check_crops(args.tile, args.check_images)
    reference = common.reference_outputs(model, crops)
    label = args.precision + ("_w8" if args.weights_int8 else "")
    name = f"drsan_{args.variant}_x{args.scale}_{args.tile[0]}x{args.tile[1]}_{label}.mlpackage"
    print(f"converting DRSAN-{args.variant} x{args.scale} from {common.shown_path(weights)} to CoreML ({label}), "
          f"shapes {', '.join(f'{h}x{w}' for h, w in tiles)}")
    try:
        with common.quiet(not args.verbose):   # coremltools' start-up warnings and progress bars
            mlmodel = convert(model, tiles, args.precision)
            if args.weights_int8:
                mlmodel = compress_weights_int8(mlmodel)
    except Exception as exc:   # coremltools raises many kinds; the user needs one line
        raise common.ConversionError(f"CoreML conversion failed: {str(exc).splitlines()[0][:300]}") from None
    describe(mlmodel, args, blob, tiles, label)
    with tempfile.TemporaryDirectory(prefix="drsan-coreml-", dir=out) as tmp:
        staged = Path(tmp) / name
        with common.quiet(not args.verbose):
            mlmodel.save(str(staged))
        structure = structural_check(staged, tiles, args.scale)
        print(f"  structure: ML Program, {structure['program_ops']} ops, input lr {structure['default_shape']}, "
              f"{len(structure['enumerated_shapes'])} shape(s)")
        if platform.system() == "Darwin":
            check = common.check_artifact(open_backend("coreml", staged, scale=args.scale), crops, reference, label,
                                          name, method="CoreML prediction on macOS vs FP32 PyTorch")
        elif args.precision == "fp32" and not args.weights_int8:
            check = {"method": "structural only (fp32 program; no prediction on this OS)", "estimate": True}
        else:
            print("  note: CoreML prediction needs macOS; estimating FP16 error with PyTorch FP16 emulation")
            method = ("ESTIMATE: PyTorch with FP16 rounding of weights and layer outputs (CoreML prediction needs "
                      "macOS)" + ("; int8 weight compression not emulated" if args.weights_int8 else ""))
            check = common.check_artifact(emulated_backend(model, args.precision), crops, reference, label, name,
                                          method=method, estimate=True)
        check["structure"] = structure
        check["images_from"] = desc
        final = out / name
        if final.exists():
            shutil.rmtree(final)
        shutil.move(str(staged), final)
    record = common.artifact_record(final, "coreml", label, args.tile, False, check,
                                    enumerated_tiles=[list(t) for t in tiles], minimum_target="iOS16/macOS13",
                                    tools=common.tool_versions("torch", "coremltools"))
    common.write_manifest(out, args, blob, weights, [record])
    print(f"wrote {final}")


if __name__ == "__main__":
    common.run_cli(main)
