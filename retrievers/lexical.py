"""Embedded lexical retrieval on tantivy: per-field BM25 with boosts, a flat-scoring fuzzy clause
for misspellings, last-term prefix matching for as-you-type queries, whole-title prefix and exact
matching for title-only and partially typed titles, and a popularity prior.

Design notes:
- Queries are built programmatically from our own token list (term / fuzzy / boost / dis-max
  queries), never from tantivy's query parser, so user text cannot inject syntax or raise.
- Both sides share one analysis: `retrievers.text.normalize` in Python (NFKC, casefold, accent
  folding, "don't" -> "dont", punctuation -> space), then one tantivy `TextAnalyzer` (whitespace
  split, lowercase, drop over-long tokens, optional stop words and stemmer). The analyzer is
  registered for the indexed fields and called directly on the query, so the two cannot drift.
- Popularity prior is multiplicative: final = bm25 * (1 + w * popularity), popularity in [0, 1].
  Multiplicative keeps the prior proportional to how well the text matched (an additive log
  prior would let a popular but barely matching track outrank an exact title match). tantivy's
  `weight_by_field` multiplies the score by log2(2 + v) inside the top-k collector, so we store
  v = 2**(1 + w*pop) - 2 as a fast field: the top-k stays exact, with no Python re-ranking.
- Partial titles ("dancing in the moo", "shape of y"): per-word matching cannot see that the
  query is the *start of a title* (its last word may be a real word, "moon", or one letter). So
  each track's normalized title, and "artist title", is indexed as edge n-grams (every prefix of
  at least `title_prefix_min_chars`, as one raw term each) in `title_prefix`, and as whole strings
  in `title_exact`. The whole normalized query is then one term against each. The prefix clause
  is BM25-scored: its idf says how many titles start that way ("lo" matches thousands and
  adds little, "dancing in the moo" is nearly unique), and the field length norm prefers the
  shorter completions. The exact clause adds on top, so a query that IS a title keeps that
  title above longer titles it is a prefix of.
- BM25 k1 / b are fixed in tantivy (k1=1.2, b=0.75); they are not configurable here.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Self

import tantivy
from pydantic import BaseModel, ConfigDict, Field, field_validator

from retrievers.base import Candidate, Document
from retrievers.text import normalize, strip_version

log = logging.getLogger(__name__)

CONFIG_FILE = "lexical.json"
IDS_FILE = "doc_ids.json"
INDEX_DIR = "index"
ANALYZER = "ltrr_text"
# Internal schema fields; document fields may not reuse these names.
_ID, _ORD, _POP, _PRIOR = "doc_id", "ord", "popularity", "prior"
_TPREFIX, _TEXACT = "title_prefix", "title_exact"
RESERVED_FIELDS = frozenset({_ID, _ORD, _POP, _PRIOR, _TPREFIX, _TEXACT})
STEMMER_LANGUAGES = frozenset({"arabic", "danish", "dutch", "english", "finnish", "french", "german", "greek",
                               "hungarian", "italian", "norwegian", "portuguese", "romanian", "russian",
                               "spanish", "swedish", "tamil", "turkish"})

MUSIC_BOOSTS = {"title": 3.0, "artist": 2.5, "album": 1.0, "genres": 0.8, "subgenres": 0.8}


class LexicalConfig(BaseModel):
    """Everything that decides what the index contains and how a query is scored. Saved next to
    the index, so a loaded retriever scores exactly like the one that was built."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    field_boosts: dict[str, float] = Field(default_factory=lambda: dict(MUSIC_BOOSTS))
    # Dis-max across fields: 1.0 sums the per-field scores (a query naming artist AND title should
    # beat one matching only the title); 0.0 keeps only the best field (BEIR's best_fields style).
    tie_breaker: float = Field(default=1.0, ge=0.0, le=1.0)
    fuzzy: bool = True
    # Edit distance by token length: len <= fuzzy_exact_max_len -> no fuzzy, <= fuzzy_one_max_len -> 1, else 2.
    fuzzy_exact_max_len: int = Field(default=3, ge=0)
    fuzzy_one_max_len: int = Field(default=6, ge=0)
    # Fuzzy and prefix matches score flat in tantivy (no BM25). The flat score is fuzzy_weight times
    # the idf of a term seen once in the index, i.e. a share of what an exact rare-term hit scores:
    # an exact match gets BM25 + the flat score, a near miss only the flat score, so exact wins.
    fuzzy_weight: float = Field(default=0.5, ge=0.0)
    # Fuzzy / prefix clauses only for query terms in at most this many docs of the field: a term the
    # field does not know is probably misspelled or unfinished, a known one is not. 0 measured best on
    # the playlist dev set and keeps queries of real words fast (a distance-2 automaton costs ms).
    fuzzy_max_df: int = Field(default=0, ge=0)
    # Fields that get fuzzy / prefix clauses (None = every boosted field). Genre tags are a closed
    # vocabulary where fuzzy matching mostly adds noise.
    fuzzy_fields: tuple[str, ...] | None = ("title", "artist", "album")
    # The last query token also matches as a prefix ("billie eil"), when at least this long.
    prefix_last_term: bool = True
    prefix_min_len: int = Field(default=3, ge=1)
    # Flat prefix score in the same idf units as fuzzy_weight; higher than fuzzy because an unfinished
    # word is certain intent ("billie eil" is Billie Eilish), while a fuzzy neighbour is a guess.
    prefix_weight: float = Field(default=1.0, ge=0.0)
    # Adjacent query words also match glued together: "cold play" finds "coldplay".
    join_pairs: bool = True
    # Whole-title matching (module docstring): the document field holding the title, and the one
    # whose value is prepended for "artist title" strings. None disables it (prose corpora).
    title_field: str | None = "title"
    title_artist_field: str | None = "artist"
    title_prefix_weight: float = Field(default=2.0, ge=0.0)
    title_exact_weight: float = Field(default=1.0, ge=0.0)
    title_prefix_min_chars: int = Field(default=3, ge=1)
    # Longer titles are indexed by their first title_prefix_max_chars characters only.
    title_prefix_max_chars: int = Field(default=64, ge=8)
    popularity_weight: float = Field(default=0.5, ge=0.0)
    stemmer: str | None = None
    stopwords: str | None = None
    max_token_len: int = Field(default=40, ge=4)
    max_query_terms: int = Field(default=32, ge=1)
    # Raw query text beyond this is ignored before normalization: bounds cost of 10 kB inputs.
    max_query_chars: int = Field(default=2000, ge=16)
    writer_heap_mb: int = Field(default=128, ge=16)
    writer_threads: int = Field(default=1, ge=1, le=8)

    @field_validator("field_boosts")
    @classmethod
    def _check_fields(cls, v: dict[str, float]) -> dict[str, float]:
        if not v:
            raise ValueError("at least one field is needed")
        for name, boost in v.items():
            if name in RESERVED_FIELDS or not tantivy.SchemaBuilder.is_valid_field_name(name):
                raise ValueError(f"field name {name!r} is reserved or not valid in tantivy")
            if not (boost > 0 and math.isfinite(boost)):
                raise ValueError(f"boost for {name!r} must be a positive finite number")
        return v

    @field_validator("stemmer", "stopwords")
    @classmethod
    def _check_language(cls, v: str | None) -> str | None:
        if v is not None and v not in STEMMER_LANGUAGES:
            raise ValueError(f"unsupported language {v!r}")
        return v

    @classmethod
    def scifact(cls) -> LexicalConfig:
        """Prose retrieval (BEIR SciFact): title + text, English stemming and stop words, no fuzzy,
        no popularity. tie_breaker 0.5 is what BEIR's Elasticsearch BM25 baseline uses (best_fields)."""
        return cls(field_boosts={"title": 1.0, "text": 1.0}, tie_breaker=0.5, fuzzy=False, prefix_last_term=False,
                   popularity_weight=0.0, stemmer="english", stopwords="english", fuzzy_fields=None,
                   title_field=None, title_artist_field=None)

    @property
    def whole_title(self) -> bool:
        """On when the title field is one of the indexed fields (a prose config simply has none)."""
        return self.title_field in self.field_boosts and (self.title_prefix_weight > 0 or self.title_exact_weight > 0)

    def edit_distance(self, token: str) -> int:
        n = len(token)
        if n <= self.fuzzy_exact_max_len:
            return 0
        return 1 if n <= self.fuzzy_one_max_len else 2


