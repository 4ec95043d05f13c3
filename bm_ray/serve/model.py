"""The model deployment: one warm :class:`~bm_ray.model.engine.Predictor` per replica, batched continuously.

Every HTTP request is one call here, so the ongoing requests Serve's autoscaler counts on these
replicas are the real backlog. Calls that arrive while a forward pass runs are merged into the next
pass; an idle replica starts a lone call at once (no batch window).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter as Tally
from collections import deque
from collections.abc import Sequence
from typing import Any, TypeVar

from ray import serve
from ray.serve.metrics import Counter, Histogram

from bm_ray.model.engine import Prediction, Predictor
from bm_ray.model.registry import ModelInfo
from bm_ray.serve.schemas import ModelNotReadyError, TextFailedError
from bm_ray.specs import ServeSpec

logger = logging.getLogger("ray.serve")
T = TypeVar("T")

MODEL_DEPLOYMENT = "Classifier"
GRACEFUL_SHUTDOWN_S = 30.0
"""In-flight requests (at most a few forward passes) get this long to finish when a replica stops."""
BATCH_SIZE_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]

Call = tuple[list[str], "asyncio.Future[dict[str, Any]]"]
"""One queued call: its texts and the future its caller awaits."""


def split_by_sizes(items: Sequence[T], sizes: Sequence[int]) -> list[Sequence[T]]:
    """`items` cut into consecutive runs of `sizes` (the answers of the calls of one forward pass)."""
    runs, start = [], 0
    for size in sizes:
        runs.append(items[start : start + size])
        start += size
    return runs


def prediction_json(info: ModelInfo, predictions: Sequence[Prediction]) -> dict[str, Any]:
    """The answer of one call as plain data: the ingress never needs the engine's types."""
    return {
        "model": {"name": info.name, "version": info.version},
        "predictions": [
            {"label": p.label, "score": p.score, "scores": p.scores, "windows": p.windows}
            for p in predictions
        ],
    }


class ModelLoadError(RuntimeError):
    """A replica could not load its first model (Serve shows this message in its status)."""


