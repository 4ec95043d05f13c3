"""`report.html`: one self-contained page per job output, built from the output directory alone.

Every job (ingest, classify, train, evaluate, compare) calls :func:`try_build_report` at its end, and
``bm-ray report DIR`` rebuilds it. No model and no Ray: only the files the job left behind
(``summary.json``, ``_commits/``, ``rejects/``, ``predictions/``, ``metrics.json``, ``labels.json``,
``predictions.parquet``, ``compare.json``). It imports only the base layer (the file names of
:mod:`bm_ray.layout`, :mod:`bm_ray.model.metrics` and :mod:`bm_ray.model.calibration`), which is what lets
every job call it: it sits beside the base layer, not above the jobs as the design sketch drew it. Charts
are inline SVG drawn here, the CSS is inline and the page has no script at all (its
Content-Security-Policy forbids scripts and remote loads), so it opens from disk, offline, anywhere.

- :mod:`~bm_ray.report.outputs`: reading an output directory (which job wrote it, rejects, predictions);
- :mod:`~bm_ray.report.charts`: the SVG charts;
- :mod:`~bm_ray.report.html`: escaping (every untrusted value goes through
  :func:`~bm_ray.report.html.esc`), tables, sections, the page and its CSP;
- :mod:`~bm_ray.report.pages`: the sections and the three page kinds.
"""

from __future__ import annotations

import logging

from bm_ray import storage
from bm_ray.layout import REPORT_FILE
from bm_ray.report.outputs import OutputDir, ReportError
from bm_ray.report.pages import render_report

__all__ = ["ReportError", "build_report", "render_report", "try_build_report"]

logger = logging.getLogger(__name__)


def build_report(output: str, path: str | None = None) -> str:
    """Write ``report.html`` into the output directory (or to `path`) and return where it went.

    The job kind is detected from the output's files; :class:`ReportError` says what is missing when
    the directory is not a finished bm-ray job output.
    """
    document = render_report(output).encode("utf-8")
    if path is None:
        out = OutputDir(output)
        fs, target = out.fs, out.path(REPORT_FILE)
    else:
        fs, target = storage.resolve_uri(path)
    with fs.open_output_stream(target) as stream:
        stream.write(document)
    return path or f"{output.rstrip('/')}/{REPORT_FILE}"


def try_build_report(output: str) -> str | None:
    """Write the job's report after its results are committed; a failure is a warning, not a failed job.

    The report is derived from files already written, so a rendering bug must not turn a finished job
    into a failed one; ``bm-ray report DIR`` rebuilds it later.
    """
    try:
        return build_report(output)
    except Exception as error:  # any rendering failure: the job's results stand
        logger.warning(
            "report.html not written for %s (%s); rebuild it with `bm-ray report %s`", output, error, output
        )
        return None
