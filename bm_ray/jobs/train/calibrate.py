"""Calibration of a trained model on its validation rows (``calibrate: true``, the default)."""

from __future__ import annotations

import functools
import logging
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


def calibrate_model(predictor: Any, val_rows: Any, model_dir: Path) -> dict[str, Any]:
    """Fit the calibration on the validation rows (temperature, then the top-label map when there are
    :data:`~bm_ray.model.calibration.TOP_LABEL_MIN_ROWS` rows or more), store it in `model_dir`'s
    labels.json and in `predictor`; returns the fit's report (ECE and log-loss before and after).

    The logits come through the engine the model is served with (same tokenisation and windows),
    and both stages are fitted on the aggregated probabilities it answers with.
    """
    from bm_ray.jobs.scoring import corpus_batches
    from bm_ray.model.calibration import (
        TOP_LABEL_MIN_ROWS,
        calibration_report,
        fit_temperature,
        fit_top_label_map,
        temperature_softmax,
    )
    from bm_ray.model.registry import write_model_info

    to_name = predictor.info.label_lookup()
    index = {label: i for i, label in enumerate(predictor.labels)}
    logits, counts, label_ids = [], [], []
    for texts, labels, _ in corpus_batches(val_rows, Counter()):
        unit_logits, unit_counts = predictor.unit_logits(texts)
        logits.append(unit_logits)
        counts.append(unit_counts)
        label_ids.extend(index[to_name[label]] for label in labels)
    all_logits = np.concatenate(logits) if logits else np.zeros((0, len(index)), np.float32)
    all_counts = np.concatenate(counts) if counts else np.zeros(0, np.int64)
    ids = np.asarray(label_ids, dtype=np.int64)
    combine = functools.partial(predictor.combine_windows, counts=all_counts)
    temperature = fit_temperature(all_logits, ids, combine)
    top_label = None
    if len(ids) >= TOP_LABEL_MIN_ROWS:
        tempered = combine(temperature_softmax(all_logits, temperature))
        top_label = fit_top_label_map(tempered.max(axis=1), tempered.argmax(axis=1) == ids)
    info = replace(predictor.info, temperature=temperature, top_label_calibration=top_label)
    write_model_info(info, model_dir)
    predictor.info = info
    report = calibration_report(all_logits, ids, temperature, combine, top_label)
    if top_label is None:
        report["note"] = (
            f"top-label map not fitted: {len(ids)} validation rows, it needs {TOP_LABEL_MIN_ROWS} "
            "(--val-fraction or --val-data give more); the temperature alone calibrates the scores"
            if len(ids) < TOP_LABEL_MIN_ROWS
            else "top-label map not fitted: the validation scores do not rank right above wrong rows"
        )
    logger.info(
        "calibration: temperature %.3f, top-label map %s, validation ECE %.4f -> %.4f, log-loss %.4f -> %.4f",
        temperature,
        "fitted" if top_label else "not fitted",
        report["before"]["ece"],
        report["after"]["ece"],
        report["before"]["log_loss"],
        report["after"]["log_loss"],
    )
    return report
