# Prefect process worker for GPU machines: CUDA runtime + the locked PUMA stack (CUDA torch from PyPI).
FROM nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04
ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN apt-get update && apt-get install -y --no-install-recommends python3.11 python3.11-venv git \
    && rm -rf /var/lib/apt/lists/*
RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /opt/puma
COPY pyproject.toml README.md ./
COPY requirements/lock.txt requirements/lock.txt
COPY puma puma
# torch first and exactly (see README: Installing); then the package with the lock as constraints.
# GPU faiss replaces the CPU build (same import name: remove one before installing the other);
# boto3 + dvc-s3 reach MinIO (MLflow artifacts, the DVC remote).
RUN pip install "torch==2.13.0" && pip install -c requirements/lock.txt . boto3 dvc-s3 \
    && pip uninstall -y faiss-cpu && pip install "faiss-gpu-cu12>=1.10"
# The repo itself is mounted at /workspace/puma at run time (docker-compose.yml); PYTHONPATH makes the
# mounted source win over the installed copy, so the worker always runs the checkout's code.
ENV PYTHONPATH=/workspace/puma
WORKDIR /workspace/puma
