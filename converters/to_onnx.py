"""Export a DRSAN checkpoint to ONNX, checked with ONNX Runtime against PyTorch.

    python converters/to_onnx.py --variant 32s --scale 4 [--tile 192x336] [--dynamic] [--out artifacts]
"""
from __future__ import annotations

if __name__ == "__main__" and not __package__:   # run by path, e.g. python converters/to_onnx.py
    import importlib

    __package__ = "drsan_kit.converters"   # so that the relative imports below resolve (PEP 366)
    importlib.import_module(__package__)

import argparse
import shutil
import tempfile
from pathlib import Path

from . import common
from .export import deploy_model, export_onnx


def convert_onnx(model, tile, out: Path, name: str, dynamic: bool, crops, reference) -> dict:
    """Export, run with ONNX Runtime on the check crops, enforce the fp32 tolerance; returns the manifest record."""
    from ..edge_runtime.backends import open_backend

    with tempfile.TemporaryDirectory(prefix="drsan-onnx-", dir=out) as tmp:
        staged = export_onnx(deploy_model(model), Path(tmp) / name, tile, dynamic=dynamic)
        check = common.check_artifact(open_backend("onnx", staged, scale=model.scale), crops, reference, "fp32", name)
        path = Path(shutil.move(str(staged), out / name))   # only a checked file reaches --out
    return common.artifact_record(path, "onnx", "fp32", tile, dynamic, check, opset=17,
                                  runtime="onnxruntime CPU")


def main(argv=None):
    ap = argparse.ArgumentParser(description="Export DRSAN to ONNX (DCR depth-to-space, output clamped), "
                                             "checked with ONNX Runtime against PyTorch.")
    common.add_model_args(ap)
    ap.add_argument("--dynamic", action="store_true", help="dynamic height/width instead of the fixed --tile")
    args = ap.parse_args(argv)
    model, blob, weights = common.load_reference(args)
    out = common.output_folder(args, blob, weights)
    crops, desc = common.check_crops(args.tile, args.check_images)
    reference = common.reference_outputs(model, crops)
    suffix = "dynamic" if args.dynamic else f"{args.tile[0]}x{args.tile[1]}"
    name = f"drsan_{args.variant}_x{args.scale}_{suffix}.onnx"
    print(f"exporting DRSAN-{args.variant} x{args.scale} from {common.shown_path(weights)}")
    rec = convert_onnx(model, args.tile, out, name, args.dynamic, crops, reference)
    rec.check["images_from"] = desc
    common.write_manifest(out, args, blob, weights, [rec])
    print(f"wrote {out / name}")


if __name__ == "__main__":
    common.run_cli(main)
