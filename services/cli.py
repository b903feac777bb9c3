"""`ltrr` command line: build, train, search, serve, work, simulate, replay."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from services.cli_errors import CliError
from services.config import Settings
from services.logging_setup import setup_logging
from services.redis_server import RedisJoinError

log = logging.getLogger("ltrr.cli")


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {}
    if getattr(args, "data_dir", None):
        overrides["data_dir"] = Path(args.data_dir)
    if getattr(args, "catalog", None):
        overrides["catalog"] = Path(args.catalog)
    if getattr(args, "host", None):
        overrides["host"] = args.host
    if getattr(args, "port", None):
        overrides["port"] = args.port
    if getattr(args, "backend", None):
        overrides["backend"] = args.backend
    if getattr(args, "workers", None) is not None:
        overrides["workers"] = args.workers
    s = Settings.from_env(**overrides)
    if not Path(s.catalog).exists():
        raise CliError(f"catalog not found: {s.catalog}")
    return s


def _load_catalog(s: Settings, skip_bad_rows: bool = False):  # type: ignore[no-untyped-def]
    from services.catalog import Catalog, CatalogError

    try:
        return Catalog.load(s.catalog, skip_bad_rows=skip_bad_rows)
    except CatalogError as exc:
        raise CliError(f"{exc}\n(use --skip-bad-rows to log and skip bad rows)") from None


# --- commands ------------------------------------------------------------------------------
def cmd_index_build(args: argparse.Namespace) -> None:
    from services.offline.build import ALL_INDEXES, build_indexes, format_rows
    from services.serving.runtime import connect_redis

    s = _settings(args)
    only = tuple(args.only.split(",")) if args.only else ALL_INDEXES
    unknown = set(only) - set(ALL_INDEXES)
    if unknown:
        raise CliError(f"unknown index {sorted(unknown)}; choose from {', '.join(ALL_INDEXES)}")
    t = time.perf_counter()
    catalog = _load_catalog(s, args.skip_bad_rows)
    print(f"catalog: {len(catalog):,} tracks from {s.catalog} ({time.perf_counter() - t:.1f}s)")
    client, server = connect_redis(s) if "q2e" in only else (None, None)
    try:
        rows = build_indexes(s, catalog, client, only=only, progress=not args.quiet)
    finally:
        if server:
            server.stop()
    print(format_rows(rows))
    print(f"indexes in {s.index_dir}, models in {s.models_dir}  (total {time.perf_counter() - t:.1f}s)")


def cmd_train(args: argparse.Namespace) -> None:
    from services.offline.build import format_rows, train_coldstart, train_ranker_from_log, train_xr

    s = _settings(args)
    if args.what == "xr":
        if args.clicks and not Path(args.clicks).exists():
            raise CliError(f"--clicks: no such file {args.clicks}")
        rows = [train_xr(s, _load_catalog(s), Path(args.clicks) if args.clicks else None, progress=not args.quiet)]
    elif args.what == "ranker" and args.log:
        if not Path(args.log).exists():
            raise CliError(f"--log: no such file or directory {args.log}")
        try:
            rows = [train_ranker_from_log(s, Path(args.log), force=args.force)]
        except ValueError as exc:
            raise CliError(str(exc)) from None
    else:  # cold start: ranker and bandit together (they share the retrieval runs)
        from services.serving.runtime import Runtime

        rt = Runtime(s, start_worker=False)
        try:
            rows = train_coldstart(s, rt, n_queries=args.queries, progress=not args.quiet)
        finally:
            rt.close()
    print(format_rows(rows))


def _print_table(rows: list[tuple], headers: tuple[str, ...]) -> None:
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    widths = [min(w, 40) for w in widths]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    print(fmt.format(*headers))
    print(fmt.format(*("-" * w for w in widths)))
    for r in rows:
        print(fmt.format(*(str(c)[:40] for c in r)))


def cmd_search(args: argparse.Namespace) -> None:
    from services.serving.api_models import SearchRequest

    s = _settings(args)
    try:
        req = SearchRequest(q=args.query, limit=args.k)
    except Exception as exc:
        raise CliError(f"invalid query: {exc.errors()[0]['msg'] if hasattr(exc, 'errors') else exc}") from None
    if args.retriever == "pipeline":
        from services.serving.runtime import Runtime

        rt = Runtime(s, start_worker=False)
        try:
            out = rt.pipeline.search(req.q, req.limit)
            rows = [(i + 1, f"{out.scores[i]:.3f}", rt.catalog.by_id[t].title, rt.catalog.by_id[t].artist,
                     "+".join(out.found_by[t])) for i, t in enumerate(out.record.served)]
            _print_table(rows, ("#", "score", "title", "artist", "found by"))
            print(f"\naction {out.decision.action.key} (p={out.decision.propensity:.2f}), "
                  f"{out.timings_ms['total']:.1f} ms, search_id {out.record.search_id}")
        finally:
            rt.close()
        return
    from services.catalog import Catalog
    from services.serving.runtime import connect_redis, load_retrievers

    settings = s.model_copy(update={"retrievers": (args.retriever,)})
    client, server = connect_redis(settings) if args.retriever == "q2e" else (None, None)
    try:
        catalog = Catalog.load(s.catalog)
        retrievers = load_retrievers(settings, client, catalog).by_name
        if args.retriever not in retrievers:
            raise CliError(f"no {args.retriever} index under {s.data_dir}: run `ltrr index build` first")
        t = time.perf_counter()
        cands = retrievers[args.retriever].retrieve(req.q, req.limit)
        ms = (time.perf_counter() - t) * 1000
        rows = [(c.rank, f"{c.score:.3f}", catalog.by_id[c.track_id].title, catalog.by_id[c.track_id].artist,
                 ", ".join(catalog.by_id[c.track_id].genres)) for c in cands if c.track_id in catalog.by_id]
        _print_table(rows, ("#", "score", "title", "artist", "genres"))
        print(f"\n{len(rows)} results from {args.retriever} in {ms:.1f} ms")
    finally:
        if server:
            server.stop()


def cmd_serve(args: argparse.Namespace) -> None:
    import uvicorn

    s = _settings(args)
    if not s.api_keys:
        log.warning("LTRR_API_KEYS is not set: /feedback and /admin are open. Set keys before exposing this.")
    if s.workers > 1:
        _serve_workers(s)
        return
    from services.serving.api import create_app
    from services.serving.runtime import Runtime, freeze_loaded_heap

    rt = Runtime(s)
    freeze_loaded_heap()
    print(f"ltrr serving on http://{s.host}:{s.port}/  (web page: http://{s.host}:{s.port}/, "
          f"API docs: http://{s.host}:{s.port}/docs)", flush=True)
    uvicorn.run(create_app(rt), host=s.host, port=s.port, log_config=None, access_log=False)


def _serve_workers(s: Settings) -> None:
    """Several uvicorn worker processes on one port, sharing one Redis: the embedded default's
    redis-server is started here, in the parent, so that every worker sees the same feedback,
    Q2E memory and bandit checkpoints. Each worker runs a feedback consumer of its own (events
    are split by the consumer group; one of them holds the bandit-learning lease) and hot-reloads
    models like any replica. Settings reach the workers through the environment."""
    import shutil

    import uvicorn

    from services.metrics import MULTIPROC_ENV
    from services.redis_server import EmbeddedRedis

    server = None
    env = {"LTRR_DATA_DIR": str(s.data_dir), "LTRR_CATALOG": str(s.catalog), "LTRR_HOST": s.host,
           "LTRR_PORT": str(s.port), "LTRR_BACKEND": s.backend, "LTRR_LOG_LEVEL": s.log_level}
    if not s.redis_url:
        # Owned (and restarted when it dies) by this parent, or joined if another process on
        # this data dir already runs it; the workers reach it through REDIS_URL either way.
        server = EmbeddedRedis(s.redis_dir).open()
        env["REDIS_URL"] = server.url
    prom = s.data_dir / "prometheus-multiproc"
    shutil.rmtree(prom, ignore_errors=True)  # samples of a previous run's processes would be summed in
    prom.mkdir(parents=True)
    env[MULTIPROC_ENV] = str(prom)
    os.environ.update(env)
    print(f"ltrr serving on http://{s.host}:{s.port} with {s.workers} worker processes "
          f"(docs: http://{s.host}:{s.port}/docs)", flush=True)
    try:
        uvicorn.run("services.serving.api:app_from_env", factory=True, workers=s.workers, host=s.host, port=s.port,
                    log_config=None, access_log=False)
    finally:
        if server:
            server.stop()


def cmd_worker(args: argparse.Namespace) -> None:
    import signal

    from services.learning.worker import FeedbackWorker
    from services.serving.runtime import BanditStore, connect_redis

    s = _settings(args)
    if not s.redis_url:
        raise CliError("`ltrr worker` joins a running service: set REDIS_URL (the embedded API runs its own worker)")
    from services.keys import Keys
    from services.offline.build import q2e_store

    client, _ = connect_redis(s)
    keys = Keys()
    worker = FeedbackWorker(s, client, keys, q2e_store=q2e_store(client), catalog=_load_catalog(s),
                            bandit_store=BanditStore(s, client, keys), consumer=args.consumer).start()
    stop = {"now": False}

    def _term(*_: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, _term)
    signal.signal(signal.SIGINT, _term)
    log.info("worker %s consuming %s", worker.consumer, keys.feedback_stream)
    while not stop["now"] and worker.alive():
        time.sleep(0.2)
    worker.stop()


def cmd_up(args: argparse.Namespace) -> None:
    """The README's first command: index what is missing, train what is missing, serve."""
    from services.offline.build import format_rows

    s = _settings(args)
    have_lex = (s.index_dir / "lexical").exists()
    have_dense = (s.index_dir / "dense").exists()
    from services.artifacts import ArtifactStore

    missing = [n for n, ok in (("lexical", have_lex), ("dense", have_dense),
                               ("structured", (s.index_dir / "structured").exists()),
                               ("xr", ArtifactStore(s.models_dir / "xr", "xr").versions() != []),
                               ("suggest", ArtifactStore(s.models_dir / "suggest", "suggest").versions() != []))
               if not ok]
    if missing or args.rebuild:
        ns = argparse.Namespace(**{**vars(args), "only": ",".join(missing if not args.rebuild else []) or None})
        cmd_index_build(ns)
    from services.serving.runtime import Runtime

    rt = Runtime(s, start_worker=False)
    try:
        from services.offline.build import build_indexes

        rows = build_indexes(s, rt.catalog, rt.redis, only=("q2e",), progress=not args.quiet)  # no-op when seeded
        # No ranker yet, or none this code can load (trained on another feature registry): the
        # cold start trains one, so an upgraded data dir does not serve the fallback ranking.
        if rt.ranker.current() is None or args.rebuild:
            from services.offline.build import train_coldstart

            rows += train_coldstart(s, rt, n_queries=args.queries, progress=not args.quiet)
        print(format_rows(rows))
    finally:
        rt.close()
    cmd_serve(args)


