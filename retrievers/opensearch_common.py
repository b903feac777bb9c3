"""Shared plumbing for the OpenSearch (scale-out) retrievers: connection settings, the client
factory, index bodies, resilient bulk indexing and alias-swapped rebuilds.

A library module: it takes plain settings or a ready `OpenSearch` client and never reads the
service configuration. The only environment variables it looks at are the OPENSEARCH_* ones in
`OpenSearchSettings.from_env`, so a password never has to be written to disk.

Index lifecycle: every rebuild writes a fresh concrete index `<alias>-<utc timestamp>`, bulk
loads it with refresh off and no replicas (fast, and no half-built index is ever searched),
restores refresh/replicas, then moves the alias in ONE `_aliases` call (readers see either the
old or the new index, never none) and only then deletes the previous index. A failed rebuild
deletes its own partial index and leaves the alias, and therefore serving, untouched.

Why one module of this size: the lexical and the k-NN retriever share every piece here (settings,
client, retries, the rebuild protocol), and the rebuild's steps only make sense read together.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from opensearchpy import OpenSearch
from opensearchpy.exceptions import NotFoundError, TransportError
from opensearchpy.helpers import streaming_bulk

log = logging.getLogger(__name__)

# User text is capped before it reaches a request: a long paste cannot blow up the fuzzy
# expansion work on the cluster, and no search needs more than this.
MAX_QUERY_CHARS = 512
# Bulk item statuses worth retrying: back-pressure (429), overloaded/unavailable nodes, and the
# client-side pseudo statuses opensearch-py uses for timeouts and dropped connections.
RETRYABLE_STATUSES: frozenset[int | str] = frozenset({429, 502, 503, 504, "TIMEOUT", "N/A"})
SETTINGS_FORMAT = 1
# Fields the settings JSON never contains: credentials come from the environment on load.
_SECRET_FIELDS = ("password",)


@dataclass(frozen=True)
class OpenSearchSettings:
    """Everything needed to reach a cluster and shape the indexes. Defaults suit the
    single-node docker-compose demo; production raises replicas and shards (docs/capacity.md)."""

    url: str = "http://localhost:9200"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    verify_certs: bool = True
    ca_certs: str | None = None
    index_prefix: str = "ltrr-tracks"  # aliases are <prefix>-lexical and <prefix>-dense
    timeout: float = 10.0  # per search request, seconds
    bulk_timeout: float = 120.0  # per bulk request: a 500-doc chunk with vectors can take a while
    transport_retries: int = 2  # immediate retries by the client on 502/503/504 and timeouts
    bulk_chunk_size: int = 500
    bulk_max_retries: int = 5  # per chunk, with exponential backoff, on RETRYABLE_STATUSES
    bulk_initial_backoff: float = 1.0
    bulk_max_backoff: float = 30.0
    shards: int = 1
    replicas: int = 0  # 0 on a single node (a replica can never be allocated there)
    dimension: int = 384  # all-MiniLM-L6-v2
    hnsw_m: int = 16
    hnsw_ef_construction: int = 128
    hnsw_ef_search: int = 100

    def alias(self, kind: str) -> str:
        return f"{self.index_prefix}-{kind}"

    def public_dict(self) -> dict[str, Any]:
        """The settings without secrets: what `save()` writes."""
        data = dataclasses.asdict(self)
        for name in _SECRET_FIELDS:
            data.pop(name, None)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, password: str | None = None) -> OpenSearchSettings:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown OpenSearch settings: {sorted(unknown)}")
        return cls(**{**data, "password": password if password is not None else data.get("password")})

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> OpenSearchSettings:
        """OPENSEARCH_URL / _USERNAME / _PASSWORD / _VERIFY_CERTS / _CA_CERTS / _INDEX_PREFIX /
        _SHARDS / _REPLICAS; keyword overrides win over the environment."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        mapping: dict[str, tuple[str, Callable[[str], Any]]] = {
            "OPENSEARCH_URL": ("url", str),
            "OPENSEARCH_USERNAME": ("username", str),
            "OPENSEARCH_PASSWORD": ("password", str),
            "OPENSEARCH_VERIFY_CERTS": ("verify_certs", _parse_bool),
            "OPENSEARCH_CA_CERTS": ("ca_certs", str),
            "OPENSEARCH_INDEX_PREFIX": ("index_prefix", str),
            "OPENSEARCH_SHARDS": ("shards", int),
            "OPENSEARCH_REPLICAS": ("replicas", int),
        }
        for var, (name, parse) in mapping.items():
            raw = env.get(var)
            if raw not in (None, ""):
                values[name] = parse(raw)
        values.update(overrides)
        return cls(**values)


