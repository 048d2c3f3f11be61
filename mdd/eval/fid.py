"""FID with local weights, Fréchet distance, feature statistics, and the offline stand-in.

* `frechet_distance(mu1, sigma1, mu2, sigma2)`: float64, with Tr√(Σ1Σ2) taken as the sum of the
  square roots of the eigenvalues of the symmetric PSD matrix √Σ1 Σ2 √Σ1 (stable where
  `scipy.linalg.sqrtm(Σ1 Σ2)` can return complex noise).
* Statistics files are `.npz` with `mu` [D] and `sigma` [D, D] (float64), the keys of the ADM
  (guided-diffusion) reference batches, whose `mu`/`sigma` can be used directly.
* `fid(...)` / the CLI use the FID Inception (`mdd.eval.inception`, pytorch-fid weights).
* `tokenizer_feature_distance` is the same Fréchet distance on features of *any* `feature_fn`
  (e.g. the VQ tokenizer's encoder) for offline runs; it is NOT FID and must not be reported
  as FID.
* Files (images, statistics, results) may be local or URLs (`gs://`): `mdd.utils.fileio`.
* `evaluate` (the eval stage's `fid`): with several processes all generate, process 0 alone
  computes the features and writes `fid.json`.

CLI:
  python -m mdd.eval.fid --weights pt_inception-2015-12-05-6726825d.pth \
      --images DIR_OR_NPZ --ref ref_stats.npz [--save_stats OUT.npz] [--out fid.json]
"""

import argparse
import glob
import io
import json
import os
import sys
from typing import Callable, Iterable, Sequence

import numpy as np
from PIL import Image

from mdd.data import captions as captions_lib
from mdd.utils import fileio

_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def compute_statistics(features) -> tuple[np.ndarray, np.ndarray]:
  """Mean and (unbiased, ddof=1) covariance of features [N, D], in float64."""
  features = np.asarray(features, np.float64)
  if features.ndim != 2 or features.shape[0] < 2:
    raise ValueError(f"need features [N >= 2, D], got shape {features.shape}")
  return features.mean(axis=0), np.cov(features, rowvar=False)


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
  """Symmetric square root of a symmetric PSD matrix; tiny negative eigenvalues clip to 0."""
  eigvals, eigvecs = np.linalg.eigh((matrix + matrix.T) / 2)
  return (eigvecs * np.sqrt(np.clip(eigvals, 0, None))) @ eigvecs.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """‖μ1−μ2‖² + Tr Σ1 + Tr Σ2 − 2 Tr √(Σ1 Σ2), in float64."""
  mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
  sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
  sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
  dim = mu1.shape[0]
  if mu2.shape != (dim,) or sigma1.shape != (dim, dim) or sigma2.shape != (dim, dim):
    raise ValueError(f"statistics shapes disagree: mu {mu1.shape} vs {mu2.shape}, "
                     f"sigma {sigma1.shape} vs {sigma2.shape}")
  # Σ1Σ2 is similar to √Σ1 Σ2 √Σ1, which is symmetric PSD: same eigenvalues, real and >= 0.
  root1 = _sqrt_psd(sigma1)
  middle = root1 @ sigma2 @ root1
  eigvals = np.linalg.eigvalsh((middle + middle.T) / 2)
  trace_sqrt = np.sqrt(np.clip(eigvals, 0, None)).sum()
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)


def save_statistics(path: str, mu, sigma) -> None:
  fileio.save_npz(path, mu=np.asarray(mu, np.float64), sigma=np.asarray(sigma, np.float64))


def load_statistics(path: str) -> tuple[np.ndarray, np.ndarray]:
  """Reads `mu`, `sigma` from a statistics `.npz` (ours or an ADM reference batch)."""
  if not fileio.isfile(path):
    raise ValueError(f"statistics file not found: {path!r}")
  with fileio.open_npz(path) as data:
    if "mu" not in data.files or "sigma" not in data.files:
      raise ValueError(f"{path!r} has no mu/sigma arrays (keys: {data.files})")
    return data["mu"].astype(np.float64), data["sigma"].astype(np.float64)


# --- Images -----------------------------------------------------------------------------------