def cmd_catalog_synth(args: argparse.Namespace) -> None:
    from services.catalog import Catalog, synthesize

    if args.tracks < 1 or args.tracks > 50_000_000:
        raise CliError("--tracks must be between 1 and 50,000,000")
    s = _settings(args)
    t = time.perf_counter()
    synthesize(Catalog.load(s.catalog), args.tracks, Path(args.out), seed=args.seed, progress=not args.quiet)
    print(f"wrote {args.tracks:,} synthetic tracks to {args.out} in {time.perf_counter() - t:.1f}s")


def cmd_catalog_validate(args: argparse.Namespace) -> None:
    s = _settings(args)
    cat = _load_catalog(s, args.skip_bad_rows)
    print(f"{s.catalog}: {len(cat):,} valid tracks")


def cmd_simulate(args: argparse.Namespace) -> None:
    from services.offline.simulate import main as simulate_main

    simulate_main(args, _settings(args))


def cmd_replay(args: argparse.Namespace) -> None:
    from services.offline.replay_cli import main as replay_main

    replay_main(args)


# --- parser --------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ltrr", description="music search that learns to rank and to retrieve")
    p.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING (default: LTRR_LOG_LEVEL or INFO)")
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--data-dir", help="where indexes, models, logs and Redis data live (default ./var)")
        sp.add_argument("--catalog", help="catalog CSV(.gz) (default: the shipped data/tracks.csv.gz)")
        sp.add_argument("--quiet", action="store_true", help="no progress bars")

    idx = sub.add_parser("index", help="build retrieval indexes").add_subparsers(dest="sub", required=True)
    b = idx.add_parser("build", help="build lexical, dense, q2e and xr from the catalog")
    common(b)
    b.add_argument("--only", help="comma list of lexical,dense,structured,q2e,xr,suggest")
    b.add_argument("--skip-bad-rows", action="store_true", help="log and skip invalid catalog rows")
    b.add_argument("--backend", choices=["embedded", "opensearch"],
                   help="where lexical/dense indexes live (default LTRR_BACKEND or embedded)")
    b.set_defaults(func=cmd_index_build)

    tr = sub.add_parser("train", help="train models")
    common(tr)
    tr.add_argument("what", choices=["xr", "ranker", "coldstart"], help="xr, ranker (--log) or coldstart")
    tr.add_argument("--clicks", help="xr: joined log (.jsonl) or TSV query<TAB>track_id[<TAB>weight]")
    tr.add_argument("--log", help="ranker: joined log file or directory (default: cold start)")
    tr.add_argument("--force", action="store_true",
                    help="ranker: serve the retrained model even if the promotion gate refuses it")
    tr.add_argument("--queries", type=int, default=10000, help="cold start: training queries")
    tr.set_defaults(func=cmd_train)

    se = sub.add_parser("search", help="search from the command line")
    common(se)
    se.add_argument("query")
    se.add_argument("--retriever", default="pipeline",
                    choices=["pipeline", "lexical", "dense", "xr", "q2e", "structured"])
    se.add_argument("-k", type=int, default=10)
    se.set_defaults(func=cmd_search)

    sv = sub.add_parser("serve", help="serve the API")
    common(sv)
    sv.add_argument("--host")
    sv.add_argument("--port", type=int)
    sv.add_argument("--workers", type=int, help="API worker processes (default LTRR_WORKERS or the core count)")
    sv.set_defaults(func=cmd_serve)

    up = sub.add_parser("up", help="build what is missing, train cold-start models, serve")
    common(up)
    up.add_argument("--host")
    up.add_argument("--port", type=int)
    up.add_argument("--workers", type=int, help="API worker processes (default LTRR_WORKERS or the core count)")
    up.add_argument("--rebuild", action="store_true", help="rebuild and retrain everything")
    up.add_argument("--queries", type=int, default=10000, help="cold-start training queries")
    up.add_argument("--skip-bad-rows", action="store_true")
    up.set_defaults(func=cmd_up)

    wk = sub.add_parser("worker", help="run a feedback worker against REDIS_URL")
    common(wk)
    wk.add_argument("--consumer", help="stable consumer name (default host-pid)")
    wk.set_defaults(func=cmd_worker)

    cat = sub.add_parser("catalog", help="catalog tools").add_subparsers(dest="sub", required=True)
    sy = cat.add_parser("synth", help="write a synthetic catalog with the real one's distributions")
    common(sy)
    sy.add_argument("--tracks", type=int, required=True)
    sy.add_argument("--out", required=True)
    sy.add_argument("--seed", type=int, default=0)
    sy.set_defaults(func=cmd_catalog_synth)
    va = cat.add_parser("validate", help="validate a catalog file")
    common(va)
    va.add_argument("--skip-bad-rows", action="store_true")
    va.set_defaults(func=cmd_catalog_validate)

    # Imported here, not at the top: their modules pull in numpy/pandas, which `ltrr serve`'s
    # start-up does not need. A broken import fails loudly.
    from services.offline.replay_cli import add_arguments as replay_args
    from services.offline.simulate import add_arguments as sim_args

    sm = sub.add_parser("simulate", help="simulated users against the pipeline or the HTTP API")
    common(sm)
    sim_args(sm)
    sm.set_defaults(func=cmd_simulate)
    rp = sub.add_parser("replay", help="off-policy evaluation of logged traffic")
    replay_args(rp)
    rp.set_defaults(func=cmd_replay)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level or os.environ.get("LTRR_LOG_LEVEL", "INFO"),
                  json_logs=os.environ.get("LTRR_LOG_JSON", "") in ("1", "true"))
    try:
        args.func(args)
    except CliError as exc:
        print(f"ltrr: error: {exc}", file=sys.stderr)
        return 2
    except RedisJoinError as exc:  # the data dir's Redis is locked by a process whose server is dead
        print(f"ltrr: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
