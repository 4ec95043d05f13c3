"""The job result models (bm_ray.results) hold exactly the documents the jobs write: a dump is the file
as it was, key for key, in the same order, NaN included; a key the models do not declare is refused."""

from __future__ import annotations

import json
from typing import Any

import pydantic
import pytest
import result_samples as samples

from bm_ray.cli.output import json_text
from bm_ray.results import (
    ClassifyResult,
    CompareResult,
    EvaluateResult,
    IngestResult,
    ResultModel,
    TrainResult,
    TuneResult,
)

DOCUMENTS: list[tuple[type[ResultModel], dict[str, Any]]] = [
    (IngestResult, samples.ingest_summary()),
    (IngestResult, samples.ingest_summary(near_duplicates=True)),
    (ClassifyResult, samples.classify_summary()),
    (ClassifyResult, samples.classify_summary(min_score=0.5)),
    (EvaluateResult, samples.evaluate_metrics()),
    (EvaluateResult, samples.evaluate_metrics(target=True, leakage=True, nan=True)),
    (CompareResult, samples.compare_doc()),
    (CompareResult, samples.compare_doc(labelled=False)),
    (CompareResult, samples.compare_doc(promotion=True)),
    (TrainResult, samples.train_metrics()),
    (TrainResult, samples.train_metrics(refit=True, val_data=True, calibrate=False)),
    (TrainResult, samples.train_metrics(mlflow=True)),
    (TuneResult, samples.tune_doc()),
    (TuneResult, samples.tune_doc(mlflow=True)),
    # written before bm-ray reported intervals: they still load, and dump as they were
    (EvaluateResult, samples.evaluate_metrics(intervals=False)),
    (CompareResult, samples.compare_doc(intervals=False)),
    (TrainResult, samples.train_metrics(intervals=False)),
]
IDS = [
    "ingest",
    "ingest-near-duplicates",
    "classify",
    "classify-min-score",
    "evaluate",
    "evaluate-target-leakage-nan",
    "compare",
    "compare-unlabelled",
    "compare-promotion",
    "train",
    "train-refit-val-data",
    "train-mlflow",
    "tune",
    "tune-mlflow",
    "evaluate-without-intervals",
    "compare-without-intervals",
    "train-without-intervals",
]


@pytest.mark.parametrize(("model", "document"), DOCUMENTS, ids=IDS)
def test_a_dump_is_the_document_byte_for_byte(model: type[ResultModel], document: dict[str, Any]) -> None:
    result = model.model_validate(document)
    # json.dumps of the dump: metrics.json / results.json are written so (summary.json sorts its keys)
    assert json.dumps(result.model_dump(), indent=2) == json.dumps(document, indent=2)
    assert json.dumps(result.model_dump(mode="json"), indent=2) == json.dumps(document, indent=2)
    assert json_text(result) == json.dumps(document, indent=2, default=str)  # the CLI's --json
    # pydantic's own JSON: the same keys and values (NaN as JSON's NaN constant, as json.dumps writes it)
    assert json.dumps(json.loads(result.model_dump_json())) == json.dumps(document)


@pytest.mark.parametrize(("model", "document"), DOCUMENTS, ids=IDS)
def test_an_undeclared_key_is_refused(model: type[ResultModel], document: dict[str, Any]) -> None:
    with pytest.raises(pydantic.ValidationError, match="surprise"):
        model.model_validate({**document, "surprise": 1})


def test_a_missing_key_is_refused() -> None:
    document = samples.classify_summary()
    del document["rows_classified"]
    with pytest.raises(pydantic.ValidationError, match="rows_classified"):
        ClassifyResult.model_validate(document)


def test_keys_a_job_leaves_out_stay_out_and_its_nulls_stay_null() -> None:
    plain = ClassifyResult.model_validate(samples.classify_summary())
    assert plain.rows_abstained is None and "rows_abstained" not in plain.model_dump()
    assert plain.model_dump()["min_score"] is None  # summary.json always had min_score
    ingest = IngestResult.model_validate(samples.ingest_summary())
    assert "near_duplicates" not in ingest.model_dump()
    ingest.near_duplicates = IngestResult.model_validate(samples.ingest_summary(True)).near_duplicates
    assert ingest.model_dump() == samples.ingest_summary(near_duplicates=True)
    unlabelled = CompareResult.model_validate(samples.compare_doc(labelled=False))
    assert unlabelled.mcnemar_p is None and "mcnemar_p" not in unlabelled.model_dump_json()
    train = TrainResult.model_validate(samples.train_metrics(calibrate=False))
    assert train.model_dump()["calibration"] is None and "refit" not in train.model_dump()


def test_numbers_keep_their_type() -> None:
    """An int stays an int where a field takes both (``cpus_per_actor: 1`` is not written ``1.0``)."""
    summary = samples.classify_summary()
    as_float = {**summary, "actors": {**summary["actors"], "cpus_per_actor": 0.5}}
    assert ClassifyResult.model_validate(summary).model_dump()["actors"]["cpus_per_actor"] == 1
    assert isinstance(ClassifyResult.model_validate(summary).actors.cpus_per_actor, int)
    assert ClassifyResult.model_validate(as_float).actors.cpus_per_actor == 0.5


def test_the_summary_tables_render_from_the_models() -> None:
    from rich.console import Console

    from bm_ray.jobs.classify import summary_table as classify_table
    from bm_ray.jobs.compare import summary_table as compare_table

    console = Console(width=120, record=True)
    console.print(classify_table(ClassifyResult.model_validate(samples.classify_summary(min_score=0.5))))
    console.print(compare_table(CompareResult.model_validate(samples.compare_doc())))
    console.print(compare_table(CompareResult.model_validate(samples.compare_doc(labelled=False))))
    console.print(compare_table(CompareResult.model_validate(samples.compare_doc(promotion=True))))
    text = console.export_text()
    assert (
        "2 (top score < min_score 0.5)" in text and "McNemar" in text and "the corpus has no labels" in text
    )
    assert "promote champion" in text and "not promoted" in text
    # each accuracy and B − A with its 95% interval (from compare.json, not recomputed)
    assert "A 0.2500 (95% CI 0.0715–0.5907)" in text and "+0.6250 (95% CI +0.1250–+1.0000)" in text
    console = Console(width=120, record=True)
    console.print(compare_table(CompareResult.model_validate(samples.compare_doc(intervals=False))))
    assert "A 0.2500, B 0.8750" in console.export_text()  # an older compare.json: figures alone


def test_the_cli_summary_lines_carry_the_intervals() -> None:
    from bm_ray.cli.model import scores_line

    train = TrainResult.model_validate(samples.train_metrics())
    assert scores_line(train) == (
        "accuracy 0.750 (95% CI 0.301–0.954), macro-F1 0.700 (95% CI 0.200–1.000), "
        "ECE 0.1000 (95% CI 0.1500–0.5750)"
    )
    older = EvaluateResult.model_validate(samples.evaluate_metrics(intervals=False))
    assert scores_line(older) == "accuracy 0.750, macro-F1 0.700, ECE 0.1000"
    empty = EvaluateResult.model_validate(samples.evaluate_metrics(nan=True))
    assert scores_line(empty).endswith("ECE n/a")
