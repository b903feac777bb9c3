"""Hot-reloaded models with fallback: what a process serves for each kind (bandit, ranker, xr).

A ModelHolder asks its source which version is promoted (`serving()`, cheap) and loads it through
the source's verified `load()`. When that version fails to verify or load, at start-up as well as
at reload, the holder walks `fallbacks()` (previously promoted versions, newest first) and serves
the newest one that works, so one corrupt file never leaves a replica without a model nor crashes
it. A failed version is remembered with its fingerprint (manifest + file sizes/mtimes): it is not
retried while unchanged, and is retried as soon as someone repairs it. The Reloader polls every
holder on one background thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from services import metrics
from services.artifacts import ArtifactStore

log = logging.getLogger(__name__)

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class ModelSource(Protocol[T_co]):
    """Where a holder finds versions. `load` must verify integrity before anything parses bytes."""

    kind: str

    def serving(self) -> str | None: ...

    def fallbacks(self) -> list[str]: ...

    def fingerprint(self, version: str) -> str: ...

    def load(self, version: str) -> T_co: ...


class StoreSource(Generic[T]):
    """A ModelSource over an ArtifactStore: `load` = `store.verify(v)` then `loader(path, v)`."""

    def __init__(self, store: ArtifactStore, loader: Callable[[Path, str], T]):
        self.store = store
        self.kind = store.kind
        self._loader = loader

    def serving(self) -> str | None:
        return self.store.serving()

    def fallbacks(self) -> list[str]:
        return self.store.fallbacks()

    def fingerprint(self, version: str) -> str:
        return self.store.fingerprint(version)

    def load(self, version: str) -> T:
        self.store.verify(version)  # before the loader: libpecos aborts the process on a bad file
        return self._loader(self.store.path(version), version)


class ModelHolder(Generic[T]):
    """The model of one kind this process serves. `current()` is read per request; `refresh()`
    (the Reloader, POST /reload) follows promotions and falls back past broken versions.
    `default` makes the model used when no version loads at start-up (version None)."""

    def __init__(self, kind: str, source: ModelSource[T], *, on_change: Callable[[T], None] | None = None,
                 default: Callable[[], T] | None = None):
        self.kind = kind
        self.source = source
        self.on_change = on_change
        self._lock = threading.Lock()  # guards (model, version)
        self._refresh_lock = threading.Lock()  # one refresh at a time (reloader vs. /reload)
        self._model: T | None = None
        self.version: str | None = None
        self.target: str | None = None  # the promoted version, when this holder last looked
        self.failed: dict[str, str] = {}  # version -> fingerprint when it failed
        self.refresh()
        if self._model is None and default is not None:
            self.set(default(), None)

    def current(self) -> T | None:
        return self._model

    def set(self, model: T, version: str | None) -> None:
        with self._lock:
            old = self.version
            self._model, self.version = model, version
        if old != version:
            metrics.MODEL_VERSION.labels(kind=self.kind, version=str(old)).set(0)
        metrics.MODEL_VERSION.labels(kind=self.kind, version=str(version)).set(1)

    @property
    def fallback(self) -> bool:
        """True while this process serves something other than the promoted version."""
        return self.target is not None and self.version != self.target

    def status(self) -> dict[str, object]:
        """For /health: the version served, the promoted one, versions refused here, fallback."""
        return {"version": self.version, "serving": self.target, "refused": sorted(self.failed),
                "fallback": self.fallback}

    def refresh(self) -> bool:
        """Serves the promoted version, or the newest working fallback. True when the model changed."""
        with self._refresh_lock:
            return self._refresh()

    def _refresh(self) -> bool:
        try:
            target = self.source.serving()
        except Exception as exc:
            log.warning("could not look for %s models: %r", self.kind, exc)
            return False
        self.target = target
        if target is None or (target == self.version and self._model is not None):
            return False
        try:
            chain = [target, *[v for v in self.source.fallbacks() if v != target]]
        except Exception as exc:
            log.warning("could not list %s fallbacks: %r", self.kind, exc)
            chain = [target]
        for version in chain:
            if version == self.version and self._model is not None:
                return False  # the newer ones are broken and unchanged: keep what serves
            try:
                fingerprint = self.source.fingerprint(version)
            except Exception as exc:
                fingerprint = f"unavailable: {exc!r}"
            if self.failed.get(version) == fingerprint:
                continue
            try:
                model = self.source.load(version)
            except Exception as exc:
                # Logged once per (version, fingerprint): unchanged broken files are skipped quietly.
                self.failed[version] = fingerprint
                metrics.ERRORS.labels(kind=f"model_load_{self.kind}").inc()
                log.error("refusing %s model %s: %s", self.kind, version, exc)
                continue
            self.failed.pop(version, None)
            previous = self.version
            self.set(model, version)
            if self.on_change is not None:
                self.on_change(model)
            if version != target:
                metrics.ERRORS.labels(kind=f"model_fallback_{self.kind}").inc()
                log.error("%s: promoted version %s is unusable; serving fallback %s (was %s)", self.kind,
                          target, version, previous)
            else:
                log.info("loaded %s model %s (was %s)", self.kind, version, previous)
            return True
        if self._model is None:
            log.error("%s: no usable version (tried %s)", self.kind, chain)
        return False


class Reloader:
    """Polls every holder on one background thread."""

    def __init__(self, holders: list[ModelHolder], every_s: float):
        self.holders = holders
        self.every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="model-reloader", daemon=True)

    def start(self) -> Reloader:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            for h in self.holders:
                try:
                    h.refresh()
                except Exception:  # a bug in one kind must not stop reloading the others
                    log.exception("reloading %s failed", h.kind)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
