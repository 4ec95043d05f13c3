"""The one resume-identity diff (bm_ray.output.identity): every differing key with its old and new value."""

from __future__ import annotations

from bm_ray.output.identity import SHOWN_VALUE_CHARS, identity_differences, manifest_changes


def test_every_differing_key_is_named_with_both_values() -> None:
    previous = {
        "kind": "train",
        "spec": {"epochs": 4, "seed": 0, "data": {"input": ["a.csv"]}},
        "labels": ["x"],
    }
    current = {"kind": "train", "spec": {"epochs": 5, "seed": 0, "data": {"input": ["b.csv"]}}, "extra": True}
    assert identity_differences(previous, current) == [
        "extra: None → True",
        "labels: ['x'] → None",
        "spec.data.input: ['a.csv'] → ['b.csv']",
        "spec.epochs: 4 → 5",
    ]
    assert identity_differences(previous, previous) == []


def test_manifests_are_compared_file_by_file() -> None:
    old = [{"path": "a", "size": 1, "mtime": "t1"}, {"path": "b", "size": 2, "mtime": "t1"}]
    new = [{"path": "a", "size": 3, "mtime": "t2"}, {"path": "c", "size": 2, "mtime": "t1"}]
    assert manifest_changes(old, new) == ["a changed (size 1 → 3, mtime t1 → t2)", "b is gone", "c was added"]
    nested = identity_differences({"manifest": {"data": old}}, {"manifest": {"data": new}})
    assert nested == [f"manifest.data: {change}" for change in manifest_changes(old, new)]


def test_long_values_are_cut_but_still_shown() -> None:
    (line,) = identity_differences({"model": "m" * 500}, {"model": "n"})
    old = line.removeprefix("model: ").split(" → ")[0]
    assert len(old) == SHOWN_VALUE_CHARS and old.endswith("…") and line.endswith("→ n")
