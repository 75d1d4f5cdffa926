"""Accuracy drift of deployed artifacts against the FP32 PyTorch model they came from.

    python eval/drift.py --variant 32s --scale 4 --artifacts artifacts/ [--data DIR] [--out reports/drift_32s_x4]
                         [--max-drift 0.5] [--save-reference ref.npz | --reference ref.npz]

For every artifact (ONNX, TFLite fp32/fp16/int8/int16x8, CoreML) and every set, each
image runs through the edge runtime (the same tiler and backends users run) and
through the reference, and the report gives:
  - PSNR/SSIM against HR (paper protocol) for artifact and reference, dPSNR, dSSIM;
  - fidelity: PSNR and max abs error of the artifact's output against the reference's;
  - tiling drift (reference run tiled like the artifact vs whole frame) separately
    from quantization drift (artifact vs the reference tiled the same way);
  - the worst images, with an error heatmap of the worst one per artifact.
Reports: drift.json, drift.md and drift.png in --out. CoreML off macOS is an
ESTIMATE from FP16 emulation of the PyTorch model, and labelled so. An artifact that
cannot be opened here is skipped, and listed as such in the output and the reports.

Exit status: 0 done (and, with --max-drift, every artifact within it); 2 an error (bad
input, nothing measured); 3 some artifact loses more than --max-drift; 4 --max-drift
given and some artifact was skipped, so the gate cannot vouch for it.
"""
from __future__ import annotations

if __name__ == "__main__" and not __package__:   # run by path, e.g. python eval/drift.py
    import importlib

    __package__ = "drsan_kit.eval"   # so that the relative imports below resolve (PEP 366)
    importlib.import_module(__package__)

import argparse
import contextlib
import json
import platform
import sys
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..core import jsontext
from ..core.datasets import benchmark_root, find_sets, load_pairs
from ..core.metrics import CONVENTIONS, psnr, psnr_y, rgb_to_y, ssim_y
from ..core.variants import SCALES, VARIANTS
from ..edge_runtime.artifact import open_artifact
from ..edge_runtime.contract import (DEFAULT_MARGIN, PRECISIONS, WHOLE_FRAME, Window, abilities, argtype,
                                     artifact_extensions, artifact_kinds, backend_spec, choose_window, kind_of_path,
                                     parse_margin, parse_threads, parse_window, read_manifest, sha256)
from ..edge_runtime.upscaler import Upscaler
from ..edge_runtime.verify import verify_artifact
from ..core import provenance
from ..core.atomic import unwritable
from . import cli
from .benchmark import DATA_HELP
from .cli import EvalError

GATE_EXCEEDED = 3      # some artifact loses more than --max-drift
GATE_UNMEASURED = 4    # some artifact was skipped: the gate cannot vouch for what it did not run


@dataclass
class Artifact:
    path: Path
    kind: str
    precision: str
    tile: tuple[int, int] | None
    estimate: bool = False
    pad: bool = True        # small images padded up to the tile (False: the backend resizes instead)
    label: str = ""
    rows: list = field(default_factory=list)


def discover(folder: Path, scale: int) -> tuple[list[Artifact], list[dict]]:
    """(artifacts in folder, {"file", "reason"} of its model files that are not measured).

    With a manifest the artifacts are its entries, and a model file it does not list is not measured
    (nothing says what it is): a gate must not pass as if it were. Without one, every file with a
    model extension (the backend registry's) is an artifact."""
    manifest = read_manifest(folder)
    if manifest and manifest.model.scale != scale:
        raise EvalError(f"{folder}/manifest.json describes x{manifest.model.scale} artifacts, not x{scale}")
    models = [(p, kind) for p in sorted(folder.iterdir()) if (kind := kind_of_path(p)) in artifact_kinds()]
    if manifest:
        found = [Artifact(folder / e.file, e.format, e.precision, e.tile) for e in manifest.artifacts]
        unlisted = [{"file": p.name, "reason": "not listed in manifest.json, so not measured"}
                    for p, _ in models if not manifest.entry(p.name)]
    else:
        found, unlisted = [Artifact(p, kind, "unknown", None) for p, kind in models], []
    if not found:
        raise EvalError(f"no artifacts ({artifact_extensions()}) in {folder}")
    return found, unlisted


