"""A Ray Train worker's training batches: its Ray Data shard as tf.data epochs of length-bucketed,
dynamically padded batches, the same number of steps on every worker."""

from __future__ import annotations

from typing import Any

import numpy as np

from bm_ray.runtime.tf import import_tensorflow

tf = import_tensorflow()


def epoch_batches(blocks: Any, batch_size: int, steps: int, seed: int = 0) -> Any:
    """Length-bucketed, dynamically padded (inputs, labels) batches for one epoch.

    `blocks` yields dicts with `input_ids` (token id arrays) and `label_id` (e.g. a Ray Data shard's
    `iter_batches(batch_format="numpy")`). Exactly `steps` batches come out on every worker
    (MultiWorkerMirroredStrategy needs the same number of steps everywhere); a shard that runs
    short repeats its first batch. Batches of one window are visited in a seeded random order, so
    short and long batches interleave.
    """
    from bm_ray.model.preprocess import length_batches, pad_batch

    rng = np.random.default_rng(seed)
    produced = 0
    first = None
    for block in blocks:
        sequences = block["input_ids"]
        label_ids = block["label_id"]
        lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
        batches = length_batches(lengths, batch_size, window=len(lengths))
        for k in rng.permutation(len(batches)):
            batch = batches[k]
            ids, mask = pad_batch([np.asarray(sequences[i], dtype=np.int32) for i in batch])
            item = ({"input_ids": ids, "attention_mask": mask}, label_ids[batch].astype(np.int32))
            first = first or item
            if produced < steps:
                produced += 1
                yield item
    while produced < steps and first is not None:
        produced += 1
        yield first


SORT_WINDOW_BATCHES = 64
"""Rows of this many batches are sorted by length together: bounded memory, similar-length batches."""


def batch_signature() -> tuple[Any, Any]:
    """tf.data element spec of :func:`epoch_batches`: any batch size, any padded length."""
    return (
        {
            "input_ids": tf.TensorSpec([None, None], tf.int32),
            "attention_mask": tf.TensorSpec([None, None], tf.int32),
        },
        tf.TensorSpec([None], tf.int32),
    )


class ShardEpochs:
    """This worker's Ray Data shard of the training rows, as one tf.data dataset per epoch."""

    def __init__(self, shard: Any, per_worker_batch: int) -> None:
        self.shard = shard
        self.per_worker_batch = per_worker_batch
        self.window = per_worker_batch * SORT_WINDOW_BATCHES
        self.options = tf.data.Options()
        # Each worker already holds only its own Ray Data shard: TF must not shard it again.
        self.options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF

    def dataset(self, seed: int, steps: int) -> Any:
        """Exactly `steps` batches of :func:`epoch_batches` over the shard, locally shuffled with `seed`."""
        blocks = self.shard.iter_batches(
            batch_size=self.window,
            batch_format="numpy",
            local_shuffle_buffer_size=self.window,
            local_shuffle_seed=seed,
        )
        return tf.data.Dataset.from_generator(
            lambda: epoch_batches(blocks, self.per_worker_batch, steps, seed),
            output_signature=batch_signature(),
        ).with_options(self.options)
