"""PECOS XR-Linear retriever: query text -> track ids through a hierarchical label tree.

Follows the PECOS product-search recipe (Chang et al., 2021): the query is featurized with word
1-2-gram TF-IDF plus character 3-5-gram TF-IDF taken inside word boundaries (so "tayler swfit"
still shares most trigrams with "taylor swift"), both blocks hstacked and the row L2-normalized.
Labels (tracks) are clustered by PIFA embeddings (the mean feature vector of the queries that
point at them) with hierarchical spherical k-means; a linear one-vs-rest model is trained at
every tree level and beam search walks the tree at query time, so the cost grows with log(labels).

Training data is (query, track, weight) pairs: at cold start the metadata pseudo-queries of
`retrievers.pseudo_queries`, later those plus logged clicks/plays. Duplicate (query, track) pairs
are summed, so a repeated click weighs more than a single one, and logged pairs are scaled up so
behaviour outweighs the metadata guess. Weights shape the PIFA label embeddings (and so the tree)
and, with `rel_mode="ranker-only"`, become the costs of PECOS's cost-sensitive leaf classifiers.

`write(dir)` copies the model's files into a directory (the service's artifact store versions and
checksums it) and `load(dir)` reads them in PECOS's predict-only C++ mode.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import numpy as np
import scipy.sparse as smat

from retrievers.base import Candidate, Document
from retrievers.configs import config_from_dict, config_to_dict
from retrievers.pseudo_queries import PseudoQuery, generate_all
from retrievers.text import normalize

log = logging.getLogger(__name__)

FORMAT = 1  # bump when the on-disk layout changes


@dataclass(frozen=True)
class XRConfig:
    """Every knob of featurization, tree building, training and beam search."""

    nr_splits: int = 16  # branching factor of the label tree
    max_leaf_size: int = 100  # labels per leaf cluster
    beam_size: int = 10  # clusters kept per tree level during search
    threshold: float = 0.1  # prune |w| < threshold from trained weights: smaller model, faster predict
    topk: int = 100  # default number of results when the caller gives no k
    word_ngrams: tuple[int, int] = (1, 2)
    char_ngrams: tuple[int, int] = (3, 5)
    word_min_df: int = 1  # a rare word is often a title word: keep it
    char_min_df: int = 2
    # Per n-gram block, the most frequent kept; 0 keeps all. PECOS trains every label with a dense
    # weight vector and scans all of it to sparsify (O(labels x features)), so uncapped features
    # make training superlinear: at 1M tracks the vocabulary reaches 2M n-grams and the leaf
    # layer alone ran past 30 min. The cap leaves the 28k catalog's ~240k features untouched.
    max_features: int = 2**18
    post_processor: str = "l3-hinge"
    # How pair weights reach PECOS. "disable" (default) trains the classifiers on binarized pairs,
    # weights then only shape the PIFA label embeddings; "ranker-only" makes them the costs of the
    # leaf-level classifiers (cost-sensitive learning); "induce" weighs every level. On the 28k
    # catalog both cost-sensitive modes trained ~6x slower (20 s -> 120 s+) and returned the same
    # top 5 on spot checks, so they are opt-in.
    rel_mode: str = "disable"
    logged_weight_scale: float = 2.0  # a logged (clicked) pair counts this much more than a pseudo pair
    pseudo_templates: tuple[str, ...] | None = None  # restrict cold-start templates (e.g. at 1M tracks)
    pseudo_moods: bool = True
    max_query_chars: int = 256  # longer queries are truncated; nobody types more, attackers do
    threads: int = -1  # training threads; prediction of one query always uses one
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> XRConfig:
        return config_from_dict(cls, data)


@dataclass
class TrainStats:
    n_pairs: int = 0
    n_queries: int = 0
    n_labels: int = 0
    n_features: int = 0
    n_logged_pairs: int = 0
    seconds: dict[str, float] = field(default_factory=dict)


class XRLinearRetriever:
    """XR-Linear retriever implementing `retrievers.base.Retriever`.

    `allowed`: when set, results are restricted to these track ids; the beam is widened until k
    allowed tracks are found or the whole tree was searched, so filtering never silently
    shrinks the list when enough allowed tracks score at all.
    """

    name = "xr"

    def __init__(self, config: XRConfig | None = None) -> None:
        self.config = config or XRConfig()
        self.version: str | None = None  # the artifact store's version name, once published/loaded
        self.meta: dict[str, Any] = {}
        self.stats = TrainStats()
        self._vectorizer: Any = None  # pecos Vectorizer (C++ tf-idf)
        self._model: Any = None  # predict-only XLinearModel
        self._label_ids: list[str] = []
        self._label_index: dict[str, int] = {}
        self._n_clusters = 1  # widest internal tree level: beam >= this means exhaustive search
        self._artifact_dir: Path | None = None  # where the model files that back _model live
        self._staging: tempfile.TemporaryDirectory[str] | None = None
        self._allowed: set[str] | None = None
        self._allowed_mask: np.ndarray | None = None

    # --- restriction ---------------------------------------------------------------------------

    @property
    def allowed(self) -> set[str] | None:
        return self._allowed

    @allowed.setter
    def allowed(self, ids: Iterable[str] | None) -> None:
        if ids is None:
            self._allowed, self._allowed_mask = None, None
            return
        self._allowed = set(ids)
        self._rebuild_mask()

    def _rebuild_mask(self) -> None:
        if self._allowed is None:
            self._allowed_mask = None
            return
        mask = np.zeros(len(self._label_ids), dtype=bool)
        idx = [self._label_index[i] for i in self._allowed if i in self._label_index]
        mask[idx] = True
        self._allowed_mask = mask

    # --- training ------------------------------------------------------------------------------

    @property
    def is_trained(self) -> bool:
        return self._model is not None

    def build(self, docs: Sequence[Document], *, progress: bool = False) -> None:
        """Cold start: trains from metadata pseudo-queries only."""
        self.train((), docs, progress=progress)

    def train(self, pairs: Sequence[tuple[str, str, float]], docs: Sequence[Document], *,
              progress: bool = False) -> None:
        """Trains from the docs' pseudo-queries plus logged (query, track_id, weight) pairs.
        Logged pairs for unknown tracks or with non-positive weight are dropped."""
        cfg = self.config
        t0 = time.perf_counter()
        label_ids = [d.doc_id for d in docs]
        label_index = {t: i for i, t in enumerate(label_ids)}
        weights: dict[tuple[str, int], float] = {}
        pseudo = _pseudo_pairs(docs, cfg)
        for pq in pseudo:
            key = (pq.query, label_index[pq.doc_id])
            weights[key] = weights.get(key, 0.0) + pq.score
        n_logged = 0
        for query, track_id, weight in pairs:
            q = normalize(query)[: cfg.max_query_chars]
            idx = label_index.get(track_id)
            if not q or idx is None or not (weight > 0 and math.isfinite(weight)):
                continue
            n_logged += 1
            weights[(q, idx)] = weights.get((q, idx), 0.0) + cfg.logged_weight_scale * float(weight)
        if not weights:
            raise ValueError("no training pairs: empty catalog?")
        t_pairs = time.perf_counter()

        query_index: dict[str, int] = {}
        rows = np.empty(len(weights), dtype=np.int64)
        cols = np.empty(len(weights), dtype=np.int64)
        vals = np.empty(len(weights), dtype=np.float32)
        for n, ((q, idx), w) in enumerate(weights.items()):
            rows[n] = query_index.setdefault(q, len(query_index))
            cols[n], vals[n] = idx, w
        queries = list(query_index)
        # CSR with sorted indices: PECOS checks that Y and R share one sparsity pattern.
        R = smat.csr_matrix((vals, (rows, cols)), shape=(len(queries), len(label_ids)), dtype=np.float32)
        R.sort_indices()
        Y = R.copy()
        Y.data[:] = 1.0

        staging = tempfile.TemporaryDirectory(prefix="xr-train-")
        stage = Path(staging.name)
        vectorizer = _train_vectorizer(queries, cfg)
        X = vectorizer.predict(queries, threads=cfg.threads)
        t_vec = time.perf_counter()
        if progress:
            log.info("xr: %d pairs, %d queries x %d labels, %d features", len(weights), len(queries),
                     len(label_ids), X.shape[1])

        from pecos.xmc import Indexer, LabelEmbeddingFactory
        from pecos.xmc.xlinear.model import XLinearModel

        # Weighted PIFA: a label's embedding leans toward the queries that point at it hardest.
        label_feat = LabelEmbeddingFactory.create(R, X, method="pifa", threads=cfg.threads)
        chain = Indexer.gen(label_feat, indexer_type="hierarchicalkmeans", nr_splits=cfg.nr_splits,
                            max_leaf_size=cfg.max_leaf_size, seed=cfg.seed, threads=cfg.threads)
        t_tree = time.perf_counter()
        rel_kwargs: dict[str, Any] = {"rel_mode": cfg.rel_mode}
        if cfg.rel_mode != "disable":
            # Row-max normalization: each query's best label costs 1, the rest in proportion, so
            # a query with one huge click count does not dominate the whole training set.
            rel_kwargs.update(R=R.tocsc(), rel_norm="max")
        model = XLinearModel.train(X, Y.tocsc(), C=chain, threshold=cfg.threshold, threads=cfg.threads,
                                   nr_splits=cfg.nr_splits, beam_size=cfg.beam_size, only_topk=cfg.topk,
                                   post_processor=cfg.post_processor, **rel_kwargs)
        t_train = time.perf_counter()
        # Serve from the predict-only C++ model (an order of magnitude faster than the Python one);
        # the files stay in a staging dir so write() can copy them into a version directory.
        vectorizer.save(str(stage / "vectorizer"))
        model.save(str(stage / "model"))
        del model
        n_clusters = chain[-1].shape[1]  # leaf clusters: the widest level the beam walks
        (stage / "labels.txt").write_text("\n".join(label_ids), encoding="utf-8")
        self.stats = TrainStats(n_pairs=len(weights), n_queries=len(queries), n_labels=len(label_ids),
                                n_features=int(X.shape[1]), n_logged_pairs=n_logged,
                                seconds={"pairs": t_pairs - t0, "vectorize": t_vec - t_pairs,
                                         "tree": t_tree - t_vec, "train": t_train - t_tree})
        meta = {"format": FORMAT, "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "n_pairs": len(weights), "n_logged_pairs": n_logged, "n_queries": len(queries),
                "n_labels": len(label_ids), "n_features": int(X.shape[1]), "n_clusters": int(n_clusters),
                "train_seconds": round(time.perf_counter() - t0, 3), "config": cfg.to_dict()}
        (stage / "meta.json").write_text(json.dumps(meta, indent=2))
        self._open(stage, meta)
        self._staging = staging  # keeps the staging dir alive as long as this model serves
        self.version = None
        if progress:
            log.info("xr: trained in %.1fs (%s)", meta["train_seconds"], self.stats.seconds)

    # --- persistence ---------------------------------------------------------------------------

    def write(self, directory: Path) -> Path:
        """Copies the model's files (vectorizer/, model/, labels.txt, meta.json) into `directory`,
        which must exist, and returns it. Versioning, checksums and atomic publication are the
        caller's artifact store's job."""
        if self._artifact_dir is None:
            raise RuntimeError("XRLinearRetriever.write() before build()/train()/load()")
        directory = Path(directory)
        for part in ("vectorizer", "model"):
            shutil.copytree(self._artifact_dir / part, directory / part)
        shutil.copy2(self._artifact_dir / "labels.txt", directory / "labels.txt")
        meta = {k: v for k, v in self.meta.items() if k != "version"}
        (directory / "meta.json").write_text(json.dumps(meta, indent=2))
        return directory

    def save(self, path: Path) -> None:
        """The Retriever protocol's save: `write()` into `path`, created if missing."""
        Path(path).mkdir(parents=True, exist_ok=True)
        self.write(Path(path))

    @classmethod
    def load(cls, path: Path, *, version: str | None = None) -> Self:
        """Loads a directory written by `write()` in PECOS's predict-only C++ mode. PECOS aborts
        the process on some damaged files, so a server verifies checksums before calling this.
        `version` (the artifact store's name for the directory) becomes `.version`."""
        path = Path(path)
        if not (path / "meta.json").is_file():
            raise FileNotFoundError(f"no XR-Linear model in {path} (meta.json missing)")
        meta = json.loads((path / "meta.json").read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path}: unsupported XR-Linear artifact format {meta.get('format')!r}")
        obj = cls(XRConfig.from_dict(meta.get("config", {})))
        obj._open(path, meta)
        obj.version = version
        return obj

    def _open(self, path: Path, meta: dict[str, Any]) -> None:
        from pecos.utils.featurization.text.vectorizers import Vectorizer
        from pecos.xmc.xlinear.model import XLinearModel

        self._vectorizer = Vectorizer.load(str(path / "vectorizer"))
        self._model = XLinearModel.load(str(path / "model"), is_predict_only=True)
        self._label_ids = (path / "labels.txt").read_text(encoding="utf-8").split("\n")
        self._label_index = {t: i for i, t in enumerate(self._label_ids)}
        self._n_clusters = int(meta.get("n_clusters", len(self._label_ids)))
        self._artifact_dir, self.meta = path, meta
        self._rebuild_mask()

    # --- retrieval -----------------------------------------------------------------------------

    def _clean(self, query: object) -> str:
        if not isinstance(query, str):
            return ""
        # Truncate before normalizing too: normalizing 10 MB of text would itself be the attack.
        return normalize(query[: self.config.max_query_chars * 4])[: self.config.max_query_chars]

    def retrieve(self, query: str, k: int) -> list[Candidate]:
        return self.retrieve_batch([query], k)[0]

    def retrieve_batch(self, queries: Sequence[str], k: int) -> list[list[Candidate]]:
        if self._model is None:
            raise RuntimeError("XRLinearRetriever used before build()/train()/load()")
        out: list[list[Candidate]] = [[] for _ in queries]
        if k <= 0 or not queries:
            return out
        texts = [self._clean(q) for q in queries]
        live = [i for i, t in enumerate(texts) if t]
        if not live:
            return out
        X = self._vectorizer.predict([texts[i] for i in live], threads=1 if len(live) == 1 else -1)
        X = X.astype(np.float32, copy=False).tocsr()
        # No known n-gram at all means no evidence; PECOS would still rank labels by bias alone.
        has_feat = np.diff(X.indptr) > 0
        k_eff = min(k, len(self._label_ids))
        mask = self._allowed_mask
        if mask is not None and not mask.any():
            return out
        beam, topk = self.config.beam_size, k_eff if mask is None else min(len(self._label_ids), 4 * k_eff)
        pending = [j for j in range(len(live)) if has_feat[j]]
        while pending:
            rows = X if len(pending) == X.shape[0] else X[pending]
            P = self._predict(rows, beam, topk, threads=1 if len(pending) == 1 else -1)
            retry = []
            for row, j in enumerate(pending):
                lo, hi = P.indptr[row], P.indptr[row + 1]
                idx, scores = P.indices[lo:hi], P.data[lo:hi]
                if mask is not None:
                    keep = mask[idx]
                    idx, scores = idx[keep], scores[keep]
                exhausted = beam >= self._n_clusters and topk >= len(self._label_ids)
                if mask is not None and len(idx) < k_eff and not exhausted:
                    retry.append(j)
                    continue
                order = np.argsort(-scores, kind="stable")[:k_eff]
                # Python ints/floats first (tolist): indexing numpy per element costs ~1 us each.
                labels = self._label_ids
                out[live[j]] = [Candidate(labels[i], s, r) for r, (i, s) in
                                enumerate(zip(idx[order].tolist(), scores[order].tolist(), strict=True), start=1)]
            pending = retry
            # Widen the search for rows whose allowed results ran short: 4x beam and depth each round.
            beam, topk = min(self._n_clusters, beam * 4), min(len(self._label_ids), topk * 4)
        return out

    def _predict(self, X: smat.csr_matrix, beam: int, topk: int, *, threads: int) -> smat.csr_matrix:
        # Straight into PECOS's C++ beam search. XLinearModel.predict() would deep-copy and
        # re-validate its per-layer parameter dataclasses on every call, which cost more than the
        # beam search itself (~0.3 of ~0.9 ms per query at 28k labels). The predict-only model's
        # C++ handle is what that method ends up calling with the same arguments.
        from pecos.core import ScipyCompressedSparseAllocator, clib

        if not X.has_sorted_indices:
            X.sort_indices()
        alloc = ScipyCompressedSparseAllocator()
        clib.xlinear_predict(self._model.model.model_chain, X, beam, None, topk, threads, alloc)
        return alloc.get().tocsr()

    def __len__(self) -> int:
        return len(self._label_ids)


def _pseudo_pairs(docs: Sequence[Document], cfg: XRConfig) -> list[PseudoQuery]:
    pairs = generate_all(docs, moods=cfg.pseudo_moods)
    if cfg.pseudo_templates is not None:
        keep = set(cfg.pseudo_templates)
        pairs = [p for p in pairs if p.template in keep]
    return pairs


def _train_vectorizer(corpus: list[str], cfg: XRConfig) -> Any:
    from pecos.utils.featurization.text.vectorizers import Vectorizer

    def block(analyzer: str, ngrams: tuple[int, int], min_df: int) -> dict[str, Any]:
        return {"analyzer": analyzer, "ngram_range": list(ngrams), "min_df_cnt": min_df,
                "max_feature": cfg.max_features, "sublinear_tf": True, "norm": "l2"}

    # PECOS hstacks the blocks and re-normalizes the row (norm_p=2): the paper's feature recipe.
    config = {"type": "tfidf", "kwargs": {
        "base_vect_configs": [block("word", cfg.word_ngrams, cfg.word_min_df),
                              block("char_wb", cfg.char_ngrams, cfg.char_min_df)],
        "norm_p": 2, "threads": cfg.threads}}
    return Vectorizer.train(corpus, config)
