"""`python -m study.bank list | du | prune`: the bank of reference models, the base-model checkpoints.

A study keeps its original and retrained models under `<storage path>/models` (a run of
`trainables.run` under the local cache, `~/.cache/gli-study/models`), one file per content key
(`trainables.base_models.bank_key`: the data, the split's membership, the kind, the architecture, the
training recipe and the seed), and every stage, study and audit that needs the same model reads that
file instead of training it again; a file that fails its digest is trained again. A base model's run in
MLflow names its entry (tag `bank_key`) and exports list the entries behind their seeds (`bank_keys`),
so that a paper can release exactly those checkpoints.

  list    every entry: kind, seed, split, size, the compute it cost, age and whether it verifies
  du      totals per data set and kind (sizes and recorded training times; reads no weights, so it finds
          unreadable files but not altered ones: `list` verifies)
  prune   remove entries by data set, kind, age, or those that fail to verify (and leftover
          temporary files of writes that died, never those of writes in progress); prints what it would
          remove unless given --yes
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import json
import os
import re
import sys
import time
from pathlib import Path

NAME = re.compile(r"^(?P<dataset>.+)-(?P<kind>original|retrain)-s(?P<seed>\d+)-(?P<digest>[0-9a-f]{16})\.pt$")
# A write's temporary file (`trainables.base_models.write_checkpoint`): <entry>.<host>.<pid>.tmp; older
# versions wrote <entry>.<pid>.tmp, on the host that prunes as far as can be told.
TEMP = re.compile(r"^(?P<entry>.+?\.pt)\.(?:(?P<host>.+)\.)?(?P<pid>\d+)\.tmp$")


def bank_folder(args: argparse.Namespace) -> Path:
    """The folder of checkpoint files the arguments name: --models-dir, --storage-path's, a study's, or the local
    cache's. A study's `models_dir` keeps its files in a `models` folder of its own (`checkpoint_path`): either
    level may be given."""
    if args.models_dir:
        folder = Path(args.models_dir).expanduser().resolve()
    elif args.storage_path:
        folder = Path(args.storage_path).expanduser().resolve() / "models"
    elif args.experiment:
        from analysis.results import open_study
        from trainables.records import SETTINGS_PARAM

        _, params, _ = open_study(args.experiment, args.tracking_uri)
        folder = Path(params[SETTINGS_PARAM]["models_dir"])
    else:
        from trainables.data.cache import default_cache_dir

        folder = default_cache_dir()
    inner = folder / "models"
    return inner if inner.is_dir() and not list(folder.glob("*.pt")) else folder


def entries(folder: Path, verify: bool = True) -> list[dict]:
    """One row per checkpoint (name order), each read and verified against its digest; without `verify` only its
    recorded training time and key are read (memory-mapped, no weights hashed: `du` of a bank of large models)."""
    import torch

    from trainables.base_models import CheckpointError, read_checkpoint

    def unverified(path: Path) -> dict:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:  # a truncated zip and the like, as read_checkpoint says
            raise CheckpointError(f"unreadable ({type(exc).__name__})") from None
        if not isinstance(state, dict) or "seconds" not in state:
            raise CheckpointError("not a base-model checkpoint")
        return state

    rows = []
    for path in sorted(folder.glob("*.pt")):
        match = NAME.match(path.name)
        stat = path.stat()
        row = {"name": path.name, "dataset": match["dataset"] if match else "?",
               "kind": match["kind"] if match else "?", "seed": int(match["seed"]) if match else -1,
               "bytes": stat.st_size, "age_days": (time.time() - stat.st_mtime) / 86400, "seconds": float("nan"),
               "split": "", "status": "ok"}
        try:
            state = read_checkpoint(path) if verify else unverified(path)
            row["seconds"] = float(state["seconds"])
            key = json.loads(state["key"]) if isinstance(state.get("key"), str) else {}
            row["split"] = key.get("split", "")
        except CheckpointError as exc:
            row["status"] = f"broken: {exc}"
        rows.append(row)
    return rows


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _claim(path: Path) -> int | None:
    """An open descriptor of `path` holding its lock when it is the temporary file of a write that died, else
    None. A writer holds an exclusive lock on its file from creation to rename, and the lock goes with its
    process, so a lock taken here means no write is in progress (on any host that shares the file system's
    locks; however slow the write). A file whose writer names this host and still runs is also left: one not
    yet locked (just created), or one on a file system without locks. Keep the descriptor open until the file
    is removed: a writer that creates the same name meanwhile waits for the lock, then starts again."""
    from trainables.base_models import writer_host

    match = TEMP.match(path.name)
    if match is None:
        return None
    if (match["host"] or writer_host()) == writer_host() and _alive(int(match["pid"])):
        return None
    try:
        fd = os.open(path, os.O_RDWR)  # NFS takes an exclusive lock only on a file open for writing
    except OSError:  # gone since the listing, or not ours to remove
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN) or match["host"] not in (None, writer_host()):
            os.close(fd)  # a write in progress; or without locks, another host's, whose process cannot be seen
            return None
    return fd


def _leftovers(folder: Path, remove: bool = False) -> list[Path]:
    """Temporary files of writes that died (a writer killed between save and rename), never those of writes in
    progress (`_claim`); removed with `remove`."""
    found = []
    for path in sorted(folder.glob("*.pt.*.tmp")):
        if (fd := _claim(path)) is None:
            continue
        try:
            if remove:
                path.unlink(missing_ok=True)
            found.append(path)
        finally:
            os.close(fd)
    return found


def _list(rows: list[dict]) -> str:
    lines = [f"{'entry':<60} {'kind':<8} {'seed':>4} {'split':<16} {'MB':>7} {'train s':>8} {'age d':>6}  status"]
    for r in rows:
        lines.append(f"{r['name']:<60} {r['kind']:<8} {r['seed']:>4} {r['split'] or '-':<16} "
                     f"{r['bytes'] / 1e6:>7.2f} {r['seconds']:>8.1f} {r['age_days']:>6.1f}  {r['status']}")
    return "\n".join(lines)


def _du(rows: list[dict]) -> str:
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["kind"]), []).append(r)
    lines = [f"{'data set':<16} {'kind':<8} {'entries':>7} {'MB':>9} {'compute h':>10} {'broken':>6}"]
    for (dataset, kind), group in sorted(groups.items()):
        seconds = sum(r["seconds"] for r in group if r["status"] == "ok")
        lines.append(f"{dataset:<16} {kind:<8} {len(group):>7} {sum(r['bytes'] for r in group) / 1e6:>9.2f} "
                     f"{seconds / 3600:>10.3f} {sum(r['status'] != 'ok' for r in group):>6}")
    total = sum(r["bytes"] for r in rows) / 1e6
    compute = sum(r["seconds"] for r in rows if r["status"] == "ok") / 3600
    lines.append(f"{'all':<16} {'':<8} {len(rows):>7} {total:>9.2f} {compute:>10.3f} "
                 f"{sum(r['status'] != 'ok' for r in rows):>6}")
    return "\n".join(lines)


def select(rows: list[dict], args: argparse.Namespace) -> list[dict]:
    """The entries `prune` removes: all filters given must match; --broken alone selects the broken ones."""
    chosen = []
    for r in rows:
        if args.dataset and r["dataset"] != args.dataset:
            continue
        if args.kind and r["kind"] != args.kind:
            continue
        if args.older_than is not None and r["age_days"] <= args.older_than:
            continue
        if args.broken and r["status"] == "ok":
            continue
        chosen.append(r)
    return chosen


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m study.bank", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[10:]))
    p.add_argument("command", choices=["list", "du", "prune"])
    where = p.add_mutually_exclusive_group()
    where.add_argument("--storage-path", help="a study's storage path (its bank is <storage path>/models)")
    where.add_argument("--models-dir", help="the bank's folder itself")
    where.add_argument("--experiment", help="a study's MLflow experiment: its bank")
    p.add_argument("--tracking-uri", help="with --experiment (default sqlite:///./results/<experiment>/mlflow.db)")
    p.add_argument("--dataset", help="prune: only this data set's entries")
    p.add_argument("--kind", choices=["original", "retrain"], help="prune: only this kind")
    p.add_argument("--older-than", type=float, metavar="DAYS", help="prune: only entries last written before")
    p.add_argument("--broken", action="store_true", help="prune: only entries that fail to verify (and leftovers)")
    p.add_argument("--yes", action="store_true", help="prune: remove them (without it: say what would go)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        folder = bank_folder(args)
    except Exception as exc:  # a study that cannot be opened: one line
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not folder.is_dir():
        print(f"error: no bank at {folder}", file=sys.stderr)
        return 2
    rows = entries(folder, verify=args.command != "du")  # du sums sizes and recorded times; list and prune verify
    print(f"bank: {folder}")
    if args.command == "list":
        print(_list(rows))
    elif args.command == "du":
        print(_du(rows))
    else:
        if not (args.dataset or args.kind or args.older_than is not None or args.broken):
            print("error: prune needs a filter (--dataset, --kind, --older-than or --broken)", file=sys.stderr)
            return 2
        chosen = select(rows, args)
        leftovers = _leftovers(folder, remove=args.yes) if args.broken else []
        for r in chosen:
            print(f"{'removing' if args.yes else 'would remove'} {r['name']} ({r['status']})")
        for path in leftovers:
            print(f"{'removed' if args.yes else 'would remove'} {path.name} (a write that died)")
        if args.yes:
            for r in chosen:
                (folder / r["name"]).unlink(missing_ok=True)
        freed = sum(r["bytes"] for r in chosen) / 1e6
        print(f"{len(chosen) + len(leftovers)} file(s), {freed:.2f} MB {'removed' if args.yes else 'to remove (--yes)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
