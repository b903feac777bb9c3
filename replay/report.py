"""Markdown + HTML report with PNG plots for an offline evaluation run.

`write_report(out_dir, results, ...)` writes `report.md`, `index.html` (the same content, images
embedded by relative path, no JavaScript) and one PNG per plot, and returns the Markdown path.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: the report runs in workers and CI without a display

import matplotlib.pyplot as plt
import numpy as np

from replay.evaluate import PolicyResult
from replay.logs import BanditLog, Context


def intent_of(ctx: Context) -> str | None:
    """A context's query intent: a string field `intent`, or the largest `intent=<name>` feature."""
    value = ctx.get("intent")
    if isinstance(value, str):
        return value
    onehot = {k.split("=", 1)[1]: v for k, v in ctx.items() if k.startswith("intent=") and isinstance(v, float)}
    if onehot:
        name, v = max(onehot.items(), key=lambda kv: kv[1])
        return name if v > 0 else None
    return None


def _fmt(x: float | int | str) -> str:
    if isinstance(x, float):
        return "nan" if np.isnan(x) else f"{x:.4f}"
    return str(x)


def _table(header: Sequence[str], rows: Sequence[Sequence[float | int | str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _plot_estimates(results: Sequence[PolicyResult], path: Path) -> None:
    policies = list(dict.fromkeys(r.policy for r in results))
    estimators = list(dict.fromkeys(r.estimator for r in results))
    width = 0.8 / max(1, len(estimators))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(policies)), 4.0))
    for j, est in enumerate(estimators):
        xs, ys, lo, hi = [], [], [], []
        for i, pol in enumerate(policies):
            r = next((r for r in results if r.policy == pol and r.estimator == est), None)
            if r is None or np.isnan(r.estimate):
                continue
            xs.append(i + (j - (len(estimators) - 1) / 2) * width)
            ys.append(r.estimate)
            lo.append(max(0.0, r.estimate - r.lower) if not np.isnan(r.lower) else 0.0)
            hi.append(max(0.0, r.upper - r.estimate) if not np.isnan(r.upper) else 0.0)
        ax.errorbar(xs, ys, yerr=[lo, hi], fmt="o", capsize=3, label=est)
    ax.set_xticks(range(len(policies)), policies, rotation=20, ha="right")
    ax.set_ylabel("estimated policy value")
    ax.set_title("Policy value estimates with 95% bootstrap intervals")
    ax.legend(fontsize=8, ncols=min(6, len(estimators)))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_online(rewards: Mapping[str, np.ndarray], oracle: np.ndarray | None, path: Path) -> None:
    fig, axes = plt.subplots(1, 2 if oracle is not None else 1, figsize=(11 if oracle is not None else 6, 4),
                             squeeze=False)
    ax = axes[0, 0]
    for name, series in rewards.items():
        ax.plot(np.cumsum(series), label=name)
    if oracle is not None:
        ax.plot(np.cumsum(oracle), "k--", label="oracle")
    ax.set_xlabel("step")
    ax.set_ylabel("cumulative reward")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    if oracle is not None:
        ax = axes[0, 1]
        for name, series in rewards.items():
            n = min(len(series), len(oracle))
            ax.plot(np.cumsum(np.asarray(oracle[:n]) - np.asarray(series[:n])), label=name)
        ax.set_xlabel("step")
        ax.set_ylabel("cumulative regret vs oracle")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def action_shares_by_intent(log: BanditLog, dist: np.ndarray | None = None) -> tuple[list[str], np.ndarray]:
    """(intents, shares[n_intents, n_actions]): how often each action is chosen per intent; with
    `dist` the target policy's expected shares, otherwise the logged choices."""
    intents = [intent_of(c) or "unknown" for c in log.contexts]
    names = sorted(set(intents))
    if dist is None:
        dist = np.zeros((len(log), log.n_actions))
        dist[np.arange(len(log)), log.action] = 1.0
    labels = np.array(intents)
    shares = np.vstack([dist[labels == name].mean(axis=0) for name in names])
    return names, shares


