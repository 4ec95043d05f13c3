"""Sphinx configuration of the bm-ray documentation (`make docs`).

Markdown through MyST, laid out by Diátaxis (tutorials, how-to guides, reference, explanation). The
reference is generated where a generator exists: the CLI from the Typer app (sphinx-click), the specs
from the pydantic models (autodoc_pydantic), the HTTP API from the committed OpenAPI document, the
reject reasons, error codes and Helm values from the code and the chart (``_ext/bm_ray_docs.py``).

The build is offline (no intersphinx) and strict: ``make docs`` runs ``sphinx-build -W --keep-going -n``,
so a warning, a broken cross-reference or a broken ``#anchor`` fails it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path[:0] = [str(DOCS / "_ext"), str(ROOT)]
# The same environment every bm-ray process sets; importing the CLI must not start TensorFlow's Keras 3.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import bm_ray  # noqa: E402

project = "bm-ray"
author = "bm-ray contributors"
copyright = "bm-ray contributors, Apache-2.0"
release = bm_ray.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinxcontrib.autodoc_pydantic",
    "sphinx_click",
    "sphinxcontrib.mermaid",
    "bm_ray_docs",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_ext", "Thumbs.db", ".DS_Store"]

# --- MyST ------------------------------------------------------------------------------------------
myst_enable_extensions = ["colon_fence", "deflist", "fieldlist"]
# Every heading down to ### gets an anchor, so `[x](page.md#heading)` and `[x](#heading)` resolve; a
# link to a heading that does not exist is a `myst.xref_missing` warning, an error under -W.
myst_heading_anchors = 3
myst_fence_as_directive = ["mermaid"]

# Option names, quotes and dashes are literal here: no typographic quotes or en dashes for `--flag` / "".
smartquotes = False

# --- strictness ------------------------------------------------------------------------------------
nitpicky = True
# Types from other projects: there is no intersphinx inventory offline, so these cannot resolve.
nitpick_ignore_regex = [
    (r"py:.*", r"(pydantic|pydantic_core|typing|typing_extensions|annotated_types|collections\.abc)\..*"),
    (r"py:.*", r"(Literal|Annotated|Any|BeforeValidator|FieldInfo|ConfigDict|Self)"),
    (r"py:class", r"(str|int|float|bool|dict|list|tuple|None|NoneType|type)"),
]

# --- autodoc / autodoc_pydantic ---------------------------------------------------------------------
autodoc_typehints = "none"  # the field tables say each type; signatures of validators are noise here
autodoc_member_order = "bysource"
autodoc_pydantic_model_show_json = True
autodoc_pydantic_model_show_config_summary = False
autodoc_pydantic_model_show_validator_summary = False
autodoc_pydantic_model_show_validator_members = False
autodoc_pydantic_model_show_field_summary = True
autodoc_pydantic_model_member_order = "bysource"
autodoc_pydantic_model_undoc_members = True
autodoc_pydantic_model_members = True
autodoc_pydantic_model_hide_paramlist = True
autodoc_pydantic_field_list_validators = False
autodoc_pydantic_field_show_constraints = True
autodoc_pydantic_field_show_default = True
autodoc_pydantic_model_summary_list_order = "bysource"


def _constraints_only() -> None:
    """autodoc_pydantic lists every metadata object of a field as a constraint, including the
    ``BeforeValidator`` that splits ``a,b`` flags into lists (shown as ``func = <function ...>``); keep
    the real constraints (``ge``, ``le``, ``min_length``, ...)."""
    from pydantic import functional_validators
    from sphinxcontrib.autodoc_pydantic.inspection import FieldInspector

    original = FieldInspector.get_constraints
    validators = tuple(
        getattr(functional_validators, name)
        for name in ("BeforeValidator", "AfterValidator", "PlainValidator", "WrapValidator")
    )

    def get_constraints(self: FieldInspector, field_name: str) -> dict:
        metadata = self.model.model_fields[field_name].metadata
        kept = [meta for meta in metadata if not isinstance(meta, validators)]
        if len(kept) == len(metadata):
            return original(self, field_name)
        field = self.model.model_fields[field_name]
        field.metadata, saved = kept, field.metadata
        try:
            return original(self, field_name)
        finally:
            field.metadata = saved

    FieldInspector.get_constraints = get_constraints


_constraints_only()

# --- HTML ------------------------------------------------------------------------------------------
# pydata-sphinx-theme: the theme of Ray's own documentation (docs.ray.io), so bm-ray's pages look and
# navigate like the Ray pages its users already read beside them; it also gives the section navigation
# and the in-page table of contents that a four-part Diátaxis layout needs, and bundles its assets.
html_theme = "pydata_sphinx_theme"
html_title = f"bm-ray {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "navbar_align": "left",
    "footer_start": ["copyright"],
    "footer_end": [],
}
html_static_path: list[str] = []
html_show_sourcelink = False

# Mermaid diagrams are drawn in the reader's browser by mermaid.js (sphinxcontrib-mermaid loads it from
# its CDN when a page is viewed; the build itself stays offline). Without it the diagram's source shows
# as text, which is written to read on its own. The layer diagram of the architecture page is plain text.
