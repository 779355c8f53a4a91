"""One turn of the factory loop on MR, the way a user runs it, timed.

Train on half of MR's train split (its dev split as validation, fold 0 as the frozen test split),
promote through the gate, serve on 127.0.0.1, send the other half of the train split as requests,
return corrections for the wrong answers only (as a user would), run one retrain round (child
dataset version -> candidate -> gate -> promotion), then plant a regression: a candidate trained on
a re-upload whose labels are shuffled, which the gate must refuse.

Reports test accuracy before and after, the corrections used, and the wall time from the last
correction acknowledged by the server to the promoted model being served.

    .venv/bin/python benchmarks/loop.py                  # textcnn (default), about 3 minutes here
    .venv/bin/python benchmarks/loop.py --arch auto --freeze-encoder   # the packaged MiniLM, frozen, a trained head
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
MR = SHARED / "mr_polarity" / "mr.csv"


def read_mr() -> list[dict[str, str]]:
    with open(MR, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def write_csv(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label", "split"])
        w.writerows(rows)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="textcnn")
    parser.add_argument("--freeze-encoder", action="store_true", help="pretrained encoders: train only the head")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import httpx

    from aifab.core.errors import GateFailed
    from aifab.data.formats import ReaderOptions
    from aifab.pipeline.project import Workspace
    from aifab.pipeline.promotion import promote
    from aifab.pipeline.retraining import retrain
    from aifab.pipeline.serving import create_token
    from aifab.pipeline.traffic import background_server, send_corrections, send_requests, served_version

    rows = read_mr()
    rng = np.random.default_rng(args.seed)
    train = [r for r in rows if r["split"] == "train"]
    order = rng.permutation(len(train))
    today = [train[i] for i in order[: len(order) // 2]]
    traffic = [(train[i]["text"], train[i]["label"]) for i in order[len(order) // 2 :]]
    kept = [(r["text"], r["label"], "train") for r in today]
    kept += [(r["text"], r["label"], "val") for r in rows if r["split"] == "dev"]
    kept += [(r["text"], r["label"], "test") for r in rows if r["split"] == "test"]
    options = ReaderOptions(text_column="text", label_columns=("label",))
    spec = {"task": "text-classification", "dataset": "mr", "model": {"arch": args.arch, "freeze_encoder": args.freeze_encoder}}

    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace.init(Path(tmp) / "ws")
        t0 = time.perf_counter()
        ws.ingest(write_csv(Path(tmp) / "mr-today.csv", kept), name="mr", options=options)
        first = ws.train(spec)
        first_wall = time.perf_counter() - t0
        promote(ws, first.ref, actor="bench", role="operator")
        tokens = {role: create_token(ws, name=f"bench-{role}", role=role)[0] for role in ("client", "annotator", "operator")}
        with background_server(ws, models=["mr"]) as url:
            t1 = time.perf_counter()
            answers = send_requests(url, tokens["client"], "mr", traffic, kind="text")
            serve_wall = time.perf_counter() - t1
            sent = send_corrections(url, tokens["annotator"], "mr", answers)
            last_correction = time.perf_counter()
            outcome = retrain(ws, "mr", actor="bench", role="operator")
            if outcome["status"] == "promoted":
                httpx.post(
                    f"{url}/v1/models/mr:reload", headers={"Authorization": f"Bearer {tokens['operator']}"}, timeout=300
                ).raise_for_status()
            now_served = served_version(url, tokens["client"], "mr")
            to_promoted = time.perf_counter() - last_correction
        before = ws.evaluate(first.ref)
        after = ws.evaluate(outcome["candidate"]) if outcome.get("candidate") else before

        shuffled_labels = rng.permutation([label for _, label, _ in kept])
        broken = [(t, str(lab), s) for (t, _, s), lab in zip(kept, shuffled_labels)]
        ws.ingest(write_csv(Path(tmp) / "mr-broken.csv", broken), name="mr", options=options)
        planted = ws.train(spec | {"dataset": "mr"})
        try:
            promote(ws, planted.ref, actor="bench", role="operator")
            refused, reasons = False, []
        except GateFailed as exc:
            refused, reasons = True, list(exc.details.get("reasons") or [exc.message])
        production = ws.model("mr@production").ref
        ws.close()

    wrong = sum(a.wrong for a in answers)
    print(f"MR loop, arch {args.arch}{' (frozen encoder)' if args.freeze_encoder else ''}: {len(kept)} records ingested ({len(today)} train), {len(traffic)} sent as traffic")
    print()
    print("| measure | value |")
    print("|---|---|")
    print(f"| first model: ingest + train wall (s) | {first_wall:.0f} |")
    print(f"| traffic: {len(traffic)} requests, wall (s) | {serve_wall:.1f} |")
    print(f"| wrong answers on traffic -> corrections sent | {wrong} -> {len(sent)} |")
    print(f"| corrections used by the retrain (new train records) | {outcome['corrections']} ({len(outcome['added'])}) |")
    print(f"| test accuracy before (fold 0, {before['num_examples']} sentences) | {before['accuracy']:.2%} |")
    print(f"| test accuracy after | {after['accuracy']:.2%} |")
    print(f"| retrain outcome | {outcome['status']} {outcome.get('candidate')} (served now: version {now_served}) |")
    print(f"| last correction -> promoted and served (s) | {to_promoted:.0f} |")
    print(f"| planted regression (shuffled labels) {planted.ref} | {'refused' if refused else 'PROMOTED'}; production stays {production} |")
    if reasons:
        print()
        print("gate reasons for the planted regression (first 3):")
        for r in sorted(reasons, key=lambda r: "(production's)" not in r)[:3]:
            print(f"- {r}")
    goals = {
        "accuracy rises": after["accuracy"] > before["accuracy"] and outcome["status"] == "promoted",
        "feedback -> promoted < 300 s": to_promoted < 300 and outcome["status"] == "promoted",
        "planted regression refused": refused,
    }
    print()
    print("goals: " + ", ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in goals.items()))


if __name__ == "__main__":
    main()
