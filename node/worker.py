"""A worker process: claims jobs, runs pipelines (models stay loaded), writes results to the outbox.

Each job is held under a lease that a background thread renews; if the worker dies, the lease
expires and another worker (or this one after a restart) takes the job over. Result UIDs are
stable, so a job that runs twice writes the same objects, never duplicates.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time

from pydicom.dataset import Dataset

from node import metrics
from node.audit import AuditLog
from node.config import Config
from node.stop_signal import StopSignal
from node.delivery import targets_for
from node.logs import configure_logging
from node.reload import ConfigHolder, config_file_of_supervisor, install_sighup
from pipelines.base import Pipeline, PipelineRefusal, PipelineResult, RuntimeOptions, SourceSeries
from storage.database import create_database_engine
from storage.jobs import ClaimedJob, JobQueue, LeaseLost
from storage.outbox import Outbox
from storage.results import StoredResult, record_results

log = logging.getLogger("radnode.worker")

RETRY_BASE_DELAY_S = 5.0


def worker_owner_prefix() -> str:
    return f"{socket.gethostname()}:"


class Worker:
    def __init__(self, config: Config, index: int) -> None:
        self.config = config
        self.owner = f"{worker_owner_prefix()}{os.getpid()}:{index}"
        self.engine = create_database_engine(config.database_url)
        self.queue = JobQueue(self.engine, config.workers.max_attempts)
        self.outbox = Outbox(config.node.data_dir)
        self.audit = AuditLog(config.node.data_dir)
        self.runtime = RuntimeOptions(device=config.workers.device, torch_threads=config.workers.torch_threads)
        self._pipelines: dict[str, Pipeline] = {}

    def reconfigure(self, config: Config) -> None:
        """Take a reloaded configuration; pipelines whose settings changed are loaded afresh."""
        for name in list(self._pipelines):
            if config.pipelines.get(name) != self.config.pipelines.get(name):
                del self._pipelines[name]
                log.info("pipeline %s changed in the configuration; it is reloaded on its next job", name)
        self.config = config

    def pipeline(self, name: str) -> Pipeline:
        """The named pipeline, created and loaded on first use and kept for later jobs."""
        if name not in self._pipelines:
            from pipelines.registry import create_pipeline

            pipeline = create_pipeline(name, self.config.pipelines[name], self.runtime)
            started = time.perf_counter()
            pipeline.load()
            log.info("pipeline %s loaded in %.1f s", name, time.perf_counter() - started)
            self._pipelines[name] = pipeline
        return self._pipelines[name]

    def run_once(self) -> bool:
        """Claim and run one job; False when the queue had nothing runnable."""
        lease_s = self.config.workers.lease_s
        job = self.queue.claim(self.owner, lease_s, time.time())
        if job is None:
            return False
        stop_renewing = threading.Event()
        renewer = threading.Thread(target=self._renew, args=(job, stop_renewing), daemon=True)
        renewer.start()
        try:
            self._run(job)
        finally:
            stop_renewing.set()
            renewer.join()
        return True

    def _renew(self, job: ClaimedJob, stop: threading.Event) -> None:
        interval = max(0.5, self.config.workers.lease_s / 3)
        while not stop.wait(interval):
            try:
                self.queue.renew(job.id, self.owner, self.config.workers.lease_s, time.time())
            except LeaseLost:
                log.error("job %d: lease lost; its result will be discarded", job.id)
                return
            except Exception:
                log.exception("job %d: renewing the lease failed; will retry", job.id)

    def _store(self, result: PipelineResult) -> list[StoredResult]:
        """Write a job's result objects (and their fallbacks) to the outbox in one durable batch and
        describe them for the database."""
        items: list[tuple[Dataset, str | None]] = [(dataset, None) for dataset in result.datasets]
        items += [(dataset, uid) for uid, dataset in result.fallbacks.items()]
        written = self.outbox.write_all([dataset for dataset, _ in items])
        return [
            StoredResult(
                study_instance_uid=str(dataset.StudyInstanceUID),
                series_instance_uid=str(dataset.SeriesInstanceUID),
                sop_instance_uid=str(dataset.SOPInstanceUID),
                sop_class_uid=str(dataset.SOPClassUID),
                modality=str(dataset.get("Modality", "")),
                path=path.relative,
                size_bytes=size,
                fallback_for=fallback_for,
            )
            for (dataset, fallback_for), (path, size) in zip(items, written, strict=True)
        ]

    def _run(self, job: ClaimedJob) -> None:
        started = time.perf_counter()
        log.info("job %d: %s on series %s (attempt %d)", job.id, job.pipeline, job.series_instance_uid, job.attempts)
        try:
            files = tuple(self.config.node.data_dir / p for p in self.queue.instance_paths(job.series_id))
            pipeline = self.pipeline(job.pipeline)
            result = pipeline.run(SourceSeries(series_instance_uid=job.series_instance_uid, files=files))
            outbox_started = time.perf_counter()
            stored = self._store(result)
            result.timings_s["outbox"] = time.perf_counter() - outbox_started
        except PipelineRefusal as exc:
            log.warning("job %d: %s refused series %s: %s", job.id, job.pipeline, job.series_instance_uid, exc)
            self.queue.finish(job.id, self.owner, "refused", time.time(), error=str(exc))
            self._audit(job, "refused", started)
            return
        except Exception as exc:
            log.exception("job %d: %s failed on series %s", job.id, job.pipeline, job.series_instance_uid)
            retry_at = time.time() + RETRY_BASE_DELAY_S * 2 ** (job.attempts - 1)
            state = self.queue.fail(job.id, self.owner, f"{type(exc).__name__}: {exc}", retry_at, time.time())
            log.info("job %d is now %s", job.id, state)
            self._audit(job, "failed" if state == "failed" else "retry", started, error_type=type(exc).__name__)
            return
        targets = targets_for(self.config, job.send_to, job.calling_ae_title, job.calling_host)
        timings = {**result.timings_s, "total": time.perf_counter() - started}
        ids = record_results(self.engine, job.id, self.owner, stored, result.measurements, targets, time.time(),
                             timings=timings)
        if ids is None:
            log.error("job %d: lease lost before the results were recorded; another worker owns it", job.id)
            return
        metrics.INFERENCE_SECONDS.labels(job.pipeline).observe(timings["total"])
        self._audit(job, "succeeded", started, results=len(stored), deliveries=[t.destination for t in targets])
        log.info(
            "job %d: %d result objects in %.1f s %s",
            job.id,
            len(stored),
            time.perf_counter() - started,
            {k: round(v, 1) for k, v in result.measurements.items()},
        )


    def _audit(self, job: ClaimedJob, state: str, started: float, **fields: object) -> None:
        """One audit record per job outcome: UIDs, counts and seconds, no error text (it may quote data)."""
        self.audit.record("job", job_id=job.id, pipeline=job.pipeline, study_instance_uid=job.study_instance_uid,
                          series_instance_uid=job.series_instance_uid,
                          state=state, attempt=job.attempts, seconds=round(time.perf_counter() - started, 3),
                          **fields)


def run_worker(config: Config, stop: StopSignal, index: int) -> None:
    """Entry point of a worker process (multiprocessing, spawn)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure_logging(config.node.log_level, config.node.data_dir)
    parent = os.getppid()
    worker = Worker(config, index)
    holder = ConfigHolder(config, config_file_of_supervisor())
    install_sighup(holder)
    log.info("worker %d ready (pid %d, device %s)", index, os.getpid(), config.workers.device)
    while not stop.is_set():
        if os.getppid() != parent:
            log.error("supervisor is gone; worker exits")
            os._exit(1)
        if holder.apply_pending():
            worker.reconfigure(holder.current)
        try:
            busy = worker.run_once()
        except Exception:
            log.exception("worker %d: unexpected error while claiming a job; retrying", index)
            busy = False
        if not busy:
            stop.wait(config.workers.poll_interval_s)
    worker.engine.dispose()
