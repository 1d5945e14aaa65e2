"""Predict a folder on a Ray cluster: the batch stages of the local runner, cases scheduled on free workers.

The driver (this process) lists the inputs with :func:`seg3d.inference.stages.list_inputs`, exactly as the
local runner does, so ``--continue``, parts and listing problems behave the same. It starts a pool of Ray
actors (:class:`CaseWorker`); each loads the model once and keeps it, and runs
:func:`~seg3d.inference.stages.read_job` → :func:`~seg3d.inference.stages.predict_job` →
:func:`~seg3d.inference.stages.write_job` with up to ``cases_in_flight`` cases overlapping (the next case is
read while the network runs on the current one, as in the local runner). The driver hands the next case to
whichever worker has a free slot (dynamic scheduling: a GPU worker simply takes more cases than a CPU worker),
collects :class:`~seg3d.inference.stages.CaseRecord`\\ s, draws progress (cases/s, ETA), and writes the one
manifest with :func:`~seg3d.inference.stages.write_manifest`.

Storage: inputs and outputs live on a file system every node mounts at the same path (NFS, Lustre, ...).
Before any case is submitted every worker proves it: it reads the first input, reads a token file the
driver wrote into the output folder (the same folder, not a node-local one of the same name) and writes a
file there. Workers never send images through Ray: they read and write the shared folders themselves.

Failures: a case whose input is bad fails alone (its record names the file and the reason). A worker process
or node that dies mid-case is restarted by Ray (``max_restarts``) and the case is submitted again, to the
next free worker, at most ``max_attempts`` times in all; each retry is listed in the case's manifest entry.
Outputs are written atomically by the stages; a worker killed mid-write leaves only a hidden
``.<case>.*.part*`` file, which the driver removes before the case is tried again.

Cluster: ``address=None`` starts a private Ray cluster on this machine (loopback only, no dashboard, a
bounded object store) and stops it at the end; ``"auto"`` or ``HOST:PORT`` joins a running cluster
(``ray start --head`` / ``ray start --address``, README). A driver already connected (``ray.init`` called
by the caller) is used as it is.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import re
import secrets
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seg3d.atomic import partial_files, write_text_atomic
from seg3d.core.settings import PredictSettings, RaySettings, settings_from
from seg3d.errors import Seg3dError
from seg3d.inference import stages
from seg3d.inference.accounting import preflight
from seg3d.inference.stages import CaseRecord, Job
from seg3d.progress import LogFn, ProgressFn, log_info

RAY_MISSING = "--engine ray needs Ray, which is not installed: pip install 'seg3d[ray]'"
LOOPBACK = "127.0.0.1"
PROBE_PREFIX = ".seg3d-probe-"


def check_ray_installed() -> None:
    """A one-line :class:`Seg3dError` naming the extra when Ray is not installed (without importing it: Ray
    reads some of its settings at import, see :func:`_loopback_only`)."""
    if "ray" in sys.modules and sys.modules["ray"] is None or \
            "ray" not in sys.modules and importlib.util.find_spec("ray") is None:
        raise Seg3dError(RAY_MISSING)


def require_ray():
    """The ``ray`` module, or a one-line :class:`Seg3dError` naming the extra that installs it."""
    try:
        import ray
    except ImportError:
        raise Seg3dError(RAY_MISSING) from None
    return ray


# --- the cluster ---------------------------------------------------------------------------------------------

def _is_loopback(address: str | None) -> bool:
    host = (address or "").rsplit(":", 1)[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


def _loopback_only() -> None:
    """Ray's own switches for a cluster on this machine: every Ray process binds and talks on 127.0.0.1, and
    Ray's usage statistics (which would be sent to the internet) are off. They are environment variables of
    Ray's (read when ``ray`` is imported and by the processes it spawns), so they are set before the import;
    seg3d itself reads none."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # single-node mode: node address = 127.0.0.1
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:  # Ray imported earlier in this process: its copy of the switch, too
        constants.ENABLE_RAY_CLUSTER = False