def _analyzer(cfg: LexicalConfig) -> tantivy.TextAnalyzer:
    builder = (tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.whitespace())
               .filter(tantivy.Filter.lowercase())
               .filter(tantivy.Filter.remove_long(cfg.max_token_len)))
    if cfg.stopwords:
        builder = builder.filter(tantivy.Filter.stopword(cfg.stopwords))
    if cfg.stemmer:
        builder = builder.filter(tantivy.Filter.stemmer(cfg.stemmer))
    return builder.build()


def _schema(cfg: LexicalConfig) -> tantivy.Schema:
    sb = tantivy.SchemaBuilder()
    for name in cfg.field_boosts:
        # Positions are not needed: no phrase queries are issued, so freqs keep the index smaller.
        sb.add_text_field(name, stored=False, tokenizer_name=ANALYZER, index_option="freq")
    sb.add_text_field(_ID, stored=True, tokenizer_name="raw", index_option="basic")
    sb.add_unsigned_field(_ORD, fast=True)
    sb.add_float_field(_POP, stored=True, fast=True)
    sb.add_float_field(_PRIOR, fast=True)
    if cfg.whole_title:
        # One raw term per value: a prefix / whole title string, matched only as a whole.
        sb.add_text_field(_TPREFIX, stored=False, tokenizer_name="raw", index_option="basic")
        sb.add_text_field(_TEXACT, stored=False, tokenizer_name="raw", index_option="basic")
    return sb.build()