@serve.deployment(name=MODEL_DEPLOYMENT, graceful_shutdown_timeout_s=GRACEFUL_SHUTDOWN_S)
class Classifier:
    """The model deployment: one warm :class:`Predictor` per replica, batched across concurrent calls.

    Continuous batching: one loop runs the forward passes, and each pass takes every call that queued
    up while the previous pass ran (up to ``max_batch_size`` texts, at least one call); calls whose
    caller went away (timeout, disconnect) are skipped. A pass that fails is run again text by text,
    so only a call holding a failing text fails (:class:`TextFailedError`) and the replica stays healthy.
    A change of ``user_config`` (``{"model": ...}``) loads and warms the new model beside the old one
    and swaps it in; a model that does not load is refused and the old one keeps answering.
    """

    def __init__(self, spec: ServeSpec) -> None:
        self.spec = spec
        self._predictor: Predictor | None = None
        self._model_ref: str | None = None
        self._calls: deque[Call] = deque()
        self._calls_waiting = asyncio.Event()
        self._forward_loop: asyncio.Task[None] | None = None
        self._predictions = Counter(
            "bm_ray_predictions", description="Texts classified, by predicted label.", tag_keys=("label",)
        )
        self._batch_sizes = Histogram(
            "bm_ray_batch_size", description="Texts per forward pass.", boundaries=BATCH_SIZE_BUCKETS
        )

    async def reconfigure(self, config: dict[str, Any]) -> None:
        """Switch to ``config["model"]``: load and warm it off the event loop, then swap the reference.

        Raising here would make Serve stop this replica (and the old model with it), so a model that
        fails to load is refused with an error log once a model is serving; only a replica's first
        model raises (:class:`ModelLoadError`), which Serve reports in its status.
        """
        model_ref = str(config["model"])
        if model_ref == self._model_ref:
            return
        started = time.monotonic()
        try:
            predictor = await asyncio.to_thread(self._load, model_ref)
        except Exception as err:
            reason = f"model {model_ref!r} did not load: {type(err).__name__}: {err}"
            if self._predictor is None:
                raise ModelLoadError(reason) from None
            logger.error("model swap refused, still serving %r: %s", self._model_ref, reason)
            return
        self._predictor, self._model_ref = predictor, model_ref
        info = predictor.info
        logger.info(
            "serving %s v%s (%s) after %.1fs", info.name, info.version, model_ref, time.monotonic() - started
        )

    def _load(self, model_ref: str) -> Predictor:
        predictor = Predictor.load(
            model_ref,
            batch_size=self.spec.forward_batch_size,
            precision=self.spec.precision,
            num_threads=math.ceil(self.spec.cpus_per_replica),
            long_text=self.spec.long_text_options(),
        )
        predictor.warmup()
        return predictor

    def check_health(self) -> None:
        """Serve's health probe: unhealthy without a model (a text that fails does not count)."""
        self._require_predictor()

    def _require_predictor(self) -> Predictor:
        if self._predictor is None:
            raise ModelNotReadyError("model is loading")
        return self._predictor

    async def classify(self, texts: list[str]) -> dict[str, Any]:
        """``{"model": {"name", "version"}, "predictions": [{"label", "score", "scores", "windows"}]}`` for `texts`."""
        self._require_predictor()
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._calls.append((texts, answer))
        self._calls_waiting.set()
        if self._forward_loop is None or self._forward_loop.done():
            self._forward_loop = asyncio.create_task(self._run_forward_passes())
        return await answer

    async def model_info(self) -> dict[str, Any]:
        """The served model's :class:`ModelInfo` as JSON (every field of its labels.json record)."""
        return self._require_predictor().info.to_json()

    async def ready(self) -> str | None:
        """None when this replica can classify, else why not (as :meth:`check_health` would fail)."""
        try:
            self.check_health()
        except RuntimeError as err:
            return str(err)
        return None

    def _next_batch(self) -> list[Call]:
        """The live queued calls of the next forward pass: up to max_batch_size texts (at least one call)."""
        batch: list[Call] = []
        texts = 0
        while self._calls:
            call_texts, answer = self._calls[0]
            if answer.done():  # its caller went away: never computed
                self._calls.popleft()
                continue
            if batch and texts + len(call_texts) > self.spec.max_batch_size:
                break
            batch.append(self._calls.popleft())
            texts += len(call_texts)
        return batch

    async def _run_forward_passes(self) -> None:
        while True:
            await self._calls_waiting.wait()
            self._calls_waiting.clear()
            while batch := self._next_batch():
                try:
                    await self._forward(batch)
                except Exception as err:  # a bug outside the model call: fail the pass, keep the loop
                    logger.exception("forward pass of %d calls failed", len(batch))
                    _fail(batch, err)

    async def _forward(self, batch: list[Call]) -> None:
        # The predictor is read once per pass, so a model swap mid-pass cannot mix models.
        predictor = self._require_predictor()
        texts = [text for call_texts, _ in batch for text in call_texts]
        self._batch_sizes.observe(len(texts))
        try:
            predictions = await asyncio.to_thread(predictor.predict, texts)
        except Exception as err:
            logger.warning("forward pass of %d texts failed (%r); running them one by one", len(texts), err)
            await self._forward_one_by_one(predictor, batch)
            return
        for (_, answer), call_predictions in zip(
            batch, split_by_sizes(predictions, [len(t) for t, _ in batch]), strict=True
        ):
            if not answer.done():  # the caller may have gone mid-pass
                answer.set_result(prediction_json(predictor.info, call_predictions))
        for label, count in Tally(p.label for p in predictions).items():
            self._predictions.inc(count, tags={"label": label})

    async def _forward_one_by_one(self, predictor: Predictor, batch: list[Call]) -> None:
        """Each text of a failed pass alone: a call fails (naming its first failing text) or is answered."""
        for call_texts, answer in batch:
            predictions: list[Prediction] = []
            for index, text in enumerate(call_texts):
                if answer.done():
                    break
                try:
                    predictions += await asyncio.to_thread(predictor.predict, [text])
                except Exception as err:
                    answer.set_exception(TextFailedError(index, f"{type(err).__name__}: {err}"))
            if not answer.done():
                answer.set_result(prediction_json(predictor.info, predictions))


def _fail(batch: list[Call], err: Exception) -> None:
    for _, answer in batch:
        if not answer.done():
            answer.set_exception(err)
