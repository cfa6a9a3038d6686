"""sa-serve on Ray Serve: the same app (API, web page, batching) in replicas over GPUs and machines.

One application of two deployments:
- `sa-serve`, the ingress: each replica loads the model and serves `create_app` on it, so dynamic
  batching is done once, by our batcher in each replica (never also by `@serve.batch`). One GPU
  per replica (`--device cuda`, or the cluster has GPUs), else `--replica-cpus` CPUs. A fixed
  count (`--replicas`) or autoscaling on ongoing requests and jobs (`--min-replicas`/
  `--max-replicas`, `jobs_and_requests_policy`).
- `jobs`, one replica holding every job (`jobs.JobBoard`): any replica reads or cancels any job,
  each replica's worker claims queued jobs from it, and a job whose replica died is queued again
  for another (its lease expires).

`sa-serve --ray` deploys it from the command line; `app_builder` deploys it from a Serve config
file (`serve run` / `serve deploy`), its `args` being sa-serve's options. This module imports Ray
(the [ray] extra); what can be checked without it is in `ray_options`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from typing import Any

from ray import serve
from ray.serve.config import AutoscalingContext
from ray.serve.handle import DeploymentHandle

from stable_audio_rt.errors import ConfigError
from stable_audio_rt.runtime.requests import ResolvedRequest
from stable_audio_rt.serve.app import SharedJobs, create_app
from stable_audio_rt.serve.cli import API_KEY_VARIABLE, build_parser, loaded, settings_from_arguments
from stable_audio_rt.serve.draining import Drain
from stable_audio_rt.serve.jobs import LOG, Claim, JobBoard, Progress, Reading, Refusal
from stable_audio_rt.serve.ray_options import (
    most_replicas,
    options_to_argv,
    replica_count_options,
    replica_cpus,
)

APP_NAME = "sa-serve"
INGRESS_NAME = "sa-serve"
BOARD_NAME = "jobs"
# A running job whose replica has not reported its steps for this long (seconds) is queued again:
# many report periods (app.SHARED_REPORT_S), and longer than Serve takes to see a replica die.
JOB_LEASE_S = 10.0
# Requests a replica takes at once beyond its own queue (--max-queue): job polls, downloads,
# /health and /metrics, answered while its generations run.
READ_HEADROOM = 32
# Calls the job board takes at once: every replica's claim (a long poll), reports and reads.
BOARD_MAX_ONGOING = 1000
# A Ray started by sa-serve --ray (no --address) listens on this machine only. Ray turns a
# loopback node address into the machine's network one (`_node_ip_address="127.0.0.1"` changes
# nothing), so its GCS, raylets and workers would listen on every interface; with its
# cluster mode off, the switch Ray keeps for single-machine Windows and macOS, the node is
# 127.0.0.1 and every one of its ports is bound there (checked with `ss -ltn`, Ray 2.60).
LOCAL_RAY_ADDRESS = "127.0.0.1"
SINGLE_MACHINE_VARIABLE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
# How long a stopping replica may take to finish the jobs it runs without --job-timeout-s
# (seconds); past it, Ray stops it and the board's lease queues them again.
DRAIN_TIMEOUT_S = 600.0
# How often the waiting command line looks for a stop signal (seconds).
SIGNAL_POLL_S = 0.5
# The longest a call to the job board may take (seconds) beyond its own wait.
BOARD_TIMEOUT_S = 30.0
# How long a stop asks the board whether it is up before taking the app for never deployed (s).
BOARD_PROBE_S = 5.0


class SharedJobBoard(JobBoard):
    """The job board as its own deployment: it logs each job's end, as sa-serve does."""

    def __init__(self, *args: Any) -> None:
        logging.basicConfig(level=logging.INFO, format="sa-serve: %(message)s")
        super().__init__(*args)


class RemoteBoard:
    """The job board served by Ray Serve, called as `jobs.Board` through its handle. A call not
    answered in BOARD_TIMEOUT_S (the board's replica gone, and no other yet) raises TimeoutError:
    the server answers 500 and a worker asks again, never hangs."""

    def __init__(self, handle: DeploymentHandle) -> None:
        self.handle = handle

    async def _call(self, method: str, *args: Any, wait_s: float = 0.0) -> Any:
        return await asyncio.wait_for(getattr(self.handle, method).remote(*args), BOARD_TIMEOUT_S + wait_s)

    async def submit(
        self, resolved: ResolvedRequest, response_format: str, key: Hashable | None
    ) -> dict | Refusal:
        return await self._call("submit", resolved, response_format, key)

    async def read(self, job_id: str, index: int | None = 0, download: bool = False) -> Reading | None:
        return await self._call("read", job_id, index, download)

    async def cancel(self, job_id: str) -> dict | None:
        return await self._call("cancel", job_id)

    async def claim(
        self, owner: str, max_rows: int, wait_s: float, fill_s: float = 0.0
    ) -> list[Claim] | None:
        return await self._call("claim", owner, max_rows, wait_s, fill_s, wait_s=wait_s + fill_s)

    async def report(self, owner: str, steps: dict[str, tuple[int, int]]) -> Progress:
        return await self._call("report", owner, steps)

    async def finish(
        self, job_id: str, attempt: int, steps_done: int, content: list[bytes] | None, error: str | None
    ) -> None:
        await self._call("finish", job_id, attempt, steps_done, content, error)


