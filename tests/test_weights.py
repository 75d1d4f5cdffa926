"""The shipped checkpoints are the ones the README's benchmark table describes.

Re-measures Set5 for each shipped 32s checkpoint and compares it with the committed
report that the README quotes, so new weights cannot land with stale numbers.
"""
import json
import re

import pytest

from conftest import REPO, run_tool

SCALES = (2, 3, 4)


def reported_psnr(scale: int, set_name: str) -> float:
    text = (REPO / "reports" / f"benchmark_32s_x{scale}.txt").read_text()
    match = re.search(rf"^{set_name}\s+\d+\s+([\d.]+)\s", text, re.MULTILINE)
    assert match, f"reports/benchmark_32s_x{scale}.txt has no {set_name} row"
    return float(match.group(1))


@pytest.mark.parametrize("scale", SCALES)
def test_shipped_checkpoint_reproduces_its_reported_set5_psnr(bench_dir, tmp_path, scale):
    (tmp_path / "Set5").symlink_to(bench_dir / "Set5")
    proc = run_tool("eval/benchmark.py", "--variant", "32s", "--scale", scale, "--data", tmp_path,
                    "--no-bicubic", "--json")
    measured = json.loads(proc.stdout)["sets"]["Set5"]["psnr"]
    reported = reported_psnr(scale, "Set5")
    # the report prints two decimals
    assert abs(measured - reported) <= 0.0051, (measured, reported)
