"""/suggest benchmark: session-aware PECOS autocompletion vs the most-popular-completion trie.

Held-out sessions are simulated from the catalog with a seeded generator: a user picks a track
(popularity-weighted), searches a first query (the artist or the title, misspelled a third of
the time by services.offline.typos) and then a related next query (after an artist: one of their titles,
"artist title" or an album; after a title: its artist), typing its first 1-5 characters.
MRR@5 of the next query is reported per prefix length for the trie, the model without the
previous query and the model with it.

Two training regimes:
  - `seen`: the production recipe. Cold-start relation pairs for every catalog track plus a log
    of simulated sessions (another seed) train the model; the test sessions are new draws, so
    their (previous, next) relation was typically seen in training but the typos and mix are new.
  - `unseen`: a fifth of the tracks are held out: neither the cold-start pairs nor the training
    log mention them, and the test sessions use only them. The labels still exist (every title
    is a label from the catalog), but the model never saw them follow any previous query.

`python -m bench.bench_suggest [--quick]` writes bench/results/suggest.json and suggest.md.
Quick: the 3,000 most popular tracks (~8k labels), 1,500 test sessions. Full: all 28k tracks.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bench.common import RESULTS, ROOT, latency_summary, write_result
from retrievers.text import normalize
from services.catalog import Catalog, Track
from services.offline.typos import add_typos
from services.serving.suggest_service import album_text, build_model, catalog_labels, catalog_session_pairs, title_text
from suggest import LoggedQuery, SuggestModel, pairs_from_log

PREFIX_LENGTHS = (1, 2, 3, 4, 5)
K = 5


@dataclass(frozen=True)
class Session:
    prev: str
    next: str
    pattern: str


def simulate(tracks: Sequence[Track], n: int, rng: random.Random, typo_rate: float = 0.33) -> list[Session]:
    weights = [1.0 + t.popularity for t in tracks]
    out: list[Session] = []
    while len(out) < n:
        t = rng.choices(tracks, weights)[0]
        title, artist, album = title_text(t), normalize(t.artist), album_text(t)
        if not title or not artist:
            continue
        options = [("artist>title", artist, title), ("artist>artist title", artist, f"{artist} {title}"),
                   ("title>artist", title, artist)]
        if album and album != title:
            options.append(("artist>album", artist, album))
        pattern, prev, nxt = rng.choice(options)
        if prev == nxt:
            continue
        if rng.random() < typo_rate:
            prev = normalize(add_typos(prev, rng))
        out.append(Session(prev, nxt, pattern))
    return out


def as_log(sessions: Sequence[Session]) -> list[LoggedQuery]:
    logged = []
    for i, s in enumerate(sessions):
        logged += [LoggedQuery(f"s{i}", 10.0 * i, s.prev), LoggedQuery(f"s{i}", 10.0 * i + 5, s.next)]
    return logged


def rr(texts: Sequence[str], target: str) -> float:
    for r, t in enumerate(texts[:K], start=1):
        if t == target:
            return 1.0 / r
    return 0.0


def evaluate(model: SuggestModel, test: Sequence[Session]) -> dict[str, object]:
    systems = {"trie": lambda s, p: model.popular(p, K),
               "model_no_prev": lambda s, p: model.suggest(p, "", K),
               "model_with_prev": lambda s, p: model.suggest(p, s.prev, K)}
    mrr: dict[str, dict[int, float]] = {name: {} for name in systems}
    for n in PREFIX_LENGTHS:
        cases = [s for s in test if len(s.next) > n]
        for name, fn in systems.items():
            mrr[name][n] = float(np.mean([rr([x.text for x in fn(s, s.next[:n])], s.next) for s in cases]))
    lat = []
    for s in test[:20]:  # warm-up
        model.suggest(s.next[:2], s.prev, 10)
    for s in test:
        for n in PREFIX_LENGTHS:
            t = time.perf_counter()
            model.suggest(s.next[:n], s.prev, 10)
            lat.append(time.perf_counter() - t)
    by_pattern: dict[str, float] = {}
    for pat in sorted({s.pattern for s in test}):
        cases = [s for s in test if s.pattern == pat and len(s.next) > 2]
        by_pattern[pat] = float(np.mean([rr([x.text for x in model.suggest(s.next[:2], s.prev, K)], s.next)
                                         for s in cases]))
    return {"mrr_at_5": mrr, "mrr_at_5_prefix2_with_prev_by_pattern": by_pattern,
            "latency_with_prev_limit10": latency_summary(lat), "n_test_sessions": len(test)}


def run(quick: bool = False) -> dict[str, object]:
    t_start = time.perf_counter()
    full = Catalog.load(ROOT / "data" / "tracks.csv.gz")
    n_tracks = 3000 if quick else len(full)
    tracks = sorted(full.tracks, key=lambda t: -t.popularity)[:n_tracks]
    catalog = Catalog(tracks)
    n_train, n_test = (3000, 1500) if quick else (20000, 5000)
    results: dict[str, object] = {}

    # seen: production recipe, new test draws.
    train_log = simulate(tracks, n_train, random.Random(1))
    test = simulate(tracks, n_test, random.Random(2))
    t = time.perf_counter()
    model = build_model(catalog, extra_pairs=pairs_from_log(as_log(train_log)))
    train_s = time.perf_counter() - t
    results["seen"] = {**evaluate(model, test), "train_seconds": round(train_s, 1), "meta": model.meta}
    del model

    # unseen: relations of held-out tracks never in training.
    rng = random.Random(3)
    held = set(rng.sample([t.track_id for t in tracks], len(tracks) // 5))
    known = [t for t in tracks if t.track_id not in held]
    held_tracks = [t for t in tracks if t.track_id in held]
    # Labels from the whole catalog; cold-start pairs and the log from the known tracks only.
    pairs = catalog_session_pairs(Catalog(known)) + pairs_from_log(as_log(simulate(known, n_train, random.Random(1))))
    held_texts = {title_text(t) for t in held_tracks} | {f"{normalize(t.artist)} {title_text(t)}" for t in held_tracks}
    t = time.perf_counter()
    model = SuggestModel().train(catalog_labels(catalog), pairs)
    train_s = time.perf_counter() - t
    test_unseen = [s for s in simulate(held_tracks, n_test, random.Random(4)) if s.next in held_texts]
    results["unseen"] = {**evaluate(model, test_unseen), "train_seconds": round(train_s, 1)}
    results["settings"] = {"quick": quick, "tracks": n_tracks, "train_sessions": n_train, "test_sessions": n_test,
                           "k": K, "typo_rate": 0.33}
    results["total_seconds"] = round(time.perf_counter() - t_start, 1)
    return results


def markdown(res: dict[str, object]) -> str:
    lines = []
    s = res["settings"]
    assert isinstance(s, dict)
    lines.append(f"### /suggest: MRR@{K} of the next query by prefix length ({s['tracks']} tracks, "
                 f"{'quick' if s['quick'] else 'full'} mode)\n")
    for regime in ("seen", "unseen"):
        r = res[regime]
        assert isinstance(r, dict)
        mrr = r["mrr_at_5"]
        lines.append(f"**{regime}** ({r['n_test_sessions']} held-out sessions, trained in {r['train_seconds']} s)\n")
        lines.append("| system | " + " | ".join(f"prefix {n}" for n in PREFIX_LENGTHS) + " |")
        lines.append("|---|" + "---|" * len(PREFIX_LENGTHS))
        for name in ("trie", "model_no_prev", "model_with_prev"):
            lines.append(f"| {name} | " + " | ".join(f"{mrr[name][n]:.3f}" for n in PREFIX_LENGTHS) + " |")
        lat = r["latency_with_prev_limit10"]
        lines.append(f"\nin-process latency (with previous query, limit 10): p50 {lat['p50_ms']:.2f} ms, "
                     f"p99 {lat['p99_ms']:.2f} ms over {lat['n']} calls\n")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    res = run(quick=args.quick)
    out = write_result("suggest", res)
    (RESULTS / "suggest.md").write_text(markdown(res))
    print(markdown(res))
    print(f"wrote {out} in {res['total_seconds']} s")


if __name__ == "__main__":
    main()
