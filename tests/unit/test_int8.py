"""The int8 backend (issue #30): the ONNX graph is the TF forward pass, the int8 engine shares the fp32
engine's preprocessing and calibration, and its quality gates refuse a broken quantization."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tiny_model import make_tiny_model

pytest.importorskip("onnxruntime", reason="the bm-ray[int8] extra is not installed")

from bm_ray.model import int8
from bm_ray.model.engine import Predictor, load_int8
from bm_ray.model.preprocess import pad_batch
from bm_ray.model.registry import READY_MARKER

LABELS = ["World", "Sports", "Business", "Sci/Tech"]
SAMPLE = int8.sample_texts()
DECISIVE_MARGIN = 0.3
"""Gate rows are the texts the tiny model decides by at least this much (top score minus runner-up)."""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: str) -> str:
    """A tiny random BERT whose head gives the sample texts varied labels (else every text gets one label
    and agreement would be 1.0 whatever the quantization does)."""
    out = tmp_path_factory.mktemp("int8-model") / "tiny"
    return str(
        make_tiny_model(out, LABELS, tokenizer_dir, hidden=64, spread_on=SAMPLE[:80], initializer_range=0.2)
    )


@pytest.fixture(scope="module")
def fp32(tiny: str) -> Predictor:
    return Predictor.load(tiny, batch_size=16, precision="fp32")


@pytest.fixture(scope="module")
def gate_texts(fp32: Predictor) -> list[str]:
    """The sample texts the fp32 tiny model decides clearly. A random model, unlike a trained one, puts
    many texts near a tie, where int8's rounding flips labels (measured: 86-94% agreement on all texts,
    max probability difference 0.11-0.47 by init range); rows decided by 0.3 or more agree whatever the
    rounding, so a correct quantization must pass on them and a broken one still fails."""
    top2 = np.sort(fp32.predict_proba(SAMPLE), axis=1)[:, -2:]
    texts = [
        text for text, (second, first) in zip(SAMPLE, top2, strict=True) if first - second >= DECISIVE_MARGIN
    ]
    labels = fp32.predict_proba(texts).argmax(axis=1)
    assert len(texts) >= 40 and len(set(labels)) > 1, (len(texts), set(labels))
    return texts


def test_onnx_graph_is_the_tf_forward_pass(fp32: Predictor) -> None:
    from bm_ray.model.onnx_graph import bert_weights, build_bert_graph

    shape, weights = bert_weights(fp32.model)
    ids, mask = pad_batch(fp32.encoder.encode(SAMPLE[:16]), fp32.encoder.pad_id)  # ragged: padding is masked
    reference = np.asarray(fp32._forward(ids, mask))
    # Relative to the logits' size: the spread head multiplies the pooled output's tiny variation
    # (and float rounding with it) by a large factor; on the real MiniLM the difference is ~1e-7.
    tolerance = 1e-3 * np.abs(reference).max()
    for graph in (build_bert_graph(shape, weights), int8.fused_fp32_graph(fp32.model)):
        logits = int8.OnnxForward(graph.SerializeToString())(ids, mask)
        np.testing.assert_allclose(logits, reference, atol=tolerance, rtol=0)


def test_int8_engine_passes_its_gates_once_then_loads_from_the_cache(
    tiny: str, fp32: Predictor, gate_texts: list[str], tmp_path: Path
) -> None:
    predictor = load_int8(tiny, batch_size=16, gate_texts=gate_texts, cache_dir=tmp_path)
    gates = predictor.int8_info["gates"]
    assert gates["passed"] and gates["rows"] == len(gate_texts) and gates["agreement"] >= int8.MIN_AGREEMENT

    # Same tokenisation, windows and aggregation as fp32: a long text reads as the same windows.
    article = " ".join(SAMPLE[:30])
    ours, theirs = predictor.score_texts([article, SAMPLE[0]]), fp32.score_texts([article, SAMPLE[0]])
    assert list(ours.windows) == list(theirs.windows) and ours.windows[0] > 1
    np.testing.assert_allclose(ours.probs.sum(axis=1), 1.0, atol=1e-5)

    def must_not_rebuild(*_: object) -> None:
        raise AssertionError("a cached int8 model was rebuilt")

    # The same batch size: dynamic quantization scales activations per batch, so batching moves scores.
    again = load_int8(
        tiny, batch_size=16, gate_texts=gate_texts, quantizer=must_not_rebuild, cache_dir=tmp_path
    )
    np.testing.assert_allclose(
        again.predict_proba(gate_texts), predictor.predict_proba(gate_texts), atol=1e-6
    )


def test_broken_quantization_is_refused_with_the_numbers(
    tiny: str, gate_texts: list[str], tmp_path: Path
) -> None:
    """A quantizer that zeroes the head's int8 weights gives a model that answers every text with the
    head's bias alone: it disagrees with fp32, so it is refused with the numbers and never cached."""
    import onnx
    from onnx import numpy_helper

    def broken(fp32_graph: object, out: Path) -> Path:
        int8.quantize_int8(fp32_graph, out)
        model = onnx.load(str(out))
        (kernel,) = [t for t in model.graph.initializer if t.name == "classifier.kernel_quantized"]
        kernel.CopyFrom(numpy_helper.from_array(np.zeros_like(numpy_helper.to_array(kernel)), kernel.name))
        onnx.save(model, str(out))
        return out

    with pytest.raises(int8.Int8GateError, match=r"agreement 0\.\d+ \(gate ≥ 0\.99\)"):
        load_int8(tiny, gate_texts=gate_texts, quantizer=broken, cache_dir=tmp_path)
    assert not any(path.joinpath(READY_MARKER).exists() for path in (tmp_path / "int8").glob("*"))