def _parse_bool(raw: str) -> bool:
    low = raw.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {raw!r}")


def make_client(settings: OpenSearchSettings, **client_kwargs: Any) -> OpenSearch:
    """A client for `settings.url`. Extra kwargs go to `OpenSearch(...)` (tests pass a
    recording `connection_class`; deployments may pass e.g. `pool_maxsize`)."""
    kwargs: dict[str, Any] = {
        "hosts": [settings.url],
        "verify_certs": settings.verify_certs,
        "ssl_show_warn": settings.verify_certs,
        "timeout": settings.timeout,
        "max_retries": settings.transport_retries,
        "retry_on_timeout": True,
        "http_compress": True,  # bulk bodies with vectors compress ~3x
    }
    if settings.username:
        kwargs["http_auth"] = (settings.username, settings.password or "")
    if settings.ca_certs:
        kwargs["ca_certs"] = settings.ca_certs
    kwargs.update(client_kwargs)
    return OpenSearch(**kwargs)


# --- index bodies ------------------------------------------------------------------------------

# Mirrors retrievers/text.normalize on the cluster side: apostrophes vanish ("don't" == "dont"),
# "&" reads as "and", and ASCII folding + lowercase make "Beyoncé" match "beyonce".
_CHAR_FILTERS = {
    "ltrr_punct": {"type": "mapping", "mappings": ["'=>", "’=>", "&=> and "]},
}
ANALYSIS: dict[str, Any] = {
    "char_filter": _CHAR_FILTERS,
    "filter": {
        # preserve_original keeps "beyoncé" next to "beyonce" in the index, so an accented query
        # still gets the exact-form term statistics.
        "ltrr_folding_keep": {"type": "asciifolding", "preserve_original": True},
    },
    "analyzer": {
        "ltrr_index": {
            "type": "custom",
            "char_filter": ["ltrr_punct"],
            "tokenizer": "standard",
            "filter": ["lowercase", "ltrr_folding_keep"],
        },
        "ltrr_search": {
            "type": "custom",
            "char_filter": ["ltrr_punct"],
            "tokenizer": "standard",
            "filter": ["lowercase", "asciifolding"],
        },
    },
}
TEXT_FIELDS = ("title", "artist", "album", "genres", "subgenres")


def _text_field(*, keyword: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"type": "text", "analyzer": "ltrr_index", "search_analyzer": "ltrr_search"}
    if keyword:
        # Exact tag values for filters and aggregations ("genre = latin").
        body["fields"] = {"raw": {"type": "keyword", "ignore_above": 256}}
    return body


def _index_settings(settings: OpenSearchSettings, *, loading: bool) -> dict[str, Any]:
    return {
        "number_of_shards": settings.shards,
        # While bulk loading: no replicas and no refresh; restored by finish_loading().
        "number_of_replicas": 0 if loading else settings.replicas,
        "refresh_interval": "-1" if loading else "1s",
    }


def lexical_index_body(settings: OpenSearchSettings) -> dict[str, Any]:
    return {
        "settings": {"index": _index_settings(settings, loading=True), "analysis": ANALYSIS},
        "mappings": {
            "dynamic": "strict",  # a typo'd field fails the bulk item instead of silently mapping
            "properties": {
                "track_id": {"type": "keyword"},
                "title": _text_field(),
                "artist": _text_field(),
                "album": _text_field(),
                "genres": _text_field(keyword=True),
                "subgenres": _text_field(keyword=True),
                "popularity": {"type": "float"},
                "year": {"type": "short"},
            },
        },
    }


def dense_index_body(settings: OpenSearchSettings) -> dict[str, Any]:
    """faiss + innerproduct: valid on every OpenSearch 2.x (and 3.x). faiss HNSW does not accept
    cosinesimil before 2.19 and nmslib is deprecated, while lucene caps at 1024 dims and is
    slower to index; the retriever L2-normalises vectors, so inner product IS cosine here."""
    return {
        "settings": {
            "index": {
                **_index_settings(settings, loading=True),
                "knn": True,
                # Read by nmslib and by newer faiss builds; the mapping parameter below covers
                # faiss on older 2.x, so ef_search is honoured either way.
                "knn.algo_param.ef_search": settings.hnsw_ef_search,
            },
        },
        "mappings": {
            "dynamic": "strict",
            # The vector as JSON is ~4 KB per track, more than the graph and the raw floats
            # together; nothing reads it back (rebuilds start from the catalog), so keep it out.
            "_source": {"excludes": ["embedding"]},
            "properties": {
                "track_id": {"type": "keyword"},
                "popularity": {"type": "float"},
                "embedding": {
                    "type": "knn_vector",
                    "dimension": settings.dimension,
                    "method": {
                        "name": "hnsw",
                        "space_type": "innerproduct",
                        "engine": "faiss",
                        "parameters": {
                            "m": settings.hnsw_m,
                            "ef_construction": settings.hnsw_ef_construction,
                            "ef_search": settings.hnsw_ef_search,
                        },
                    },
                },
            },
        },
    }


