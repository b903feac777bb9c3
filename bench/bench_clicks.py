"""Click replay on real relevance: does the product learn from its users?

Queries and relevance come from data the product did not generate: the dev playlists (topic
queries, the playlist's tracks relevant) and the catalog-built spearfish set of
bench/relevance_sets.py (typed titles, partial titles, typos; the recording relevant). Each set
is split in two halves by a seeded coin: the *traffic* half gets R rounds of simulated users,
the *quiet* half none; both are evaluated after every round, so the table shows what the
learning did for queries with traffic and what it cost the others.

The user model (seeded, documented, the same for every row):
* a user searches the query (limit 20, their own user_id and session_id) and examines position k
  with probability k^-0.7 (position bias: 1.0, 0.62, 0.46, ... 0.12 at 20);
* an examined relevant result is played with probability 0.9 (dwell 30-240 s), liked after the
  play with probability 0.15;
* an examined irrelevant result is clicked by mistake with probability 0.03 and skipped;
* a user stops after 4 plays.
Everything goes through the public HTTP API of `ltrr serve` on a copy of a fresh cold-start data
dir, with default settings except the one switch a row turns off:

  full        everything learns
  frozen      the users search but send no feedback, and neither the bandit nor the click memory
              learns (no learning at all: the baseline)
  no-feedback the users search but send no feedback; the service keeps learning from the silence
              (every search rewarded 0, every result shown and not played an impression), which
              shows what an outage of the feedback path does
  no-bandit   LTRR_LEARN_BANDIT=0   the retrieval bandit keeps its cold-start policy
  no-q2e      LTRR_LEARN_Q2E=0      the click memory learns nothing (and pins nothing)
  no-ranker   LTRR_RETRAIN_RANKER_EVERY=0
  no-xr       LTRR_RETRAIN_XR_EVERY=0

After each round the benchmark waits for the reward wait to end and for the trainer to publish
(or refuse) its models, then evaluates every query with `analytics=false` (evaluation searches
teach nothing). Metrics: nDCG@10 and recall@10 for topic queries, MRR@10 for spearfish.

    python -m bench.bench_clicks [--quick] [--seeds 3] [--rounds 6] [--rows full,no-feedback,...]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

from bench.common import CACHE, RESULTS, ROOT, ndcg_at_k, recall_at_k, stop_server, write_result
from bench.relevance_sets import RelevanceQuery, spearfish_set, topic_set

ROWS = {
    "full": {},
    "frozen": {"LTRR_LEARN_BANDIT": "false", "LTRR_LEARN_Q2E": "false"},
    "no-feedback": {},
    "no-bandit": {"LTRR_LEARN_BANDIT": "false"},
    "no-q2e": {"LTRR_LEARN_Q2E": "false"},
    "no-ranker": {"LTRR_RETRAIN_RANKER_EVERY": "0"},
    "no-xr": {"LTRR_RETRAIN_XR_EVERY": "0"},
}


@dataclass(frozen=True)
class UserModel:
    eta: float = 0.7  # examination probability k^-eta
    p_play: float = 0.9
    p_like: float = 0.15
    p_mistake: float = 0.03
    max_plays: int = 4
    page: int = 20

    def examine(self, k: int) -> float:
        return k ** -self.eta


def base_data_dir(rebuild: bool = False) -> Path:
    """A cold-start data dir exactly as the README's first command builds it (default settings)."""
    d = CACHE / "clicks-base"
    if rebuild and d.exists():
        shutil.rmtree(d)
    if not (d / "models" / "decisions.jsonl").exists():
        d.mkdir(parents=True, exist_ok=True)
        emb = Path(os.environ.get("LTRR_BENCH_EMBEDDINGS", ROOT / "var" / "embeddings"))
        if emb.exists() and not (d / "embeddings").exists():
            shutil.copytree(emb, d / "embeddings")
        env = {**os.environ, "LTRR_DATA_DIR": str(d), "HF_HUB_OFFLINE": "1"}
        subprocess.run([sys.executable, "-m", "services.cli", "index", "build", "--quiet"], env=env, cwd=ROOT,
                       check=True)
        subprocess.run([sys.executable, "-m", "services.cli", "train", "coldstart"], env=env, cwd=ROOT, check=True)
    return d


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve_copy(base: Path, env_extra: dict[str, str]) -> Iterator[tuple[str, Path]]:
    """`ltrr serve` on a private copy of the base data dir; yields (URL, data dir)."""
    tmp = Path(tempfile.mkdtemp(prefix="ltrr-clicks-"))
    data = tmp / "var"
    shutil.copytree(base, data, symlinks=True, ignore=shutil.ignore_patterns("*.lock", "*.pid", "logs"))
    port = free_port()
    env = {**os.environ, "LTRR_DATA_DIR": str(data), "LTRR_PORT": str(port), "LTRR_LOG_LEVEL": "WARNING",
           "HF_HUB_OFFLINE": "1", **env_extra}
    log = open(tmp / "serve.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "services.cli", "serve"], env=env, cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 900  # a loaded 2-core machine takes minutes to load every model
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                tail = (tmp / "serve.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"ltrr serve did not come up (exit {proc.poll()}):\n{tail}")
            time.sleep(1)
        yield url, data
    finally:
        stop_server(proc, 60)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


def search(client: httpx.Client, url: str, q: str, limit: int, **params: str) -> dict:
    # types=track: the replay's users and relevance are tracks (artist and album hits are measured
    # by bench_entities).
    r = client.get(url + "/search", params={"q": q, "limit": limit, "types": "track", **params}, timeout=30)
    r.raise_for_status()
    return r.json()


def evaluate(url: str, queries: Sequence[RelevanceQuery]) -> list[dict[str, float]]:
    def one(q: RelevanceQuery) -> dict[str, float]:
        with httpx.Client() as c:
            ids = [h["track_id"] for h in search(c, url, q.text, 10, analytics="false")["results"]]
        rr = next((1.0 / (i + 1) for i, t in enumerate(ids) if t in q.relevant), 0.0)
        return {"ndcg10": ndcg_at_k(ids, q.relevant, 10), "recall10": recall_at_k(ids, q.relevant, 10), "rr10": rr}

    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(one, queries))


def traffic_round(url: str, queries: Sequence[RelevanceQuery], sessions: int, user: UserModel, rng: random.Random,
                  send: bool) -> dict[str, int]:
    """Every traffic query is searched by `sessions` users; each one's actions are sent as one batch."""
    jobs = [(q, s, rng.randrange(2**31)) for q in queries for s in range(sessions)]
    rng.shuffle(jobs)

    def one(job: tuple[RelevanceQuery, int, int]) -> tuple[int, int, int]:
        q, _s, seed = job
        r = random.Random(seed)
        uid = f"sim-{seed % 500}"
        with httpx.Client() as c:
            res = search(c, url, q.text, user.page, user_id=uid, session_id=uuid.uuid4().hex[:16])
            events, plays = [], 0
            now = time.time()
            for k, hit in enumerate(res["results"], start=1):
                if plays >= user.max_plays or r.random() >= user.examine(k):
                    continue
                tid = hit["track_id"]
                base = {"search_id": res["search_id"], "track_id": tid, "position": k, "user_id": uid,
                        "timestamp": now}
                if tid in q.relevant:
                    if r.random() < user.p_play:
                        plays += 1
                        events.append({**base, "type": "play", "dwell_ms": r.randint(30_000, 240_000)})
                        if r.random() < user.p_like:
                            events.append({**base, "type": "like"})
                elif r.random() < user.p_mistake:
                    events.append({**base, "type": "click"})
                    events.append({**base, "type": "skip", "dwell_ms": r.randint(500, 4000)})
            if send and events:
                c.post(url + "/feedback", json={"events": events}, timeout=30).raise_for_status()
            return 1, len(events), sum(e["type"] != "skip" for e in events)

    with ThreadPoolExecutor(4) as pool:
        out = list(pool.map(one, jobs))
    return {"searches": sum(a for a, _, _ in out), "events": sum(b for _, b, _ in out),
            "positives": sum(c for _, _, c in out)}


def decisions(data: Path) -> list[dict]:
    p = data / "models" / "decisions.jsonl"
    if not p.exists():
        return []
    out = []
    for line in p.read_text().splitlines():
        with suppress(json.JSONDecodeError):
            out.append(json.loads(line))
    return out


def wait_learned(data: Path, before: int, kinds: set[str], reward_wait_s: float,
                 timeout_s: float = 400) -> list[dict]:
    """Waits for the reward wait to end, then for the trainer's decision on each expected kind,
    so the next evaluation never competes with a retraining for the cores."""
    time.sleep(reward_wait_s + 3)
    deadline = time.time() + timeout_s
    while kinds and time.time() < deadline:
        if kinds <= {d.get("kind") for d in decisions(data)[before:]}:
            break
        time.sleep(2)
    time.sleep(2)
    return decisions(data)[before:]


def summarize(rows: list[dict[str, float]], key: str) -> float:
    return float(np.mean([r[key] for r in rows])) if rows else float("nan")


def run_row(name: str, base: Path, topic: Sequence[RelevanceQuery], spear: Sequence[RelevanceQuery], seed: int,
            rounds: int, sessions: int) -> dict:
    rng = random.Random(seed)
    halves = {}
    for label, qs in (("topic", topic), ("spearfish", spear)):
        flags = [rng.random() < 0.5 for _ in qs]
        halves[label] = ([q for q, f in zip(qs, flags, strict=True) if f],
                         [q for q, f in zip(qs, flags, strict=True) if not f])
    env = dict(ROWS[name])
    reward_wait = 30.0
    # The service defaults (services/config.py) decide when the trainer retrains.
    ranker_every = 0 if env.get("LTRR_RETRAIN_RANKER_EVERY") == "0" else 150
    xr_every = 0 if env.get("LTRR_RETRAIN_XR_EVERY") == "0" else 300
    pairs = 0
    curve = []
    with serve_copy(base, env) as (url, data):
        traffic = [q for label in halves for q in halves[label][0]]
        for r in range(rounds + 1):
            t0 = time.time()
            info: dict[str, object] = {"round": r}
            if r > 0:
                before = len(decisions(data))
                silent = name in ("no-feedback", "frozen")
                sent = traffic_round(url, traffic, sessions, UserModel(), rng, send=not silent)
                info["traffic"] = sent
                if silent:
                    time.sleep(reward_wait + 3)  # the silent searches are rewarded (0) as in the other rows
                else:
                    pairs += sent["positives"]
                    kinds = {"ranker"} if ranker_every else set()
                    if xr_every and pairs >= xr_every:
                        kinds.add("xr")
                        pairs = 0
                    info["decisions"] = [{k: d.get(k) for k in ("kind", "version", "decision")}
                                         for d in wait_learned(data, before, kinds, reward_wait)]
            for label, (hot, cold) in halves.items():
                for part, qs in (("traffic", hot), ("quiet", cold)):
                    res = evaluate(url, qs)
                    info[f"{label}_{part}"] = {"ndcg10": summarize(res, "ndcg10"),
                                               "recall10": summarize(res, "recall10"),
                                               "mrr10": summarize(res, "rr10"), "n": len(qs)}
            info["seconds"] = round(time.time() - t0, 1)
            print(f"[{name} seed {seed}] round {r}: " + ", ".join(
                f"{k} nDCG {v['ndcg10']:.3f} MRR {v['mrr10']:.3f}" for k, v in info.items()
                if isinstance(v, dict) and "ndcg10" in v), flush=True)
            curve.append(info)
    return {"row": name, "seed": seed, "env": env, "curve": curve}


def ci95(values: Sequence[float]) -> list[float]:
    a = np.asarray(values, dtype=float)
    if a.size < 2:
        return [float("nan"), float("nan")]
    rng = np.random.default_rng(0)
    means = [rng.choice(a, a.size).mean() for _ in range(2000)]
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def table(runs: list[dict]) -> dict:
    out: dict[str, dict] = {}
    for name in dict.fromkeys(r["row"] for r in runs):
        rs = [r for r in runs if r["row"] == name]
        row: dict[str, object] = {"seeds": len(rs)}
        for part in ("topic_traffic", "topic_quiet", "spearfish_traffic", "spearfish_quiet"):
            metric = "ndcg10" if part.startswith("topic") else "mrr10"
            first = [r["curve"][0][part][metric] for r in rs]
            last = [r["curve"][-1][part][metric] for r in rs]
            row[part] = {"metric": metric, "round0": float(np.median(first)), "final": float(np.median(last)),
                         "ratio": float(np.median([b / a if a > 0 else math.nan for a, b in zip(first, last,
                                                                                                 strict=True)])),
                         "delta": float(np.median(np.subtract(last, first))),
                         "delta_ci95": ci95(np.subtract(last, first))}
        out[name] = row
    return out


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, (part, metric) in zip(axes, (("topic", "ndcg10"), ("spearfish", "mrr10")), strict=True):
        for name in dict.fromkeys(r["row"] for r in runs):
            rs = [r for r in runs if r["row"] == name]
            for half, style in (("traffic", "-"), ("quiet", ":")):
                ys = np.median([[c[f"{part}_{half}"][metric] for c in r["curve"]] for r in rs], axis=0)
                ax.plot(range(len(ys)), ys, style, marker="o", label=f"{name} ({half})")
        ax.set_title(f"{part}: {metric} by round (median over seeds)")
        ax.set_xlabel("round of traffic")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(result: dict) -> str:
    """The attribution table: medians over seeds of round 0 and the last round, per half."""
    head = ("| row | seeds | topic traffic nDCG@10 | ratio | topic quiet nDCG@10 | Δ (95% CI) | "
            "spearfish traffic MRR@10 | spearfish quiet MRR@10 |")
    lines = [f"Click replay, {result['rounds']} rounds, {result['sessions']} users per traffic query and round, "
             f"{result['topic_queries']} topic + {result['spearfish_queries']} spearfish queries "
             "(half with traffic). Medians over seeds; round 0 → last round.", "", head,
             "|---|---|---|---|---|---|---|---|"]

    def pair(c: dict) -> str:
        return f"{c['round0']:.3f} → {c['final']:.3f}"

    for name, row in result["table"].items():
        tq = row["topic_quiet"]
        lo, hi = tq["delta_ci95"]
        ci = f"{tq['delta']:+.3f} ({lo:+.3f}, {hi:+.3f})" if lo == lo else f"{tq['delta']:+.3f}"
        lines.append(f"| {name} | {row['seeds']} | {pair(row['topic_traffic'])} | {row['topic_traffic']['ratio']:.2f}x "
                     f"| {pair(tq)} | {ci} | {pair(row['spearfish_traffic'])} | {pair(row['spearfish_quiet'])} |")
    return "\n".join(lines) + "\n"


def merge(names: list[str], into: str, command: str) -> None:
    """One table from runs made separately (seeds run one at a time, rows on other days): the runs
    must share rounds, users and query sets; a (row, seed) pair seen twice is an error."""
    parts = [json.loads((RESULTS / f"{n}.json").read_text()) for n in names]
    same = ("rounds", "sessions", "topic_queries", "spearfish_queries")
    for p, n in zip(parts[1:], names[1:], strict=True):
        differ = [k for k in same if p[k] != parts[0][k]]
        if differ:
            raise SystemExit(f"{n} differs from {names[0]} in {differ}: runs cannot be merged")
    runs = [r for p in parts for r in p["runs"]]
    keys = [(r["row"], r["seed"]) for r in runs]
    if len(set(keys)) != len(keys):
        raise SystemExit(f"a (row, seed) appears twice in {names}")
    rows = list(dict.fromkeys(r["row"] for r in runs))
    result = {"command": command, "merged": {n: {"command": p.get("command"), "machine": p.get("machine")}
                                             for n, p in zip(names, parts, strict=True)},
              "rows": rows, "seeds": len({r["seed"] for r in runs}),
              **{k: parts[0][k] for k in (*same, "user_model")}, "table": table(runs), "runs": runs,
              "seconds": round(sum(p.get("seconds", 0.0) for p in parts), 1)}
    plot(runs, RESULTS / f"{into}_curve.png")
    write_result(into, result)
    (RESULTS / f"{into}.md").write_text(markdown(result))
    print(json.dumps(result["table"], indent=2))


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 seed, 3 rounds, rows full and frozen")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--sessions", type=int, default=2, help="users per traffic query and round")
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--spearfish-per-kind", type=int, default=40)
    ap.add_argument("--rebuild", action="store_true", help="rebuild the cold-start base data dir")
    ap.add_argument("--name", help="results name (default clicks / clicks_quick): several runs side by side")
    ap.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed+seeds-1")
    ap.add_argument("--merge", metavar="NAMES",
                    help="run nothing: combine the runs of these comma-separated results into --name")
    args = ap.parse_args(argv)
    command = "python -m bench.bench_clicks " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.merge:
        merge(args.merge.split(","), args.name or "clicks", command)
        return
    rows = args.rows.split(",")
    seeds, rounds = (1, 3) if args.quick else (args.seeds, args.rounds)
    if args.quick and args.rows == ",".join(ROWS):
        rows = ["full", "frozen"]
    unknown = set(rows) - set(ROWS)
    if unknown:
        raise SystemExit(f"unknown rows {sorted(unknown)}; choose from {list(ROWS)}")
    from services.catalog import Catalog

    base = base_data_dir(args.rebuild)
    topic = topic_set()
    spear = spearfish_set(Catalog.load(ROOT / "data" / "tracks.csv.gz"), n_per_kind=args.spearfish_per_kind)
    t0 = time.time()
    runs = [run_row(name, base, topic, spear, seed, rounds, args.sessions)
            for seed in range(args.first_seed, args.first_seed + seeds) for name in rows]
    result = {"command": command, "rows": rows, "seeds": seeds, "rounds": rounds, "sessions": args.sessions,
              "user_model": UserModel().__dict__, "topic_queries": len(topic), "spearfish_queries": len(spear),
              "table": table(runs), "runs": runs, "seconds": round(time.time() - t0, 1)}
    name = args.name or ("clicks_quick" if args.quick else "clicks")
    plot(runs, RESULTS / f"{name}_curve.png")
    write_result(name, result)
    (RESULTS / f"{name}.md").write_text(markdown(result))
    print(json.dumps(result["table"], indent=2))


if __name__ == "__main__":
    main()
