"""mdd: masked discrete diffusion text-to-image synthesis in JAX (see README.md)."""

import setuptools

# Core run-time dependencies. Everything that trains, samples or benchmarks must also run where
# TensorFlow is absent (the lent GPU image has none), so TensorFlow lives in the `tf` extra.
INSTALL_REQUIRES = [
    "jax>=0.10.2",
    "flax>=0.12",
    "optax>=0.2.8",
    "orbax-checkpoint>=0.12",
    "ml-collections>=1.0",
    "tensorflow-datasets>=4.9",
    "clu>=0.0.12",
    "grain>=0.2",
    "array-record>=0.8.6",
    "etils[epath]>=1.7",
    "gcsfs>=2024.2",  # gs:// through etils.epath where TensorFlow is absent
    "numpy>=2.0",
    "pillow>=10",
    "scipy>=1.12",
    "absl-py>=2.0",
    "safetensors>=0.4",
    "tokenizers>=0.15",  # T5's tokenizer.json (SentencePiece/Unigram)
    "tqdm>=4.60",
]

EXTRAS = {
    # Builds TFDS datasets and writes TensorBoard summaries on the CPU set-up.
    "tf": ["tensorflow-cpu>=2.16", "tensorboard>=2.16", "importlib_resources"],
    # gcp-storage-emulator: the local GCS that the remote-workdir tests write to; pytest-xdist:
    # the suite runs on two worker processes (pytest.ini).
    "test": ["pytest>=8", "pytest-xdist>=3.5", "scikit-image>=0.22",
             "gcp-storage-emulator>=2024.8"],
    # Plots of the ablation report (python -m mdd.experiments.ablate --report=...).
    "report": ["matplotlib>=3.8"],
}
EXTRAS["cpu"] = EXTRAS["tf"] + EXTRAS["test"] + EXTRAS["report"]

setuptools.setup(
    name="mdd",
    version="0.1.0",
    description="Masked discrete diffusion text-to-image synthesis (JAX/Flax/Pallas).",
    packages=setuptools.find_packages(include=["mdd", "mdd.*", "pallas_kernels", "pallas_kernels.*",
                                                "configs"]),
    package_data={"mdd.data": ["prompts/*.jsonl"]},
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
)
