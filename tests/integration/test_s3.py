"""Object storage for real: ingest, train, evaluate, classify (killed + resumed) and serve with every
input, output and model at `s3://` URIs on a local S3-compatible server (moto in server mode, on
loopback, started and stopped here).

In-process jobs give the endpoint as pyarrow's `endpoint_override` URI option and the credentials in
the URI (`s3://KEY:SECRET@bucket/...`): the workers of the session's Ray have no AWS variables. The
`bm-ray classify` subprocesses take the endpoint from the standard `AWS_ENDPOINT_URL` variable.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest
from s3_server import BUCKET, KEY_ID, S3, SECRET, moto_server
from tiny_model import make_tiny_model

from bm_ray.jobs.evaluate import evaluate
from bm_ray.jobs.ingest import ingest
from bm_ray.jobs.train.job import train
from bm_ray.layout import MODEL_CARD_FILE, SAFETENSORS_FILE
from bm_ray.model.registry import resolve_model
from bm_ray.runtime.ray_init import free_port
from bm_ray.specs import EvaluateSpec, IngestSpec, ServeSpec, TrainSpec

LABELS = ["alpha", "beta", "gamma"]
TOPICS = {
    "alpha": "football match goal league coach striker season",
    "beta": "shares profit market bank earnings investors merger",
    "gamma": "software chip satellite research laptop internet robot",
}


@pytest.fixture(scope="module")
def s3() -> Iterator[S3]:
    """`python -m moto.server` on a free loopback port with one bucket; stopped after the module."""
    with moto_server() as store:
        yield store


def corpus_lines(rows: int, unlabelled: int = 0, prefix: str = "r") -> bytes:
    """A learnable JSONL corpus (label words per topic), plus `unlabelled` rows without a label."""
    lines = []
    for i in range(rows + unlabelled):
        label = LABELS[i % 3]
        words = TOPICS[label].split()
        text = " ".join(words[(i + k) % len(words)] for k in range(4 + i % 5))
        record = {"id": f"{prefix}{i}", "text": f"the {text} today", "url": f"u{i}"}
        if i < rows:
            record["label"] = label
        lines.append(json.dumps(record))
    return ("\n".join(lines) + "\n").encode()


@pytest.fixture(scope="module")
def trained(ray_local: None, s3: S3, tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: str) -> dict:
    """Ingest and a tiny train with the data, the base model and the output all at s3:// URIs."""
    base = make_tiny_model(tmp_path_factory.mktemp("s3-base") / "tiny", LABELS, tokenizer_dir)
    s3.upload_dir(base, "base")
    s3.put("data/train.jsonl", corpus_lines(150, unlabelled=4))
    summary = ingest(IngestSpec(input=[s3.uri("data/train.jsonl")]), s3.uri("ingest"))
    spec = TrainSpec.model_validate(
        {
            "data": {"input": [s3.uri("data/train.jsonl")]},
            "output": s3.uri("model"),
            "base_model": s3.uri("base"),
            "workers": 1,
            "epochs": 1,
            "batch_size": 16,
            "learning_rate": 5e-3,
            "val_fraction": 0.2,
            "max_length": 32,
        }
    )
    report = train(spec)
    return {"ingest": summary, "report": report, "spec": spec}


def test_ingest_and_train_write_everything_to_the_bucket(s3: S3, trained: dict) -> None:
    summary = trained["ingest"]
    assert summary.rows_read == summary.rows_ok == 154
    assert "ingest/summary.json" in s3.keys("ingest/") and s3.keys("ingest/ok/")
    keys = s3.keys("model/")
    for name in (
        "labels.json",
        SAFETENSORS_FILE,
        MODEL_CARD_FILE,
        "config.json",
        "metrics.json",
        "_job.json",
    ):
        assert f"model/{name}" in keys, keys
    # TensorBoard events and the training rejects (rows without a label) land in the remote output.
    assert any(k.startswith("model/tensorboard/") and "tfevents" in k for k in keys), keys
    rejects = [k for k in keys if k.startswith("model/rejects/") and k.endswith(".parquet")]
    assert rejects
    assert trained["report"].data.train_data.rejected_by_reason == {"missing_label": 4}
    assert not any("optimizer_state" in k for k in keys if not k.startswith("model/_ray_train/"))
    assert any("optimizer_state" in k for k in keys if k.startswith("model/_ray_train/")), "checkpoints"
    labels = json.loads(s3.read("model/labels.json"))
    assert labels["version"] and labels["version"] != "0"


