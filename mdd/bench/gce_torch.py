"""PyTorch peers of the fused GCE: Cut Cross-Entropy and Liger, plus the same group correction.

  python -m mdd.bench.gce --part=torch --points=target --torch_impls=cce,cce_exact,liger \
      --out=...   # this part alone; `--part=all` (the default) runs it in a second process

`mdd.bench.gce` runs `run_torch` in its own process (JAX keeps its preallocated GPU memory), so
the two parts compare against their own fp32 references on their own random inputs. The loss is
the peer's per-token CE plus the K-sparse group correction `z_y - sum_k q_k z_{G_k}` (a chunked
autograd function), i.e. the soft GCE with ce_mix=0. Needs a CUDA GPU, torch, triton and the
`cut-cross-entropy` / `liger-kernel` wheels; torch is imported inside `run_torch`, so this module
imports without it.
"""

from __future__ import annotations


def _flops(n, d, v, passes):
  """FLOPs counted as in `mdd.bench.gce`: 2NVD forward, 8NVD forward + backward."""
  return passes * n * v * d


def run_torch(points, reps, impls, log):
  """Times each peer in `impls` (cce, cce_exact, liger) at each (N, D, V, K) of `points`."""
  import torch
  import triton.testing

  class GroupCorrection(torch.autograd.Function):
    """sum_k coef[n, k] * (x_n . c_{idx[n, k]}), in row chunks, recomputed in backward."""

    @staticmethod
    def forward(ctx, x, c, idx, coef, chunk):
      out = torch.empty(x.shape[0], device=x.device, dtype=torch.float32)
      for s in range(0, x.shape[0], chunk):
        rows = c[idx[s:s + chunk]]                                          # [chunk, K, D]
        z = torch.einsum("nd,nkd->nk", x[s:s + chunk].float(), rows.float())
        out[s:s + chunk] = (coef[s:s + chunk] * z).sum(1)
      ctx.save_for_backward(x, c, idx, coef)
      ctx.chunk = chunk
      return out

    @staticmethod
    def backward(ctx, grad):
      x, c, idx, coef = ctx.saved_tensors
      dx = torch.empty_like(x)
      dc = torch.zeros(c.shape, device=c.device, dtype=torch.float32)
      for s in range(0, x.shape[0], ctx.chunk):
        wgt = coef[s:s + ctx.chunk] * grad[s:s + ctx.chunk, None]           # [chunk, K]
        rows = c[idx[s:s + ctx.chunk]].float()
        dx[s:s + ctx.chunk] = torch.einsum("nk,nkd->nd", wgt, rows).to(x.dtype)
        contrib = wgt[:, :, None] * x[s:s + ctx.chunk, None, :].float()
        dc.index_add_(0, idx[s:s + ctx.chunk].reshape(-1), contrib.reshape(-1, x.shape[1]))
      return dx, dc.to(c.dtype), None, None, None

  results = dict(torch_version=torch.__version__, device=torch.cuda.get_device_name())
  peers = {}
  if "cce" in impls or "cce_exact" in impls:
    from cut_cross_entropy import linear_cross_entropy
    peers["cce"] = lambda x, c, y: linear_cross_entropy(x, c, y, reduction="none")
    peers["cce_exact"] = lambda x, c, y: linear_cross_entropy(x, c, y, reduction="none",
                                                              filter_eps=None)
  if "liger" in impls:
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy
    peers["liger"] = lambda x, c, y: liger_fused_linear_cross_entropy(x, c, y, reduction="none")
  results["points"] = []
  for point_index, (n, d, v, k) in enumerate(points):
    gen = torch.Generator(device="cuda").manual_seed(point_index)
    x = torch.randn(n, d, device="cuda", generator=gen).to(torch.bfloat16)
    c = (torch.randn(v, d, device="cuda", generator=gen) * (2.0 / d ** 0.5)).to(torch.bfloat16)
    y = torch.randint(0, v, (n,), device="cuda", generator=gen)
    nbr = torch.randint(0, v, (v, k), device="cuda", generator=gen)
    nbr[:, 0] = torch.arange(v, device="cuda")
    nw = torch.rand(v, k, device="cuda", generator=gen)
    q = nw[y] / nw[y].sum(1, keepdim=True)
    # GCE soft = CE(y) + z_y - sum_k q_k z_{G_k}: gather [G, y] with coefficients [-q, +1].
    idx = torch.cat([nbr[y], y[:, None]], 1)
    coef = torch.cat([-q, torch.ones(n, 1, device="cuda")], 1)
    chunk = 4096
    # fp32 reference, chunked so it fits; tf32 off.
    torch.backends.cuda.matmul.allow_tf32 = False
    with torch.no_grad():
      ref = torch.empty(n, device="cuda")
      cf = c.float()
      for s in range(0, n, chunk):
        z = x[s:s + chunk].float() @ cf.T
        zg = torch.gather(z, 1, idx[s:s + chunk])
        # GCE soft = LSE - sum_k q_k z_{G_k}; coef[:, :-1] = -q.
        ref[s:s + chunk] = torch.logsumexp(z, 1) + (coef[s:s + chunk, :-1] * zg[:, :-1]).sum(1)
      del cf, z
    for impl in impls:
      if impl not in peers:
        continue
      row = dict(point=dict(N=n, D=d, V=v, K=k), impl=impl)
      ce_fn = peers[impl]

      def loss_fn(xr, cr):
        return ce_fn(xr, cr, y).float() + GroupCorrection.apply(xr, cr, idx, coef, chunk)

      try:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        with torch.no_grad():
          loss = loss_fn(x, c)
        torch.cuda.synchronize()
        row["fwd_extra_bytes"] = torch.cuda.max_memory_allocated() - base
        row["loss_rel_err"] = float((loss - ref).norm() / ref.norm())
        del loss
        with torch.no_grad():
          row["fwd_ms"] = triton.testing.do_bench(lambda: loss_fn(x, c), warmup=100,
                                                  rep=max(200, reps * 80), return_mode="median")
        row["fwd_tflops"] = _flops(n, d, v, 2) / row["fwd_ms"] / 1e9
      except Exception as e:  # pylint: disable=broad-except
        row["fwd_error"] = repr(e)[:400]
      try:
        xg = x.detach().requires_grad_(True)
        cg = c.detach().requires_grad_(True)

        def step():
          xg.grad = None
          cg.grad = None
          loss_fn(xg, cg).sum().backward()

        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        row["fwdbwd_extra_bytes"] = torch.cuda.max_memory_allocated() - base
        row["fwdbwd_ms"] = triton.testing.do_bench(step, warmup=100, rep=max(300, reps * 200),
                                                   return_mode="median")
        row["fwdbwd_tflops"] = _flops(n, d, v, 8) / row["fwdbwd_ms"] / 1e9
        del xg, cg
      except Exception as e:  # pylint: disable=broad-except
        row["fwdbwd_error"] = repr(e)[:400]
      torch.cuda.empty_cache()
      log(row)
      results["points"].append(row)
    del x, c, nbr, nw, q, idx, coef, ref
    torch.cuda.empty_cache()
  return results
