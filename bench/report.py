"""Renders BENCHMARKS.md from bench/results/*.json: a targets table (met or not, measured in
which run), then one section per benchmark. Missing results say "not measured"."""

from __future__ import annotations

import ast
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import PRODUCT_CODE, RESULTS, ROOT


def load_all() -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))}


# What a benchmark's numbers depend on, besides its own file and bench/common.py. Benchmarks of
# one library name its modules; the end-to-end ones (search, relevance, clicks, ...) depend on
# all of PRODUCT_CODE, and so does bench_ranker (it times the pipeline's featurize).
MEASURED_CODE: dict[str, tuple[str, ...]] = {
    "lexical": ("retrievers/lexical.py", "retrievers/text.py", "retrievers/base.py"),
    "dense": ("retrievers/dense.py", "retrievers/encoder.py", "retrievers/embedding_cache.py", "retrievers/base.py"),
    "xr": ("retrievers/xr_linear.py", "retrievers/pseudo_queries.py", "retrievers/configs.py", "retrievers/text.py"),
    "q2e": ("retrievers/q2e", "retrievers/text.py"),
    "bandit": ("bandit",),
    "suggest": ("suggest", "services/serving/suggest_service.py", "retrievers/configs.py", "retrievers/text.py"),
}


def staleness(name: str, r: dict[str, Any]) -> str | None:
    """None when the code a result measured is the current code; else why not. A figure from
    older code stays visible (it is history) but never counts as a target met. Python files whose
    syntax trees are equal once docstrings are removed count as unchanged (a reworded docstring
    cannot change a number); any other difference, in code or in any other file, makes it stale."""
    commit = get(r, "machine/commit")
    if not commit or get(r, "machine/dirty"):
        return "measured on uncommitted code"
    bench = name.split("_")[0]
    bench_file = f"bench/bench_{bench}.py"
    paths = [*MEASURED_CODE.get(bench, PRODUCT_CODE), "bench/common.py",
             *([bench_file] if (ROOT / bench_file).exists() else [])]
    try:
        out = subprocess.run(["git", "diff", "--name-only", "--no-renames", commit, "HEAD", "--", *paths], cwd=ROOT,
                             capture_output=True, text=True)
    except OSError:
        return None  # no git here: nothing to compare against
    if out.returncode != 0:
        return f"commit {commit} unknown here"
    changed = [f for f in out.stdout.splitlines() if f and not _same_code(commit, f)]
    return f"stale: the code changed since {commit} ({changed[0]}{' …' if len(changed) > 1 else ''})" \
        if changed else None


def _same_code(commit: str, path: str) -> bool:
    """Whether a Python file differs from its version at `commit` only in docstrings."""
    if not path.endswith(".py"):
        return False
    old = subprocess.run(["git", "show", f"{commit}:{path}"], cwd=ROOT, capture_output=True, text=True)
    new = ROOT / path
    if old.returncode != 0 or not new.exists():
        return False  # added or removed
    try:
        return _code_only(old.stdout) == _code_only(new.read_text())
    except SyntaxError:
        return False


def _code_only(source: str) -> str:
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and body \
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


def get(d: Any, path: str) -> Any:
    for part in path.split("/"):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "not measured"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) >= 100:
            return f"{v:.1f}"
        return f"{v:.{digits}g}" if abs(v) < 1 else f"{v:.2f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


# The shipped default exploration (services/config.py); bench_learning also reports epsilon-greedy.
LEARNED = "learned (fresh, squarecb)"

