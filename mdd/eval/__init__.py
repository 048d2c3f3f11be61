"""Evaluation: offline ShapeGenEval, GenEval / DPG-Bench layouts, FID with local weights.

Modules (each runnable with `python -m`): `shapes_geneval` (prompt set, scorer, runner),
`geneval_layout` / `geneval_generate`, `dpg_layout` / `dpg_generate`, `fid` (+ `inception`).
Imports are left to the caller so that `import mdd.eval` stays cheap (no JAX, no Flax).
"""