class Reference:
    """FP32 PyTorch outputs (uint8, protocol-rounded), whole-frame and tiled, cached and savable.

    On CUDA the reference runs in strict FP32: PyTorch's default lets convolutions use TF32, whose
    rounding moves some output pixels by a level, while the fp32 artifacts agree with a CPU reference
    far more closely; the fidelity columns would measure the reference's own noise."""

    def __init__(self, args, store: dict | None):
        self.loaded = store is not None
        self.store = store or {}
        self.args = args
        self._backend = None
        self.precision = None

    @property
    def backend(self):
        if self._backend is None:
            try:
                from ..edge_runtime.backends import open_backend
            except ImportError:
                raise EvalError("computing the reference needs torch; pass --reference FILE") from None
            self._backend = open_backend("torch", self.args.weights, variant=self.args.variant, scale=self.args.scale)
            self.precision = self.strict_fp32(self._backend.device)
        return self._backend

    @staticmethod
    def strict_fp32(device) -> str:
        """Keep matrix products and convolutions in full FP32 on `device`; return the precision in words."""
        import torch

        if torch.device(device).type != "cuda":
            return "FP32"
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        return f"strict FP32, TF32 off ({torch.cuda.get_device_name(device)})"

    @property
    def device(self) -> str:
        """Where and in what precision the reference ran (for a loaded one: as saved)."""
        if "__device__" in self.store:
            return self.store["__device__"]
        return f"{self.backend.name}, {self.precision}" if self._backend or not self.store else "unknown"

    def get(self, key: str, lr: np.ndarray, tile, margin: int, pad: bool = True) -> np.ndarray:
        how = "full" if tile is None else f"{tile[0]}x{tile[1]}m{margin}" + ("" if pad else "nopad")
        full_key = f"{key}|{how}"
        if full_key not in self.store and self.args.reference is not None:
            # computing it here would mix two references in one report, labelled as the loaded one
            raise EvalError(f"{self.args.reference} has no reference output for {key} ({how}): it was saved from "
                            "other images, --tile or --margin; save it again with these")
        if full_key not in self.store:
            # tile like the artifact does, padding (or not) included
            up = Upscaler(self.backend, margin=margin, window=Window(tile, pad and tile is not None))
            self.store[full_key] = up.frame(lr, out_dtype=np.uint8)
        out = self.store[full_key]
        want = (lr.shape[0] * self.args.scale, lr.shape[1] * self.args.scale, 3)
        if out.shape != want:   # a saved reference made from other images of the same names
            raise EvalError(f"the reference outputs for {key} are {out.shape[1]}x{out.shape[0]}, not "
                            f"{want[1]}x{want[0]}: --reference was saved from other data")
        return out

    def save(self, path: Path):
        from ..core.atomic import atomic_path

        meta = {"variant": self.args.variant, "scale": self.args.scale, "device": self.device,
                "weights": str(self.backend.weights), "weights_sha256": self.weights_sha256()}
        arrays = {k: v for k, v in self.store.items() if not k.startswith("__")}
        # through a file object: given a name, numpy would add ".npz" to one that lacks it
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, __meta__=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays)

    def weights_sha256(self) -> str | None:
        """SHA-256 of the checkpoint the reference outputs come from; None where unknown (a reference
        saved before it was recorded, or none computed yet)."""
        if self.loaded or "__weights_sha256__" in self.store:
            return self.store.get("__weights_sha256__")
        weights = getattr(self._backend, "weights", None)
        if not weights:
            return None
        self.store["__weights_sha256__"] = sha256(weights)   # hashed once: the report and the saved file ask too
        return self.store["__weights_sha256__"]

    @staticmethod
    def load(path: Path, variant: str, scale: int) -> dict:
        if not path.is_file():
            raise EvalError(f"reference outputs {path} not found" + (" (a folder)" if path.is_dir() else ""))
        try:
            meta, store = Reference._read(path)
            saved, device = (meta["variant"], meta["scale"]), str(meta["device"])
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
            why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise EvalError(f"{path} is not a reference saved with --save-reference ({why})") from None
        if saved != (variant, scale):
            raise EvalError(f"{path} holds DRSAN-{saved[0]} x{saved[1]} outputs, not {variant} x{scale}")
        store["__device__"] = device + " (loaded from " + str(path) + ")"
        if isinstance(meta.get("weights_sha256"), str):
            store["__weights_sha256__"] = meta["weights_sha256"]
        return store

    @staticmethod
    def _read(path: Path) -> tuple[dict, dict]:
        """(meta, arrays) of a saved reference; decoding errors propagate for load() to word."""
        z = np.load(path)   # allow_pickle stays off: a reference file is data, never code
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise ValueError("a single array, not an .npz archive")
        with z:
            meta = jsontext.loads(bytes(z["__meta__"]).decode())
            return meta, {k: z[k] for k in z.files if k != "__meta__"}