def list_image_files(directory: str) -> list[str]:
  """All image files under `directory` (recursive, sorted): also reads the GenEval layout."""
  if not fileio.isdir(directory):
    raise ValueError(f"image directory not found: {directory!r}")
  if fileio.is_remote(directory):
    return sorted(_remote_image_files(directory))
  files = [p for p in glob.glob(os.path.join(directory, "**", "*"), recursive=True)
           if p.lower().endswith(_IMAGE_EXTENSIONS) and os.path.isfile(p)]
  return sorted(files)


def _remote_image_files(directory: str):
  """Image files under a remote folder: one listing per folder, names with an image extension
  taken as files (a recursive glob is refused by epath on object stores)."""
  for name in fileio.listdir(directory):
    child = os.path.join(directory, name)
    if name.lower().endswith(_IMAGE_EXTENSIONS):
      yield child
    elif fileio.isdir(child):
      yield from _remote_image_files(child)


def iterate_image_batches(source: str, batch_size: int) -> Iterable[np.ndarray]:
  """uint8 batches [B, H, W, 3] from a directory or an `.npz` (`arr_0`/`images`, ADM style).

  A batch never mixes image sizes (the network resizes each image to 299 itself).
  """
  if source.endswith(".npz"):
    with fileio.open_npz(source) as data:
      key = "arr_0" if "arr_0" in data.files else "images" if "images" in data.files else None
      if key is None:
        raise ValueError(f"{source!r} has no image array 'arr_0' or 'images' ({data.files})")
      images = data[key]
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
      raise ValueError(f"{source!r}: expected uint8 [N, H, W, 3], got {images.dtype} "
                       f"{images.shape}")
    for start in range(0, len(images), batch_size):
      yield images[start:start + batch_size]
    return
  batch = []
  for path in list_image_files(source):
    with Image.open(io.BytesIO(fileio.read_bytes(path))) as picture:
      image = np.asarray(picture.convert("RGB"))
    if batch and image.shape != batch[0].shape:
      yield np.stack(batch)
      batch = []
    batch.append(image)
    if len(batch) == batch_size:
      yield np.stack(batch)
      batch = []
  if batch:
    yield np.stack(batch)


def features_of(batches: Iterable[np.ndarray], feature_fn: Callable, desc="features"):
  """Concatenated `feature_fn(batch)` over batches, with a progress bar."""
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  out = [np.asarray(feature_fn(b), np.float64) for b in tqdm(batches, desc=desc, leave=False)]
  if not out:
    raise ValueError("no images found")
  return np.concatenate(out)


def tokenizer_feature_distance(images_a, images_b, feature_fn: Callable,
                               batch_size: int = 64) -> float:
  """Fréchet distance between two image sets on `feature_fn` features (NOT FID).

  `feature_fn(uint8 [B, H, W, 3]) -> [B, D]` is a closure, e.g. pooled tokenizer-encoder
  features; useful offline where the Inception weights are absent. Values are comparable only
  between runs that use the same `feature_fn`.
  """
  def batches(images):
    images = np.asarray(images)
    return (images[i:i + batch_size] for i in range(0, len(images), batch_size))

  stats_a = compute_statistics(features_of(batches(images_a), feature_fn))
  stats_b = compute_statistics(features_of(batches(images_b), feature_fn))
  return frechet_distance(*stats_a, *stats_b)


def inception_feature_fn(weights: str, batch_size: int = 50) -> Callable:
  """`feature_fn(uint8 [B, H, W, 3]) -> float64 [B, 2048]` of the FID Inception at `weights`.

  For images generated in memory: `compute_statistics(features_of(batches, feature_fn))`, then
  `frechet_distance(mu, sigma, *load_statistics(ref))`.
  """
  from mdd.eval import inception  # pylint: disable=g-import-not-at-top
  model, variables = inception.load_fid_inception(weights)
  return inception.make_feature_fn(model, variables, batch_size)


def inception_statistics(source: str, weights: str, batch_size: int = 50):
  """(mu, sigma, number of images) of FID Inception features of a directory or `.npz`."""
  feature_fn = inception_feature_fn(weights, batch_size)
  features = features_of(iterate_image_batches(source, batch_size), feature_fn, "inception")
  return compute_statistics(features) + (len(features),)


