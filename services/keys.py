"""Every Redis key the service uses, in one place (prefix configurable for shared clusters)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    prefix: str = "ltrr"

    # decision, served, ranked, pending: owned by services.decision_store (their lifetimes are there)
    def decision(self, search_id: str) -> str:  # full DecisionRecord JSON until the search is rewarded
        return f"{self.prefix}:decision:{search_id}"

    def served(self, search_id: str) -> str:  # {ts, query, served ids} for the feedback window
        return f"{self.prefix}:served:{search_id}"

    def ranked(self, search_id: str) -> str:  # the ranked list later pages of the search are cut from
        return f"{self.prefix}:ranked:{search_id}"

    def search_events(self, search_id: str) -> str:  # list of applied event JSON for reward aggregation
        return f"{self.prefix}:events:{search_id}"

    def applied(self, event_id: str) -> str:  # idempotency marker per event id
        return f"{self.prefix}:applied:{event_id}"

    def session_queries(self, session_id: str) -> str:  # list, newest first: the session's last 10 queries
        return f"{self.prefix}:session:{session_id}:queries"

    def user_genres(self, user_id: str) -> str:
        return f"{self.prefix}:user:{user_id}:genres"

    @property
    def pending(self) -> str:  # zset search_id -> reward deadline
        return f"{self.prefix}:pending"

    @property
    def feedback_stream(self) -> str:
        return f"{self.prefix}:feedback"

    @property
    def bandit_updates(self) -> str:  # durable stream of rewarded decisions; the bandit replays it
        return f"{self.prefix}:bandit:updates"

    @property
    def bandit_model(self) -> str:  # hash: version, model bytes, last applied update id
        return f"{self.prefix}:bandit:model"

    @property
    def counts(self) -> str:  # hash: applied events per type, rewarded searches...
        return f"{self.prefix}:counts"

    @property
    def group(self) -> str:
        return "workers"