# --- bulk indexing -----------------------------------------------------------------------------

@dataclass
class BulkSummary:
    """What a bulk load did: counts plus the first few failure reasons (not all of them, so a
    million broken documents do not become a million log lines)."""

    indexed: int = 0
    failed: int = 0
    retried: int = 0  # item-attempts that were re-sent after a retryable failure
    errors: list[str] = field(default_factory=list)
    max_errors: int = 10

    def add_error(self, doc_id: str, status: object, reason: str) -> None:
        self.failed += 1
        if len(self.errors) < self.max_errors:
            self.errors.append(f"{doc_id}: [{status}] {reason}")

    def describe(self) -> str:
        head = f"{self.indexed} indexed, {self.failed} failed, {self.retried} retried"
        if not self.errors:
            return head
        more = f" (+{self.failed - len(self.errors)} more)" if self.failed > len(self.errors) else ""
        return head + "; first errors: " + "; ".join(self.errors) + more


class BulkIndexingError(RuntimeError):
    def __init__(self, summary: BulkSummary):
        super().__init__(f"bulk indexing failed: {summary.describe()}")
        self.summary = summary


def _reason(info: Mapping[str, Any]) -> str:
    err = info.get("error")
    if isinstance(err, Mapping):
        return f"{err.get('type', 'error')}: {err.get('reason', '')}".strip()
    return str(err)


