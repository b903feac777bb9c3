"""BM25 over track fields on OpenSearch: the scale-out twin of the embedded tantivy retriever.

Same protocol and the same `name` ("lexical"), so the bandit, ranker features and decision
logs do not care which backend served. The index lives in the cluster behind an alias; `save`
and `load` only persist how to reach it.

Query shape (one `function_score`):
  bool.should  = exact multi_match (best_fields, operator OR, tie_breaker so a second field
                 such as artist adds to a title match)
               + the same multi_match with fuzziness AUTO, prefix_length 1, boosted lower:
                 fuzzy matches score flat-ish, so the exact clause decides among exact hits and
                 the fuzzy one only rescues misspellings ("tayler swift").
  functions    = field_value_factor(popularity, modifier log1p, factor F)
  boost_mode   = "sum" (default): score = BM25 + log1p(F * popularity). Popularity is 0..1, so the
                 prior adds at most log1p(F) (2.4 for F=10): a tie-breaker among similar text
                 matches that cannot lift an unrelated hit over a strong title match.
                 "multiply" would scale BM25 by log1p(F*p), which is 0 for popularity 0, wiping
                 out every unpopular track's text score; use it only with modifier log2p.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Self

from opensearchpy import OpenSearch

from retrievers.base import Candidate, Document
from retrievers.opensearch_common import (
    TEXT_FIELDS,
    OpenSearchSettings,
    cap_query,
    lexical_index_body,
    make_client,
    read_settings_file,
    rebuild,
    write_settings_file,
)

log = logging.getLogger(__name__)

DEFAULT_BOOSTS: dict[str, float] = {"title": 3.0, "artist": 2.5, "album": 1.0, "genres": 0.8, "subgenres": 0.8}


class OpenSearchQueryError(RuntimeError):
    """A search the cluster answered with an error (per query inside an _msearch)."""


class OpenSearchLexicalRetriever:
    name = "lexical"
    kind = "opensearch_lexical"

    def __init__(
        self,
        settings: OpenSearchSettings | None = None,
        *,
        client: OpenSearch | None = None,
        boosts: Mapping[str, float] | None = None,
        fuzzy_boost: float = 0.3,
        tie_breaker: float = 0.3,
        popularity_factor: float = 10.0,
        boost_mode: str = "sum",
    ):
        if boost_mode not in ("sum", "multiply"):
            raise ValueError("boost_mode must be 'sum' or 'multiply'")
        self.settings = settings or OpenSearchSettings()
        self.client = client or make_client(self.settings)
        self.boosts = dict(boosts or DEFAULT_BOOSTS)
        self.fuzzy_boost = fuzzy_boost
        self.tie_breaker = tie_breaker
        self.popularity_factor = popularity_factor
        self.boost_mode = boost_mode
        self.alias = self.settings.alias("lexical")
        self.index_name: str | None = None  # concrete index of the last build, for the record

    # --- indexing ------------------------------------------------------------------------------

    def _source(self, doc: Document) -> dict[str, Any]:
        body: dict[str, Any] = {"track_id": doc.doc_id, "popularity": float(doc.popularity)}
        for name in TEXT_FIELDS:
            value = doc.fields.get(name, "")
            if name in ("genres", "subgenres"):
                # Catalog documents carry tags "|"-joined; arrays keep each tag an exact keyword.
                body[name] = [t.strip() for t in value.split("|") if t.strip()]
            else:
                body[name] = value
        year = doc.extra.get("year")
        if isinstance(year, int) and -32768 <= year <= 32767:
            body["year"] = year
        return body

    def build(self, docs: Sequence[Document], *, progress: bool = False) -> None:
        def actions(index: str):
            for doc in docs:
                yield {"_index": index, "_id": doc.doc_id, "_source": self._source(doc)}

        self.index_name, summary = rebuild(self.client, self.alias, lexical_index_body(self.settings), actions,
                                           self.settings, total=len(docs), progress=progress)
        log.info("lexical index %s built: %s", self.index_name, summary.describe())

    # --- querying ------------------------------------------------------------------------------

    def _fields(self) -> list[str]:
        return [f"{name}^{boost:g}" for name, boost in self.boosts.items()]

    def search_body(self, query: str, k: int) -> dict[str, Any] | None:
        """The exact request body for one query, or None when nothing searchable is left."""
        text = cap_query(query)
        if not text or k <= 0:
            return None
        fields = self._fields()
        return {
            "size": k,
            "_source": False,
            "track_total_hits": False,  # exact hit counts cost time and nobody reads them
            "query": {
                "function_score": {
                    "query": {
                        "bool": {
                            "should": [
                                {"multi_match": {"query": text, "type": "best_fields", "fields": fields,
                                                 "operator": "or", "tie_breaker": self.tie_breaker}},
                                {"multi_match": {"query": text, "type": "best_fields", "fields": fields,
                                                 "operator": "or", "tie_breaker": self.tie_breaker,
                                                 "fuzziness": "AUTO", "prefix_length": 1, "max_expansions": 50,
                                                 "boost": self.fuzzy_boost}},
                            ],
                            "minimum_should_match": 1,
                        }
                    },
                    "functions": [
                        {"field_value_factor": {"field": "popularity", "modifier": "log1p",
                                                "factor": self.popularity_factor, "missing": 0}},
                    ],
                    "score_mode": "sum",
                    "boost_mode": self.boost_mode,
                }
            },
        }

    @staticmethod
    def _candidates(response: Mapping[str, Any]) -> list[Candidate]:
        hits = response.get("hits", {}).get("hits", [])
        return [Candidate(track_id=str(h["_id"]), score=float(h.get("_score") or 0.0), rank=r)
                for r, h in enumerate(hits, start=1)]

    def retrieve(self, query: str, k: int) -> list[Candidate]:
        body = self.search_body(query, k)
        if body is None:
            return []
        return self._candidates(self.client.search(index=self.alias, body=body))

    def retrieve_batch(self, queries: Sequence[str], k: int) -> list[list[Candidate]]:
        """One _msearch round trip for all queries; empty queries cost nothing."""
        bodies = [self.search_body(q, k) for q in queries]
        lines: list[dict[str, Any]] = []
        for body in bodies:
            if body is not None:
                lines += [{"index": self.alias}, body]
        if not lines:
            return [[] for _ in queries]
        responses = iter(self.client.msearch(body=lines)["responses"])
        out: list[list[Candidate]] = []
        for body in bodies:
            if body is None:
                out.append([])
                continue
            resp = next(responses)
            if "error" in resp:
                raise OpenSearchQueryError(f"msearch item failed: {resp['error']}")
            out.append(self._candidates(resp))
        return out

    # --- persistence ---------------------------------------------------------------------------

    def save(self, path: Path) -> None:
        write_settings_file(path, self.kind, self.settings, {
            "index": self.index_name, "alias": self.alias, "saved_at": time.time(),
            "query": {"boosts": self.boosts, "fuzzy_boost": self.fuzzy_boost, "tie_breaker": self.tie_breaker,
                      "popularity_factor": self.popularity_factor, "boost_mode": self.boost_mode},
        })

    @classmethod
    def load(cls, path: Path, *, client: OpenSearch | None = None, password: str | None = None) -> Self:
        settings, extra = read_settings_file(path, cls.kind, password=password)
        q = extra.get("query", {})
        retriever = cls(settings, client=client, boosts=q.get("boosts"), fuzzy_boost=q.get("fuzzy_boost", 0.3),
                        tie_breaker=q.get("tie_breaker", 0.3), popularity_factor=q.get("popularity_factor", 10.0),
                        boost_mode=q.get("boost_mode", "sum"))
        retriever.index_name = extra.get("index")
        return retriever
