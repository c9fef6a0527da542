"""selfreward_jax: Self-Rewarding Language Models (Yuan et al., ICML 2024) in pure JAX."""

from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "jax>=0.10,<0.11",
    "flax>=0.12,<0.13",
    "optax>=0.2.5",
    "orbax-checkpoint>=0.12.8,<0.13",
    "transformers>=5.0,<6",
    "sentencepiece>=0.2",
    "google-jetstream==0.2.2",  # the only release; see selfreward_jax/sampling/compat.py
    "tensorstore>=0.1.70",
    "ml-collections>=1.0",
    "absl-py>=2.1",
    "safetensors>=0.4",
    "numpy>=1.26",
    "tqdm>=4.66",
    "tensorboardX>=2.6",
    "matplotlib>=3.8",
    "datasets>=3.0",
]

EXTRAS = {
    # torch 2.13.0 is the CPU wheel on the project's machines; it is only a test/benchmark reference.
    "test": ["pytest>=8", "scipy>=1.11", "torch==2.13.0", "nbclient>=0.10", "ipykernel>=6"],
    "bench": ["torch==2.13.0", "trl>=1.16,<2", "scipy>=1.11"],
}

setup(
    name="selfreward_jax",
    version="0.1.0",
    description="Self-Rewarding Language Models (Yuan et al., 2024) in pure JAX: Llama 2, SFT, DPO, "
    "a JetStream sampler and the self-rewarding loop.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["selfreward_jax", "selfreward_jax.*"]),
    package_data={"selfreward_jax": ["templates/*.txt"]},
    include_package_data=True,
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    license="Apache-2.0",
)