def open_for_drift(art: Artifact, args, reference: Reference) -> Upscaler:
    """An Upscaler that runs the artifact as the runtime does (edge_runtime.artifact.open_artifact); CoreML
    off macOS becomes the FP16-emulated PyTorch model at the artifact's tile (an estimate, labelled so)."""
    if art.kind == "coreml" and not backend_spec("coreml").runs_here():
        from ..core.fp16 import fp16_emulated
        from ..edge_runtime.backends.torch import TorchBackend

        verify_artifact(art.path, art.kind, args.scale)
        backend = TorchBackend(model=fp16_emulated(reference.backend.model), input_hw=art.tile)
        window = choose_window(backend.input_hw, abilities(backend).resizable, args.tile, WHOLE_FRAME)
        art.estimate = True
        art.label = f"{art.path.name} (ESTIMATE: FP16 emulation)"
    else:
        # dynamic-shape artifacts run whole images by default, as the paper evaluates
        opened = open_artifact(art.path, art.kind, scale=args.scale, window=args.tile, threads=args.threads,
                               flexible_default=WHOLE_FRAME)
        backend, window = opened.backend, opened.window
        art.label = art.path.name
    art.tile, art.pad = window.tile, window.pad
    return Upscaler(backend, margin=args.margin, window=window)


def open_all(artifacts: list[Artifact], args, reference: Reference) -> tuple[list, list[dict]]:
    """([(artifact, Upscaler)], [{"file", "reason"}] of those that cannot run here); EvalError if none can."""
    ups, skipped = [], []
    for art in artifacts:
        try:
            ups.append((art, open_for_drift(art, args, reference)))
        except Exception as exc:   # one unusable artifact should not hide the others
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            skipped.append({"file": art.path.name, "reason": reason})
            print(f"skipped {art.path.name}: {reason}", file=sys.stderr)
    if not ups:
        raise EvalError(f"none of the {len(artifacts)} artifact(s) in {args.artifacts} could be opened")
    return ups, skipped


