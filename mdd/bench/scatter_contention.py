"""Scatter-add under contention: why the tokenizer's GPU step is slow, and what replaces it.

  python -m mdd.bench.scatter_contention [--n=32768] [--vocab=65536] \
      --out=benchmarks/scatter_contention_h200.json

The VQ tokenizer's codebook gradient is a scatter-add of [N, d] rows into [V, d] where a few
codes take most tokens (perplexity ~7 at 64 px: the background). This times the scatter-add,
the same on sorted ids (XLA told so) and the sort + segmented scan of
`mdd.models.gather.segment_sum_sorted` on the same ids, skewed like the tokenizer's and uniform.
Prints a table; `--out` also writes it as JSON.
"""

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from mdd.models import gather


def skewed_ids(rng, n, vocab, hot_fraction):
  """`hot_fraction` of the ids on code 0, the rest uniform over the first 4096 codes."""
  ids = rng.integers(0, min(vocab, 4096), size=n)
  ids[rng.random(n) < hot_fraction] = 0
  return ids.astype(np.int32)


def timeit(fn, *args, reps=5):
  out = fn(*args)
  jax.block_until_ready(out)
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return 1e3 * float(np.median(times)), out


def _sorted_scatter(updates, ids, vocab):
  """The scatter-add on pre-sorted ids, with XLA told so (`indices_are_sorted`)."""
  order = jnp.argsort(ids)
  return jnp.zeros((vocab, updates.shape[1]), updates.dtype).at[ids[order]].add(
      updates[order], indices_are_sorted=True)


def main():
  parser = argparse.ArgumentParser(prog="python -m mdd.bench.scatter_contention",
                                   description=__doc__.splitlines()[0])
  parser.add_argument("--n", type=int, default=32768)
  parser.add_argument("--vocab", type=int, default=65536)
  parser.add_argument("--out", default="")
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  n, vocab = args.n, args.vocab
  rows = []
  for dist, ids in (("skewed 0.9", skewed_ids(rng, n, vocab, 0.9)),
                    ("uniform", skewed_ids(rng, n, vocab, 0.0))):
    for width, dtype in ((8, jnp.float32), (8, jnp.bfloat16), (384, jnp.float32),
                         (384, jnp.bfloat16)):
      updates = jnp.asarray(rng.normal(size=(n, width)), dtype)
      ids_j = jnp.asarray(ids)
      scatter = jax.jit(lambda u, i: jnp.zeros((vocab, u.shape[1]), u.dtype).at[i].add(u))
      sorted_scatter = jax.jit(lambda u, i: _sorted_scatter(u, i, vocab))
      sort_based = jax.jit(lambda u, i: gather.segment_sum_sorted(u, i, vocab))
      t_scatter, ref = timeit(scatter, updates, ids_j)
      t_sort, got = timeit(sort_based, updates, ids_j)
      t_hint, _ = timeit(sorted_scatter, updates, ids_j)
      err = float(jnp.max(jnp.abs(got.astype(jnp.float32) - ref.astype(jnp.float32))))
      rows.append(dict(ids=dist, width=width, dtype=jnp.dtype(dtype).name,
                       scatter_ms=t_scatter, sorted_scatter_ms=t_hint, sort_ms=t_sort,
                       ratio=t_scatter / t_sort, max_abs_diff=err))
  print(f"{'ids':<11} {'width':>5} {'dtype':<8} {'scatter ms':>10} {'sorted-hint ms':>14} "
        f"{'sort+scan ms':>12} {'ratio':>6} {'max|diff|':>9}")
  for r in rows:
    print(f"{r['ids']:<11} {r['width']:>5} {r['dtype']:<8} {r['scatter_ms']:>10.3f} "
          f"{r['sorted_scatter_ms']:>14.3f} {r['sort_ms']:>12.3f} {r['ratio']:>6.1f} "
          f"{r['max_abs_diff']:>9.2e}")
  if args.out:
    with open(args.out, "w") as f:
      json.dump(dict(device=str(jax.devices()[0].device_kind), jax=jax.__version__, n=n,
                     vocab=vocab, rows=rows), f, indent=1)


if __name__ == "__main__":
  main()
