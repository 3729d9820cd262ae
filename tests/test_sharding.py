"""grpo_guard.sharding on a one-process gloo group (FSDP2 makes DTensors even with one process; the
two-process runs are in test_train_distributed.py)."""

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent('''
    import socket
    import torch, torch.distributed as dist
    from torch import nn
    from grpo_guard.sharding import (any_sharded, full_optimizer_state, full_tensor, is_sharded,
                                     load_optimizer_state, reshard, shard_like, shard_modules)

    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    plain = [p.detach().clone() for p in net.parameters()]
    shard_modules([net[0], net], 1, torch.device("cpu"))  # net[2]'s weights belong to the root
    params = list(net.parameters())
    assert all(is_sharded(p) for p in params) and any_sharded(params)
    assert all(torch.equal(full_tensor(p), q) for p, q in zip(params, plain))
    assert not any_sharded([torch.zeros(2)]) and torch.equal(shard_like(torch.ones(2), torch.zeros(2)), torch.ones(2))

    opt = torch.optim.AdamW(params, lr=0.1)
    for _ in range(2):
        net(torch.randn(5, 4)).square().mean().backward()
        opt.step(); opt.zero_grad()
    full = full_optimizer_state(opt)
    # the live state keeps its DTensors (state_dict() shares its dicts: writing into them broke the next step)
    assert all(is_sharded(v) for st in opt.state.values() for k, v in st.items() if k != "step")
    assert all(not is_sharded(v) for st in full["state"].values() for v in st.values())
    assert [tuple(full["state"][i]["exp_avg"].shape) for i in range(4)] == [tuple(p.shape) for p in params]
    net(torch.randn(5, 4)).square().mean().backward(); opt.step(); opt.zero_grad()  # still steps

    # a fresh optimizer loads the whole state back into the sharded layout
    fresh = torch.optim.AdamW(params, lr=0.1)
    load_optimizer_state(fresh, full)
    for p in params:
        assert is_sharded(fresh.state[p]["exp_avg"]) and is_sharded(fresh.state[p]["exp_avg_sq"])
    again = full_optimizer_state(fresh)
    assert all(torch.equal(again["state"][i][k], full["state"][i][k]) for i in full["state"] for k in full["state"][i])
    # FSDP2 keeps a root module's whole weights registered after a forward without gradient; reshard()
    # registers the slices again (the loop relies on it before reading or swapping weights)
    with torch.no_grad():
        net(torch.randn(3, 4))
    assert not any_sharded(net[2].parameters()) and all(is_sharded(p) for p in net[0].parameters())
    reshard(net)
    assert all(is_sharded(p) for p in net.parameters())
    assert all(a is b for a, b in zip(net.parameters(), params))  # the optimizer's parameters again
    # shard_like puts a whole tensor into a parameter's layout
    w = torch.randn(8, 4)
    with torch.no_grad():
        params[0].copy_(shard_like(w, params[0]))
    assert torch.equal(full_tensor(params[0]), w)
    dist.destroy_process_group()
    print("ok")
''')


def test_sharding_helpers_on_one_process():
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]


def test_backbones_without_fsdp_units_say_so():
    import pytest

    from grpo_guard.backbones import Backbone

    with pytest.raises(NotImplementedError, match="does not support train.fsdp"):
        Backbone().fsdp_units()


def test_fsdp_with_one_process_says_so_and_trains_unsharded(tmp_path):
    from tiny_backbone import rows, tiny_cfg

    from grpo_guard.train.loop import train

    said = []
    run = train(tiny_cfg(tmp_path / "cache", "train.fsdp=true", "train.epochs=1"), tmp_path / "run", log=said.append)
    assert any("train.fsdp: one process, nothing to shard" in line for line in said)
    assert [r["epoch"] for r in rows(run)] == [0]
