r"""The ablations of the paper's claims, end to end, and their report.

  python -m mdd.experiments.ablate --config=configs/shapes_tiny.py:vocab=14 --workdir=DIR \
      [--studies=loss,sampler,policy,heldout] [--seeds=0,1,2] [--parallel=N] [--gpus=N] \
      [--set denoiser_train.num_steps=600 ...]
  python -m mdd.experiments.ablate --report=DIR/ablate.json [--report=OTHER/ablate.json] \
      --out=docs/results.md
  python -m mdd.experiments.ablate --merge=A/ablate.json --merge=B/ablate.json \
      [--until_step=N] --out=MERGED.json     # seeds trained in separate runs, as one study

What runs (every run is a `python -m mdd.main` subprocess on its own workdir, so runs are
isolated, resumable and can go side by side, one GPU each with `--gpus`):
  base     DIR/base: train the tokenizer and pretokenize once; every run below links to it.
  loss     DIR/loss/<variant>_s<seed>: train the denoiser from scratch per loss variant and seed
           (equal steps), held-out masked / group accuracy every `--eval_every` steps, then
           ShapeGenEval with the config's sampler: of the final model, or with
           `--geneval_every=N` of the checkpoint every N steps (a score-vs-step curve).
  sampler  on the models of the config's own loss: editing off / on (thresholds, window,
           post-fill passes) / ReMDM re-masking at 4, 8, 16, 32 and 64 steps; edits per step.
  policy   unmask policies (confidence, stratified, entropy-bounded) and guidance scales.
  heldout  the headline sampler settings (the config's own, the same without edits, and the
           best one found above) on prompts they were not chosen on: the held-out
           compositional split, `main` reworded, and new colour-attribute combinations
           (`mdd.data.prompts.PROMPT_SETS`), next to `main`.
Every evaluation result lands in DIR/ablate.json (rewritten atomically after each run, so a
killed ablation resumes where it stopped); `--report` turns it into markdown tables and PNG
plots, one section per JSON given, and every ShapeGenEval records its scorer version. Seeds are
training seeds: each seed is its own trained denoiser, and ShapeGenEval uses the same prompt
seeds for all of them, so the spread is the spread over training runs.
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures
import glob
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Sequence

from mdd.data.prompts import PROMPT_SETS  # NumPy only: the parent process stays JAX-free
from mdd.utils import fileio, oom

LOSS_VARIANTS: dict[str, dict[str, Any]] = {
    "ce": {"loss.type": "ce", "loss.ce_mix": 0.0},
    "gce_soft": {"loss.type": "gce", "loss.mode": "soft", "loss.ce_mix": 0.0},
    "gce_marginal": {"loss.type": "gce", "loss.mode": "marginal", "loss.ce_mix": 0.0},
    "gce_soft_ce_mix": {"loss.type": "gce", "loss.mode": "soft", "loss.ce_mix": 0.1},
}
NO_EDIT = {"edit_threshold": 1.0, "num_edit_passes": 0}
# The status of a command the runner never started because it was stopping.
STOPPED = -1
STEPS = (4, 8, 16, 32, 64)
# Seconds an evaluation gets to stop after SIGTERM before it is killed (`Runner.run_all`).
EVAL_KILL_AFTER_S = 5.0


def sampler_variants(steps: Sequence[int] = STEPS) -> dict[str, dict[str, Any]]:
  """name -> sampler overrides of the editing study."""
  out = {}
  for s in steps:
    out[f"no_edit@{s}"] = dict(NO_EDIT, num_steps=s)
    out[f"edit_t0.9@{s}"] = dict(num_steps=s, edit_threshold=0.9)
    out[f"edit_t0.5@{s}"] = dict(num_steps=s, edit_threshold=0.5)
    out[f"remdm@{s}"] = dict(NO_EDIT, num_steps=s, remask_policy="remdm")
  out["edit_t0.5_late_window@16"] = dict(num_steps=16, edit_threshold=0.5, edit_start_step=8)
  out["edit_t0.5_no_passes@16"] = dict(num_steps=16, edit_threshold=0.5, num_edit_passes=0)
  out["edit_t0.5_4_passes@16"] = dict(num_steps=16, edit_threshold=0.5, num_edit_passes=4)
  return out


def policy_variants() -> dict[str, dict[str, Any]]:
  """name -> sampler overrides of the unmask-policy and guidance study (16 steps)."""
  out = {f"policy_{p}": {"num_steps": 16, "unmask_policy": p}
         for p in ("confidence", "stratified", "entropy")}
  for w in (1.0, 2.0, 4.0):
    out[f"guidance_{w:g}"] = {"num_steps": 16, "guidance_scale": w}
  return out


# ------------------------------------------------------------------------------------------------
# Running.


def _main_cmd(config: str, workdir: str, overrides: dict[str, Any]) -> list[str]:
  cmd = [sys.executable, "-m", "mdd.main", f"--config={config}", f"--workdir={workdir}"]
  for key, value in overrides.items():
    if isinstance(value, (tuple, list)):
      value = ",".join(str(v) for v in value)
    cmd.append(f"--config.{key}={value}")
  return cmd


class Runner:
  """Runs commands, at most `parallel` at a time, GPUs handed out round-robin by slot.

  SIGTERM (a time limit's `timeout`, a scheduler's preemption) stops it gracefully: no new
  command starts, the running ones get SIGTERM too (a training saves its checkpoint on it) and
  are waited for, then the runner exits with 143. Exiting at once would leave the trainings
  saving with no parent, and whoever sent the signal (a job's end, `timeout -k`) may kill them
  before their checkpoint is complete. Commands that lose nothing when killed (evaluations,
  which write each image whole and resume at the first incomplete prompt) are run with
  `kill_after`: SIGKILL follows that many seconds after the SIGTERM, so one that does not stop
  on SIGTERM (on a GPU host evaluations were seen to run on to their end) cannot hold up the
  trainings' time to save.
  """

  def __init__(self, parallel: int, gpus: int, logdir: str):
    self.parallel, self.gpus, self.logdir = max(1, parallel), gpus, logdir
    os.makedirs(logdir, exist_ok=True)
    self._stopping = threading.Event()
    self._running: dict[str, subprocess.Popen] = {}
    self._lock = threading.Lock()
    self._kill_after: float | None = None

  def _on_sigterm(self, signum, frame):  # pylint: disable=unused-argument
    self._stopping.set()
    with self._lock:
      running = [proc for proc in self._running.values() if proc.poll() is None]
      for proc in running:
        proc.send_signal(signal.SIGTERM)
    if self._kill_after is not None and running:
      timer = threading.Timer(self._kill_after, self._kill, [running])
      timer.daemon = True  # never holds up the runner's own exit
      timer.start()

  def _kill(self, procs: list[subprocess.Popen]):
    for proc in procs:
      if proc.poll() is None:
        proc.kill()

  def run_all(self, jobs: list[tuple[str, list[str]]], on_done=None,
              kill_after: float | None = None) -> dict[str, int]:
    """jobs: (name, argv); returns name -> exit status. Logs go to LOGDIR/<name>.log.

    A job takes a free slot for its whole run (slot i uses GPU i % gpus), so no GPU ever runs
    more than ceil(parallel / gpus) jobs at once. `on_done(name, status)` is called (in this
    thread) as each job ends, so callers can record results before the others finish.
    `kill_after` (seconds): on SIGTERM, jobs still running that long after it are killed; only
    for jobs that lose nothing when killed (None: wait for them).
    """
    self._kill_after = kill_after
    free = queue.Queue()
    for slot in range(self.parallel):
      free.put(slot)

    def run_one(job):
      name, argv = job
      slot = free.get()
      try:
        if self._stopping.is_set():
          return STOPPED
        env = dict(os.environ)
        if self.gpus:
          env["CUDA_VISIBLE_DEVICES"] = str(slot % self.gpus)
          per_gpu = -(-self.parallel // self.gpus)
          env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", f"{0.9 / per_gpu:.2f}")
        start = time.time()
        # Appended: a study runs a name several times (segments, resumed pieces).
        with open(os.path.join(self.logdir, name.replace("/", "_") + ".log"), "a") as log:
          log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv)}\n")
          log.flush()
          with self._lock:
            if self._stopping.is_set():
              return STOPPED
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
            self._running[name] = proc
          status = proc.wait()
          with self._lock:
            del self._running[name]
        print(f"[ablate] {name}: exit {status} in {time.time() - start:.0f}s", flush=True)
        return status
      finally:
        free.put(slot)

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, self._on_sigterm) if main_thread else None
    try:
      with concurrent.futures.ThreadPoolExecutor(self.parallel) as pool:
        futures = {pool.submit(run_one, job): job[0] for job in jobs}
        statuses = {}
        for future in concurrent.futures.as_completed(futures):
          statuses[futures[future]] = future.result()
          if on_done is not None and statuses[futures[future]] != STOPPED:
            on_done(futures[future], statuses[futures[future]])
    finally:
      if main_thread:
        signal.signal(signal.SIGTERM, previous)
    if self._stopping.is_set():
      print(f"[ablate] stopped by SIGTERM; the running commands ended first "
            f"({', '.join(f'{n}: {statuses[n]}' for n in statuses if statuses[n] != STOPPED)});"
            " the same command resumes", flush=True)
      raise SystemExit(128 + signal.SIGTERM)
    return statuses


def _link_base(run_dir: str, base: str):
  os.makedirs(run_dir, exist_ok=True)
  for part in ("tokenizer", "tokens"):
    link = os.path.join(run_dir, part)
    if not os.path.lexists(link):
      os.symlink(os.path.relpath(os.path.join(base, part), run_dir), link)


def _read_json(path: str, default=None):
  if not os.path.exists(path):
    return default
  with open(path, encoding="utf-8") as f:
    return json.load(f)


_CURVE_KEYS = ("step", "loss", "eval/masked_acc", "eval/group_acc", "eval/loss")
# What a loss run records of each ShapeGenEval (the scorer version: results of different
# versions are not comparable).
GENEVAL_KEYS = ("overall", "tags", "num_images", "scorer_version")


def _curve(run_dir: str) -> list[dict]:
  """Held-out eval scalars and train loss over steps from the run's metrics.jsonl. Rows of a
  step written again after a resume replace the earlier ones."""
  from mdd.train import metrics  # pylint: disable=import-outside-toplevel
  path = os.path.join(run_dir, "denoiser", "metrics.jsonl")
  by_step: dict[int, dict] = {}
  if os.path.exists(path):
    for row in metrics.read_jsonl(path):
      keep = {k: v for k, v in row.items() if k in _CURVE_KEYS}
      if len(keep) > 1:
        by_step.setdefault(int(keep["step"]), {}).update(keep)
  return [by_step[step] for step in sorted(by_step)]


def eval_many(jobs: Sequence[dict], which: str, images_per_prompt: int,
              batch_size: int) -> None:
  """ShapeGenEval of trained denoisers under sampler settings, in one process.

  jobs: [{"run_dir": str, "step": int | None, "overrides": {...}, "out_dir": str}]; `step`
  None is the run's latest checkpoint. Each writes out_dir/summary.json (overall, per tag, the
  checkpoint step, and per-step edits + re-masks and unmasks per image) and its GenEval layout.
  Models load once per (run, step); runs of one config share the compiled sampler, so the jobs
  of several seeds in one process compile each sampler setting once.
  """
  import numpy as np  # pylint: disable=import-outside-toplevel
  from mdd.inference import generator as generation  # pylint: disable=import-outside-toplevel
  from mdd.eval import shapes_geneval  # pylint: disable=import-outside-toplevel
  models: dict = {}
  for job in jobs:
    overrides, out_dir = job.get("overrides", {}), job["out_dir"]
    if os.path.exists(os.path.join(out_dir, "summary.json")):
      continue
    key = (job["run_dir"], job.get("step"))
    if key not in models:
      if len(models) >= 4:  # a few models at a time: sampler jobs alternate between seeds
        models.pop(next(iter(models)))
      models[key] = generation.Generator.from_workdir(job["run_dir"], step=job.get("step"))
    gen = models[key]
    cfg = gen.sampler_config(**overrides)
    totals = {"edits": None, "unmasked": None, "images": 0, "rows": batch_size}

    def generate_fn(prompts, seeds, cfg=cfg, totals=totals, gen=gen):
      # Every call at the layout's batch size (the last one padded): one compiled sampler.
      out = gen.generate(list(prompts), list(seeds), sampler_cfg=cfg, pad_to=totals["rows"])
      stats = out["output"].stats
      edits = (np.asarray(stats["num_edited"]).sum(axis=1)
               + np.asarray(stats["num_remasked"]).sum(axis=1))
      unmasked = np.asarray(stats["num_unmasked"]).sum(axis=1)
      for key, value in (("edits", edits), ("unmasked", unmasked)):
        totals[key] = value if totals[key] is None else totals[key] + value
      totals["images"] += len(prompts)
      return out["images"]

    generate_fn.fingerprint = gen.fingerprint(cfg)
    def layout(rows, fn=generate_fn, totals=totals, out_dir=out_dir):
      totals["rows"] = rows
      return shapes_geneval.run(fn, out_dir, images_per_prompt=images_per_prompt, which=which,
                                batch_size=rows)

    result = _run_halving_on_oom(layout, batch_size)
    summary = {"overall": result["overall"], "tags": result["tags"],
               "num_images": result["num_images"], "denoiser_step": int(gen.step),
               "scorer_version": result["scorer_version"]}
    if totals["images"]:
      summary["edits_per_step"] = (totals["edits"] / totals["images"]).tolist()
      summary["unmasked_per_step"] = (totals["unmasked"] / totals["images"]).tolist()
    fileio.write_json_atomic(os.path.join(out_dir, "summary.json"), summary)


def _run_halving_on_oom(fn, batch_size: int, smallest: int = 1):
  """`fn(batch_size)`, retried at half the batch while the accelerator runs out of memory (the
  sampler holds up to 16 bytes per image, token and code: 64 GiB for 256 images of 256 tokens
  at 2^16 codes). Images already written are kept: the layout resumes."""
  while True:
    try:
      return fn(batch_size)
    except Exception as e:  # pylint: disable=broad-except  (XlaRuntimeError and friends)
      if not oom.is_accelerator_oom(e) or batch_size // 2 < smallest:
        raise
      batch_size //= 2
      print(f"[ablate] out of accelerator memory: retrying at batch {batch_size}", flush=True)


def _eval_argv(jobs: Sequence[dict], which: str, args) -> list[str]:
  return [sys.executable, "-m", "mdd.experiments.ablate", "--eval_jobs", json.dumps(jobs),
          "--eval_which", which, "--images_per_prompt", str(args.images_per_prompt),
          "--eval_batch_size", str(args.eval_batch_size)]


class Ablation:
  """Plans, runs and records the studies; results in DIR/ablate.json."""

  def __init__(self, args):
    self.args = args
    self.workdir = os.path.abspath(args.workdir)
    self.base = os.path.join(self.workdir, "base")
    self.results_path = os.path.join(self.workdir, "ablate.json")
    self.overrides = dict(parse_set(s) for s in args.set)
    self.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    self.runner = Runner(args.parallel, args.gpus, os.path.join(self.workdir, "logs"))
    self.results = _read_json(self.results_path, {}) or {}
    self.results.update(config=args.config, overrides=self.overrides, seeds=self.seeds)
    self.results.setdefault("runs", {})
    self.results.setdefault("evals", {})

  def save(self):
    fileio.write_json_atomic(self.results_path, self.results)

  def _config_overrides(self) -> dict[str, Any]:
    out = {"eval.shapes_geneval.images_per_prompt": self.args.images_per_prompt}
    out.update(self.overrides)
    return out

  def prepare_base(self):
    cmd = _main_cmd(self.args.config, self.base, dict(
        self._config_overrides(), pipeline_stages="train_tokenizer,pretokenize"))
    status = self.runner.run_all([("base", cmd)])["base"]
    if status:
      raise SystemExit(f"ablate: the tokenizer stage failed (exit {status}); see "
                       f"{self.runner.logdir}/base.log")
    self.results["tokenizer"] = _read_json(os.path.join(self.base, "tokenizer", "eval.json"))
    self.save()

  def loss_study(self, variants: Sequence[str]):
    every = self.args.geneval_every
    jobs = {}
    for variant in variants:
      for seed in self.seeds:
        name = f"loss/{variant}_s{seed}"
        run_dir = os.path.join(self.workdir, name)
        _link_base(run_dir, self.base)
        over = dict(self._config_overrides(), pipeline_stages="train" if every else "train,eval",
                    seed=seed)
        over["denoiser_train.eval_every"] = self.args.eval_every
        over.update(LOSS_VARIANTS[variant])
        jobs[name] = (run_dir, over)
    if not every:
      self.runner.run_all([(n, _main_cmd(self.args.config, d, o)) for n, (d, o) in jobs.items()],
                          on_done=self._record_loss_run)
      return
    # Score-vs-step curves: all runs train to the next multiple of `every` (the loop's stop_at
    # pauses them there with a checkpoint), that checkpoint is scored, and so on to the end.
    # Each segment's scores are recorded before the next one trains, so a run cut short keeps
    # the points it reached; rerunning resumes at the first missing one.
    final = int(load_config(self.args.config, self.overrides).denoiser_train.num_steps)
    failed: set[str] = set()
    for boundary in list(range(every, final, every)) + [final]:
      stop = {"denoiser_train.stop_at": boundary if boundary < final else 0}
      segment = [(name, _main_cmd(self.args.config, run_dir, dict(over, **stop)))
                 for name, (run_dir, over) in jobs.items() if name not in failed]
      for name, status in self.runner.run_all(segment).items():
        if status:
          failed.add(name)
          self._record_loss_run(name, status)
      evals = []
      for name, (run_dir, _) in jobs.items():
        if name not in failed:
          spec = [{"run_dir": run_dir, "step": boundary,
                   "out_dir": os.path.join(run_dir, "curve", f"step_{boundary}")}]
          evals.append((name, _eval_argv(spec, "main", self.args)))
      self.runner.run_all(evals, on_done=self._record_loss_run, kill_after=EVAL_KILL_AFTER_S)

  def _record_loss_run(self, name: str, status: int):
    run_dir = os.path.join(self.workdir, name)
    variant, seed = name.split("/")[1].rsplit("_s", 1)
    row = dict(variant=variant, seed=int(seed), status=status,
               final=_read_json(os.path.join(run_dir, "denoiser", "eval.json")),
               curve=_curve(run_dir))
    points = []
    for path in glob.glob(os.path.join(run_dir, "curve", "step_*", "summary.json")):
      summary = _read_json(path)
      points.append({k: summary.get(k) for k in GENEVAL_KEYS} | {"step": summary["denoiser_step"]})
    if points:
      row["geneval_curve"] = sorted(points, key=lambda p: p["step"])
      final = row["geneval_curve"][-1]
      row["shapes_geneval"] = {k: final[k] for k in GENEVAL_KEYS}
      trained_to = (row["final"] or {}).get("step")
      row["status"] = status or (0 if final["step"] == trained_to else 1)
    else:
      geneval = _read_json(os.path.join(run_dir, "eval", "shapes_geneval.json"), {})
      row["shapes_geneval"] = {k: geneval.get(k) for k in GENEVAL_KEYS}
    self.results["runs"][name] = row
    self.save()

  def default_loss_variant(self) -> str:
    """The LOSS_VARIANTS entry matching the config's own loss (the sampler studies' model)."""
    loss = load_config(self.args.config, self.overrides).loss
    for name, spec in LOSS_VARIANTS.items():
      if (spec["loss.type"] == loss.type and spec["loss.ce_mix"] == float(loss.ce_mix)
          and spec.get("loss.mode", loss.mode) == loss.mode):
        return name
    return "gce_soft_ce_mix"

  def sampler_study(self, study: str, variants: dict[str, dict[str, Any]], which: str = "main"):
    if self.args.only and not study.startswith("prompts_"):
      variants = {k: v for k, v in variants.items() if re.search(self.args.only, k)}
    model = self.default_loss_variant()
    evals = []   # (key, run_dir, name, seed, overrides, out_dir)
    for seed in self.seeds:
      run_dir = os.path.join(self.workdir, "loss", f"{model}_s{seed}")
      if not os.path.exists(os.path.join(run_dir, "config.json")):
        raise SystemExit(f"ablate: {run_dir} is not trained; run the loss study first")
      for name, over in variants.items():
        out_dir = os.path.join(self.workdir, "evals", study, name.replace("@", "_at"),
                               f"s{seed}")
        evals.append((f"{study}/{name}/s{seed}", run_dir, name, seed, over, out_dir))
    # One process per chunk of settings, over all seeds: each model loads once per process and
    # each setting compiles once per process (the seeds' models share it).
    chunks = max(1, min(self.runner.parallel, len(variants)))
    names = list(variants)
    jobs, members = [], {}
    for c in range(chunks):
      part = [e for e in evals if e[2] in names[c::chunks]]
      if not part:
        continue
      spec = [{"run_dir": e[1], "overrides": e[4], "out_dir": e[5]} for e in part]
      jobs.append((f"{study}/part{c}", _eval_argv(spec, which, self.args)))
      members[f"{study}/part{c}"] = {e[0] for e in part}

    def record(job_name, status):
      for key, _, name, seed, over, out_dir in evals:
        if key in members[job_name]:
          summary = _read_json(os.path.join(out_dir, "summary.json"))
          self.results["evals"][key] = dict(study=study, variant=name, seed=seed,
                                            overrides=over, which=which, summary=summary,
                                            status=0 if summary else (status or 1))
      self.save()

    # Evaluations write each image whole and resume at the first incomplete prompt.
    self.runner.run_all(jobs, on_done=record, kill_after=EVAL_KILL_AFTER_S)

  def collect(self):
    """Rebuilds ablate.json from what is on disk (after a killed run); runs nothing."""
    for run_dir in sorted(glob.glob(os.path.join(self.workdir, "loss", "*_s*"))):
      done = (os.path.exists(os.path.join(run_dir, "eval", "shapes_geneval.json"))
              or glob.glob(os.path.join(run_dir, "curve", "step_*", "summary.json")))
      self._record_loss_run("loss/" + os.path.basename(run_dir), 0 if done else 1)
    known = dict(sampler_variants(), **policy_variants(), config={},
                 config_no_edit=dict(NO_EDIT))
    for path in sorted(glob.glob(os.path.join(self.workdir, "evals", "*", "*", "s*",
                                              "summary.json"))):
      study, variant, seed = path.split(os.sep)[-4:-1]
      name = variant.replace("_at", "@")
      self.results["evals"][f"{study}/{name}/{seed}"] = dict(
          study=study, variant=name, seed=int(seed[1:]), overrides=known.get(name, {}),
          which=study[len("prompts_"):] if study.startswith("prompts_") else "main",
          summary=_read_json(path),
          status=0)
    self.save()

  def best_setting(self) -> tuple[str, dict[str, Any]]:
    """The sampler/policy variant with the best mean ShapeGenEval over seeds."""
    means = {}
    for row in self.results["evals"].values():
      if row["study"] in ("sampler", "policy") and row.get("summary"):
        means.setdefault(row["variant"], (row["overrides"], []))[1].append(
            row["summary"]["overall"])
    if not means:
      raise SystemExit("ablate: no sampler/policy results to pick the best setting from")
    name = max(means, key=lambda n: sum(means[n][1]) / len(means[n][1]))
    return name, means[name][0]

  def run(self):
    studies = [s for s in self.args.studies.split(",") if s]
    unknown = set(studies) - {"loss", "sampler", "policy", "heldout"}
    if unknown:
      raise SystemExit(f"ablate: unknown studies {sorted(unknown)}")
    self.results["hardware"] = _hardware()
    self.prepare_base()
    if "loss" in studies:
      variants = [v for v in self.args.loss_variants.split(",") if v]
      bad = [v for v in variants if v not in LOSS_VARIANTS]
      if bad:
        raise SystemExit(f"ablate: unknown loss variants {bad}; known {list(LOSS_VARIANTS)}")
      self.loss_study(variants)
    if "sampler" in studies:
      self.sampler_study("sampler", sampler_variants())
    if "policy" in studies:
      self.sampler_study("policy", policy_variants())
    if "heldout" in studies:
      name, over = self.best_setting()
      self.results["heldout_setting"] = name
      settings = {"config": {}, "config_no_edit": dict(NO_EDIT), name: over}
      for prompt_set in PROMPT_SETS:  # `main` too: the settings' scores next to the rest
        self.sampler_study(f"prompts_{prompt_set}", settings, which=prompt_set)
    print(f"[ablate] results: {self.results_path}", flush=True)


def load_config(spec: str, overrides: dict[str, Any] | None = None):
  """The ConfigDict of `path.py[:arg]` with dotted `overrides` (strings parsed as the field's
  type), the way `mdd.main` reads `--config` and `--config.a.b=v`."""
  import configs  # pylint: disable=import-outside-toplevel
  try:
    config = configs.load(spec)
  except ValueError as e:
    raise SystemExit(f"ablate: {e}") from None
  for key, value in (overrides or {}).items():
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
      node = node[part]
    current = node.get(leaf)
    if isinstance(value, str) and current is not None and not isinstance(current, str):
      if isinstance(current, bool):
        value = value.lower() in ("1", "true", "yes")
      elif isinstance(current, (int, float)):
        value = type(current)(float(value)) if isinstance(current, int) else float(value)
      elif isinstance(current, (tuple, list)):
        try:
          value = tuple(ast.literal_eval(value))
        except (ValueError, SyntaxError, TypeError):
          raise SystemExit(
              f"ablate: --set {key} expects a tuple like (0.0, 1.0), got {value!r}") from None
    node[leaf] = value
  return config


def _hardware() -> str:
  """Devices and CPU cores, read in a child process (JAX in this one would hold GPU memory)."""
  code = ("import jax, os; d = jax.devices(); "
          "print(f'{len(d)} x {d[0].device_kind} ({jax.default_backend()}), "
          "{os.cpu_count()} CPU cores, jax {jax.__version__}')")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
  return out.stdout.strip().splitlines()[-1] if out.stdout.strip() else "unknown"


def parse_set(item: str) -> tuple[str, Any]:
  """"a.b=v" -> ("a.b", "v") (a `--set` flag; `load_config` parses the value by type)."""
  key, sep, value = item.partition("=")
  if not sep or not key:
    raise SystemExit(f"--set expects key=value, got {item!r}")
  return key.strip(), value.strip()


def main(argv: Sequence[str] | None = None):
  parser = argparse.ArgumentParser(prog="python -m mdd.experiments.ablate",
                                   description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/shapes_tiny.py:vocab=14")
  parser.add_argument("--workdir")
  parser.add_argument("--studies", default="loss,sampler,policy,heldout")
  parser.add_argument("--loss_variants", default=",".join(LOSS_VARIANTS))
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--parallel", type=int, default=1, help="runs at a time")
  parser.add_argument("--gpus", type=int, default=0, help="GPUs to spread runs over (0 = none)")
  parser.add_argument("--eval_every", type=int, default=100)
  parser.add_argument("--geneval_every", type=int, default=0,
                      help="loss study: ShapeGenEval of the checkpoint every N steps (0 = final "
                           "model only)")
  parser.add_argument("--only", default="", help="regex: sampler/policy settings to run")
  parser.add_argument("--images_per_prompt", type=int, default=1)
  parser.add_argument("--eval_batch_size", type=int, default=128)
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="config override for every run, e.g. denoiser_train.num_steps=600")
  parser.add_argument("--report", action="append", default=[],
                      help="ablate.json to turn into markdown + plots; repeat for several "
                           "ablations (one section each, in this order)")
  parser.add_argument("--merge", action="append", default=[],
                      help="ablate.json of one study's seeds trained apart; repeat, and give "
                           "--out=MERGED.json (mdd.experiments.merge)")
  parser.add_argument("--until_step", type=int, default=None,
                      help="with --merge: compare every loss run at this step")
  parser.add_argument("--collect", action="store_true",
                      help="rebuild DIR/ablate.json from the runs on disk, run nothing")
  parser.add_argument("--out", default="docs/results.md")
  # One evaluation process (what the studies spawn).
  parser.add_argument("--eval_jobs", default="", help=argparse.SUPPRESS)
  parser.add_argument("--eval_which", default="main", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.eval_jobs:
    eval_many(json.loads(args.eval_jobs), args.eval_which, args.images_per_prompt,
              args.eval_batch_size)
    return
  if args.until_step is not None and not args.merge:
    raise SystemExit("ablate: --until_step only applies to --merge")
  if args.merge:
    from mdd.experiments import merge  # pylint: disable=import-outside-toplevel
    if args.report:
      raise SystemExit("ablate: --merge and --report are separate steps; merge first, then "
                       "report the merged JSON")
    if not args.out.endswith(".json"):
      raise SystemExit(f"ablate --merge: writes JSON: give --out=FILE.json, got {args.out!r}")
    parts = []
    for path in args.merge:
      try:
        parts.append((path, _read_json(path)))
      except (OSError, ValueError) as e:
        raise SystemExit(f"ablate --merge: cannot read {path}: "
                         f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
    try:
      merged = merge.merge_ablations(parts, args.until_step)
    except ValueError as e:
      raise SystemExit(f"ablate --merge: {e}") from e
    fileio.write_json_atomic(args.out, merged)
    print(f"merged {len(args.merge)} ablations ({len(merged['runs'])} runs, seeds "
          f"{merged['seeds']}) into {args.out}")
    return
  if args.report:
    from mdd.experiments import report  # pylint: disable=import-outside-toplevel
    report.write_report([(path, _read_json(path)) for path in args.report], args.out)
    return
  if not args.workdir:
    parser.error("--workdir is required (or --report)")
  if args.collect:
    Ablation(args).collect()
    return
  Ablation(args).run()


if __name__ == "__main__":
  main()