def reference_statistics(ref: str, weights: str, batch_size: int = 50):
  """(mu, sigma) from a statistics `.npz` (mu/sigma keys), else from the images it names."""
  if ref.endswith(".npz"):
    with fileio.open_npz(ref) as data:
      has_stats = "mu" in data.files and "sigma" in data.files
    if has_stats:
      return load_statistics(ref)
  mu, sigma, _ = inception_statistics(ref, weights, batch_size)
  return mu, sigma


def fid(images: str, ref: str, weights: str, batch_size: int = 50) -> dict:
  """FID of images (dir or npz) against `ref` (statistics `.npz`, or images)."""
  mu, sigma, num_images = inception_statistics(images, weights, batch_size)
  ref_mu, ref_sigma = reference_statistics(ref, weights, batch_size)
  return {"fid": frechet_distance(mu, sigma, ref_mu, ref_sigma), "num_images": num_images}


def main(argv: Sequence[str] | None = None):
  parser = argparse.ArgumentParser(description="FID with the FID Inception from a local file.")
  parser.add_argument("--weights", required=True,
                      help="pt_inception-2015-12-05-*.pth, or a .safetensors/.npz conversion")
  parser.add_argument("--images", required=True, help="image directory or .npz (arr_0)")
  parser.add_argument("--ref", default=None,
                      help="reference .npz with mu/sigma (e.g. ADM batch), or image dir/npz")
  parser.add_argument("--save_stats", default=None, help="write the images' mu/sigma here")
  parser.add_argument("--out", default=None, help="write {'fid', 'num_images'} JSON here")
  parser.add_argument("--batch_size", type=int, default=50)
  args = parser.parse_args(argv)
  if args.ref is None and args.save_stats is None:
    parser.error("give --ref to compute FID and/or --save_stats to write statistics")
  try:
    _run_cli(args)
  except ValueError as e:
    sys.exit(f"error: {e}")


def _run_cli(args):
  mu, sigma, num_images = inception_statistics(args.images, args.weights, args.batch_size)
  if num_images < 2048:
    print(f"warning: FID from {num_images} < 2048 images is biased upwards", file=sys.stderr)
  if args.save_stats:
    save_statistics(args.save_stats, mu, sigma)
  if args.ref:
    ref_mu, ref_sigma = reference_statistics(args.ref, args.weights, args.batch_size)
    result = {"fid": frechet_distance(mu, sigma, ref_mu, ref_sigma), "num_images": num_images}
    print(json.dumps(result))
    if args.out:
      fileio.write_json_atomic(args.out, result)


if __name__ == "__main__":
  main(sys.argv[1:])


def evaluate(generator, section, workdir: str) -> dict:
  """The `fid` entry of `mdd.eval.registry`: FID of the trained model's samples against
  `section.ref_stats`, written to DIR/eval/fid.json.

  Prompts: `captions.prompts_for(config.data)`, the held-out split's captions (ShapeGen: its
  prompt set). `ref_stats="dataset"` takes the reference from the images of those same held-out
  examples (each once), so prompts and reference come from one split; a statistics file must
  have been computed from that split's images for the same to hold.
  """
  batch_size = int(section.batch_size)
  n = int(section.num_samples)
  data_cfg = generator.config.data
  prompts = captions_lib.prompts_for(data_cfg, n)
  # Every process generates (a collective) and receives every image; process 0 alone runs
  # the Inception network, writes fid.json and hands the result to the others.
  images = generator.generate_fn(batch_size)(prompts, list(range(n)))

  def score_and_write():
    feature_fn = inception_feature_fn(section.weights, batch_size)
    batches = (images[i:i + batch_size] for i in range(0, n, batch_size))
    mu, sigma = compute_statistics(features_of(batches, feature_fn))
    if section.ref_stats == "dataset":
      reference = captions_lib.validation_image_batches(data_cfg, n, batch_size=batch_size)
      ref_mu, ref_sigma = compute_statistics(features_of(reference, feature_fn, "reference"))
    else:
      ref_mu, ref_sigma = load_statistics(section.ref_stats)
    result = {"fid": float(frechet_distance(mu, sigma, ref_mu, ref_sigma)),
              "num_images": int(len(images))}
    fileio.write_json_atomic(os.path.join(workdir, "eval", "fid.json"), result)
    print(f"FID {result['fid']:.3f} over {len(images)} images", flush=True)
    return result

  from mdd.utils import sharding  # pylint: disable=g-import-not-at-top
  return sharding.on_main_process(score_and_write)
