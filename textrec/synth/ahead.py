"""Finish training batches ahead of the step that uses them (issue 10: samples per GPU minute).

In lease 3 a 1,024-image batch took 113 ms on an H200, of which the training step alone took 58 ms: the rest was
taking the batch from the loader and finishing it on the device (docs/synth.md, "On the GPU"), in the same
thread as the step. `FinishAhead` moves both to a background thread that finishes up to `ahead` batches on its
own CUDA stream while the main thread trains, so the two overlap on the GPU and, while torch ops run outside the
GIL, on the CPU. Batch k is finished with the random parameters of step `first_step + k`, exactly as the
sequential loop finishes it (every batch, readable or not, advances the step by one), so a run's images do not
depend on `ahead`.

``ahead=0`` finishes each batch in the caller's thread when it is asked for: the sequential loop itself.
`paused()` holds the background thread between two batches, for work that other threads' CUDA calls would
spoil: capturing a CUDA graph (textrec/nn/graphs.py).
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from contextlib import contextmanager, nullcontext
from typing import Callable, Iterable, Iterator

import torch

_END = object()


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


class FinishAhead:
    """Iterates (batch, images) over `batches`; images = finish(batch.raw, first_step + k), None without raw.
    `finish` may return a tuple of tensors (images and their widths, for width-bucketed training)."""

    def __init__(
        self,
        batches: Iterable,
        finish: Callable[[object, int], torch.Tensor],
        first_step: int,
        device: torch.device | str,
        ahead: int = 2,
    ):
        if ahead < 0:
            raise ValueError(f"ahead must be 0 or more, not {ahead}")
        self.batches = batches
        self.finish = finish
        self.first_step = first_step
        self.device = torch.device(device)
        self.ahead = ahead
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, ahead))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._finishing = threading.Lock()  # held by the background thread while it finishes a batch

    def __iter__(self) -> Iterator[tuple[object, torch.Tensor | None]]:
        if self.ahead == 0:
            for k, batch in enumerate(self.batches):
                yield batch, self._finished(batch, k)
            return
        # The iterator is made here: a DataLoader's worker processes fork while this thread waits in no lock.
        batches = iter(self.batches)
        self._thread = threading.Thread(target=self._work, args=(batches,), name="textrec-finish-ahead", daemon=True)
        self._thread.start()
        try:
            while True:
                item = self._queue.get()
                if item is _END:
                    return
                if isinstance(item, _Failure):
                    raise item.error
                batch, images, event = item
                if event is not None:  # the main stream waits for the side stream's work, on the GPU only
                    stream = torch.cuda.current_stream(self.device)
                    stream.wait_event(event)
                    for tensor in images if isinstance(images, tuple) else (images,):
                        tensor.record_stream(stream)  # its memory is not reused before the main stream is done with it
                yield batch, images
        finally:
            self.close()

    @contextmanager
    def paused(self):
        """No batch is finished in the background while the block runs (it waits for the one in hand)."""
        with self._finishing:
            yield

    def close(self, wait: float = 30.0) -> None:
        """Stop the background thread (batches it finished are dropped); safe to call more than once. It stops
        once its source yields; after `wait` seconds the daemon thread is left to end with the process."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is None:
            return
        deadline = time.monotonic() + wait
        while thread.is_alive() and time.monotonic() < deadline:
            try:  # make room for a put it may be waiting on
                self._queue.get_nowait()
            except queue.Empty:
                pass
            thread.join(timeout=0.05)

    def _finished(self, batch, k: int) -> torch.Tensor | None:
        raw = getattr(batch, "raw", None)
        return None if raw is None else self.finish(raw, self.first_step + k)

    def _work(self, batches: Iterator) -> None:
        cuda = self.device.type == "cuda"
        stream = torch.cuda.Stream(self.device) if cuda else None
        try:
            for k in itertools.count():
                if self._stop.is_set():
                    return
                # Everything that may touch CUDA is done holding the lock: taking the batch (the last batch's
                # pinned memory is let go here), finishing it, recording its event (see `paused`).
                with self._finishing, torch.cuda.stream(stream) if cuda else nullcontext():
                    item = batch = images = event = None
                    batch = next(batches, _END)
                    if batch is not _END:
                        images = self._finished(batch, k)
                        if cuda and images is not None:
                            event = torch.cuda.Event()
                            event.record(stream)
                        item = (batch, images, event)
                if batch is _END:
                    self._put(_END)
                    return
                if not self._put(item):
                    return
        except BaseException as error:  # noqa: BLE001  (re-raised in the training thread)
            self._put(_Failure(error))

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False
