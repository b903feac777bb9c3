"""Input features of the autocompletion model: (previous query, typed prefix) -> one sparse row.

As in the PECOS session-aware QAC recipe (Yadav et al., KDD 2021), the row is two TF-IDF blocks
hstacked and L2-normalized: the previous query (word unigrams plus character 3-grams inside words,
so a misspelled previous query still shares most of its features with the clean one) and the
prefix (character 1-3-grams, position weighted). The paper discounts an n-gram at position i by
1/(i+1); here the discount restarts at every word, so n-grams at word starts count fully: the
first letters of each word are what a user types with intent, the rest of a word is often cut.

Both vectorizers are small pure-Python TF-IDFs rather than PECOS's C++ `Vectorizer`: PECOS has no
position weighting, and one call of its predict cost ~0.27 ms here, a seventh of the whole latency
budget, for a row of a dozen n-grams. Texts arrive normalized (lowercase, single spaces); a
trailing space in the prefix is kept and means "the word is complete".
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as smat

START = "^"  # marks the start of the prefix, so "^ta" (starts with "ta") differs from "ta" inside a word


def prefix_ngrams(prefix: str, ngrams: tuple[int, int], max_chars: int) -> dict[str, float]:
    """Position-weighted character n-grams of a prefix: weight 1/(1 + offset from the word start)."""
    s = START + prefix[:max_chars]
    lo, hi = ngrams
    out: dict[str, float] = {}
    word_start = 0
    for i, ch in enumerate(s):
        if ch == " ":
            word_start = i  # the space opens the next word: " sw" is a word-start n-gram
        w = 1.0 / (1 + i - word_start)
        for n in range(lo, hi + 1):
            if i + n > len(s):
                break
            g = s[i:i + n]
            out[g] = out.get(g, 0.0) + w
    return out


def query_terms(query: str, char_n: int) -> dict[str, float]:
    """Words of the previous query plus character n-grams inside each padded word."""
    out: dict[str, float] = {}
    for word in query.split():
        key = "w:" + word
        out[key] = out.get(key, 0.0) + 1.0
        padded = f" {word} "
        for i in range(len(padded) - char_n + 1):
            g = "c:" + padded[i:i + char_n]
            out[g] = out.get(g, 0.0) + 1.0
    return out


@dataclass
class TfidfBlock:
    """A fitted vocabulary with idf weights; `terms` is one of the term functions above."""

    vocab: dict[str, int]
    idf: np.ndarray

    @classmethod
    def fit(cls, term_dicts: Iterable[dict[str, float]], min_df: int = 1) -> TfidfBlock:
        df: dict[str, int] = {}
        n_docs = 0
        for terms in term_dicts:
            n_docs += 1
            for t in terms:
                df[t] = df.get(t, 0) + 1
        kept = sorted(t for t, c in df.items() if c >= min_df)
        vocab = {t: i for i, t in enumerate(kept)}
        # sklearn's smooth idf: a term in every document still weighs 1, never 0.
        idf = np.array([math.log((1 + n_docs) / (1 + df[t])) + 1.0 for t in kept], dtype=np.float32)
        return cls(vocab, idf)

    def encode(self, terms: dict[str, float]) -> tuple[list[int], list[float]]:
        """Sorted column indices and L2-normalized sublinear tf-idf values."""
        vocab, idf = self.vocab, self.idf
        pairs = []
        for t, tf in terms.items():
            j = vocab.get(t)
            if j is not None:
                pairs.append((j, (1.0 + math.log(tf) if tf > 1.0 else tf) * float(idf[j])))
        if not pairs:
            return [], []
        pairs.sort()
        norm = math.sqrt(sum(v * v for _, v in pairs))
        return [j for j, _ in pairs], [v / norm for _, v in pairs]

    def __len__(self) -> int:
        return len(self.vocab)


@dataclass
class SessionPrefixVectorizer:
    """[previous-query block * context_weight | prefix block], row L2-normalized."""

    query_block: TfidfBlock
    prefix_block: TfidfBlock
    ngrams: tuple[int, int] = (1, 3)
    query_char_n: int = 3
    max_prefix_chars: int = 32
    context_weight: float = 1.0  # how much the previous query weighs against the prefix

    @property
    def n_features(self) -> int:
        return len(self.query_block) + len(self.prefix_block)

    def query_part(self, prev_query: str) -> tuple[list[int], list[float]]:
        return self.query_block.encode(query_terms(prev_query, self.query_char_n)) if prev_query else ([], [])

    def prefix_part(self, prefix: str) -> tuple[list[int], list[float]]:
        return self.prefix_block.encode(prefix_ngrams(prefix, self.ngrams, self.max_prefix_chars))

    def row(self, query_part: tuple[list[int], list[float]], prefix: str) -> tuple[list[int], list[float]]:
        qi, qv = query_part
        pi, pv = self.prefix_part(prefix)
        off = len(self.query_block)
        cw = self.context_weight
        vals = [v * cw for v in qv] + pv
        norm = math.sqrt(sum(v * v for v in vals)) or 1.0
        return qi + [j + off for j in pi], [v / norm for v in vals]

    def transform(self, rows: Sequence[tuple[str, str]]) -> smat.csr_matrix:
        """(previous query, prefix) pairs -> CSR float32 with sorted indices (PECOS requires them)."""
        indptr, indices, data = [0], [], []
        cache: dict[str, tuple[list[int], list[float]]] = {}
        for prev, prefix in rows:
            qp = cache.get(prev)
            if qp is None:
                qp = cache[prev] = self.query_part(prev)
            idx, vals = self.row(qp, prefix)
            indices.extend(idx)
            data.extend(vals)
            indptr.append(len(indices))
        return smat.csr_matrix((np.asarray(data, dtype=np.float32), np.asarray(indices, dtype=np.int32),
                                np.asarray(indptr, dtype=np.int64)), shape=(len(rows), self.n_features))

    @classmethod
    def fit(cls, rows: Sequence[tuple[str, str]], extra_queries: Iterable[str] = (), *,
            ngrams: tuple[int, int] = (1, 3), query_char_n: int = 3, max_prefix_chars: int = 32,
            context_weight: float = 1.0) -> SessionPrefixVectorizer:
        """Fits the query block on the distinct previous queries plus `extra_queries` (the label
        texts, so a previous query never seen as context still has known words) and the prefix
        block on the distinct training prefixes."""
        queries = {p for p, _ in rows if p} | set(extra_queries)
        prefixes = {x for _, x in rows}
        qb = TfidfBlock.fit((query_terms(q, query_char_n) for q in queries), min_df=1)
        pb = TfidfBlock.fit((prefix_ngrams(x, ngrams, max_prefix_chars) for x in prefixes), min_df=1)
        return cls(qb, pb, ngrams, query_char_n, max_prefix_chars, context_weight)

    # --- persistence: vocabularies as text, idf as npz --------------------------------------------

    def to_meta(self) -> dict[str, object]:
        return {"ngrams": list(self.ngrams), "query_char_n": self.query_char_n,
                "max_prefix_chars": self.max_prefix_chars, "context_weight": self.context_weight}

    def arrays(self) -> dict[str, np.ndarray]:
        return {"query_idf": self.query_block.idf, "prefix_idf": self.prefix_block.idf}

    def vocab_lines(self) -> tuple[list[str], list[str]]:
        def ordered(b: TfidfBlock) -> list[str]:
            return sorted(b.vocab, key=b.vocab.__getitem__)
        return ordered(self.query_block), ordered(self.prefix_block)

    @classmethod
    def from_parts(cls, meta: dict[str, object], arrays: dict[str, np.ndarray], query_vocab: list[str],
                   prefix_vocab: list[str]) -> SessionPrefixVectorizer:
        qb = TfidfBlock({t: i for i, t in enumerate(query_vocab)}, arrays["query_idf"].astype(np.float32))
        pb = TfidfBlock({t: i for i, t in enumerate(prefix_vocab)}, arrays["prefix_idf"].astype(np.float32))
        ng = meta["ngrams"]
        assert isinstance(ng, list)
        return cls(qb, pb, (int(ng[0]), int(ng[1])), int(str(meta["query_char_n"])),
                   int(str(meta["max_prefix_chars"])), float(str(meta["context_weight"])))
