"""On-disk cache of text embeddings keyed by (model id, sha1 of the exact text), so rebuilding an
index re-encodes only texts that changed.

Layout: <root>/<model slug>/shard-<n>.npz, each holding `keys` (n x 20 sha1 digests, uint8) and
`vectors` (n x dim float32). Every build that encodes something appends one shard. A shard is
written to a temp file and renamed into place, so a crash mid-write leaves either the whole shard
or nothing; an unreadable shard is skipped with a warning rather than failing a build. When shards
pile up they are merged into one.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

_MAX_SHARDS = 16
_SHARD = re.compile(r"^shard-(\d{6})\.npz$")


def text_key(text: str) -> bytes:
    return hashlib.sha1(text.encode("utf-8", "surrogatepass"), usedforsecurity=False).digest()


def _slug(model_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", model_id).strip("._") or "model"


class EmbeddingCache:
    def __init__(self, root: Path, model_id: str, dim: int) -> None:
        self.model_id = model_id
        self.dim = dim
        self.dir = Path(root) / _slug(model_id)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._rows: dict[bytes, int] = {}
        self._blocks: list[np.ndarray] = []
        self._matrix: np.ndarray | None = None
        self._n = 0
        self._load()

    def __len__(self) -> int:
        return self._n

    def __contains__(self, text: str) -> bool:
        return text_key(text) in self._rows

    def _shards(self) -> list[Path]:
        return sorted(p for p in self.dir.iterdir() if _SHARD.match(p.name))

    def _load(self) -> None:
        for path in self._shards():
            try:
                with np.load(path) as z:
                    keys, vecs = z["keys"], z["vectors"]
            except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
                log.warning("embedding cache: skipping unreadable shard %s (%s)", path, e)
                continue
            if vecs.ndim != 2 or vecs.shape[1] != self.dim or keys.shape != (len(vecs), 20):
                log.warning("embedding cache: skipping shard %s with shape %s (dim %d expected)",
                            path, vecs.shape, self.dim)
                continue
            self._append(keys, vecs.astype(np.float32, copy=False))

    def _append(self, keys: np.ndarray, vecs: np.ndarray) -> None:
        for i, k in enumerate(keys):
            kb = k.tobytes()
            if kb not in self._rows:
                self._rows[kb] = self._n + i
        self._blocks.append(vecs)
        self._n += len(vecs)
        self._matrix = None

    def _all(self) -> np.ndarray:
        if self._matrix is None:
            self._matrix = (np.concatenate(self._blocks) if self._blocks
                            else np.zeros((0, self.dim), dtype=np.float32))
            self._blocks = [self._matrix]
        return self._matrix

    def lookup(self, texts: Sequence[str]) -> tuple[np.ndarray, list[int]]:
        """Vectors for texts (zero rows where missing) and the positions of the missing texts."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        rows = [self._rows.get(text_key(t), -1) for t in texts]
        hit = np.array([i for i, r in enumerate(rows) if r >= 0], dtype=np.int64)
        if hit.size:
            out[hit] = self._all()[np.array([rows[i] for i in hit], dtype=np.int64)]
        return out, [i for i, r in enumerate(rows) if r < 0]

    def add(self, texts: Sequence[str], vectors: np.ndarray) -> None:
        """Persists one new shard with these (text, vector) pairs; texts already cached are dropped."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.shape != (len(texts), self.dim):
            raise ValueError(f"expected {(len(texts), self.dim)} vectors, got {vectors.shape}")
        seen: set[bytes] = set()
        keep = []
        for i, t in enumerate(texts):
            k = text_key(t)
            if k not in self._rows and k not in seen:
                seen.add(k)
                keep.append(i)
        if not keep:
            return
        keys = np.frombuffer(b"".join(text_key(texts[i]) for i in keep), dtype=np.uint8).reshape(-1, 20)
        vecs = vectors[keep]
        shards = self._shards()
        index = int(_SHARD.match(shards[-1].name).group(1)) + 1 if shards else 1  # type: ignore[union-attr]
        self._write(self.dir / f"shard-{index:06d}.npz", keys, vecs)
        self._append(keys, vecs)
        if len(shards) + 1 > _MAX_SHARDS:
            self.compact()

    def compact(self) -> None:
        """Rewrites all shards as one: write the merged shard first, then delete the old ones, so a
        crash in between only leaves duplicates (which loading tolerates)."""
        old = self._shards()
        if len(old) <= 1:
            return
        keys = np.zeros((len(self._rows), 20), dtype=np.uint8)
        order = np.zeros(len(self._rows), dtype=np.int64)
        for j, (k, r) in enumerate(self._rows.items()):
            keys[j] = np.frombuffer(k, dtype=np.uint8)
            order[j] = r
        vecs = self._all()[order]
        index = int(_SHARD.match(old[-1].name).group(1)) + 1  # type: ignore[union-attr]
        self._write(self.dir / f"shard-{index:06d}.npz", keys, vecs)
        for p in old:
            p.unlink(missing_ok=True)
        self._rows = {k.tobytes(): i for i, k in enumerate(keys)}
        self._blocks, self._matrix, self._n = [vecs], vecs, len(vecs)

    @staticmethod
    def _write(path: Path, keys: np.ndarray, vecs: np.ndarray) -> None:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, keys=keys, vectors=vecs)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o644)  # mkstemp makes 0600; the cache is shared by builds run as other users
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def encode(self, texts: Sequence[str], encode_fn: Callable[[list[str]], np.ndarray], *,
               chunk: int = 4096, on_chunk: Callable[[int], None] | None = None) -> tuple[np.ndarray, int]:
        """Vectors for all texts, calling encode_fn only on the uncached ones, `chunk` texts at a
        time; each chunk is persisted as it finishes so an interrupted build keeps its progress.
        Returns (vectors, number of texts encoded)."""
        out, missing = self.lookup(texts)
        if not missing:
            return out, 0
        todo = list(dict.fromkeys(texts[i] for i in missing))
        fresh = np.zeros((len(todo), self.dim), dtype=np.float32)
        for s in range(0, len(todo), chunk):
            part = todo[s:s + chunk]
            fresh[s:s + len(part)] = np.asarray(encode_fn(part), dtype=np.float32)
            self.add(part, fresh[s:s + len(part)])
            if on_chunk is not None:
                on_chunk(len(part))
        by_text = {t: i for i, t in enumerate(todo)}
        out[missing] = fresh[[by_text[texts[i]] for i in missing]]
        return out, len(todo)
