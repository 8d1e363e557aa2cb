"""distributed.py: a single process needs no process group; two gloo ranks agree on a flag any rank raises
and on their weights (a desync is an error); the weights digest by hand; SIGTERM/SIGINT ask for a stop and
the old handlers come back."""

from __future__ import annotations

import hashlib
import os
import signal
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from a2b_pipeline.training.distributed import (
    StopRequest,
    broadcast_flag,
    check_ranks_agree,
    init_distributed,
    weights_digest,
)


def test_single_process(monkeypatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert init_distributed() == (0, 1, 0) and not dist.is_initialized()
    assert broadcast_flag(1, 1, torch.device("cpu")) is True
    assert broadcast_flag(None, 1, torch.device("cpu")) is False


def test_weights_digest_by_hand() -> None:
    lin = nn.Linear(2, 1)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, -2.0]]))
        lin.bias.fill_(0.5)
    h = hashlib.sha256()
    for k, v in sorted(lin.state_dict().items()):
        h.update(k.encode())
        h.update(v.numpy().tobytes())
    assert weights_digest(lin) == h.hexdigest()
    with torch.no_grad():
        lin.bias.fill_(0.25)
    assert weights_digest(lin) != h.hexdigest()


def _rank(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank))
    os.environ["LOCAL_RANK"] = "0"  # as on two nodes of one process each
    torch.set_num_threads(1)
    got = {"init": init_distributed()}
    cpu = torch.device("cpu")
    got["one"] = broadcast_flag(rank == 1, 2, cpu)  # raised by one rank only
    got["none"] = broadcast_flag(False, 2, cpu)
    torch.manual_seed(0)
    model = nn.Linear(2, 2)
    check_ranks_agree(model, rank, 2)
    with torch.no_grad():
        model.bias[0] += rank
    try:
        check_ranks_agree(model, rank, 2)
        got["desync"] = "not noticed"
    except RuntimeError as e:
        got["desync"] = str(e)
    dist.destroy_process_group()
    torch.save(got, f"{out}/{rank}.pt")


def test_two_gloo_ranks_agree(tmp_path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # forked: the ranks start with torch already imported (a spawn re-imports it: seconds per rank)
    mp.start_processes(_rank, args=(port, str(tmp_path)), nprocs=2, join=True, start_method="fork")
    for rank in (0, 1):
        got = torch.load(tmp_path / f"{rank}.pt")
        assert got["init"] == (rank, 2, 0)
        assert got["one"] is True and got["none"] is False
        assert got["desync"].startswith("ranks ended with different weights")


def test_stop_request_on_signals_and_restore() -> None:
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    stop = StopRequest()
    try:
        assert stop.requested is None
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested == signal.SIGTERM
        stop._handle(signal.SIGTERM, None)  # a second SIGTERM just asks again
        with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C stops now
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        stop.restore()
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    fresh = StopRequest()
    try:
        os.kill(os.getpid(), signal.SIGINT)  # a first Ctrl-C only asks
        assert fresh.requested == signal.SIGINT
    finally:
        fresh.restore()
