"""Data-parallel training across processes (torchrun): who this process is, and the few collective steps.

`torchrun` (`python -m torch.distributed.run`) starts one process per device and sets WORLD_SIZE, RANK and
LOCAL_RANK; `World.from_environment()` reads them (a plain run is the world of one process, and every method
here is then a no-op that touches no `torch.distributed` API). The process group uses NCCL on CUDA, gloo on
the CPU. docs/scale.md says how a run is split across processes.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from .errors import ConfigError

# Rank 0 validates and saves while the others wait; a long validation must not trip the collectives' timeout.
TIMEOUT = timedelta(minutes=60)


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @classmethod
    def from_environment(cls) -> "World":
        try:
            size = int(os.environ.get("WORLD_SIZE", "1"))
            rank = int(os.environ.get("RANK", "0"))
            local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        except ValueError:
            raise ConfigError("WORLD_SIZE, RANK and LOCAL_RANK must be whole numbers (torchrun sets them)") from None
        if size < 1 or not 0 <= rank < size or local_rank < 0:
            raise ConfigError(f"invalid distributed environment: RANK {rank}, WORLD_SIZE {size}, LOCAL_RANK {local_rank}")
        return cls(rank, size, local_rank)

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """This process's device: with CUDA under torchrun, the GPU of its local rank."""
        if self.distributed and device.type == "cuda" and device.index is None:
            return torch.device("cuda", self.local_rank % torch.cuda.device_count())
        return device

    @contextlib.contextmanager
    def process_group(self, device: torch.device):
        """Join the other processes for the block (nothing to join in a world of one)."""
        if not self.distributed or dist.is_initialized():
            yield
            return
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
        try:
            yield
        finally:
            dist.destroy_process_group()

    def seed(self, seed: int, *more) -> int:
        """Rank 0 keeps the run's seed (it saves its random state); every other rank gets its own."""
        if self.rank == 0:
            return seed
        digest = hashlib.blake2b(repr((seed, "rank", self.rank, *more)).encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF

    def broadcast(self, value):
        """Rank 0's `value` (any picklable object, e.g. the resume state) on every rank."""
        if not self.distributed:
            return value
        holder = [value]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def total(self, values: list[float], device: torch.device) -> list[float]:
        """The sum over ranks of each value."""
        if not self.distributed:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def barrier(self, device: torch.device) -> None:
        if self.distributed:
            dist.barrier(device_ids=[device.index] if device.type == "cuda" else None)


def torchrun_command(nproc_per_node: int, target: list[str]) -> list[str]:
    """The command line that runs `target` (e.g. ["-m", "cli.main", "train", ...]) in `nproc_per_node` processes
    on this machine through torch's launcher."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc_per_node}", *target]


def without_option(args: list[str], name: str) -> list[str]:
    """`args` less `name VALUE` and `name=VALUE`."""
    kept, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg == name:
            skip = True
        elif not arg.startswith(name + "="):
            kept.append(arg)
    return kept


def launch(command: list[str]) -> int:
    """Run the launcher and return its exit status. Ctrl-C reaches it from the terminal (the whole process
    group gets it) and SIGTERM is passed on, so that the workers save their state; this process only waits."""
    process = subprocess.Popen(command)
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda signum, frame: process.send_signal(signum))
    try:
        return process.wait()
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
