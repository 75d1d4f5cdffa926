"""Report headers: command, commit, machine with its int8-relevant CPU features, date; repo-relative paths."""
import re

from conftest import REPO
from drsan_kit.core import provenance


def test_paths_inside_and_beside_the_repository_become_relative():
    assert provenance.relative(REPO / "weights" / "drsan_32s_x4.pt") == "weights/drsan_32s_x4.pt"
    assert provenance.relative(REPO.parent / "data" / "Set5") == "../data/Set5"
    assert provenance.relative("/no-such-root/x.png") == "/no-such-root/x.png"


def test_command_is_what_a_user_types_at_the_repository_root():
    argv = [str(REPO / "eval" / "drift.py"), "--artifacts", str(REPO / "artifacts" / "32s_x4"), "--scale", "4"]
    assert provenance.command(argv) == "python eval/drift.py --artifacts artifacts/32s_x4 --scale 4"


def test_header_fields():
    h = provenance.header(["eval/benchmark.py"])
    assert re.fullmatch(r"[0-9a-f]{4,40}(\+dirty)?|unknown", h["commit"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\d", h["date"])
    assert " cores, " in h["machine"]
    assert provenance.markdown(h).startswith("Command: `python eval/benchmark.py`")
    assert provenance.text(h).splitlines()[0] == "# command: python eval/benchmark.py"


def test_machine_line_names_present_and_missing_int8_features(monkeypatch):
    monkeypatch.setattr(provenance.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(provenance, "_cpuinfo", lambda: {"model name": "CPU A", "flags": "sse avx2 fma"})
    assert provenance.machine().endswith("; AVX2 (no AVX-512, no VNNI)")
    monkeypatch.setattr(provenance, "_cpuinfo",
                        lambda: {"model name": "CPU B", "flags": "avx2 avx512f avx512_vnni"})
    line = provenance.machine()
    assert line.startswith("CPU B, ") and line.endswith("; AVX2, AVX-512, AVX-512 VNNI")
    monkeypatch.setattr(provenance.platform, "machine", lambda: "aarch64")
    monkeypatch.setattr(provenance, "_cpuinfo", lambda: {"Features": "fp asimd asimddp"})
    assert provenance.machine().endswith("; dotprod (no i8mm)")


def test_report_writers_put_the_header_first():
    from drsan_kit.eval import drift, tiling

    prov = provenance.header(["eval/x.py", "--flag"])
    drift_md = drift.markdown({"provenance": prov, "variant": "32s", "scale": 4, "convention": "authors",
                               "margin": 8, "machine": "m", "artifacts": [],
                               "reference": {"model": "FP32 PyTorch", "device": "torch-cpu"}})
    tiling_md = tiling.markdown({"provenance": prov, "variant": "32s", "scale": 4, "margin": 8,
                                 "sets": {"Set5": {"96x96|tile": {"dpsnr": 0.0, "fidelity_psnr": 60.0}}},
                                 "seconds_per_720p_frame": {}})
    for md in (drift_md, tiling_md):
        assert md.splitlines()[2] == "Command: `python eval/x.py --flag`  "
        assert f"Machine: {prov['machine']}" in md