# (what, target text, results file, path or function, predicate on the value)
Target = tuple[str, str, str, str | Callable[[dict[str, Any]], Any], Callable[[float], bool]]
TARGETS: list[Target] = [
    ("SciFact nDCG@10, lexical (tantivy BM25)", ">= 0.665", "lexical", "scifact/ndcg@10", lambda v: v >= 0.665),
    ("SciFact nDCG@10, dense (MiniLM + faiss)", ">= 0.64", "dense", "scifact/ndcg@10", lambda v: v >= 0.64),
    ("/search in process p50, README-built data dir, Zipf queries (retrieval cache warm)", "<= 10 ms", "search",
     "in_process/zipf/p50_ms/total", lambda v: v <= 10),
    ("/search in process p99, README-built data dir, Zipf queries (retrieval cache warm)", "<= 25 ms", "search",
     "in_process/zipf/p99_ms/total", lambda v: v <= 25),
    ("/search in process p50, README-built data dir, every query distinct (cache misses)", "<= 10 ms", "search",
     "in_process/distinct/p50_ms/total", lambda v: v <= 10),
    ("/search in process p99, README-built data dir, every query distinct (cache misses)", "<= 25 ms", "search",
     "in_process/distinct/p99_ms/total", lambda v: v <= 25),
    ("learned policy vs every retriever, end-to-end p50 in process (cache off)", "(no target)", "search",
     "in_process/learned_vs_all_p50_ratio", lambda v: True),
    ("/search in process p50, README-built data dir (cold start, default settings)", "<= 10 ms", "stages",
     "stages/total/p50_ms", lambda v: v <= 10),
    ("/search in process p99, README-built data dir (cold start, default settings)", "<= 25 ms", "stages",
     "stages/total/p99_ms", lambda v: v <= 25),
    ("/search over HTTP, 16 connections, Zipf queries, default settings (one worker per core)", ">= 300 req/s",
     "search", "http/zipf/requests_per_s", lambda v: v >= 300),
    ("/search over HTTP p99, 16 connections, Zipf queries", "<= 40 ms", "search", "http/zipf/p99_ms",
     lambda v: v <= 40),
    ("/search over HTTP, 16 connections, every query distinct", "(no target)", "search",
     "http/distinct/requests_per_s", lambda v: True),
    ("retrieval cache hit rate over HTTP, Zipf / distinct queries", "(no target)", "search",
     lambda r: f"{get(r, 'http/zipf/cache_hit_rate'):.3f} / {get(r, 'http/distinct/cache_hit_rate'):.3f}"
     if get(r, "http/distinct/cache_hit_rate") is not None else None, lambda v: True),
    ("/search over HTTP, 16 connections, Zipf queries, one worker", "(no target)", "search",
     "http_one_worker/zipf/requests_per_s", lambda v: True),
    ("/search p99 at 1M synthetic tracks", "<= 50 ms", "scale",
     lambda r: get(r, "learned_policy/p99_ms") if r.get("tracks") == 1_000_000 else None, lambda v: v <= 50),
    ("XR-Linear per query p50, 28k labels", "<= 1.25 ms", "xr", "shipped_28k/latency_k100/p50_ms",
     lambda v: v <= 1.25),
    ("XR-Linear per query p50, 1M synthetic labels", "<= 1.25 ms", "xr", "synthetic_1000k/latency_k100/p50_ms",
     lambda v: v <= 1.25),
    ("XR-Linear per query p99, 1M synthetic labels", "(no target)", "xr", "synthetic_1000k/latency_k100/p99_ms",
     lambda v: True),
    ("XR-Linear cold-start training time (min), 1M synthetic labels", "(no target)", "xr",
     lambda r: (get(r, "synthetic_1000k/train_s") or 0) / 60 if get(r, "synthetic_1000k") else None, lambda v: True),
    ("XR-Linear training peak RSS (MB), 1M synthetic labels", "(no target)", "xr",
     "synthetic_1000k/peak_rss_mb_after_train", lambda v: True),
    ("bandit decide p50", "<= 0.2 ms", "bandit", "epsilon/decide/p50_ms", lambda v: v <= 0.2),
    ("ranker featurize + predict, 300 candidates, p50", "<= 2 ms", "ranker",
     "featurize_plus_predict_wall/p50_ms", lambda v: v <= 2),
    ("click replay: dev topic nDCG@10 of the traffic half, after / before 6 rounds", ">= 2x", "clicks",
     "table/full/topic_traffic/ratio", lambda v: v >= 2),
    ("click replay: dev topic nDCG@10 of the quiet half, after - before", ">= -0.005", "clicks",
     "table/full/topic_quiet/delta", lambda v: v >= -0.005),
    ("click replay: spearfish MRR@10 of the traffic half, after - before", "> 0", "clicks",
     "table/full/spearfish_traffic/delta", lambda v: v > 0),
    ("dev topic nDCG@10, /search", ">= 0.18", "relevance", "systems/search/topic/ndcg@10", lambda v: v >= 0.18),
    ("dev spearfish MRR@10, /search", ">= 0.88", "relevance", "systems/search/spearfish/mrr@10",
     lambda v: v >= 0.88),
    ("dev partial-title MRR@10, /search", ">= 0.70", "relevance",
     "systems/search/spearfish/mrr@10_by_kind/partial_title",
     lambda v: v >= 0.70),
    ("SIMULATED (pseudo-query templates): learned bandit recall@100 vs all", ">= 0.98x", "learning",
     f"bandit/targets/{LEARNED}/recall_vs_all/ratio", lambda v: v >= 0.98),
    ("SIMULATED: learned bandit retrieval latency vs all retrievers", "<= 0.6x", "learning",
     f"bandit/targets/{LEARNED}/latency_vs_all/ratio", lambda v: v <= 0.6),
    ("SIMULATED: learned bandit net reward vs oracle (best subset per intent)", "within 3%", "learning",
     f"bandit/targets/{LEARNED}/within_3pct_of_oracle/ratio", lambda v: v >= 0.97),
    ("SIMULATED: learned bandit net reward minus best fixed subset", ">= 0", "learning",
     lambda r: (get(r, f"bandit/targets/{LEARNED}/net_reward_vs_best_fixed/value") or 0)
     - (get(r, f"bandit/targets/{LEARNED}/net_reward_vs_best_fixed/best_fixed_value") or 0)
     if get(r, f"bandit/targets/{LEARNED}") else None, lambda v: v >= 0),
    ("feedback accepted over HTTP (batches of 100)", ">= 5,000 events/s", "search",
     "http/feedback_batches_of_100/events_per_s", lambda v: v >= 5000),
    ("feedback worker: events applied per second (one worker)", "(no target)", "feedback", "worker_events_per_s",
     lambda v: True),
    ("feedback lag, 202 to bandit updated, p50", "(no target)", "feedback", "lag_202_to_bandit_updated/p50_ms",
     lambda v: True),
    ("feedback lag, 202 to bandit updated, p99", "(no target)", "feedback", "lag_202_to_bandit_updated/p99_ms",
     lambda v: True),
    ("load test errors (60 s, 16 connections)", "0", "load",
     lambda r: (get(r, "load_16_connections/non_2xx") or 0) + (get(r, "load_16_connections/socket_errors") or 0)
     if get(r, "load_16_connections") else None, lambda v: v == 0),
    ("searches that lost a retriever to its deadline, 16 connections", "(no target)", "load",
     "load_16_connections/degraded_share", lambda v: True),
    ("searches that lost a retriever to its deadline, 50 connections", "(no target)", "load",
     "load_50_connections/degraded_share", lambda v: True),
    ("searches shed to the cheapest retriever (queue long), 16 / 50 connections", "(no target)", "load",
     lambda r: f"{get(r, 'load_16_connections/shed_share'):.3f} / {get(r, 'load_50_connections/shed_share'):.3f}"
     if get(r, "load_50_connections/shed_share") is not None else None, lambda v: True),
    ("server RSS growth over the soak's second half (MB)", "(no target)", "load", "rss_growth_second_half_mb",
     lambda v: True),
    ("Redis bytes per search while its reward is open", "(no target)", "memory", "bytes_per_search_live",
     lambda v: True),
    ("Redis bytes per search after its reward (served key + click-memory impressions; the updates stream "
     "is bounded by checkpoints, not counted)", "(no target)", "memory",
     "bytes_per_search_after_checkpoints_without_stream", lambda v: True),
    ("load test errors (60 s, 50 connections)", "0", "load",
     lambda r: (get(r, "load_50_connections/non_2xx") or 0) + (get(r, "load_50_connections/socket_errors") or 0)
     if get(r, "load_50_connections") else None, lambda v: v == 0),
]


