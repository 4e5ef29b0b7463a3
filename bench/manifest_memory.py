"""Peak memory and time of reading a large image-folder manifest.

    python bench/manifest_memory.py [--rows 200000]

Writes a folder of 2,000 tiny PNGs and a manifest of --rows rows (with an unused free-text
column) in a temporary folder, reads it with `trainables.data.folder.read_manifest` in a
fresh process, and prints one JSON line: rows, peak RSS above the imports (MB), seconds.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
MEASURE = """
import json, resource, sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
import trainables.data.folder as folder
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
records, _ = folder.read_manifest(Path({data!r}), 0)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base
print(json.dumps({{"rows": len(records), "peak_rss_mb": round(peak / 1e3), "seconds": round(time.perf_counter() - start, 1)}}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "img").mkdir()
        files = 2000
        for i in range(files):
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "img" / f"{i}.png")
        with open(root / "manifest.csv", "w") as f:
            f.write("path,label,identity,comment\n")
            for r in range(args.rows):
                f.write(f"img/{r % files}.png,{r % 3},p{r % files},free text the loader does not need {r}\n")
        out = subprocess.run([sys.executable, "-c", MEASURE.format(root=str(ROOT), data=str(root))],
                             capture_output=True, text=True, check=True)
        print(out.stdout.strip())


if __name__ == "__main__":
    main()
