"""A job's identity and the one diff that says why a resume is refused.

Every resumable job (ingest, classify, train) stores what decides its rows in its output (`_job.json`):
the spec fields that matter, the model version, the labels and the input manifest. A rerun into the same
output compares its own identity with the stored one; :func:`identity_differences` names every key that
differs with its old and new value, and every input file that was added, removed or changed.
"""

from __future__ import annotations

from typing import Any

SHOWN_VALUE_CHARS = 80
"""Values are shown up to this many characters in a refusal; longer ones are cut with an ellipsis."""

FILE_FIELDS = ("size", "mtime", "etag")
"""Fields of a manifest entry, in the order a refusal names them (any others follow, sorted)."""


def shown(value: Any) -> str:
    """`value` as a refusal shows it: strings bare, everything else as its repr, cut to a readable length."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= SHOWN_VALUE_CHARS else text[: SHOWN_VALUE_CHARS - 1] + "…"


def is_manifest(value: Any) -> bool:
    """Whether `value` is an input manifest: a list of file entries, each a dict with a `path`."""
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) and "path" in v for v in value)


def manifest_changes(previous: list[dict[str, Any]], current: list[dict[str, Any]]) -> list[str]:
    """The files added, gone or changed (with each changed field's old and new value) between two manifests."""
    before = {m["path"]: m for m in previous}
    now = {m["path"]: m for m in current}
    changes = [f"{p} was added" for p in now if p not in before]
    changes += [f"{p} is gone" for p in before if p not in now]
    for path in now.keys() & before.keys():
        old, new = before[path], now[path]
        keys = [*FILE_FIELDS, *sorted((old.keys() | new.keys()) - {"path", *FILE_FIELDS})]
        what = [f"{k} {old.get(k)} → {new.get(k)}" for k in keys if old.get(k) != new.get(k)]
        if what:
            changes.append(f"{path} changed ({', '.join(what)})")
    return sorted(changes)


def identity_differences(previous: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    """Every difference between two stored identities, as `key: old → new` (nested keys dotted).

    Nested dicts are compared key by key; input manifests file by file (:func:`manifest_changes`, each
    line prefixed with its key). An empty list means a resume is safe.
    """
    diffs: list[str] = []
    for key in sorted(set(previous) | set(current)):
        old, new = previous.get(key), current.get(key)
        if old == new:
            continue
        name = f"{prefix}{key}"
        if isinstance(old, dict) and isinstance(new, dict):
            diffs += identity_differences(old, new, f"{name}.")
        elif is_manifest(old) or is_manifest(new):
            diffs += [f"{name}: {change}" for change in manifest_changes(old or [], new or [])]
        else:
            diffs.append(f"{name}: {shown(old)} → {shown(new)}")
    return diffs
