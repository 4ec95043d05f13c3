"""`bm-ray evaluate`: metrics and plots of a model on any labelled corpus, streamed through the engine.

Selective prediction: the output holds the accuracy of the kept rows against their coverage for every
threshold (``risk_coverage.json`` + ``.png``, :func:`bm_ray.model.metrics.threshold_curve`); ``min_score``
marks the rows below it as abstained (``predictions.parquet``) and reports their count and the accuracy
of the rest; ``target_accuracy`` reports the smallest threshold whose kept rows reach it, or that none does.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bm_ray.jobs.scoring import PredictionLog, corpus_batches, evaluate_batches, write_report
from bm_ray.model.engine import Predictor
from bm_ray.report import try_build_report
from bm_ray.results import EvaluateResult, LeakageReport
from bm_ray.specs import EvaluateSpec, IngestSpec
from bm_ray.storage import is_remote, redact, redact_uri, upload_dir


def evaluate(spec: EvaluateSpec) -> EvaluateResult:
    """Run the evaluation job: ingest (rejects counted), predict with the engine, write metrics and plots.

    The report (metrics.json) holds, beyond :func:`evaluate_batches`'s, the selective-prediction entries
    of :meth:`PredictionLog.selective` (min_score, rows_abstained, coverage, accuracy_answered,
    target_accuracy) and the interval of accuracy_answered among the ``intervals``.
    """
    from bm_ray.corpus import read_corpus
    from bm_ray.runtime.ray_init import init_ray

    started = time.time()
    init_ray()
    predictor = Predictor.load(
        spec.model, batch_size=spec.batch_size, precision=spec.precision, long_text=spec.long_text_options()
    )
    ds, info = read_corpus(spec.data)
    ingest_rejects: Counter[str] = Counter()
    log = PredictionLog(spec.min_score)
    with info:
        report = evaluate_batches(predictor, corpus_batches(ds, ingest_rejects), log)
    for reason, count in ingest_rejects.items():
        report["rejected_by_reason"][reason] = report["rejected_by_reason"].get(reason, 0) + count
    report["rows_rejected"] += sum(ingest_rejects.values())
    selective, curve = log.selective(spec.target_accuracy)
    report.update(selective)
    report["intervals"].accuracy_answered = log.answered_interval()
    report.update(
        model={
            "name": predictor.info.name,
            "version": predictor.info.version,
            "path": redact_uri(spec.model),
            "temperature": predictor.info.temperature,
            "top_label_calibration": None
            if predictor.info.top_label_calibration is None
            else predictor.info.top_label_calibration.to_json(),
        },
        data=redact(spec.data.input),
        long_text=spec.long_text_options().model_dump(),
        elapsed_s=round(time.time() - started, 2),
    )
    if spec.train_data is not None:
        report["leakage"] = corpus_leakage(spec.train_data, spec.data, spec.duplicate_threshold)
    result = EvaluateResult.model_validate(report)
    if spec.output:
        title = f"{predictor.info.name} on {Path(redact_uri(spec.data.input[0]).split('?')[0]).name}"
        if is_remote(spec.output):
            with tempfile.TemporaryDirectory(prefix="bm-ray-eval-") as local:
                write_report(result, local, title=title, log=log, curve=curve)
                try_build_report(local)
                upload_dir(local, spec.output)
        else:
            write_report(result, spec.output, title=title, log=log, curve=curve)
            try_build_report(spec.output)
    return result


def corpus_leakage(train: IngestSpec, data: IngestSpec, threshold: float) -> LeakageReport:
    """Leakage report (see :func:`bm_ray.corpus.neardup.leakage_report`) of a corpus's ok rows against a
    training corpus's ok rows; prints the warning when above 1%."""
    from bm_ray.corpus import ok_rows, read_corpus
    from bm_ray.corpus.neardup import leakage_report, leakage_warning

    (train_ds, train_info), (eval_ds, eval_info) = read_corpus(train), read_corpus(data)
    with train_info, eval_info:
        report = leakage_report(
            ok_rows(train_ds, ["id", "text"]), ok_rows(eval_ds, ["id", "text"]), threshold
        )
    warning = leakage_warning(report)
    if warning:
        print(f"[bm-ray] {warning}", file=sys.stderr, flush=True)
    return LeakageReport.model_validate(report)