def _chunks(items: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    chunk: list[dict[str, Any]] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def bulk_index(
    client: OpenSearch,
    actions: Iterable[dict[str, Any]],
    settings: OpenSearchSettings,
    *,
    total: int | None = None,
    progress: bool = False,
    desc: str = "index",
    sleep: Callable[[float], None] | None = None,
) -> BulkSummary:
    """Sends `actions` (streaming_bulk action dicts with `_id`) in chunks. Items that fail with a
    retryable status (429 back-pressure, 5xx, timeouts, dropped connections, whether per item or
    for the whole request) are re-sent after an exponential backoff; other failures are counted
    with their reasons. Never raises for document errors: the caller decides from the summary."""
    from tqdm import tqdm

    pause = sleep or time.sleep  # looked up per call so tests and callers can swap it
    summary = BulkSummary()
    bar = tqdm(total=total, unit="doc", desc=desc, disable=not progress, mininterval=1.0)
    try:
        for chunk in _chunks(actions, settings.bulk_chunk_size):
            pending = chunk
            for attempt in range(settings.bulk_max_retries + 1):
                if attempt:
                    pause(min(settings.bulk_max_backoff, settings.bulk_initial_backoff * 2 ** (attempt - 1)))
                by_id = {a["_id"]: a for a in pending}
                retry: list[dict[str, Any]] = []
                last_try = attempt == settings.bulk_max_retries
                for ok, item in streaming_bulk(
                    client, pending, chunk_size=len(pending), raise_on_error=False, raise_on_exception=False,
                    max_retries=0, request_timeout=settings.bulk_timeout,
                ):
                    _op, info = next(iter(item.items()))
                    doc_id = str(info.get("_id"))
                    if ok:
                        summary.indexed += 1
                        bar.update(1)
                    elif info.get("status") in RETRYABLE_STATUSES and not last_try and doc_id in by_id:
                        retry.append(by_id[doc_id])
                    else:
                        summary.add_error(doc_id, info.get("status"), _reason(info))
                        bar.update(1)
                if not retry:
                    break
                summary.retried += len(retry)
                log.warning("bulk: %d item(s) hit a retryable failure; retry %d/%d", len(retry), attempt + 1,
                            settings.bulk_max_retries)
                pending = retry
    finally:
        bar.close()
    return summary


# --- index lifecycle ---------------------------------------------------------------------------

def new_index_name(alias: str, now: datetime | None = None) -> str:
    """`<alias>-<UTC yyyymmddhhmmssffffff>`: sortable, lowercase (index names must be), unique
    per rebuild."""
    now = now or datetime.now(UTC)
    return f"{alias}-{now.strftime('%Y%m%d%H%M%S%f')}"


def indices_behind(client: OpenSearch, alias: str) -> list[str]:
    """The concrete indices the alias points at now ([] if the alias does not exist)."""
    try:
        found = client.indices.get_alias(name=alias)
    except NotFoundError:
        return []
    return sorted(found)


def create_loading_index(client: OpenSearch, alias: str, body: Mapping[str, Any]) -> str:
    if client.indices.exists(index=alias) and not client.indices.exists_alias(name=alias):
        # A concrete index squatting on the alias name would make the alias swap fail after a
        # full (and possibly long) bulk load; refuse up front instead.
        raise RuntimeError(f"'{alias}' is a concrete index, not an alias; delete or reindex it first")
    name = new_index_name(alias)
    client.indices.create(index=name, body=body)
    return name


def finish_loading(client: OpenSearch, index: str, settings: OpenSearchSettings) -> None:
    """Turns a freshly bulk-loaded index into a serving one: refresh + replicas back on."""
    client.indices.put_settings(index=index, body={"index": _index_settings(settings, loading=False)})
    client.indices.refresh(index=index)


def swap_alias(client: OpenSearch, alias: str, new_index: str, *, delete_old: bool = True) -> list[str]:
    """Points `alias` at `new_index` only, atomically, then deletes the indices it used to point
    at. Returns the old index names."""
    old = [i for i in indices_behind(client, alias) if i != new_index]
    actions: list[dict[str, Any]] = [{"add": {"index": new_index, "alias": alias}}]
    actions += [{"remove": {"index": i, "alias": alias}} for i in old]
    client.indices.update_aliases(body={"actions": actions})
    if delete_old:
        for index in old:
            try:
                client.indices.delete(index=index)
            except NotFoundError:
                log.info("old index %s already gone", index)
    return old


def rebuild(
    client: OpenSearch,
    alias: str,
    body: Mapping[str, Any],
    actions_for: Callable[[str], Iterable[dict[str, Any]]],
    settings: OpenSearchSettings,
    *,
    total: int | None = None,
    progress: bool = False,
    sleep: Callable[[float], None] | None = None,
) -> tuple[str, BulkSummary]:
    """Creates a new concrete index, loads `actions_for(index_name)` into it and swaps the alias.
    Any document failure aborts before the swap (serving keeps the previous index) and removes
    the partial index; raises BulkIndexingError with the summary."""
    index = create_loading_index(client, alias, body)
    try:
        summary = bulk_index(client, actions_for(index), settings, total=total, progress=progress,
                             desc=alias, sleep=sleep)
        if summary.failed:
            raise BulkIndexingError(summary)
        finish_loading(client, index, settings)
        old = swap_alias(client, alias, index, delete_old=False)
    except BaseException:
        try:
            client.indices.delete(index=index)
        except TransportError as cleanup:
            log.error("could not delete partial index %s: %s", index, cleanup)
        raise
    # Outside the try: once the alias moved, the new index is serving and must never be
    # deleted because an old one could not be.
    for stale in old:
        try:
            client.indices.delete(index=stale)
        except TransportError as e:
            log.error("alias moved but old index %s could not be deleted: %s", stale, e)
    log.info("alias %s -> %s (%s); removed %s", alias, index, summary.describe(), old or "nothing")
    return index, summary


def cap_query(query: str) -> str:
    """Trimmed, length-capped user text. It only ever becomes a JSON string value of a
    match-type query, never query_string syntax, so operators and quotes are plain text."""
    return query.strip()[:MAX_QUERY_CHARS]


# --- saved settings ----------------------------------------------------------------------------

def write_settings_file(path: Path, kind: str, settings: OpenSearchSettings, extra: Mapping[str, Any]) -> Path:
    """Writes `<path>/<kind>.json` (path is a directory, like the embedded index directories)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    target = path / f"{kind}.json"
    payload = {"format": SETTINGS_FORMAT, "kind": kind, "settings": settings.public_dict(), **extra}
    tmp = target.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True), encoding="utf-8")
    tmp.replace(target)  # readers (other API replicas) never see a half-written file
    return target


def read_settings_file(path: Path, kind: str, *, password: str | None = None) -> tuple[OpenSearchSettings,
                                                                                         dict[str, Any]]:
    """Reads what write_settings_file wrote. The password comes from the argument or from
    OPENSEARCH_PASSWORD, never from the file."""
    target = Path(path) / f"{kind}.json"
    payload = json.loads(target.read_text(encoding="utf-8"))
    if payload.get("kind") != kind or payload.get("format") != SETTINGS_FORMAT:
        raise ValueError(f"{target}: not a {kind} settings file (format {SETTINGS_FORMAT})")
    secret = password if password is not None else os.environ.get("OPENSEARCH_PASSWORD") or None
    settings = OpenSearchSettings.from_dict(payload["settings"], password=secret)
    extra = {k: v for k, v in payload.items() if k not in ("format", "kind", "settings")}
    return settings, extra