def y_error(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(rgb_to_y(a) - rgb_to_y(b))


def summarize(art: Artifact, set_name: str) -> dict:
    rows = [r for r in art.rows if r["set"] == set_name]
    mean = lambda k: float(np.mean([r[k] for r in rows]))
    return {
        "images": len(rows),
        "psnr": mean("psnr"), "ssim": mean("ssim"), "ref_psnr": mean("ref_psnr"), "ref_ssim": mean("ref_ssim"),
        "dpsnr": mean("psnr") - mean("ref_psnr"), "dssim": mean("ssim") - mean("ref_ssim"),
        "tiling_dpsnr": mean("ref_tiled_psnr") - mean("ref_psnr"),
        "quant_dpsnr": mean("psnr") - mean("ref_tiled_psnr"),
        "fidelity_psnr": mean("fidelity_psnr"), "quant_fidelity_psnr": mean("quant_fidelity_psnr"),
        "max_abs_error": int(max(r["max_abs"] for r in rows)),
        "worst": sorted(rows, key=lambda r: r["psnr"] - r["ref_psnr"])[:3],
    }


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="Report the PSNR/SSIM drift of every artifact in a folder against "
                                             "the FP32 PyTorch reference, per benchmark set.")
    ap.add_argument("--variant", default="32s", choices=list(VARIANTS), help="model variant (default 32s)")
    ap.add_argument("--scale", type=int, default=4, choices=SCALES, help="upscaling factor (default 4)")
    ap.add_argument("--weights", default=None, help="reference checkpoint (default: the shipped one)")
    ap.add_argument("--artifacts", type=Path, required=True, help="folder of artifacts (with manifest.json)")
    ap.add_argument("--data", default=None, help=DATA_HELP)
    ap.add_argument("--sets", default=None, help="comma-separated subset of sets, e.g. Set5,Set14")
    ap.add_argument("--tile", type=argtype(parse_window), default=None,
                    help="LR window HxW, or 0 for whole images, as run.py's --tile: for dynamic-shape artifacts "
                         "(default: whole image) and TFLite ones (default: the model's own tile)")
    ap.add_argument("--exclude", default="", help="comma-separated precisions to leave out, e.g. int16x8")
    ap.add_argument("--margin", type=argtype(parse_margin), default=DEFAULT_MARGIN,
                    help=f"tile context margin, as in the runtime (default {DEFAULT_MARGIN})")
    ap.add_argument("--convention", choices=CONVENTIONS, default="authors", help="Y convention (default authors)")
    ap.add_argument("--threads", type=argtype(parse_threads), default=0,
                    help="CPU threads for each model, 0 for every core this process may use (default 0)")
    ap.add_argument("--out", type=Path, default=Path("reports/drift"), help="report folder (default reports/drift)")
    ap.add_argument("--save-reference", type=Path, default=None, help="save the reference outputs to FILE (.npz)")
    ap.add_argument("--reference", type=Path, default=None,
                    help="use reference outputs saved with --save-reference (e.g. made on a GPU workstation)")
    ap.add_argument("--max-drift", type=argtype(parse_limit), default=None, metavar="DB",
                    help=f"a release gate: exit with status {GATE_EXCEEDED} if any artifact loses more than DB dB "
                         f"PSNR on any set, and with status {GATE_UNMEASURED} if none does but some artifact was "
                         "skipped (damaged, unreadable, of an unknown format or unable to run here)")
    return ap.parse_args(argv)


def parse_limit(text: str) -> float:
    """--max-drift: a finite number of dB, 0 or more."""
    try:
        db = float(text)
    except ValueError:
        raise ValueError(f"expected a number of dB, not {text!r}") from None
    if not 0 <= db < float("inf"):
        raise ValueError(f"must be 0 dB or more, not {text}")
    return db


def main(argv=None) -> int:
    args = parse_args(argv)
    check_targets(args)
    artifacts, unlisted = select_artifacts(args)
    for s in unlisted:
        print(f"skipped {s['file']}: {s['reason']}", file=sys.stderr)
    store = Reference.load(args.reference, args.variant, args.scale) if args.reference else None
    reference = Reference(args, store)
    work, empty = load_sets(args)
    ups, skipped = open_all(artifacts, args, reference)
    skipped += unlisted
    heat = measure(work, ups, reference, args)
    other = other_model(args, reference)
    if other:
        print(f"note: {other}", file=sys.stderr)
    if args.save_reference:
        with writing(args.save_reference):
            reference.save(args.save_reference)
        print(f"reference outputs saved to {args.save_reference}", file=sys.stderr)
    report = build_report(args, ups, [s for s, _ in work], reference, skipped, empty, other)
    with writing(args.out):
        write_reports(args.out, report, heat)
    print(markdown(report))
    return gate(report, args.max_drift)


