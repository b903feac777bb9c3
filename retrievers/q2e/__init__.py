"""Q2E: the query-to-entity memory index.

Maps a normalized query to scored tracks. At cold start the scores are *predictions* from
`retrievers.pseudo_queries` ("taylor swift love story" -> that track, 0.95 x popularity prior).
Feedback turns them into *observations*: each (query, track) pair's score is the mean of a Beta
posterior whose prior is the prediction, over time-decayed counts of engagement (`stats`).

The modules: `config` (Q2EConfig, EventWeights, FORMAT_VERSION), `events` (Q2EEvent, the event
types and their validation), `stats` (a pair's counts, the decay and the posterior), `keys` (how
a query becomes a store key), `store` (the Q2EStore protocol), its two implementations
`memory_store` (MemoryQ2EStore: library use, tests of the logic) and `redis_store`
(RedisQ2EStore: service mode, its Lua scripts in `lua/`), and `retriever` (Q2ERetriever over
either store). Every name other code uses is re-exported here: import from `retrievers.q2e`.
"""

from __future__ import annotations

from retrievers.q2e.config import FORMAT_VERSION, EventWeights, Q2EConfig
from retrievers.q2e.events import EVENT_TYPES, Q2EEvent
from retrievers.q2e.keys import query_keys
from retrievers.q2e.memory_store import MemoryQ2EStore
from retrievers.q2e.redis_store import RedisQ2EStore
from retrievers.q2e.retriever import Q2ERetriever, seed_fingerprint
from retrievers.q2e.stats import Learned, Q2EStats, TrackStats, learned_pairs, posterior
from retrievers.q2e.store import Q2EStore

__all__ = [
    "EVENT_TYPES",
    "FORMAT_VERSION",
    "EventWeights",
    "Learned",
    "MemoryQ2EStore",
    "Q2EConfig",
    "Q2EEvent",
    "Q2ERetriever",
    "Q2EStats",
    "Q2EStore",
    "RedisQ2EStore",
    "TrackStats",
    "learned_pairs",
    "posterior",
    "query_keys",
    "seed_fingerprint",
]
