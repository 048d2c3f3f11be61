r"""Tokenizer reconstruction quality: PSNR / SSIM / codebook usage.

On held-out ShapeGen and on the real photos bundled with scikit-image (astronaut, coffee,
chelsea, rocket; centre-cropped and resized to 256 and 512 px):

  python -m mdd.eval.reconstruction --workdir=DIR [--photos] [--num_examples=512]

reads DIR/tokenizer (see `mdd.workdir.Workdir.load_tokenizer`) and writes
DIR/eval/reconstruction.json. PSNR is per image on [0, 1] after clipping, averaged; SSIM is the
Gaussian-window SSIM of Wang et al. (sigma 1.5, 11 taps, per channel, borders cropped), the
same as `skimage.metrics.structural_similarity(..., gaussian_weights=True,
use_sample_covariance=False, data_range=1)`.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from mdd import workdir as workdir_lib
from mdd.data import loader
from mdd.data import sources
from mdd.models import quantizers
from mdd.utils import fileio

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def psnr(reconstruction: np.ndarray, target: np.ndarray) -> np.ndarray:
  """Per-image PSNR [N] in dB of float images in [0, 1] ([N, H, W, C])."""
  mse = np.mean((np.asarray(reconstruction, np.float64) - np.asarray(target, np.float64)) ** 2,
                axis=(1, 2, 3))
  return 10.0 * np.log10(1.0 / np.maximum(mse, 1e-10))


def ssim(reconstruction: np.ndarray, target: np.ndarray, sigma: float = 1.5) -> np.ndarray:
  """Per-image SSIM [N] of float images in [0, 1] ([N, H, W, C]), Gaussian window."""
  c1, c2 = 0.01 ** 2, 0.03 ** 2
  truncate = 3.5
  pad = int(truncate * sigma + 0.5)
  out = []
  for x, y in zip(np.asarray(reconstruction, np.float64), np.asarray(target, np.float64)):
    per_channel = []
    for c in range(x.shape[-1]):
      a, b = x[..., c], y[..., c]
      blur = lambda z: ndimage.gaussian_filter(z, sigma, truncate=truncate, mode="reflect")
      mu_a, mu_b = blur(a), blur(b)
      var_a = blur(a * a) - mu_a ** 2
      var_b = blur(b * b) - mu_b ** 2
      cov = blur(a * b) - mu_a * mu_b
      s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) *
                                                      (var_a + var_b + c2))
      per_channel.append(s[pad:s.shape[0] - pad, pad:s.shape[1] - pad].mean())
    out.append(np.mean(per_channel))
  return np.asarray(out)


def make_roundtrip(model):
  """jit(params, images uint8 [B, H, W, 3]) -> (reconstruction float [0, 1], ids)."""

  @jax.jit
  def roundtrip(params, images):
    ids = model.apply({"params": params}, images, method="encode")
    decoded = model.apply({"params": params}, ids, method="decode")
    return jnp.clip((decoded + 1.0) / 2.0, 0.0, 1.0), ids

  return roundtrip


def evaluate_images(model, params, images: np.ndarray, batch_size: int = 64,
                    roundtrip=None) -> dict[str, float]:
  """PSNR, SSIM, codebook usage (share of codes used at least once) and code perplexity.

  `images` uint8 [N, H, W, 3]; the last partial batch is padded (and its padding ignored) so
  that one compiled function serves every batch.
  """
  images = np.asarray(images)
  if images.ndim != 4 or images.dtype != np.uint8:
    raise ValueError(f"evaluate_images: need uint8 [N, H, W, 3], got {images.dtype} "
                     f"{images.shape}")
  roundtrip = roundtrip or make_roundtrip(model)
  num = len(images)
  batch_size = min(batch_size, num)
  counts = np.zeros(model.num_codes, np.int64)
  psnrs, ssims = [], []
  for start in range(0, num, batch_size):
    chunk = images[start:start + batch_size]
    real = len(chunk)
    if real < batch_size:
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - real, 0)])
    recon, ids = jax.device_get(roundtrip(params, chunk))
    recon, ids = recon[:real], ids[:real]
    target = chunk[:real].astype(np.float64) / 255.0
    psnrs.append(psnr(recon, target))
    ssims.append(ssim(recon, target))
    counts += np.bincount(np.asarray(ids).reshape(-1), minlength=model.num_codes)
  return {"psnr": float(np.mean(np.concatenate(psnrs))),
          "ssim": float(np.mean(np.concatenate(ssims))),
          "codebook_usage": float(np.mean(counts > 0)),
          "perplexity": float(quantizers.perplexity(jnp.asarray(counts, jnp.float32))),
          "num_images": int(num)}


def shapes_images(data_cfg, split: str = "heldout", num_examples: int = 512) -> np.ndarray:
  """The first `num_examples` images of a split of the configured source, uint8 [N, H, W, 3]."""
  source = loader.make_source(data_cfg, split)
  num = min(int(num_examples), len(source))
  return np.stack([source[i]["image"] for i in range(num)])


def photo_images(resolution: int, names: Sequence[str] = PHOTOS) -> np.ndarray:
  """scikit-image's bundled photos, centre-cropped square and resized: uint8 [N, r, r, 3]."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    from skimage import data as skdata  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("the photo reconstruction eval needs scikit-image (pip install "
                      "scikit-image)") from e
  out = []
  for name in names:
    photo = np.asarray(getattr(skdata, name)())
    if photo.ndim == 2:
      photo = np.repeat(photo[..., None], 3, -1)
    photo = photo[..., :3]
    side = min(photo.shape[:2])
    top, left = (photo.shape[0] - side) // 2, (photo.shape[1] - side) // 2
    crop = Image.fromarray(photo[top:top + side, left:left + side])
    out.append(np.asarray(crop.resize((resolution, resolution), Image.BICUBIC)))
  return np.stack(out).astype(np.uint8)


