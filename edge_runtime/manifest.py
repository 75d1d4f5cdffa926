"""List the artifacts a converters' --out folder holds, from its manifest.json.

    python edge_runtime/manifest.py artifacts/32s_x4 [--md reports/artifacts_32s_x4.md]

The manifest itself (its schema, reading, writing and validation) is defined in
edge_runtime/contract.py; the names below are kept for code that imports them from here.
"""
from __future__ import annotations

if __name__ == "__main__" and not __package__:   # run by path, e.g. python edge_runtime/manifest.py
    import importlib

    __package__ = "drsan_kit.edge_runtime"   # so that the relative imports below resolve (PEP 366)
    importlib.import_module(__package__)

from pathlib import Path

from .contract import (MANIFEST_NAME, ArtifactEntry, Manifest, ManifestError,  # noqa: F401
                       ModelInfo, artifact_entry, format_tile, read_manifest, sha256, update_manifest)


def markdown_table(folder) -> str:
    """The artifacts of a folder as a Markdown table (file, precision, size, the converter's check)."""
    manifest = read_manifest(folder)
    if manifest is None:
        raise ManifestError(f"no {MANIFEST_NAME} in {folder}")
    m = manifest.model
    lines = [f"DRSAN-{m.variant} x{m.scale}, checkpoint {Path(m.checkpoint).name}", "",
             "| artifact | precision | tile | size | PSNR vs FP32 PyTorch (worst crop) | max abs error | check |",
             "|---|---|---|---|---|---|---|"]
    for a in manifest.artifacts:
        c = a.check
        tile = format_tile(a.tile) if a.tile else "dynamic"
        how = "FP16 emulation (estimate)" if c.get("estimate") else "run"
        psnr_cell = f"{c['psnr_vs_reference_db']:.1f} dB" if c.get("psnr_vs_reference_db") is not None else "-"
        err = f"{c['max_abs_error']:.5f}" if c.get("max_abs_error") is not None else "-"
        size = f"{a.size_bytes / 1e6:.2f} MB" if a.size_bytes is not None else "-"
        how_quantized = a.quantization and a.quantization + (f", {a.stagger_tag}" if a.stagger_tag else "")
        precision = f"{a.precision} ({how_quantized})" if how_quantized else a.precision
        lines.append(f"| {a.file} | {precision} | {tile} | {size} | {psnr_cell} | {err} | {how} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    import argparse
    import sys

    from ..core import provenance
    from ..core.atomic import atomic_path

    ap = argparse.ArgumentParser(description="Print the artifacts described by a folder's manifest.json.")
    ap.add_argument("folder", help="a converters' --out folder")
    ap.add_argument("--md", type=Path, default=None,
                    help="also write the table to this Markdown file, headed by the command, commit, machine and date")
    args = ap.parse_args(argv)
    try:
        table = markdown_table(args.folder)
    except ManifestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(table)
    if args.md:
        try:
            with atomic_path(args.md) as tmp:
                tmp.write_text(provenance.markdown(provenance.header(argv)) + "\n" + table)
        except OSError as exc:
            print(f"error: cannot write {args.md} ({exc.strerror or exc})", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
