"""Process plumbing of a training run: torchrun ranks (joining, agreeing on a flag, checking the replicas
agree at the end) and the signals that ask a run to stop at the next step boundary."""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import threading
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger("a2b_pipeline.train")


def init_distributed() -> tuple[int, int, int]:
    """(rank, world_size, local_rank); joins the process group when launched by torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    if world_size > 1:
        return dist.get_rank(), world_size, int(os.environ.get("LOCAL_RANK", "0"))
    return 0, 1, 0


def broadcast_flag(flag: Any, world_size: int, device: torch.device) -> bool:
    """Every rank stops together: any rank's flag counts."""
    if world_size == 1:
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def check_ranks_agree(model: nn.Module, rank: int, world_size: int) -> None:
    """DDP keeps replicas identical; verify it at the end, so a silent desync can't go unnoticed."""
    digest = weights_digest(model)
    everyone: list[Any] = [None] * world_size
    dist.all_gather_object(everyone, digest)
    log.info("rank %d of %d: final weights sha256 %s", rank, world_size, digest)
    if len(set(everyone)) != 1:
        raise RuntimeError(f"ranks ended with different weights: {everyone}")


def weights_digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class StopRequest:
    """SIGTERM/SIGINT set a flag; the loop checkpoints at the next step boundary and stops."""

    def __init__(self) -> None:
        self.requested: int | None = None
        self._old: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.requested = signum

    def restore(self) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old.clear()