def photo_eval(model, params, resolutions: Sequence[int] = (256, 512)) -> dict[str, float]:
  """PSNR / SSIM on the scikit-image photos at each resolution (keys `photos{res}_psnr`...)."""
  results = {}
  roundtrip = make_roundtrip(model)
  for res in resolutions:
    metrics = evaluate_images(model, params, photo_images(res), batch_size=len(PHOTOS),
                              roundtrip=roundtrip)
    results[f"photos{res}_psnr"] = metrics["psnr"]
    results[f"photos{res}_ssim"] = metrics["ssim"]
  return results


def run_eval(workdir: str, num_examples: int = 512, photos: bool = False,
             resolutions: Sequence[int] = (256, 512)) -> dict[str, Any]:
  """Loads DIR/tokenizer and evaluates it; writes DIR/eval/reconstruction.json."""
  run_dir = workdir_lib.Workdir(workdir)
  tokenizer = run_dir.load_tokenizer()
  model, params = tokenizer.model, tokenizer.params
  config = run_dir.load_tokenizer_config()
  images = shapes_images(config.data, sources.heldout_split(config.data), num_examples)
  results = {f"shapes_{k}": v for k, v in evaluate_images(model, params, images).items()}
  if photos:
    results.update(photo_eval(model, params, resolutions))
  fileio.write_json_atomic(run_dir.eval_file("reconstruction.json"), results)
  return results


def main(argv: Sequence[str] | None = None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--num_examples", type=int, default=512)
  parser.add_argument("--photos", action="store_true", help="also the scikit-image photos")
  parser.add_argument("--resolutions", default="256,512")
  args = parser.parse_args(argv)
  resolutions = [int(r) for r in args.resolutions.split(",") if r]
  results = run_eval(args.workdir, args.num_examples, args.photos, resolutions)
  print(json.dumps(results, indent=2, sort_keys=True))


if __name__ == "__main__":
  main()
