"""Float64 NumPy reference for Grouped Cross-Entropy (GCE): loss and gradients.

This is the ground truth every implementation in `pallas_kernels.gce` is tested against. It
follows the definition in docs/architecture.md ("GCE") literally, with
materialised float64 logits, so it is only meant for small shapes.

Conventions shared with `api.fused_gce` (documented there too):
- neighbour entries `< 0` are padding and get weight 0, whatever `neighbour_weights` says;
- weights are normalised per row; a row whose weights sum to 0 falls back to plain CE on its
  label (soft and marginal then both equal `LSE(z) - z_y`);
- a row is counted only when `valid[n]` (default all True) and `labels[n] >= 0`; other rows
  give loss 0 and no gradient.
"""

from __future__ import annotations

import numpy as np

MODES = ("soft", "marginal")


def _logsumexp(a: np.ndarray, axis: int) -> np.ndarray:
  """Stable log-sum-exp that returns -inf for an all -inf slice."""
  peak = np.max(a, axis=axis, keepdims=True)
  peak = np.where(np.isfinite(peak), peak, 0.0)
  with np.errstate(divide="ignore"):
    return np.squeeze(peak, axis) + np.log(np.sum(np.exp(a - peak), axis=axis))


def gce_reference(
    x, w, labels, neighbours, neighbour_weights, *, mode: str = "soft", ce_mix: float = 0.0,
    valid=None, with_grads: bool = True):
  """Returns `(loss [N], dloss_sum/dx [N, D], dloss_sum/dw [V, D])` in float64.

  The gradients are those of `sum(loss)`, i.e. of the per-token losses with a cotangent of ones;
  pass `with_grads=False` to get only the loss (then the gradients are None).
  """
  if mode not in MODES:
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
  x = np.asarray(x, np.float64)
  w = np.asarray(w, np.float64)
  labels = np.asarray(labels, np.int64)
  neighbours = np.asarray(neighbours, np.int64)
  neighbour_weights = np.asarray(neighbour_weights, np.float64)
  num_tokens = x.shape[0]
  vocab = w.shape[0]
  row_ok = labels >= 0
  if valid is not None:
    row_ok = row_ok & np.asarray(valid, bool)
  safe_labels = np.where(row_ok, labels, 0)

  logits = x @ w.T                                                   # [N, V]
  lse = _logsumexp(logits, axis=1)
  probs = np.exp(logits - lse[:, None])
  group = neighbours[safe_labels]                                    # [N, K]
  group_w = np.where(group >= 0, neighbour_weights[safe_labels], 0.0)
  total = group_w.sum(axis=1)
  fallback = total <= 0.0
  q = np.where(fallback[:, None], 0.0, group_w / np.where(fallback, 1.0, total)[:, None])
  safe_group = np.where(group >= 0, group, 0)
  group_logits = np.take_along_axis(logits, safe_group, axis=1)     # [N, K]
  label_logit = logits[np.arange(num_tokens), safe_labels]

  # target[n, v] = d(group term)/dz: the distribution the softmax is pulled towards.
  target = np.zeros_like(logits)
  if mode == "soft":
    group_term = np.sum(q * group_logits, axis=1)
    resp = q
  else:
    with np.errstate(divide="ignore"):
      scores = np.where(q > 0, group_logits + np.log(np.where(q > 0, q, 1.0)), -np.inf)
    group_term = _logsumexp(scores, axis=1)
    resp = np.where(q > 0, np.exp(scores - np.where(fallback, 0.0, group_term)[:, None]), 0.0)
  group_term = np.where(fallback, label_logit, group_term)
  rows = np.repeat(np.arange(num_tokens), group.shape[1])
  np.add.at(target, (rows, safe_group.reshape(-1)), ((1.0 - ce_mix) * resp).reshape(-1))
  label_coef = ce_mix + (1.0 - ce_mix) * fallback
  np.add.at(target, (np.arange(num_tokens), safe_labels), label_coef)

  loss = lse - (1.0 - ce_mix) * group_term - ce_mix * label_logit
  loss = np.where(row_ok, loss, 0.0)
  if not with_grads:
    return loss, None, None
  dlogits = np.where(row_ok[:, None], probs - target, 0.0)
  return loss, dlogits @ w, dlogits.T @ x
