"""Versioned model artifacts and hot reload.

Each model kind (bandit, ranker, xr) lives in versioned files or directories; a ModelHolder keeps
the loaded one and a background Reloader swaps in a newer version when it appears, so API
replicas pick up new models without a restart. A version that fails to load is logged and
skipped: the previous model keeps serving.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from services import metrics

log = logging.getLogger(__name__)
_VERSION = re.compile(r"v(\d{4,})")


def versions_in(directory: Path, prefix: str) -> list[str]:
    """Sorted version names ('v0003') of entries named '<prefix>-v0003[...]' in `directory`."""
    if not Path(directory).is_dir():
        return []
    found = set()
    for p in Path(directory).iterdir():
        if p.name.startswith(prefix + "-") and not p.name.endswith(".tmp"):
            m = _VERSION.search(p.name[len(prefix) + 1:])
            if m:
                found.add(m.group(0))
    return sorted(found, key=lambda v: int(v[1:]))


def next_version(directory: Path, prefix: str) -> str:
    existing = versions_in(directory, prefix)
    return f"v{(int(existing[-1][1:]) + 1 if existing else 1):04d}"


class ModelHolder:
    """Holds the current model of one kind. `probe()` returns the newest available version
    (cheap); `load(version)` returns the model object or raises."""

    def __init__(self, kind: str, probe: Callable[[], str | None], load: Callable[[str], Any],
                 initial: tuple[Any, str | None] | None = None, on_change: Callable[[Any], None] | None = None):
        self.kind = kind
        self.on_change = on_change
        self._probe = probe
        self._load = load
        self._lock = threading.Lock()
        self._model: Any = None
        self.version: str | None = None
        self.failed_versions: set[str] = set()
        if initial is not None:
            self._model, self.version = initial
        else:
            self.refresh()

    def current(self) -> Any:
        return self._model

    def set(self, model: Any, version: str | None) -> None:
        with self._lock:
            self._model, self.version = model, version
        metrics.MODEL_VERSION.labels(kind=self.kind, version=str(version)).set(1)

    def refresh(self) -> bool:
        """Loads a newer version if one exists. Returns True when the model changed."""
        try:
            latest = self._probe()
        except Exception as exc:
            log.warning("could not look for new %s models: %r", self.kind, exc)
            return False
        if latest is None or latest == self.version or latest in self.failed_versions:
            return False
        try:
            model = self._load(latest)
        except Exception as exc:
            self.failed_versions.add(latest)
            metrics.ERRORS.labels(kind=f"model_load_{self.kind}").inc()
            log.error("refusing %s model %s: %s; keeping %s", self.kind, latest, exc, self.version)
            return False
        self.set(model, latest)
        if self.on_change is not None:
            self.on_change(model)
        log.info("loaded %s model %s", self.kind, latest)
        return True


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
                h.refresh()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
