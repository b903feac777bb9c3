"""Versioned bandit checkpoints: `<dir>/bandit-v000N.vw` plus `<dir>/bandit-v000N.json` (meta).

Writers never expose a half-written file: the model is written to a temp file, fsynced and then
hard-linked to its final name (the link fails if another writer took that version number, and we
retry with the next one); the meta file, which makes the version visible to readers, is renamed
into place last. Readers verify the model's sha256 and that VW can load it, and raise
CheckpointError otherwise so the caller keeps serving its previous model.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from bandit.arm_stats import ArmStats
from bandit.policy import FEATURE_LAYOUT_VERSION, VW_VERSION, VWConfig, VWPolicy

_NAME = re.compile(r"^bandit-v(\d{4,})\.json$")
_MAX_ATTEMPTS = 100


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, corrupt or from an incompatible layout."""


def version_name(n: int) -> str:
    return f"v{n:04d}"


def list_versions(directory: str | os.PathLike[str]) -> list[int]:
    """Committed versions (those whose meta file exists), ascending."""
    d = Path(directory)
    if not d.is_dir():
        return []
    return sorted(int(m.group(1)) for p in d.iterdir() if (m := _NAME.match(p.name)))


def _fsync_write(directory: Path, data: bytes, suffix: str) -> Path:
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-bandit-", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return Path(tmp)


def save_checkpoint(directory: str | os.PathLike[str], policy: VWPolicy, arm_stats: ArmStats | None = None,
                    extra: dict[str, Any] | None = None) -> str:
    """Write the next version of `policy` (and optionally its arm stats) and return its version
    string ("v0003"); the policy's `version` is updated to it."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    model = policy.serialize()
    tmp_model = _fsync_write(d, model, ".vw")
    try:
        existing = list_versions(d)
        n = (existing[-1] if existing else 0) + 1
        for _ in range(_MAX_ATTEMPTS):
            final = d / f"bandit-{version_name(n)}.vw"
            try:
                os.link(tmp_model, final)
                break
            except FileExistsError:
                n += 1
        else:
            raise CheckpointError(f"could not claim a version number in {d}")
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp_model)
    version = version_name(n)
    meta = {
        "version": version,
        "model_file": final.name,
        "sha256": hashlib.sha256(model).hexdigest(),
        "size": len(model),
        "created": time.time(),
        "vw_version": VW_VERSION,
        "feature_layout": FEATURE_LAYOUT_VERSION,
        "n_learned": policy.n_learned,
        "config": policy.config.to_dict(),
        "arm_stats": arm_stats.to_dict() if arm_stats is not None else None,
        "extra": extra or {},
    }
    tmp_meta = _fsync_write(d, json.dumps(meta, indent=1).encode(), ".json")
    os.replace(tmp_meta, d / f"bandit-{version}.json")
    policy.version = version
    return version


def load_checkpoint(directory: str | os.PathLike[str], version: str) -> tuple[VWPolicy, ArmStats | None, dict]:
    """Load one version; raises CheckpointError with the file name on any defect."""
    d = Path(directory)
    meta_path = d / f"bandit-{version}.json"
    try:
        meta = json.loads(meta_path.read_text())
        model_path = d / meta["model_file"]
        expected_sha = meta["sha256"]
        config = VWConfig.from_dict(meta["config"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"bandit checkpoint meta {meta_path} is unreadable: {e}") from e
    if meta.get("feature_layout") != FEATURE_LAYOUT_VERSION:
        raise CheckpointError(f"{meta_path}: feature layout {meta.get('feature_layout')} != {FEATURE_LAYOUT_VERSION}")
    try:
        data = model_path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"bandit model {model_path} is unreadable: {e}") from e
    actual_sha = hashlib.sha256(data).hexdigest()
    if actual_sha != expected_sha:
        raise CheckpointError(f"bandit model {model_path} is corrupt: sha256 {actual_sha[:12]} != {expected_sha[:12]}"
                              f" ({len(data)} bytes, expected {meta.get('size')})")
    try:
        policy = VWPolicy.from_bytes(data, config, version=meta["version"])
    except ValueError as e:
        raise CheckpointError(f"bandit model {model_path} cannot be loaded: {e}") from e
    policy.n_learned = int(meta.get("n_learned", 0))
    stats = ArmStats.from_dict(meta["arm_stats"]) if meta.get("arm_stats") else None
    return policy, stats, meta


def load_latest(directory: str | os.PathLike[str]) -> tuple[VWPolicy, ArmStats | None, dict]:
    """The newest committed version. A corrupt newest version raises CheckpointError (it is not
    skipped silently: the caller decides whether to keep its current model or load an older one)."""
    versions = list_versions(directory)
    if not versions:
        raise CheckpointError(f"no bandit checkpoint in {directory}")
    return load_checkpoint(directory, version_name(versions[-1]))
