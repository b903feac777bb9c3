"""Prometheus metrics (exposed at /metrics)."""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

# With `LTRR_WORKERS` > 1 every API process writes its samples to PROMETHEUS_MULTIPROC_DIR (set by
# `ltrr serve` before the workers start) and /metrics sums them over processes; otherwise a scrape
# would see only the process that happened to answer it.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

_BUCKETS = (0.0005, 0.001, 0.002, 0.004, 0.006, 0.008, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 1.0)

STAGE_SECONDS = Histogram("ltrr_search_stage_seconds", "search latency per stage", ["stage"], buckets=_BUCKETS)
RETRIEVER_SECONDS = Histogram("ltrr_retriever_seconds", "latency per retriever", ["retriever"], buckets=_BUCKETS)
RETRIEVER_FAILURES = Counter("ltrr_retriever_failures_total", "retrievers dropped from a search",
                             ["retriever", "reason"])
RETRIEVAL_CACHE = Counter("ltrr_retrieval_cache_total", "per-arm retrieval cache lookups (services.serving."
                          "retrieval_cache)", ["retriever", "outcome"])
RETRIEVER_DEADLINE = Gauge("ltrr_retriever_deadline_seconds",
                           "the deadline a search gives each retriever (services.serving.arm_budgets)", ["retriever"],
                           multiprocess_mode="liveall")
SEARCHES_DEGRADED = Counter("ltrr_searches_degraded_total",
                            "searches that lost at least one retriever to a timeout or an error")
SEARCHES_SHED = Counter("ltrr_searches_shed_total",
                        "searches answered by the cheapest good retriever alone because the queue was long "
                        "(services.serving.admission)")
SEARCHES_REJECTED = Counter("ltrr_searches_rejected_total", "searches refused with 503: the wait queue was full")
SEARCHES_WAITING = Gauge("ltrr_searches_waiting", "searches waiting for a slot", multiprocess_mode="livesum")
ARM_CHOICES = Counter("ltrr_bandit_actions_total", "bandit decisions per action", ["action"])
REWARDS = Counter("ltrr_bandit_reward_total", "sum of rewards the bandit learned from", ["action"])
REWARDED = Counter("ltrr_bandit_updates_total", "decisions the bandit learned from", ["action"])
FEEDBACK_EVENTS = Counter("ltrr_feedback_events_total", "feedback events by outcome", ["outcome"])
WORKER_EVENTS = Counter("ltrr_worker_events_total", "events applied by the worker", ["type"])
FEEDBACK_LAG = Histogram("ltrr_feedback_lag_seconds", "from 202 (stream id time) to bandit updated",
                         buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 1800))
ERRORS = Counter("ltrr_errors_total", "handled errors by kind", ["kind"])
GATE_DECISIONS = Counter("ltrr_gate_decisions_total", "promotion gate outcomes per model kind",
                         ["kind", "decision"])
GATE_METRIC = Gauge("ltrr_gate_metric", "the numbers of the newest gate decision", ["kind", "metric"],
                    multiprocess_mode="liveall")
MEMORY_PINS = Counter("ltrr_memory_pins_total", "results the click memory placed in the top slots")
MEMORY_TRIALS = Counter("ltrr_memory_trials_total",
                        "once-played results the click memory placed in a page's last slot to be confirmed")
MODEL_VERSION = Gauge("ltrr_model_version_info", "loaded model versions", ["kind", "version"],
                      multiprocess_mode="liveall")  # per live process: replicas may briefly differ
HTTP_REQUESTS = Counter("ltrr_http_requests_total", "HTTP requests", ["route", "status"])


def render() -> bytes:
    """The /metrics body: this process's registry, or the sum over every API worker process."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest()