def test_gates_on_labelled_rows_check_accuracy_and_ece() -> None:
    labels = np.array([0, 1, 0, 1] * 250)
    fp32 = np.where(np.eye(2)[labels] > 0, 0.9, 0.1)
    rows = int8.GateRows(["t"] * len(labels), labels, "test")
    assert int8.gate_report(fp32, fp32.copy(), rows).passed
    hesitant = np.where(np.eye(2)[labels] > 0, 0.6, 0.4)  # same labels, all right at 0.6: ECE 0.4 vs 0.1
    report = int8.gate_report(fp32, hesitant, rows)
    assert report.failures == ["ece"] and report.agreement == 1.0
    flipped = fp32.copy()
    flipped[:15] = flipped[:15, ::-1]  # 15 of 1,000 rows flip: agreement 0.985, accuracy 1.5 points lower
    report = int8.gate_report(fp32, flipped, rows)
    assert report.failures[:2] == ["agreement", "accuracy"]
    assert "agreement 0.9850" in str(int8.refuse(report, "m"))
    few = int8.GateRows(["t"] * 200, labels[:200], "test")  # one row is 0.5 points: accuracy reported only
    report = int8.gate_report(fp32[:200], flipped[:200], few)
    assert report.failures == ["agreement"] and report.accuracy_int8 < report.accuracy_fp32
    assert "not gated under 1000" in report.summary()


def test_onnx_export_has_the_engines_calibrated_scores(tiny: str, tmp_path: Path) -> None:
    """`bm-ray export --format onnx`: model.onnx answers each window with the engine's scores, the
    temperature and the top-label map included (here set on a copy of the tiny model)."""
    import shutil
    from dataclasses import replace

    from bm_ray.jobs.export import export
    from bm_ray.model.calibration import TopLabelMap
    from bm_ray.model.registry import read_model_info, write_model_info

    model = tmp_path / "calibrated"
    shutil.copytree(tiny, model)
    info = replace(read_model_info(model), temperature=0.7, top_label_calibration=TopLabelMap(0.9, 1.2, -0.3))
    write_model_info(info, model)
    result = export(str(model), str(tmp_path / "out"), "onnx")
    assert result["format"] == "onnx" and (tmp_path / "out" / "model.onnx").exists()

    engine = Predictor.load(str(model), batch_size=16, precision="fp32")
    texts = SAMPLE[:12]
    ids, mask = pad_batch(engine.encoder.encode(texts), engine.encoder.pad_id)
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "out" / "model.onnx"), providers=["CPUExecutionProvider"])
    scores, label_id, label = session.run(
        ["scores", "label_id", "label"], {"input_ids": ids, "attention_mask": mask, "token_type_ids": 0 * ids}
    )
    expected = engine.predict_proba(texts)
    np.testing.assert_allclose(scores, expected, atol=2e-3)  # fp32 rounding through the spread head
    assert list(label_id) == list(expected.argmax(axis=1))
    assert [str(name) for name in label] == [LABELS[i] for i in label_id]
