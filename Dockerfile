# clbench on NVIDIA GPUs: the paper's experiments, reproducibly. See docs/gpu.md.
#
#   docker build -t clbench .
#   docker run --gpus all --ipc=host -v "$PWD/data:/data" -v "$PWD/runs:/runs" \
#     -v "$PWD/cache:/cache" clbench reproduce table4 --model resnet18 --out /runs/table4
#
# The base image brings torch 2.7.1 built for CUDA 12.8 (Hopper and Blackwell included, Triton for
# NanoAdam's fused step); the project is installed into it with its optional baselines
# (bitsandbytes, galore-torch), with torch and torchvision held at the base image's versions.
FROM pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime

LABEL org.opencontainers.image.title="clbench" \
      org.opencontainers.image.description="A continual-learning benchmark for optimizers" \
      org.opencontainers.image.licenses="MIT"

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CLBENCH_DATA=/data \
    CLBENCH_CACHE=/cache/clbench \
    HF_HOME=/cache/huggingface \
    TORCH_HOME=/cache/torch \
    TRITON_CACHE_DIR=/cache/triton \
    CLBENCH_KERNEL_DIR=/cache/clbench/kernels \
    MPLBACKEND=Agg \
    MPLCONFIGDIR=/tmp/matplotlib

# A C compiler: Triton builds its small launcher stubs with one the first time it runs, and
# NanoAdam builds its CPU kernels with it (the runtime base image has none). Versions come from
# the base image's Ubuntu release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

COPY pyproject.toml README.md /tmp/clbench/
COPY clbench /tmp/clbench/clbench
COPY tasks /tmp/clbench/tasks
COPY optimizers /tmp/clbench/optimizers
COPY reports /tmp/clbench/reports

# The constraints hold torch and torchvision at the versions already installed, so pip never
# downloads another torch. The source tree goes once installed.
RUN python -c "import torch, torchvision; print(f'torch=={torch.__version__}'); print(f'torchvision=={torchvision.__version__}')" > /tmp/constraints.txt \
    && pip install --no-cache-dir --constraint /tmp/constraints.txt "/tmp/clbench[bnb,galore]" \
    && rm -rf /tmp/clbench /tmp/constraints.txt /root/.cache \
    && clbench --help > /dev/null

RUN useradd --create-home --uid 1000 --shell /bin/bash clbench \
    && mkdir -p /data /runs /cache/clbench /cache/huggingface /cache/torch /cache/triton /workspace \
    && chown -R 1000:1000 /data /runs /cache /workspace \
    && ln -s /runs /workspace/runs

# uid 1000 = clbench, not root
USER 1000:1000
# The default run directory, runs/<name>, lands on the /runs volume.
WORKDIR /workspace
VOLUME ["/data", "/runs", "/cache"]

ENTRYPOINT ["clbench"]
CMD ["--help"]
