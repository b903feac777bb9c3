"""The artifact store (services.artifacts) and the holders on top of it, with real models: a small
LightGBM ranker, a VW bandit and a PECOS XR-Linear model trained here. Corrupt newest versions
(truncated, bit-flipped, missing file) are refused at start-up and at reload while the previous
version serves; a repaired version is picked up without restart; a truncated XR file never
reaches libpecos (whose C++ abort would kill the process)."""

from __future__ import annotations

import json
import multiprocessing as mp
import random
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from bandit.actions import enumerate_actions
from bandit.context import build_context
from bandit.policy import VWPolicy
from ranker.features import FeatureRegistry
from ranker.model import LTRModel, train
from services import metrics
from services.artifacts import DECISIONS, MANIFEST, SERVING, ArtifactError, ArtifactStore, read_decisions
from services.config import Settings
from services.keys import Keys
from services.models import ModelHolder
from services.serving.runtime import BanditStore, ranker_holder, vw_config

ROOT = Path(__file__).resolve().parents[1]
CATALOG = ROOT / "data" / "tracks.csv.gz"


def _write_files(files: dict[str, bytes]):  # type: ignore[no-untyped-def]
    def write(d: Path) -> None:
        for rel, data in files.items():
            (d / rel).parent.mkdir(parents=True, exist_ok=True)
            (d / rel).write_bytes(data)
    return write


def _errors(kind: str) -> float:
    return metrics.ERRORS.labels(kind=kind)._value.get()


