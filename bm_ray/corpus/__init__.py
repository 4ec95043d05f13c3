"""The data layer: any corpus (JSONL, CSV/TSV, Parquet, folder-per-class) → a streaming Ray Dataset of
normalised rows. It starts no Ray (callers do) and knows no model.

- :mod:`~bm_ray.corpus.listing`: files, globs, formats, the input manifest;
- :mod:`~bm_ray.corpus.readers`: the Ray Data datasource (:func:`read_corpus`);
- :mod:`~bm_ray.corpus.formats`: each format's records parsed into rows or rejects;
- :mod:`~bm_ray.corpus.rows`: validation, the reject vocabulary, text cleaning;
- :mod:`~bm_ray.corpus.dedupe`: duplicate ids.
"""

from bm_ray.corpus.listing import CorpusFile, CorpusInfo, infer_format, input_manifest, list_corpus, unit_key
from bm_ray.corpus.readers import CorpusDatasource, first_ok_rows, ok_rows, read_corpus
from bm_ray.corpus.rows import BLANK_LINE, ROW_COLUMNS, clean_text, row_schema

__all__ = [
    "BLANK_LINE",
    "ROW_COLUMNS",
    "CorpusDatasource",
    "CorpusFile",
    "CorpusInfo",
    "clean_text",
    "first_ok_rows",
    "infer_format",
    "input_manifest",
    "list_corpus",
    "ok_rows",
    "read_corpus",
    "row_schema",
    "unit_key",
]