def other_model(args, reference: Reference) -> str | None:
    """Why the reference is not the model the artifacts were made from (by their manifest's checkpoint
    SHA-256), or None when it is or one of the two is unknown. Not an error: measuring artifacts against
    another model is how a broken conversion shows, but the drift then includes the models' difference."""
    manifest = read_manifest(args.artifacts)
    made_from = manifest.model.extra.get("checkpoint_sha256") if manifest else None
    ours = reference.weights_sha256()
    if not (isinstance(made_from, str) and ours) or made_from == ours:
        return None
    name = Path(manifest.model.checkpoint).name or "its checkpoint"
    return (f"the reference model (checkpoint SHA-256 {ours[:12]}) is not the one the artifacts were made from "
            f"({name}, {made_from[:12]}): the drift includes the difference between the two models")


def check_targets(args):
    """EvalError now, not after the evaluation, if a report or the saved reference could not be written."""
    writable(args.out, "--out", folder=True)
    if args.save_reference:
        writable(args.save_reference, "--save-reference", folder=False)
        if args.reference and args.reference.exists() and args.save_reference.exists() \
                and args.save_reference.samefile(args.reference):
            raise EvalError(f"--save-reference {args.save_reference} would overwrite the --reference input; "
                            "save to another file")


def writable(path: Path, flag: str, folder: bool):
    """EvalError unless `path` (a folder, or a file) can be made or replaced; nothing is created."""
    if why := unwritable(path, folder):
        raise EvalError(f"{flag} {path}: {why}")


@contextlib.contextmanager
def writing(path: Path):
    """A failed write (disk full, permissions changed meanwhile) becomes EvalError naming `path`."""
    try:
        yield
    except OSError as exc:
        raise EvalError(f"cannot write {path} ({exc.strerror or exc})") from None


def select_artifacts(args) -> tuple[list[Artifact], list[dict]]:
    """(the artifacts to measure, the model files not measured; see discover)."""
    if not args.artifacts.is_dir():
        raise EvalError(f"artifact folder {args.artifacts} not found")
    excluded = set(filter(None, args.exclude.split(",")))
    if unknown := sorted(excluded - set(PRECISIONS)):   # a typo would exclude nothing without a word
        raise EvalError(f"--exclude {', '.join(unknown)}: not a precision (known: {', '.join(PRECISIONS)})")
    found, unlisted = discover(args.artifacts, args.scale)
    artifacts = [a for a in found if a.precision not in excluded]
    if not artifacts:
        raise EvalError(f"--exclude {args.exclude} leaves no artifact of {args.artifacts}")
    return artifacts, unlisted


def load_sets(args) -> tuple[list[tuple[Path, list]], list[str]]:
    """([(set folder, its image pairs)] of the sets with images, [names of the empty ones]).

    An empty set is left out with a note, as long as another has images: it has nothing to average."""
    data = benchmark_root(args.data)
    sets = find_sets(data)
    if args.sets:
        wanted = list(filter(None, args.sets.split(",")))
        if not wanted:
            raise EvalError(f"--sets {args.sets!r} names no set")
        missing = [w for w in wanted if w not in {s.name for s in sets}]
        if missing:
            raise EvalError(f"no set {', '.join(missing)} under {data} (found: {', '.join(s.name for s in sets)})")
        sets = [s for s in sets if s.name in wanted]
    work, empty = [], []
    for s in sets:
        try:
            pairs = load_pairs(s, args.scale)
        except ValueError as exc:   # an unreadable image, or an LR image that does not fit its HR one
            raise EvalError(f"set {s.name}: {str(exc).splitlines()[0]}") from None
        if pairs:
            work.append((s, pairs))
        else:
            empty.append(s.name)
    if len(empty) == 1 and not work:
        raise EvalError(f"set {empty[0]} has no images ({sets[0] / 'HR'} is empty); nothing to measure")
    if not work:
        raise EvalError(f"sets {', '.join(empty)} have no images (empty HR folders under {data}); nothing to measure")
    for name in empty:
        print(f"note: set {name} has no images; left out", file=sys.stderr)
    return work, empty