def test_finished_remote_output_refuses_a_rerun(s3: S3, trained: dict) -> None:
    from bm_ray.jobs.train.resume import ResumeError

    with pytest.raises(ResumeError, match="already holds a finished model"):
        train(trained["spec"])


def test_evaluate_reads_model_and_data_from_s3(s3: S3, trained: dict) -> None:
    report = evaluate(
        EvaluateSpec(
            model=s3.uri("model"), data=IngestSpec(input=[s3.uri("data/train.jsonl")]), output=s3.uri("eval")
        )
    )
    version = json.loads(s3.read("model/labels.json"))["version"]
    assert report.model.version == version and report.rows_evaluated == 150
    assert json.loads(s3.read("eval/metrics.json"))["model"]["version"] == version
    assert "eval/confusion_matrix.png" in s3.keys("eval/")


def test_model_cache_refetches_a_model_retrained_at_the_same_uri(
    s3: S3, tmp_path: Path, tokenizer_dir: str
) -> None:
    first = make_tiny_model(tmp_path / "v1", LABELS, tokenizer_dir, seed=1)
    second = make_tiny_model(tmp_path / "v2", LABELS, tokenizer_dir, seed=2)
    s3.upload_dir(first, "cached")
    cache = tmp_path / "cache"
    local_first = Path(resolve_model(s3.uri("cached"), cache))
    assert resolve_model(s3.uri("cached"), cache) == str(local_first)  # a hit: same entry
    s3.upload_dir(second, "cached")  # retrained in place
    local_second = Path(resolve_model(s3.uri("cached"), cache))
    assert local_second != local_first
    version = json.loads((second / "labels.json").read_text())["version"]
    assert json.loads((local_second / "labels.json").read_text())["version"] == version
    # The old entry stays whole for a process that may still be loading it.
    assert (local_first / SAFETENSORS_FILE).read_bytes() == (first / SAFETENSORS_FILE).read_bytes()
    assert SECRET not in "".join(p.read_text() for p in cache.rglob("bm-ray-ready.json"))


def test_export_reads_the_model_from_s3_and_writes_the_savedmodel_there(
    s3: S3, tmp_path: Path, tokenizer_dir: str
) -> None:
    from bm_ray.jobs.export import export
    from bm_ray.output.commit import OutputRefusedError

    s3.upload_dir(make_tiny_model(tmp_path / "m", LABELS, tokenizer_dir, seed=3), "export-src")
    result = export(s3.uri("export-src"), s3.uri("exported/1"))
    keys = set(s3.keys("exported/1/"))
    for name in ("saved_model.pb", "export.json", "labels.json", "vocab.txt", "tokenizer.json"):
        assert f"exported/1/{name}" in keys, keys
    assert any(key.startswith("exported/1/variables/") for key in keys), keys
    assert json.loads(s3.read("exported/1/export.json"))["labels"] == LABELS == result["labels"]
    assert SECRET not in json.dumps(result) and KEY_ID not in json.dumps(result)
    with pytest.raises(OutputRefusedError, match="--overwrite"):
        export(s3.uri("export-src"), s3.uri("exported/1"))
    s3.put("exported/1/stale.txt", b"from an older export")
    export(s3.uri("export-src"), s3.uri("exported/1"), overwrite=True)
    assert "exported/1/stale.txt" not in s3.keys("exported/1/")
    assert "exported/1/saved_model.pb" in s3.keys("exported/1/")


