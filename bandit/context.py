"""Bandit context features from plain inputs (strings, word sets, dicts, floats).

The feature dict is what a DecisionRecord logs as `context`, and the VW shared namespace is
rendered from that dict alone, so a logged record can be replayed into exactly the example the
policy saw at decide time. Every name a context can carry is defined in this module.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from functools import lru_cache

# Numeric features, always present (0.0 when the input is missing), in a stable order.
CONTEXT_FEATURES: tuple[str, ...] = (
    "q_tokens",          # number of query tokens
    "q_chars",           # number of characters of the stripped query
    "digit_share",       # share of characters that are digits ("2000s hits", "blink 182")
    "non_ascii_share",   # share of non-ASCII characters (script / locale signal)
    "oov_share",         # share of tokens missing from the index vocabulary (typo signal)
    "artist_share",      # share of tokens that are known artist words
    "title_share",       # share of tokens that are known title words
    "genre_share",       # share of tokens that are known genre words (topic query signal)
    "has_artist",        # 1 if any token is an artist word
    "has_title",
    "has_genre",
    "q2e_hit",           # the click memory knows this query
    "q2e_log_evidence",  # log1p(number of remembered clicks / predicted pairs)
    "hour_sin",          # hour of day, cyclical so 23h and 0h are neighbours
    "hour_cos",
    "wday_sin",          # weekday, cyclical
    "wday_cos",
    "has_affinity",      # the user has a genre profile
    "affinity_entropy",  # normalized entropy of the genre profile: 0 = one genre, 1 = uniform
    "affinity_top",      # weight share of the user's top genre
)
# Categorical features are one-hot: "<prefix><value>" = 1.0.
LOCALE_PREFIX = "locale="
DEVICE_PREFIX = "device="

SHARED_NAMESPACE = "s"


def _share_bucket(v: float) -> int:
    return min(int(v * 4.0), 3)


def _count_bucket(v: float) -> int:
    return min(int(v), 5)


def _log2_bucket(v: float) -> int:
    return min(int(math.log2(1.0 + max(v, 0.0))), 7)


def _evidence_bucket(v: float) -> int:
    return min(int(v), 6)


# A linear model over raw shares can only say "more typos -> more of arm X"; one-hot buckets of the
# same values let the -q interactions learn a separate arm preference per range, which is what
# makes "typo-heavy queries want fuzzy lexical, clean ones dense" learnable in a few thousand rounds.
# Rendered as "<name>#<bucket>" next to the raw value; zeros get a bucket too (absence is a signal).
BUCKETED: dict[str, Callable[[float], int]] = {
    "q_tokens": _count_bucket,
    "q_chars": _log2_bucket,
    "digit_share": _share_bucket,
    "non_ascii_share": _share_bucket,
    "oov_share": _share_bucket,
    "artist_share": _share_bucket,
    "title_share": _share_bucket,
    "genre_share": _share_bucket,
    "q2e_log_evidence": _evidence_bucket,
    "affinity_top": _share_bucket,
}

_TOKEN = re.compile(r"\w+", re.UNICODE)
# VW text format reserves whitespace, '|' and ':' inside feature names.
_VW_UNSAFE = re.compile(r"[\s|:]+")


def simple_tokens(query: str) -> list[str]:
    """Casefolded word tokens; callers with a shared normalizer should pass `tokens` instead."""
    return _TOKEN.findall(query.casefold())


def categorical_value(value: str | None) -> str:
    """A categorical value as it appears in a feature name: lower case, VW-safe, 'unknown' if empty."""
    v = _VW_UNSAFE.sub("_", (value or "").strip().lower())
    return v or "unknown"


def _share(tokens: Sequence[str], words: Collection[str] | None) -> float:
    if not tokens or not words:
        return 0.0
    return sum(1 for t in tokens if t in words) / len(tokens)


def _affinity_features(affinity: Mapping[str, float] | None) -> tuple[float, float, float]:
    if not affinity:
        return 0.0, 0.0, 0.0
    weights = [w for w in affinity.values() if w > 0 and math.isfinite(w)]
    total = sum(weights)
    if total <= 0:
        return 0.0, 0.0, 0.0
    probs = [w / total for w in weights]
    entropy = -sum(p * math.log(p) for p in probs)
    # Normalizing by log(n) makes profiles with different genre counts comparable.
    norm_entropy = entropy / math.log(len(probs)) if len(probs) > 1 else 0.0
    return 1.0, norm_entropy, max(probs)


def _time_features(ts: float | None, utc_offset_minutes: int) -> tuple[float, float, float, float]:
    if ts is None:
        return 0.0, 0.0, 0.0, 0.0
    t = datetime.fromtimestamp(ts, UTC) + timedelta(minutes=utc_offset_minutes)
    hour = t.hour + t.minute / 60.0
    h = 2 * math.pi * hour / 24.0
    d = 2 * math.pi * t.weekday() / 7.0
    return math.sin(h), math.cos(h), math.sin(d), math.cos(d)


def build_context(
    query: str,
    *,
    tokens: Sequence[str] | None = None,
    vocabulary: Collection[str] | None = None,
    artist_words: Collection[str] | None = None,
    title_words: Collection[str] | None = None,
    genre_words: Collection[str] | None = None,
    q2e_hit: bool = False,
    q2e_evidence: float = 0.0,
    ts: float | None = None,
    utc_offset_minutes: int = 0,
    affinity: Mapping[str, float] | None = None,
    locale: str | None = None,
    device: str | None = None,
) -> dict[str, float]:
    """Context features for one query.

    `tokens` should come from the same normalizer the indexes use, so vocabulary and word-set
    lookups match; without it a casefolded \\w+ split is used. When `vocabulary` is None the typo
    signal is unknown and `oov_share` is 0.
    """
    toks = list(tokens) if tokens is not None else simple_tokens(query)
    text = query.strip()
    n_chars = len(text)
    digits = sum(c.isdigit() for c in text)
    non_ascii = sum(ord(c) > 127 for c in text)
    oov = (sum(1 for t in toks if t not in vocabulary) / len(toks)) if (toks and vocabulary is not None) else 0.0
    artist = _share(toks, artist_words)
    title = _share(toks, title_words)
    genre = _share(toks, genre_words)
    has_aff, aff_entropy, aff_top = _affinity_features(affinity)
    hour_sin, hour_cos, wday_sin, wday_cos = _time_features(ts, utc_offset_minutes)
    values = (
        float(len(toks)), float(n_chars),
        digits / n_chars if n_chars else 0.0,
        non_ascii / n_chars if n_chars else 0.0,
        oov, artist, title, genre,
        float(artist > 0), float(title > 0), float(genre > 0),
        float(bool(q2e_hit)), math.log1p(max(0.0, float(q2e_evidence))),
        hour_sin, hour_cos, wday_sin, wday_cos,
        has_aff, aff_entropy, aff_top,
    )
    ctx = dict(zip(CONTEXT_FEATURES, values, strict=True))
    ctx[LOCALE_PREFIX + categorical_value(locale)] = 1.0
    ctx[DEVICE_PREFIX + categorical_value(device)] = 1.0
    return ctx


@lru_cache(maxsize=16384)
def _safe_name(name: str) -> str:
    # Names repeat across requests; caching keeps the regex off the decide() hot path.
    return _VW_UNSAFE.sub("_", name)


def vw_feature(name: str, value: float) -> str:
    """One `name:value` token; a value of exactly 1 is written bare (VW's default weight)."""
    safe = _safe_name(name)
    return safe if value == 1.0 else f"{safe}:{value:.6g}"


def shared_features(context: Mapping[str, float]) -> Iterable[tuple[str, float]]:
    """The context features of the shared line: every feature plus the bucket indicators, skipping
    zeros (VW treats absent features as 0) and non-finite values (they would poison the weights)."""
    for name, value in context.items():
        if not math.isfinite(value):
            continue
        bucket = BUCKETED.get(name)
        if bucket is not None:
            yield f"{name}#{bucket(value)}", 1.0
        if value != 0.0:
            yield name, value


def render_shared(context: Mapping[str, float]) -> str:
    """The VW shared line for cb_adf: `shared |s name:value ...`."""
    return f"shared |{SHARED_NAMESPACE} " + " ".join(vw_feature(n, v) for n, v in shared_features(context))
