"""Live logging: every metrics.jsonl record also goes to TensorBoard, MLflow and/or W&B.

Trackers are optional extras and never part of what a run *is*: one that cannot start (not
installed, no server, no login) or fails while logging warns once and the run goes on without
it. Only rank 0 logs. A continued run appends to the same tracker run where the tool allows
(MLflow and W&B ids are kept in RUN/trackers.json; TensorBoard purges steps after the resume
point), and `lwr sweep` groups its runs through the environment (`sweep_group`), which also
reaches its `--parallel` subprocesses.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from lwrcli.config import TrainConfig
from lwrcli.runtime.files import write_atomic

TRACKERS_FILE = "trackers.json"  # in the run folder: tracker run ids, for continuation
TENSORBOARD_DIR = "tensorboard"
WANDB_DIR = "wandb"
# Set by `lwr sweep` for its runs: the sweep folder (the group), and MLflow's parent run id.
GROUP_ENV = "LWR_LOG_GROUP"
MLFLOW_PARENT_ENV = "LWR_MLFLOW_PARENT_RUN_ID"

Warn = Callable[[str], None]


def _stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --- what goes to a tracker -----------------------------------------------------------------
def scalars(record: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The numbers of a metrics record, nested keys joined by '/' (TensorBoard's sections);
    `epoch` is the step, not a value; None, strings and flags (`best`) are not scalars."""
    out: dict[str, float] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(scalars(value, f"{name}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            if name != "epoch":
                out[name] = float(value)
    return out


def flat_config(cfg: TrainConfig) -> dict[str, Any]:
    """The resolved config as `section.key` -> value (lists as their JSON text), the same
    dotted names `--set` takes, so a tracker's hyperparameter table reads like the CLI."""
    out: dict[str, Any] = {}

    def walk(value: Any, prefix: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{prefix}{k}.")
        else:
            key = prefix.rstrip(".")
            out[key] = json.dumps(value) if isinstance(value, list | tuple) else value

    walk(cfg.model_dump(mode="json", exclude={"reference"}), "")
    return out


def group_dir() -> Path | None:
    """The sweep folder this run belongs to (set by `lwr sweep`), if any."""
    value = os.environ.get(GROUP_ENV)
    return Path(value) if value else None


def run_name(run_dir: Path) -> str:
    """The run folder's name, or its path within its sweep (`bs-lwr/theta=0.4/seed=0`), so
    the runs of a sweep are told apart (they would all be `seed=0` otherwise)."""
    group = group_dir()
    if group is not None:
        with contextlib.suppress(ValueError):
            return str(Path(run_dir).resolve().relative_to(group.resolve()))
    return Path(run_dir).name


# --- trackers --------------------------------------------------------------------------------
class Tracker(Protocol):
    name: str

    def log(self, values: dict[str, float], step: int) -> None: ...

    def close(self, status: str) -> None: ...


class RunInfo:
    """What trackers need to know about the run: folder, name, config, tags, where it resumes."""

    def __init__(
        self, cfg: TrainConfig, run_dir: Path, fingerprint: str, resume_epoch: int | None
    ) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.name = run_name(run_dir)
        self.tags = {"preset": cfg.name, "dataset_fingerprint": fingerprint}
        self.resume_epoch = resume_epoch  # None: a new run; else epochs already done
        self.ids_path = self.run_dir / TRACKERS_FILE

    def ids(self) -> dict[str, str]:
        try:
            data = json.loads(self.ids_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def save_id(self, key: str, value: str) -> None:
        ids = {**self.ids(), key: value}
        write_atomic(self.ids_path, json.dumps(ids, indent=2) + "\n")


class TensorBoardTracker:
    """Event files in RUN/tensorboard/; a continued run writes to the same folder and purges
    any steps after its resume point (logged before a crash, dropped from metrics.jsonl)."""

    name = "tensorboard"

    def __init__(self, run: RunInfo) -> None:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        purge = run.resume_epoch + 1 if run.resume_epoch is not None else None
        self.writer = SummaryWriter(str(run.run_dir / TENSORBOARD_DIR), purge_step=purge)
        if run.resume_epoch is None:
            # hparams() summaries in this run's own file (add_hparams would open a sub-run).
            params = {
                k: (v if isinstance(v, int | float | str | bool) else str(v))
                for k, v in flat_config(run.cfg).items()
            }
            for summary in hparams(params, {}):
                self.writer.file_writer.add_summary(summary)
            self.writer.add_text("run", f"{run.name} ({run.cfg.name})")
        self.writer.flush()

    def log(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()  # a run read while it trains (or after a kill) shows every epoch

    def close(self, status: str) -> None:
        self.writer.close()


class MlflowTracker:
    """One MLflow run per lwr run through MlflowClient (no fluent global state, so a sweep in
    one process opens and closes runs cleanly); its id is kept for continuation."""

    name = "mlflow"

    def __init__(self, run: RunInfo) -> None:
        log = run.cfg.log
        self.client = mlflow_client(run.cfg)
        from mlflow.entities import Metric, Param, RunTag

        self._metric = Metric
        run_id = run.ids().get("mlflow_run_id") if run.resume_epoch is not None else None
        if run_id is not None:
            self.client.update_run(run_id, status="RUNNING")
        else:
            tags = {**run.tags, "lwr.run_dir": str(run.run_dir.resolve())}
            parent = os.environ.get(MLFLOW_PARENT_ENV)
            if parent:
                tags["mlflow.parentRunId"] = parent
            created = self.client.create_run(
                experiment_id(self.client, log.mlflow_experiment),
                run_name=run.name,
                tags=tags,
            )
            run_id = created.info.run_id
            run.save_id("mlflow_run_id", run_id)
            params = [Param(k, str(v)) for k, v in flat_config(run.cfg).items()]
            for i in range(0, len(params), 100):  # MLflow takes at most 100 params a call
                self.client.log_batch(run_id, params=params[i : i + 100])
            self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in run.tags.items()])
        self.run_id = run_id

    def log(self, values: dict[str, float], step: int) -> None:
        import time

        now = int(time.time() * 1000)
        metrics = [self._metric(k, v, now, step) for k, v in values.items() if math.isfinite(v)]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + 1000])

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status)


