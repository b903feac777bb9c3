"""Versioned models reload without a restart; a corrupt or incompatible one is refused and the
previous version keeps serving (issues: pipeline, hardening)."""

from __future__ import annotations

import json
import shutil

import pytest

from services.runtime import Runtime


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


def test_new_ranker_version_is_picked_up_and_a_corrupt_one_refused(runtime: Runtime) -> None:
    before = runtime.ranker.version
    model = runtime.ranker.current()
    path = model.save(runtime.settings.models_dir / "ranker")
    assert runtime.ranker.refresh() and runtime.ranker.version == path.name != before
    bad = runtime.settings.models_dir / "ranker" / "ranker-v0099"
    shutil.copytree(path, bad)
    (bad / "model.txt").write_text("tree\nnot a lightgbm model\n")
    assert not runtime.ranker.refresh()
    assert runtime.ranker.version == path.name and "ranker-v0099" in runtime.ranker.failed_versions
    assert runtime.pipeline.search("shape of you", 5).record.ranker_version == path.name


def test_ranker_with_other_feature_names_is_refused(runtime: Runtime) -> None:
    current = runtime.ranker.version
    src = runtime.settings.models_dir / "ranker" / current
    bad = runtime.settings.models_dir / "ranker" / "ranker-v0098"
    shutil.copytree(src, bad)
    meta = json.loads((bad / "meta.json").read_text())
    meta["feature_names"] = list(reversed(meta["feature_names"]))
    (bad / "meta.json").write_text(json.dumps(meta))
    assert not runtime.ranker.refresh() and runtime.ranker.version == current


def test_bandit_versions_published_by_the_worker_reach_the_api(runtime: Runtime) -> None:
    store = runtime.bandit_store
    policy, _ = store.current_or_fresh()
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
    root = runtime.settings.models_dir / "xr"
    current = runtime.xr.version
    src = root / current
    nxt = root / "v0050"
    shutil.copytree(src, nxt)
    meta = json.loads((nxt / "meta.json").read_text())
    meta["version"] = 50
    (nxt / "meta.json").write_text(json.dumps(meta))
    assert runtime.xr.refresh() and runtime.xr.version == "v0050"
    assert runtime.pipeline.p.retrievers["xr"] is runtime.xr.current()
    bad = root / "v0051"
    shutil.copytree(nxt, bad)
    for f in (bad / "model").rglob("*"):
        if f.is_file():
            f.write_bytes(b"corrupt")
    assert not runtime.xr.refresh() and runtime.xr.version == "v0050"
    assert runtime.pipeline.p.retrievers["xr"].retrieve("shape of you ed sheeran", 5)
