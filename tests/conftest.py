from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
BENCH = SHARED / "benchmarks"


@pytest.fixture
def bench_dir():
    if not (BENCH / "Set5" / "HR").is_dir():
        pytest.skip("../shared/benchmarks not present")
    return BENCH
