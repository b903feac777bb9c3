# ltrr service image: API, feedback worker and indexer all run from it (see docker-compose.yml).
# Install order mirrors scripts/setup.sh, and for the same reasons (BRIEF): torch 2.13.0 CPU
# first so nothing pulls a multi-GB CUDA build; numpy<2 / scipy<1.14 because libpecos crashes on
# newer ones; libpecos with --no-deps because its XR-Transformer deps break sentence-transformers.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false \
    LTRR_DATA_DIR=/data

# libgomp1: OpenMP runtime that faiss-cpu and lightgbm wheels link against.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app

# Dependencies first, from the lock only, so code edits do not re-download a gigabyte of wheels.
COPY requirements.lock ./
RUN pip install --upgrade pip wheel setuptools \
 && pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
 && pip install numpy==1.26.4 scipy==1.13.1
RUN pip install -r requirements.lock
RUN pip install --no-deps libpecos==1.2.8

# The project itself (.dockerignore keeps .venv, var/, .git and caches out of the context).
COPY . /app
RUN pip install --no-deps --no-build-isolation -e . \
 && python -c "import numpy, torch; assert numpy.__version__.startswith('1.'), numpy.__version__; \
assert torch.__version__.startswith('2.13.0'), torch.__version__; \
import faiss, tantivy, lightgbm, vowpal_wabbit_next, sentence_transformers, opensearchpy; \
from pecos.xmc.xlinear.model import XLinearModel; \
import services, retrievers, bandit, ranker, replay, logged; print('image ok')"

# Unprivileged runtime user. /data is created here, owned by that user, so a fresh named volume
# mounted on it inherits the ownership.
RUN useradd --system --uid 10001 --home-dir /data ltrr \
 && mkdir -p /data \
 && chown ltrr:ltrr /data
USER ltrr
VOLUME ["/data"]
EXPOSE 8000

CMD ["ltrr", "serve", "--host", "0.0.0.0", "--port", "8000"]
