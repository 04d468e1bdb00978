"""Quantised ONNX sessions kept between worker starts.

An int8 runner (and the ICD-10-CM coder's int8 sentence encoder) exports its model to ONNX and quantises it when it is
built (:class:`agents.runners.onnx_int8.OnnxInt8Model`): 2-4 s of CPU per model on the 2-vCPU EPYC, about 10 of a
default worker's 18 s start (docs/performance/hot-path.md, "twenty-first session"). The result depends only on what
went in, so it is kept here, under a key that names all of it:

- every tensor of the model's state (its weights, whatever their names);
- its configuration and its module tree, with the source of every module class that is not transformers' or torch's
  own (the runner's first-position layer: a change to its code is a change to the graph);
- what the export asks for (the output, per token or not, the weights kept float) and the format of this cache;
- the versions of torch, transformers, onnx and ONNX Runtime (an exporter or quantiser that changed may write another
  graph).

An entry is one file, ``<key>.onnx``: the SHA-256 of the quantised model, then the model. One that does not match its
digest (a torn write, a disk error) is dropped and built again; a directory that cannot be written is used for reading
only, or not at all. Entries go in whole (a temporary file renamed), so workers that start together may both build an
entry and neither reads half of one. At most :data:`MAX_ENTRIES` are kept, the least recently used dropped first: a
retrained model's new version adds one, an old version's is dropped in time.

Nothing in an entry is note content: it is a model's graph and weights.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

#: how an entry is laid out and keyed; raise it when either changes, so that older entries are not read
FORMAT = 1
#: entries kept (the least recently used dropped first): a default worker uses three (two task models, the coder's encoder)
MAX_ENTRIES = 12
_DIGEST = hashlib.sha256().digest_size


def _own_source(cls: type) -> str:
    """The source of a module class that is not transformers' or torch's (their versions are in the key), else ''."""
    if cls.__module__.split(".")[0] in ("torch", "transformers"):
        return ""
    try:
        return inspect.getsource(cls)
    except (OSError, TypeError):  # defined where its source cannot be read: its name stands for it
        return ""


def model_key(model: torch.nn.Module, **export: Any) -> str:
    """The key of ``model`` quantised as ``export`` asks (keyword arguments of the export, their values as text)."""
    import onnx
    import onnxruntime  # type: ignore[import-untyped]
    import torch
    import transformers

    digest = hashlib.sha256()

    def add(text: str) -> None:
        digest.update(text.encode())
        digest.update(b"\0")

    add(f"format {FORMAT}; torch {torch.__version__}; transformers {transformers.__version__}")
    add(f"onnx {onnx.__version__}; onnxruntime {onnxruntime.__version__}")
    for name in sorted(export):
        add(f"{name}={export[name]!r}")
    config = getattr(model, "config", None)
    add(config.to_json_string() if config is not None else "")
    add(repr(model))
    for cls in sorted({type(m) for m in model.modules()}, key=lambda c: (c.__module__, c.__qualname__)):
        add(f"{cls.__module__}.{cls.__qualname__}")
        add(_own_source(cls))
    with torch.no_grad():
        for name, tensor in model.state_dict(keep_vars=False).items():
            flat = tensor.detach().to("cpu").contiguous()
            add(f"{name} {flat.dtype} {tuple(flat.shape)}")
            digest.update(flat.reshape(-1).view(torch.uint8).numpy() if flat.numel() else b"")
    return digest.hexdigest()


class OnnxCache:
    """Quantised models by :func:`model_key`, in ``directory`` (created when first written)."""

    def __init__(self, directory: Path, max_entries: int = MAX_ENTRIES) -> None:
        self.directory = directory
        self.max_entries = max_entries

    def _path(self, key: str) -> Path:
        return self.directory / f"{key}.onnx"

    def get(self, key: str) -> bytes | None:
        """The model kept under ``key``; None when there is none, or none that matches its digest (then it is dropped)."""
        path = self._path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("onnx cache: entry %s unreadable (%s); building the model again", key[:12], exc.strerror)
            return None
        if len(data) <= _DIGEST or hashlib.sha256(data[_DIGEST:]).digest() != data[:_DIGEST]:
            log.warning("onnx cache: entry %s does not match its digest; dropped, building the model again", key[:12])
            path.unlink(missing_ok=True)
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # used now: the last to be dropped
        return data[_DIGEST:]

    def put(self, key: str, model: bytes) -> None:
        """Keep ``model`` under ``key`` (a directory that cannot be written is noted and left)."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.directory, prefix=".partial-", delete=False) as out:
                out.write(hashlib.sha256(model).digest())
                out.write(model)
            os.replace(out.name, self._path(key))
        except OSError as exc:
            log.warning("onnx cache: could not keep a quantised model in %s (%s)", self.directory, exc.strerror)
            return
        self._evict()

    def entries(self) -> list[Path]:
        """The entries, the most recently used first."""
        return [p for _, p in sorted(_aged(self.directory, "*.onnx"), reverse=True)]

    def _evict(self) -> None:
        for stale in self.entries()[self.max_entries :]:
            stale.unlink(missing_ok=True)
        # what a writer killed mid-write left (an hour is far longer than any write)
        for written, partial in _aged(self.directory, ".partial-*"):
            if written < time.time() - 3600:
                partial.unlink(missing_ok=True)


def _aged(directory: Path, pattern: str) -> list[tuple[float, Path]]:
    """(last modified, path) of the files in ``directory`` matching ``pattern`` (one removed meanwhile is skipped)."""
    found = []
    for path in directory.glob(pattern):
        try:
            found.append((path.stat().st_mtime, path))
        except OSError:
            continue
    return found
