"""`make bench`: serving and training benchmarks against baselines, in one run."""
