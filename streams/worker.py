"""The stream processor: the Faust app with its topics and the extraction agent wired, and `ehrstream worker`.

Every record is moved as raw bytes; the codecs in ``schemas`` own the wire format, so a
bad record reaches our code (and the dead-letter topic) instead of failing inside Faust.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import faust

from agents.clinical.annotator import ClinicalAnnotator
from agents.config import TaskSettings
from agents.extraction import AgentConfig, register_extraction_agent
from agents.model_dir import with_model_thresholds
from agents.pipeline import ExtractionPipeline
from agents.routing import RoutingPolicy
from agents.runners import ModelRunner
from schemas.codec import Codecs
from schemas.dead_letter import DeadLetter
from schemas.extraction import TaskKind
from streams.errors import ConfigError
from streams.kafka.clients import faust_broker_settings
from streams.kafka.worker_consumer import WorkerApp
from streams.learning.registry import ModelRegistry
from streams.metrics import record_batch
from streams.runtime.model_watcher import ModelWatcher
from streams.settings import Settings

if TYPE_CHECKING:
    from agents.clinical.coding import Icd10Coder

log = logging.getLogger(__name__)


def build_runners(settings: Settings, reference: bool = False, tasks: Sequence[TaskSettings] | None = None) -> list[ModelRunner]:
    """The tasks' runners, each from its live registered version when it has one (``streams.learning.registry``), else
    from its configured model; ``tasks``: those already resolved against the registry (the pipeline resolves once, so
    a promotion while the worker starts cannot give a runner one version and its routing another). ``reference``: the
    bench's fixed baseline, the plain float32 models, whole, with transformers' own padding masks, in batches bounded by
    windows only (as inference ran before int8, token-bounded batches and prebuilt masks), whatever the settings ask."""
    import torch

    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
        # the fast tokenizers' own pool (rayon) gets the same budget; with one thread they tokenise on the calling thread
        os.environ["TOKENIZERS_PARALLELISM"] = "true" if settings.torch_threads > 1 else "false"
        os.environ["RAYON_NUM_THREADS"] = str(settings.torch_threads)
        # and numpy's BLAS pool: left at one thread per core, its threads spun on the other worker's core after each
        # product (4 ms of CPU per note in the default bench, docs/performance/hot-path.md, "seventh session"); none is on the hot path now
        from threadpoolctl import threadpool_limits

        threadpool_limits(settings.torch_threads, user_api="blas")
    if tasks is None:
        registry = ModelRegistry(settings.registry_file())
        tasks = [registry.resolve(task) for task in settings.tasks]
    return [build_runner_for(settings, task, reference) for task in tasks]


def build_runner_for(settings: Settings, task: TaskSettings, reference: bool = False) -> ModelRunner:
    from agents.model_dir import load_model
    from agents.runners import build_runner

    loaded = load_model(task.model_dir, task.kind)
    log.info("task %s: model %s version %s (%s)", task.name, loaded.name, loaded.version, task.kind.value)
    quantization = "none" if reference else task.quantization
    runner = build_runner(
        task.name,
        loaded,
        batch_size=settings.inference_batch_size,
        device=settings.device,
        quantization=quantization,
        batch_tokens=0 if reference else settings.inference_batch_tokens,
        prebuilt_mask=not reference,
        first_position=not reference,
        onnx_cache=settings.onnx_cache(),
    )
    shortcut = ", its last layer at the first position only" if runner.first_position else ""
    shortcut += _cache_note(None if runner.int8 is None else runner.int8.from_cache)
    log.info("task %s: runs on %s in %s (quantization %s)%s", task.name, runner.device.type, runner.runs_in, quantization, shortcut)
    return runner


def build_clinical(settings: Settings) -> dict[str, ClinicalAnnotator]:
    """Per NER task with ``clinical`` on: its annotator (the rules compile once; one ICD-10-CM coder is shared by the
    tasks that code)."""
    coder = None
    out = {}
    for task in settings.tasks:
        if task.kind is not TaskKind.ner or not task.clinical:
            continue
        if task.coding == "icd10cm" and coder is None:
            from agents.clinical.coding import Icd10Coder

            if not (settings.icd10cm_index / "index.json").exists():
                raise ConfigError(
                    "icd10cm_index",
                    f"task {task.name} codes to ICD-10-CM but {settings.icd10cm_index} has no index; run `ehrstream codes build`",
                )
            coder = Icd10Coder.load(settings.icd10cm_index, device=settings.device, onnx_cache=settings.onnx_cache())
            _report_encoder(coder, settings.device)
        out[task.name] = ClinicalAnnotator(coder if task.coding == "icd10cm" else None)
    return out


def _report_encoder(coder: Icd10Coder, device: str) -> None:
    """Log where the coder's encoder runs, and warn where its index holds it to another precision or device than this
    host would pick (an int8 index keeps a GPU worker's encoder on the CPU; a bf16 one copied to a CPU without AMX is
    slower there than int8): the encoder is most of the coder's cost, and the coder most of a note's CPU beside the
    models (docs/performance/hot-path.md)."""
    from agents.clinical.encoder import encoder_placement

    encoder = coder.encoder
    place, precision = encoder.device.type, encoder.quantization
    cached = _cache_note(encoder.from_cache if encoder.int8_engine == "onnxruntime" else None)
    log.info("ICD-10-CM coder: its encoder runs on %s in %s%s", place, precision, cached)
    best_place, best = encoder_placement("auto", device)
    if (place, precision) != (best_place.split(":")[0], best):
        log.warning(
            "the ICD-10-CM index holds its encoder on %s in %s; this host would run it on %s in %s, and"
            " `ehrstream codes build` here rebuilds the index for that",
            place,
            precision,
            best_place,
            best,
        )


def _cache_note(from_cache: bool | None) -> str:
    """How an int8 ONNX Runtime session was built, for the start-up log (None: the model runs no such session)."""
    if from_cache is None:
        return ""
    return ", read from the ONNX cache" if from_cache else ", quantised now and kept in the ONNX cache"


def build_pipeline(
    settings: Settings, codecs: Codecs, runners: Sequence[ModelRunner] | None = None
) -> tuple[ExtractionPipeline, list[TaskSettings]]:
    """The worker's pipeline, and each task as it serves: its live registered version (else its configured model), with
    the thresholds it routes with (the version's own, raised where the review app tightened them)."""
    registry = ModelRegistry(settings.registry_file())
    resolved = [registry.resolve(t) for t in settings.tasks]  # once: the runners and their routing name one version
    serving = [registry.routing(with_model_thresholds(t)) for t in resolved]
    pipeline = ExtractionPipeline(
        runners if runners is not None else build_runners(settings, tasks=resolved),
        RoutingPolicy(serving, settings.review.audit_share),
        settings.topics,
        settings.max_note_bytes,
        settings.max_record_bytes,
        codecs=codecs,
        clinical=build_clinical(settings),
    )
    return pipeline, serving


def create_app(settings: Settings, bootstrap: str, codecs: Codecs, runners: Sequence[ModelRunner] | None = None) -> faust.App:
    settings.data_dir.mkdir(parents=True, exist_ok=True)  # Faust creates its datadir, but not the parents
    app = WorkerApp(
        settings.worker_group,
        value_serializer="raw",
        key_serializer="raw",
        consumer_auto_offset_reset="earliest",
        topic_partitions=settings.topic_partitions,
        store="memory://",
        datadir=str(settings.data_dir / "faust"),
        web_enabled=False,
        producer_acks=-1,
        producer_max_request_size=settings.max_record_bytes + 65_536,
        producer_linger=settings.producer_linger_seconds,
        fetch_max_wait_s=settings.consumer_fetch_max_wait_seconds,
        producer_max_batch_size=settings.producer_batch_bytes,
        **faust_broker_settings(settings, bootstrap),
    )
    pipeline, serving = build_pipeline(settings, codecs, runners)
    config = AgentConfig(
        settings.topics, settings.topic_partitions, settings.batch_max_notes, settings.batch_max_seconds, settings.batch_linger_seconds
    )
    register_extraction_agent(app, config, pipeline, on_batch=record_batch)
    register_undecodable_reports(app, settings, codecs)
    if runners is None:  # models built from the settings: follow the registry's promotions without a restart
        ModelWatcher(settings, pipeline, serving).start()
    return app


def register_undecodable_reports(app: WorkerApp, settings: Settings, codecs: Codecs) -> None:
    """Each record batch the consumer skipped as unreadable (see ``streams.kafka.worker_consumer``) becomes one dead
    letter, kind ``undecodable``, naming the batch's first offset and its range; checked every second."""
    deadletter = app.topic(settings.topics.deadletter, value_serializer="raw", key_serializer="raw")
    codec = codecs.of(DeadLetter)

    @app.timer(1.0)  # type: ignore[untyped-decorator]
    async def report_undecodable() -> None:
        while not app.undecodable.empty():
            skipped = app.undecodable.get_nowait()
            letter = skipped.dead_letter("worker")
            await deadletter.send(value=codec.encode(letter))


def run_worker(settings: Settings, bootstrap: str) -> None:
    """``ehrstream worker``: metrics, consumer lag, then Faust's worker until it is stopped."""
    from faust.worker import Worker

    from streams.kafka.lag import monitor_lag
    from streams.kafka.schema_registry import build_codecs
    from streams.metrics import register_gpu_metrics, serve
    from streams.runtime.processes import settle_heap

    serve(settings.metrics_port)
    if settings.metrics_port:
        register_gpu_metrics(settings.device)
    monitor_lag(settings, bootstrap, settings.worker_group, [settings.topics.notes])
    app = create_app(settings, bootstrap, build_codecs(settings))
    settle_heap()  # the models and libraries are loaded: out of the garbage collector's way
    Worker(app, loglevel=settings.log_level.lower(), quiet=True, redirect_stdouts=False).execute_from_commandline()
