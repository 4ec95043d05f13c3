"""`bm-ray compare`: classify one corpus with two models through the bulk path and report where they differ.

Two legs, each a whole `bm-ray classify` job (:func:`bm_ray.jobs.classify.classify`): model A into ``DIR/a``,
model B into ``DIR/b``. Then the comparison, from what the legs committed::

    DIR/a/, DIR/b/            classify outputs (predictions/, rejects/, _commits/, summary.json, report.html)
    DIR/flips/flips.parquet   rows whose labels differ: id, label_a, score_a, label_b, score_b
                              (and label, the true one, when the corpus has labels), sorted by id
    DIR/compare.json          rows, agreement, flip matrix (label_a × label_b), per-label counts; with
                              labels: accuracy of each model, B − A, McNemar's exact test and the
                              95% intervals (Wilson for each accuracy, a paired bootstrap for B − A)
    DIR/report.html

Why two legs and not one pass with both models per actor: each leg *is* the classify job, so exactly
once, resume after a kill, leases, rejects and summaries come from the commit protocol unchanged, with
no second copy of it; an actor holds one model in memory, not two; and the corpus is read twice, which
costs little beside the two forward passes that both designs pay. A rerun resumes whichever leg was
cut short (a finished leg reads nothing again) and rewrites flips/ and compare.json whole (atomically).

This makes compare the one job built from another (it imports :mod:`bm_ray.jobs.classify`), against the
design sketch's "jobs never import each other": the alternative, moving the classify driver below the
jobs only for this, would copy no less and hide what compare is, classify twice plus a join.

The comparison joins the legs by id (so ids must be unique: ``dedupe: ids``, enforced by the spec) and
takes the true labels from a third, model-free read of the corpus. It holds the id, label and score
columns of both legs in the driver (tens of bytes per row).
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from bm_ray.corpus import ok_rows, read_corpus
from bm_ray.jobs.classify import classify as classify_corpus
from bm_ray.layout import COMPARE_FILE, COMPARE_LEGS, FLIPS_DIR, FLIPS_FILE, MLFLOW_FILE, PREDICTIONS_DIR
from bm_ray.model.metrics import mcnemar_exact_p
from bm_ray.model.uncertainty import compare_intervals, figure_text
from bm_ray.report import try_build_report
from bm_ray.results import CompareResult
from bm_ray.runtime.ray_init import init_ray
from bm_ray.specs import ClassifySpec, CompareSpec
from bm_ray.storage import (
    join,
    join_uri,
    list_files,
    redact_uri,
    resolve_uri,
    write_json_atomic,
    write_parquet_atomic,
)

SIGNIFICANCE = 0.05
"""McNemar p-value under which the summary table calls the accuracy difference significant."""


def leg_spec(spec: CompareSpec, leg: str) -> ClassifySpec:
    """The classify spec of one leg: model A (``a``) or B (``b``) into ``output/<leg>``, every other option shared."""
    shared = spec.model_dump(exclude={"kind", "models", "output", "promote", "mlflow_tracking_uri"})
    model = spec.models[COMPARE_LEGS.index(leg)]
    return ClassifySpec.model_validate({**shared, "model": model, "output": join_uri(spec.output, leg)})


def committed_predictions(output: str, leg: str) -> pa.Table:
    """id, label_<leg>, score_<leg> of every prediction a classify output committed."""
    fs, root = resolve_uri(output)
    # pyarrow.dataset skips hidden names (".tmp-*" of a write in flight), as the commit protocol expects.
    dataset = pads.dataset(join(root, PREDICTIONS_DIR), filesystem=fs, format="parquet")
    table = dataset.to_table(columns=["id", "label", "score"])
    return table.rename_columns(["id", f"label_{leg}", f"score_{leg}"])


def true_labels(spec: CompareSpec) -> pa.Table:
    """id, label of the corpus's ok rows (a model-free read with the legs' ingestion options)."""
    ds, info = read_corpus(spec.input)
    with info:
        tables = list(ok_rows(ds, ["id", "label"]).iter_batches(batch_format="pyarrow", batch_size=None))
    schema = pa.schema([("id", pa.string()), ("label", pa.string())])
    return pa.concat_tables([schema.empty_table(), *(table.cast(schema) for table in tables)])


def compare_tables(
    a: pa.Table, b: pa.Table, truth: pa.Table | None = None
) -> tuple[dict[str, Any], pa.Table]:
    """(compare.json body, flips table) of two legs' predictions joined by id (and the true labels, if any).

    Raises RuntimeError when the legs hold different ids (a leg of another corpus or options).
    """
    joined = a.join(b, "id", join_type="inner")
    if not (joined.num_rows == a.num_rows == b.num_rows):
        raise RuntimeError(
            f"the two legs classified different rows (a: {a.num_rows:,}, b: {b.num_rows:,}, in both: "
            f"{joined.num_rows:,}); rerun compare with --overwrite"
        )
    if truth is not None:
        joined = joined.join(truth, "id", join_type="left outer")
    joined = joined.sort_by("id")
    label_a = joined.column("label_a").to_pylist()
    label_b = joined.column("label_b").to_pylist()
    names = list(dict.fromkeys(sorted(set(label_a)) + sorted(set(label_b))))
    index = {name: i for i, name in enumerate(names)}
    matrix = np.zeros((len(names), len(names)), dtype=np.int64)
    np.add.at(matrix, ([index[x] for x in label_a], [index[x] for x in label_b]), 1)
    rows = joined.num_rows
    agree = int(np.trace(matrix))
    counts_a, counts_b = Counter(label_a), Counter(label_b)
    result: dict[str, Any] = {
        "rows": rows,
        "rows_agree": agree,
        "rows_flipped": rows - agree,
        "agreement": agree / rows if rows else 1.0,
        "flip_matrix": {"labels": names, "matrix": matrix.tolist()},
        "label_counts": {name: {"a": counts_a[name], "b": counts_b[name]} for name in names},
    }
    labelled = truth is not None and joined.column("label").null_count < rows
    if labelled:
        known = joined.filter(pc.is_valid(joined.column("label")))
        true = np.asarray(known.column("label").to_pylist(), dtype=object)
        right_a = np.asarray(known.column("label_a").to_pylist(), dtype=object) == true
        right_b = np.asarray(known.column("label_b").to_pylist(), dtype=object) == true
        only_a, only_b = int((right_a & ~right_b).sum()), int((~right_a & right_b).sum())
        result.update(
            rows_labelled=known.num_rows,
            accuracy_a=float(right_a.mean()),
            accuracy_b=float(right_b.mean()),
            accuracy_difference=float(right_b.mean() - right_a.mean()),
            only_a_correct=only_a,
            only_b_correct=only_b,
            mcnemar_p=mcnemar_exact_p(only_a, only_b),
            intervals=compare_intervals(right_a, right_b),
        )
    columns = ["id", "label_a", "score_a", "label_b", "score_b", *(["label"] if labelled else [])]
    flips = joined.filter(pc.not_equal(joined.column("label_a"), joined.column("label_b"))).select(columns)
    return result, flips


def promotion_verdict(result: dict[str, Any]) -> tuple[bool, str]:
    """Whether the comparison (:func:`compare_tables`'s body) lets model B be promoted over A, and why:
    only when B is more accurate on the labelled rows and McNemar's p is below :data:`SIGNIFICANCE`."""
    p = result.get("mcnemar_p")
    if p is None:
        return False, "the corpus has no labels: promoting needs McNemar's test on labelled rows"
    accuracy_a, accuracy_b = result["accuracy_a"], result["accuracy_b"]
    rows = f"on {result['rows_labelled']:,} labelled rows"
    if accuracy_b <= accuracy_a:
        return False, f"B is not more accurate than A (B {accuracy_b:.4f}, A {accuracy_a:.4f} {rows})"
    if p >= SIGNIFICANCE:
        return False, (
            f"B is more accurate (B {accuracy_b:.4f}, A {accuracy_a:.4f} {rows}) but not significantly: "
            f"McNemar p = {p:.4g} >= {SIGNIFICANCE:g}"
        )
    return True, (
        f"B is significantly more accurate (B {accuracy_b:.4f}, A {accuracy_a:.4f} {rows}): "
        f"McNemar p = {p:.4g} < {SIGNIFICANCE:g}"
    )


def promote(spec: CompareSpec, result: dict[str, Any], version_b: str) -> dict[str, Any]:
    """`--promote`: set the alias on model B's registered version when :func:`promotion_verdict` allows it;
    the result's ``promotion`` block either way (with the reason)."""
    from bm_ray.jobs.tracking import read_model_record, set_alias

    assert spec.promote is not None
    promoted, reason = promotion_verdict(result)
    record = read_model_record(spec.models[1])
    block: dict[str, Any] = {
        "alias": spec.promote,
        "promoted": False,
        "reason": reason,
        "registered_model": None if record is None else record["registered_model"],
        "registered_version": None if record is None else record["registered_version"],
    }
    if record is None:
        block["reason"] = (
            f"model B has no {MLFLOW_FILE} (it was not trained with --mlflow-tracking-uri), so it has no "
            f"registered version to promote; {reason}"
        )
    elif promoted:
        refused = set_alias(
            spec.mlflow_tracking_uri or record["tracking_uri"], record, spec.promote, version_b
        )
        if refused is None:
            block["promoted"] = True
            block["reason"] = (
                f"{reason}: alias {spec.promote!r} set on version {record['registered_version']} of "
                f"{record['registered_model']!r}"
            )
        else:
            block["reason"] = f"{reason}, but {refused}"
    return block


def compare(spec: CompareSpec) -> CompareResult:
    """Run both legs (resuming either), then write flips/ and compare.json; returns compare.json's body.

    Beyond :func:`compare_tables`'s keys: models (name, version, path of A and B), legs (their
    outputs), rows_read, rows_rejected and rows_resumed of each leg, elapsed_s, output; with
    ``promote``, promotion (:func:`promote`).
    """
    started = time.monotonic()
    if spec.promote is not None:  # without the mlflow extra: fail before classifying anything
        from bm_ray.jobs.tracking import require_mlflow

        require_mlflow()
    init_ray(spec.address)
    summaries = {leg: classify_corpus(leg_spec(spec, leg)) for leg in COMPARE_LEGS}
    result, flips = compare_tables(
        *(committed_predictions(join_uri(spec.output, leg), leg) for leg in COMPARE_LEGS), true_labels(spec)
    )
    fs, root = resolve_uri(spec.output)
    flips_dir = join(root, FLIPS_DIR)
    fs.create_dir(flips_dir, recursive=True)
    write_parquet_atomic(fs, join(flips_dir, FLIPS_FILE), flips)
    for info in list_files(fs, flips_dir):  # an older layout's files would be read as flips too
        if info.base_name != FLIPS_FILE and not info.base_name.startswith("."):
            fs.delete_file(info.path)
    if spec.promote is not None:
        result["promotion"] = promote(spec, result, summaries["b"].model.version)
    compared = CompareResult.model_validate(
        {
            "models": {leg: summaries[leg].model for leg in COMPARE_LEGS},
            **result,
            "legs": {
                leg: {
                    "output": summaries[leg].output,
                    "rows_read": summaries[leg].rows_read,
                    "rows_rejected": summaries[leg].rows_rejected,
                    "rows_resumed": summaries[leg].rows_resumed,
                }
                for leg in COMPARE_LEGS
            },
            "elapsed_s": round(time.monotonic() - started, 3),
            "output": redact_uri(spec.output),
        }
    )
    write_json_atomic(fs, join(root, COMPARE_FILE), compared.model_dump())
    try_build_report(spec.output)
    return compared


def summary_table(result: CompareResult, top_flips: int = 5) -> Any:
    """A one-screen rich rendering of compare.json: models, agreement, the largest flips, accuracy and McNemar."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"bm-ray compare → {result.output}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for leg in COMPARE_LEGS:
        model = result.models[leg]
        table.add_row(f"model {leg.upper()}", f"{model.name} {model.version} ({model.path})")
    legs = result.legs["a"]
    table.add_row(
        "rows",
        f"{result.rows:,} compared ({legs.rows_read:,} read, {legs.rows_rejected:,} rejected)",
    )
    table.add_row("agreement", f"{result.agreement:.2%} ({result.rows_agree:,} rows)")
    flips = result.flip_matrix
    cells = [
        (count, f"{flips.labels[i]} → {flips.labels[j]}")
        for i, row in enumerate(flips.matrix)
        for j, count in enumerate(row)
        if i != j and count
    ]
    largest = ", ".join(f"{name} {count:,}" for count, name in sorted(cells, key=lambda c: -c[0])[:top_flips])
    table.add_row("flips (A → B)", f"{result.rows_flipped:,}" + (f": {largest}" if largest else ""))
    if result.accuracy_a is not None and result.accuracy_b is not None and result.mcnemar_p is not None:
        delta = result.accuracy_b - result.accuracy_a
        ci = result.intervals  # None in a compare.json written before bm-ray had intervals
        table.add_row(
            "accuracy",
            f"A {figure_text(result.accuracy_a, ci and ci.accuracy_a, 4)}, "
            f"B {figure_text(result.accuracy_b, ci and ci.accuracy_b, 4)} on "
            f"{result.rows_labelled or 0:,} labelled rows",
        )
        table.add_row("B − A", figure_text(delta, ci and ci.accuracy_difference, 4, signed=True))
        p = result.mcnemar_p
        verdict = "significant" if p < SIGNIFICANCE else "not significant"
        table.add_row(
            "McNemar",
            f"p = {p:.4g} ({verdict} at {SIGNIFICANCE:g}): only A right {result.only_a_correct or 0:,}, "
            f"only B right {result.only_b_correct or 0:,}",
        )
    else:
        table.add_row("accuracy", "the corpus has no labels")
    if result.promotion is not None:
        promotion = result.promotion
        table.add_row(
            f"promote {promotion.alias}",
            ("[bold green]promoted[/]: " if promotion.promoted else "[bold yellow]not promoted[/]: ")
            + escape(promotion.reason),
        )
    table.add_row("outputs", f"{FLIPS_DIR}/{FLIPS_FILE}, {COMPARE_FILE}, a/, b/")
    return table
