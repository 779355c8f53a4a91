"""Ingest + data gate throughput on N synthetic texts with planted exact and near duplicates.

Prints one table: records/s, wall time, peak memory (RSS of a fresh process per N) and the
recall of the planted near duplicates (a planted pair counts as found when both records
end up in one duplicate finding). Results go to docs/benchmarks.md.

    .venv/bin/python benchmarks/data_gate.py            # N = 100k and 1M
    .venv/bin/python benchmarks/data_gate.py --n 20000  # a quick look
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

WORDS = (
    "the a of to and in is it you that he was for on are with as his they be at one have this from or had by "
    "word but what some we can out other were all there when up use your how said an each she which do their "
    "time if will way about many then them write would like so these her long make thing see him two has look "
    "more day could go come did number sound no most people my over know water than call first who may down "
    "side been now find any new work part take get place made live where after back little only round man year "
    "came show every good me give our under name very through just form sentence great think say help low line "
    "differ turn cause much mean before move right boy old too same tell does set three want air well also play "
    "small end put home read hand port large spell add even land here must big high such follow act why ask men "
    "change went light kind off need house picture try us again animal point mother world near build self earth "
    "father head stand own page should country found answer school grow study still learn plant cover food sun"
).split()


def vocabulary(size: int = 20_000, seed: int = 1) -> list[str]:
    """The common English words above, then made-up words: a Zipf vocabulary about as wide as
    real text (a 200-word vocabulary makes every text a near duplicate of every other)."""
    rng = np.random.default_rng(seed)
    syllables = [c + v for c in "bcdfghjklmnprstvwz" for v in ("a", "e", "i", "o", "u", "ai", "ou")]
    words = list(dict.fromkeys(WORDS))
    seen = set(words)
    while len(words) < size:
        w = "".join(rng.choice(syllables, size=int(rng.integers(2, 4))))
        if w not in seen:
            seen.add(w)
            words.append(w)
    return words


def generate(n: int, seed: int = 0) -> tuple[list[str], list[str], list[tuple[int, int]], list[tuple[int, int]]]:
    """n texts: ~2% planted exact copies and ~3% planted near copies (case/punctuation, or ~5% of words replaced)."""
    rng = np.random.default_rng(seed)
    vocab = vocabulary()
    zipf = 1.0 / np.arange(1, len(vocab) + 1)
    zipf /= zipf.sum()
    lengths = rng.integers(12, 40, size=n)
    words = rng.choice(len(vocab), size=int(lengths.sum()), p=zipf)
    texts, start = [], 0
    for length in lengths:
        texts.append(" ".join(vocab[w] for w in words[start : start + length]))
        start += length
    labels = [("pos", "neg", "neu")[i % 3] for i in range(n)]
    exact, near = [], []
    targets = rng.permutation(n)
    n_exact, n_near = n // 50, (3 * n) // 100
    for k in range(n_exact):
        src, dst = int(targets[2 * k]), int(targets[2 * k + 1])
        texts[dst], labels[dst] = texts[src], labels[src]
        exact.append((src, dst))
    offset = 2 * n_exact
    for k in range(n_near):
        src, dst = int(targets[offset + 2 * k]), int(targets[offset + 2 * k + 1])
        tokens = texts[src].split()
        if k % 3 == 0:
            variant = texts[src].upper() + "!"
        else:
            # An edit of about 5% of the words: one word in a short text, two in a text of 20+.
            for _ in range(1 if len(tokens) < 20 else 2):
                tokens[int(rng.integers(len(tokens)))] = vocab[int(rng.integers(len(vocab)))]
            variant = " ".join(tokens)
        texts[dst], labels[dst] = variant, labels[src]
        near.append((src, dst))
    return texts, labels, exact, near


def run_one(n: int, workdir: Path) -> dict:
    """Generate, ingest, and score one size (run in a fresh process so peak RSS is this run's)."""
    from aifab.pipeline.project import Workspace

    texts, labels, exact, near = generate(n)
    source = workdir / f"texts_{n}.csv"
    with open(source, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(zip(texts, labels))
    ws = Workspace.init(workdir / f"ws_{n}")
    t0 = time.perf_counter()
    version = ws.ingest(source, name="bench")
    wall = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before the scoring below
    report = ws.report(version)
    line_to_id = {}
    for r in ws.records(version) + ws.quarantined(version):
        line_to_id[int(r.source.rsplit(":", 1)[1]) - 2] = r.id
    pair_groups: dict[str, set[int]] = {}
    for f_k, finding in enumerate(report["findings"]):
        if finding["check"] in ("exact_duplicate", "near_duplicate_text"):
            for rid in finding["record_ids"]:
                pair_groups.setdefault(rid, set()).add(f_k)

    def found(pairs: list[tuple[int, int]]) -> float:
        hits = 0
        for a, b in pairs:
            ga, gb = pair_groups.get(line_to_id[a], set()), pair_groups.get(line_to_id[b], set())
            hits += bool(ga & gb) or _same_component(report, line_to_id[a], line_to_id[b])
        return hits / max(1, len(pairs))

    return {
        "n": n,
        "wall_s": round(wall, 1),
        "records_per_s": round(n / wall),
        "peak_rss_mb": round(peak_mb),
        "exact_recall": round(found(exact), 4),
        "near_recall": round(found(near), 4),
        "findings": len(report["findings"]),
        "kept": version.num_records,
    }


def _same_component(report: dict, a: str, b: str) -> bool:
    """Near pairs may be linked through a third record (a chain of near copies): check connectivity."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.get(x, x) != x:
            x = parent[x] = parent.get(parent[x], parent[x])
        return x

    for f in report["findings"]:
        if f["check"] in ("exact_duplicate", "near_duplicate_text") and len(f["record_ids"]) > 1:
            root = find(f["record_ids"][0])
            for rid in f["record_ids"][1:]:
                parent[find(rid)] = root
    return find(a) == find(b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="*", default=[100_000, 1_000_000])
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.workdir)))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.n:
            out = subprocess.run(
                [sys.executable, __file__, "--one", str(n), "--workdir", tmp], capture_output=True, text=True
            )
            if out.returncode != 0:
                sys.stderr.write(out.stderr)
                raise SystemExit(out.returncode)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    header = "| N | wall (s) | records/s | peak RSS (MB) | exact-dup recall | near-dup recall | kept |"
    print(header)
    print("|" + "---|" * 7)
    for r in rows:
        print(
            f"| {r['n']:,} | {r['wall_s']} | {r['records_per_s']:,} | {r['peak_rss_mb']:,} | "
            f"{r['exact_recall']:.1%} | {r['near_recall']:.1%} | {r['kept']:,} |"
        )


if __name__ == "__main__":
    main()
