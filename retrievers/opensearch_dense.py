"""Dense vectors on OpenSearch k-NN (faiss HNSW, inner product): the scale-out twin of the
embedded faiss retriever, with the same `name` ("dense").

The encoder is injected (`encode(texts) -> (n, dim) float array`), so the service passes the
very encoder the embedded dense retriever uses and both backends embed identically. Vectors
are L2-normalised here, so inner product equals cosine whatever the encoder returns.

Scores: faiss inner-product scores come back translated to be positive (1 + ip for ip >= 0,
1 / (1 - ip) otherwise). They are translated back to the raw inner product, so ranker features
have the same scale as the embedded faiss retriever's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np
from opensearchpy import OpenSearch

from retrievers.base import Candidate, Document
from retrievers.opensearch_common import (
    OpenSearchSettings,
    cap_query,
    dense_index_body,
    make_client,
    read_settings_file,
    rebuild,
    write_settings_file,
)
from retrievers.opensearch_lexical import OpenSearchQueryError

log = logging.getLogger(__name__)

Encoder = Callable[[list[str]], np.ndarray]
# Rounding the query/document vectors to 6 decimals halves the JSON size; the cosine error is
# < 1e-5, far below anything that changes a ranking.
_VECTOR_DECIMALS = 6


def document_text(doc: Document) -> str:
    """What a track is embedded as: its searchable fields in one string, tags space-separated."""
    parts = [doc.fields.get(name, "") for name in ("title", "artist", "album")]
    parts += [doc.fields.get(name, "").replace("|", ", ") for name in ("genres", "subgenres")]
    return " ".join(p for p in parts if p)


def faiss_ip_from_score(score: float) -> float:
    """Inverts OpenSearch's faiss innerproduct score translation."""
    return score - 1.0 if score >= 1.0 else 1.0 - 1.0 / score if score > 0 else float("-inf")


def _normalised(vectors: np.ndarray, dim: int) -> np.ndarray:
    arr = np.asarray(vectors, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise ValueError(f"encoder returned shape {arr.shape}, expected (n, {dim})")
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    # A zero vector (empty text) stays zero rather than becoming NaN.
    return arr / np.where(norms > 0, norms, 1.0)


def _as_list(vector: np.ndarray) -> list[float]:
    return [round(float(x), _VECTOR_DECIMALS) for x in vector]


class OpenSearchDenseRetriever:
    name = "dense"
    kind = "opensearch_dense"

    def __init__(
        self,
        settings: OpenSearchSettings | None = None,
        *,
        encode: Encoder | None = None,
        client: OpenSearch | None = None,
        model_name: str | None = None,
        encode_batch_size: int = 256,
        text_of: Callable[[Document], str] = document_text,
    ):
        self.settings = settings or OpenSearchSettings()
        self.client = client or make_client(self.settings)
        self.encode = encode
        self.model_name = model_name  # recorded so a loaded retriever can check its encoder
        self.encode_batch_size = encode_batch_size
        self.text_of = text_of
        self.alias = self.settings.alias("dense")
        self.index_name: str | None = None

    def _encoder(self) -> Encoder:
        if self.encode is None:
            raise RuntimeError("OpenSearchDenseRetriever needs encode=...: pass the dense encoder")
        return self.encode

    def embed(self, texts: list[str]) -> np.ndarray:
        return _normalised(self._encoder()(texts), self.settings.dimension)

    # --- indexing ------------------------------------------------------------------------------

    def build(self, docs: Sequence[Document], *, progress: bool = False) -> None:
        self._encoder()  # fail before creating an index, not after

        def actions(index: str) -> Iterator[dict[str, Any]]:
            # Encoded batch by batch while streaming, so memory stays one batch of vectors.
            for start in range(0, len(docs), self.encode_batch_size):
                batch = docs[start:start + self.encode_batch_size]
                vectors = self.embed([self.text_of(d) for d in batch])
                for doc, vec in zip(batch, vectors, strict=True):
                    yield {"_index": index, "_id": doc.doc_id, "_source": {
                        "track_id": doc.doc_id, "popularity": float(doc.popularity), "embedding": _as_list(vec)}}

        self.index_name, summary = rebuild(self.client, self.alias, dense_index_body(self.settings), actions,
                                           self.settings, total=len(docs), progress=progress)
        log.info("dense index %s built: %s", self.index_name, summary.describe())

    # --- querying ------------------------------------------------------------------------------

    @staticmethod
    def knn_body(vector: np.ndarray, k: int) -> dict[str, Any]:
        return {
            "size": k,
            "_source": False,
            "track_total_hits": False,
            "query": {"knn": {"embedding": {"vector": _as_list(vector), "k": k}}},
        }

    @staticmethod
    def _candidates(response: Mapping[str, Any]) -> list[Candidate]:
        hits = response.get("hits", {}).get("hits", [])
        return [Candidate(track_id=str(h["_id"]), score=faiss_ip_from_score(float(h.get("_score") or 0.0)), rank=r)
                for r, h in enumerate(hits, start=1)]

    def retrieve(self, query: str, k: int) -> list[Candidate]:
        return self.retrieve_batch([query], k)[0]

    def retrieve_batch(self, queries: Sequence[str], k: int) -> list[list[Candidate]]:
        """Encodes all non-empty queries in one encoder call and sends one _msearch."""
        texts = [cap_query(q) for q in queries]
        live = [i for i, t in enumerate(texts) if t]
        if not live or k <= 0:
            return [[] for _ in queries]
        vectors = self.embed([texts[i] for i in live])
        lines: list[dict[str, Any]] = []
        for vec in vectors:
            lines += [{"index": self.alias}, self.knn_body(vec, k)]
        if len(live) == 1:
            # A single query skips the msearch framing (cheaper to parse on the node).
            responses = [self.client.search(index=self.alias, body=lines[1])]
        else:
            responses = self.client.msearch(body=lines)["responses"]
        out: list[list[Candidate]] = [[] for _ in queries]
        for i, resp in zip(live, responses, strict=True):
            if "error" in resp:
                raise OpenSearchQueryError(f"msearch item failed: {resp['error']}")
            out[i] = self._candidates(resp)
        return out

    # --- persistence ---------------------------------------------------------------------------

    def save(self, path: Path) -> None:
        write_settings_file(path, self.kind, self.settings, {
            "index": self.index_name, "alias": self.alias, "saved_at": time.time(),
            "model_name": self.model_name, "encode_batch_size": self.encode_batch_size,
        })

    @classmethod
    def load(cls, path: Path, *, encode: Encoder | None = None, client: OpenSearch | None = None,
             password: str | None = None, model_name: str | None = None) -> Self:
        """`encode` must be the encoder the index was built with; when both `model_name` and the
        saved one are known they must agree, because vectors from another model are noise."""
        settings, extra = read_settings_file(path, cls.kind, password=password)
        saved_model = extra.get("model_name")
        if model_name and saved_model and model_name != saved_model:
            raise ValueError(f"index was built with {saved_model!r}, encoder is {model_name!r}")
        retriever = cls(settings, encode=encode, client=client, model_name=model_name or saved_model,
                        encode_batch_size=int(extra.get("encode_batch_size", 256)))
        retriever.index_name = extra.get("index")
        return retriever
