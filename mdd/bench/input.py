r"""Input pipeline throughput: decoded and fitted examples/s from ArrayRecord shards.

  python -m mdd.bench.input --resolutions=256,512 --workers=0,1,2,4 \
      --need=B:256:STEP_S --out=benchmarks/input_cpu.json

Writes `--num_images` synthetic photo-like 640x480 images (a smooth colour field, shapes and
luminance noise, so JPEG sizes are those of photos: ~115 KB at quality 95) as a folder, converts
them with `mdd.data.convert` (the JPEG q95 records a real conversion writes), then reads them
through `mdd.data.loader.batch_iterator(source, batch_size, seed=0, num_workers=N)` from an
`mdd.data.records.ArrayRecordSource` (decode, random crop, bicubic resize). Per (resolution,
workers) it reports examples/s over `--batches` batches after `--warmup` batches, and for inline
reading (0 workers) the CPU ms per example, which other load on the machine does not change.
The warm-up covers worker start-up; workers fill their buffers (up to 2 batches each)
meanwhile, so keep `--batches` well above 2 x workers.

`--need=VARIANT:BATCH:SECONDS,...` states what a train step consumes: BATCH examples every
SECONDS (the step time measured elsewhere, e.g. by `mdd.bench.train_step`). The output adds
BATCH / SECONDS examples/s per variant and the worker counts that reach it at each resolution.
Prints a table; with `--out` writes JSON (hardware, versions, image sizes, rows, needs).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import tempfile
import time

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from mdd.data import convert
from mdd.data import loader
from mdd.data import records


def photo_like(rng: np.random.Generator, height: int = 480, width: int = 640) -> Image.Image:
  """A synthetic RGB image whose JPEG compresses like a photo's (not like flat shapes or noise)."""
  field = rng.uniform(0, 255, (5, 7, 3)).astype(np.uint8)
  image = Image.fromarray(field).resize((width, height), Image.BICUBIC)
  draw = ImageDraw.Draw(image)
  for _ in range(int(rng.integers(4, 10))):
    left, top = rng.uniform(-0.2, 1.0, 2) * (width, height)
    box_w, box_h = rng.uniform(0.1, 0.5, 2) * (width, height)
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    shape = draw.ellipse if rng.integers(2) else draw.rectangle
    shape([left, top, left + box_w, top + box_h], fill=colour)
  image = image.filter(ImageFilter.GaussianBlur(1.5))
  # Texture: mid-frequency and fine luminance noise.
  texture = rng.normal(0, 8, (height // 4, width // 4)).astype(np.float32)
  texture = np.asarray(Image.fromarray(texture).resize((width, height), Image.BICUBIC))
  texture = texture + rng.normal(0, 3, (height, width))
  pixels = np.asarray(image, np.float32) + texture[..., None]
  return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def write_dataset(directory: str, num_images: int, seed: int = 0) -> float:
  """Writes the synthetic folder and converts it to `directory/records`; returns images/s of
  the conversion (all cores)."""
  rng = np.random.default_rng(seed)
  folder = os.path.join(directory, "folder")
  os.makedirs(os.path.join(folder, "images"))
  with open(os.path.join(folder, "manifest.jsonl"), "w", encoding="utf-8") as manifest:
    for i in range(num_images):
      path = f"images/{i:05d}.png"  # Lossless here; the converter makes the JPEGs.
      photo_like(rng).save(os.path.join(folder, path))
      manifest.write(json.dumps({"image": path, "caption": f"synthetic photo {i}"}) + "\n")
  start = time.perf_counter()
  convert.convert(folder, os.path.join(directory, "records"), max_side=512,
                  validation_fraction=0.0, num_workers=os.cpu_count() or 1, progress=False)
  return num_images / (time.perf_counter() - start)


def image_sizes(shards: list[str]) -> dict:
  """Sizes of the stored images."""
  source = records.ArrayRecordSource(shards, 8)
  sizes = [len(records.decode_record(source.read_record(i)).image_bytes)
           for i in range(len(source))]
  first = records.decode_record(source.read_record(0))
  return {"num_images": len(source), "stored_width": first.width,
          "stored_height": first.height, "encoding": first.encoding,
          "kb_mean": float(np.mean(sizes)) / 1e3, "kb_min": min(sizes) / 1e3,
          "kb_max": max(sizes) / 1e3}


def measure(shards: list[str], resolution: int, workers: int, *, batch_size: int,
            batches: int, warmup: int, crop: str) -> dict:
  """examples/s of `batch_iterator` over the shards at `resolution` with `workers` processes."""
  source = records.ArrayRecordSource(shards, resolution, crop=crop, seed=0)
  iterator = loader.batch_iterator(source, batch_size=batch_size, seed=0, num_workers=workers)
  start = time.perf_counter()
  for _ in range(warmup):
    batch = next(iterator)
  ready, cpu_ready = time.perf_counter(), time.process_time()
  for _ in range(batches):
    batch = next(iterator)
  elapsed, cpu = time.perf_counter() - ready, time.process_time() - cpu_ready
  if hasattr(iterator, "close"):
    iterator.close()
  assert batch["image"].shape == (batch_size, resolution, resolution, 3)
  return {"resolution": resolution, "workers": workers, "batch_size": batch_size,
          "batches": batches, "warmup_s": ready - start, "seconds": elapsed,
          "examples_per_s": batches * batch_size / elapsed,
          # Inline only (workers' CPU time is not this process's): independent of other load,
          # so 1000 / cpu_ms_per_example is the rate of one free core.
          "cpu_ms_per_example": 1e3 * cpu / (batches * batch_size) if workers == 0 else None,
          "load_average_1min": os.getloadavg()[0]}


def parse_needs(spec: str) -> list[dict]:
  """"B:256:0.25,..." -> [{"variant", "batch", "step_s", "examples_per_s"}]."""
  needs = []
  for item in (s.strip() for s in spec.split(",") if s.strip()):
    parts = item.split(":")
    if len(parts) != 3:
      raise ValueError(f"--need entries are VARIANT:BATCH:SECONDS, got {item!r}")
    batch, step_s = int(parts[1]), float(parts[2])
    if batch < 1 or step_s <= 0:
      raise ValueError(f"--need {item!r}: batch must be >= 1 and seconds > 0")
    needs.append({"variant": parts[0], "batch": batch, "step_s": step_s,
                  "examples_per_s": batch / step_s})
  return needs


def hardware() -> dict:
  model = ""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      model = next((line.split(":", 1)[1].strip() for line in f
                    if line.startswith("model name")), "")
  except OSError:
    pass
  versions = {}
  for package in ("jax", "grain", "array_record", "pillow", "numpy"):
    try:
      versions[package] = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
      versions[package] = None
  return {"cpu_count": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)),
          "load_average_1min": os.getloadavg()[0],  # other work on the machine at the start
          "cpu_model": model or platform.processor(), "python": platform.python_version(),
          **versions}


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(prog="python -m mdd.bench.input",
                                   description=__doc__.splitlines()[0])
  parser.add_argument("--resolutions", default="256,512")
  parser.add_argument("--workers", default="0,1,2,4", help="worker processes (0 = inline)")
  parser.add_argument("--num_images", type=int, default=256)
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--batches", type=int, default=32, help="timed batches per row")
  parser.add_argument("--warmup", type=int, default=4, help="untimed batches first")
  parser.add_argument("--crop", default="random", choices=("center", "random"))
  parser.add_argument("--need", default="", help="VARIANT:BATCH:SECONDS_PER_STEP,...")
  parser.add_argument("--data_dir", default="", help="keep the generated data here "
                      "(default: a temporary directory)")
  parser.add_argument("--out", default="")
  args = parser.parse_args(argv)
  needs = parse_needs(args.need)
  payload = {"hardware": hardware(), "args": vars(args), "needs": needs, "rows": []}
  print(", ".join(f"{k}={v}" for k, v in payload["hardware"].items()), flush=True)

  with tempfile.TemporaryDirectory() as scratch:
    directory = args.data_dir or scratch
    if not os.path.exists(os.path.join(directory, "records", "stats.json")):
      payload["convert_images_per_s"] = write_dataset(directory, args.num_images)
    shards = records.split_shards(os.path.join(directory, "records"), "train")
    payload["images"] = image_sizes(shards)
    print(f"images: {payload['images']}; converted at "
          f"{payload.get('convert_images_per_s', float('nan')):.0f} images/s", flush=True)
    print(f"{'res':>5} {'workers':>7} {'examples/s':>11} {'warmup s':>9} {'cpu ms/ex':>9} "
          f"{'load':>5}", flush=True)
    for resolution in (int(r) for r in args.resolutions.split(",")):
      for workers in (int(w) for w in args.workers.split(",")):
        row = measure(shards, resolution, workers, batch_size=args.batch_size,
                      batches=args.batches, warmup=args.warmup, crop=args.crop)
        payload["rows"].append(row)
        cpu_ms = row["cpu_ms_per_example"]
        print(f"{resolution:>5} {workers:>7} {row['examples_per_s']:>11.1f} "
              f"{row['warmup_s']:>9.1f} {f'{cpu_ms:.2f}' if cpu_ms else '-':>9} "
              f"{row['load_average_1min']:>5.1f}", flush=True)
        if args.out:
          _write(args.out, payload)

  for need in needs:
    for resolution in sorted({r["resolution"] for r in payload["rows"]}):
      rows = [r for r in payload["rows"] if r["resolution"] == resolution]
      enough = [r["workers"] for r in rows if r["examples_per_s"] >= need["examples_per_s"]]
      best = max(rows, key=lambda r: r["examples_per_s"])
      need.setdefault("by_resolution", {})[str(resolution)] = {
          "best_examples_per_s": best["examples_per_s"], "best_workers": best["workers"],
          "headroom": best["examples_per_s"] / need["examples_per_s"],
          "workers_enough": enough}
      print(f"need {need['variant']} (batch {need['batch']} / {need['step_s']} s = "
            f"{need['examples_per_s']:.0f} ex/s) at {resolution}: best "
            f"{best['examples_per_s']:.0f} ex/s ({best['workers']} workers, x"
            f"{best['examples_per_s'] / need['examples_per_s']:.2f}); enough with workers "
            f"{enough or 'none measured'}", flush=True)
  if args.out:
    _write(args.out, payload)
  return payload


def _write(path: str, payload: dict):
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(payload, f, indent=2)


if __name__ == "__main__":
  main()
