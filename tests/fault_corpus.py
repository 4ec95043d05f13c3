"""Write a small corpus full of faults, in each format, with the exact outcome the ingest must report.

Caps used by every spec here: ``max_text_chars=50`` (truncate), ``reject_text_chars=200`` (too_long).
Faults a format cannot express are left out of it: CSV has no null/number/list values or missing
fields (every cell is a string), Parquet has no malformed lines, invalid UTF-8 or blank lines, and
folder files have no fields, ids of their own or blank lines.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

CAPS = {"max_text_chars": 50, "reject_text_chars": 200}
FORMATS = ("jsonl", "csv", "parquet", "folders")

LONG = "x" * 250  # over reject_text_chars → too_long
TRUNC = "y" * 80  # over max_text_chars → truncated, still ok
GARBAGE = b"\xff\xfe\xfa\xfb" * 20  # mostly invalid UTF-8 → invalid_utf8


@dataclass
class FaultCorpus:
    """Where the corpus is, the spec options to read it, and what ingesting it must report."""

    input: str
    spec: dict[str, Any]
    ok_ids: list[str]
    reasons: dict[str, str]  # source → reject reason
    blank_lines: int = 0
    truncated: int = 1
    utf8_repaired: int = 1
    ignored: list[str] = field(default_factory=list)

    @property
    def rejected_by_reason(self) -> dict[str, int]:
        """Expected count per reason."""
        return dict(sorted(Counter(self.reasons.values()).items()))

    @property
    def rows_read(self) -> int:
        """Expected rows read (blank lines excluded)."""
        return len(self.ok_ids) + len(self.reasons)


def _jsonl(root: Path) -> FaultCorpus:
    def j(obj: Any) -> bytes:
        return json.dumps(obj).encode()

    lines: list[bytes] = [
        j({"id": "a1", "text": "good one", "label": "x"}),  # 1 ok
        j({"id": "a2", "text": "   ", "label": "x"}),  # 2 empty_text
        j({"id": "a3", "text": "", "label": "y"}),  # 3 empty_text
        j({"id": "a4", "text": None}),  # 4 empty_text (null)
        j({"id": "a5", "text": 42}),  # 5 not_a_string
        j({"id": "a6", "text": ["a", "b"]}),  # 6 not_a_string
        j({"id": "a7", "body": "no text field"}),  # 7 missing_field
        b"this is not json",  # 8 malformed_record
        b"[1, 2, 3]",  # 9 malformed_record (not an object)
        b'{"id": "a10", "text": "caf\xe9 ok", "label": "x"}',  # 10 ok, utf8_repaired
        b'{"id": "a11", "text": "' + GARBAGE + b'"}',  # 11 invalid_utf8
        j({"id": "a12", "text": LONG}),  # 12 too_long
        j({"id": "a13", "text": TRUNC}),  # 13 ok, truncated
        j({"id": "a1", "text": "dup of a1"}),  # 14 duplicate_id
        b"",  # 15 blank
        b"   ",  # 16 blank
        j({"id": 17, "text": "int id", "label": 3}),  # 17 ok: id "17", label "3"
        j({"text": "no id"}),  # 18 ok: id = source
        j({"id": "a19", "text": "label is a list", "label": [1]}),  # 19 not_a_string
    ]
    (root / "faults.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    reasons = {2: "empty_text", 3: "empty_text", 4: "empty_text", 5: "not_a_string", 6: "not_a_string"}
    reasons |= {7: "missing_field", 8: "malformed_record", 9: "malformed_record", 11: "invalid_utf8"}
    reasons |= {12: "too_long", 14: "duplicate_id", 19: "not_a_string"}
    return FaultCorpus(
        input=str(root / "faults.jsonl"),
        spec={},
        ok_ids=["a1", "a10", "a13", "17", "faults.jsonl:18"],
        reasons={f"faults.jsonl:{n}": r for n, r in reasons.items()},
        blank_lines=2,
    )


def _csv(root: Path) -> FaultCorpus:
    lines: list[bytes] = [
        b"id,text,label",  # 1 header
        b"a1,good one,x",  # 2 ok
        b"a2,   ,x",  # 3 empty_text
        b"a3,,y",  # 4 empty_text
        b'a4,"multi',  # 5 ok: a quoted field over two lines
        b'line text",z',  # 6
        b"a5,too,many,fields",  # 7 malformed_record
        b"a6,only-two",  # 8 malformed_record
        b"a7,caf\xe9 ok,x",  # 9 ok, utf8_repaired
        b"a8," + GARBAGE + b",x",  # 10 invalid_utf8
        b"a9," + LONG.encode() + b",x",  # 11 too_long
        b"a10," + TRUNC.encode() + b",x",  # 12 ok, truncated
        b"a1,dup of a1,x",  # 13 duplicate_id
        b"",  # 14 blank
        b'a11,"unterminated quote,x',  # 15 malformed_record, resync at 16
        b"a12,after resync,x",  # 16 ok
        b"   ",  # 17 blank
    ]
    (root / "faults.csv").write_bytes(b"\xef\xbb\xbf" + b"\r\n".join(lines) + b"\r\n")
    reasons = {3: "empty_text", 4: "empty_text", 7: "malformed_record", 8: "malformed_record"}
    reasons |= {10: "invalid_utf8", 11: "too_long", 13: "duplicate_id", 15: "malformed_record"}
    return FaultCorpus(
        input=str(root / "faults.csv"),
        spec={},
        ok_ids=["a1", "a4", "a7", "a10", "a12"],
        reasons={f"faults.csv:{n}": r for n, r in reasons.items()},
        blank_lines=2,
    )


def _parquet(root: Path) -> FaultCorpus:
    d = root / "pq"
    d.mkdir()
    pq.write_table(
        pa.table(
            {
                "id": ["a1", "a2", "a3", "a4", "a5", "a1", "a7"],
                "text": ["good one", "  ", None, LONG, TRUNC, "dup of a1", "ok two"],
                "label": ["x", "x", "y", "y", "x", "x", None],
            }
        ),
        d / "faults.parquet",
    )
    pq.write_table(pa.table({"id": ["n1", "n2"], "text": [1, 2]}), d / "numbers.parquet")
    pq.write_table(pa.table({"id": ["l1"], "text": [["a", "b"]]}), d / "lists.parquet")
    pq.write_table(pa.table({"id": ["m1"], "body": ["no text column"]}), d / "notext.parquet")
    reasons = {
        "faults.parquet:2": "empty_text",
        "faults.parquet:3": "empty_text",
        "faults.parquet:4": "too_long",
    }
    reasons |= {"faults.parquet:6": "duplicate_id", "numbers.parquet:1": "not_a_string"}
    reasons |= {"numbers.parquet:2": "not_a_string", "lists.parquet:1": "not_a_string"}
    reasons |= {"notext.parquet:1": "missing_field"}
    return FaultCorpus(input=str(d), spec={}, ok_ids=["a1", "a5", "a7"], reasons=reasons, utf8_repaired=0)


def _folders(root: Path) -> FaultCorpus:
    d = root / "news"
    files: dict[str, bytes] = {
        "README.TXT": b"not an article",
        "SHA256SUMS": b"0000  business/001.txt",
        ".hidden": b"hidden",
        "business/001.txt": b"Headline\n\nBody text.",
        "business/002.txt": b"",
        "business/003.txt": b"   \n  ",
        "business/004.txt": b"Caf\xe9 headline\n\nbody",
        "business/005.txt": GARBAGE,
        "sport/001.txt": LONG.encode(),
        "sport/002.txt": TRUNC.encode(),
        "sport/003.txt": b"Another\n\nfine article",
        "sport/.DS_Store": b"\x00\x01",
    }
    for rel, data in files.items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_bytes(data)
    reasons = {"business/002.txt": "empty_text", "business/003.txt": "empty_text"}
    reasons |= {"business/005.txt": "invalid_utf8", "sport/001.txt": "too_long"}
    return FaultCorpus(
        input=str(d),
        spec={},
        ok_ids=["business/001.txt", "business/004.txt", "sport/002.txt", "sport/003.txt"],
        reasons=reasons,
        ignored=[".hidden", "README.TXT", "SHA256SUMS", "sport/.DS_Store"],
    )


def write_fault_corpus(root: Path, fmt: str) -> FaultCorpus:
    """Write the fault corpus of format `fmt` under `root` (a tmp dir) and return what to expect."""
    corpus = {"jsonl": _jsonl, "csv": _csv, "parquet": _parquet, "folders": _folders}[fmt](root)
    corpus.spec = {"input": corpus.input, **CAPS, **corpus.spec}
    return corpus