def _truncate(path: Path, keep: int | None = None) -> bytes:
    data = path.read_bytes()
    path.write_bytes(data[: keep if keep is not None else len(data) // 2])
    return data


def _flip(path: Path) -> bytes:
    data = path.read_bytes()
    bad = bytearray(data)
    bad[len(bad) // 2] ^= 0x01
    path.write_bytes(bytes(bad))
    return data


# --- the store itself ------------------------------------------------------------------------------

def test_publish_writes_manifest_and_verify_detects_every_defect(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "models" / "thing", "thing")
    assert store.versions() == [] and store.latest() is None and store.serving() is None
    v1 = store.publish(_write_files({"a.bin": b"x" * 1000, "sub/b.txt": b"hello"}), {"n": 1})
    assert v1 == "v0001" and store.path(v1).name == "thing-v0001"
    m = store.manifest(v1)
    assert m["kind"] == "thing" and m["version"] == v1 and m["meta"] == {"n": 1} and m["created"] > 0
    assert set(m["files"]) == {"a.bin", "sub/b.txt"} and all(len(h) == 64 for h in m["files"].values())
    assert store.verify(v1) == m
    assert not [p for p in store.root.iterdir() if p.name.startswith(".tmp")]  # no temp dirs left
    a = store.path(v1) / "a.bin"
    good = _truncate(a)
    with pytest.raises(ArtifactError, match=r"a\.bin is corrupt"):
        store.verify(v1)
    a.write_bytes(good)
    _flip(a)
    with pytest.raises(ArtifactError, match=r"a\.bin is corrupt"):
        store.verify(v1)
    a.write_bytes(good)
    (store.path(v1) / "sub" / "b.txt").unlink()
    with pytest.raises(ArtifactError, match=r"missing \['sub/b.txt'\]"):
        store.verify(v1)
    (store.path(v1) / "sub" / "b.txt").write_bytes(b"hello")
    (store.path(v1) / "stray").write_bytes(b"?")
    with pytest.raises(ArtifactError, match="unexpected"):
        store.verify(v1)
    (store.path(v1) / "stray").unlink()
    store.verify(v1)
    (store.path(v1) / MANIFEST).write_text("{torn")
    with pytest.raises(ArtifactError, match="unreadable manifest"):
        store.verify(v1)
    with pytest.raises(ArtifactError, match="no such version"):
        store.verify("v0042")
    with pytest.raises(ArtifactError):
        store.publish(_write_files({}), {})  # an empty artifact is a bug, not a version
    # A failed write() leaves nothing behind and the next publish still numbers on.
    with pytest.raises(RuntimeError):
        store.publish(lambda d: (_ for _ in ()).throw(RuntimeError("disk full")), {})
    assert store.publish(_write_files({"a.bin": b"y"}), {}) == "v0002"
    assert not [p for p in store.root.iterdir() if p.name.startswith(".tmp")]


def test_promote_refuse_serving_fallbacks_and_decisions(tmp_path: Path) -> None:
    models = tmp_path / "models"
    store = ArtifactStore(models / "ranker", "ranker")
    v1 = store.publish(_write_files({"m": b"1"}), {})
    v2 = store.publish(_write_files({"m": b"2"}), {})
    # No SERVING.json (artifacts from before promotion existed): the newest serves.
    assert store.serving() == v2 and store.fallbacks() == [v2, v1]
    store.promote(v1, {"reason": "cold start"})
    assert store.serving() == v1 and store.fallbacks() == [v1]
    v3 = store.publish(_write_files({"m": b"3"}), {"x": 1}, promote=True, report={"ndcg": 0.5})
    assert store.serving() == v3 and store.fallbacks() == [v3, v1] and store.latest() == v3
    v4 = store.publish(_write_files({"m": b"4"}), {})  # published, not promoted: never served
    assert store.serving() == v3 and store.latest() == v4 and v4 not in store.fallbacks()
    store.refuse(v4, {"ndcg": 0.1, "baseline": 0.5})
    assert store.serving() == v3
    # Refusing the serving version rolls back to the previous promoted one.
    store.refuse(v3, {"reason": "regression"})
    assert store.serving() == v1 and store.fallbacks() == [v1]
    # A corrupt version cannot be promoted.
    (store.path(v2) / "m").write_bytes(b"changed")
    with pytest.raises(ArtifactError):
        store.promote(v2, {})
    assert store.serving() == v1
    serving = json.loads((store.root / SERVING).read_text())
    assert serving["version"] == v1 and serving["ts"] > 0 and "report" in serving
    got = [(d["kind"], d["version"], d["decision"]) for d in read_decisions(models)]
    assert got == [("ranker", v1, "promoted"), ("ranker", v3, "promoted"), ("ranker", v4, "refused"),
                   ("ranker", v3, "refused")]
    assert read_decisions(models)[1]["report"] == {"ndcg": 0.5} and read_decisions(models, limit=1)[0]["version"] == v3
    # Other kinds share decisions.jsonl.
    other = ArtifactStore(models / "xr", "xr")
    other.publish(_write_files({"m": b"x"}), {}, promote=True, report={"reason": "cold start"})
    assert read_decisions(models)[-1]["kind"] == "xr" and store.serving() == v1


def test_torn_decisions_line_and_unreadable_serving_file(tmp_path: Path) -> None:
    models = tmp_path / "models"
    store = ArtifactStore(models / "bandit", "bandit")
    v1 = store.publish(_write_files({"m": b"1"}), {}, promote=True, report={"r": 1})
    v2 = store.publish(_write_files({"m": b"2"}), {}, promote=True, report={"r": 2})
    store.publish(_write_files({"m": b"3"}), {})  # newest, never promoted
    with open(models / DECISIONS, "ab") as f:
        f.write(b'{"ts": 1, "kind": "bandit", "vers')  # a writer died mid-line
    assert [d["version"] for d in read_decisions(models)] == [v1, v2]
    store.refuse("v0003", {"r": 3})  # the next append is not glued onto the torn tail
    assert [d["version"] for d in read_decisions(models)] == [v1, v2, "v0003"]
    # A damaged SERVING.json must not make the newest, unpromoted version serve.
    (store.root / SERVING).write_text('{"version": "v00')
    assert store.serving() == v2 and store.fallbacks() == [v2, v1]
    assert read_decisions(tmp_path / "nothing") == []


def _publish_many(root: str, n: int) -> None:
    store = ArtifactStore(Path(root), "race")
    for i in range(n):
        store.publish(_write_files({"m": f"{i}".encode()}), {"pid": "child"})


def test_concurrent_publishers_get_distinct_versions(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "models" / "race", "race")
    store.root.mkdir(parents=True)
    barrier = threading.Barrier(6)
    got: list[str] = []
    lock = threading.Lock()

    def publish(i: int) -> None:
        barrier.wait()
        for j in range(4):
            v = store.publish(_write_files({"m": f"{i}-{j}".encode()}), {"who": i})
            with lock:
                got.append(v)

    threads = [threading.Thread(target=publish, args=(i,)) for i in range(6)]
    procs = [mp.get_context("fork").Process(target=_publish_many, args=(str(store.root), 4)) for _ in range(2)]
    for p in procs:
        p.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert len(got) == len(set(got)) == 24
    assert len(store.versions()) == 32 and store.versions() == [f"v{n:04d}" for n in range(1, 33)]
    for v in store.versions():
        store.verify(v)


# --- the ranker: real LightGBM ------------------------------------------------------------------

@pytest.fixture(scope="module")
def ranker_settings_and_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, LTRModel]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("art-ranker"), catalog=CATALOG)
    registry = FeatureRegistry(settings.retrievers)
    rng = np.random.default_rng(0)
    X = rng.random((400, registry.dim)).astype(np.float32)
    y = (X[:, 0] * 3).astype(int)
    model = train(X, y, [10] * 40, registry=registry, num_boost_round=5, params={"min_data_in_leaf": 2})
    return settings, model


@pytest.mark.parametrize("damage", ["truncate", "bitflip", "missing"])
def test_corrupt_newest_ranker_refused_at_startup_and_reload_then_repaired(
        ranker_settings_and_model: tuple[Settings, LTRModel], tmp_path: Path, damage: str) -> None:
    base, model = ranker_settings_and_model
    settings = base.model_copy(update={"data_dir": tmp_path / damage})
    store = ArtifactStore(settings.models_dir / "ranker", "ranker")
    v1 = store.publish(model.write, {}, promote=True, report={"reason": "cold start"})
    v2 = store.publish(model.write, {}, promote=True, report={"reason": "retrain"})
    target = store.path(v2) / "model.txt"
    good = target.read_bytes()

    def damage_it() -> None:
        if damage == "truncate":
            _truncate(target)
        elif damage == "bitflip":
            _flip(target)
        else:
            target.unlink()

    damage_it()
    errors = _errors("model_load_ranker")
    holder = ranker_holder(settings)  # start-up
    assert holder.version == v1 and holder.current().version == v1
    assert holder.status() == {"version": v1, "serving": v2, "refused": [v2], "fallback": True}
    assert _errors("model_load_ranker") == errors + 1
    assert not holder.refresh() and _errors("model_load_ranker") == errors + 1  # not retried while unchanged
    target.write_bytes(good)  # repaired: picked up without restart
    assert holder.refresh() and holder.version == v2
    assert holder.status() == {"version": v2, "serving": v2, "refused": [], "fallback": False}
    # At reload: a newer promoted version that is broken keeps v2 serving.
    v3 = store.publish(model.write, {}, promote=True, report={"reason": "retrain"})
    target = store.path(v3) / "model.txt"
    good = target.read_bytes()
    damage_it()
    assert not holder.refresh() and holder.version == v2 and holder.status()["refused"] == [v3]
    assert holder.current().predict(np.zeros((2, model.booster.num_feature()), dtype=np.float32)).shape == (2,)
    target.write_bytes(good)
    assert holder.refresh() and holder.version == v3 and not holder.status()["fallback"]


def test_ranker_with_other_features_is_refused_even_with_a_valid_manifest(
        ranker_settings_and_model: tuple[Settings, LTRModel], tmp_path: Path) -> None:
    base, model = ranker_settings_and_model
    settings = base.model_copy(update={"data_dir": tmp_path})
    store = ArtifactStore(settings.models_dir / "ranker", "ranker")
    v1 = store.publish(model.write, {}, promote=True, report={"reason": "cold start"})

    def write_reordered(d: Path) -> None:
        model.write(d)
        meta = json.loads((d / "meta.json").read_text())
        meta["feature_names"] = list(reversed(meta["feature_names"]))
        (d / "meta.json").write_text(json.dumps(meta))

    v2 = store.publish(write_reordered, {}, promote=True, report={"reason": "test"})
    store.verify(v2)  # intact bytes, wrong features: the loader's own checks refuse it
    holder = ranker_holder(settings)
    assert holder.version == v1 and holder.status()["refused"] == [v2]


def test_no_ranker_version_at_all(tmp_path: Path) -> None:
    holder = ranker_holder(Settings(data_dir=tmp_path, catalog=CATALOG))
    assert holder.current() is None and holder.status() == {"version": None, "serving": None, "refused": [],
                                                              "fallback": False}


# --- the bandit: real VW, real Redis ---------------------------------------------------------------

def _trained_policy(settings: Settings, rounds: int, seed: int) -> VWPolicy:
    policy = VWPolicy(vw_config(settings))
    actions = enumerate_actions(("lexical", "dense", "xr", "q2e"), max_arms=2)
    r = random.Random(seed)
    for _ in range(rounds):
        ctx = build_context(f"w{r.randrange(50)} w{r.randrange(50)}", ts=1.7e9, locale="en", device="web")
        d = policy.decide(ctx, actions)
        policy.learn(ctx, actions, d.chosen, float(r.random() < 0.5), d.propensity)
    return policy


@pytest.mark.parametrize("damage", ["truncate", "bitflip", "missing"])
def test_corrupt_newest_bandit_refused_at_startup_and_reload(tmp_path: Path, redis_client, damage: str) -> None:
    settings = Settings(data_dir=tmp_path, catalog=CATALOG)
    keys = Keys()
    store = BanditStore(settings, redis_client, keys)
    p1 = _trained_policy(settings, 50, seed=1)
    v1 = store.publish(p1, "5-0", report={"reason": "cold start"})
    p2 = _trained_policy(settings, 80, seed=2)
    v2 = store.publish(p2, "9-0")
    assert (v1, v2) == ("v0001", "v0002") and p2.version == v2
    got = redis_client.hgetall(keys.bandit_model)
    assert got[b"version"] == b"v0002" and got[b"last_update_id"] == b"9-0" and len(got[b"sha256"]) == 64
    model_file = store.store.path(v2) / "model.vw"
    good_bytes = model_file.read_bytes()
    # The Redis copy is verified on its own: corrupting it alone still serves v2, from the files.
    redis_client.hset(keys.bandit_model, "model", good_bytes[:600])  # VW itself would accept this
    assert store.load(v2).n_learned == 80
    # Now break the files too: v2 is unusable everywhere, start-up falls back to v1.
    if damage == "truncate":
        _truncate(model_file, keep=600)
    elif damage == "bitflip":
        _flip(model_file)
    else:
        model_file.unlink()
    holder = ModelHolder("bandit", store, default=store.fresh)
    assert holder.version == v1 and holder.current().version == v1 and holder.current().n_learned == 50
    assert holder.status() == {"version": v1, "serving": v2, "refused": [v2], "fallback": True}
    # The learner resumes from the newest VERIFIED version and its last update id, not from fresh.
    policy, last = store.load_for_learning()
    assert (policy.version, last, policy.n_learned) == (v1, "5-0", 50)
    # Repaired on disk: picked up without restart.
    model_file.write_bytes(good_bytes)
    assert holder.refresh() and holder.version == v2 and not holder.status()["fallback"]
    policy, last = store.load_for_learning()
    assert (policy.version, last) == (v2, "9-0")
    # At reload: garbage published to Redis under a new version is refused; v2 keeps deciding.
    redis_client.hset(keys.bandit_model, mapping={"version": "v0003", "model": b"\x00garbage",
                                                  "sha256": "0" * 64})
    assert not holder.refresh() and holder.version == v2 and holder.status()["refused"] == ["v0003"]


def test_bandit_promotion_is_separate_from_publishing(tmp_path: Path, redis_client) -> None:
    settings = Settings(data_dir=tmp_path, catalog=CATALOG)
    keys = Keys()
    store = BanditStore(settings, redis_client, keys)
    assert store.load_for_learning()[1] == "0-0" and store.load_for_learning()[0].version == "v0000"
    v1 = store.publish(_trained_policy(settings, 20, 3), "1-0", report={"reason": "cold start"})
    v2 = store.publish(_trained_policy(settings, 30, 4), "2-0", promote=False)
    assert store.serving() == v1 and redis_client.hget(keys.bandit_model, "version") == b"v0001"
    assert store.load_for_learning()[0].version == v2  # the learner continues from the newest
    holder = ModelHolder("bandit", store, default=store.fresh)
    assert holder.version == v1
    store.promote(v2, {"reward": 0.4, "baseline": 0.3})
    assert redis_client.hget(keys.bandit_model, "version") == b"v0002"
    assert holder.refresh() and holder.version == v2
    store.refuse(v2, {"reason": "regressed"})  # rollback: Redis and the store serve v1 again
    assert redis_client.hget(keys.bandit_model, "version") == b"v0001" and store.serving() == v1
    assert holder.refresh() and holder.version == v1
    # Every stored bandit version unusable: the learner starts fresh (and says so).
    for v in (v1, v2):
        _truncate(store.store.path(v) / "model.vw", keep=600)
    redis_client.delete(keys.bandit_model)
    policy, last = store.load_for_learning()
    assert (policy.version, last) == ("v0000", "0-0")


# --- XR-Linear: real PECOS, in a subprocess (a C++ abort would kill pytest) ---------------------

XR_SCRIPT = r"""
import json, shutil, sys
from pathlib import Path
from services.artifacts import ArtifactStore
from services.catalog import Catalog
from services.config import Settings
from services.serving.runtime import xr_holder
from retrievers.xr_linear import XRConfig, XRLinearRetriever

data, catalog, phase = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
settings = Settings(data_dir=data, catalog=catalog)
store = ArtifactStore(settings.models_dir / "xr", "xr")
if phase == "build":
    docs = Catalog.load(catalog).documents()
    for n in (300, 400):
        xr = XRLinearRetriever(XRConfig(threads=1))
        xr.build(docs[:n])
        store.publish(xr.write, {"n_labels": n}, promote=True, report={"reason": "test"})
    print(json.dumps(store.versions()))
elif phase == "unverified":
    XRLinearRetriever.load(store.path(sys.argv[4]))  # what serving did before: PECOS reads bad bytes
    print("loaded")
else:
    out = {}
    holder = xr_holder(settings)  # start-up
    out["startup"] = holder.status()
    out["hits"] = len(holder.current().retrieve("love", 5))
    shutil.copy2(sys.argv[4], store.path("v0002") / sys.argv[5])  # repaired without restart
    out["repaired"] = holder.refresh()
    out["after_repair"] = holder.status()
    v3 = store.publish(holder.current().write, {"n_labels": 400}, promote=True, report={"reason": "test"})
    victim = next(p for p in sorted(store.path(v3).rglob("W.npz")))
    victim.write_bytes(victim.read_bytes()[:1000])  # damaged after promotion: refused at reload
    out["reload_changed"] = holder.refresh()
    out["after_reload"] = holder.status()
    out["hits_after"] = len(holder.current().retrieve("love", 5))
    print(json.dumps(out))
"""


def _run_xr(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", XR_SCRIPT, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})


@pytest.mark.parametrize("damage", ["truncate", "missing"])
def test_truncated_xr_never_reaches_pecos(tmp_path: Path, damage: str) -> None:
    built = _run_xr(str(tmp_path), str(CATALOG), "build")
    assert built.returncode == 0, built.stderr
    assert json.loads(built.stdout.strip().splitlines()[-1]) == ["v0001", "v0002"]
    store = ArtifactStore(tmp_path / "models" / "xr", "xr")
    victim = max(store.path("v0002").rglob("W.npz"), key=lambda p: p.stat().st_size)
    rel = victim.relative_to(store.path("v0002")).as_posix()
    backup = tmp_path / "W.npz.good"
    backup.write_bytes(victim.read_bytes())
    if damage == "truncate":
        _truncate(victim)
        # The control: without verification, libpecos aborts the whole process (SIGABRT, exit 134).
        unverified = _run_xr(str(tmp_path), str(CATALOG), "unverified", "v0002")
        assert unverified.returncode != 0 and "loaded" not in unverified.stdout
    else:
        victim.unlink()
    served = _run_xr(str(tmp_path), str(CATALOG), "serve", str(backup), rel)
    assert served.returncode == 0, served.stderr[-2000:]
    out = json.loads(served.stdout.strip().splitlines()[-1])
    assert out["startup"] == {"version": "v0001", "serving": "v0002", "refused": ["v0002"], "fallback": True}
    assert out["hits"] == 5
    assert out["repaired"] is True
    assert out["after_repair"] == {"version": "v0002", "serving": "v0002", "refused": [], "fallback": False}
    assert out["reload_changed"] is False
    assert out["after_reload"] == {"version": "v0002", "serving": "v0003", "refused": ["v0003"], "fallback": True}
    assert out["hits_after"] == 5
