"""The setup hook every Ray worker process of a bm-ray job runs first (light imports only)."""

from __future__ import annotations

import os
import warnings

from bm_ray.runtime.logs import verbose


def setup_worker_process() -> None:
    """Runs first in every Ray worker process of a bm-ray job: Ray Data's console as in the driver.

    Ray Data configures its logging when a process first imports it, from ``RAY_DATA_LOGGING_CONFIG``
    when set: bm-ray's copy of Ray Data's default with the console at WARNING
    (``bm_ray/data/ray_data_logging.yaml``). Processes Ray Train or Ray Data start themselves (the
    dataset split coordinator, shuffle actors) log through it too. TensorFlow, whoever imports it first,
    starts as :mod:`bm_ray.runtime.tf` describes. Only light imports run here (no TF, no Ray Data).
    """
    from importlib import resources

    from bm_ray.runtime.tf import route_tensorflow_import

    route_tensorflow_import()  # Ray Train's backend imports TF itself, before any bm-ray code runs here
    if not verbose():
        # Deprecation notices Ray's own modules raise about Ray's own calls: nothing a user can act on.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"ray\.")
        config = resources.files("bm_ray") / "data" / "ray_data_logging.yaml"
        os.environ.setdefault("RAY_DATA_LOGGING_CONFIG", str(config))