@serve.ingress()
class ServeReplica:
    """One replica of the ingress: sa-serve's app on its own copy of the model."""

    def __init__(self, argv: list[str], board: DeploymentHandle) -> None:
        logging.basicConfig(level=logging.INFO, format="sa-serve: %(message)s")
        args = build_parser().parse_args(argv)
        self.pipe, self.settings = loaded(args, settings_from_arguments(args, ""))
        owner = serve.get_replica_context().replica_id.unique_id
        self.shared = SharedJobs(RemoteBoard(board), owner)

    def __serve_build_asgi_app__(self):
        return create_app(self.pipe, self.settings, self.shared)

    def record_autoscaling_stats(self) -> dict[str, float]:
        """For `jobs_and_requests_policy`: the jobs this replica runs and those queued (`app` is
        the ASGI app Serve took from `__serve_build_asgi_app__`)."""
        return self.app.state.worker.load()


def jobs_and_requests_policy(ctx: AutoscalingContext) -> tuple[float, dict]:
    """Ray Serve's default rule (replicas = ongoing requests / target per replica) with the jobs
    counted as requests: those the replicas run and those queued on the board, so a backlog of
    jobs adds replicas as one of requests does. Serve applies the bounds and delays around it."""
    if ctx.current_num_replicas == 0:
        return ctx.target_num_replicas, {}
    metrics = ctx.aggregated_metrics or {}
    running = sum(metrics.get("jobs_running", {}).values())
    queued = max(metrics.get("jobs_queued", {}).values(), default=0.0)
    return (ctx.total_num_requests + running + queued) / ctx.config.get_target_ongoing_requests(), {}


def build_application(argv: list[str], cluster_gpus: int) -> serve.Application:
    """The application for sa-serve's arguments `argv` (checked here, before any replica loads).
    Replicas take a GPU each with --device cuda, or without --device when `cluster_gpus` > 0."""
    args = build_parser().parse_args(argv)
    settings = settings_from_arguments(args, "")
    # --device says where; without it, GPUs if the cluster has some now (a config file for a
    # cluster whose GPU nodes join later should say `device: cuda`).
    device = args.device or ""
    on_gpus = device.startswith("cuda") or (not device and cluster_gpus > 0)
    counts = replica_count_options(args, cluster_gpus if on_gpus else 0)
    resources = {"num_gpus": 1} if on_gpus else {"num_cpus": replica_cpus(args)}
    if settings.api_key is not None:  # to the replicas, wherever they run, not in their arguments
        resources["runtime_env"] = {"env_vars": {API_KEY_VARIABLE: settings.api_key}}
        argv = _without_api_key(argv)
    board = serve.deployment(SharedJobBoard, name=BOARD_NAME).options(
        num_replicas=1,
        max_ongoing_requests=BOARD_MAX_ONGOING,
        ray_actor_options={"num_cpus": 0},
        logging_config={"enable_access_log": False},  # claims and reports, many a second
    )
    ingress = serve.deployment(ServeReplica, name=INGRESS_NAME).options(
        max_ongoing_requests=settings.max_queue + READ_HEADROOM,
        ray_actor_options=resources,
        # A replica stopping (scaled down, redeployed) first finishes the jobs it runs.
        graceful_shutdown_timeout_s=settings.job_timeout_s or DRAIN_TIMEOUT_S,
        **counts,
    )
    max_jobs = settings.max_queue * most_replicas(counts)
    jobs = board.bind(
        settings.job_ttl_s, settings.max_result_bytes, settings.job_timeout_s, JOB_LEASE_S, max_jobs
    )
    return ingress.bind(argv, jobs)


def _without_api_key(argv: list[str]) -> list[str]:
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--api-key":
            skip = True
        elif not arg.startswith("--api-key="):
            kept.append(arg)
    return kept


def app_builder(args: dict[str, Any]) -> serve.Application:
    """For a Serve config file: `import_path: stable_audio_rt.serve.ray_serve:app_builder`, its
    `args` sa-serve's long options with underscores (`{"model": "...", "max_batch": 4,
    "min_replicas": 1, "max_replicas": 8, "no_cuda_graph": true}`)."""
    import ray

    return build_application(options_to_argv(args), int(ray.cluster_resources().get("GPU", 0)))


