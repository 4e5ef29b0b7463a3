"""`python -m trainables.data audit --dataset NAME --data-dir DIR`: check a data folder before a long run.

Prints one JSON object (sizes per split, identity overlap per pair of train / test /
unseen, byte-identical pairs across splits) and exits non-zero with one clear line on
bad input or identity leakage.
"""

from __future__ import annotations

import argparse
import json
import sys

from . import DATASETS, DataConfig, DataError, load_dataset
from .audit import leakage_message


DEFAULTS = DataConfig()  # each setting's default, declared once (DataConfig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainables.data", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    audit = sub.add_parser("audit", help="audit a data folder's splits and print a JSON report")
    audit.add_argument("--dataset", default=DEFAULTS.dataset, choices=DATASETS, help="which data set layout to read")
    audit.add_argument("--data-dir", help="the data folder (mufac / mucac)")
    audit.add_argument("--forget-count", type=int, help="forget-set size (digits, mufac: first N train rows)")
    audit.add_argument("--attribute", default=DEFAULTS.attribute, help="mucac-binary: the attribute to predict")
    audit.add_argument("--test-max-id", type=int, default=DEFAULTS.test_max_id, help="mucac: identities below this are test")
    audit.add_argument("--retain-max-id", type=int, default=DEFAULTS.retain_max_id, help="mucac: identities below this (and >= test) are retain")
    audit.add_argument("--forget-max-id", type=int, default=DEFAULTS.forget_max_id, help="mucac: identities below this (and >= retain) are forget; the rest unseen")
    audit.add_argument("--image-size", type=int, default=DEFAULTS.image_size, help="decode size for face images")
    audit.add_argument("--drop-duplicates", action="store_true", help="drop byte-identical copies across splits")
    audit.add_argument("--cache-dir", help="decoded-image cache folder (default $GLI_CACHE_DIR or ~/.cache/gli-study)")
    args = parser.parse_args(argv)
    cfg = DataConfig(
        dataset=args.dataset, data_dir=args.data_dir, forget_count=args.forget_count, attribute=args.attribute,
        test_max_id=args.test_max_id, retain_max_id=args.retain_max_id, forget_max_id=args.forget_max_id,
        image_size=args.image_size, drop_duplicates=args.drop_duplicates, cache_dir=args.cache_dir,
    )
    try:
        ds = load_dataset(cfg, for_training=False)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(ds.audit, indent=2))
    message = leakage_message(ds.audit["identity_overlap"], args.data_dir or args.dataset)
    if message:
        print(f"error: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
