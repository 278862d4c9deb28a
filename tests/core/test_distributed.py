"""Two-process ``torch.distributed`` (gloo, CPU) DDP training: both ranks export byte-identical bundles.

What a user's multi-process loop relies on: ``compress`` gives every rank the same generator and
initial codes (``mcnc_core.prng``, not torch's RNG), DDP all-reduces the codes' gradients like any
parameter's, and ``export_bundle`` is a pure function of the trained state. So after training on
different data shards, rank 0's and rank 1's files are the same bytes, and differ from the
untrained model's bundle (training moved the codes).
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import mcnc_core as mc

WORLD = 2
STEPS = 30


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _model() -> nn.Module:
    torch.manual_seed(0)  # the same raw init on every rank (DDP would broadcast it anyway)
    net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    return mc.compress(net, mc.MCNCConfig(chunk_size=64, k=4, width=16, seed=3, init_seed=3, min_numel=1))


def _worker(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        model = _model()
        if rank == 0:
            mc.save_bundle(mc.export_bundle(model), Path(out) / "init.mcnc")
        ddp = nn.parallel.DistributedDataParallel(model)
        opt = torch.optim.Adam(mc.param_groups(model, total_steps=STEPS))
        g = torch.Generator().manual_seed(100 + rank)  # each rank its own shard of the data
        for _ in range(STEPS):
            x = torch.randn(32, 16, generator=g)
            y = (x[:, :4].argmax(1)).long()
            loss = nn.functional.cross_entropy(ddp(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # DDP averages the codes', scales' and biases' gradients over ranks
            opt.step()
        mc.save_bundle(mc.export_bundle(model), Path(out) / f"rank{rank}.mcnc")
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_ddp_ranks_export_identical_bundles(tmp_path: Path) -> None:
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    r0, r1, init = ((tmp_path / n).read_bytes() for n in ("rank0.mcnc", "rank1.mcnc", "init.mcnc"))
    assert r0 == r1
    assert r0 != init
    trained, start = mc.load_bundle(tmp_path / "rank0.mcnc"), mc.load_bundle(tmp_path / "init.mcnc")
    assert not torch.equal(trained.alpha, start.alpha)  # the codes themselves moved
    state = mc.reconstruct(trained, verify=True)
    assert all(torch.isfinite(t).all() for t in state.values())
