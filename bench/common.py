"""Shared benchmark helpers: IR metrics, latency summaries, RSS, result files."""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
SHARED = ROOT.parent / "shared" / "data"
CACHE = ROOT / "bench" / ".cache"


def ndcg_at_k(ranked: Sequence[str], qrels: Mapping[str, int], k: int = 10) -> float:
    dcg = sum((2 ** qrels.get(d, 0) - 1) / math.log2(i + 2) for i, d in enumerate(ranked[:k]))
    ideal = sorted(qrels.values(), reverse=True)[:k]
    idcg = sum((2 ** r - 1) / math.log2(i + 2) for i, r in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def recall_at_k(ranked: Sequence[str], qrels: Mapping[str, int], k: int = 100) -> float:
    rel = {d for d, r in qrels.items() if r > 0}
    return len(rel.intersection(ranked[:k])) / len(rel) if rel else 0.0


def stop_server(proc: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
    """SIGTERM (graceful: the worker checkpoints, Redis stops), SIGKILL after `timeout_s`."""
    import signal

    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()


def synthetic_catalog(n: int) -> Path:
    """The n-track synthetic catalog every scale benchmark shares (`ltrr catalog synth`, seed 0),
    written once: lexical, XR-Linear and /search at scale all measure the same tracks."""
    from services.catalog import Catalog, synthesize

    path = CACHE / f"synthetic_{n}.csv"
    if not path.exists():
        synthesize(Catalog.load(ROOT / "data" / "tracks.csv.gz"), n, path, seed=0)
    return path


def latency_summary(samples_s: Iterable[float]) -> dict[str, float]:
    a = np.asarray(list(samples_s)) * 1000.0
    return {"p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)),
            "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean()), "n": int(a.size)}


def time_each(fn: Callable[[str], object], queries: Sequence[str], warmup: int = 20) -> dict[str, float]:
    for q in queries[:warmup]:
        fn(q)
    samples = []
    for q in queries:
        t = time.perf_counter()
        fn(q)
        samples.append(time.perf_counter() - t)
    return latency_summary(samples)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def dir_size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 2**20


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""


# The code a benchmark measures is the code at its start (a run can outlast commits made beside it).
# `dirty`: uncommitted changes to the product or the benches, so the commit alone does not say
# what ran.
# The product's code, as git pathspecs. The web page's static files (services/serving/ui) run in
# browsers, never in a benchmark.
PRODUCT_CODE = ("services", ":(exclude)services/serving/ui", "retrievers", "bandit", "ranker", "suggest", "replay",
                "logged")
STARTED_AT = {"commit": _git("rev-parse", "--short", "HEAD"),
              "dirty": bool(_git("status", "--porcelain", "--", *PRODUCT_CODE, "bench/*.py"))}


def machine() -> dict[str, object]:
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor()
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), **STARTED_AT}


def write_result(name: str, payload: dict[str, object]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.json"
    out.write_text(json.dumps({"machine": machine(), **payload}, indent=2, default=float))
    return out


def load_scifact(split: str = "test") -> tuple[list[dict], dict[str, str], dict[str, dict[str, int]]]:
    base = SHARED / "beir_scifact"
    corpus = [json.loads(line) for line in open(base / "corpus.jsonl")]
    queries = {(q := json.loads(line))["_id"]: q["text"] for line in open(base / "queries.jsonl")}
    qrels: dict[str, dict[str, int]] = {}
    for i, line in enumerate(open(base / "qrels" / f"{split}.tsv")):
        if i == 0:
            continue
        qid, did, rel = line.rstrip("\n").split("\t")
        qrels.setdefault(qid, {})[did] = int(rel)
    return corpus, {q: queries[q] for q in qrels}, qrels


def load_playlists() -> tuple[dict[str, str], dict[str, dict[str, int]]]:
    base = SHARED / "queries"
    queries = {}
    for i, line in enumerate(open(base / "playlists_dev.tsv", encoding="utf-8")):
        if i:
            qid, text = line.rstrip("\n").split("\t", 1)
            queries[qid] = text
    qrels: dict[str, dict[str, int]] = {}
    for i, line in enumerate(open(base / "playlists_dev.qrels.tsv")):
        if i:
            qid, tid, rel = line.rstrip("\n").split("\t")
            qrels.setdefault(qid, {})[tid] = int(rel)
    return queries, qrels
