"""Write ``docs/openapi.json``, the endpoint's OpenAPI document, from the FastAPI app of the Serve ingress.

Run by ``make openapi`` after changing a route or a request/response model; ``tests/integration/test_docs.py``
fails while the committed document differs from what the app generates.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

OPENAPI = Path(__file__).resolve().parents[1] / "openapi.json"


def openapi_document() -> dict[str, Any]:
    """The document FastAPI serves at ``/openapi.json`` (and renders at ``/docs``)."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    from bm_ray.serve.gateway import http_app

    return http_app.openapi()


def render(document: dict[str, Any]) -> str:
    """The committed form: indented, keys in FastAPI's order, one trailing newline."""
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    OPENAPI.write_text(render(openapi_document()), encoding="utf-8")
    print(f"wrote {OPENAPI}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
