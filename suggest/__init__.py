"""Session-aware query autocompletion (PECOS XR-Linear over (previous query, prefix)), with a
most-popular-completion trie as baseline and fallback. A library: imports no other package of
this project; callers pass normalized text (services/serving/suggest_service.py does the wiring)."""

from suggest.labels import KINDS, Label, merge_labels
from suggest.model import SuggestConfig, Suggestion, SuggestModel, clean_prefix, pop_weight
from suggest.sessions import LoggedQuery, SessionPair, pairs_from_log
from suggest.trie import PopularityTrie

__all__ = ["KINDS", "Label", "LoggedQuery", "PopularityTrie", "SessionPair", "SuggestConfig", "SuggestModel",
           "Suggestion", "clean_prefix", "merge_labels", "pairs_from_log", "pop_weight"]
