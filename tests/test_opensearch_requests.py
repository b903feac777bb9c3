"""What the OpenSearch retrievers send over the wire.

No OpenSearch server can be obtained on these machines, so this is the documented exception to
"no mocks": a real `opensearchpy.OpenSearch` client (real transport, serializer, bulk helpers)
whose connection class records each HTTP request and answers with canned, valid OpenSearch
responses. What is asserted is the request: mappings, search bodies, bulk lines, alias actions,
retries. Behaviour against a real cluster is tests/test_opensearch_integration.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from opensearchpy import Connection
from opensearchpy.exceptions import ConnectionTimeout

from retrievers.base import Document
from retrievers.opensearch_common import (
    MAX_QUERY_CHARS,
    BulkIndexingError,
    OpenSearchSettings,
    make_client,
)
from retrievers.opensearch_dense import OpenSearchDenseRetriever, faiss_ip_from_score
from retrievers.opensearch_lexical import OpenSearchLexicalRetriever, OpenSearchQueryError

JSON = {"content-type": "application/json"}
INDEX_RE = re.compile(r"^ltrr-tracks-(lexical|dense)-\d{20}$")


@dataclass
class Request:
    method: str
    path: str
    params: dict[str, Any]
    body: str | None

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    def ndjson(self) -> list[Any]:
        return [json.loads(line) for line in (self.body or "").splitlines() if line]


Responder = Callable[[Request], tuple[int, Any] | None]


@dataclass
class Cluster:
    """Canned answers. `script` holds one-shot responders tried first (in order, each used once
    when it returns non-None); otherwise `default` answers like an empty, healthy cluster."""

    aliases: dict[str, list[str]] = field(default_factory=dict)  # alias -> concrete indices
    requests: list[Request] = field(default_factory=list)
    script: list[Responder] = field(default_factory=list)

    def handle(self, req: Request) -> tuple[int, Any]:
        self.requests.append(req)
        for i, responder in enumerate(self.script):
            answer = responder(req)
            if answer is not None:
                del self.script[i]
                return answer
        return self.default(req)

    def default(self, req: Request) -> tuple[int, Any]:
        m, p = req.method, req.path
        if m == "HEAD" and p.startswith("/_alias/"):
            return (200 if p.split("/")[-1] in self.aliases else 404), None
        if m == "HEAD":  # indices.exists: an alias name "exists" when the alias does
            return (200 if p.strip("/") in self.aliases else 404), None
        if m == "GET" and p.startswith("/_alias/"):
            name = p.split("/")[-1]
            if name not in self.aliases:
                return 404, {"error": f"alias [{name}] missing", "status": 404}
            return 200, {i: {"aliases": {name: {}}} for i in self.aliases[name]}
        if m == "PUT" and p.count("/") == 1:
            return 200, {"acknowledged": True, "shards_acknowledged": True, "index": p[1:]}
        if m == "POST" and p == "/_bulk":
            return 200, bulk_ok(req)
        if m == "PUT" and p.endswith("/_settings"):
            return 200, {"acknowledged": True}
        if m == "POST" and p.endswith("/_refresh"):
            return 200, {"_shards": {"total": 1, "successful": 1, "failed": 0}}
        if m == "POST" and p == "/_aliases":
            return 200, {"acknowledged": True}
        if m == "DELETE":
            return 200, {"acknowledged": True}
        if m in ("GET", "POST") and p.endswith("/_search"):
            return 200, search_response(["t1", "t2"], [12.5, 3.0])
        if m in ("GET", "POST") and p.endswith("/_msearch"):
            n = len(req.ndjson()) // 2
            return 200, {"took": 1, "responses": [search_response([f"m{i}"], [1.5]) for i in range(n)]}
        raise AssertionError(f"unexpected request {m} {p}")


def search_response(ids: list[str], scores: list[float]) -> dict[str, Any]:
    return {"took": 1, "timed_out": False, "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0},
            "hits": {"max_score": max(scores, default=None),
                     "hits": [{"_index": "x", "_id": i, "_score": s} for i, s in zip(ids, scores, strict=True)]}}


def bulk_items(req: Request) -> list[tuple[str, dict[str, Any]]]:
    lines = req.ndjson()
    return [(next(iter(lines[j])), lines[j + 1]) for j in range(0, len(lines), 2)]


def bulk_ok(req: Request, *, status_for: Callable[[str], int] = lambda _id: 201) -> dict[str, Any]:
    lines = req.ndjson()
    items = []
    errors = False
    for j in range(0, len(lines), 2):
        op, meta = next(iter(lines[j].items()))
        status = status_for(meta["_id"])
        item: dict[str, Any] = {"_index": meta["_index"], "_id": meta["_id"], "status": status}
        if status >= 300:
            errors = True
            item["error"] = ({"type": "es_rejected_execution_exception", "reason": "rejected: queue full"}
                             if status == 429 else
                             {"type": "mapper_parsing_exception",
                              "reason": f"failed to parse field [year] of {meta['_id']}"})
        else:
            item["result"] = "created"
        items.append({op: item})
    return {"took": 3, "errors": errors, "items": items}


@pytest.fixture()
def cluster() -> Cluster:
    return Cluster()


def client_for(cluster: Cluster, settings: OpenSearchSettings):
    class RecordingConnection(Connection):
        def perform_request(self, method, url, params=None, body=None, timeout=None, ignore=(), headers=None):
            text = body.decode("utf-8") if isinstance(body, bytes) else body
            req = Request(method, url.split("?")[0], dict(params or {}), text)
            status, payload = cluster.handle(req)
            if isinstance(payload, Exception):
                raise payload
            raw = json.dumps(payload) if payload is not None else ""
            if not (200 <= status < 300) and status not in ignore:
                self._raise_error(status, raw, "application/json")
            return status, JSON, raw

    return make_client(settings, connection_class=RecordingConnection)


SETTINGS = OpenSearchSettings(url="http://search.test:9200", replicas=1, bulk_chunk_size=2, transport_retries=0)


def docs(n: int = 3) -> list[Document]:
    base = [
        Document("t1", {"title": "Love Story", "artist": "Taylor Swift", "album": "Fearless",
                        "genres": "pop|country", "subgenres": "post-teen pop"}, popularity=0.8, extra={"year": 2008}),
        Document("t2", {"title": "Déjà Vu", "artist": "Beyoncé", "album": "B'Day", "genres": "r&b",
                        "subgenres": "urban contemporary"}, popularity=0.6, extra={"year": 2006}),
        Document("t3", {"title": "Gasolina", "artist": "Daddy Yankee", "album": "Barrio Fino", "genres": "latin",
                        "subgenres": "reggaeton"}, popularity=0.9, extra={"year": None}),
    ]
    extra = [Document(f"x{i}", {"title": f"Song {i}", "artist": "A", "album": "", "genres": "", "subgenres": ""})
             for i in range(max(0, n - len(base)))]
    return (base + extra)[:n]


def lexical(cluster: Cluster, settings: OpenSearchSettings = SETTINGS, **kw: Any) -> OpenSearchLexicalRetriever:
    return OpenSearchLexicalRetriever(settings, client=client_for(cluster, settings), **kw)


def fake_encode(texts: list[str]) -> np.ndarray:
    """Deterministic bag-of-words hashing into 384 dims: stands in for the sentence encoder,
    which is not what these tests are about."""
    out = np.zeros((len(texts), 384), dtype=np.float32)
    for row, text in enumerate(texts):
        for word in text.lower().split():
            out[row, sum(map(ord, word)) % 384] += 1.0
    return out


def dense(cluster: Cluster, settings: OpenSearchSettings = SETTINGS) -> OpenSearchDenseRetriever:
    return OpenSearchDenseRetriever(settings, encode=fake_encode, client=client_for(cluster, settings),
                                    model_name="fake-hash")


def sent(cluster: Cluster, method: str, pattern: str) -> list[Request]:
    return [r for r in cluster.requests if r.method == method and re.fullmatch(pattern, r.path)]


EXPECTED_ANALYSIS = {
    "char_filter": {"ltrr_punct": {"type": "mapping", "mappings": ["'=>", "’=>", "&=> and "]}},
    "filter": {"ltrr_folding_keep": {"type": "asciifolding", "preserve_original": True}},
    "analyzer": {
        "ltrr_index": {"type": "custom", "char_filter": ["ltrr_punct"], "tokenizer": "standard",
                       "filter": ["lowercase", "ltrr_folding_keep"]},
        "ltrr_search": {"type": "custom", "char_filter": ["ltrr_punct"], "tokenizer": "standard",
                        "filter": ["lowercase", "asciifolding"]},
    },
}
TEXT = {"type": "text", "analyzer": "ltrr_index", "search_analyzer": "ltrr_search"}
TAGS = {**TEXT, "fields": {"raw": {"type": "keyword", "ignore_above": 256}}}


# --- index creation, bulk lines, alias swap ------------------------------------------------------

def test_lexical_mapping_body(cluster: Cluster) -> None:
    lexical(cluster).build(docs())
    [create] = sent(cluster, "PUT", r"/ltrr-tracks-lexical-\d{20}")
    assert INDEX_RE.match(create.path[1:])
    assert create.json() == {
        "settings": {"index": {"number_of_shards": 1, "number_of_replicas": 0, "refresh_interval": "-1"},
                     "analysis": EXPECTED_ANALYSIS},
        "mappings": {"dynamic": "strict", "properties": {
            "track_id": {"type": "keyword"}, "title": TEXT, "artist": TEXT, "album": TEXT,
            "genres": TAGS, "subgenres": TAGS, "popularity": {"type": "float"}, "year": {"type": "short"}}},
    }


def test_dense_mapping_body(cluster: Cluster) -> None:
    dense(cluster).build(docs())
    [create] = sent(cluster, "PUT", r"/ltrr-tracks-dense-\d{20}")
    assert create.json() == {
        "settings": {"index": {"number_of_shards": 1, "number_of_replicas": 0, "refresh_interval": "-1",
                               "knn": True, "knn.algo_param.ef_search": 100}},
        "mappings": {"dynamic": "strict", "_source": {"excludes": ["embedding"]}, "properties": {
            "track_id": {"type": "keyword"}, "popularity": {"type": "float"},
            "embedding": {"type": "knn_vector", "dimension": 384, "method": {
                "name": "hnsw", "space_type": "innerproduct", "engine": "faiss",
                "parameters": {"m": 16, "ef_construction": 128, "ef_search": 100}}}}},
    }


def test_hnsw_and_layout_settings_flow_into_the_mapping(cluster: Cluster) -> None:
    s = OpenSearchSettings(shards=3, replicas=2, hnsw_m=32, hnsw_ef_construction=256, hnsw_ef_search=64,
                           index_prefix="music", dimension=384, transport_retries=0)
    dense(cluster, s).build(docs())
    [create] = sent(cluster, "PUT", r"/music-dense-\d{20}")
    body = create.json()
    assert body["settings"]["index"]["number_of_shards"] == 3
    assert body["settings"]["index"]["knn.algo_param.ef_search"] == 64
    assert body["mappings"]["properties"]["embedding"]["method"]["parameters"] == {
        "m": 32, "ef_construction": 256, "ef_search": 64}
    [restore] = sent(cluster, "PUT", r"/music-dense-\d{20}/_settings")
    assert restore.json() == {"index": {"number_of_shards": 3, "number_of_replicas": 2, "refresh_interval": "1s"}}


def test_bulk_action_lines(cluster: Cluster) -> None:
    lexical(cluster).build(docs())
    bulks = sent(cluster, "POST", "/_bulk")
    assert [len(b.ndjson()) for b in bulks] == [4, 2]  # chunk size 2: two docs, then one
    index = sent(cluster, "PUT", r"/ltrr-tracks-lexical-\d{20}")[0].path[1:]
    assert bulks[0].ndjson() + bulks[1].ndjson() == [
        {"index": {"_id": "t1", "_index": index}},
        {"track_id": "t1", "popularity": 0.8, "title": "Love Story", "artist": "Taylor Swift", "album": "Fearless",
         "genres": ["pop", "country"], "subgenres": ["post-teen pop"], "year": 2008},
        {"index": {"_id": "t2", "_index": index}},
        {"track_id": "t2", "popularity": 0.6, "title": "Déjà Vu", "artist": "Beyoncé", "album": "B'Day",
         "genres": ["r&b"], "subgenres": ["urban contemporary"], "year": 2006},
        {"index": {"_id": "t3", "_index": index}},
        {"track_id": "t3", "popularity": 0.9, "title": "Gasolina", "artist": "Daddy Yankee", "album": "Barrio Fino",
         "genres": ["latin"], "subgenres": ["reggaeton"]},
    ]


def test_dense_bulk_lines_carry_normalised_vectors(cluster: Cluster) -> None:
    dense(cluster).build(docs())
    lines = [line for b in sent(cluster, "POST", "/_bulk") for line in b.ndjson()]
    sources = lines[1::2]
    assert [s["track_id"] for s in sources] == ["t1", "t2", "t3"]
    for src in sources:
        assert set(src) == {"track_id", "popularity", "embedding"}
        vec = np.array(src["embedding"])
        assert vec.shape == (384,)
        assert abs(np.linalg.norm(vec) - 1.0) < 1e-4  # inner product == cosine


def test_rebuild_order_and_atomic_alias_swap(cluster: Cluster) -> None:
    cluster.aliases["ltrr-tracks-lexical"] = ["ltrr-tracks-lexical-20240101000000000000"]
    r = lexical(cluster)
    r.build(docs())
    new = r.index_name
    assert new and INDEX_RE.match(new)
    steps = [(q.method, q.path) for q in cluster.requests]
    assert steps == [
        ("HEAD", "/ltrr-tracks-lexical"), ("HEAD", "/_alias/ltrr-tracks-lexical"),
        ("PUT", f"/{new}"), ("POST", "/_bulk"), ("POST", "/_bulk"),
        ("PUT", f"/{new}/_settings"), ("POST", f"/{new}/_refresh"),
        ("GET", "/_alias/ltrr-tracks-lexical"), ("POST", "/_aliases"),
        ("DELETE", "/ltrr-tracks-lexical-20240101000000000000"),
    ]
    [swap] = sent(cluster, "POST", "/_aliases")
    assert swap.json() == {"actions": [
        {"add": {"index": new, "alias": "ltrr-tracks-lexical"}},
        {"remove": {"index": "ltrr-tracks-lexical-20240101000000000000", "alias": "ltrr-tracks-lexical"}},
    ]}


def test_first_build_adds_alias_without_removals(cluster: Cluster) -> None:
    r = lexical(cluster)
    r.build(docs(1))
    [swap] = sent(cluster, "POST", "/_aliases")
    assert swap.json() == {"actions": [{"add": {"index": r.index_name, "alias": "ltrr-tracks-lexical"}}]}
    assert not sent(cluster, "DELETE", ".*")


def test_concrete_index_on_alias_name_is_refused_before_loading(cluster: Cluster) -> None:
    cluster.script.append(lambda q: (200, None) if (q.method, q.path) == ("HEAD", "/ltrr-tracks-lexical") else None)
    with pytest.raises(RuntimeError, match="concrete index"):
        lexical(cluster).build(docs())
    assert not sent(cluster, "PUT", ".*") and not sent(cluster, "POST", "/_bulk")


# --- retries and error summary -------------------------------------------------------------------

def test_item_level_429_is_retried_with_backoff(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    sleeps: list[float] = []
    monkeypatch.setattr("retrievers.opensearch_common.time.sleep", sleeps.append)
    cluster.script.append(lambda q: (200, bulk_ok(q, status_for=lambda i: 429 if i == "t2" else 201))
                          if q.path == "/_bulk" else None)
    cluster.script.append(lambda q: (200, bulk_ok(q, status_for=lambda i: 429)) if q.path == "/_bulk"
                          and bulk_items(q)[0][1].get("track_id") == "t2" else None)
    r = lexical(cluster)
    r.build(docs())
    bulk_ids = [[meta[op]["_id"] for meta in b.ndjson()[0::2] for op in meta] for b in sent(cluster, "POST", "/_bulk")]
    # t2 rejected twice (back-pressure), then accepted; only t2 is re-sent; then the next chunk.
    assert bulk_ids == [["t1", "t2"], ["t2"], ["t2"], ["t3"]]
    assert sleeps == [1.0, 2.0]
    assert sent(cluster, "POST", "/_aliases")


def test_whole_request_429_and_timeout_are_retried(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    sleeps: list[float] = []
    monkeypatch.setattr("retrievers.opensearch_common.time.sleep", sleeps.append)
    cluster.script.append(lambda q: (429, {"error": {"type": "es_rejected_execution_exception", "reason": "busy"},
                                           "status": 429}) if q.path == "/_bulk" else None)
    cluster.script.append(lambda q: (0, ConnectionTimeout("TIMEOUT", "read timed out", None))
                          if q.path == "/_bulk" else None)
    lexical(cluster).build(docs(2))
    assert len(sent(cluster, "POST", "/_bulk")) == 3
    assert sleeps == [1.0, 2.0]
    assert sent(cluster, "POST", "/_aliases")


def test_retries_stop_at_the_limit_and_report(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("retrievers.opensearch_common.time.sleep", lambda s: None)
    settings = OpenSearchSettings(bulk_max_retries=2, bulk_chunk_size=10, transport_retries=0)
    for _ in range(3):
        cluster.script.append(lambda q: (200, bulk_ok(q, status_for=lambda i: 429)) if q.path == "/_bulk" else None)
    with pytest.raises(BulkIndexingError) as err:
        lexical(cluster, settings).build(docs(1))
    assert len(sent(cluster, "POST", "/_bulk")) == 3
    assert err.value.summary.failed == 1 and err.value.summary.retried == 2
    assert "[429] es_rejected_execution_exception: rejected: queue full" in str(err.value)


def test_document_errors_abort_before_swap_with_summary(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("retrievers.opensearch_common.time.sleep", lambda s: None)
    cluster.aliases["ltrr-tracks-lexical"] = ["ltrr-tracks-lexical-20240101000000000000"]
    settings = OpenSearchSettings(bulk_chunk_size=5, transport_retries=0)
    for _ in range(3):
        cluster.script.append(lambda q: (200, bulk_ok(q, status_for=lambda i: 400)) if q.path == "/_bulk" else None)
    r = lexical(cluster, settings)
    with pytest.raises(BulkIndexingError) as err:
        r.build(docs(12))
    summary = err.value.summary
    assert (summary.indexed, summary.failed, summary.retried) == (0, 12, 0)  # 400 is not retryable
    assert len(summary.errors) == 10
    assert summary.errors[0] == "t1: [400] mapper_parsing_exception: failed to parse field [year] of t1"
    assert str(err.value).endswith("(+2 more)")
    # The old index keeps serving: no alias change; the partial new index is removed.
    assert not sent(cluster, "POST", "/_aliases")
    [delete] = sent(cluster, "DELETE", ".*")
    assert INDEX_RE.match(delete.path[1:]) and delete.path != "/ltrr-tracks-lexical-20240101000000000000"


# --- search bodies -------------------------------------------------------------------------------

FIELDS = ["title^3", "artist^2.5", "album^1", "genres^0.8", "subgenres^0.8"]


def lexical_body(text: str, k: int, *, factor: float = 10.0, boost_mode: str = "sum") -> dict[str, Any]:
    return {
        "size": k, "_source": False, "track_total_hits": False,
        "query": {"function_score": {
            "query": {"bool": {"should": [
                {"multi_match": {"query": text, "type": "best_fields", "fields": FIELDS, "operator": "or",
                                 "tie_breaker": 0.3}},
                {"multi_match": {"query": text, "type": "best_fields", "fields": FIELDS, "operator": "or",
                                 "tie_breaker": 0.3, "fuzziness": "AUTO", "prefix_length": 1, "max_expansions": 50,
                                 "boost": 0.3}},
            ], "minimum_should_match": 1}},
            "functions": [{"field_value_factor": {"field": "popularity", "modifier": "log1p", "factor": factor,
                                                  "missing": 0}}],
            "score_mode": "sum", "boost_mode": boost_mode,
        }},
    }


def test_lexical_search_body_and_candidates(cluster: Cluster) -> None:
    r = lexical(cluster)
    got = r.retrieve("  tayler swift love story ", 20)
    [req] = cluster.requests
    assert (req.method, req.path) == ("POST", "/ltrr-tracks-lexical/_search")
    assert req.json() == lexical_body("tayler swift love story", 20)
    assert [(c.track_id, c.score, c.rank) for c in got] == [("t1", 12.5, 1), ("t2", 3.0, 2)]


def test_popularity_prior_is_configurable(cluster: Cluster) -> None:
    r = lexical(cluster, popularity_factor=4.0, boost_mode="multiply")
    assert r.search_body("gym rap", 5) == lexical_body("gym rap", 5, factor=4.0, boost_mode="multiply")
    with pytest.raises(ValueError):
        lexical(cluster, boost_mode="replace")


HOSTILE = [
    '"}}, "script": {"source": "System.exit(0)"}, "x": {"',
    "title:* OR artist:/.*/ AND _exists_:year",
    "\\u0022; DROP INDEX ltrr; --",
    "</script><script>alert(1)</script>",
    "a\x00b\nc\td\u2028e",
    "{{#toJson}}params{{/toJson}}",
    "😀 café \\ / \" '",
]


@pytest.mark.parametrize("hostile", HOSTILE)
def test_hostile_text_is_only_a_json_string_value(cluster: Cluster, hostile: str) -> None:
    r = lexical(cluster)
    r.retrieve(hostile, 10)
    [req] = cluster.requests
    body = req.json()
    text = hostile.strip()
    assert body == lexical_body(text, 10)  # structure unchanged: nothing was injected

    def strings(node: Any, path: str = "") -> list[tuple[str, str]]:
        if isinstance(node, dict):
            return [s for k, v in node.items() for s in strings(v, f"{path}.{k}")]
        if isinstance(node, list):
            return [s for i, v in enumerate(node) for s in strings(v, f"{path}[{i}]")]
        return [(path, node)] if isinstance(node, str) else []

    carrying = [p for p, s in strings(body) if text in s]
    assert carrying == [".query.function_score.query.bool.should[0].multi_match.query",
                        ".query.function_score.query.bool.should[1].multi_match.query"]
    assert "query_string" not in req.body and "simple_query_string" not in req.body


def test_long_input_is_capped(cluster: Cluster) -> None:
    lexical(cluster).retrieve("x" * 5000, 10)
    body = cluster.requests[0].json()
    should = body["query"]["function_score"]["query"]["bool"]["should"]
    assert [c["multi_match"]["query"] for c in should] == ["x" * MAX_QUERY_CHARS] * 2


def test_empty_query_sends_nothing(cluster: Cluster) -> None:
    r = lexical(cluster)
    assert r.retrieve("   ", 10) == [] and r.retrieve("abc", 0) == []
    assert dense(cluster).retrieve("", 10) == []
    assert cluster.requests == []


def test_lexical_batch_uses_one_msearch(cluster: Cluster) -> None:
    r = lexical(cluster)
    got = r.retrieve_batch(["latin summer", "", "gym rap"], 7)
    [req] = cluster.requests
    assert (req.method, req.path) == ("POST", "/_msearch")
    assert req.ndjson() == [{"index": "ltrr-tracks-lexical"}, lexical_body("latin summer", 7),
                            {"index": "ltrr-tracks-lexical"}, lexical_body("gym rap", 7)]
    assert [[c.track_id for c in cands] for cands in got] == [["m0"], [], ["m1"]]


def test_msearch_item_error_raises(cluster: Cluster) -> None:
    cluster.script.append(lambda q: (200, {"responses": [
        search_response(["a"], [1.0]),
        {"error": {"type": "search_phase_execution_exception", "reason": "all shards failed"}, "status": 400}]})
        if q.path == "/_msearch" else None)
    with pytest.raises(OpenSearchQueryError, match="all shards failed"):
        lexical(cluster).retrieve_batch(["a", "b"], 3)


def test_knn_body(cluster: Cluster) -> None:
    r = dense(cluster)
    cluster.script.append(lambda q: (200, search_response(["t9", "t8", "t7"], [1.75, 1.0, 0.5]))
                          if q.path.endswith("/_search") else None)
    got = r.retrieve("sad love songs", 15)
    [req] = cluster.requests
    assert (req.method, req.path) == ("POST", "/ltrr-tracks-dense/_search")
    expected = fake_encode(["sad love songs"])[0]
    expected = expected / np.linalg.norm(expected)
    assert req.json() == {"size": 15, "_source": False, "track_total_hits": False,
                          "query": {"knn": {"embedding": {"vector": [round(float(x), 6) for x in expected],
                                                          "k": 15}}}}
    # Scores are translated back to raw inner products (the embedded faiss scale).
    assert [(c.track_id, round(c.score, 6), c.rank) for c in got] == [("t9", 0.75, 1), ("t8", 0.0, 2),
                                                                       ("t7", -1.0, 3)]


def test_dense_batch_encodes_once_and_uses_msearch(cluster: Cluster) -> None:
    calls: list[list[str]] = []

    def encode(texts: list[str]) -> np.ndarray:
        calls.append(texts)
        return fake_encode(texts)

    s = SETTINGS
    r = OpenSearchDenseRetriever(s, encode=encode, client=client_for(cluster, s))
    got = r.retrieve_batch(["gym rap", " ", "latin summer"], 4)
    assert calls == [["gym rap", "latin summer"]]
    [req] = cluster.requests
    lines = req.ndjson()
    assert req.path == "/_msearch" and lines[0] == lines[2] == {"index": "ltrr-tracks-dense"}
    assert [line["query"]["knn"]["embedding"]["k"] for line in lines[1::2]] == [4, 4]
    assert [len(c) for c in got] == [1, 0, 1]


def test_encoder_shape_is_checked(cluster: Cluster) -> None:
    client = client_for(cluster, SETTINGS)
    r = OpenSearchDenseRetriever(SETTINGS, encode=lambda t: np.ones((len(t), 128)), client=client)
    with pytest.raises(ValueError, match="expected"):
        r.retrieve("x", 3)
    with pytest.raises(RuntimeError, match="encode"):
        OpenSearchDenseRetriever(SETTINGS, client=client_for(cluster, SETTINGS)).build(docs())
    assert cluster.requests == []


def test_faiss_score_translation_roundtrip() -> None:
    for ip in (-0.9, -0.2, 0.0, 0.3, 0.99):
        score = 1 + ip if ip >= 0 else 1 / (1 - ip)
        assert faiss_ip_from_score(score) == pytest.approx(ip)


# --- settings and persistence --------------------------------------------------------------------

def test_save_load_never_writes_the_password(tmp_path, cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    s = OpenSearchSettings(url="https://os.internal:9200", username="ltrr", password="s3cret-pw", replicas=2,
                           transport_retries=0)
    r = OpenSearchLexicalRetriever(s, client=client_for(cluster, s), popularity_factor=6.0)
    r.build(docs(1))
    r.save(tmp_path)
    raw = (tmp_path / "opensearch_lexical.json").read_text()
    assert "s3cret-pw" not in raw and "password" not in raw
    monkeypatch.setenv("OPENSEARCH_PASSWORD", "from-env")
    loaded = OpenSearchLexicalRetriever.load(tmp_path)
    assert loaded.settings == OpenSearchSettings(**{**s.public_dict(), "password": "from-env"})
    assert loaded.popularity_factor == 6.0 and loaded.index_name == r.index_name

    d = dense(cluster)
    d.save(tmp_path)
    with pytest.raises(ValueError, match="fake-hash"):
        OpenSearchDenseRetriever.load(tmp_path, encode=fake_encode, model_name="other-model")
    assert OpenSearchDenseRetriever.load(tmp_path, encode=fake_encode).model_name == "fake-hash"


def test_settings_from_env() -> None:
    s = OpenSearchSettings.from_env({"OPENSEARCH_URL": "https://os:9200", "OPENSEARCH_USERNAME": "admin",
                                     "OPENSEARCH_PASSWORD": "pw", "OPENSEARCH_VERIFY_CERTS": "false",
                                     "OPENSEARCH_REPLICAS": "1", "OPENSEARCH_INDEX_PREFIX": "prod-tracks"},
                                    shards=4)
    assert (s.url, s.username, s.password, s.verify_certs, s.replicas, s.shards, s.alias("dense")) == (
        "https://os:9200", "admin", "pw", False, 1, 4, "prod-tracks-dense")
    assert "pw" not in repr(s)
    with pytest.raises(ValueError):
        OpenSearchSettings.from_env({"OPENSEARCH_VERIFY_CERTS": "maybe"})
