"""The cost of encryption at rest (docs/encryption.md): a plain and an encrypted workspace side by side.

Measured in one run, on the same data and the same models, alternating plain and encrypted (the
median of ``--repeats`` runs is shown). CPU time is the figure to read on a busy, shared
machine: wall time there mostly measures the other processes; both are printed.

1. the cipher alone: AES-256-GCM envelope encrypt + decrypt of one message, and one re-wrap
   (the work key rotation does per blob), CPU time;
2. ingest of SMS texts (a CSV) and MNIST digits (PNG files), each into a fresh workspace: CPU
   per record and records/s;
3. in process: loading a model (every file read, decrypted, verified), and
   ``PredictionLog.record`` of 32 answers with their inputs, each input new (what the server's
   worker does per batch after the model ran: the part of serving encryption touches);
4. serving over HTTP: a real ``aifab serve`` subprocess per workspace, driven by
   ``--concurrency`` raw keep-alive connections sending single-instance requests, each a new
   input, every answer logged with its input: the server's CPU per request, requests/s, p50;
5. ``aifab key rotate`` of the encrypted serving workspace afterwards.

Data: ``sms_spam`` and ``mnist_t10k`` from ``--data`` (default /work/shared/datasets); the
models are a small TextCNN and SmallCNN trained once (2 epochs) in the plain workspace and
registered, file for file, in the encrypted one.

    .venv/bin/python benchmarks/encryption.py                  # full size: about 10 minutes
    .venv/bin/python benchmarks/encryption.py --texts 600 --images 300 --requests 300 --repeats 1
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import csv
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import httpx

AIFAB = str(Path(sys.executable).with_name("aifab"))
MODES = ("plain", "encrypted")
SPECS = {
    "sms": {
        "task": "text-classification",
        "dataset": "sms",
        "model": {"arch": "textcnn", "embed_dim": 64, "num_filters": 32, "max_length": 64},
        "train": {"epochs": 2, "device": "cpu", "amp": False, "early_stopping": None},
    },
    "digits": {
        "task": "image-classification",
        "dataset": "digits",
        "model": {"arch": "smallcnn", "image_size": 28},
        "train": {"epochs": 2, "device": "cpu", "amp": False, "early_stopping": None, "augment": {"enabled": False}},
    },
}


# -- data and workspaces --------------------------------------------------------------------


def write_data(data: Path, out: Path, *, texts: int, images: int) -> dict[str, Path]:
    """The first ``texts`` SMS messages as a CSV and the first ``images`` MNIST PNGs by class."""
    out.mkdir(parents=True, exist_ok=True)
    with open(data / "sms_spam" / "sms_spam.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))[:texts]
    sms = out / "sms.csv"
    with open(sms, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows((r["text"], r["label"]) for r in rows)
    mnist = data / "mnist_t10k"
    with open(mnist / "mnist_t10k.csv", encoding="utf-8", newline="") as f:
        entries = list(csv.DictReader(f))[:images]
    digits = out / "digits"
    for e in entries:
        (digits / e["label"]).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(mnist / e["image_path"], digits / e["label"] / Path(e["image_path"]).name)
    return {"sms": sms, "digits": digits}


def new_workspace(path: Path, mode: str, key_file: Path) -> Any:
    from aifab.pipeline.project import Workspace

    if mode == "encrypted":
        return Workspace.init(path, encrypt=True, key_file=key_file)
    return Workspace.init(path)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# -- 1. the cipher --------------------------------------------------------------------------


def cipher_rows(repeats: int) -> list[tuple[str, str, str]]:
    from aifab.security.crypto import EnvelopeCipher, MasterKey

    key, new = MasterKey.generate(), MasterKey.generate()
    cipher = EnvelopeCipher(key)
    def fastest(op: Callable[[], object], per_block: int) -> float:
        """CPU seconds per call (the fastest of many short blocks): on a busy, shared machine wall
        time would mostly measure the other processes."""
        best = float("inf")
        for _ in range(20 * repeats):
            started = time.process_time()
            for _ in range(per_block):
                op()
            best = min(best, (time.process_time() - started) / per_block)
        return best

    rows = []
    for size in (1 << 10, 64 << 10, 4 << 20):
        data = os.urandom(size)
        seconds = fastest(lambda: cipher.decrypt(cipher.encrypt(data, b"aad"), b"aad"), max(1, (256 << 10) // size))
        rows.append((f"encrypt + decrypt {size // 1024:,} KiB", f"{size / seconds / 1e6:,.0f} MB/s", f"{seconds * 1e6:,.1f} µs each"))
    sealed = cipher.encrypt(os.urandom(64 << 10), b"aad")
    rotating = EnvelopeCipher(new, previous=[key])
    seconds = fastest(lambda: rotating.rewrap(sealed), 50)
    rows.append(("re-wrap one envelope (64 KiB)", f"{1 / seconds:,.0f} /s", f"{seconds * 1e6:,.1f} µs each; the body is only copied"))
    return rows


# -- 2. ingest ------------------------------------------------------------------------------


def ratio_row(label: str, plain: float, enc: float, fmt: str) -> tuple[str, ...]:
    return (label, fmt.format(plain), fmt.format(enc), f"{enc / plain:.2f}")


def ingest_rows(root: Path, sources: dict[str, Path], key_file: Path, repeats: int) -> list[tuple[str, ...]]:
    """Wall records/s and CPU ms per record (this process, all its threads) of each ingest."""
    wall: dict[tuple[str, str], list[float]] = {}
    cpu: dict[tuple[str, str], list[float]] = {}
    counts: dict[str, int] = {}
    for mode in MODES:  # warm-up: imports and first-call costs would otherwise land on one side
        for name, source in sources.items():
            with new_workspace(root / f"warm-{mode}-{name}", mode, key_file) as ws:
                ws.ingest(source, name=name)
            shutil.rmtree(root / f"warm-{mode}-{name}")
    for r in range(repeats):
        for mode in MODES:
            for name, source in sources.items():
                folder = root / f"ingest-{mode}-{name}-{r}"
                with new_workspace(folder, mode, key_file) as ws:
                    started, cpu_started = time.perf_counter(), time.process_time()
                    version = ws.ingest(source, name=name)
                    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
                counts[name] = version.num_records + version.num_quarantined
                wall.setdefault((name, mode), []).append(counts[name] / seconds)
                cpu.setdefault((name, mode), []).append(cpu_seconds * 1000 / counts[name])
                shutil.rmtree(folder)
    rows = []
    for name in sources:
        label = f"ingest {name} ({counts[name]:,} records)"
        rows.append(ratio_row(f"{label}: CPU per record", median(cpu[(name, "plain")]),
                              median(cpu[(name, "encrypted")]), "{:.3f} ms"))
        rows.append(ratio_row(f"{label}: records/s (wall)", median(wall[(name, "plain")]),
                              median(wall[(name, "encrypted")]), "{:,.0f}"))
    return rows


# -- 3 and 4. serving -----------------------------------------------------------------------


def prepare_serving(root: Path, sources: dict[str, Path], key_file: Path) -> dict[str, Any]:
    """Two workspaces serving the same two models: trained in ``plain``, copied into ``encrypted``."""
    from aifab.core.types import ModelVersion

    spaces = {mode: new_workspace(root / f"serve-{mode}", mode, key_file) for mode in MODES}
    plain, enc = spaces["plain"], spaces["encrypted"]
    for name, spec in SPECS.items():
        print(f"training {name} ...", file=sys.stderr, flush=True)
        plain.ingest(sources[name], name=name)
        version = plain.train(spec)
        plain.meta.set_alias(name, "production", version.version, actor="benchmark")
        files = {f: enc.artifacts.put_bytes(plain.artifacts.get_bytes(d)) for f, d in version.files.items()}
        copied = enc.meta.add_model_version(
            ModelVersion(name=name, version=0, files=files, task=version.task, created_at=datetime.now(timezone.utc))
        )
        enc.meta.set_alias(name, "production", copied.version, actor="benchmark")
    return spaces


def inputs_for(name: str, sources: dict[str, Path], n: int = 256) -> tuple[list[Any], list[Any]]:
    """(request instances, what ``predict`` takes) for ``n`` inputs."""
    if name == "sms":
        with open(sources["sms"], encoding="utf-8", newline="") as f:
            texts = [r["text"] for r in csv.DictReader(f)][:n]
        return texts, texts
    blobs = [p.read_bytes() for p in sorted(sources["digits"].rglob("*.png"))[:n]]
    return [{"b64": base64.b64encode(b).decode("ascii")} for b in blobs], blobs


def log_batches(ws: Any, name: str, values: list[Any], batches: int) -> tuple[float, float]:
    """(wall ms, CPU ms) per ``PredictionLog.record`` of 32 answers with their inputs: the part of
    serving that encryption touches (the model's own work is the same in both workspaces). Every
    input is new (a counter appended), so every image is a new blob to encrypt and write."""
    from aifab.feedback.log import PredictionLog

    model = ws.load_model(f"{name}@production")
    log = PredictionLog(ws.meta, ws.artifacts)
    answers = model.predict(values[:32])

    def unique(value: Any, i: int) -> Any:
        # Bytes after a PNG's IEND chunk are ignored by decoders; the log only hashes and stores them.
        return f"{value} #{i}" if isinstance(value, str) else value + i.to_bytes(8, "big")

    batches_of = [[unique(values[(b * 32 + i) % len(values)], b * 32 + i) for i in range(32)] for b in range(batches + 1)]
    log.record(name, model.version.version, batches_of[-1], answers, latency_ms=1.0)  # warm-up
    started, cpu_started = time.perf_counter(), time.process_time()
    for batch in batches_of[:-1]:
        log.record(name, model.version.version, batch, answers, latency_ms=1.0)
    return (time.perf_counter() - started) / batches * 1000, (time.process_time() - cpu_started) / batches * 1000


def load_model_ms(ws: Any, name: str) -> tuple[float, float]:
    """(wall ms, CPU ms) to load the production model: read, decrypt and verify every file."""
    ws.load_model(f"{name}@production")  # warm-up
    started, cpu_started = time.perf_counter(), time.process_time()
    ws.load_model(f"{name}@production")
    return (time.perf_counter() - started) * 1000, (time.process_time() - cpu_started) * 1000


class Server:
    """``aifab serve`` in a subprocess on a free loopback port, no auth, every answer logged."""

    def __init__(self, ws: Path, model: str) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [AIFAB, "serve", "--workspace", str(ws), "--models", model, "--port", str(self.port),
             "--no-auth", "--poll-seconds", "0", "--log-level", "warning"],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def __enter__(self) -> Server:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"aifab serve exited:\n{self.log.read().decode()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError("aifab serve not ready in 120 s")

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the server process so far (Linux; NaN elsewhere)."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return float("nan")
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def drive(server: Server, model: str, payloads: list[Any], *, requests: int, concurrency: int) -> dict[str, float]:
    """requests/s, p50 ms, server CPU ms per request and errors of single-instance requests from
    ``concurrency`` raw keep-alive connections (bare asyncio sockets: the load generator costs
    next to nothing). Each request carries a new input (a counter is appended to texts; images
    cycle), so every logged input is new work for the log."""
    host, port = server.url.removeprefix("http://").split(":")
    path = f"/v1/models/{model}:predict"
    latencies: list[float] = []
    errors = 0
    sent = 0

    def body(i: int) -> bytes:
        p = payloads[i % len(payloads)]
        return json.dumps({"instances": [f"{p} #{i}" if isinstance(p, str) else p]}).encode()

    async def worker(count: int) -> None:
        nonlocal sent, errors
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while sent < count:
                data = body(sent)
                sent += 1
                started = time.perf_counter()
                writer.write(
                    f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(data)}\r\n\r\n".encode() + data
                )
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                await reader.readexactly(int(length.group(1)) if length else 0)
                latencies.append((time.perf_counter() - started) * 1000)
                errors += int(head.split(b" ", 2)[1]) != 200
        finally:
            writer.close()

    await asyncio.gather(*(worker(concurrency * 4) for _ in range(concurrency)))  # warm-up
    latencies.clear()
    sent = 0
    started, cpu_started = time.perf_counter(), server.cpu_seconds()
    await asyncio.gather(*(worker(requests) for _ in range(concurrency)))
    seconds, cpu_seconds = time.perf_counter() - started, server.cpu_seconds() - cpu_started
    return {"rps": len(latencies) / seconds, "p50": median(latencies), "cpu_ms": cpu_seconds * 1000 / len(latencies),
            "errors": errors}


def serving_rows(
    spaces: dict[str, Any], sources: dict[str, Path], *, requests: int, concurrency: int, repeats: int
) -> list[tuple[str, ...]]:
    rows = []
    for name in SPECS:
        payloads, values = inputs_for(name, sources)
        batch: dict[str, list[tuple[float, float]]] = {m: [] for m in MODES}
        load: dict[str, list[tuple[float, float]]] = {m: [] for m in MODES}
        http: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
        for _ in range(repeats):
            for mode in MODES:
                batch[mode].append(log_batches(spaces[mode], name, values, batches=20))
                load[mode].append(load_model_ms(spaces[mode], name))
        for _ in range(repeats):
            for mode in MODES:
                with Server(spaces[mode].root, name) as server:
                    http[mode].append(asyncio.run(drive(server, name, payloads, requests=requests, concurrency=concurrency)))

        def med(kind: dict[str, list[Any]], pick: Callable[[Any], float]) -> tuple[float, float]:
            return median([pick(x) for x in kind["plain"]]), median([pick(x) for x in kind["encrypted"]])

        rows.append(ratio_row(f"{name}: load the model, CPU", *med(load, lambda x: x[1]), "{:.1f} ms"))
        rows.append(ratio_row(f"{name}: log 32 answers + inputs, CPU", *med(batch, lambda x: x[1]), "{:.2f} ms"))
        rows.append(ratio_row(f"{name}: log 32 answers + inputs, wall", *med(batch, lambda x: x[0]), "{:.2f} ms"))
        rows.append(ratio_row(f"{name}: HTTP server CPU per request", *med(http, lambda x: x["cpu_ms"]), "{:.2f} ms"))
        rows.append(ratio_row(f"{name}: HTTP requests/s (c={concurrency}, wall)", *med(http, lambda x: x["rps"]), "{:,.0f}"))
        rows.append(ratio_row(f"{name}: HTTP p50 latency", *med(http, lambda x: x["p50"]), "{:.1f} ms"))
        errors = sum(x["errors"] for m in MODES for x in http[m])
        if errors:
            rows.append((f"{name}: HTTP errors", str(sum(x["errors"] for x in http["plain"])),
                         str(sum(x["errors"] for x in http["encrypted"])), ""))
    return rows


# -- 5. rotation ----------------------------------------------------------------------------


def rotation_row(ws: Any, root: Path) -> tuple[str, str, str]:
    from aifab.security.crypto import MasterKey, write_key_file

    new = MasterKey.generate()
    path = write_key_file(root / "keys" / "rotated.key", new)
    started, cpu_started = time.perf_counter(), time.process_time()
    result = ws.rotate_key(new, key_file=path)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    blobs, rows = result["blobs_rewrapped"], result["predictions_rewrapped"]
    return (f"key rotate: {blobs:,} blobs + {rows:,} logged texts", f"{seconds:.2f} s", f"{cpu_seconds:.2f} s")


# -- main -----------------------------------------------------------------------------------


def table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("/work/shared/datasets"))
    parser.add_argument("--texts", type=int, default=5574, help="SMS messages to ingest (all: 5574)")
    parser.add_argument("--images", type=int, default=5000, help="MNIST PNGs to ingest")
    parser.add_argument("--requests", type=int, default=2000, help="HTTP requests per measurement")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch

    from aifab.security.crypto import MasterKey, write_key_file

    root = Path(tempfile.mkdtemp(prefix="aifab-bench-encryption-"))
    try:
        (root / "keys").mkdir()
        key_file = write_key_file(root / "keys" / "master.key", MasterKey.generate())
        sources = write_data(args.data, root / "data", texts=args.texts, images=args.images)
        print(f"encryption at rest, plain vs encrypted workspace; torch threads {torch.get_num_threads()}, "
              f"load average {os.getloadavg()[0]:.1f}, median of {args.repeats}\n")
        print(table(("cipher (AES-256-GCM envelope), CPU time", "throughput", "note"), cipher_rows(args.repeats)))
        print()
        rows = ingest_rows(root, sources, key_file, args.repeats)
        spaces = prepare_serving(root, sources, key_file)
        rows += serving_rows(spaces, sources, requests=args.requests, concurrency=args.concurrency, repeats=args.repeats)
        print(table(("measure", "plain", "encrypted", "encrypted / plain"), rows))
        print()
        print(table(("rotation", "wall", "CPU"), [rotation_row(spaces["encrypted"], root)]))
        print(f"\nload average after: {os.getloadavg()[0]:.1f}")
        for ws in spaces.values():
            ws.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
