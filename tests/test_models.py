"""Versioned models reload without a restart; a corrupt or incompatible one is refused and the
previous version keeps serving (issues: pipeline, hardening)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from services.artifacts import ArtifactStore
from services.serving.runtime import Runtime


@pytest.fixture()
def runtime(built_settings, fresh_redis_state, tmp_path):
    settings, _ = built_settings
    # A private copy of the models dir: these tests add versions.
    models = tmp_path / "models"
    shutil.copytree(settings.models_dir, models)
    data = tmp_path / "data"
    data.mkdir()
    (data / "models").symlink_to(models)
    (data / "indexes").symlink_to(settings.index_dir)
    rt = Runtime(settings.model_copy(update={"data_dir": data}), start_worker=False)
    yield rt
    rt.close()


def _damage(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_new_ranker_version_is_picked_up_and_a_corrupt_one_refused(runtime: Runtime) -> None:
    before = runtime.ranker.version
    store = ArtifactStore(runtime.settings.models_dir / "ranker", "ranker")
    model = runtime.ranker.current()
    good = store.publish(model.write, {"source": "test"}, promote=True, report={"reason": "test"})
    assert runtime.ranker.refresh() and runtime.ranker.version == good != before
    bad = store.publish(model.write, {"source": "test"}, promote=True, report={"reason": "test"})
    _damage(store.path(bad) / "model.txt")
    assert not runtime.ranker.refresh()
    assert runtime.ranker.version == good and runtime.ranker.status()["refused"] == [bad]
    assert runtime.model_status()["ranker"]["fallback"] is True
    assert runtime.pipeline.search("shape of you", 5).record.ranker_version == good


def test_ranker_with_other_feature_names_is_refused(runtime: Runtime) -> None:
    current = runtime.ranker.version
    store = ArtifactStore(runtime.settings.models_dir / "ranker", "ranker")
    src = store.path(current)

    def write(d: Path) -> None:
        shutil.copy2(src / "model.txt", d / "model.txt")
        meta = json.loads((src / "meta.json").read_text())
        meta["feature_names"] = list(reversed(meta["feature_names"]))
        (d / "meta.json").write_text(json.dumps(meta))

    store.publish(write, {}, promote=True, report={"reason": "test"})
    assert not runtime.ranker.refresh() and runtime.ranker.version == current


def test_bandit_versions_published_by_the_worker_reach_the_api(runtime: Runtime) -> None:
    store = runtime.bandit_store
    policy, _ = store.load_for_learning()
    version = store.publish(policy, "0-0")
    assert runtime.policy.refresh() and runtime.policy.version == version
    out = runtime.pipeline.search("gym rap", 5)
    assert out.record.bandit_version == version
    # A corrupt model published to Redis is refused; the previous keeps deciding.
    runtime.redis.hset(runtime.keys.bandit_model, mapping={"version": "v9999", "model": b"\x00garbage"})
    assert not runtime.policy.refresh()
    assert runtime.policy.version == version
    assert runtime.pipeline.search("gym rap", 5).record.bandit_version == version


def test_xr_model_reloads_and_corrupt_xr_is_refused(runtime: Runtime) -> None:
    store = ArtifactStore(runtime.settings.models_dir / "xr", "xr")
    current = runtime.xr.current()
    nxt = store.publish(current.write, {}, promote=True, report={"reason": "test"})
    assert runtime.xr.refresh() and runtime.xr.version == nxt
    assert runtime.pipeline.parts.retrievers["xr"] is runtime.xr.current()
    bad = store.publish(runtime.xr.current().write, {}, promote=True, report={"reason": "test"})
    for f in store.path(bad).rglob("W.npz"):
        _damage(f)  # PECOS would abort this process on it: verification must refuse it first
    assert not runtime.xr.refresh() and runtime.xr.version == nxt
    assert runtime.pipeline.parts.retrievers["xr"].retrieve("shape of you ed sheeran", 5)


def test_startup_falls_back_past_corrupt_newest_versions(runtime: Runtime) -> None:
    """A corrupt newest ranker, bandit and XR: a NEW process starts, serving the previous ones."""
    s = runtime.settings
    prev = {"ranker": runtime.ranker.version, "bandit": runtime.policy.version, "xr": runtime.xr.version,
            "suggest": runtime.suggest_model.version}
    rankers, xrs = ArtifactStore(s.models_dir / "ranker", "ranker"), ArtifactStore(s.models_dir / "xr", "xr")
    bad_ranker = rankers.publish(runtime.ranker.current().write, {}, promote=True, report={"reason": "test"})
    _damage(rankers.path(bad_ranker) / "model.txt")
    bad_xr = xrs.publish(runtime.xr.current().write, {}, promote=True, report={"reason": "test"})
    for f in xrs.path(bad_xr).rglob("W.npz"):
        _damage(f)
    bad_bandit = runtime.bandit_store.publish(runtime.policy.current(), "0-0")
    _damage(runtime.bandit_store.store.path(bad_bandit) / "model.vw")
    raw = runtime.redis.hget(runtime.keys.bandit_model, "model")
    runtime.redis.hset(runtime.keys.bandit_model, "model", raw[: len(raw) // 2])
    rt = Runtime(s, start_worker=False)
    try:
        status = rt.model_status()
        assert {k: v["version"] for k, v in status.items()} == prev
        assert status["ranker"]["refused"] == [bad_ranker] and status["xr"]["refused"] == [bad_xr]
        assert status["bandit"]["refused"] == [bad_bandit]
        assert all(status[k]["fallback"] for k in ("ranker", "xr", "bandit"))
        rec = rt.pipeline.search("shape of you", 5).record
        assert (rec.ranker_version, rec.bandit_version) == (prev["ranker"], prev["bandit"])
        # The learner resumes from the previous valid bandit, not from a fresh v0000.
        assert rt.bandit_store.load_for_learning()[0].version == prev["bandit"]
    finally:
        rt.close()