def measure(work, ups, reference: Reference, args) -> dict:
    """Run every image through every artifact and the reference; rows go to each artifact, and the
    worst image's error map per artifact is returned as {label: (dPSNR, key, map)}."""
    total = sum(len(p) for _, p in work) * len(ups)
    heat = {}
    with tqdm(total=total, desc="drift", unit="run", disable=None) as bar:
        for set_dir, pairs in work:
            for pair in pairs:
                key = f"{set_dir.name}/{pair.name}"
                ref = reference.get(key, pair.lr, None, args.margin)
                ref_psnr = psnr_y(ref, pair.hr, args.scale, args.convention, pair.gray)
                ref_ssim = ssim_y(ref, pair.hr, args.scale, args.convention, pair.gray)
                for art, up in ups:
                    out = up.frame(pair.lr, out_dtype=np.uint8)
                    ref_t = reference.get(key, pair.lr, art.tile, args.margin, art.pad)
                    row = {"set": set_dir.name, "image": pair.name,
                           "psnr": psnr_y(out, pair.hr, args.scale, args.convention, pair.gray),
                           "ssim": ssim_y(out, pair.hr, args.scale, args.convention, pair.gray),
                           "ref_psnr": ref_psnr, "ref_ssim": ref_ssim,
                           "ref_tiled_psnr": psnr_y(ref_t, pair.hr, args.scale, args.convention, pair.gray),
                           "fidelity_psnr": min(psnr(out, ref), 99.0),
                           "quant_fidelity_psnr": min(psnr(out, ref_t), 99.0),
                           "max_abs": int(np.abs(out.astype(int) - ref.astype(int)).max())}
                    art.rows.append(row)
                    d = row["psnr"] - row["ref_psnr"]
                    if art.label not in heat or d < heat[art.label][0]:
                        heat[art.label] = (d, key, y_error(out, ref))
                    bar.update(1)
    return heat


def build_report(args, ups, sets, reference, skipped=(), empty_sets=(), other_model_note=None) -> dict:
    return {
        "variant": args.variant, "scale": args.scale, "convention": args.convention, "margin": args.margin,
        "reference": {"model": "FP32 PyTorch", "device": reference.device, "weights": str(args.weights or "shipped"),
                      "weights_sha256": reference.weights_sha256(), "not_the_artifacts_model": other_model_note},
        "machine": f"{platform.machine()}, {platform.system()}, Python {platform.python_version()}",
        "artifacts": [{"file": a.path.name, "label": a.label, "kind": a.kind, "precision": a.precision,
                       "tile": list(a.tile) if a.tile else None, "estimate": a.estimate,
                       "sets": {s.name: summarize(a, s.name) for s in sets}} for a, _ in ups],
        "skipped": list(skipped),          # not measured: a gate cannot pass on them
        "empty_sets": list(empty_sets),
    }


