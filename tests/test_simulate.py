"""Traffic simulator (ground truth, typos, click model, the whole in-process loop) and `ltrr replay`."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from retrievers.pseudo_queries import MOOD_WORDS
from retrievers.text import normalize, strip_version
from services.artifacts import ArtifactStore
from services.catalog import Catalog
from services.cli import main as cli_main
from services.offline.simulate import (
    SPEARFISH_INTENTS,
    TOPIC_INTENTS,
    SimConfig,
    TrafficSimulator,
    mood_predicate,
    retrieval_reward,
)
from services.serving.recordings import recording_key


@pytest.fixture(scope="module")
def sim(catalog: Catalog) -> TrafficSimulator:
    return TrafficSimulator(catalog, seed=3)


def test_same_seed_same_stream_other_seed_differs(catalog: Catalog, sim: TrafficSimulator) -> None:
    a = sim.queries(300)
    b = TrafficSimulator(catalog, seed=3).queries(300)
    c = TrafficSimulator(catalog, seed=4).queries(300)
    assert [(q.text, q.intent, q.targets, q.relevant, q.user_id) for q in a] == \
        [(q.text, q.intent, q.targets, q.relevant, q.user_id) for q in b]
    assert sum(x.text != y.text for x, y in zip(a, c, strict=True)) > 200
    # A step's reaction depends on the seed and the step only.
    served = list(a[5].targets) + sorted(a[5].relevant)[:9]
    assert sim.react(a[5], served) == sim.react(a[5], served)


def test_every_intent_appears_and_popular_queries_repeat(sim: TrafficSimulator) -> None:
    qs = sim.queries(3000)
    intents = {q.intent for q in qs}
    assert set(SPEARFISH_INTENTS) | set(TOPIC_INTENTS) | {"popular"} <= intents
    popular = [q.text for q in qs if q.intent == "popular"]
    counts = sorted((popular.count(t) for t in set(popular)), reverse=True)
    assert counts[0] >= 20 and len(set(popular)) < len(popular) / 3  # Zipf: a head that repeats


def test_typo_rate_is_applied(catalog: Catalog) -> None:
    def changed(rate: float) -> float:
        qs = [q for q in TrafficSimulator(catalog, SimConfig(typo_rate=rate), seed=1).queries(2000)
              if q.intent in SPEARFISH_INTENTS and any(len(w) >= 4 for w in q.clean.split())]
        assert all(q.typo == (q.text != q.clean) for q in qs)
        return sum(q.text != q.clean for q in qs) / len(qs)

    assert changed(0.0) == 0.0
    assert 0.17 < changed(0.25) < 0.33
    assert changed(1.0) > 0.9


def test_spearfish_ground_truth_matches_the_query(catalog: Catalog, sim: TrafficSimulator) -> None:
    for q in sim.queries(1500):
        if q.intent not in SPEARFISH_INTENTS:
            continue
        t = catalog.by_id[q.targets[0]]
        title, artist, clean = normalize(strip_version(t.title)), normalize(t.artist), normalize(q.clean)
        assert q.targets[0] in q.relevant
        if q.intent == "title":
            assert clean == title
        elif q.intent == "artist":
            assert clean == artist
            assert all(normalize(catalog.by_id[r].artist) == artist for r in q.relevant)
        elif q.intent == "artist_title":
            assert title in clean and artist in clean
        else:
            assert title.startswith(clean) or clean in title


def test_topic_relevant_tracks_satisfy_genre_and_mood(catalog: Catalog, sim: TrafficSimulator) -> None:
    seen_moods = set()
    for q in sim.queries(2000):
        if q.intent not in TOPIC_INTENTS:
            continue
        assert q.relevant and not q.targets
        sample = random.Random(0).sample(sorted(q.relevant), min(50, len(q.relevant)))
        for tid in sample:
            t = catalog.by_id[tid]
            if q.intent == "subgenre":
                assert q.genre in t.subgenres
            else:
                assert q.genre in t.genres
            if q.intent == "mood":
                assert q.mood in MOOD_WORDS and mood_predicate(q.mood, t)
        if q.intent == "mood":
            seen_moods.add(q.mood)
            assert q.mood in q.text and q.genre in q.text
    assert {"chill", "sad", "party"} & seen_moods


def test_click_model_prefers_relevant_results(sim: TrafficSimulator, catalog: Catalog) -> None:
    qs = [q for q in sim.queries(600) if q.targets]
    junk = [t.track_id for t in catalog.tracks[:10]]
    hit = sum(any(e.type == "play" and e.track_id in q.targets for e in sim.react(q, list(q.targets) + junk[:9]))
              for q in qs)
    noise = sum(any(e.type == "click" for e in sim.react(q, [t for t in junk if t not in q.relevant])) for q in qs)
    assert hit > 0.6 * len(qs)
    assert noise < 0.15 * len(qs)
    cascade = TrafficSimulator(catalog, SimConfig(click_model="cascade"), seed=3)
    for q in qs[:100]:
        events = cascade.react(q, list(q.targets) + junk[:9])
        # Cascade: a play ends the scan, so nothing below a played result is clicked.
        plays = [e.position for e in events if e.type == "play"]
        if plays:
            assert max(e.position for e in events) == plays[0]


def test_retrieval_reward() -> None:
    from services.offline.simulate import SimQuery

    spear = SimQuery(0, "x", "title", "sim-u00000", ("a",), frozenset({"a", "b"}))
    assert retrieval_reward(spear, {"b", "c"}) == 0.0 and retrieval_reward(spear, {"a"}) == 1.0
    topic = SimQuery(0, "x", "genre", "sim-u00000", (), frozenset({"a", "b", "c", "d"}))
    assert retrieval_reward(topic, {"a", "b", "z"}) == 0.5
    big = SimQuery(0, "x", "genre", "sim-u00000", (), frozenset(str(i) for i in range(500)))
    assert retrieval_reward(big, {str(i) for i in range(50)}, budget=100) == 0.5


# --- the whole loop on a built service --------------------------------------------------------------
@pytest.fixture(scope="module")
def simulated(built_settings, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """~100 in-process searches on the built service from a just-built Redis state; returns the
    step results, the per-step log and a directory holding only this run's joined records."""
    import redis

    from services.offline.simulate import run

    settings, snapshot = built_settings
    client = redis.Redis.from_url(settings.redis_url)
    client.flushall()
    pipe = client.pipeline(transaction=False)
    for key, value in snapshot.items():
        pipe.restore(key, 0, value, replace=True)
    pipe.execute()
    out = tmp_path_factory.mktemp("sim-out")
    results, steps, joined = run(settings, 100, seed=11, out_dir=out, progress=False)
    ids = {r.search_id for r in results}
    records = [json.loads(line) for f in joined for line in open(f, encoding="utf-8") if line.strip()]
    mine = [r for r in records if r["search_id"] in ids]
    log_dir = tmp_path_factory.mktemp("sim-log")
    (log_dir / "joined-sim.jsonl").write_text("".join(json.dumps(r) + "\n" for r in mine), encoding="utf-8")
    (log_dir / steps.name).write_text(steps.read_text(encoding="utf-8"), encoding="utf-8")
    counts = {k.decode(): int(v) for k, v in client.hgetall("ltrr:counts").items()} if client.exists(
        "ltrr:counts") else {}
    client.close()
    return settings, results, steps, mine, log_dir, counts


