"""Process start-up, below every other layer: logging, Ray start-up, the Ray auth token, TensorFlow
start-up, and the few private Ray/Keras uses (:mod:`bm_ray.runtime.compat`).

``bm_ray.runtime.setup_worker_process`` is the `worker_process_setup_hook` of every bm-ray job.
"""

from bm_ray.runtime.worker import setup_worker_process

__all__ = ["setup_worker_process"]
