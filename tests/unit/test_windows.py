"""Long texts read whole: window cutting, token-budget batches, aggregation, truncate parity, outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from tiny_model import make_tiny_model

from bm_ray.bench import windows as bench_windows
from bm_ray.jobs.classify import classify
from bm_ray.jobs.scoring import PredictionLog, evaluate_batches
from bm_ray.model.engine import Predictor, aggregate_windows, window_confidence
from bm_ray.model.preprocess import TextEncoder, length_batches, padded_length, window_starts
from bm_ray.specs import ClassifySpec, IngestSpec, LongTextOptions

LABELS = ["x", "y", "z"]
MAX_LENGTH = 12
"""Encoder window of the tokenizer-level tests: 10 content tokens + [CLS]/[SEP]."""


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: str) -> str:
    """A tiny random BERT classifier (max_length 64) with the real MiniLM tokenizer."""
    return str(make_tiny_model(tmp_path_factory.mktemp("model") / "tiny", LABELS, tokenizer_dir))


@pytest.fixture(scope="module")
def encoder(tokenizer_dir: str) -> TextEncoder:
    """The real MiniLM tokenizer with a 12-token window."""
    return TextEncoder.from_dir(tokenizer_dir, MAX_LENGTH)


def words_of(encoder: TextEncoder, n: int) -> tuple[str, list[int]]:
    """A text of `n` distinct whole-word tokens, and its token ids (checked to tokenise one word = one id)."""
    vocab = encoder.tokenizer.convert_ids_to_tokens(list(range(3000, 6000)))
    words = [w for w in vocab if w.isalpha() and w.isascii()][:n]
    text = " ".join(words)
    ids = encoder.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == n
    return text, ids


def test_window_starts_counts_are_exact() -> None:
    # 1 + ceil((n - content) / stride) windows, the last one ending at the text's end
    assert window_starts(0, 10, 5) == [0]
    assert window_starts(10, 10, 5) == [0]
    assert window_starts(11, 10, 5) == [0, 1]
    assert window_starts(30, 10, 5) == [0, 5, 10, 15, 20]
    assert window_starts(31, 10, 5) == [0, 5, 10, 15, 20, 21]
    assert window_starts(31, 10, 10) == [0, 10, 20, 21]
    assert len(window_starts(5000, 126, 63)) == 1 + -(-(5000 - 126) // 63)


def test_encode_windows_cuts_every_token_with_special_tokens(encoder: TextEncoder) -> None:
    text, ids = words_of(encoder, 31)
    windows = encoder.encode_windows([text], stride=5)
    assert windows.counts.tolist() == [6] and windows.capped.tolist() == [False]
    cls_id, sep_id = encoder.tokenizer.cls_token_id, encoder.tokenizer.sep_token_id
    for seq, start in zip(windows.sequences, [0, 5, 10, 15, 20, 21], strict=True):
        assert seq.tolist() == [cls_id, *ids[start : start + 10], sep_id]
    # default stride: half the 10 content tokens
    assert encoder.encode_windows([text]).counts.tolist() == [6]


def test_short_text_window_is_the_truncate_encoding(encoder: TextEncoder) -> None:
    texts = ["markets rally", "", "central bank signals pause"]
    windows = encoder.encode_windows(texts)
    assert windows.counts.tolist() == [1, 1, 1]
    assert [s.tolist() for s in windows.sequences] == [s.tolist() for s in encoder.encode(texts)]


def test_windows_cap_is_counted_not_silent(encoder: TextEncoder) -> None:
    long_text, _ = words_of(encoder, 31)
    windows = encoder.encode_windows([long_text, "short"], stride=5, max_windows=3)
    assert windows.counts.tolist() == [3, 1]
    assert windows.capped.tolist() == [True, False]
    assert len(windows.sequences) == 4


def test_stride_longer_than_window_is_refused(encoder: TextEncoder) -> None:
    with pytest.raises(ValueError, match="window_stride 11 is longer than a window"):
        encoder.encode_windows(["text"], stride=11)


def test_token_budget_batches_cap_tokens_and_cover_each_row_once() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 300, size=2000)
    lengths[17] = 5000  # one row alone over the budget: a batch of its own
    batches = length_batches(lengths, batch_size=32, window=500, max_tokens=1024)
    seen = np.concatenate(batches)
    assert sorted(seen.tolist()) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) <= 32
        cost = len(batch) * padded_length(lengths[batch].max())
        assert cost <= 1024 or len(batch) == 1, (batch, cost)
    # the budget binds: without it the same rows make fewer, fuller batches
    assert len(batches) > len(length_batches(lengths, batch_size=32, window=500))


def test_engine_forward_passes_stay_under_the_token_budget(tiny_model: str) -> None:
    options = LongTextOptions(max_batch_tokens=256)
    predictor = Predictor.load(tiny_model, batch_size=32, precision="fp32", long_text=options)
    shapes: list[tuple[int, int]] = []
    forward = predictor._forward

    def recording_forward(ids, mask):  # the real compiled forward, shapes recorded
        shapes.append(tuple(ids.shape))
        return forward(ids, mask)

    predictor._forward = recording_forward
    article = " ".join(["markets rally as central bank signals pause"] * 700)  # ≈ 5,000 tokens
    scored = predictor.score_texts([article, "tech earnings"])
    assert scored.windows[1] == 1 and scored.windows[0] > 64 / 2
    assert sum(rows for rows, _ in shapes) == int(scored.windows.sum())
    assert all(rows * width <= 256 for rows, width in shapes), shapes


def per_window_reference(predictor: Predictor, text: str) -> np.ndarray:
    """Each window of `text` run alone, unpadded, through the compiled forward pass."""
    options = predictor.long_text
    windows = predictor.encoder.encode_windows([text], options.window_stride, options.max_windows)
    return np.concatenate([predictor.predict_tokens([seq]) for seq in windows.sequences])


def test_truncate_mode_is_todays_path_and_short_texts_agree_across_modes(tiny_model: str) -> None:
    texts = ["markets rally", "central bank signals pause " * 20 + "tech earnings rally " * 40, "bank"]
    options = LongTextOptions(long_text="truncate")
    truncate = Predictor.load(tiny_model, batch_size=2, precision="fp32", long_text=options)
    got = truncate.score_texts(texts)
    # today's path: the truncating encoder and one forward pass per text
    reference = np.concatenate([truncate.predict_tokens([s]) for s in truncate.encoder.encode(texts)])
    assert np.allclose(got.probs, reference, atol=1e-5)
    assert got.windows.tolist() == [1, 1, 1]

    window = Predictor.load(tiny_model, batch_size=2, precision="fp32")
    windowed = window.score_texts(texts)
    assert windowed.windows.tolist()[0::2] == [1, 1] and windowed.windows[1] > 1
    assert np.allclose(windowed.probs[[0, 2]], got.probs[[0, 2]], atol=1e-5)
    # the long text was read beyond its first window: its prediction is the aggregate of all windows
    expected = aggregate_windows(per_window_reference(window, texts[1]), windowed.windows[1:2], "confidence")
    assert np.allclose(windowed.probs[1], expected[0], atol=1e-5)


def test_decisive_window_beyond_the_first_decides_the_label() -> None:
    # A page: five boilerplate windows the model finds flat-ish (leaning to label 0), then the
    # article's window, confidently label 2. The mean lets the boilerplate win; confidence does not.
    boilerplate = [0.40, 0.30, 0.20, 0.10]
    article = [0.02, 0.02, 0.94, 0.02]
    probs = np.array([boilerplate] * 5 + [article] + [[0.1, 0.8, 0.05, 0.05]], dtype=np.float32)
    counts = np.array([6, 1])
    confidence = aggregate_windows(probs, counts, "confidence")
    mean = aggregate_windows(probs, counts, "mean")
    best = aggregate_windows(probs, counts, "max")
    assert confidence.argmax(axis=1).tolist() == [2, 1]
    assert mean.argmax(axis=1).tolist() == [0, 1]
    assert best.argmax(axis=1).tolist() == [2, 1]
    assert np.allclose(best[0], article) and np.allclose(best[1], probs[6])
    assert np.allclose(confidence.sum(axis=1), 1.0, atol=1e-6)
    weights = window_confidence(probs[:6])
    assert np.allclose(confidence[0], (probs[:6] * weights[:, None]).sum(0) / weights.sum(), atol=1e-6)


def test_uniform_windows_fall_back_to_the_mean_and_counts_must_match() -> None:
    flat = np.full((3, 4), 0.25, dtype=np.float32)
    assert window_confidence(flat) == pytest.approx([0.0, 0.0, 0.0], abs=1e-9)
    assert np.allclose(aggregate_windows(flat, np.array([3]), "confidence"), 0.25)
    with pytest.raises(ValueError, match="window counts sum to 2 but 3"):
        aggregate_windows(flat, np.array([2]), "mean")


def test_evaluate_predictions_log_has_windows(tmp_path: Path, tiny_model: str) -> None:
    predictor = Predictor.load(tiny_model, batch_size=4, precision="fp32")
    texts = ["tech earnings", "central bank signals pause " * 60]
    log = PredictionLog()
    report = evaluate_batches(predictor, [(texts, ["x", "y"], ["a", "b"])], log)
    windows = predictor.score_texts(texts).windows.tolist()
    assert windows[0] == 1 and windows[1] > 1
    assert report["windows"] == sum(windows) and report["rows_windows_capped"] == 0
    table = pq.read_table(log.write(tmp_path / "predictions.parquet"))
    assert table.column("windows").to_pylist() == windows


def test_classify_writes_windows_per_row(ray_local, tmp_path: Path, tiny_model: str) -> None:
    texts = {"short": "tech earnings rally", "long": "markets rally as central bank signals pause " * 80}
    corpus = tmp_path / "pages.jsonl"
    corpus.write_text("".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in texts.items()))
    out = tmp_path / "out"
    spec = ClassifySpec(
        model=tiny_model, input=IngestSpec(input=[str(corpus)]), output=str(out), actors=1, max_windows=4
    )
    summary = classify(spec)

    engine = Predictor.load(tiny_model, precision="fp32", long_text=spec.long_text_options())
    expected = engine.score_texts(list(texts.values()))
    assert expected.windows.tolist() == [1, 4] and expected.capped.tolist() == [False, True]
    table = pq.read_table(out / "predictions")
    got = dict(zip(table.column("id").to_pylist(), table.column("windows").to_pylist(), strict=True))
    assert got == {"short": 1, "long": 4}
    assert summary.windows == 5 and summary.rows_windows_capped == 1
    assert summary.long_text["max_windows"] == 4


def test_bench_pages_carry_250_to_400_tokens_of_varied_boilerplate(encoder: TextEncoder) -> None:
    rng = np.random.default_rng(0)
    tokenizer = encoder.tokenizer
    pages = [bench_windows.page("Article title\nArticle body.", rng, tokenizer) for _ in range(50)]
    for text in pages:
        assert text.endswith("\nArticle title\nArticle body.")
        head = text[: -len("\nArticle title\nArticle body.")]
        assert 250 <= len(tokenizer(head, add_special_tokens=False)["input_ids"]) <= 400
    assert len(set(pages)) == len(pages)


def test_bench_rows_skip_the_training_rows_and_their_descriptions(tmp_path: Path) -> None:
    csv_path = tmp_path / "ag.csv"
    rows = [
        ("1", "t0", "shared"),
        ("2", "t1", "d1"),
        ("3", "t2", "shared"),
        ("4", "t3", "d3"),
        ("1", "t4", "d4"),
    ]
    csv_path.write_text(
        "Class Index,Title,Description\r\n" + "".join(f'"{c}","{t}","{d}"\r\n' for c, t, d in rows)
    )
    texts, labels = bench_windows.read_ag_rows(csv_path, skip_rows=2, rows=2)
    assert texts == ["t3\nd3", "t4\nd4"] and labels == ["4", "1"]


def test_classifier_loss_is_cross_entropy_smoothed_and_uniform_for_background() -> None:
    import tensorflow as tf

    from bm_ray.jobs.train.background import BACKGROUND_LABEL_ID
    from bm_ray.jobs.train.loop import classifier_loss

    flat_target_loss = classifier_loss(3, 0.0)

    logits = tf.constant([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0], [3.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    labels = tf.constant([0, 1, BACKGROUND_LABEL_ID, BACKGROUND_LABEL_ID])
    loss = flat_target_loss(labels, logits).numpy()
    sparse = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="none")
    assert np.allclose(loss[:2], sparse(labels[:2], logits[:2]).numpy(), atol=1e-6)
    log_probs = tf.nn.log_softmax(logits[2:]).numpy()
    assert np.allclose(loss[2:], -log_probs.mean(axis=1), atol=1e-6)
    assert loss[3] == pytest.approx(np.log(3), abs=1e-6)  # a flat answer is the background optimum
    smoothed = classifier_loss(3, 0.1)(labels, logits).numpy()
    keras_smoothed = tf.keras.losses.categorical_crossentropy(
        tf.one_hot(labels[:2], 3), logits[:2], from_logits=True, label_smoothing=0.1
    ).numpy()
    assert np.allclose(smoothed[:2], keras_smoothed, atol=1e-6)
    assert np.allclose(smoothed[2:], loss[2:], atol=1e-6)  # background rows stay uniform


def test_training_background_shares_no_phrase_with_the_benchmark_pages() -> None:
    from bm_ray.jobs.train.background import BACKGROUND_PHRASES, background_texts

    bench_phrases = {phrase for kind in bench_windows.BOILERPLATE.values() for phrase in kind}
    assert not bench_phrases & set(BACKGROUND_PHRASES)
    texts = background_texts(50, seed=1)
    assert texts == background_texts(50, seed=1) and len(set(texts)) > 40
    assert all(line in BACKGROUND_PHRASES for text in texts for line in text.split("\n"))
