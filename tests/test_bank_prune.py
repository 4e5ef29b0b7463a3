"""`python -m study.bank prune --broken` removes the temporary files of checkpoint writes that died, never those of
writes in progress (issue 36): a writer holds a lock on its file until the rename, and names its host and process."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from study.bank import main as bank
from trainables.base_models import read_checkpoint, state_digest, write_checkpoint, writer_host

# A real writer (`write_checkpoint`) that stops half-way through its file and waits for a line on stdin.
PAUSED_WRITER = textwrap.dedent("""
    import io, sys
    from pathlib import Path
    import torch
    import trainables.base_models as bm

    save = torch.save

    def paused(obj, f):
        buf = io.BytesIO()
        save(obj, buf)
        data = buf.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        print("half", flush=True)
        sys.stdin.readline()
        f.write(data[len(data) // 2:])

    torch.save = paused
    sd = {"w": torch.arange(4096, dtype=torch.float32)}
    bm.write_checkpoint(Path(sys.argv[1]), {"state_dict": sd, "seconds": 1.0, "digest": bm.state_digest(sd), "key": "{}"})
""")

ENTRY = "digits-{}-s0-0123456789abcdef.pt"


def _paused_writer(path: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", PAUSED_WRITER, str(path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])
    assert proc.stdout.readline().strip() == "half"  # its temporary file is half written, and locked
    return proc


def _temps(folder: Path, entry: str) -> list[Path]:
    return sorted(folder.glob(f"{entry}.*.tmp"))


def test_prune_leaves_a_write_in_progress_and_removes_a_dead_ones(tmp_path, capsys):
    folder = tmp_path / "models"
    live, dead = folder / ENTRY.format("original"), folder / ENTRY.format("retrain")
    writer = _paused_writer(live)
    killed = _paused_writer(dead)
    killed.send_signal(signal.SIGKILL)  # a writer killed between its save and its rename
    killed.wait()
    try:
        [live_tmp], [dead_tmp] = _temps(folder, live.name), _temps(folder, dead.name)
        assert live_tmp.name == f"{live.name}.{writer_host()}.{writer.pid}.tmp"
        size = live_tmp.stat().st_size
        assert size > 0

        assert bank(["prune", "--broken", "--models-dir", str(folder)]) == 0  # a dry run names only the dead one
        out = capsys.readouterr().out
        assert f"would remove {dead_tmp.name}" in out and live_tmp.name not in out
        assert bank(["prune", "--broken", "--yes", "--models-dir", str(folder)]) == 0
        assert not dead_tmp.exists()
        assert live_tmp.exists() and live_tmp.stat().st_size == size  # the write in progress is left whole
    finally:
        writer.communicate("go\n", timeout=60)
    assert writer.returncode == 0
    assert read_checkpoint(live)["seconds"] == 1.0 and not _temps(folder, live.name)  # it finished and renamed


def test_the_lock_decides_not_the_process_number(tmp_path, capsys):
    """A locked file is a write in progress whatever its name says (another host, another PID namespace); an
    unlocked one whose writer is this host's live process is one not yet locked; an unlocked one of another
    host, or of a process gone from this one, is a leftover."""
    folder = tmp_path / "models"
    folder.mkdir()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead_pid = int(gone.stdout)
    locked = folder / f"{ENTRY.format('original')}.otherhost.{dead_pid}.tmp"
    just_created = folder / f"{ENTRY.format('original')}.{writer_host()}.{os.getpid()}.tmp"
    remote_leftover = folder / f"{ENTRY.format('retrain')}.otherhost.{dead_pid}.tmp"
    old_leftover = folder / f"{ENTRY.format('retrain')}.{dead_pid}.tmp"  # named by an earlier version
    for path in (locked, just_created, remote_leftover, old_leftover):
        path.write_bytes(b"half")
    with open(locked, "rb+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # held by "another host's" writer (a separate open file: a separate lock)
        assert bank(["prune", "--broken", "--yes", "--models-dir", str(folder)]) == 0
        assert sorted(p.name for p in folder.iterdir()) == sorted([locked.name, just_created.name])
    assert "removed" in capsys.readouterr().out


def test_a_writer_whose_file_was_pruned_before_its_lock_starts_again(tmp_path, monkeypatch):
    """A prune may find the file between its creation and its lock: the writer sees the file at the name is not
    the one it locked and writes a new one, never renaming nothing."""
    path = tmp_path / "models" / ENTRY.format("original")
    flock, calls = fcntl.flock, []

    def pruned_first(fd, op):
        calls.append(op)
        if len(calls) == 1:
            os.unlink(path.with_name(f"{path.name}.{writer_host()}.{os.getpid()}.tmp"))  # the prune's removal
        flock(fd, op)

    monkeypatch.setattr(fcntl, "flock", pruned_first)
    sd = {"w": torch.ones(3)}
    write_checkpoint(path, {"state_dict": sd, "seconds": 2.0, "digest": state_digest(sd), "key": "{}"})
    assert len(calls) == 2 and read_checkpoint(path)["seconds"] == 2.0
    assert [p.name for p in path.parent.iterdir()] == [path.name]
