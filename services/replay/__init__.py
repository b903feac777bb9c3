"""Offline (off-policy) replay evaluation of bandit policies and rankers on logged traffic."""