def mlflow_client(cfg: TrainConfig) -> Any:
    """An MlflowClient for log.mlflow_tracking_uri, else MLFLOW_TRACKING_URI, else MLflow's
    default (a sqlite file in the working folder: that store needs the full `mlflow`)."""
    uri = cfg.log.mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri is not None and (uri.startswith("file:") or "://" not in uri):
        # MLflow 3 refuses a file store unless opted in; asking for one is opting in.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    # An unreachable server should cost seconds, not MLflow's minutes of retries.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def experiment_id(client: Any, name: str | None) -> str:
    """The named experiment (created if new), else MLFLOW_EXPERIMENT_NAME, else Default."""
    name = name or os.environ.get("MLFLOW_EXPERIMENT_NAME")
    if not name:
        return os.environ.get("MLFLOW_EXPERIMENT_ID", "0")
    found = client.get_experiment_by_name(name)
    return found.experiment_id if found is not None else client.create_experiment(name)


class WandbTracker:
    """A W&B run in RUN/wandb/, grouped by sweep; continued under the same id."""

    name = "wandb"

    def __init__(self, run: RunInfo) -> None:
        import wandb

        log = run.cfg.log
        group = group_dir()
        run_id = run.ids().get("wandb_run_id") if run.resume_epoch is not None else None
        (run.run_dir / WANDB_DIR).mkdir(exist_ok=True)
        self.run = wandb.init(
            project=log.wandb_project or os.environ.get("WANDB_PROJECT"),
            name=run.name,
            dir=str(run.run_dir),
            mode=log.wandb_mode,
            config=run.cfg.model_dump(mode="json", exclude={"reference"}),
            group=group.name if group is not None else None,
            tags=[run.cfg.name],
            id=run_id,
            resume="allow" if run_id else None,
            reinit="finish_previous",
            # W&B would otherwise wrap stdout/stderr (under lwr's own progress bars) and print
            # a summary of its own; lwr's log stays lwr's, W&B records metrics and config.
            settings=wandb.Settings(console="off", quiet=True),
        )
        self.run.summary["dataset_fingerprint"] = run.tags["dataset_fingerprint"]
        run.save_id("wandb_run_id", self.run.id)

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def close(self, status: str) -> None:
        self.run.finish(exit_code=0 if status == "FINISHED" else 1)


TRACKERS: dict[str, Callable[[RunInfo], Tracker]] = {
    "tensorboard": TensorBoardTracker,
    "mlflow": MlflowTracker,
    "wandb": WandbTracker,
}
EXTRAS = {"tensorboard": "lwrcli[logging]", "mlflow": "lwrcli[logging]", "wandb": "lwrcli[wandb]"}


