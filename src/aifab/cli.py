"""The ``aifab`` command line. Thin: parse, call :mod:`aifab.pipeline.project`, format.

Every command takes ``--json`` and then prints exactly one JSON document on stdout (logs
and progress go to stderr) and exits with the exit code of the error class from
:mod:`aifab.core.errors`. Heavy modules are imported inside the commands, so
``aifab --help`` stays fast.
"""

from __future__ import annotations

import json
import logging
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import typer

app = typer.Typer(
    name="aifab",
    help="Image and text AI from the lab to the factory: ingest, check, split, train, serve, retrain.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

JsonOpt = typer.Option(False, "--json", help="Print one JSON document on stdout.")
WorkspaceOpt = typer.Option(
    None, "--workspace", "-w", envvar="AIFAB_WORKSPACE", help="Workspace folder (default: here or above)."
)

log = logging.getLogger("aifab")


def main() -> None:
    """Console-script entry point."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    app()


# ---------------------------------------------------------------------------------------------
# Output helpers
# ---------------------------------------------------------------------------------------------


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def _emit(as_json: bool, payload: Any, render: Callable[[], None]) -> None:
    from aifab.core.types import to_jsonable

    if as_json:
        sys.stdout.write(json.dumps(to_jsonable(payload), ensure_ascii=False, indent=2, default=str) + "\n")
    else:
        render()


@contextmanager
def _errors(as_json: bool) -> Iterator[None]:
    """Turn library errors into the one error shape and the class's exit code."""
    from aifab.core.errors import AifabError

    try:
        yield
    except AifabError as exc:
        if as_json:
            sys.stdout.write(json.dumps(exc.to_dict(), ensure_ascii=False, indent=2, default=str) + "\n")
        else:
            _console(stderr=True).print(f"[bold red]error[/] ({exc.code}): {exc.message}", markup=True, soft_wrap=True)
            report = exc.details.get("report") if isinstance(exc.details, dict) else None
            if report:
                _print_findings(report.get("findings", []), stderr=True)
            for line in (exc.details.get("reasons") or []) if isinstance(exc.details, dict) else []:
                _console(stderr=True).print(f"  - {line}", soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        _console(stderr=True).print("interrupted")
        raise typer.Exit(130) from None
    except typer.Exit:
        raise
    except Exception as exc:  # a bug, not the user's mistake: say so, keep the traceback for AIFAB_DEBUG
        import os
        import traceback

        from aifab.core.errors import AifabError as _Base

        error = _Base(f"internal error: {type(exc).__name__}: {exc} (set AIFAB_DEBUG=1 for the traceback)")
        if os.environ.get("AIFAB_DEBUG"):
            traceback.print_exc()
        if as_json:
            sys.stdout.write(json.dumps(error.to_dict(), ensure_ascii=False, indent=2, default=str) + "\n")
        else:
            _console(stderr=True).print(f"[bold red]error[/]: {error.message}", soft_wrap=True)
        raise typer.Exit(error.exit_code) from None


class _RichProgress:
    """The rich progress bars of the terminal, implementing :class:`aifab.core.progress.Progress`."""

    def __init__(self, enabled: bool = True) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=_console(stderr=True),
            disable=not enabled,
            transient=False,
        )

    def __enter__(self) -> _RichProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    @contextmanager
    def task(self, description: str, total: int | None = None) -> Iterator[Any]:
        task_id = self._progress.add_task(description, total=total)
        progress = self._progress

        class _Task:
            def advance(self, n: int = 1) -> None:
                progress.advance(task_id, n)

            def update(self, *, total: int | None = None, description: str | None = None) -> None:
                progress.update(task_id, total=total, description=description)

        try:
            yield _Task()
        finally:
            t = progress.tasks[task_id] if task_id < len(progress.tasks) else None
            if t is not None and t.total is None:
                progress.update(task_id, total=t.completed)


def _open(workspace: Optional[Path]) -> Any:
    from aifab.pipeline.project import Workspace

    return Workspace.open(workspace)


# ---------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------


@app.command()
def init(
    directory: Path = typer.Argument(Path("."), help="Folder for the workspace (created if missing)."),
    encrypt: bool = typer.Option(False, "--encrypt", help="Encrypt data, models and logged inputs at rest (docs/encryption.md)."),
    key_file: Optional[Path] = typer.Option(None, "--key-file", help="With --encrypt: the master key's file (outside the workspace)."),
    key_env: Optional[str] = typer.Option(None, "--key-env", help="With --encrypt: the variable holding the master key (default AIFAB_KEY)."),
    as_json: bool = JsonOpt,
) -> None:
    """Create a workspace: aifab.yaml and .aifab/ (database and artifact store)."""
    with _errors(as_json):
        from aifab.core.errors import ConfigError
        from aifab.pipeline.project import Workspace

        if not encrypt and (key_file is not None or key_env is not None):
            raise ConfigError("--key-file and --key-env go with --encrypt")
        ws = Workspace.init(directory, encrypt=encrypt, key_file=key_file, key_env=key_env)
        payload = {"workspace": str(ws.root), "config": str(ws.root / "aifab.yaml")}
        if ws.config.encryption.enabled:
            payload["encryption"] = ws.config.encryption.model_dump()
        ws.close()
        _emit(as_json, payload, lambda: _console().print(f"workspace ready at {payload['workspace']}"))


@app.command()
def ingest(
    source: str = typer.Argument(
        ...,
        help="An image folder, a CSV/TSV/JSONL/Parquet table, a COCO JSON or CoNLL file, an archive of one "
        "(.zip, .tar.gz), or a URL whose scheme ingest.allowed_schemes allows.",
    ),
    name: str = typer.Option(..., "--name", "-n", help="Dataset name."),
    fmt: Optional[str] = typer.Option(None, "--format", "-f", help="folder|csv|jsonl|parquet|coco|conll (default: by file)."),
    text_column: Optional[str] = typer.Option(None, "--text-column"),
    image_column: Optional[str] = typer.Option(None, "--image-column"),
    label_column: Optional[list[str]] = typer.Option(None, "--label-column", help="Repeat for multi-label 0/1 columns."),
    split_column: str = typer.Option("split", "--split-column"),
    fresh: bool = typer.Option(False, "--fresh", help="Do not use the latest version as parent (no frozen test split)."),
    workspace: Optional[Path] = WorkspaceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Ingest data as a new immutable dataset version, through the data gate and a leak-free split."""
    with _errors(as_json):
        from aifab.data.formats import ReaderOptions

        options = ReaderOptions(
            text_column=text_column,
            image_column=image_column,
            label_columns=tuple(label_column or ()),
            split_column=split_column,
        )
        ws = _open(workspace)
        with _RichProgress(enabled=sys.stderr.isatty() or not as_json) as progress:
            version = ws.ingest(source, name=name, fmt=fmt, options=options, fresh=fresh, progress=progress)
        report = ws.report(version)
        payload = {"dataset": version, "report": report}
        _emit(as_json, payload, lambda: _print_version(version, report))


@app.command()
def datasets(
    name: Optional[str] = typer.Argument(None, help="Only this dataset's versions."),
    workspace: Optional[Path] = WorkspaceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """List dataset versions, newest first."""
    with _errors(as_json):
        ws = _open(workspace)
        versions = ws.datasets(name)

        def render() -> None:
            from rich.table import Table

            table = Table("name", "version", "records", "train/val/test", "quarantined", "parent", "created")
            for v in versions:
                s = v.split_counts
                table.add_row(
                    v.name,
                    v.short_id,
                    str(v.num_records),
                    f"{s.get('train', 0)}/{s.get('val', 0)}/{s.get('test', 0)}",
                    str(v.num_quarantined),
                    (v.parent or "")[:12],
                    v.created_at.strftime("%Y-%m-%d %H:%M"),
                )
            _console().print(table if versions else "no datasets yet; add one with: aifab ingest SOURCE --name NAME")

        _emit(as_json, {"datasets": versions}, render)


@app.command()
def inspect(
    ref: str = typer.Argument(..., help="NAME or NAME@VERSION."),
    label_issues: bool = typer.Option(False, "--label-issues", help="Also run the label-error check (confident learning)."),
    limit: int = typer.Option(50, "--limit", help="Suspects to show."),
    workspace: Optional[Path] = WorkspaceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Show a dataset version and its data-gate report (and suspected label errors)."""
    with _errors(as_json):
        ws = _open(workspace)
        version = ws.dataset(ref)
        report = ws.report(version)
        issues = ws.label_issues(version, limit=limit) if label_issues else None
        payload: dict[str, Any] = {"dataset": version, "report": report}
        if issues is not None:
            payload["label_issues"] = issues

        def render() -> None:
            _print_version(version, report)
            if issues is not None:
                _print_label_issues(issues)

        _emit(as_json, payload, render)


@app.command()
def train(
    spec_file: Optional[Path] = typer.Argument(None, help="A task spec (YAML). Without one, every default."),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="NAME or NAME@VERSION (no spec file)."),
    task: Optional[str] = typer.Option(None, "--task", "-t", help="image-classification | text-classification."),
    name: Optional[str] = typer.Option(None, "--name", "-n", help="Model name (default: the dataset's)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Override train.epochs."),
    resume: Optional[str] = typer.Option(None, "--resume", help="Continue a killed run (its id or a prefix)."),
    workspace: Optional[Path] = WorkspaceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Train a model, evaluate it on the frozen test split, and register a version (alias: candidate)."""
    with _errors(as_json):
        from aifab.core.errors import ConfigError
        from aifab.pipeline import training

        ws = _open(workspace)
        spec = None
        if resume is None:
            if spec_file is not None:
                spec = training.load_spec(spec_file)
            elif dataset and task:
                spec = training.default_spec(dataset=dataset, task=task, name=name)
            else:
                raise ConfigError("give a spec file, or both --dataset and --task (or --resume RUN)")
            if epochs is not None:
                spec.train.epochs = epochs
            if name and spec_file is not None:
                spec.name = name
        with _RichProgress(enabled=not as_json) as progress:
            version = ws.train(spec, resume=resume, progress=progress)
        test = version.metrics.get("test", {})
        _emit(
            as_json,
            {"model": version},
            lambda: _console().print(
                f"registered [bold]{version.ref}[/] (alias candidate): "
                + ", ".join(f"{k} {test[k]:.4f}" for k in ("accuracy", "macro_f1", "ece") if test.get(k) is not None)
            ),
        )


@app.command()
def evaluate(
    ref: str = typer.Argument(..., help="MODEL, MODEL@VERSION or MODEL@ALIAS."),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="NAME[@VERSION] (default: the model's own)."),
    split: str = typer.Option("test", "--split"),
    report: Optional[Path] = typer.Option(None, "--report", help="Write the offline HTML report here."),
    workspace: Optional[Path] = WorkspaceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Evaluate a model on a dataset split: accuracy, P/R/F1, per class, confusion matrix, ECE."""
    with _errors(as_json):
        ws = _open(workspace)
        metrics = ws.evaluate(ref, dataset=dataset, split=split)
        if report is not None:
            from aifab.evaluate.report import evaluation_report

            report.write_text(evaluation_report(metrics, title=f"{ref} on {metrics['dataset']} {split}"), encoding="utf-8")

        def render() -> None:
            from rich.table import Table

            head = Table("metric", "value", title=f"{ref} on {metrics['dataset'][:60]} ({split})")
            for key in ("accuracy", "macro_f1", "micro_f1", "weighted_f1", "ece", "log_loss", "num_examples"):
                if metrics.get(key) is not None:
                    head.add_row(key, f"{metrics[key]:.4f}" if isinstance(metrics[key], float) else str(metrics[key]))
            _console().print(head)
            per = Table("label", "precision", "recall", "f1", "support", title="per class")
            for label, m in metrics.get("per_class", {}).items():
                per.add_row(label, f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}", str(m["support"]))
            _console().print(per)

        _emit(as_json, {"metrics": metrics}, render)


@app.command()
def models(
    name: Optional[str] = typer.Argument(None, help="Only this model's versions."),
    workspace: Optional[Path] = WorkspaceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """List model versions, newest first, with their aliases and test metrics."""
    with _errors(as_json):
        ws = _open(workspace)
        versions = ws.models(name)

        def render() -> None:
            from rich.table import Table

            table = Table("model", "version", "aliases", "task", "accuracy", "macro_f1", "dataset", "created")
            for v in versions:
                test = v.metrics.get("test", {})
                table.add_row(
                    v.name,
                    str(v.version),
                    ", ".join(v.aliases),
                    v.task,
                    f"{test.get('accuracy', float('nan')):.4f}",
                    f"{test.get('macro_f1', float('nan')):.4f}",
                    (v.dataset_version or "")[:12],
                    v.created_at.strftime("%Y-%m-%d %H:%M"),
                )
            _console().print(table if versions else "no models yet; train one with: aifab train --dataset NAME --task TASK")

        _emit(as_json, {"models": versions}, render)


alias_app = typer.Typer(help="Move aliases (production, candidate, ...) between model versions.", no_args_is_help=True)
app.add_typer(alias_app, name="alias")


@alias_app.command("set")
def alias_set(
    ref: str = typer.Argument(..., help="MODEL@VERSION"),
    alias: str = typer.Argument(..., help="e.g. production"),
    reason: str = typer.Option("", "--reason"),
    workspace: Optional[Path] = WorkspaceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Point ALIAS at MODEL@VERSION (the move is kept in the audit trail)."""
    with _errors(as_json):
        import getpass

        from aifab.core.errors import ConfigError

        if alias == "production":
            # A model reaches production only through the quality gate (and the audit trail).
            raise ConfigError(
                f"'production' moves only through the quality gate: aifab promote {ref} "
                "(--force --reason '...' to overrule a failed gate, admin only)"
            )
        ws = _open(workspace)
        move = ws.set_alias(ref, alias, actor=getpass.getuser(), reason=reason)
        _emit(
            as_json,
            {"move": move},
            lambda: _console().print(f"{move.name}@{move.alias} -> {move.version} (was {move.previous})"),
        )


@app.command()
def predict(
    ref: str = typer.Argument(..., help="MODEL, MODEL@VERSION or MODEL@ALIAS."),
    inputs: list[str] = typer.Argument(..., help="Image files, strings, or one .csv/.jsonl file."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="With a table input: write predictions here."),
    column: Optional[str] = typer.Option(None, "--column", help="The table's input column (default: text/image)."),
    workspace: Optional[Path] = WorkspaceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Predict labels and probabilities for inputs."""
    with _errors(as_json):
        from aifab.pipeline.predicting import predict_inputs

        ws = _open(workspace)
        results = predict_inputs(ws, ref, inputs, output=output, column=column)

        def render() -> None:
            from rich.table import Table

            table = Table("input", "label", "score")
            for r in results[:200]:
                label = r.get("label") or ", ".join(r.get("labels", []))
                score = max(r["scores"].values()) if r["scores"] else 0.0
                table.add_row(str(r["input"])[:80], str(label), f"{score:.4f}")
            _console().print(table)
            if output is not None:
                _console().print(f"wrote {len(results)} predictions to {output}")

        _emit(as_json, {"predictions": results}, render)


spec_app = typer.Typer(help="Task specs.", no_args_is_help=True)
app.add_typer(spec_app, name="spec")


@spec_app.command("schema")
def spec_schema() -> None:
    """Print the JSON Schema of task specs (for editors)."""
    from aifab.core.config import Spec

    sys.stdout.write(json.dumps(Spec.model_json_schema(), indent=2) + "\n")


@app.command()
def demo(
    directory: Optional[Path] = typer.Option(None, "--dir", help="Workspace folder (default: a new temporary one)."),
    as_json: bool = JsonOpt,
) -> None:
    """Run the whole loop on real data, offline, on CPU (what `make demo` runs): ingest, data gate,
    train, gate, serve, traffic, feedback, retrain, gate again; writes report.html."""
    with _errors(as_json):
        from aifab.pipeline.demo import run_demo

        with _RichProgress(enabled=not as_json) as progress:
            summary = run_demo(directory, progress=progress, say=None if as_json else _console(stderr=True).print)
        _emit(as_json, summary, lambda: _print_demo(summary))


@app.command()
def version(as_json: bool = JsonOpt) -> None:
    """Print aifab's version."""
    from importlib.metadata import version as pkg_version

    v = pkg_version("aifab")
    _emit(as_json, {"version": v}, lambda: _console().print(v))


# ---- serving: serve, token, feedback (begin) -----------------------------------------------


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8000, "--port", help="Port to listen on."),
    models: Optional[list[str]] = typer.Option(
        None, "--models", help="A model to serve (repeat for more; default: every model with a production alias)."
    ),
    no_auth: bool = typer.Option(
        False, "--no-auth", help="Serve without API tokens, everyone as admin (loopback hosts only)."
    ),
    max_batch_size: int = typer.Option(32, "--max-batch-size", help="Instances per model call (1: no batching)."),
    max_wait_ms: float = typer.Option(5.0, "--max-wait-ms", help="Longest wait for a batch to fill, in ms."),
    queue_size: int = typer.Option(1024, "--queue-size", help="Instances waiting per model before 503."),
    poll_seconds: float = typer.Option(
        2.0, "--poll-seconds", help="How often the production alias is checked for a hot swap (0: never)."
    ),
    no_log_inputs: bool = typer.Option(
        False, "--no-log-inputs", help="Log predictions without their inputs (only their sha256)."
    ),
    torch_threads: Optional[int] = typer.Option(
        None, "--torch-threads", min=1, help="Threads per model call (default: half the CPUs, at least 1)."
    ),
    rate_limit: Optional[str] = typer.Option(
        None, "--rate-limit", help="Requests per API token, e.g. 50/s or 3000/min; off: none (default: aifab.yaml serve.rate_limit)."
    ),
    rate_burst: Optional[int] = typer.Option(
        None, "--rate-burst", min=1, help="Requests a token may send at once (default: the rate's count)."
    ),
    cors_origins: Optional[list[str]] = typer.Option(
        None, "--cors-origin", help="A browser origin allowed to call the API, e.g. https://shop.example.com (repeat for more)."
    ),
    access_log: bool = typer.Option(False, "--access-log", help="Log one line per request (tokens masked)."),
    log_level: str = typer.Option("info", "--log-level", help="critical|error|warning|info|debug"),
    loop: bool = typer.Option(
        False, "--loop", help="Also run the retraining loop (aifab loop) on a background thread."
    ),
    loop_interval: float = typer.Option(300.0, "--loop-interval", min=1, help="Seconds between loop checks."),
    workspace: Optional[Path] = WorkspaceOpt,
) -> None:
    """Serve the production version of models over HTTP (KServe v1) until Ctrl-C or SIGTERM."""
    with _errors(False):
        from aifab.core.errors import check_choice
        from aifab.pipeline import serving

        level = check_choice("log_level", log_level.lower(), ["critical", "error", "warning", "info", "debug"])
        # The serve.* loggers say which versions load and swap; the CLI shows them at --log-level.
        logging.getLogger("aifab").setLevel(level.upper())
        ws = _open(workspace)
        try:
            serving.serve(
                ws,
                host=host,
                port=port,
                models=models or None,
                auth=not no_auth,
                max_batch_size=max_batch_size,
                max_wait_ms=max_wait_ms,
                queue_size=queue_size,
                poll_seconds=poll_seconds,
                keep_inputs=not no_log_inputs,
                torch_threads=torch_threads,
                log_level=level,
                loop=loop,
                loop_interval_s=loop_interval,
                config=serving.serve_config(
                    ws, rate_limit=rate_limit, rate_burst=rate_burst, cors_origins=cors_origins or None
                ),
                access_log=access_log,
            )
        finally:
            ws.close()


token_app = typer.Typer(help="API tokens for the HTTP server (admin work).", no_args_is_help=True)
app.add_typer(token_app, name="token")


@token_app.command("create")
def token_create(
    role: str = typer.Option(..., "--role", help="client | annotator | operator | admin"),
    name: str = typer.Option(..., "--name", help="Who or what uses the token (unique among live tokens)."),
    workspace: Optional[Path] = WorkspaceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Create an API token and print it once; the workspace keeps only its salted hash."""
    with _errors(as_json):
        from aifab.pipeline import serving

        ws = _open(workspace)
        plaintext, token = serving.create_token(ws, name=name, role=role)
        note = "store it now: it cannot be shown again (the workspace keeps only a salted hash)"

        def render() -> None:
            # The token alone on stdout, so that TOKEN=$(aifab token create ...) works.
            sys.stdout.write(plaintext + "\n")
            _console(stderr=True).print(f"token {token.id} ({token.name!r}, role {token.role}): {note}")

        _emit(as_json, {"token": plaintext, **serving.public_token(token), "note": note}, render)


@token_app.command("list")
def token_list(workspace: Optional[Path] = WorkspaceOpt, as_json: bool = JsonOpt) -> None:
    """List API tokens (never their secrets), newest first, revoked ones included."""
    with _errors(as_json):
        from aifab.pipeline import serving

        ws = _open(workspace)
        tokens = [serving.public_token(t) for t in serving.list_tokens(ws)]

        def render() -> None:
            from rich.table import Table

            table = Table("id", "name", "role", "created", "revoked")
            for t in tokens:
                revoked = t["revoked_at"].strftime("%Y-%m-%d %H:%M") if t["revoked_at"] else ""
                table.add_row(t["id"], t["name"], t["role"], t["created_at"].strftime("%Y-%m-%d %H:%M"), revoked)
            _console().print(table if tokens else "no tokens yet; create one with: aifab token create --role ROLE --name NAME")

        _emit(as_json, {"tokens": tokens}, render)


@token_app.command("revoke")
def token_revoke(
    name_or_id: str = typer.Argument(..., help="The token's id, or the name of a live token."),
    workspace: Optional[Path] = WorkspaceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Revoke an API token (a running server may accept it for up to 60 s more)."""
    with _errors(as_json):
        from aifab.pipeline import serving

        ws = _open(workspace)
        token = serving.public_token(serving.revoke_token(ws, name_or_id))
        _emit(as_json, {"token": token}, lambda: _console().print(f"revoked token {token['id']} ({token['name']!r})"))


feedback_app = typer.Typer(help="Corrections and ratings of served predictions.", no_args_is_help=True)
app.add_typer(feedback_app, name="feedback")


@feedback_app.command("add")
def feedback_add(
    prediction_id: str = typer.Argument(..., help="The prediction_id the server answered with."),
    label: Optional[str] = typer.Option(None, "--label", help="The right class (single-label models)."),
    labels: Optional[str] = typer.Option(
        None, "--labels", help="The right classes, comma-separated, '' for none (multi-label models)."
    ),
    correct: Optional[bool] = typer.Option(None, "--correct/--wrong", help="The prediction was right / wrong."),
    comment: str = typer.Option("", "--comment"),
    new_class: bool = typer.Option(False, "--new-class", help="The label is a class the model does not know yet."),
    model: Optional[str] = typer.Option(None, "--model", help="Check that the prediction is of this model."),
    workspace: Optional[Path] = WorkspaceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Correct one served prediction (--label, --labels or --correct/--wrong)."""
    with _errors(as_json):
        import getpass

        from aifab.pipeline import serving

        ws = _open(workspace)
        chosen = None if labels is None else [x.strip() for x in labels.split(",") if x.strip()]
        feedback = serving.add_feedback(
            ws,
            ref_or_name=model,
            prediction_id=prediction_id,
            label=label,
            labels=chosen,
            correct=correct,
            comment=comment,
            new_class=new_class,
            actor=getpass.getuser(),
        )
        _emit(
            as_json,
            {"feedback": feedback},
            lambda: _console().print(f"feedback {feedback.id} on prediction {prediction_id}: {_said(feedback)}"),
        )


@feedback_app.command("list")
def feedback_list(
    model: str = typer.Argument(..., help="Model name."),
    limit: int = typer.Option(100, "--limit", min=1, max=100000),
    workspace: Optional[Path] = WorkspaceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Feedback on a model's predictions, newest first."""
    with _errors(as_json):
        from aifab.pipeline import serving

        ws = _open(workspace)
        found = serving.list_feedback(ws, model, limit)

        def render() -> None:
            from rich.table import Table

            table = Table("created", "prediction", "feedback", "new class", "by", "comment")
            for f in found:
                table.add_row(
                    f.created_at.strftime("%Y-%m-%d %H:%M"),
                    f.prediction_id,
                    _said(f),
                    "yes" if f.new_class else "",
                    f.actor,
                    f.comment[:60],
                )
            _console().print(table if found else f"no feedback on {model} yet")

        _emit(as_json, {"feedback": found}, render)


def _said(feedback: Any) -> str:
    if feedback.label is not None:
        return f"label {feedback.label}"
    if feedback.labels is not None:
        return "labels " + (", ".join(feedback.labels) or "(none)")
    return "correct" if feedback.correct else "wrong"


# ---- serving: serve, token, feedback (end) -------------------------------------------------


@app.command()
def promote(
    ref: str = typer.Argument(..., help="MODEL@VERSION to promote to production."),
    force: bool = typer.Option(False, "--force", help="Move even if the gate fails (admin; needs --reason)."),
    reason: str = typer.Option("", "--reason"),
    workspace: Optional[Path] = WorkspaceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Run the quality gate and move `production` only if it passes (every reason shown if not)."""
    with _errors(as_json):
        import getpass

        from aifab.pipeline.promotion import promote as run_promote

        ws = _open(workspace)
        result = run_promote(ws, ref, actor=getpass.getuser(), force=force, reason=reason, role="admin")
        verdict = "failed, forced past it" if result.get("forced") else "passed"
        _emit(as_json, result, lambda: _console().print(f"{result['model']}@production -> {result['version']} (was {result['previous']}); gate {verdict}"))


@app.command()
def rollback(
    name: str = typer.Argument(..., help="MODEL"),
    reason: str = typer.Option("", "--reason"),
    workspace: Optional[Path] = WorkspaceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Move `production` back to the version it pointed to before."""
    with _errors(as_json):
        import getpass

        from aifab.pipeline.promotion import rollback as run_rollback

        ws = _open(workspace)
        result = run_rollback(ws, name, actor=getpass.getuser(), reason=reason, role="admin")
        _emit(as_json, result, lambda: _console().print(f"{name}@production -> {result['version']} (was {result['previous']})"))


@app.command()
def audit(
    name: Optional[str] = typer.Argument(None, help="Only this model."),
    refused: bool = typer.Option(False, "--refused", help="Also list the promotions the gate refused."),
    workspace: Optional[Path] = WorkspaceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Every alias move: who, what, when, why, and the gate result."""
    with _errors(as_json):
        from aifab.pipeline.promotion import audit as run_audit

        ws = _open(workspace)
        entries = run_audit(ws, name, refused=refused)

        def render() -> None:
            from rich.table import Table

            table = Table("moved at", "model", "alias", "from", "to", "actor", "reason", "gate")
            for e in entries:
                gate = e.get("gate")
                verdict = "-" if not gate else ("passed" if gate.get("passed") else "failed (forced)")
                if e.get("event") == "refused":
                    verdict = "refused"
                table.add_row(
                    str(e["moved_at"])[:19], str(e["model"]), str(e["alias"]), str(e["previous"]),
                    str(e["version"]), str(e["actor"]), str(e["reason"])[:60], verdict,
                )
            _console().print(table)

        _emit(as_json, {"audit": entries}, render)


@app.command()
def retrain(
    name: str = typer.Argument(..., help="MODEL whose production version gets retrained on its feedback."),
    min_corrections: int = typer.Option(1, "--min-corrections"),
    no_promote: bool = typer.Option(False, "--no-promote", help="Train the candidate but do not promote it."),
    workspace: Optional[Path] = WorkspaceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """New dataset version from feedback -> candidate -> gate -> promote only if it passes."""
    with _errors(as_json):
        import getpass

        from aifab.pipeline.retraining import retrain as run_retrain

        ws = _open(workspace)
        with _RichProgress(enabled=not as_json) as progress:
            result = run_retrain(
                ws, name, actor=getpass.getuser(), min_corrections=min_corrections, promote=not no_promote, progress=progress
            )
        _emit(as_json, result, lambda: _console().print_json(json.dumps(result, default=str)))


@app.command()
def drift(
    name: str = typer.Argument(..., help="MODEL (its production version)."),
    workspace: Optional[Path] = WorkspaceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Compare recent served inputs with the training data (PSI, embedding two-sample test)."""
    with _errors(as_json):
        from aifab.pipeline.retraining import drift as run_drift

        ws = _open(workspace)
        report = run_drift(ws, name)
        _emit(as_json, report, lambda: _console().print_json(json.dumps(report, default=str)))


@app.command()
def review(
    name: str = typer.Argument(..., help="MODEL"),
    by: str = typer.Option("margin", "--by", help="margin | entropy"),
    limit: int = typer.Option(20, "--limit"),
    label: bool = typer.Option(False, "--label", help="Label the queue here, one prediction at a time."),
    workspace: Optional[Path] = WorkspaceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Logged predictions without feedback, most uncertain first: the corrections worth most.

    With --label, each is shown with the model's answer; type the right label, press Enter to
    confirm the answer, `s` to skip or `q` to stop. Each answer is stored as feedback at once."""
    with _errors(as_json):
        from aifab.core.errors import ConfigError
        from aifab.pipeline.retraining import review_queue

        ws = _open(workspace)
        queue = review_queue(ws, name, by=by, limit=limit)
        if label:
            if as_json:
                raise ConfigError("--label is interactive; it does not combine with --json")
            _label_queue(ws, queue)
            return
        _emit(as_json, {"review": queue}, lambda: _print_review(queue))


def _print_review(queue: list[dict[str, Any]]) -> None:
    from rich.table import Table

    table = Table(title=f"review queue ({len(queue)}), least certain first")
    for column in ("prediction", "version", "answer", "uncertainty", "input"):
        table.add_column(column)
    for item in queue:
        shown = item["input_text"] if item["input_text"] is not None else f"(image {str(item['input_blob'])[:12]})"
        table.add_row(item["prediction_id"], item["model_version"], str(item["label"]),
                      f"{item['uncertainty']:.3f}", (shown or "")[:80])
    _console().print(table)


def _label_queue(ws: Any, queue: list[dict[str, Any]]) -> None:
    """Ask for the right label of each queued prediction; store each answer as feedback."""
    from aifab.core.errors import InputError
    from aifab.pipeline.serving import add_feedback

    con = _console()
    done = 0
    for i, item in enumerate(queue, 1):
        shown = item["input_text"] if item["input_text"] is not None else f"(image blob {item['input_blob']})"
        top = sorted(item["scores"].items(), key=lambda kv: -kv[1])[:3]
        con.print(f"\n[bold]{i}/{len(queue)}[/] {item['prediction_id']} ({item['model_version']})")
        con.print(f"  input:  {shown}")
        con.print("  answer: " + ", ".join(f"{k} {v:.2f}" for k, v in top))
        while True:
            reply = typer.prompt("  right label (Enter = the answer is right, s = skip, q = quit)",
                                 default="", show_default=False).strip()
            if reply in ("q", "s"):
                break
            try:
                if reply:
                    add_feedback(ws, prediction_id=item["prediction_id"], label=reply, actor="aifab review --label")
                else:
                    add_feedback(ws, prediction_id=item["prediction_id"], correct=True, actor="aifab review --label")
            except InputError as exc:  # an unknown label: say which ones the model knows, ask again
                con.print(f"  [red]{exc.message}[/]")
                continue
            done += 1
            break
        if reply == "q":
            break
    con.print(f"\n{done} feedback stored; `aifab retrain {queue[0]['model_version'].split('@')[0]}` uses the corrections."
              if queue else "nothing to review")


key_app = typer.Typer(help="Master keys of encrypted workspaces (docs/encryption.md).", no_args_is_help=True)
app.add_typer(key_app, name="key")


@key_app.command("generate")
def key_generate(
    out: Path = typer.Option(..., "--out", "-o", help="The key file to create (mode 0600; never overwritten)."),
    as_json: bool = JsonOpt,
) -> None:
    """Create a new random master key in a file readable only by you."""
    with _errors(as_json):
        from aifab.security.crypto import MasterKey, write_key_file

        key = MasterKey.generate()
        path = write_key_file(out, key)
        payload = {"key_file": str(path.resolve()), "key_id": key.key_id}
        note = "keep a copy somewhere safe: without it the workspace's data cannot be read"
        _emit(as_json, payload | {"note": note}, lambda: _console().print(f"key {key.key_id} written to {path} ({note})"))


@key_app.command("rotate")
def key_rotate(
    new_key_file: Optional[Path] = typer.Option(None, "--new-key-file", help="The new master key's file."),
    new_key_env: Optional[str] = typer.Option(None, "--new-key-env", help="The variable holding the new master key."),
    old_key_file: Optional[Path] = typer.Option(None, "--old-key-file", help="The current key, when aifab.yaml no longer finds it (or to resume)."),
    old_key_env: Optional[str] = typer.Option(None, "--old-key-env", help="The variable holding the current key (instead of --old-key-file)."),
    workspace: Optional[Path] = WorkspaceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Re-wrap every data key under a new master key, without re-encrypting the data; resumable."""
    with _errors(as_json):
        from aifab.core.errors import AuthError
        from aifab.pipeline.project import Workspace
        from aifab.security.crypto import MasterKey

        new = MasterKey.load(key_file=new_key_file, key_env=new_key_env, option="--new-key")
        old = None
        if old_key_file is not None or old_key_env is not None:
            old = MasterKey.load(key_file=old_key_file, key_env=old_key_env, option="--old-key")
        try:
            ws = Workspace.open(workspace, key=old)
        except AuthError:
            if old is None:
                raise
            # aifab.yaml may name the new key already (edited by hand): open with that one.
            ws = Workspace.open(workspace, key=new)
        try:
            with _RichProgress(enabled=sys.stderr.isatty() or not as_json) as progress:
                result = ws.rotate_key(
                    new, key_file=new_key_file, key_env=new_key_env, old_keys=[old] if old else [], progress=progress
                )
        finally:
            ws.close()
        _emit(
            as_json,
            result,
            lambda: _console().print(
                f"key {result['previous_key_id']} -> {result['key_id']}: re-wrapped {result['blobs_rewrapped']} blobs "
                f"and {result['predictions_rewrapped']} logged inputs; aifab.yaml now names the new key"
            ),
        )


@app.command("loop")
def loop_command(
    names: Optional[list[str]] = typer.Argument(
        None, help="MODEL(s) to watch (default: every model with a production version)."
    ),
    once: bool = typer.Option(False, "--once", help="Check once, print what was decided, exit (cron)."),
    interval: float = typer.Option(300.0, "--interval", min=1, help="Seconds between checks."),
    min_corrections: Optional[int] = typer.Option(
        None, "--min-corrections", min=1, help="New corrections that trigger a retrain (default: spec loop.min_corrections, 50)."
    ),
    cooldown: Optional[float] = typer.Option(
        None, "--cooldown", min=0, help="Seconds after a retrain attempt before the next (default: spec loop.cooldown_s, 3600)."
    ),
    on_drift: Optional[bool] = typer.Option(
        None, "--on-drift/--no-drift", help="Whether the drift alarm triggers a retrain (default: spec loop.on_drift, yes)."
    ),
    workspace: Optional[Path] = WorkspaceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Retrain by itself: when enough new corrections arrived or the drift alarm fired (and no
    cooldown holds), retrain, gate, and promote only on a pass. Without --once it runs until
    Ctrl-C, one line per check (one JSON document per line with --json)."""
    with _errors(as_json):
        from aifab.pipeline.loop import run_loop

        ws = _open(workspace)
        options = {"min_corrections": min_corrections, "cooldown_s": cooldown, "on_drift": on_drift}

        def say(result: dict[str, Any]) -> None:
            if as_json:
                sys.stdout.write(json.dumps(result, ensure_ascii=False, default=str) + "\n")
                sys.stdout.flush()
            else:
                _console().print(f"{result['model']}: {result['message']}", soft_wrap=True)

        try:
            if once:
                results = run_loop(ws, names or None, once=True, **options)
                _emit(as_json, {"checks": results}, lambda: [say(r) for r in results])
            else:
                run_loop(ws, names or None, interval_s=interval, on_check=say, **options)
        except KeyboardInterrupt:
            pass  # the way to stop a loop that runs until stopped: not an error
        finally:
            ws.close()


# ---- optimization: ensemble, distill, tune --------------------------------------------------


@app.command()
def ensemble(
    refs: list[str] = typer.Argument(..., help="Two or more MODEL@VERSION to combine."),
    method: str = typer.Option("soft", "--method", "-m", help="soft | weighted | hard."),
    weights: Optional[str] = typer.Option(
        None, "--weights", help="One per member, comma-separated (weighted, hard). weighted without them: fitted on the val split."
    ),
    name: Optional[str] = typer.Option(None, "--name", "-n", help="Model name (default: the first member's)."),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="NAME@VERSION to fit and test on (default: the first member's)."),
    workspace: Optional[Path] = WorkspaceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Register model versions as ONE ensemble version; show it beside each member on test (no alias moves)."""
    with _errors(as_json):
        from aifab.core.errors import ConfigError

        try:
            values = [float(w) for w in weights.split(",")] if weights else None
        except ValueError:
            raise ConfigError(f"--weights: expected numbers separated by commas, e.g. 0.7,0.3; got {weights!r}") from None
        ws = _open(workspace)
        with _RichProgress(enabled=not as_json) as progress:
            result = ws.ensemble(refs, method=method, weights=values, name=name, dataset=dataset, progress=progress)

        def render() -> None:
            from rich.table import Table

            data, _, data_id = result["dataset"].partition("@")
            table = Table("model", "weight", "accuracy", "macro_f1", "ece", title=f"test split of {data}@{data_id[:12]}")
            rows = [(f"{result['model'].ref} ({method})", "", result["test"]["ensemble"])]
            rows += [(ref, f"{result['weights'][ref]:.3f}", m) for ref, m in result["test"]["members"].items()]
            for label, weight, m in rows:
                table.add_row(label, weight, *(f"{m[k]:.4f}" if m.get(k) is not None else "-" for k in ("accuracy", "macro_f1", "ece")))
            _console().print(table)
            _console().print(f"registered [bold]{result['model'].ref}[/] (weights: {result['weights_from']}); "
                             f"promote it through the gate with: aifab promote {result['model'].ref}")

        _emit(as_json, result, render)


@app.command()
def distill(
    teacher: str = typer.Argument(..., help="MODEL@VERSION (a model or an ensemble) to learn from."),
    arch: Optional[str] = typer.Option(None, "--arch", help="The student's network (default: textcnn / smallcnn)."),
    spec_file: Optional[Path] = typer.Option(None, "--spec", help="The student's whole spec (YAML); default: derived from the teacher's."),
    temperature: Optional[float] = typer.Option(None, "--temperature", "-T", help="Softening temperature (default 4)."),
    alpha: Optional[float] = typer.Option(None, "--alpha", help="Weight of the soft term, 0..1 (default 0.7)."),
    name: Optional[str] = typer.Option(None, "--name", "-n", help="Model name (default: the teacher's)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Override train.epochs."),
    workspace: Optional[Path] = WorkspaceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Train a small student on a teacher's soft targets and register it (lineage: the teacher; no alias moves)."""
    with _errors(as_json):
        ws = _open(workspace)
        with _RichProgress(enabled=not as_json) as progress:
            version = ws.distill(teacher, arch=arch, spec=spec_file, temperature=temperature, alpha=alpha, name=name,
                                 epochs=epochs, progress=progress)
        test = version.metrics.get("test", {})
        _emit(
            as_json,
            {"model": version, "teacher": teacher},
            lambda: _console().print(
                f"registered [bold]{version.ref}[/], a student of {teacher}: "
                + ", ".join(f"{k} {test[k]:.4f}" for k in ("accuracy", "macro_f1", "ece") if test.get(k) is not None)
            ),
        )


@app.command()
def tune(
    spec_file: Path = typer.Argument(..., help="A task spec (YAML) with a search section."),
    trials: Optional[int] = typer.Option(None, "--trials", min=1, help="Finished trials wanted in all (default: search.trials)."),
    study: Optional[str] = typer.Option(None, "--study", help="Study name (default: aifab-tune-<model name>)."),
    workspace: Optional[Path] = WorkspaceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Search hyperparameters with Optuna (resumable: run it again after a kill) and register the best trial."""
    with _errors(as_json):
        from aifab.core.errors import DependencyMissing

        try:
            import optuna
        except ImportError:
            raise DependencyMissing("aifab tune needs optuna: pip install 'aifab[optimize]'") from None
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress bar says what its INFO lines would
        ws = _open(workspace)
        with _RichProgress(enabled=not as_json) as progress:
            result = ws.tune(spec_file, trials=trials, study=study, progress=progress)

        def render() -> None:
            from rich.table import Table

            table = Table("trial", "state", result["metric"], "params", title=f"study {result['study']} ({result['direction']})")
            for t in result["trials"]:
                value = f"{t['value']:.4f}" if t["value"] is not None else "-"
                table.add_row(str(t["number"]), t["state"], value, ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in t["params"].items()))
            _console().print(table)
            best = result["best"]
            _console().print(f"best trial {best['number']}: {result['metric']} {best['value']:.4f}; "
                             f"registered [bold]{result['model'].ref}[/] (promote it with: aifab promote {result['model'].ref})")

        _emit(as_json, result, render)


@app.command()
def optimize(
    ref: str = typer.Argument(..., help="MODEL@VERSION (or MODEL@ALIAS) to optimize."),
    export: Optional[str] = typer.Option(None, "--export", help="onnx: export to one model.onnx, served by ONNX Runtime."),
    quantize: Optional[str] = typer.Option(None, "--quantize", help="int8 (implies --export onnx)."),
    prune: Optional[float] = typer.Option(None, "--prune", help="Fraction of weights or channels to remove, e.g. 0.5."),
    prune_method: str = typer.Option("auto", "--prune-method", help="auto | structured | unstructured."),
    finetune_epochs: int = typer.Option(2, "--finetune-epochs", help="Fine-tune epochs after pruning."),
    parity_examples: int = typer.Option(500, "--parity-examples", help="Test inputs the ONNX parity check compares on."),
    calibration_examples: int = typer.Option(200, "--calibration-examples", help="Train inputs that calibrate static int8."),
    workspace: Optional[Path] = WorkspaceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Prune, export to ONNX and/or quantize to int8 into a new version (parent: REF), with a
    before/after table: test accuracy, p50 latency at batch 1 and 32, throughput, file size."""
    with _errors(as_json):
        ws = _open(workspace)
        with _RichProgress(enabled=not as_json) as progress:
            result = ws.optimize(
                ref, export=export, quantize=quantize, prune=prune, prune_method=prune_method,
                finetune_epochs=finetune_epochs, parity_examples=parity_examples,
                calibration_examples=calibration_examples, progress=progress,
            )

        def render() -> None:
            from rich.table import Table

            table = Table("model", "runtime", "accuracy", "p50 ms (b1)", "p50 ms (b32)", "inputs/s (b32)", "size",
                          title=f"{result['parent']} -> {result['model'].ref}")
            for r in result["table"]:
                acc = "-" if r["accuracy"] is None else f"{r['accuracy']:.4f}"
                table.add_row(r["model"], r["runtime"], acc, f"{r['p50_ms_b1']:.3f}", f"{r['p50_ms_b32']:.3f}",
                              f"{r['throughput']:.0f}", f"{r['size_bytes'] / 1e6:.2f} MB")
            _console().print(table)
            parity = result.get("parity")
            if parity is not None and parity.get("agreement") is not None:
                verdict = "passed" if parity["passed"] else "[bold red]FAILED[/] (the gate will refuse this version)"
                _console().print(f"parity ({parity['dtype']}): agreement {parity['agreement']:.2%} on {parity['examples']} "
                                 f"test inputs, max |dp| {parity['max_abs_diff']:.2e}: {verdict}")
            _console().print(f"registered [bold]{result['model'].ref}[/] (alias candidate; parent {result['parent']})")

        _emit(as_json, result, render)


# ---------------------------------------------------------------------------------------------
# Renderers
# ---------------------------------------------------------------------------------------------


def _print_version(version: Any, report: dict[str, Any]) -> None:
    from rich.table import Table

    con = _console()
    s = version.split_counts
    con.print(
        f"[bold]{version.name}@{version.short_id}[/]  {version.num_records} records  "
        f"train {s.get('train', 0)} / val {s.get('val', 0)} / test {s.get('test', 0)}  "
        f"quarantined {version.num_quarantined}" + (f"  parent {version.parent[:12]}" if version.parent else "")
    )
    labels = Table("label", "records", title="labels")
    for label, count in sorted(version.label_counts.items(), key=lambda kv: -kv[1])[:30]:
        labels.add_row(label, str(count))
    if version.label_counts:
        con.print(labels)
    _print_findings(report.get("findings", []))


def _print_findings(findings: list[dict[str, Any]], *, stderr: bool = False) -> None:
    from rich.table import Table

    con = _console(stderr=stderr)
    if not findings:
        con.print("data gate: no findings")
        return
    table = Table("check", "severity", "action", "records", "message", "where", title="data gate findings")
    for f in findings[:200]:
        sources = f.get("sources") or []
        where = ", ".join(sources[:3]) + (f" (+{len(sources) - 3})" if len(sources) > 3 else "")
        table.add_row(
            f["check"], f["severity"], f.get("action", ""), str(len(f.get("record_ids", []))), f["message"], where
        )
    con.print(table)
    if len(findings) > 200:
        con.print(f"... and {len(findings) - 200} more findings (use --json for all)")


def _print_label_issues(issues: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(
        "source", "split", "label", "suggested", "self-confidence",
        title=f"label issues: {issues['num_suspects']} suspects among {issues['checked']} records ({issues['method']})",
    )
    for s in issues["suspects"]:
        table.add_row(s["source"], str(s["split"]), s["label"], s["suggested"], f"{s['self_confidence']:.4f}")
    _console().print(table)


def _print_demo(summary: dict[str, Any]) -> None:
    con = _console()
    con.print("[bold]aifab demo[/]: " + summary.get("headline", ""))
    for stage in summary.get("stages", []):
        con.print(f"  [green]✓[/] {stage['stage']} ({stage.get('seconds', 0):.0f} s): {stage['result']}")
    con.print(f"workspace: {summary.get('workspace')}  ({summary.get('seconds', 0):.0f} s in all)")
    con.print(f"report:    {summary.get('report')}  (offline HTML: every stage, with plots)")


if __name__ == "__main__":  # pragma: no cover
    main()