def _run_classify(s3: S3, args: list[str], log: Path) -> subprocess.Popen:
    with log.open("w") as handle:  # a file, not a pipe: a full pipe would stall the job
        return subprocess.Popen(
            [str(Path(sys.executable).with_name("bm-ray")), "classify", *args],
            env=s3.env(),
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the kill takes its embedded Ray with it
        )


def test_classify_killed_and_resumed_on_s3(s3: S3, trained: dict, tmp_path: Path) -> None:
    """A real `bm-ray classify` with AWS_ENDPOINT_URL is SIGKILLed mid-run and rerun: every id once."""
    rows = 800
    s3.put("corpus/part-0.jsonl", corpus_lines(rows // 2, prefix="a"))
    s3.put("corpus/part-1.jsonl", corpus_lines(rows // 2, prefix="b"))
    # Credentials in the URIs, endpoint from the environment.
    base = f"s3://{KEY_ID}:{SECRET}@{BUCKET}"
    args = [
        "--model", f"{base}/model", "--input", f"{base}/corpus/*.jsonl", "--output", f"{base}/labels",
        "--actors", "1", "--batch-size", "8", "--keep-fields", "url", "--address", "local",
    ]  # fmt: skip

    def commits() -> list[str]:  # commit records in place (not their hidden temporary names)
        names = [k.rsplit("/", 1)[-1] for k in s3.keys("labels/_commits/")]
        return [n for n in names if n.endswith(".json") and not n.startswith(".")]

    first = _run_classify(s3, args, tmp_path / "first.log")
    deadline = time.monotonic() + 180
    while not commits() and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=30)
    assert commits(), f"no commit: {(tmp_path / 'first.log').read_text()[-3000:]}"
    assert "labels/summary.json" not in s3.keys("labels/"), "the run finished before the kill"

    second = _run_classify(s3, args, tmp_path / "second.log")
    assert second.wait(timeout=300) == 0, (tmp_path / "second.log").read_text()[-3000:]
    summary = json.loads(s3.read("labels/summary.json"))
    assert summary["rows_resumed"] > 0 and summary["rows_read"] == summary["rows_classified"] == rows
    ids = Counter()
    for key in s3.keys("labels/predictions/"):
        if key.endswith(".parquet") and "/." not in key:
            table = pq.read_table(io.BytesIO(s3.read(key)))
            ids.update(table.column("id").to_pylist())
            models = set(table.column("model").to_pylist())
            assert models == {f"model/{json.loads(s3.read('model/labels.json'))['version']}"}
    assert len(ids) == rows and max(ids.values()) == 1
    assert set(ids) == {f"a{i}" for i in range(rows // 2)} | {f"b{i}" for i in range(rows // 2)}
    assert summary["model"]["version"] == json.loads(s3.read("model/labels.json"))["version"]


def test_serve_a_model_from_s3(s3: S3, trained: dict) -> None:
    from ray import serve

    from bm_ray.serve import app_url, deploy

    spec = ServeSpec(
        model=s3.uri("model"), port=free_port(), route_prefix="/s3", max_replicas=1, cpus_per_replica=1
    )
    deploy(spec, name="s3-app")
    try:
        url = app_url(spec)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        version = json.loads(s3.read("model/labels.json"))["version"]
        assert httpx.get(f"{url}/v1/model", timeout=10).json()["version"] == version
        answer = httpx.post(f"{url}/v1/classify", json={"texts": ["football match goal"]}, timeout=30)
        assert answer.status_code == 200 and answer.json()["model"]["version"] == version
        assert answer.json()["predictions"][0]["label"] in LABELS
    finally:
        serve.shutdown()  # the proxy listens on this test's port; other modules start their own


def test_no_credentials_in_any_record(s3: S3, trained: dict) -> None:
    """_job.json, summary.json, metrics.json (and every other JSON written) never hold the credentials."""
    records = [k for k in s3.keys("") if k.endswith(".json")]
    names = {k.rsplit("/", 1)[-1] for k in records}
    assert {"_job.json", "summary.json", "metrics.json"} <= names, names
    for key in records:
        text = s3.read(key).decode()
        assert SECRET not in text and KEY_ID not in text, key
