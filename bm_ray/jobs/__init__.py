"""One module per job kind (ingest, train, evaluate, classify, compare, tune): each takes a spec and
returns a typed result. Jobs start Ray only through :func:`bm_ray.runtime.ray_init.init_ray`."""
