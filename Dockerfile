# set_lightning: `python -m set_lightning` (fit / validate / test / predict / sweep) in a container.
#
# CPU image (default; torch 2.13.0, CPU build):
#   docker build -t set-lightning .
#   docker run --rm -v "$PWD/runs:/app/runs" -v set-lightning-data:/app/data_cache set-lightning
#   docker run --rm -v "$PWD/runs:/app/runs" -v set-lightning-data:/app/data_cache set-lightning \
#       fit --config conf/set.yaml --config conf/data/nbody5.yaml
# CUDA image (the same base and the same torch 2.13.0, its CUDA build from PyPI; the host needs the
# NVIDIA driver and container toolkit):
#   docker build --build-arg TORCH_SPEC="torch==2.13.0" -t set-lightning:cuda .
#   docker run --gpus all --rm -v "$PWD/runs:/app/runs" -v set-lightning-data:/app/data_cache set-lightning:cuda \
#       fit --config conf/set.yaml --config conf/data/nbody5.yaml --trainer.accelerator gpu --trainer.precision 16-mixed
# The process runs as the non-root user `app` (uid 1000): a bind-mounted runs/ must be writable by it
# (or add `--user "$(id -u):$(id -g)"`). tini is PID 1: it forwards signals and reaps the DataLoader
# workers and DDP child processes (`docker run --init` does the same with Docker's own init).
# `--config conf/...` names resolve to the installed package's configs; no ./conf is needed.
ARG BASE=python:3.11-slim
FROM ${BASE}
ARG TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*

# torch in its own layer, before any project file: editing the sources never reinstalls it
RUN pip install $TORCH_SPEC

WORKDIR /app
# the other dependencies, from the packaging files only (a layer that source edits do not rebuild)
COPY pyproject.toml setup.cfg README.md LICENSE ./
COPY src/set_lightning/__init__.py src/set_lightning/__init__.py
RUN pip install . && pip uninstall -y set_lightning && rm -rf build src/*.egg-info
# the package itself
COPY src ./src
RUN pip install --no-deps . && rm -rf build src/*.egg-info
COPY ablations ./ablations

RUN useradd --create-home --uid 1000 app \
    && mkdir -p /app/runs /app/data_cache \
    && chown -R app:app /app
USER app
VOLUME ["/app/data_cache"]

ENTRYPOINT ["/usr/bin/tini", "--", "python", "-m", "set_lightning"]
CMD ["fit"]