def test_in_process_simulation_runs_the_whole_loop(simulated, catalog) -> None:  # type: ignore[no-untyped-def]
    settings, results, steps, records, _, counts = simulated
    assert len(results) == 100 and not [r.error for r in results if r.error]
    lines = [json.loads(line) for line in open(steps, encoding="utf-8")]
    assert [x["step"] for x in lines] == list(range(100))
    assert all(x["intent"] and x["action"] and x["search_id"] for x in lines)
    assert sum(bool(r.events) for r in results) > 20  # users acted on a good share of searches
    # Every search was rewarded and appended to the joined log by the learner, events included.
    assert len({r["search_id"] for r in records}) == 100
    assert all(0 < r["propensity"] <= 1 for r in records)
    # Only the chosen retrievers ran, plus others filling the page (10 results) when the chosen ones
    # failed or found fewer (Q2E on a query it never saw).
    for r in records:
        chosen = set(r["actions"][r["chosen"]]["arms"])
        if set(r["candidates"]) - chosen:
            found = {recording_key(catalog.by_id[t].title, catalog.by_id[t].artist)
                     for a in chosen - set(r["failed"]) for t in r["candidates"].get(a, [])}
            assert r["failed"] or len(found) < 10, (r["query"], chosen, len(found))
    assert sum(bool(r["served"]) for r in records) > 80
    assert sum(len(r["events"]) for r in records) == sum(len(x.events) for x in results)
    assert any(r["reward"] > 0 for r in records) and any(r["reward"] <= 0 for r in records)
    by_id = {r.search_id: r.reward for r in results}
    assert all(abs(r["reward"] - by_id[r["search_id"]]) < 1e-9 for r in records)
    if counts:  # the worker's idempotent per-event effects
        assert counts.get("events", 0) == sum(len(x.events) for x in results)
    # The learner published a model that learned from this traffic.
    bandits = ArtifactStore(Path(settings.models_dir) / "bandit", "bandit")
    assert bandits.manifest(bandits.latest())["meta"]["n_learned"] >= 100