def targets_table(results: dict[str, dict[str, Any]], stale_by_name: dict[str, str | None]) -> list[str]:
    rows = ["| what | target | measured | met | run |", "|---|---|---|---|---|"]
    for what, target, name, path, ok in TARGETS:
        r = results.get(name, {})
        v = path(r) if callable(path) else get(r, path)
        stale = stale_by_name.get(name) if v is not None else None
        met = "—" if v is None or target.startswith("(") else ("yes" if ok(float(v)) else "**no**")
        if stale and met != "—":
            met = f"({met.strip('*')}, {stale.split(':')[0]})"
        run = " ".join(x for x in (name, get(r, "machine/date"), get(r, "machine/commit")) if x)
        rows.append(f"| {what} | {target} | {fmt(v)} | {met} | {run} |")
    return rows


def flat(d: Any, prefix: str = "", depth: int = 0, max_depth: int = 3) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    if isinstance(d, dict) and depth < max_depth:
        for k, v in d.items():
            if k in ("machine", "config"):
                continue
            out += flat(v, f"{prefix}/{k}" if prefix else k, depth + 1, max_depth)
    elif isinstance(d, dict):
        out.append((prefix, ", ".join(f"{k} {fmt(v)}" for k, v in d.items() if not isinstance(v, dict | list))))
    elif isinstance(d, list):
        out.append((prefix, ", ".join(fmt(x) for x in d[:8]) + (" …" if len(d) > 8 else "")))
    else:
        out.append((prefix, fmt(d)))
    return out