def title_strings(cfg: LexicalConfig, title: str, artist: str = "") -> tuple[list[str], list[str]]:
    """(prefix terms, exact terms) of one track. Exact: the normalized title, with and without its
    version suffix ("memories dillon francis remix", "memories"), each also after the artist.
    Prefixes: of the full normalized title (its base title is a prefix of it), and of
    "artist title" from the first title characters on (artist-only prefixes are the artist field's job)."""
    full, base = normalize(title), normalize(strip_version(title))
    if not full:
        return [], []
    art = normalize(artist) if artist else ""
    exact = list(dict.fromkeys(s for t in (full, base) if t for s in (t, f"{art} {t}" if art else "")))
    exact = [e for e in exact if e]
    lo, hi = cfg.title_prefix_min_chars, cfg.title_prefix_max_chars
    prefixes = [full[:n] for n in range(lo, min(len(full), hi) + 1) if full[n - 1] != " "]
    if art:
        joined = f"{art} {full}"
        start = len(art) + 1 + lo
        prefixes += [joined[:n] for n in range(start, min(len(joined), hi + len(art) + 1) + 1)
                     if joined[n - 1] != " "]
    return prefixes, exact


class TantivyRetriever:
    """BM25 over named document fields on an on-disk tantivy index.

    `index_dir`: where build() writes the index; a private temporary directory when None
    (save() then copies it). Search is read-only and uses one long-lived searcher."""

    name = "lexical"

    def __init__(self, config: LexicalConfig | None = None, *, index_dir: Path | None = None):
        self.config = config or LexicalConfig()
        self._index_dir = Path(index_dir) if index_dir is not None else None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._analyzer = _analyzer(self.config)
        self._schema = _schema(self.config)
        self._fields = list(self.config.field_boosts)
        fuzzy = self.config.fuzzy_fields
        self._fuzzy_fields = [f for f in self._fields if fuzzy is None or f in fuzzy]
        self._index: tantivy.Index | None = None
        self._searcher: tantivy.Searcher | None = None
        self._ids: list[str] = []
        self._idf1 = 0.0

    # --- indexing ----------------------------------------------------------------------------

    def _prior(self, popularity: float) -> float:
        pop = min(max(float(popularity), 0.0), 1.0) if math.isfinite(popularity) else 0.0
        return 2.0 ** (1.0 + self.config.popularity_weight * pop) - 2.0

    def build(self, docs: Sequence[Document], *, progress: bool = False) -> None:
        from tqdm import tqdm

        cfg = self.config

        if self._index_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="ltrr-lexical-")
            self._index_dir = Path(self._tmp.name)
        index_path = self._index_dir
        if index_path.exists() and any(index_path.iterdir()):
            if not (index_path / "meta.json").exists():
                raise FileExistsError(f"{index_path} is not empty and is not a tantivy index; refusing to overwrite")
            shutil.rmtree(index_path)  # a rebuild must not append to the previous index
        index_path.mkdir(parents=True, exist_ok=True)
        index = tantivy.Index(self._schema, path=str(index_path), reuse=False)
        index.register_tokenizer(ANALYZER, self._analyzer)
        writer = index.writer(heap_size=self.config.writer_heap_mb * 1_000_000,
                              num_threads=self.config.writer_threads)
        ids: list[str] = []
        for doc in tqdm(docs, desc="lexical index", unit="doc", disable=not progress, mininterval=1.0):
            tdoc = tantivy.Document()
            for name in self._fields:
                text = doc.fields.get(name)
                if text:
                    tdoc.add_text(name, normalize(text))
            if cfg.whole_title and doc.fields.get(cfg.title_field):
                artist = doc.fields.get(cfg.title_artist_field, "") if cfg.title_artist_field else ""
                prefixes, exact = title_strings(cfg, doc.fields[cfg.title_field], artist)
                for term in prefixes:
                    tdoc.add_text(_TPREFIX, term)
                for term in exact:
                    tdoc.add_text(_TEXACT, term)
            tdoc.add_text(_ID, doc.doc_id)
            tdoc.add_unsigned(_ORD, len(ids))
            tdoc.add_float(_POP, float(doc.popularity))
            tdoc.add_float(_PRIOR, self._prior(doc.popularity))
            writer.add_document(tdoc)
            ids.append(doc.doc_id)
        writer.commit()
        writer.wait_merging_threads()
        self._ids = ids
        self._open(index)
        log.info("lexical index built: %d docs, %d segments in %s", len(ids), self._searcher.num_segments,
                 index_path)

    def _open(self, index: tantivy.Index) -> None:
        index.reload()
        self._index = index
        self._searcher = index.searcher()
        n = self._searcher.num_docs
        # BM25 idf of a df=1 term, tantivy's formula: ln(1 + (N - df + 0.5) / (df + 0.5)).
        self._idf1 = math.log(1.0 + (n - 0.5) / 1.5) if n else 0.0

    # --- querying ----------------------------------------------------------------------------

    def analyze(self, text: str) -> tuple[list[str], list[str]]:
        """The query's index terms: (words, glued adjacent pairs), unique, in order, together capped
        at max_query_terms. Glued pairs are exact-only: they are guesses, fuzzing them adds noise."""
        norm = normalize(text[: self.config.max_query_chars])
        if not norm:
            return [], []
        cap = self.config.max_query_terms
        words = list(dict.fromkeys(self._analyzer.analyze(norm)))[:cap]
        pairs: list[str] = []
        if self.config.join_pairs and len(words) < cap:
            raw = norm.split()[:cap]
            glued = self._analyzer.analyze(" ".join(a + b for a, b in itertools.pairwise(raw)))
            pairs = [t for t in dict.fromkeys(glued) if t not in words][: cap - len(words)]
        return words, pairs

    def build_query(self, terms: Sequence[str], extra_terms: Sequence[str] = (), *,
                    prefix_last: str | None = None, whole: str | None = None) -> tantivy.Query | None:
        """Per field: SHOULD(exact BM25 terms, flat fuzzy terms, flat last-term prefix), boosted by the
        field's weight; plus, for the whole normalized query `whole`, a BM25 title-prefix term and a
        title-exact term; all combined by dis-max with the configured tie breaker."""
        if not terms:
            return None
        cfg, schema = self.config, self._schema
        Occur, Q = tantivy.Occur, tantivy.Query
        per_field: list[tantivy.Query] = []
        for field in self._fields:
            clauses = [(Occur.Should, Q.term_query(schema, field, t)) for t in [*terms, *extra_terms]]
            if field in self._fuzzy_fields and self._idf1 > 0:
                if cfg.fuzzy:
                    for t in terms:
                        d = cfg.edit_distance(t)
                        if d > 0 and cfg.fuzzy_weight > 0 and self._searcher.doc_freq(field, t) <= cfg.fuzzy_max_df:
                            fq = Q.fuzzy_term_query(schema, field, t, distance=d, transposition_cost_one=True)
                            clauses.append((Occur.Should, Q.boost_query(fq, self._idf1 * cfg.fuzzy_weight)))
                # Same gate as fuzzy: a complete, known word ("rock") is not expanded to "rockstar".
                if (prefix_last and len(prefix_last) >= cfg.prefix_min_len and cfg.prefix_weight > 0
                        and self._searcher.doc_freq(field, prefix_last) <= cfg.fuzzy_max_df):
                    pq = Q.fuzzy_term_query(schema, field, prefix_last, distance=0, prefix=True)
                    clauses.append((Occur.Should, Q.boost_query(pq, self._idf1 * cfg.prefix_weight)))
            per_field.append(Q.boost_query(Q.boolean_query(clauses), cfg.field_boosts[field]))
        if whole and cfg.whole_title and len(whole) >= cfg.title_prefix_min_chars:
            title_boost = cfg.field_boosts[cfg.title_field]
            if cfg.title_prefix_weight > 0:
                per_field.append(Q.boost_query(Q.term_query(schema, _TPREFIX, whole),
                                               title_boost * cfg.title_prefix_weight))
            if cfg.title_exact_weight > 0:
                # Flat: "is the query exactly a title" is a yes/no, worth one rare title word.
                per_field.append(Q.const_score_query(Q.term_query(schema, _TEXACT, whole),
                                                     title_boost * self._idf1 * cfg.title_exact_weight))
        if len(per_field) == 1:
            return per_field[0]
        return Q.disjunction_max_query(per_field, tie_breaker=cfg.tie_breaker)

    def _typed_prefix(self, query: str) -> str | None:
        """The last word, unstemmed, while it may still be being typed (no trailing space)."""
        if not self.config.prefix_last_term or not query or query[-1:].isspace():
            return None
        words = normalize(query[-self.config.max_token_len - 1:]).split()
        return words[-1] if words and len(words[-1]) <= self.config.max_token_len else None

    def retrieve(self, query: str, k: int) -> list[Candidate]:
        if self._searcher is None:
            raise RuntimeError("retriever is not built or loaded")
        if k <= 0 or not isinstance(query, str):
            return []
        terms, pairs = self.analyze(query)
        whole = normalize(query[: self.config.max_query_chars]) if self.config.whole_title else None
        q = self.build_query(terms, pairs, prefix_last=self._typed_prefix(query), whole=whole)
        if q is None:
            return []
        weight = _PRIOR if self.config.popularity_weight > 0 else None
        hits = self._searcher.search(q, min(k, len(self._ids)), count=False, weight_by_field=weight).hits
        if not hits:
            return []
        ords = self._searcher.fast_field_values(_ORD, [addr for _, addr in hits])
        ids = self._ids
        return [Candidate(track_id=ids[int(o)], score=float(s), rank=r)
                for r, ((s, _), o) in enumerate(zip(hits, ords, strict=True), start=1)]

    def retrieve_batch(self, queries: Sequence[str], k: int) -> list[list[Candidate]]:
        return [self.retrieve(q, k) for q in queries]

    def __len__(self) -> int:
        return len(self._ids)

    # --- persistence -------------------------------------------------------------------------

    def save(self, path: Path) -> None:
        """path/index (tantivy files), path/doc_ids.json (ord -> id), path/lexical.json (config)."""
        if self._index is None or self._index_dir is None:
            raise RuntimeError("nothing to save: build() first")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        target = path / INDEX_DIR
        if target.resolve() != self._index_dir.resolve():
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(self._index_dir, target)
        (path / IDS_FILE).write_text(json.dumps(self._ids))
        (path / CONFIG_FILE).write_text(self.config.model_dump_json(indent=2))

    @classmethod
    def load(cls, path: Path) -> Self:
        path = Path(path)
        raw = json.loads((path / CONFIG_FILE).read_text())
        if "title_field" not in raw:
            # Saved before whole-title matching existed: its index has no title_prefix/exact fields.
            raw["title_field"] = None
        config = LexicalConfig.model_validate(raw)
        self = cls(config, index_dir=path / INDEX_DIR)
        index = tantivy.Index.open(str(path / INDEX_DIR))
        index.register_tokenizer(ANALYZER, self._analyzer)
        self._ids = json.loads((path / IDS_FILE).read_text())
        self._open(index)
        if self._searcher.num_docs != len(self._ids):
            raise ValueError(f"{path}: index has {self._searcher.num_docs} docs but {len(self._ids)} ids")
        return self
