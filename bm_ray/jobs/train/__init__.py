"""The `train` job: data preparation, the Ray Train loop, the driver, resume and the optimizer."""