def serve_on_ray(args: argparse.Namespace, argv: list[str]) -> None:
    """sa-serve --ray: connect to (or start) Ray, deploy, and serve until SIGINT or SIGTERM; then
    drain as sa-serve does (`_drain`) and delete the app (with Serve and Ray themselves when this
    process started them: a cluster's other applications are left alone). A signal while it
    deploys stops it there."""
    import ray

    logging.basicConfig(level=logging.INFO, format="sa-serve: %(message)s")
    if args.address is None:  # a Ray of this process alone: nothing else may join it
        start_local_ray()
    else:
        ray.init(address=args.address)
    stop, signals = threading.Event(), []

    def on_signal(number: int, _frame: object) -> None:
        signals.append(number)
        stop.set()

    # After ray.init, whose own SIGTERM handler would kill the replicas.
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, on_signal)
    serving = False
    try:
        application = build_application(argv, int(ray.cluster_resources().get("GPU", 0)))
        serve.start(http_options={"host": args.host, "port": args.port})
        print(f"sa-serve: deploying on Ray ({ray.cluster_resources()})", flush=True)
        # Deployed in a thread of its own: a stop signal is heeded while Serve waits for replicas
        # (one that Ray cannot place would keep it waiting for ever).
        deployed: Future[None] = Future()
        threading.Thread(target=_deploy, args=(application, deployed), daemon=True).start()
        # Woken now and then: a signal may reach one of Ray's threads, and only the main thread
        # runs Python's handlers.
        while not stop.wait(SIGNAL_POLL_S):
            if not serving and deployed.done():
                deployed.result()  # a failed deploy raises here
                serving = True
                print(f"sa-serve: serving on http://{args.host}:{args.port} through Ray Serve", flush=True)
        # Drained even before Serve says the app runs: its replicas may take work before that.
        drained = _drain(args.drain_grace_s, lambda: len(signals) > 1, serving)
        if not drained:
            why = "its job board does not answer" if serving else "the app had not finished deploying"
            print(f"sa-serve: stopping without a drain: {why}", flush=True)
        # Deployed meanwhile (Serve's word can come after its replicas took work): deleted as such.
        serving = serving or (deployed.done() and deployed.exception() is None)
    finally:
        # A deploy still waiting for replicas is not deleted (Serve would wait for them first):
        # shutdown ends it.
        if serving or args.address is not None:
            # The app first, the proxy still up: its replicas answer the requests they hold.
            serve.delete(APP_NAME)
        if args.address is None:
            serve.shutdown()
        ray.shutdown()


def _drain(grace_s: float, cut_short: Callable[[], bool], serving: bool) -> bool:
    """The first stop signal's drain (draining.py), over every replica through the shared job
    board: new requests and jobs refused (503), the accepted jobs run to their end, their results
    downloadable until fetched or `grace_s` after the work ran out; a second signal cancels the
    jobs left. Then the workers claim no more. (Requests still open are answered as the app's
    replicas stop.) False, and nothing done, when the board does not answer: briefly while the
    app deploys (`serving` False: it never got that far), else as long as any board call may."""

    def call(method: str, timeout_s: float = BOARD_TIMEOUT_S) -> Any:
        return getattr(board, method).remote().result(timeout_s=timeout_s)

    try:
        board = serve.get_deployment_handle(BOARD_NAME, app_name=APP_NAME)
        call("left", BOARD_TIMEOUT_S if serving else BOARD_PROBE_S)  # whether it answers
    except Exception:  # no app, or its board not started: nothing was accepted
        return False
    drain = Drain(lambda: call("left"), grace_s, lambda: call("stop_taking"))
    drain.start()
    while not drain.over(time.monotonic()):
        if cut_short():
            LOG.info("stopping now: the jobs left are cancelled")
            call("cancel_all")
            break
        time.sleep(SIGNAL_POLL_S)
    call("close")
    return True


def _deploy(application: serve.Application, deployed: Future[None]) -> None:
    try:
        serve.run(application, name=APP_NAME, route_prefix="/")
    except Exception as e:  # said by the main thread, which stops everything
        deployed.set_exception(e)
    else:
        deployed.set_result(None)


def start_local_ray(**options: Any) -> None:
    """`ray.init(**options)` for a Ray of this machine alone, every port of it on 127.0.0.1
    (see SINGLE_MACHINE_VARIABLE); refused if Ray still chose another address."""
    import ray
    from ray._private import ray_constants

    os.environ[SINGLE_MACHINE_VARIABLE] = "0"  # for the processes Ray starts
    ray_constants.ENABLE_RAY_CLUSTER = False  # read at each call: Ray may be imported already
    ray.init(include_dashboard=False, **options)
    node = ray.util.get_node_ip_address()
    if node != LOCAL_RAY_ADDRESS:
        ray.shutdown()
        raise ConfigError(
            f"this Ray ({ray.__version__}) put its node on {node}, not {LOCAL_RAY_ADDRESS}: it would "
            "listen beyond this machine; start a Ray cluster yourself and give --address"
        )
