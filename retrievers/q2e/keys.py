"""How a query becomes a store key: its normalized text (the exact key) and, for
order-insensitive lookups, its sorted tokens. Both stores use these, so they remember, and find,
the same queries.
"""

from __future__ import annotations

from retrievers.q2e.config import Q2EConfig
from retrievers.text import normalize


def query_keys(query: str, cfg: Q2EConfig) -> tuple[str, str] | None:
    """(exact key, order-insensitive key) of a query, or None when it cannot be remembered.
    The second key (sorted tokens) is "" unless the config is order-insensitive."""
    if not isinstance(query, str):
        return None
    # Cheap guard before normalizing: a 10 kB query is never a repeated one.
    if len(query) > cfg.max_query_chars * 4:
        return None
    q = normalize(query)
    if not q or len(q) > cfg.max_query_chars:
        return None
    return q, (_sorted_key(q) if cfg.order_insensitive else "")


def _sorted_key(q: str) -> str:
    return " ".join(sorted(q.split()))
