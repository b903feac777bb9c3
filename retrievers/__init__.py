"""Retrieval strategies behind one protocol. A library: never imports services, bandit or ranker."""

from retrievers.base import Candidate, Document, Retriever

__all__ = ["Candidate", "Document", "Retriever"]
