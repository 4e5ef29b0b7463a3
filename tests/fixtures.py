"""Tiny data folders in the exact MUFAC and CelebA-HQ (MUCAC) layouts of SPEC section 3.

Real JPEG files, the real CSV and TXT formats (extra CSV columns included), small
enough for a 2-core CPU test run.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair "
    "Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup "
    "High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose "
    "Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat "
    "Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young"
).split()
assert CELEBA_ATTRIBUTES.index("Male") == 20 and CELEBA_ATTRIBUTES.index("Young") == 39


def write_jpeg(path: Path, rng: np.random.Generator, size: int = 24, label: int = 0) -> None:
    base = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    base[: size // 2, :, label % 3] = 40 * (label % 6)  # a label-dependent band, so the task is learnable
    Image.fromarray(base).save(path, format="JPEG", quality=90)


def make_mufac(
    root: Path,
    families: dict[str, range] | None = None,
    per_family: int = 4,
    seed: int = 0,
    duplicate: bool = True,
) -> Path:
    """A MUFAC folder. Train families F0001-F0012, test (val CSV) F0801-F0804, unseen (test CSV) F0851-F0854.

    With `duplicate`, one test image is a byte-identical copy of a train image (the
    public MUFAC's known defect).
    """
    rng = np.random.default_rng(seed)
    families = families or {"train": range(1, 13), "val": range(801, 805), "test": range(851, 855)}
    root.mkdir(parents=True, exist_ok=True)
    for csv_part, fams in families.items():
        folder = root / f"{csv_part}_images"
        folder.mkdir(exist_ok=True)
        rows = ["image_path,age_class,family_id,extra_note"]  # extra columns, ignored by the loader
        for fam in fams:
            for k in range(per_family):
                age = "abcdefgh"[(fam + k) % 8]
                name = f"F{fam:04d}_AGE_{age.upper()}_{20 + k}_{age}{k}.jpg"
                write_jpeg(folder / name, rng, label=(fam + k) % 8)
                rows.append(f"{name},{age},F{fam:04d},note {k}")
        (root / f"custom_{csv_part}_dataset.csv").write_text("\n".join(rows) + "\n")
    if duplicate:
        train_first = sorted((root / "train_images").iterdir())[5]
        val_first = sorted((root / "val_images").iterdir())[0]
        shutil.copyfile(train_first, val_first)
    return root


def make_mucac(root: Path, identities: int = 40, per_identity: int = 3, seed: int = 0) -> Path:
    """A CelebA-HQ folder: images 0.jpg..N.jpg, identity file, 40-attribute file with -1/1 values.

    Identity ids run 0..identities-1; tests use small thresholds (test < 10 <= retain < 20 <= forget < 30 <= unseen).
    """
    rng = np.random.default_rng(seed)
    images = root / "CelebA-HQ-img"
    images.mkdir(parents=True, exist_ok=True)
    id_lines, attr_lines = [], []
    n = identities * per_identity
    order = rng.permutation(n)  # identities interleaved across file numbers, as in CelebA-HQ
    for number in range(n):
        identity = int(order[number]) % identities
        values = rng.choice([-1, 1], size=len(CELEBA_ATTRIBUTES))
        write_jpeg(images / f"{number}.jpg", rng, label=int(values[20] > 0) * 3 + int(values[31] > 0))
        id_lines.append(f"{number}.jpg {identity}")
        attr_lines.append(f"{number}.jpg " + " ".join(str(int(v)) for v in values))
    (root / "CelebA-HQ-identity.txt").write_text("\n".join(id_lines) + "\n")
    (root / "CelebA-HQ-attribute.txt").write_text(
        f"{n}\n" + " ".join(CELEBA_ATTRIBUTES) + "\n" + "\n".join(attr_lines) + "\n"
    )
    return root


MUCAC_THRESHOLDS = {"test_max_id": 10, "retain_max_id": 20, "forget_max_id": 30}


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file (the MNIST format), gzip-compressed: magic (0, 0, ubyte, dims), big-endian sizes, bytes."""
    import gzip

    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def make_fashion(root: Path, train: int = 300, test: int = 100, seed: int = 0) -> Path:
    """The four Fashion-MNIST files with random 28x28 images and balanced labels."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", train), ("t10k", test)):
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return root


def make_folder(root: Path, people: int = 30, per_person: int = 2, columns: str = "path,label", seed: int = 0,
                fixed: bool = False) -> Path:
    """A labelled image folder: PNGs of a few sizes and a manifest.csv with the given columns; with `fixed`, the
    split and forget columns say every row's part (train, test or unseen by person; every fifth train person
    forgotten), else they are blank (drawn by the loader)."""
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = [columns]
    for person in range(people):
        for k in range(per_person):
            name = f"img/p{person:03d}_{k}.png"
            label = ["cat", "dog", "bird"][(person + k) % 3]
            Image.fromarray(rng.integers(0, 256, (20 + k, 24, 3), dtype=np.uint8)).save(root / name)
            split = ("train", "train", "train", "test", "unseen")[person % 5]
            values = {"path": name, "label": label, "identity": f"p{person:03d}",
                      "split": split if fixed else "",
                      "forget": ("1" if split == "train" and person % 5 == 0 and person % 2 == 0 else "0") if fixed else ""}
            rows.append(",".join(values[c] for c in columns.split(",")))
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root


class MlflowServer:
    """A real `mlflow server` on 127.0.0.1 with a SQLite backend in `folder`; stop() and start() again."""

    def __init__(self, folder: Path, port: int | None = None):
        import socket

        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        if port is None:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
        self.port, self.proc = port, None
        self.uri = f"http://127.0.0.1:{port}"

    def start(self, timeout: float = 90) -> "MlflowServer":
        import subprocess
        import sys
        import time
        import urllib.request

        log = open(self.folder / "server.log", "a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{self.folder / 'db.sqlite'}",
             "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                if urllib.request.urlopen(f"{self.uri}/health", timeout=2).status == 200:
                    return self
            except OSError:
                time.sleep(0.5)
            if self.proc.poll() is not None:
                break
        raise RuntimeError(f"mlflow server did not start: {(self.folder / 'server.log').read_text()[-2000:]}")

    def stop(self) -> None:
        import os
        import signal

        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the server and its workers
            try:
                self.proc.wait(timeout=20)
            except Exception:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.proc = None


class StoppingProxy:
    """An HTTP proxy in front of an `MlflowServer` that stops the server right after chosen requests.

    `stop_after(method, path, body)` is asked of every request; where it says yes, the proxy forwards the
    request, stops the server before it answers the client, answers, and starts the server again
    `down_s` later. Meanwhile every request finds the server gone and its connection dropped, as a
    client sees a stopped server. The outage thus falls exactly between that request and the next one
    (for a child run's create: before its first batch), which no timing from outside could promise.
    """

    def __init__(self, server: "MlflowServer", stop_after, down_s: float = 4.0):
        import http.client
        import http.server
        import threading

        self.server, self.stop_after, self.down_s = server, stop_after, down_s
        self.stops: list[str] = []
        lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _forward(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", proxy.server.port, timeout=120)
                    conn.request(self.command, self.path, body=body, headers=headers)
                    answer = conn.getresponse()
                    payload = answer.read()
                    conn.close()
                except OSError:  # the server is stopped: the client's connection drops, unanswered
                    self.close_connection = True
                    return
                with lock:
                    stop = proxy.stop_after(self.command, self.path, body)
                    if stop:
                        proxy.stops.append(self.path)
                        proxy.server.stop()
                        threading.Timer(proxy.down_s, proxy.server.start).start()
                self.send_response(answer.status)
                for key, value in answer.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.uri = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()


def study_journal(results):
    """(path, study key) of the Optuna journal of the study whose report `results` holds (named by its key)."""
    import yaml

    key = yaml.safe_load((Path(results) / "config.yaml").read_text())["study_key"]
    return Path(results) / f"optuna-{key}.journal", key