def markdown(report: dict) -> str:
    lines = [f"# Drift report: DRSAN-{report['variant']} x{report['scale']}", ""]
    if "provenance" in report:
        lines.append(provenance.markdown(report["provenance"]))
    lines += [f"Reference: {report['reference']['model']} on {report['reference']['device']}; "
              f"Y convention {report['convention']}; tile margin {report['margin']} px; machine {report['machine']}.",
              "dPSNR = artifact - reference (whole frame); tiling = reference tiled like the artifact - whole frame; "
              "quant = artifact - reference tiled the same way. Fidelity: PSNR (RGB, 8-bit) of the artifact's output "
              "against the whole-frame reference, and against the reference tiled the same way (quant fidelity); "
              "max abs: the largest difference in levels from the whole-frame reference.", ""]
    if other := report["reference"].get("not_the_artifacts_model"):
        lines += [f"**Note: {other}.**", ""]
    sets = list(report["artifacts"][0]["sets"]) if report["artifacts"] else []
    for s in sets:
        lines += [f"## {s}", "",
                  "| artifact | tile | PSNR | SSIM | ref PSNR | dPSNR | dSSIM | tiling dPSNR | quant dPSNR | fidelity dB | quant fidelity dB | max abs |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for a in report["artifacts"]:
            e = a["sets"][s]
            tile = "x".join(map(str, a["tile"])) if a["tile"] else "full"
            lines.append(f"| {a['label']} | {tile} | {e['psnr']:.3f} | {e['ssim']:.4f} | {e['ref_psnr']:.3f} | "
                         f"{e['dpsnr']:+.3f} | {e['dssim']:+.4f} | {e['tiling_dpsnr']:+.3f} | {e['quant_dpsnr']:+.3f} | "
                         f"{e['fidelity_psnr']:.2f} | {e['quant_fidelity_psnr']:.2f} | {e['max_abs_error']} |")
        lines.append("")
    lines += ["## Worst images (by dPSNR)", ""]
    for a in report["artifacts"]:
        worst = sorted((w for e in a["sets"].values() for w in e["worst"]), key=lambda w: w["psnr"] - w["ref_psnr"])[:3]
        lines.append(f"- {a['label']}: " + ", ".join(
            f"{w['set']}/{w['image']} {w['psnr'] - w['ref_psnr']:+.3f} dB" for w in worst))
    return "\n".join(lines + not_measured(report)) + "\n"


def not_measured(report: dict) -> list[str]:
    """Markdown lines for the artifacts that were skipped and the sets without images, if any."""
    lines = []
    if report.get("skipped"):
        lines += ["", "## Skipped artifacts (NOT measured)", ""]
        lines += [f"- {s['file']}: {s['reason']}" for s in report["skipped"]]
    if report.get("empty_sets"):
        lines += ["", f"Sets without images, left out: {', '.join(report['empty_sets'])}."]
    return lines


def write_reports(out: Path, report: dict, heat: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..core.atomic import atomic_path

    report.setdefault("provenance", provenance.header())
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "drift.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2))
    with atomic_path(out / "drift.md") as tmp:
        tmp.write_text(markdown(report))
    arts = report["artifacts"]
    sets = list(arts[0]["sets"])
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / len(sets)
    for ax, key, title in ((axes[0], "dpsnr", "dPSNR vs FP32 reference (dB)"),
                           (axes[1], "tiling_dpsnr", "of which tiling (dB)")):
        for i, s in enumerate(sets):
            ax.bar(np.arange(len(arts)) + i * width, [a["sets"][s][key] for a in arts], width, label=s)
        ax.set_xticks(np.arange(len(arts)) + width * (len(sets) - 1) / 2)
        ax.set_xticklabels([a["file"].replace(".mlpackage", "\n(CoreML est.)" if a["estimate"] else "")
                            for a in arts], rotation=30, ha="right", fontsize=7)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"DRSAN-{report['variant']} x{report['scale']}: drift of each artifact per set")
    fig.tight_layout()
    with atomic_path(out / "drift.png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    (out / "heatmaps").mkdir(exist_ok=True)
    for label, (d, key, err) in heat.items():
        fig, ax = plt.subplots(figsize=(6, 5))
        im = ax.imshow(err, cmap="inferno", vmin=0, vmax=max(1.0, float(err.max())))
        fig.colorbar(im, ax=ax, label="|Y artifact - Y reference| (levels)")
        ax.set_title(f"{label}\n{key}: dPSNR {d:+.3f} dB", fontsize=8)
        ax.axis("off")
        name = label.split(" ")[0].replace(".", "_") + ".png"
        with atomic_path(out / "heatmaps" / name) as tmp:
            fig.savefig(tmp, dpi=90, format="png")
        plt.close(fig)


def gate(report: dict, max_drift: float | None) -> int:
    """The exit status: 0, GATE_EXCEEDED, or GATE_UNMEASURED (see the module's docstring)."""
    if max_drift is None:
        return 0
    bad = [(a["label"], s, e["dpsnr"]) for a in report["artifacts"] for s, e in a["sets"].items()
           if e["dpsnr"] < -max_drift]
    for label, s, d in bad:
        print(f"DRIFT GATE FAILED: {label} on {s}: {d:+.3f} dB (limit -{max_drift} dB)", file=sys.stderr)
    skipped = report.get("skipped", [])
    for s in skipped:
        print(f"DRIFT GATE FAILED: {s['file']} was skipped, not measured ({s['reason']})", file=sys.stderr)
    if bad:
        return GATE_EXCEEDED
    if skipped:
        return GATE_UNMEASURED
    print(f"drift gate passed: every artifact within {max_drift} dB on every set", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