# --- the one object the Trainer holds --------------------------------------------------------
class LiveLog:
    """Fans each record out to the trackers that work; drops one that fails, warning once.
    Without trackers (the default, and on every rank but 0) every call is a no-op."""

    def __init__(self, trackers: list[Tracker] | None = None, warn: Warn = _stderr) -> None:
        self.trackers = list(trackers or [])
        self.warn = warn

    @classmethod
    def start(
        cls,
        cfg: TrainConfig,
        run_dir: Path,
        fingerprint: str,
        *,
        is_main: bool = True,
        resume_epoch: int | None = None,
        warn: Warn = _stderr,
    ) -> LiveLog:
        """Open the trackers in `cfg.log.to` for the run in `run_dir` (rank 0 only)."""
        live = cls(warn=warn)
        if not is_main or not cfg.log.to:
            return live
        run = RunInfo(cfg, run_dir, fingerprint, resume_epoch)
        for name in dict.fromkeys(cfg.log.to):
            try:
                live.trackers.append(TRACKERS[name](run))
            except ImportError as exc:
                live._off(name, f"not installed ({exc}); pip install '{EXTRAS[name]}'")
            except Exception as exc:  # no server, no login, a store that cannot work
                live._off(name, f"could not start: {_reason(exc)}")
        return live

    def log(self, record: dict[str, Any]) -> None:
        """One metrics.jsonl record, at step = its epoch."""
        if not self.trackers:
            return
        values, step = scalars(record), int(record["epoch"])
        for tracker in list(self.trackers):
            try:
                tracker.log(values, step)
            except Exception as exc:
                self.trackers.remove(tracker)
                self._off(tracker.name, f"failed while logging: {_reason(exc)}")
                with contextlib.suppress(Exception):
                    tracker.close("FAILED")

    def close(self, status: str = "FINISHED") -> None:
        """End every tracker run: FINISHED, KILLED (stopped, to be continued) or FAILED."""
        trackers, self.trackers = self.trackers, []
        for tracker in trackers:
            try:
                tracker.close(status)
            except Exception as exc:
                self._off(tracker.name, f"failed while closing: {_reason(exc)}")

    def _off(self, name: str, why: str) -> None:
        self.warn(f"warning: live logging to {name} is off for this run: {why}.")


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__


# --- sweeps ----------------------------------------------------------------------------------
@contextlib.contextmanager
def sweep_group(out: Path, configs: list[TrainConfig], warn: Warn = _stderr) -> Iterator[None]:
    """Group a sweep's runs: GROUP_ENV names the sweep folder (W&B group, run names relative
    to it) and, when a run logs to MLflow, a parent run named after the folder is opened and
    its id passed on in MLFLOW_PARENT_ENV (so `--parallel` subprocesses nest under it too).
    A sweep run again finds its parent by the `lwr.sweep_dir` tag and continues it."""
    saved = {k: os.environ.get(k) for k in (GROUP_ENV, MLFLOW_PARENT_ENV)}
    os.environ[GROUP_ENV] = str(Path(out).resolve())
    parent: tuple[Any, str] | None = None
    wants = [c for c in configs if "mlflow" in c.log.to]
    if wants:
        try:
            parent = _mlflow_parent(Path(out), wants[0])
            os.environ[MLFLOW_PARENT_ENV] = parent[1]
        except ImportError as exc:
            warn(f"warning: no MLflow parent run for this sweep: not installed ({exc}).")
        except Exception as exc:
            warn(f"warning: no MLflow parent run for this sweep: {_reason(exc)}.")
    status = "FAILED"
    try:
        yield
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except Exception as exc:
        # engine.Interrupted (a stop that saved; the sweep continues when run again), by name:
        # this module sits below the engine and does not import it.
        status = "KILLED" if type(exc).__name__ == "Interrupted" else "FAILED"
        raise
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if parent is not None:
            with contextlib.suppress(Exception):
                parent[0].set_terminated(parent[1], status)


def _mlflow_parent(out: Path, cfg: TrainConfig) -> tuple[Any, str]:
    client = mlflow_client(cfg)
    exp = experiment_id(client, cfg.log.mlflow_experiment)
    where = str(out.resolve())
    found = client.search_runs(
        [exp], filter_string=f"tags.`lwr.sweep_dir` = '{where}'", max_results=1
    )
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        return client, run_id
    run = client.create_run(exp, run_name=out.name, tags={"lwr.sweep_dir": where})
    return client, run.info.run_id
