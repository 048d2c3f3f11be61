"""Benchmarks, each a module run from the repository root:

  python -m mdd.bench.gce ...                 # fused GCE vs XLA / chunked / CCE / Liger
  python -m mdd.bench.train_step ...          # denoiser train step per `loss.impl`
  python -m mdd.bench.scatter_contention ...  # scatter-add vs sort + scan under contention

Results go to benchmarks/*.json; what they show is in docs/benchmarks.md.
"""
