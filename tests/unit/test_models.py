"""Model references and versions: offline mode, `hf:` hub ids, missing paths, the locked cache, weight
versions, credential redaction, and the optimizer state that training checkpoints carry."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from tiny_model import make_tiny_model

from bm_ray.layout import H5_WEIGHTS_FILE, LABELS_FILE, SAFETENSORS_FILE
from bm_ray.model.registry import (
    PRESETS,
    READY_MARKER,
    ModelRefError,
    OfflineError,
    fill_cache_entry,
    read_model_info,
    resolve_model,
    sha256_file,
)
from bm_ray.storage import join_uri, redact, redact_uri

VERSION_RE = re.compile(r"^[0-9a-f]{16}-\d{8}T\d{6}Z$")


def test_offline_missing_preset_fails_with_what_and_how(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BM_RAY_OFFLINE", "1")
    monkeypatch.setenv("BM_RAY_CACHE", str(tmp_path / "cache"))
    with pytest.raises(OfflineError) as err:
        resolve_model("minilm-l6")
    message = str(err.value)
    assert "BM_RAY_OFFLINE=1" in message and "minilm-l6" in message
    assert PRESETS["minilm-l6"].requirement in message and "bm-ray model fetch minilm-l6" in message
    assert not list((tmp_path / "cache").glob("*")), "nothing may be downloaded or left behind"


def test_offline_cli_fetch_fails_with_the_message(tmp_path: Path) -> None:
    env = {**os.environ, "BM_RAY_OFFLINE": "1", "BM_RAY_CACHE": str(tmp_path)}
    cli = Path(sys.executable).with_name("bm-ray")
    result = subprocess.run(
        [str(cli), "model", "fetch", "minilm-l6"], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    output = " ".join((result.stdout + result.stderr).split())
    assert "BM_RAY_OFFLINE=1" in output and "not in the model cache" in output, output
    assert "Traceback" not in output


def test_offline_hub_id_is_an_error_and_hub_needs_the_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BM_RAY_OFFLINE", raising=False)
    assert (
        resolve_model("hf:sentence-transformers/all-MiniLM-L6-v2") == "sentence-transformers/all-MiniLM-L6-v2"
    )
    monkeypatch.setenv("BM_RAY_OFFLINE", "1")
    with pytest.raises(OfflineError, match="hub download"):
        resolve_model("hf:org/name")


@pytest.mark.parametrize("ref", ["models/does-not-exist", "org/name", "./relative-model"])
def test_missing_local_path_is_an_error_not_a_hub_download(ref: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelRefError, match=r"no such directory.*hf:"):
        resolve_model(ref)


def test_saved_models_get_a_weights_hash_version(tmp_path: Path, tokenizer_dir: str) -> None:
    first = make_tiny_model(tmp_path / "a", ["x", "y"], tokenizer_dir, seed=0)
    second = make_tiny_model(tmp_path / "b", ["x", "y"], tokenizer_dir, seed=1)
    version = read_model_info(first).version
    assert VERSION_RE.match(version), version
    assert version.startswith(sha256_file_hash(first / SAFETENSORS_FILE))
    assert not (first / H5_WEIGHTS_FILE).exists()
    assert read_model_info(second).version.split("-")[0] != version.split("-")[0]
    assert PRESETS["minilm-l6"].version.startswith("sha256-")


def test_a_model_dir_with_h5_weights_still_loads(tmp_path: Path, tokenizer_dir: str) -> None:
    """Model directories written before safetensors hold `tf_model.h5`: they load and score the same,
    and a save over one leaves safetensors only."""
    from bm_ray.model.engine import Predictor
    from bm_ray.model.registry import load_classifier, save_model_dir, weights_version

    current = make_tiny_model(tmp_path / "new", ["x", "y"], tokenizer_dir, seed=2, spread_on=["a b", "c d e"])
    model, tokenizer, info = load_classifier(current)
    old = tmp_path / "old"
    model.save_pretrained(str(old), safe_serialization=False)  # what bm-ray wrote before
    tokenizer.save_pretrained(str(old))
    (old / LABELS_FILE).write_text((current / LABELS_FILE).read_text())
    assert (old / H5_WEIGHTS_FILE).exists() and not (old / SAFETENSORS_FILE).exists()
    texts = ["a b", "c d e", "football league"]
    expected = Predictor.load(str(current), precision="fp32").predict_proba(texts)
    np.testing.assert_allclose(
        Predictor.load(str(old), precision="fp32").predict_proba(texts), expected, atol=1e-6
    )
    assert weights_version(old).startswith(sha256_file_hash(old / H5_WEIGHTS_FILE))
    save_model_dir(model, tokenizer, info, old)  # resaved: safetensors, the h5 gone
    assert (old / SAFETENSORS_FILE).exists() and not (old / H5_WEIGHTS_FILE).exists()


def sha256_file_hash(path: Path) -> str:
    """The first 16 hex of the hash-of-hashes a single-weight-file model version starts with."""
    import hashlib

    return hashlib.sha256(sha256_file(path).encode()).hexdigest()[:16]


FILL_SCRIPT = """
import sys, time
from pathlib import Path
from bm_ray.model.registry import fill_cache_entry