def section(name: str, r: dict[str, Any], stale: str | None) -> list[str]:
    m = r.get("machine", {})
    command = r.get("command") or f"python -m bench.bench_{name.removesuffix('_quick')}"
    lines = [f"### {name}", "",
             f"`{command}` — {m.get('date', '?')}, "
             f"commit {m.get('commit', '?')}, {m.get('cpu', '?')} ({m.get('cores', '?')} cores)", ""]
    if stale:
        lines += [f"**Not the current code's numbers** ({stale}); re-run `{command}` to refresh.", ""]
    table = RESULTS / f"{name}.md"
    if table.exists():
        # Benchmarks whose results are curves or per-kind tables write their own Markdown.
        lines += [table.read_text().strip()]
    else:
        lines += ["| metric | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in flat(r)]]
    # learning_curve.png is learning's; clicks_ablations_a_curve.png is not clicks'.
    others = [p.stem for p in RESULTS.glob(f"{name}_*.json")]
    pngs = sorted(p for p in RESULTS.glob(f"{name}*.png") if not any(p.stem.startswith(o) for o in others))
    lines += [""] + [f"![{p.stem}](bench/results/{p.name})" for p in pngs]
    return [*lines, ""]


def write_benchmarks_md(command: str = "bash bench/run.sh") -> Path:
    results = load_all()
    stale_by_name = {name: staleness(name, r) for name, r in results.items()}  # one git diff each
    dates = sorted(get(r, "machine/date") or "" for r in results.values())
    machine = next(iter(results.values()), {}).get("machine", {})
    lines = [
        "# Benchmarks", "",
        f"Command: `{command}` (every benchmark; `--only NAME` for one). Results: `bench/results/*.json`.",
        f"Machine: {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores, Python {machine.get('python', '?')}. "
        f"Runs dated {dates[0] if dates else '?'} to {dates[-1] if dates else '?'}.", "",
        "These machines are shared and noisy: latencies are medians and high percentiles of single runs; "
        "compare ratios measured within one run (e.g. the bandit's subsets against \"all retrievers\"), "
        "not absolute numbers across runs. Timings never appear in pass/fail tests.", "",
        "## Targets", "",
        "A target counts as met only if its benchmark ran on the current code: a result measured before "
        "the product's code (services, retrievers, bandit, ranker, suggest) or its benchmark changed says "
        "so in the *met* column and in its section.", "",
        *targets_table(results, stale_by_name), "",
    ]
    notes = ROOT / "bench" / "NOTES.md"
    if notes.exists():
        lines += ["## Notes on these numbers", "", notes.read_text().strip(), ""]
    lines += ["## Details", ""]
    for name, r in results.items():
        lines += section(name, r, stale_by_name[name])
    out = ROOT / "BENCHMARKS.md"
    out.write_text("\n".join(lines))
    return out


if __name__ == "__main__":
    print(write_benchmarks_md())
