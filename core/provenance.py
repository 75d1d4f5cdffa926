"""Where a report came from: the command, the commit, the machine and the date (standard library only).

Every report the eval tools write starts with these lines, so that a number read
later can be traced and, above all, compared only with numbers from a like
machine: int8 speed depends on CPU features (x86: AVX2, AVX-512, VNNI; ARM:
dotprod, i8mm) more than on the core count.
"""
from __future__ import annotations

import datetime
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# /proc/cpuinfo flag -> the name reports print. VNNI comes in an AVX-512 and an AVX (VEX) form.
X86_FEATURES = {"avx2": "AVX2", "avx512f": "AVX-512", "avx512_vnni": "AVX-512 VNNI", "avx_vnni": "AVX-VNNI",
                "amx_int8": "AMX-INT8"}
ARM_FEATURES = {"asimddp": "dotprod", "i8mm": "i8mm"}
# macOS reports ARM features through sysctl instead of /proc/cpuinfo.
MAC_FEATURES = {"hw.optional.arm.FEAT_DotProd": "dotprod", "hw.optional.arm.FEAT_I8MM": "i8mm"}


def relative(path) -> str:
    """path relative to the repository root when it lies inside the repository or beside it
    (../data), else as given: a report must not carry one machine's absolute paths."""
    text = str(path)
    try:
        full = Path(text).resolve()
    except OSError:
        return text
    if full.is_relative_to(REPO):
        return str(full.relative_to(REPO))
    if full.is_relative_to(REPO.parent):
        return os.path.relpath(full, REPO)
    return text


def command(argv=None) -> str:
    """The command line as a user would type it from the repository root, paths inside the repo made relative."""
    argv = list(sys.argv if argv is None else argv)
    if argv and argv[0].endswith(".py"):
        argv[0] = relative(argv[0])
    args = [a if a.startswith("-") or os.sep not in a else relative(a) for a in argv[1:]]
    return shlex.join(["python", *argv[:1], *args])


def _git(*args) -> str | None:
    try:
        proc = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def commit() -> str:
    """Short hash of HEAD, '+dirty' when tracked files differ from it; 'unknown' outside a git checkout."""
    head = _git("rev-parse", "--short", "HEAD")
    if head is None:
        return "unknown"
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return head + ("+dirty" if dirty else "")


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (Linux); empty elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def _sysctl(name: str) -> str | None:
    try:
        proc = subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def usable_cores() -> int:
    """The CPUs this process may run on (its affinity mask on Linux); 0 when unknown."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:      # not on Linux
        return os.cpu_count() or 0


def cpu() -> dict:
    """CPU model, usable cores and the int8-relevant instruction set features present."""
    info = _cpuinfo()
    flags = set((info.get("flags") or info.get("Features") or "").split())
    if flags:
        table = ARM_FEATURES if "Features" in info else X86_FEATURES
        features = [name for flag, name in table.items() if flag in flags]
    elif platform.system() == "Darwin":
        features = [name for key, name in MAC_FEATURES.items() if _sysctl(key) == "1"]
    else:
        features = []
    model = (info.get("model name") or info.get("Model") or info.get("Hardware")
             or (_sysctl("machdep.cpu.brand_string") if platform.system() == "Darwin" else None)
             or platform.processor() or platform.machine())
    return {"model": model, "cores": usable_cores(), "arch": platform.machine(), "features": features}


def machine() -> str:
    """One line: CPU model, cores, architecture, OS and the int8-relevant features, e.g.
    'AMD EPYC, 2 cores, x86_64, Linux; AVX2 (no AVX-512, no VNNI)'."""
    c = cpu()
    line = f"{c['model']}, {c['cores']} cores, {c['arch']}, {platform.system()}"
    if c["arch"].lower() in ("x86_64", "amd64", "i386", "i686"):
        missing = [n for n in ("AVX2", "AVX-512") if n not in c["features"]]
        if not any("VNNI" in f for f in c["features"]):
            missing.append("VNNI")
    elif c["arch"].lower() in ("arm64", "aarch64"):
        missing = [n for n in ARM_FEATURES.values() if n not in c["features"]]
    else:
        missing = []
    have = ", ".join(c["features"]) or "none of the int8 features"
    return line + f"; {have}" + (f" (no {', no '.join(missing)})" if missing else "")


def header(argv=None) -> dict:
    """command, commit, machine, date: the provenance of a report written now."""
    return {"command": command(argv), "commit": commit(), "machine": machine(),
            "date": datetime.date.today().isoformat()}


def markdown(prov: dict) -> str:
    """The header as Markdown lines for the top of a report."""
    return "\n".join([f"Command: `{prov['command']}`  ", f"Commit: {prov['commit']}; date: {prov['date']}  ",
                      f"Machine: {prov['machine']}", ""])


def text(prov: dict) -> str:
    """The header as '# '-prefixed lines for the top of a plain-text report."""
    return "\n".join(f"# {k}: {prov[k]}" for k in ("command", "commit", "machine", "date"))


if __name__ == "__main__":
    print(text(header()))
