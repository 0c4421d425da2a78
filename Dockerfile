# CPU image (default): docker build -t set-lightning . && docker run --rm -v "$PWD/runs:/app/runs" set-lightning
# CUDA: build FROM a CUDA-enabled PyTorch base instead and skip the CPU torch pin, e.g.
#   docker build --build-arg BASE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime --build-arg TORCH_SPEC="" -t set-lightning:cuda .
#   docker run --gpus all --rm set-lightning:cuda fit --config conf/set.yaml --trainer.accelerator gpu --trainer.precision 16-mixed
ARG BASE=python:3.11-slim
FROM ${BASE}
ARG TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
WORKDIR /app
COPY pyproject.toml setup.cfg README.md ./
COPY src ./src
COPY ablations ./ablations
RUN ln -s src/set_lightning/conf conf \
    && if [ -n "$TORCH_SPEC" ]; then pip install --no-cache-dir $TORCH_SPEC; fi \
    && pip install --no-cache-dir .
ENTRYPOINT ["python", "-m", "set_lightning"]
CMD ["fit"]
