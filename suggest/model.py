"""Session-aware query autocompletion with PECOS XR-Linear (Yadav et al., KDD 2021).

The task is extreme multi-label ranking: the input is (previous query of the session, typed
prefix), the labels are the queries the system has seen (logged queries; at cold start the
catalog's titles, artists, "artist title" and albums). Three parts follow the paper:
  - features: `suggest.features` (previous-query TF-IDF | position-weighted prefix char n-grams);
  - label index: `suggest.chain`, a trie on the first characters, k-means on PIFA below;
  - ranking: PECOS beam search, then a prefix-consistency filter (`suggest.prefix`), since the
    linear scores alone do not guarantee that a suggestion extends what was typed.
A popularity trie (`suggest.trie`) fills the list when the model returns too few consistent
completions (a prefix longer than anything seen in training, characters never seen).

Training rows come from two sources:
  - popularity rows (no previous query): each label is the target of the prefixes at which it
    first enters the `popular_k` heaviest completions, plus every prefix of 1..3 characters with
    its top completions: the model learns the trie's popularity order where it matters;
  - session rows: (previous query, next query) pairs, each giving rows (previous, next[:n]) for
    n = 1..session_prefix_max, as in the paper's (prev_query, prefix) -> next_query data.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Self

import numpy as np
import scipy.sparse as smat

from retrievers.configs import config_from_dict, config_to_dict
from suggest.chain import trie_hybrid_chain
from suggest.features import SessionPrefixVectorizer
from suggest.labels import Label, merge_labels
from suggest.prefix import prefix_match
from suggest.sessions import SessionPair
from suggest.trie import PopularityTrie

log = logging.getLogger(__name__)
FORMAT = 1
MAX_PREFIX_CHARS = 100  # the API's bound; a longer prefix is cut here too


@dataclass(frozen=True)
class SuggestConfig:
    trie_depth: int = 2  # trie levels at the top of the label tree
    nr_splits: int = 8  # k-means branching below the trie
    max_leaf_size: int = 64
    beam_size: int = 10
    topk: int = 100  # candidates taken from the beam before the prefix filter
    threshold: float = 0.1  # prune small trained weights: smaller model, faster predict
    post_processor: str = "l3-hinge"
    ngrams: tuple[int, int] = (1, 3)
    query_char_n: int = 3
    max_prefix_chars: int = 32  # features see at most this much of the prefix; the filter sees all
    context_weight: float = 1.0
    popular_k: int = 16
    short_prefix_len: int = 3  # every prefix this short gets a popularity row
    session_prefix_max: int = 6
    fuzzy: float = 0.5  # score factor of a completion that matches only after fixing the first word
    prior: float = 0.05  # final score x (1 + prior * log1p(weight)): breaks near-ties by popularity
    threads: int = -1
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SuggestConfig:
        return config_from_dict(cls, data)


@dataclass(frozen=True, slots=True)
class Suggestion:
    text: str
    kind: str
    entity_id: str | None
    score: float


def clean_prefix(prefix: str) -> str:
    """Normalized text keeps at most one trailing space: it says the last word is complete."""
    p = prefix[:MAX_PREFIX_CHARS]
    stripped = p.rstrip()
    return stripped + " " if stripped and len(stripped) < len(p) else stripped


def training_rows(labels: Sequence[Label], trie: PopularityTrie, sessions: Iterable[SessionPair],
                  cfg: SuggestConfig) -> tuple[list[tuple[str, str]], list[list[int]]]:
    """(previous query, prefix) rows and their target label indices (see the module docstring)."""
    texts = [lab.text for lab in labels]
    index = {t: i for i, t in enumerate(texts)}
    rows: dict[tuple[str, str], set[int]] = {}

    def add(prev: str, prefix: str, targets: Iterable[int]) -> None:
        rows.setdefault((prev, prefix), set()).update(targets)

    # Popularity rows. A label "enters" at the shortest prefix whose top-k holds it.
    for i, t in enumerate(texts):
        for n in range(1, len(t) + 1):
            p = t[:n]
            if p.endswith(" "):
                continue
            top = trie.complete(p, cfg.popular_k)
            if n <= cfg.short_prefix_len:
                add("", p, top)
            if i in top or n == len(t):
                add("", p, [*top, i])
                break
    n_pop = len(rows)
    for pair in sessions:
        j = index.get(pair.next)
        if j is None or pair.next == pair.prev:
            continue
        for n in range(1, min(len(pair.next), cfg.session_prefix_max) + 1):
            add(pair.prev, pair.next[:n], (j,))
    keys = list(rows)
    log.info("suggest: %d popularity rows, %d session rows", n_pop, len(keys) - n_pop)
    return keys, [sorted(rows[k]) for k in keys]


class SuggestModel:
    """Train with `train()`, persist with `write(dir)` / `load(dir)`, serve with `suggest()`."""

    def __init__(self, config: SuggestConfig | None = None) -> None:
        self.config = config or SuggestConfig()
        self.labels: list[Label] = []
        self.trie: PopularityTrie | None = None
        self.vectorizer: SessionPrefixVectorizer | None = None
        self.meta: dict[str, Any] = {}
        self._model: Any = None
        self._artifact_dir: Path | None = None
        self._staging: tempfile.TemporaryDirectory[str] | None = None
        self._texts: list[str] = []
        self._prior: np.ndarray = np.zeros(0)
        self._query_part = lru_cache(maxsize=4096)(self._query_part_uncached)

    # --- training ------------------------------------------------------------------------------

    def train(self, labels: Iterable[Label], sessions: Iterable[SessionPair] = ()) -> Self:
        cfg = self.config
        t0 = time.perf_counter()
        labs = merge_labels(labels)
        if not labs:
            raise ValueError("no labels to suggest")
        texts = [lab.text for lab in labs]
        trie = PopularityTrie(texts, [lab.weight for lab in labs])
        keys, targets = training_rows(labs, trie, sessions, cfg)
        t_rows = time.perf_counter()
        vec = SessionPrefixVectorizer.fit(keys, texts, ngrams=cfg.ngrams, query_char_n=cfg.query_char_n,
                                          max_prefix_chars=cfg.max_prefix_chars, context_weight=cfg.context_weight)
        X = vec.transform(keys)
        indptr = np.zeros(len(targets) + 1, dtype=np.int64)
        indptr[1:] = np.cumsum([len(t) for t in targets])
        cols = np.fromiter((j for t in targets for j in t), dtype=np.int32, count=int(indptr[-1]))
        Y = smat.csr_matrix((np.ones(len(cols), dtype=np.float32), cols, indptr), shape=(len(keys), len(labs)))
        t_vec = time.perf_counter()

        from pecos.xmc import LabelEmbeddingFactory
        from pecos.xmc.xlinear.model import XLinearModel

        label_feat = LabelEmbeddingFactory.create(Y, X, method="pifa", threads=cfg.threads)
        chain = trie_hybrid_chain(texts, label_feat, trie_depth=cfg.trie_depth, nr_splits=cfg.nr_splits,
                                  max_leaf_size=cfg.max_leaf_size, seed=cfg.seed, threads=cfg.threads)
        t_tree = time.perf_counter()
        model = XLinearModel.train(X, Y.tocsc(), C=chain, threshold=cfg.threshold, threads=cfg.threads,
                                   beam_size=cfg.beam_size, only_topk=cfg.topk, post_processor=cfg.post_processor)
        t_train = time.perf_counter()
        staging = tempfile.TemporaryDirectory(prefix="suggest-train-")
        stage = Path(staging.name)
        model.save(str(stage / "xr"))
        del model
        self.labels, self.trie, self.vectorizer = labs, trie, vec
        self.meta = {"format": FORMAT, "created": datetime.now(UTC).isoformat(timespec="seconds"),
                     "n_labels": len(labs), "n_rows": len(keys), "n_features": vec.n_features,
                     "n_targets": int(indptr[-1]), "tree_levels": len(chain),
                     "leaf_clusters": int(chain[-1].shape[1]),
                     "seconds": {"rows": round(t_rows - t0, 2), "vectorize": round(t_vec - t_rows, 2),
                                 "tree": round(t_tree - t_vec, 2), "train": round(t_train - t_tree, 2)},
                     "config": cfg.to_dict()}
        self._write_side_files(stage)
        self._open_model(stage)
        self._staging = staging
        log.info("suggest: trained %d labels from %d rows in %.1fs", len(labs), len(keys), time.perf_counter() - t0)
        return self

    # --- persistence ---------------------------------------------------------------------------

    def _write_side_files(self, d: Path) -> None:
        assert self.vectorizer is not None
        with open(d / "labels.jsonl", "w", encoding="utf-8") as fh:
            for lab in self.labels:
                fh.write(json.dumps([lab.text, lab.kind, lab.entity_id, lab.weight], ensure_ascii=False) + "\n")
        qv, pv = self.vectorizer.vocab_lines()
        (d / "vocab.json").write_text(json.dumps({"query": qv, "prefix": pv}, ensure_ascii=False), encoding="utf-8")
        np.savez(d / "idf.npz", **self.vectorizer.arrays())
        (d / "meta.json").write_text(json.dumps({**self.meta, "vectorizer": self.vectorizer.to_meta()}, indent=2))

    def write(self, directory: Path) -> Path:
        """Writes the model into `directory` (created; must not exist) atomically."""
        if self._artifact_dir is None:
            raise RuntimeError("SuggestModel.write() before train() or load()")
        final = Path(directory)
        if final.exists():
            raise FileExistsError(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".suggest-write-", dir=final.parent))
        try:
            shutil.copytree(self._artifact_dir / "xr", tmp / "xr")
            self._write_side_files(tmp)
            os.rename(tmp, final)  # readers see all of it or nothing
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final

    @classmethod
    def load(cls, directory: Path) -> Self:
        d = Path(directory)
        meta = json.loads((d / "meta.json").read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"{d}: unsupported suggest model format {meta.get('format')!r}")
        obj = cls(SuggestConfig.from_dict(meta.get("config", {})))
        labels = []
        with open(d / "labels.jsonl", encoding="utf-8") as fh:
            for line in fh:
                text, kind, entity_id, weight = json.loads(line)
                labels.append(Label(text, kind, entity_id, float(weight)))
        vocab = json.loads((d / "vocab.json").read_text(encoding="utf-8"))
        with np.load(d / "idf.npz") as z:
            arrays = {k: z[k] for k in z.files}
        obj.vectorizer = SessionPrefixVectorizer.from_parts(meta["vectorizer"], arrays, vocab["query"], vocab["prefix"])
        obj.labels = labels
        obj.trie = PopularityTrie([lab.text for lab in labels], [lab.weight for lab in labels])
        obj.meta = {k: v for k, v in meta.items() if k != "vectorizer"}
        obj._open_model(d)
        return obj

    def _open_model(self, d: Path) -> None:
        from pecos.xmc.xlinear.model import XLinearModel

        # Predict-only C++ model: an order of magnitude faster per query than the Python one.
        self._model = XLinearModel.load(str(d / "xr"), is_predict_only=True)
        self._artifact_dir = d
        self._texts = [lab.text for lab in self.labels]
        self._prior = 1.0 + self.config.prior * np.log1p(np.array([lab.weight for lab in self.labels]))
        self._query_part.cache_clear()

    # --- inference -----------------------------------------------------------------------------

    def _query_part_uncached(self, prev_query: str) -> tuple[list[int], list[float]]:
        assert self.vectorizer is not None
        return self.vectorizer.query_part(prev_query)

    def _beam(self, prefix: str, prev_query: str) -> tuple[list[int], list[float]]:
        from pecos.core import ScipyCompressedSparseAllocator, clib

        assert self.vectorizer is not None
        idx, vals = self.vectorizer.row(self._query_part(prev_query), prefix)
        if not idx:
            return [], []
        X = smat.csr_matrix((np.asarray(vals, dtype=np.float32), np.asarray(idx, dtype=np.int32),
                             np.array([0, len(idx)], dtype=np.int64)), shape=(1, self.vectorizer.n_features))
        # Straight into PECOS's C++ beam search, as retrievers/xr_linear.py does: XLinearModel.predict()
        # re-validates its parameter dataclasses on every call, which costs more than the search.
        alloc = ScipyCompressedSparseAllocator()
        cfg = self.config
        clib.xlinear_predict(self._model.model.model_chain, X, cfg.beam_size, None, cfg.topk, 1, alloc)
        P = alloc.get().tocsr()
        return P.indices.tolist(), P.data.tolist()

    def suggest(self, prefix: str, prev_query: str = "", k: int = 10, *, use_model: bool = True) -> list[Suggestion]:
        """Completions of a normalized prefix (a trailing space means the last word is complete),
        in the context of the session's previous normalized query ('' when there is none).
        The previous query itself is never suggested again."""
        if self.trie is None:
            raise RuntimeError("SuggestModel.suggest() before train() or load()")
        prefix = clean_prefix(prefix)
        if not prefix or k <= 0:
            return []
        texts, labels, prior, fuzzy = self._texts, self.labels, self._prior, self.config.fuzzy
        scored: list[tuple[float, int]] = []
        if use_model:
            idx, vals = self._beam(prefix, prev_query)
            for i, s in zip(idx, vals, strict=True):
                t = texts[i]
                if t == prev_query:
                    continue
                m = 1.0 if t.startswith(prefix) else prefix_match(t, prefix, fuzzy)
                if m > 0.0:
                    scored.append((s * m * float(prior[i]), i))
            scored.sort(key=lambda x: (-x[0], x[1]))
            del scored[k:]
        if len(scored) < k:
            # Fill from the popularity trie, below every model score: the model's evidence first.
            have = {i for _, i in scored}
            floor = min((s for s, _ in scored), default=1.0)
            fill = [i for i in self.trie.complete(prefix, k + 1) if i not in have and texts[i] != prev_query]
            top_w = max((labels[i].weight for i in fill), default=0.0) or 1.0
            for i in fill[: k - len(scored)]:
                scored.append((0.5 * floor * (0.5 + 0.5 * labels[i].weight / top_w), i))
        return [Suggestion(texts[i], labels[i].kind, labels[i].entity_id, round(float(s), 6)) for s, i in scored]

    def popular(self, prefix: str, k: int = 10) -> list[Suggestion]:
        """The baseline: the trie's most popular completions, no model, no session."""
        return self.suggest(prefix, "", k, use_model=False)

    def __len__(self) -> int:
        return len(self.labels)


def pop_weight(popularity: float) -> float:
    """Catalog popularity 0..100 -> a label weight that a handful of logged queries can overtake."""
    return math.exp(popularity / 20.0)
