"""The int8 backend of the predictor engine: an ONNX Runtime session over a dynamically quantized graph.

Dynamic quantization scales each activation tensor by its range at run time, over the whole batch, so
a row's int8 scores depend slightly on the rows (and padding) it is batched with; fp32's do not. The
labels are what the gates hold to fp32's; scores move within the measured max probability difference.

Only the forward pass differs from fp32: :class:`~bm_ray.model.engine.Predictor` keeps its
tokenisation, length buckets, windows, window aggregation and calibration, and calls
:class:`OnnxForward` where the fp32 engine calls its compiled TF function (``ids, mask -> logits``).

The int8 model is built from a model directory once, on the first int8 load, and cached:

1. :func:`~bm_ray.model.onnx_graph.build_bert_graph` writes the fp32 graph from the Keras weights;
2. ONNX Runtime's transformers optimizer fuses it (``Attention``, ``SkipLayerNormalization``,
   ``BiasGelu``): the fused attention quantizes to ``QAttention``, one int8 kernel per layer instead
   of three int8 projections and the fp32 score matmuls between them;
3. :func:`onnxruntime.quantization.quantize_dynamic` quantizes every weight to int8 (symmetric,
   per output channel) and the activations to uint8 at run time (VNNI's u8·s8 dot product);
4. the quality gates (:func:`gate_report`) compare the int8 engine with the fp32 engine on held-out
   rows: a model that fails them is refused with the numbers (:class:`Int8GateError`) and nothing is
   cached, so it is never served silently.

The cache entry (:func:`int8_cache_dir`) is keyed by the sha256 of the model's weight files and
``labels.json`` and by :data:`RECIPE` and the onnx/onnxruntime versions, so a retrained or
recalibrated model, or another quantizer, never reuses a stale entry. It holds ``model.onnx`` and
``int8.json`` (recipe, versions, the gate report). A cached entry loads with onnxruntime and the
tokenizer only: no TensorFlow start-up.

A GPU does not use this path: int8 here pays through VNNI/AMX integer dot products on the CPU; on a GPU
the fp32 engine's ``auto`` precision (fp16) is the fast path (TensorRT int8 would be its analogue).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bm_ray.layout import LABELS_FILE, PREDICTIONS_FILE, WEIGHT_FILES
from bm_ray.model.calibration import expected_calibration_error
from bm_ray.model.registry import cache_root, sha256_file

INT8_MODEL_FILE = "model.onnx"
INT8_INFO_FILE = "int8.json"
RECIPE = {
    "graph": "bm-ray onnx_graph v1",
    "fusions": "onnxruntime.transformers bert, opt_level 0",
    "quantization": "quantize_dynamic QInt8 weights, per channel; uint8 activations",
}
"""What the int8 model is made with; part of the cache key (change it and every entry is rebuilt).
Per-channel, not per-tensor: on 1,000 held-out AG News rows (a fine-tuned MiniLM-L6) per-tensor weights
agreed with fp32 on 98.5% of the labels (max probability difference 0.31), under the 99% gate; per-channel
on 99.2% (0.15); its speed was within the noise of per-tensor on the shared 2-core machine."""

MIN_AGREEMENT = 0.99
"""Label agreement with the fp32 engine at least (issue #30's gate)."""
MAX_ACCURACY_DROP = 0.005
"""Accuracy at most this far below fp32's, where the gate rows have labels."""
MAX_ECE_RISE = 0.005
"""ECE at most this far above fp32's, where the gate rows have labels."""
MIN_LABELLED_GATE_ROWS = 1000
"""Labelled rows from which the accuracy and ECE gates are enforced (below, they are reported only): on
n rows one row moves accuracy by 100/n points, so on a model's 250 validation rows a single row would
exceed the 0.5-point gate. Agreement needs no labels and is enforced on any number of rows."""
GATE_ROWS = 2000
"""Gate rows used at most (the first ones): enough for a 1% agreement gate, seconds of fp32 forward."""
SAMPLE_CORPUS = Path(__file__).resolve().parents[1] / "data" / "sample_news.jsonl"
"""The gate rows of last resort: the bundled news sample (no labels of the model's, so agreement only)."""


class Int8GateError(ValueError):
    """The int8 model disagrees with the fp32 engine beyond the gates; the message has the numbers."""


def require_onnxruntime() -> None:
    """Fail early with the install hint when the ``bm-ray[int8]`` extra is missing."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise RuntimeError(
            f"precision int8 needs onnxruntime and onnx ({exc.name} is not installed): "
            "pip install -c constraints.txt 'bm-ray[int8]'"
        ) from None


def versions() -> dict[str, str]:
    """The onnx and onnxruntime versions an int8 model was made with (part of the cache key)."""
    import onnx
    import onnxruntime

    return {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def model_digest(model_dir: str | Path) -> str:
    """sha256 over the weight files and ``labels.json`` of a model directory (what the int8 model and
    its gate report depend on: the weights and the calibration the gates are measured through)."""
    digest = hashlib.sha256()
    for name in (*WEIGHT_FILES, LABELS_FILE):
        path = Path(model_dir) / name
        if path.exists():
            digest.update(f"{name}:{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def int8_cache_dir(model_dir: str | Path, cache_dir: str | Path | None = None) -> Path:
    """The cache entry of the int8 model of `model_dir` (in the bm-ray model cache, not beside the
    model: model directories are often read-only mounts or cached copies of remote ones)."""
    key = json.dumps({"model": model_digest(model_dir), "recipe": RECIPE, **versions()}, sort_keys=True)
    name = hashlib.sha256(key.encode()).hexdigest()[:24]
    return cache_root(cache_dir) / "int8" / name


class OnnxForward:
    """``(input_ids, attention_mask) -> logits`` through an ONNX Runtime CPU session.

    `num_threads` sizes the intra-op pool (the actor's or replica's CPU budget, as TF's pools are
    pinned for fp32); ops run sequentially (one BERT layer feeds the next: no inter-op parallelism to use).
    """

    def __init__(self, model: str | Path | bytes, num_threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if num_threads:
            options.intra_op_num_threads = int(num_threads)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        source = model if isinstance(model, bytes) else str(model)
        self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        feeds = {
            "input_ids": np.asarray(input_ids, np.int32),
            "attention_mask": np.asarray(attention_mask, np.int32),
        }
        return self.session.run(["logits"], feeds)[0]


def fused_fp32_graph(model: Any) -> Any:
    """The fused fp32 ``onnx.ModelProto`` of a loaded Keras classifier (graph from its weights, then
    the optimizer's BERT fusions)."""
    import onnx
    from onnxruntime.transformers import optimizer

    from bm_ray.model.onnx_graph import bert_weights, build_bert_graph

    shape, weights = bert_weights(model)
    proto = build_bert_graph(shape, weights)
    onnx.checker.check_model(proto)
    # Its one warning says the producer is not PyTorch; the fusions it reports are what matter.
    opt_logger = logging.getLogger("onnxruntime.transformers.optimizer")
    level = opt_logger.level
    opt_logger.setLevel(logging.ERROR)
    try:
        fused = optimizer.optimize_model(
            proto, model_type="bert", num_heads=shape.heads, hidden_size=shape.hidden, opt_level=0
        )
    finally:
        opt_logger.setLevel(level)
    fusions = fused.get_fused_operator_statistics()
    if fusions.get("Attention", 0) != shape.layers:
        # Unfused attention still quantizes and runs, only slower: worth a warning, not a refusal.
        logging.getLogger(__name__).warning(
            "int8: attention fused in %d of %d layers", fusions.get("Attention", 0), shape.layers
        )
    model_proto = fused.model
    model_proto.producer_name = "bm-ray"
    # The fused ops live in the com.microsoft domain; the optimizer declares it only when saving to a file.
    if not any(opset.domain == "com.microsoft" for opset in model_proto.opset_import):
        model_proto.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    return model_proto


def quantize_int8(fp32: Any, out_path: str | Path) -> Path:
    """Quantize the fp32 graph `fp32` (ModelProto) into `out_path` by :data:`RECIPE`."""
    import tempfile

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="bm-ray-int8-") as work:
        source = Path(work) / "fp32.onnx"
        onnx.save(fp32, str(source))
        quantize_dynamic(
            str(source),
            str(out_path),
            weight_type=QuantType.QInt8,
            per_channel=True,
            # The fused contrib ops have no ONNX shape inference: their outputs are float32.
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    return Path(out_path)


@dataclass
class GateRows:
    """Held-out texts the gates are measured on, their label ids where known, and where they came from."""

    texts: list[str]
    label_ids: np.ndarray | None = None
    source: str = "caller"


def model_gate_rows(model_dir: str | Path, label_index: dict[str, int]) -> GateRows:
    """The gate rows a model directory carries: training's validation predictions (``predictions.parquet``:
    held out from training, with their labels), else the bundled news sample (unlabelled)."""
    path = Path(model_dir) / PREDICTIONS_FILE
    if path.exists():
        import pyarrow.parquet as pq

        table = pq.read_table(path).to_pydict()
        texts = [str(t) for t in table.get("text", []) if t]
        if texts:
            labels = [label_index.get(str(value)) for value in table.get("label", [])]
            known = len(labels) == len(texts) and all(label is not None for label in labels)
            ids = np.asarray(labels, np.int64) if known else None
            return GateRows(texts[:GATE_ROWS], None if ids is None else ids[:GATE_ROWS], PREDICTIONS_FILE)
    return GateRows(sample_texts()[:GATE_ROWS], None, "bundled sample")


def sample_texts() -> list[str]:
    """Title and body of each well-formed row of the bundled sample corpus (it has broken rows on purpose)."""
    texts = []
    for line in SAMPLE_CORPUS.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        parts = [row.get(key) for key in ("title", "body")] if isinstance(row, dict) else []
        if all(isinstance(part, str) and part.strip() for part in parts) and parts:
            texts.append("\n".join(parts))  # the corpus readers' default text_separator
    return texts


@dataclass
class GateReport:
    """The int8 engine against the fp32 engine on the gate rows (calibrated, window-aggregated scores)."""

    rows: int
    source: str
    agreement: float
    max_prob_diff: float
    accuracy_fp32: float | None = None
    accuracy_int8: float | None = None
    ece_fp32: float | None = None
    ece_int8: float | None = None
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """True when every gate holds."""
        return not self.failures

    def to_json(self) -> dict[str, Any]:
        """JSON-able form (``int8.json``'s ``gates``)."""
        return {**asdict(self), "passed": self.passed}

    def summary(self) -> str:
        """One line with every measured number."""
        parts = [f"label agreement {self.agreement:.4f} (gate ≥ {MIN_AGREEMENT})"]
        if self.accuracy_fp32 is not None:
            parts.append(
                f"accuracy {self.accuracy_int8:.4f} vs fp32 {self.accuracy_fp32:.4f} (gate: ≤ {MAX_ACCURACY_DROP} lower)"
            )
            parts.append(
                f"ECE {self.ece_int8:.4f} vs fp32 {self.ece_fp32:.4f} (gate: ≤ {MAX_ECE_RISE} higher)"
            )
            if self.rows < MIN_LABELLED_GATE_ROWS:
                parts.append(f"accuracy and ECE not gated under {MIN_LABELLED_GATE_ROWS} labelled rows")
        parts.append(f"max probability difference {self.max_prob_diff:.4f}")
        return f"{self.rows} rows ({self.source}): " + "; ".join(parts)


def gate_report(fp32_probs: np.ndarray, int8_probs: np.ndarray, rows: GateRows) -> GateReport:
    """Check issue #30's gates: agreement always; accuracy and ECE where the rows have labels."""
    if not len(fp32_probs):
        raise ValueError("int8 quality gates: no gate rows (give held-out texts)")
    top32, top8 = fp32_probs.argmax(axis=1), int8_probs.argmax(axis=1)
    report = GateReport(
        rows=len(fp32_probs),
        source=rows.source,
        agreement=float((top32 == top8).mean()),
        max_prob_diff=float(np.abs(fp32_probs - int8_probs).max()),
    )
    if report.agreement < MIN_AGREEMENT:
        report.failures.append("agreement")
    if rows.label_ids is not None:
        report.accuracy_fp32 = float((top32 == rows.label_ids).mean())
        report.accuracy_int8 = float((top8 == rows.label_ids).mean())
        report.ece_fp32 = expected_calibration_error(fp32_probs, rows.label_ids)
        report.ece_int8 = expected_calibration_error(int8_probs, rows.label_ids)
        enforced = len(rows.label_ids) >= MIN_LABELLED_GATE_ROWS
        # A small tolerance: a difference of exactly the gate (float rounding aside) passes.
        if enforced and report.accuracy_fp32 - report.accuracy_int8 > MAX_ACCURACY_DROP + 1e-9:
            report.failures.append("accuracy")
        if (
            enforced
            and not math.isnan(report.ece_int8)
            and report.ece_int8 - report.ece_fp32 > MAX_ECE_RISE + 1e-9
        ):
            report.failures.append("ece")
    return report


def refuse(report: GateReport, model_ref: str) -> Int8GateError:
    """The error for a model whose int8 engine fails the gates."""
    return Int8GateError(
        f"model {model_ref}: the int8 engine fails its quality gates ({', '.join(report.failures)}): "
        f"{report.summary()}. It is not served; use precision fp32 for this model."
    )


def write_info(entry: Path, report: GateReport, seconds: dict[str, float]) -> None:
    """``int8.json`` of a cache entry: the recipe, the versions, the gate report and the build times."""
    info = {"recipe": RECIPE, **versions(), "gates": report.to_json(), "build_seconds": seconds}
    (entry / INT8_INFO_FILE).write_text(json.dumps(info, indent=2), encoding="utf-8")


def read_info(entry: Path) -> dict[str, Any]:
    """``int8.json`` of a cache entry."""
    return json.loads((entry / INT8_INFO_FILE).read_text(encoding="utf-8"))


Quantizer = Callable[[Any, Path], Path]
"""``(fused fp32 ModelProto, out path) -> out path``: :func:`quantize_int8`, or a test's broken one."""


def labelled_gate_rows(
    texts: Sequence[str], labels: Sequence[str] | None, label_index: dict[str, int]
) -> GateRows:
    """Caller-provided gate rows (labels, where given, as label names or raw values)."""
    ids = None
    if labels is not None:
        looked_up = [label_index.get(str(label)) for label in labels]
        if len(looked_up) == len(texts) and all(i is not None for i in looked_up):
            ids = np.asarray(looked_up, np.int64)
    return GateRows(list(texts)[:GATE_ROWS], None if ids is None else ids[:GATE_ROWS], "caller")