def _plot_shares(log: BanditLog, dists: Mapping[str, np.ndarray | None], path: Path) -> None:
    fig, axes = plt.subplots(1, len(dists), figsize=(4.5 * len(dists) + 1.5, 4), squeeze=False)
    colors = plt.get_cmap("tab20")(np.linspace(0, 1, max(2, log.n_actions)))
    for ax, (name, dist) in zip(axes[0], dists.items(), strict=True):
        intents, shares = action_shares_by_intent(log, dist)
        bottom = np.zeros(len(intents))
        for a, key in enumerate(log.action_keys):
            ax.bar(intents, shares[:, a], bottom=bottom, color=colors[a], label=key)
            bottom += shares[:, a]
        ax.set_title(name)
        ax.set_ylim(0, 1)
        ax.tick_params(axis="x", rotation=30)
    axes[0, 0].set_ylabel("share of decisions")
    axes[0, -1].legend(fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
    fig.suptitle("Action (retriever subset) shares by query intent")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _md_to_html(sections: list[tuple[str, str]], title: str) -> str:
    """The report's sections as static HTML: headings, paragraphs, tables and images."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
             "img{max-width:100%}</style></head><body>", f"<h1>{html.escape(title)}</h1>"]
    for kind, body in sections:
        if kind == "h2":
            parts.append(f"<h2>{html.escape(body)}</h2>")
        elif kind == "p":
            parts.append(f"<p>{html.escape(body)}</p>")
        elif kind == "img":
            parts.append(f"<p><img src='{html.escape(body)}' alt='{html.escape(body)}'></p>")
        elif kind == "table":
            lines = [ln for ln in body.splitlines() if ln.strip()]
            head = [c.strip() for c in lines[0].strip("|").split("|")]
            rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]
            parts.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>")
            parts += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows]
            parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(out_dir: str | Path, results: Sequence[PolicyResult], *, title: str = "Offline replay evaluation",
                 log: BanditLog | None = None, policy_dists: Mapping[str, np.ndarray] | None = None,
                 online_rewards: Mapping[str, np.ndarray] | None = None, oracle_rewards: np.ndarray | None = None,
                 ranker_rows: Sequence[Mapping[str, float | str | int]] | None = None,
                 notes: Sequence[str] = ()) -> Path:
    """Write report.md, index.html and PNG plots into `out_dir`; return the report.md path.

    Sections appear when their inputs are given: estimates (from `results`), cumulative reward and
    regret (`online_rewards`: per-step reward series per policy, `oracle_rewards`: the best
    achievable reward per step), action shares by intent (`log`, plus `policy_dists` for target
    policies; only when contexts carry an intent), ranker metrics (`ranker_rows`).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sections: list[tuple[str, str]] = [("p", note) for note in notes]
    if log is not None:
        sections.append(("p", f"{len(log)} logged decisions, {log.n_actions} actions, mean logged reward "
                              f"{float(log.reward.mean()):.4f}; {log.n_skipped} bad lines skipped."))
    if results:
        _plot_estimates(results, out / "estimates.png")
        sections += [("h2", "Policy value estimates"), ("img", "estimates.png"),
                     ("table", _table(["policy", "estimator", "estimate", "95% lower", "95% upper", "ESS",
                                       "max weight", "mean weight", "matched share", "coverage"],
                                      [[r.policy, r.estimator, r.estimate, r.lower, r.upper, r.ess, r.max_weight,
                                        r.mean_weight, r.matched_share, r.coverage] for r in results])),
                     ("p", "ESS is Kish's effective sample size of the importance weights; a mean weight far from 1 "
                           "means wrong propensities or actions the logger never took. DM intervals hold the reward "
                           "model fixed, so they understate its uncertainty; replay is unbiased only for uniformly "
                           "random logging.")]
    if online_rewards:
        _plot_online(online_rewards, oracle_rewards, out / "online.png")
        sections += [("h2", "Online run: cumulative reward and regret"), ("img", "online.png")]
    if log is not None and any(intent_of(c) is not None for c in log.contexts):
        dists: dict[str, np.ndarray | None] = {"logged": None, **(policy_dists or {})}
        _plot_shares(log, dists, out / "action_shares.png")
        sections += [("h2", "Action shares by query intent"), ("img", "action_shares.png")]
    if ranker_rows:
        keys = list(dict.fromkeys(k for row in ranker_rows for k in row))
        sections += [("h2", "Ranker metrics (served lists, click labels)"),
                     ("table", _table(keys, [[row.get(k, "") for k in keys] for row in ranker_rows])),
                     ("p", "Averaged over queries with at least one click (n_with_click). Reranking the logged "
                           "lists is biased toward the logged order: items the logged ranker buried were rarely "
                           "seen, so they rarely carry a click.")]
    md = [f"# {title}", ""]
    for kind, body in sections:
        md += {"h2": [f"## {body}", ""], "p": [body, ""], "img": [f"![{body}]({body})", ""],
               "table": [body, ""]}[kind]
    path = out / "report.md"
    path.write_text("\n".join(md), encoding="utf-8")
    (out / "index.html").write_text(_md_to_html(sections, title), encoding="utf-8")
    return path