@contextmanager
def ray_cluster(settings: RaySettings, log: Callable[[str], None] | None = None) -> Iterator[Any]:
    """Connect this process to Ray for the duration of the block; yields the ``ray`` module.

    ``settings.address``: ``None`` starts a private cluster on this machine (127.0.0.1 only, no dashboard,
    object store bounded to ``settings.object_store_mb``) and stops it afterwards; ``"auto"`` or
    ``HOST:PORT`` joins a running cluster and only disconnects. When Ray is already initialised in this
    process, that connection is used and left open.

    Raises:
        Seg3dError: Ray is not installed, or the cluster cannot be reached or started.
    """
    if settings.address is None or _is_loopback(settings.address):
        _loopback_only()
    if settings.address not in (None, "auto"):
        _check_reachable(settings.address)
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    kwargs: dict[str, Any] = {"include_dashboard": False, "configure_logging": False, "log_to_driver": False}
    if settings.address is None:
        # Ray turns on its token authentication for a private cluster and says so on every start: keep it on,
        # without the notice
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        # Ray starts its workers at nice 15 (to keep its own daemons responsive); local predict runs at the
        # user's priority, and on a shared server nice 15 let other users' processes take the cores (measured,
        # benchmarks/RESULTS.md). The raylet reads this switch when it starts.
        os.environ["RAY_worker_niceness"] = "0"
        where = "a local Ray cluster (127.0.0.1)"
        kwargs.update(address="local", object_store_memory=settings.object_store_mb * 1024 ** 2)
    else:
        where = f"the Ray cluster at {settings.address}"
        kwargs.update(address=settings.address)
        kwargs.pop("include_dashboard")
    if log:
        log(f"starting {where}" if settings.address is None else f"joining {where}")
    try:
        ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as e:
        hint = "" if settings.address is None else " (is it running? `ray start --head` on the head node)"
        raise Seg3dError(f"cannot connect to {where}{hint}: {str(e).splitlines()[0]}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """Fail fast when nothing listens at ``HOST:PORT`` (Ray itself retries for minutes)."""
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as e:
        raise Seg3dError(f"cannot reach the Ray cluster at {address} ({e.strerror or e}): is `ray start --head` "
                         "running there, and is this the address it printed?") from None


# --- which workers -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class WorkerSpec:
    """One worker of the pool: the device its model runs on and the Ray resources it reserves."""

    index: int
    device: str  # "cuda" or "cpu"
    num_cpus: int
    num_gpus: float


def plan_workers(settings: RaySettings, nodes: list[dict[str, float]], device: str = "auto") -> list[WorkerSpec]:
    """The pool for a cluster whose alive nodes have ``nodes`` resources (``{"CPU": n, "GPU": g}`` each).

    GPU workers first (``gpus_per_worker`` GPUs and ``cpus_per_worker`` CPUs each, as many as the GPUs hold),
    then CPU workers on the CPUs left; ``settings.workers`` caps the total (``None``: as many as fit).
    ``device``: ``auto`` (GPU and CPU workers share the cohort), ``cpu`` (no GPU workers) or ``cuda``
    (GPU workers only).

    Raises:
        Seg3dError: no node has ``cpus_per_worker`` CPUs, ``cuda`` without GPUs, or more workers than fit.
    """
    if not nodes:
        raise Seg3dError("the Ray cluster has no alive node")
    most_cpus = max(int(n.get("CPU", 0)) for n in nodes)
    cpus = settings.cpus_per_worker or max(1, min(4, most_cpus))
    if cpus > most_cpus:
        raise Seg3dError(f"--cpus-per-worker {cpus}: no node of the Ray cluster has that many CPUs "
                         f"(the largest has {most_cpus})")
    gpus = settings.gpus_per_worker if device != "cpu" else 0.0
    gpu_slots, cpu_slots = 0, 0
    for n in nodes:
        free_cpus = int(n.get("CPU", 0))
        here = min(int(n.get("GPU", 0) / gpus + 1e-9), free_cpus // cpus) if gpus > 0 else 0
        gpu_slots += here
        cpu_slots += (free_cpus - here * cpus) // cpus
    if device.startswith("cuda"):
        if gpu_slots == 0:
            raise Seg3dError(f"--device {device}: the Ray cluster has no node with {gpus:g} free GPU(s) and "
                             f"{cpus} CPU(s) for a worker")
        cpu_slots = 0
    want = settings.workers if settings.workers is not None else gpu_slots + cpu_slots
    if want > gpu_slots + cpu_slots:
        raise Seg3dError(f"--workers {want} do not fit the Ray cluster: it has room for {gpu_slots} GPU "
                         f"worker(s) ({gpus:g} GPU(s) each) and {cpu_slots} CPU worker(s) ({cpus} CPU(s) "
                         f"each); lower --workers or --cpus-per-worker")
    n_gpu = min(want, gpu_slots)
    specs = [WorkerSpec(i, "cuda", cpus, gpus) for i in range(n_gpu)]
    specs += [WorkerSpec(i, "cpu", cpus, 0.0) for i in range(n_gpu, want)]
    if not specs:
        raise Seg3dError("no worker fits the Ray cluster")
    return specs


def alive_nodes(ray) -> list[dict[str, float]]:
    """Total resources of each alive node of the connected cluster."""
    return [dict(n.get("Resources", {})) for n in ray.nodes() if n.get("Alive")]


# --- the worker ----------------------------------------------------------------------------------------------

class CaseWorker:
    """One Ray actor: the model loaded once, cases run through read → network → write, overlapping.

    Each stage holds its own lock, so with two cases in flight one is read or written while the other is on
    the network, as in the local runner's pipeline. Never raises for a case: a bad input becomes a ``failed``
    record.
    """

    def __init__(self, index: int, model_dir: str, settings: PredictSettings, threads: int):
        from seg3d.core.device import set_threads

        self.identity = {"worker": index, "node": _node_address(), "host": socket.gethostname(),
                         "pid": os.getpid(), "device": settings.device, "cpus": threads}
        self.label = f"worker {index} ({settings.device}, pid {os.getpid()} on {self.identity['node']})"
        self.load_error: str | None = None
        self.predictor = None
        try:
            set_threads(threads)
            from seg3d.inference.predictor import Predictor

            self.predictor = Predictor(model_dir, settings)
        except Exception as e:  # noqa: BLE001 - reported by probe() as this worker's problem
            self.load_error = str(e) if isinstance(e, Seg3dError) else f"{type(e).__name__}: {e}"
        self._read, self._network, self._write = threading.Lock(), threading.Lock(), threading.Lock()

    def describe(self) -> dict[str, Any]:
        """Where this worker runs and what it loaded (the manifest's ``ray.workers`` entries)."""
        out = dict(self.identity, label=self.label)
        if self.predictor is not None:
            from seg3d.core.device import precision_warning, resolve_precision

            if self.predictor.backend == "torch":
                dtype = resolve_precision(self.predictor.precision, self.predictor.device)
                precision = str(dtype).replace("torch.", "") if dtype is not None else "float32"
            else:  # the runtime's own rule (OpenVINO: fp32 unless bf16 or int8 was asked for)
                precision = self.predictor.precision
            out.update(device=str(self.predictor.device), precision=precision, predictor=self.predictor.describe())
            warning = precision_warning(self.predictor.precision, self.predictor.device)
            if warning:
                out["warning"] = warning
        return out

    def probe(self, in_dir: str, samples: list[tuple[str, int]], out_dir: str, token_name: str,
              token: str) -> list[str]:
        """Problems this worker has with the run's folders (empty: none). Reads the ``samples`` (path, size)
        inputs, reads the driver's token file in ``out_dir`` and writes (then removes) a file of its own."""
        problems = [f"cannot load the model: {self.load_error}"] if self.load_error else []
        if not Path(in_dir).is_dir():
            problems.append(f"cannot see the input folder {in_dir}")
        else:
            for path, size in samples:
                try:
                    with open(path, "rb") as f:
                        f.read(64)
                    if os.path.getsize(path) != size:
                        problems.append(f"sees {path} with {os.path.getsize(path)} bytes, the driver {size}: "
                                        "not the same storage")
                except OSError as e:
                    problems.append(f"cannot read the input {path} ({e.strerror or e})")
        out = Path(out_dir)
        if not out.is_dir():
            return problems + [f"cannot see the output folder {out_dir}"]
        try:
            seen = (out / token_name).read_text()
        except OSError:
            seen = None
        if seen != token:
            problems.append(f"sees a different output folder {out_dir} (the driver's file {token_name} is "
                            "missing there): it must be on storage shared by every node")
        mine = out / f"{token_name}-{self.identity['host']}-{os.getpid()}"
        try:
            write_text_atomic(mine, token)
            mine.unlink()
        except OSError as e:
            problems.append(f"cannot write the output folder {out_dir} ({e.strerror or e})")
        return problems

    def run(self, job: Job) -> CaseRecord:
        """Read, predict and write ``job``; a failure is the case's ``failed`` record."""
        p = self.predictor
        try:
            with self._read:
                read = stages.read_job(job, p)
            with self._network:
                probs = stages.predict_job(read, p)
                read.data = None  # bounded memory while writing
            with self._write:
                rec = stages.write_job(read, probs, p)
        except Exception as e:  # noqa: BLE001 - one bad case must not stop the batch
            rec = stages.failed_record(job, e)
        rec.extra["worker"] = self.label
        return rec


def _node_address() -> str:
    try:
        import ray

        return ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001 - outside Ray (tests calling the class directly)
        return socket.gethostname()


# --- the driver ----------------------------------------------------------------------------------------------

@dataclass
class _Attempt:
    job: Job
    number: int = 1
    retries: list[dict[str, Any]] = field(default_factory=list)
    avoid: set[int] = field(default_factory=set)  # workers this case died on


def _worker_died_types(ray) -> tuple[type[BaseException], ...]:
    ex = ray.exceptions
    return tuple(t for t in (getattr(ex, n, None) for n in ("RayActorError", "WorkerCrashedError",
                                                            "NodeDiedError", "ObjectLostError"))
                 if t is not None)


class _Pool:
    """The started actors, their specs, their latest labels and descriptions, and which are still alive."""

    def __init__(self, ray, specs: list[WorkerSpec], model_dir: str, settings: PredictSettings,
                 ray_settings: RaySettings):
        remote = ray.remote(CaseWorker)
        self.specs = specs
        self.actors = [remote.options(num_cpus=s.num_cpus, num_gpus=s.num_gpus,
                                      max_restarts=ray_settings.max_restarts, max_task_retries=0,
                                      max_concurrency=ray_settings.cases_in_flight + 1)
                       .remote(s.index, model_dir, settings.with_(device=s.device), s.num_cpus) for s in specs]
        self.alive = set(range(len(specs)))
        self.described: list[dict[str, Any]] = [{} for _ in specs]
        self.labels = [f"worker {s.index} ({s.device})" for s in specs]


def _probe(ray, pool: _Pool, inventory: stages.Inventory, in_dir: Path, out_dir: Path, timeout_s: float,
           log: Callable[[str], None] | None) -> None:
    """Every worker started, loaded the model and sees both folders; else a Seg3dError naming each problem.

    Raises:
        Seg3dError: a worker did not start within ``timeout_s``, died starting, cannot load the model, or
            cannot read the input / see and write the output folder.
    """
    token, token_name = secrets.token_hex(8), f"{PROBE_PREFIX}{secrets.token_hex(4)}"
    token_path = out_dir / token_name
    write_text_atomic(token_path, token)
    samples = [(str(p), p.stat().st_size) for p in inventory.todo[0].source.channels]
    died = _worker_died_types(ray)
    problems: list[str] = []
    try:
        desc = [a.describe.remote() for a in pool.actors]
        probes = [a.probe.remote(str(in_dir), samples, str(out_dir), token_name, token) for a in pool.actors]
        _, pending = ray.wait(desc + probes, num_returns=2 * len(desc), timeout=timeout_s)
        waiting = set(pending)
        late = sorted({i % len(desc) for i, r in enumerate(desc + probes) if r in waiting})
        if late:
            need = ", ".join(sorted({f"{s.num_cpus} CPU(s)" + (f" + {s.num_gpus:g} GPU(s)" if s.num_gpus else "")
                                     for s in pool.specs}))
            raise Seg3dError(f"{len(late)} of {len(desc)} Ray worker(s) did not start within {timeout_s:.0f} s "
                             f"(each needs {need}; the cluster has {ray.cluster_resources()}): lower --workers "
                             "or --cpus-per-worker, or free the cluster")
        for i, (d, r) in enumerate(zip(desc, probes)):
            try:
                pool.described[i] = ray.get(d)
                pool.labels[i] = pool.described[i]["label"]
                problems += [f"{pool.labels[i]} {p}" for p in ray.get(r)]
            except died as e:
                problems.append(f"{pool.labels[i]} died while starting: {_first_line(e)}")
    finally:
        token_path.unlink(missing_ok=True)
    if problems:
        raise Seg3dError("the Ray workers cannot run this prediction (no case was started):\n  "
                         + "\n  ".join(problems))
    if log:
        for d in pool.described:
            log(f"{d['label']}: {d.get('precision', '?')}, {d.get('cpus')} CPU(s), model loaded")
            if d.get("warning"):
                log(f"warning: {d['label']}: {d['warning']}")


def _first_line(e: BaseException) -> str:
    """``Type: first sentence`` of a Ray error (its full text carries tracebacks and ids)."""
    lines = [s.strip() for s in str(e).splitlines() if s.strip()]
    first = re.split(r"(?<=[.:])\s", lines[0], maxsplit=1)[0] if lines else ""
    return f"{type(e).__name__}: {first}"[:200]


def _remove_partials(jobs: list[Job]) -> None:
    """Hidden ``.part`` files that a process killed mid-write (a worker, or a whole earlier run) left for these
    jobs' outputs: removed before the jobs are written again (one folder listing)."""
    targets = [p for j in jobs for p in [*(o for _, o in j.outputs), *([j.probabilities] if j.probabilities
                                                                          else [])]]
    for p in partial_files(targets):
        p.unlink(missing_ok=True)


def _dispatch(ray, pool: _Pool, todo: list[Job], settings: RaySettings, records: dict[str, CaseRecord],
              failures: list[CaseRecord], progress: ProgressFn | None, log: Callable[[str], None] | None) -> None:
    """Hand cases to free workers until every case has a record; retry cases whose worker died."""
    died_types = _worker_died_types(ray)
    queue: deque[_Attempt] = deque(_Attempt(j) for j in todo)
    running: dict[Any, tuple[int, _Attempt]] = {}  # object ref -> (worker, attempt)
    load = [0] * len(pool.actors)
    tally = stages.Tally(len(todo), records, failures, progress, log)
    retried = 0

    def finish(a: _Attempt, rec: CaseRecord, worker: int | None) -> None:
        nonlocal retried
        if worker is not None and rec.extra.get("worker"):
            pool.labels[worker] = rec.extra["worker"]  # after a restart: the new process
        rec.extra["attempts"] = a.number
        if a.retries:
            rec.extra["retries"] = a.retries
            retried += 1
        tally.add(rec, f"{retried} retried" if retried else "")

    def submit() -> None:
        while queue and pool.alive:
            free = [i for i in sorted(pool.alive, key=lambda k: load[k]) if load[i] < settings.cases_in_flight]
            if not free:
                return
            a = queue[0]
            w = next((i for i in free if i not in a.avoid), None)
            if w is None:  # the only free workers are ones this case died on: use one if nobody else is alive
                if any(i not in a.avoid for i in pool.alive):
                    return
                w = free[0]
            queue.popleft()
            if a.number > 1:
                _remove_partials([a.job])
            running[pool.actors[w].run.remote(a.job)] = (w, a)
            load[w] += 1

    _remove_partials(todo)
    tally.report()
    submit()
    while running:
        ready, _ = ray.wait(list(running), num_returns=1, timeout=2.0)
        for ref in ready:
            w, a = running.pop(ref)
            load[w] -= 1
            try:
                rec = ray.get(ref)
            except died_types as e:
                if isinstance(e, getattr(ray.exceptions, "ActorDiedError", ())):
                    pool.alive.discard(w)  # out of restarts (or its node is gone for good)
                why = f"{pool.labels[w]} died: {_first_line(e)}"
                a.retries.append({"attempt": a.number, "worker": pool.labels[w], "error": why})
                a.avoid.add(w)
                if log:
                    log(f"{a.job.case_id}: {why}")
                if a.number >= settings.max_attempts:
                    _remove_partials([a.job])
                    finish(a, CaseRecord(a.job.case_id, "failed", path=str(a.job.source.reference),
                                         error=f"{a.job.source.reference}: not predicted: the worker died "
                                               f"{a.number} time(s) while predicting it (last: {why})"), None)
                else:
                    a.number += 1
                    queue.appendleft(a)
            except Exception as e:  # noqa: BLE001 - an error outside the stages' own handling: this case only
                finish(a, stages.failed_record(a.job, e), w)
            else:
                finish(a, rec, w)
        if not pool.alive and queue:
            while queue:
                a = queue.popleft()
                finish(a, CaseRecord(a.job.case_id, "failed", path=str(a.job.source.reference),
                                     error=f"{a.job.source.reference}: not predicted: no Ray worker is left "
                                           f"(each died more often than Ray restarts it: max_restarts {settings.max_restarts})"), None)
        submit()
        if not ready:  # long cases: keep the rate and ETA moving
            tally.report(f"{retried} retried" if retried else "")


class _ClusterPredictor:
    """What :func:`stages.write_manifest` records of "the predictor" for a pool: the model as the first worker
    loaded it, the devices of all, the engine, and every worker (where it ran, its device and precision)."""

    def __init__(self, pool: _Pool | None, settings: RaySettings):
        self.pool, self.settings = pool, settings

    def describe(self) -> dict[str, Any]:
        workers = [d for d in (self.pool.described if self.pool else []) if d]
        first = next((d["predictor"] for d in workers if d.get("predictor")), {})
        return {**first, "device": ",".join(sorted({str(d.get("device")) for d in workers})) or None,
                "engine": "ray",
                "ray": {"address": self.settings.address or "local", "max_attempts": self.settings.max_attempts,
                        "max_restarts": self.settings.max_restarts,
                        "workers": [{k: v for k, v in d.items() if k != "predictor"} for d in workers]}}


def predict_folder_ray(in_dir: str | Path, out_dir: str | Path, model_dir: str | Path,
                       settings: PredictSettings | None = None, ray_settings: RaySettings | None = None, *,
                       progress: ProgressFn | None = None, log: LogFn = log_info,
                       **overrides: Any) -> dict[str, Any]:
    """Predict every case of ``in_dir`` into ``out_dir`` on a Ray cluster; returns the same summary dict as
    :func:`seg3d.runners.local.predict_folder` and writes the same manifest, plus ``engine: ray``, the workers,
    and per case its ``worker``, ``attempts`` and any ``retries`` (the workers that died on it).

    ``settings``: :class:`~seg3d.core.settings.PredictSettings` with keyword ``overrides`` of its fields;
    ``ray_settings``: :class:`~seg3d.core.settings.RaySettings` (cluster address, workers, resources, retries).
    ``in_dir``, ``out_dir`` and ``model_dir`` must be paths every node of the cluster sees.

    Raises:
        Seg3dError: Ray missing, cluster unreachable, the workers do not fit, a worker cannot load the model or
            cannot see the folders (all before any case is started: no manifest is written then), or the
            input folder/options are wrong.
    """
    from seg3d.core.model_folder import ModelFolder

    settings = settings_from(PredictSettings, settings, overrides)
    ray_settings = ray_settings or RaySettings()
    t_start, started = time.perf_counter(), stages.now()
    in_dir, out_dir, model_dir = Path(in_dir).absolute(), Path(out_dir).absolute(), Path(model_dir).absolute()
    check_ray_installed()
    for w in preflight(in_dir, out_dir):  # before any worker or model is started
        log(f"warning: {w}")
    plan = ModelFolder(model_dir).require().load_plan()
    inventory = stages.list_inputs(in_dir, out_dir, plan.num_channels, settings, plan.channel_names)
    records, failures = stages.open_run(inventory, out_dir, log)
    t_loop = t_end = time.perf_counter()

    def manifest(pool: _Pool | None) -> tuple[Path | None, str | None]:
        path, note = stages.try_write_manifest(in_dir, out_dir, inventory, records, failures, settings,
                                               _ClusterPredictor(pool, ray_settings), started,
                                               time.perf_counter() - t_start)
        if note:
            log(note)
        return path, note

    if not inventory.todo:  # nothing to predict (all complete with --continue): no cluster needed
        path, note = manifest(None)
    else:
        with ray_cluster(ray_settings, log) as ray:
            pool = _Pool(ray, plan_workers(ray_settings, alive_nodes(ray), settings.device), str(model_dir),
                         settings, ray_settings)
            try:
                _probe(ray, pool, inventory, in_dir, out_dir, ray_settings.startup_timeout_s, log)
                t_loop = time.perf_counter()
                try:
                    _dispatch(ray, pool, inventory.todo, ray_settings, records, failures, progress, log)
                    stages.finish_run(out_dir, settings)
                finally:
                    t_end = time.perf_counter()
                    path, note = manifest(pool)
            finally:
                for a in pool.actors:
                    ray.kill(a)
    return stages.summarize(inventory, records, failures, time.perf_counter() - t_start, t_end - t_loop, path,
                            note)
