"""The one store for versioned model artifacts (ranker, bandit, xr): integrity, promotion, fallback.

Layout under `root = <models_dir>/<kind>`:

    <kind>-v0001/            one immutable version: the model's files plus MANIFEST.json
        MANIFEST.json        {kind, version, created, files: {relpath: sha256}, meta}
    SERVING.json             {version, ts, report, history}: the promoted version (what replicas serve)
                             and the previously promoted ones, newest first (the fallbacks)
    <models_dir>/decisions.jsonl   every promote/refuse decision of every kind, one JSON per line

Why a manifest with a SHA-256 per file: libpecos aborts the whole process (a C++ exception that
Python cannot catch) on a truncated XR model file, and VW happily loads a truncated bandit model.
`verify()` re-hashes every file before any loader sees it, so a corrupt artifact is refused with
an ArtifactError instead of crashing or silently serving garbage.

Publishing never exposes half a version: files are written into a temp dir, fsynced, the manifest
written last, and the directory renamed into place (atomic on one filesystem; a rename onto an
existing non-empty directory fails, so two publishers racing for one number both get distinct
versions). SERVING.json is replaced atomically (temp file + fsync + os.replace) under a lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

log = logging.getLogger(__name__)

MANIFEST = "MANIFEST.json"
SERVING = "SERVING.json"
DECISIONS = "decisions.jsonl"
HISTORY_KEPT = 20  # previously promoted versions remembered as fallbacks
_STALE_TMP_S = 3600.0  # temp dirs of publishers that died are removed after this long
_MAX_ATTEMPTS = 1000


class ArtifactError(RuntimeError):
    """A version is missing, corrupt (a file's SHA-256 differs from its manifest), incomplete, or
    cannot be verified. The caller keeps serving what it has or falls back to an older version."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _files_under(directory: Path) -> Iterator[tuple[str, Path]]:
    """(posix relpath, path) of every regular file below directory except the manifest."""
    for p in sorted(directory.rglob("*")):
        if p.is_symlink():
            raise ArtifactError(f"{p}: symlinks are not allowed in an artifact")
        if p.is_file():
            rel = p.relative_to(directory).as_posix()
            if rel != MANIFEST:
                yield rel, p


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_path(path.parent)


def _version_number(version: str) -> int:
    m = re.fullmatch(r"v(\d{4,})", version)
    if not m:
        raise ArtifactError(f"not a version string: {version!r} (expected 'v0003')")
    return int(m.group(1))


def append_decision(models_dir: Path, record: Mapping[str, object]) -> None:
    """One line appended with O_APPEND and fsynced: concurrent writers do not interleave lines."""
    models_dir.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(dict(record), default=str, separators=(",", ":")) + "\n").encode()
    fd = os.open(models_dir / DECISIONS, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line  # a writer died mid-line: do not glue this record onto its torn tail
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_decisions(models_dir: Path, limit: int = 200) -> list[dict]:
    """The last `limit` promote/refuse decisions of every kind, newest last. A torn or otherwise
    unparsable line (a writer died mid-append) is skipped, not fatal."""
    path = Path(models_dir) / DECISIONS
    out: deque[dict] = deque(maxlen=max(0, limit))
    try:
        with open(path, "rb") as f:
            for raw in f:
                try:
                    rec = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    continue
                if isinstance(rec, dict):
                    out.append(rec)
    except FileNotFoundError:
        return []
    return list(out)


class ArtifactStore:
    """Versions of one model kind under `root` (= settings.models_dir / kind)."""

    def __init__(self, root: Path, kind: str):
        if not re.fullmatch(r"[a-z][a-z0-9_]*", kind):
            raise ValueError(f"bad artifact kind {kind!r}")
        self.root = Path(root)
        self.kind = kind
        self.models_dir = self.root.parent
        self._name = re.compile(rf"^{re.escape(kind)}-v(\d{{4,}})$")

    def __repr__(self) -> str:
        return f"ArtifactStore({str(self.root)!r}, {self.kind!r})"

    # --- writing ---------------------------------------------------------------------------------

    def publish(self, write: Callable[[Path], None], meta: Mapping[str, object], *, promote: bool = False,
                report: Mapping[str, object] | None = None) -> str:
        """Makes a new version: `write(tmp_dir)` fills a temp dir, the manifest records the SHA-256
        of every file, and the dir is renamed to `<kind>-vNNNN`. Returns the version ('v0003').
        `promote=True` also promotes it (cold start, forced retrains) with `report`."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._remove_stale_tmp()
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{self.kind}-", dir=self.root))
        try:
            write(tmp)
            files: dict[str, str] = {}
            for rel, p in _files_under(tmp):
                _fsync_path(p)  # write() may not have synced; the manifest must describe durable bytes
                files[rel] = sha256_file(p)
            if not files:
                raise ArtifactError(f"publish of {self.kind}: write() produced no files")
            for d in sorted({p.parent for _, p in _files_under(tmp)} | {tmp}, key=lambda x: -len(x.parts)):
                _fsync_path(d)
            created = time.time()
            for _ in range(_MAX_ATTEMPTS):
                version = f"v{self._next_number():04d}"
                manifest = {"kind": self.kind, "version": version, "created": created, "files": files,
                            "meta": dict(meta)}
                _write_synced(tmp / MANIFEST, json.dumps(manifest, indent=1, default=str).encode())
                _fsync_path(tmp)
                try:
                    os.rename(tmp, self._dir(version))
                except OSError:
                    if self._dir(version).exists():
                        continue  # another publisher took this number: take the next
                    raise
                break
            else:
                raise ArtifactError(f"could not claim a version number under {self.root}")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _fsync_path(self.root)
        log.info("published %s %s (%d files)", self.kind, version, len(files))
        if promote:
            self.promote(version, report or {"reason": "published with promote=True"})
        return version

    def promote(self, version: str, report: Mapping[str, object]) -> None:
        """Makes `version` the serving one (after verifying it) and records the decision; the
        previously serving version becomes the first fallback."""
        self.verify(version)
        now = time.time()
        with self._lock():
            current = self._read_serving()
            history = []
            if current is not None:
                history = [v for v in [current.get("version"), *current.get("history", [])]
                           if isinstance(v, str) and v != version]
            state = {"version": version, "ts": now, "report": dict(report),
                     "history": list(dict.fromkeys(history))[:HISTORY_KEPT]}
            _atomic_write(self.root / SERVING, json.dumps(state, indent=1, default=str).encode())
        append_decision(self.models_dir, {"ts": now, "kind": self.kind, "version": version,
                                          "decision": "promoted", "report": dict(report)})
        log.info("promoted %s %s", self.kind, version)

    def refuse(self, version: str, report: Mapping[str, object]) -> None:
        """Records that `version` must never serve. If it was promoted (serving or a fallback), it
        is taken out of SERVING.json; when it was serving, the previous promoted version serves."""
        now = time.time()
        with self._lock():
            current = self._read_serving()
            if current is not None:
                history = [v for v in current.get("history", []) if isinstance(v, str) and v != version]
                if current.get("version") == version:
                    state = {"version": history[0] if history else None, "ts": now,
                             "report": {"reason": f"{version} refused", **dict(report)}, "history": history[1:]}
                else:
                    state = {**current, "history": history}
                if state != current:
                    _atomic_write(self.root / SERVING, json.dumps(state, indent=1, default=str).encode())
        append_decision(self.models_dir, {"ts": now, "kind": self.kind, "version": version,
                                          "decision": "refused", "report": dict(report)})
        log.warning("refused %s %s: %s", self.kind, version, dict(report))

    def prune(self, keep: int = 5) -> list[str]:
        """Deletes versions that can never serve again: neither serving nor a fallback nor among
        the `keep` newest (the learner resumes from the newest). Retraining publishes a version
        per cycle; without this the bandit's checkpoints and XR's models would fill the disk."""
        with self._lock():
            protected = set(self.fallbacks()) | set(self.versions()[-keep:])
            removed = []
            for n, p in self._numbered():
                v = f"v{n:04d}"
                if v not in protected:
                    shutil.rmtree(p, ignore_errors=True)
                    removed.append(v)
        if removed:
            log.info("pruned %d old %s versions", len(removed), self.kind)
        return removed

    # --- reading ---------------------------------------------------------------------------------

    def versions(self) -> list[str]:
        """Complete versions (directory with a manifest), oldest first."""
        return [f"v{n:04d}" for n, p in self._numbered() if (p / MANIFEST).is_file()]

    def latest(self) -> str | None:
        """The newest complete version, promoted or not (what a learner resumes from)."""
        found = self.versions()
        return found[-1] if found else None

    def path(self, version: str) -> Path:
        _version_number(version)
        return self._dir(version)

    def manifest(self, version: str) -> dict:
        path = self.path(version) / MANIFEST
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            raise ArtifactError(f"{self.kind} {version}: no such version ({path} missing)") from None
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ArtifactError(f"{self.kind} {version}: unreadable manifest {path}: {e}") from e
        if not isinstance(data, dict) or not isinstance(data.get("files"), dict) or not data["files"]:
            raise ArtifactError(f"{self.kind} {version}: manifest {path} lists no files")
        if data.get("kind") != self.kind or data.get("version") != version:
            raise ArtifactError(f"{self.kind} {version}: manifest {path} describes "
                                f"{data.get('kind')} {data.get('version')}")
        return data

    def verify(self, version: str) -> dict:
        """Re-hashes every file of `version`; raises ArtifactError on a missing, extra or changed
        file. Returns the manifest. Call this before any loader (PECOS aborts on bad files)."""
        manifest = self.manifest(version)
        directory = self.path(version)
        expected: dict[str, str] = manifest["files"]
        try:
            present = dict(_files_under(directory))
        except OSError as e:
            raise ArtifactError(f"{self.kind} {version}: cannot list {directory}: {e}") from e
        missing = sorted(set(expected) - set(present))
        extra = sorted(set(present) - set(expected))
        if missing or extra:
            raise ArtifactError(f"{self.kind} {version}: files missing {missing[:5]}, unexpected {extra[:5]}")
        for rel, want in expected.items():
            try:
                got = sha256_file(present[rel])
            except OSError as e:
                raise ArtifactError(f"{self.kind} {version}: cannot read {rel}: {e}") from e
            if got != want:
                size = present[rel].stat().st_size
                raise ArtifactError(f"{self.kind} {version}: {rel} is corrupt (sha256 {got[:12]} != "
                                    f"{str(want)[:12]}, {size} bytes)")
        return manifest

    def fingerprint(self, version: str) -> str:
        """Cheap identity of a version's bytes on disk (manifest digest + size/mtime of every file),
        without hashing the files: a failed version whose fingerprint changed (repaired) is retried."""
        directory = self.path(version)
        h = hashlib.sha256()
        try:
            h.update((directory / MANIFEST).read_bytes())
        except OSError:
            return "missing"
        try:
            for rel, p in _files_under(directory):
                st = p.stat()
                h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except (OSError, ArtifactError) as e:
            h.update(repr(e).encode())
        return h.hexdigest()

    def serving(self) -> str | None:
        """The promoted version. A store without SERVING.json (artifacts published before promotion
        existed) serves its newest version; an unreadable SERVING.json is rebuilt from the newest
        'promoted' decision so a damaged file does not bypass the gate."""
        state = self._read_serving()
        if state is None:
            return self._serving_without_file()
        v = state.get("version")
        return v if isinstance(v, str) else None

    def fallbacks(self) -> list[str]:
        """Versions to try, in order: the serving one, then previously promoted ones, newest first."""
        state = self._read_serving()
        if state is None:
            if (self.root / SERVING).exists():
                promoted = self._promoted_from_decisions()
                if promoted:
                    return promoted
            return list(reversed(self.versions()))
        chain = [state.get("version"), *state.get("history", [])]
        return list(dict.fromkeys(v for v in chain if isinstance(v, str)))

    # --- internals -------------------------------------------------------------------------------

    def _dir(self, version: str) -> Path:
        return self.root / f"{self.kind}-{version}"

    def _numbered(self) -> list[tuple[int, Path]]:
        if not self.root.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.root.iterdir() if (m := self._name.match(p.name))]
        return sorted(found)

    def _next_number(self) -> int:
        found = self._numbered()
        return found[-1][0] + 1 if found else 1

    def _read_serving(self) -> dict | None:
        path = self.root / SERVING
        try:
            state = json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            log.error("%s: unreadable (%s); using the promotion decisions log", path, e)
            return None
        if not isinstance(state, dict):
            log.error("%s: not a JSON object; using the promotion decisions log", path)
            return None
        return state

    def _serving_without_file(self) -> str | None:
        if (self.root / SERVING).exists():  # present but unreadable
            promoted = self._promoted_from_decisions()
            return promoted[0] if promoted else None
        return self.latest()

    def _promoted_from_decisions(self) -> list[str]:
        """Promoted, not later refused, versions of this kind from decisions.jsonl, newest first."""
        order: list[str] = []
        for rec in read_decisions(self.models_dir, limit=100_000):
            if rec.get("kind") != self.kind or not isinstance(rec.get("version"), str):
                continue
            v = rec["version"]
            if v in order:
                order.remove(v)
            if rec.get("decision") == "promoted":
                order.append(v)
        return list(reversed(order))

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".serving.lock", "a+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def _remove_stale_tmp(self) -> None:
        now = time.time()
        for p in self.root.glob(f".tmp-{self.kind}-*"):
            with contextlib.suppress(OSError):
                if now - p.stat().st_mtime > _STALE_TMP_S:
                    shutil.rmtree(p, ignore_errors=True)