def fill(tmp):
    for i in range(20):  # slow enough that the two processes overlap
        (tmp / f"part{i}").write_text(str(i))
        time.sleep(0.05)
    Path(sys.argv[2]).open("a").write("filled\\n")

print(fill_cache_entry(Path(sys.argv[1]), fill, {"uri": "test"}))
"""


def test_cache_entry_filled_once_under_a_lock_by_two_processes(tmp_path: Path) -> None:
    target, log = tmp_path / "cache" / "remote" / "entry", tmp_path / "fills.log"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", FILL_SCRIPT, str(target), str(log)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [proc.communicate(timeout=60)[0].strip() for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0]
    assert outputs == [str(target)] * 2
    assert log.read_text().count("filled") == 1, "the second process must reuse the first one's entry"
    assert sorted(p.name for p in target.iterdir()) == sorted(
        [*(f"part{i}" for i in range(20)), READY_MARKER]
    )
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".")], "temp dirs left behind"


def test_failed_fill_leaves_no_entry(tmp_path: Path) -> None:
    target = tmp_path / "entry"

    def broken(tmp: Path) -> None:
        (tmp / "half").write_text("x")
        raise OSError("network down")

    with pytest.raises(OSError, match="network down"):
        fill_cache_entry(target, broken, {})
    assert not target.exists() and [p.name for p in tmp_path.iterdir()] == ["entry.lock"]


def test_credentials_are_redacted_from_uris() -> None:
    uri = "s3://AKIAKEY:s3cr3t@bucket/data/x.jsonl?endpoint_override=127.0.0.1:9000&scheme=http"
    assert redact_uri(uri) == "s3://bucket/data/x.jsonl?endpoint_override=127.0.0.1%3A9000&scheme=http"
    assert redact_uri("s3://bucket/p?access_key=A&secret_key=S&region=eu") == "s3://bucket/p?region=eu"
    assert redact_uri("/local/path:with@odd") == "/local/path:with@odd"
    nested = redact({"input": [uri], "n": 3, "model": {"path": "gs://u:p@b/m"}})
    assert "s3cr3t" not in json.dumps(nested) and "AKIAKEY" not in json.dumps(nested)
    assert nested["n"] == 3 and nested["model"]["path"] == "gs://b/m"
    assert join_uri("s3://b/out?scheme=http", "rejects") == "s3://b/out/rejects?scheme=http"


def test_optimizer_state_round_trip(tmp_path: Path, tokenizer_dir: str) -> None:
    """Slots and iterations saved from a trained optimizer come back equal in a fresh one."""
    from bm_ray.jobs.train.loop import compile_classifier
    from bm_ray.jobs.train.resume import restore_optimizer_state, save_optimizer_state

    labels = ["x", "y"]
    base = make_tiny_model(tmp_path / "base", labels, tokenizer_dir, hidden=16, layers=1)
    config = {"mixed_precision": False, "learning_rate": 1e-3, "warmup_fraction": 0.1, "weight_decay": 0.01}
    model = compile_classifier(str(base), labels, 20, config)
    rng = np.random.default_rng(0)
    inputs = {
        "input_ids": rng.integers(1000, 2000, size=(8, 12)).astype(np.int32),
        "attention_mask": np.ones((8, 12), np.int32),
    }
    model.fit(inputs, rng.integers(0, 2, size=8).astype(np.int32), batch_size=4, epochs=1, verbose=0)
    saved = [np.array(v.numpy()) for v in model.optimizer.variables()]
    assert int(model.optimizer.iterations.numpy()) == 2 and len(saved) > 3
    save_optimizer_state(model.optimizer, tmp_path)

    fresh = compile_classifier(str(base), labels, 20, config)
    assert restore_optimizer_state(fresh.optimizer, fresh, tmp_path)
    restored = [np.array(v.numpy()) for v in fresh.optimizer.variables()]
    assert int(fresh.optimizer.iterations.numpy()) == 2
    assert len(restored) == len(saved)
    for before, after in zip(saved, restored, strict=True):
        np.testing.assert_array_equal(before, after)
    assert any(np.abs(v).sum() > 0 for v in restored[1:]), "the Adam moments must be non-trivial"
    assert not restore_optimizer_state(fresh.optimizer, fresh, tmp_path / "nothing-here")
    tf.keras.backend.clear_session()


def test_labels_json_records_version(tmp_path: Path, tokenizer_dir: str) -> None:
    model = make_tiny_model(tmp_path / "m", ["x", "y"], tokenizer_dir)
    assert VERSION_RE.match(json.loads((model / LABELS_FILE).read_text())["version"])
