"""Retriever-selection contextual bandit: which retrievers (and how many candidates) to run per query.

A library: it takes plain inputs (strings, word sets, dicts, floats) and never imports services/,
retrievers/ or ranker/.
"""

from bandit.actions import Action, action_features, enumerate_actions
from bandit.context import CONTEXT_FEATURES, build_context, render_shared
from bandit.policy import (
    CostModel,
    Decision,
    FixedPolicy,
    Policy,
    UniformRandomPolicy,
    VWConfig,
    VWPolicy,
)

__all__ = [
    "CONTEXT_FEATURES",
    "Action",
    "CostModel",
    "Decision",
    "FixedPolicy",
    "Policy",
    "UniformRandomPolicy",
    "VWConfig",
    "VWPolicy",
    "action_features",
    "build_context",
    "enumerate_actions",
    "render_shared",
]