def test_replay_on_the_simulated_log(simulated, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    settings, _, _, _, log_dir, _ = simulated
    report = tmp_path / "report"
    rc = cli_main(["replay", "--log", str(log_dir), "--policy", "fixed:lexical", "--policy", "uniform",
                   "--policy", "bandit:latest", "--data-dir", str(settings.data_dir), "--report", str(report),
                   "--bootstrap", "200"])
    out = capsys.readouterr().out
    assert rc == 0, out
    for policy in ("fixed:lexical", "uniform", "bandit:latest"):
        assert policy in out
    assert "snips" in out and "95% CI" in out
    for name in ("report.md", "index.html", "estimates.png", "online.png", "action_shares.png"):
        assert (report / name).exists(), name
    assert "Ranker metrics" in (report / "report.md").read_text()


def _generic_csv(path: Path, n: int = 400) -> Path:
    rng = random.Random(0)
    keys = ["lexical@100", "dense@100", "lexical+dense@100"]
    lines = ["ctx_intent,ctx_n_tokens,action,propensity,reward"]
    for _ in range(n):
        intent = rng.choice(["topic", "entity"])
        a = rng.randrange(3)
        good = (intent == "topic") == (a != 0)
        lines.append(f"{intent},{rng.randint(1, 5)},{keys[a]},{1 / 3:.6f},{int(rng.random() < (0.8 if good else 0.2))}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_replay_reads_the_generic_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = _generic_csv(tmp_path / "bandit.csv")
    rc = cli_main(["replay", "--log", str(log), "--policy", "fixed:lexical+dense", "--policy", "uniform",
                   "--policy", "all", "--estimators", "ips,snips,replay", "--clip", "20", "--bootstrap", "100",
                   "--report", str(tmp_path / "r")])
    out = capsys.readouterr().out
    assert rc == 0, out
    rows = [line.split() for line in out.splitlines() if line.startswith(("uniform", "fixed:lexical+dense"))]
    assert len(rows) == 6
    est = {(r[0], r[1]): float(r[2]) for r in rows}
    # Uniform logging: SNIPS equals IPS (the weights average exactly 1 only in expectation, so close).
    assert abs(est[("uniform", "ips")] - est[("uniform", "snips")]) < 0.02
    assert (tmp_path / "r" / "report.md").exists() and (tmp_path / "r" / "action_shares.png").exists()


def test_replay_errors_name_the_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = _generic_csv(tmp_path / "bandit.csv", 10)
    lines = log.read_text().splitlines()
    lines[2] = lines[2].rsplit(",", 2)[0] + ",abc," + lines[2].rsplit(",", 1)[1]
    log.write_text("\n".join(lines) + "\n")
    assert cli_main(["replay", "--log", str(log), "--policy", "uniform"]) == 2
    err = capsys.readouterr().err
    assert f"{log}:3" in err and "propensity" in err
    assert cli_main(["replay", "--log", str(tmp_path / "missing.jsonl"), "--policy", "uniform"]) == 2
    assert "no such file" in capsys.readouterr().err
    good = _generic_csv(tmp_path / "good.csv", 10)
    assert cli_main(["replay", "--log", str(good), "--policy", "greedy-magic"]) == 2
    assert "unknown policy" in capsys.readouterr().err
    assert cli_main(["replay", "--log", str(good), "--policy", "fixed:xr"]) == 2
    assert "never appear" in capsys.readouterr().err
    bad_json = tmp_path / "joined-bad.jsonl"
    bad_json.write_text('{"search_id": "a", "candidates": {}}\n')
    assert cli_main(["replay", "--log", str(bad_json), "--policy", "uniform"]) == 2
    assert f"{bad_json}:1" in capsys.readouterr().err
