"""The rank side of a run of several processes (torchrun, DistributedDataParallel).

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE; `from_env` reads them and
joins the process group (NCCL on CUDA, Gloo on the CPU). Ranks agree on everything that ends a
chunk, a pause or a run by step counts, never by time: a collective that one rank enters on a
time boundary and another does not deadlocks. One all_reduce a chunk carries every step's loss
(their sum, divided by the world size: the logged loss is the mean over ranks), whether any rank
was asked to stop (a signal), rank 0's control request and rank 0's choice of the next chunk's
length in steps (from its own clock, so that a chunk lasts about flush_interval seconds).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

CONTROL_NONE, CONTROL_PAUSE, CONTROL_STOP, CONTROL_CONTINUE = 0, 1, 2, 3
CODES = {"pause": CONTROL_PAUSE, "stop": CONTROL_STOP, "continue": CONTROL_CONTINUE}
MAX_CHUNK_STEPS = 10_000


@dataclass
class Dist:
    rank: int
    world: int
    local_rank: int
    local_world: int
    backend: str

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def reduce_chunk(self, losses: list[Any], *, stop: bool, control: int, next_chunk: int, device,
                     extra: list[float] = ()) -> tuple[list[float], bool, int, int, list[float]]:
        """The chunk's one collective: (each step's loss averaged over ranks, any rank asked to
        stop, rank 0's control code, rank 0's next chunk length, `extra` summed over ranks: each
        rank fills its own slots, e.g. its device's memory figures). `losses` are floats (CPU)
        or 0-dim device tensors (CUDA); the same count on every rank (same steps)."""
        import torch
        import torch.distributed as dist

        lead = self.leader
        tail = [1.0 if stop else 0.0, float(control) if lead else 0.0, float(next_chunk) if lead else 0.0,
                *map(float, extra)]
        if losses and isinstance(losses[0], torch.Tensor):
            t = torch.cat([torch.stack([v.detach().double().reshape(()) for v in losses]),
                           torch.tensor(tail, dtype=torch.float64, device=losses[0].device)])
        else:
            t = torch.tensor([float(v) for v in losses] + tail, dtype=torch.float64,
                             device=device if self.backend == "nccl" else "cpu")
        dist.all_reduce(t)
        values = t.cpu().tolist()
        n = len(losses)
        w = self.world
        return [v / w for v in values[:n]], values[n] > 0, int(values[n + 1]), int(values[n + 2]), values[n + 3:]

    def gather_objects(self, obj: Any) -> list[Any] | None:
        """Every rank's `obj` on rank 0 (None elsewhere): each rank's RNG state for a checkpoint."""
        import torch.distributed as dist

        out = [None] * self.world if self.leader else None
        dist.gather_object(obj, out, dst=0)
        return out

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier()

    def close(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


LAUNCHED_ENV = "TORCHDECK_DDP"  # set by the rank entry point: DDP even with one process (torchrun --nproc 1)


def launched() -> bool:
    """This process is a rank that torchrun started for torchdeck (DDP, whatever the world size)."""
    return env_world() > 1 or os.environ.get(LAUNCHED_ENV) == "1"


def env_world() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def from_env(device_kind: str) -> Dist | None:
    """Join the process group torchrun set up; None when this process is not one of several.
    `device_kind`: "cuda" or "cpu", the rank's device type (NCCL for CUDA, Gloo otherwise)."""
    world = env_world()
    if not launched():
        return None
    import datetime

    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    backend = "nccl" if device_kind == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=10))
    return Dist(rank, world, local_rank, local_world, backend)


def rank_device(config_device: str, local_rank: int):
    """The rank's device: cuda:LOCAL_RANK when CUDA is asked for or there (auto), else the CPU.
    More ranks on this node than GPUs is refused by the launcher (check_devices); here it fails
    by name all the same."""
    import torch
    from torchdeck.errors import InvalidRequest

    want_cuda = config_device == "cuda" or (config_device == "auto" and torch.cuda.is_available())
    if not want_cuda:
        return torch.device("cpu")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if local_rank >= count:
        raise InvalidRequest(f"rank with local rank {local_rank} has no GPU: this machine has {count} CUDA "
                             f"device(s)", field="nproc")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def rank_threads(local_world: int) -> int:
    """(cores - 1) / nproc CPU threads a rank, at least one."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, (n - 1) // max(1, local_world))


def check_rendezvous_port(cfg) -> None:
    """Node 0 of several serves the rendezvous: a port already in use there would leave torchrun
    waiting on someone else's listener, so it is refused by name. (A host that is not this
    machine cannot be bound here: another node's endpoint is not checked.)"""
    import errno
    import socket

    from torchdeck.errors import InvalidRequest

    if cfg.nnodes <= 1 or cfg.node_rank != 0 or not cfg.rdzv_endpoint:
        return
    host, _, port = cfg.rdzv_endpoint.rpartition(":")
    host = host.strip("[]")
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except (OSError, ValueError):
        raise InvalidRequest(f"rendezvous host {host!r} cannot be resolved", field="rdzv_endpoint") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(addr)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise InvalidRequest(f"rendezvous port {port} on {host} is in use (another process listens there): "
                                     "choose another --rdzv-endpoint port", field="rdzv_endpoint") from None


def check_devices(cfg) -> None:
    """Refuse an nproc this machine cannot give a device each (checked where the run is asked for):
    on CUDA one GPU a rank. Without GPUs (device auto or cpu) ranks are Gloo CPU processes, at
    most one a core."""
    check_rendezvous_port(cfg)
    if cfg.nproc <= 1:
        return
    import torch
    from torchdeck.errors import InvalidRequest

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if cfg.device == "cuda" and gpus == 0:
        raise InvalidRequest(f"device cuda is not available: this machine has no CUDA device; nproc {cfg.nproc} "
                             "can run as CPU processes with device cpu (or auto)", field="device")
    if (cfg.device in ("cuda", "auto")) and gpus and cfg.nproc > gpus:
        raise InvalidRequest(f"nproc {cfg.nproc} is more than this machine's {gpus} GPU(s): one rank a GPU "
                             f"(use nproc {gpus}, or device cpu for CPU processes)", field="nproc")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if not gpus or cfg.device == "cpu":
        if cfg.nproc > cores:
            raise InvalidRequest(f"nproc {cfg.nproc} is more than this machine's {cores} CPU core(s): each CPU "
                                 f"rank needs one (at most nproc {cores})", field="nproc")
