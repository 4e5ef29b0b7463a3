"""The benchmarks' own promises that tests can check without timing anything."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_driver_benchmarks_stand_in_trial_never_imports_pytorch():
    """bench/driver.py runs dozens of stand-in workers on a small machine: none may load PyTorch."""
    code = ("import sys; import bench.standin; print('torch' in sys.modules, "
            "sorted(m for m in sys.modules if m.split('.')[0] in ('trainables', 'study')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False ['study', 'study.waits', 'trainables', 'trainables.bundle', 'trainables.records']"
