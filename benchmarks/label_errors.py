"""The label-error check (confident learning) against labels flipped on purpose.

Flips 10% of MR's training labels at random (seeded), ingests the result as a dataset, runs
`Workspace.label_issues` (k-fold out-of-fold probabilities from TF-IDF + logistic regression,
then Prune by Noise Rate) and prints the precision and recall of its suspects against the flips.

    .venv/bin/python benchmarks/label_errors.py [--data ../shared/datasets/mr_polarity/mr.csv]
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

import numpy as np

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "mr_polarity" / "mr.csv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT)
    parser.add_argument("--flip", type=float, default=0.10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from aifab.pipeline.project import Workspace

    with open(args.data, encoding="utf-8", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "train"]
    rng = np.random.default_rng(args.seed)
    flipped = set(rng.choice(len(rows), size=int(args.flip * len(rows)), replace=False).tolist())
    other = {"pos": "neg", "neg": "pos"}
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "mr_noisy.csv"
        with open(source, "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f)
            w.writerow(["text", "label"])
            for i, r in enumerate(rows):
                w.writerow([r["text"], other[r["label"]] if i in flipped else r["label"]])
        ws = Workspace.init(Path(tmp) / "ws")
        version = ws.ingest(source, name="mr_noisy")
        line_of = {r.id: int(r.source.rsplit(":", 1)[1]) - 2 for r in ws.records(version)}
        t0 = time.perf_counter()
        result = ws.label_issues(version)
        wall = time.perf_counter() - t0
        ws.close()
    kept_flips = {line_of[i] for i in line_of} & flipped
    found = {line_of[s["id"]] for s in result["suspects"]}
    tp = len(found & flipped)
    precision = tp / max(1, len(found))
    recall = tp / max(1, len(kept_flips))
    print("| data | records checked | flipped | suspects | precision | recall | wall (s) |")
    print("|---|---|---|---|---|---|---|")
    print(
        f"| MR train, {args.flip:.0%} flipped (seed {args.seed}) | {result['checked']:,} | {len(kept_flips):,} | "
        f"{len(found):,} | {precision:.1%} | {recall:.1%} | {wall:.1f} |"
    )


if __name__ == "__main__":
    main()
