"""Side-by-side benchmarks (`bm-ray bench ...`): each prints ratios measured in one run."""
