"""bm-ray: distributed batch text classification on Ray (Ray Data, Ray Train + TensorFlow BERT, Ray Serve)."""

import os

# transformers' TF classes need Keras 2 (tf-keras): this must be set before TensorFlow is imported,
# in the driver and (through bm_ray.runtime.ray_init.runtime_env) in every Ray worker.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

__version__ = "0.1.0"
