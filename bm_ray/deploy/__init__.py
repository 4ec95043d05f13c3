"""Taking bm-ray to a cluster: Ray Jobs submission of job specs, and a local multi-node Ray cluster."""
