"""The manifest that the converters write beside their artifacts (plain JSON, no torch).

    <out>/manifest.json = {"model": {variant, scale, checkpoint, ...},
                           "artifacts": [{"file": "drsan_32s_x4_int8.tflite", "format": "tflite",
                                          "precision": "int8", "tile": [h, w], "sha256": ..., "check": {...}}, ...]}

The runtime and the drift harness read it before guessing anything from shapes.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from drsan_kit.core.atomic import atomic_path

MANIFEST_NAME = "manifest.json"


def sha256(path) -> str:
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:   # an .mlpackage is a folder: hash its files in a stable order
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def read_manifest(folder) -> dict | None:
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: unreadable manifest ({exc})") from None


def artifact_entry(artifact) -> tuple[dict, dict] | None:
    """(model section, artifact entry) for an artifact file, from the manifest beside it, or None."""
    artifact = Path(artifact)
    manifest = read_manifest(artifact.parent)
    if manifest is None:
        return None
    for entry in manifest.get("artifacts", []):
        if entry.get("file") == artifact.name:
            return manifest.get("model", {}), entry
    return None


def update_manifest(folder, model: dict, entries: list[dict]) -> Path:
    """Merge entries (by file name) into folder/manifest.json, written atomically."""
    folder = Path(folder)
    manifest = read_manifest(folder) or {}
    if manifest.get("model") and (manifest["model"].get("variant"), manifest["model"].get("scale")) != (
            model.get("variant"), model.get("scale")):
        manifest = {}   # a different model: its old entries would describe other weights
    manifest["model"] = model
    kept = [e for e in manifest.get("artifacts", []) if e["file"] not in {n["file"] for n in entries}]
    manifest["artifacts"] = sorted(kept + entries, key=lambda e: e["file"])
    with atomic_path(folder / MANIFEST_NAME) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2))
    return folder / MANIFEST_NAME


def markdown_table(folder) -> str:
    """The artifacts of a folder as a Markdown table (file, precision, size, the converter's check)."""
    manifest = read_manifest(folder)
    if manifest is None:
        raise SystemExit(f"error: no {MANIFEST_NAME} in {folder}")
    m = manifest["model"]
    lines = [f"DRSAN-{m['variant']} x{m['scale']}, checkpoint {Path(m['checkpoint']).name}", "",
             "| artifact | precision | tile | size | PSNR vs FP32 PyTorch (worst crop) | max abs error | check |",
             "|---|---|---|---|---|---|---|"]
    for a in manifest["artifacts"]:
        c = a["check"]
        tile = "x".join(map(str, a["tile"])) if a.get("tile") else "dynamic"
        how = "FP16 emulation (estimate)" if c.get("estimate") else "run"
        psnr_cell = f"{c['psnr_vs_reference_db']:.1f} dB" if "psnr_vs_reference_db" in c else "-"
        err = f"{c['max_abs_error']:.5f}" if "max_abs_error" in c else "-"
        lines.append(f"| {a['file']} | {a['precision']} | {tile} | {a['size_bytes'] / 1e6:.2f} MB | {psnr_cell} | "
                     f"{err} | {how} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Print the artifacts described by a folder's manifest.json.")
    ap.add_argument("folder", help="a converters' --out folder")
    print(markdown_table(ap.parse_args().folder))
