"""Domain-aware BatchNorm statistics: which batches update which statistics, checked by hand."""

import pytest
import torch
from torch import nn

from dakd.models import checkpoint as ckpt
from dakd.models.domain_bn import (
    SOURCE_KEYS,
    add_source_statistics,
    bn_domain,
    has_source_statistics,
    reestimate,
)


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.ReLU())


def _stats(x):
    """Per-channel batch mean and unbiased variance of the conv output of :func:`_net`."""
    return x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=True)


def test_domain_mode_keeps_one_pair_of_statistics_per_domain():
    net = add_source_statistics(_net()).train()
    bn = net[1]
    src, tgt = torch.randn(4, 3, 5, 5) * 3 + 2, torch.randn(4, 3, 5, 5)
    with torch.no_grad():
        m_s, v_s = _stats(net[0](src))
        m_t, v_t = _stats(net[0](tgt))
    with bn_domain(net, "source", "domain"):
        net(src)
    # momentum 0.1 from (0, 1): only the source pair moved, by hand
    torch.testing.assert_close(bn.source_running_mean, 0.1 * m_s)
    torch.testing.assert_close(bn.source_running_var, 0.9 + 0.1 * v_s)
    assert torch.equal(bn.running_mean, torch.zeros(4)) and torch.equal(
        bn.running_var, torch.ones(4)
    )
    net(tgt)  # outside the block: the module's own pair is the target's
    torch.testing.assert_close(bn.running_mean, 0.1 * m_t)
    torch.testing.assert_close(bn.running_var, 0.9 + 0.1 * v_t)
    torch.testing.assert_close(bn.source_running_mean, 0.1 * m_s)  # untouched


def test_frozen_network_normalises_each_domain_with_its_statistics():
    net = add_source_statistics(_net())
    bn = net[1]
    bn.running_mean.fill_(1.0)
    bn.source_running_mean.fill_(-2.0)
    bn.source_running_var.fill_(4.0)
    net.eval()
    x = torch.randn(2, 3, 5, 5)
    with torch.no_grad():
        z = net[0](x)
        with bn_domain(net, "source", "domain"):
            out_source = net(x)
        out_target = net(x)
    view = (1, 4, 1, 1)
    eps = bn.eps
    expect_source = torch.relu((z + 2.0) / (4.0 + eps) ** 0.5 * bn.weight.view(view))
    expect_target = torch.relu((z - 1.0) / (1.0 + eps) ** 0.5 * bn.weight.view(view))
    torch.testing.assert_close(out_source, expect_source + 0 * bn.bias.view(view))
    torch.testing.assert_close(out_target, expect_target)
    # the block restores the exact tensors, also after an error inside it
    before = bn.running_mean
    with pytest.raises(RuntimeError), bn_domain(net, "source", "domain"):
        raise RuntimeError("boom")
    assert bn.running_mean is before


def test_target_mode_source_batches_update_nothing():
    net = _net().train()
    bn = net[1]
    src = torch.randn(4, 3, 5, 5) * 3 + 2
    with bn_domain(net, "source", "target"):
        out = net(src)
    assert torch.equal(bn.running_mean, torch.zeros(4))
    assert torch.equal(bn.running_var, torch.ones(4))
    assert bn.track_running_stats  # restored
    with torch.no_grad():  # normalised with the batch's own statistics
        z = net[0](src)
        m, v = z.mean((0, 2, 3), keepdim=True), z.var((0, 2, 3), unbiased=False, keepdim=True)
        expect = torch.relu((z - m) / (v + bn.eps).sqrt() * bn.weight.view(1, 4, 1, 1))
    torch.testing.assert_close(out, expect)
    # blended mode, and the target domain, are plain PyTorch: the batch updates the statistics
    with bn_domain(net, "source", "blended"):
        net(src)
    assert not torch.equal(bn.running_mean, torch.zeros(4))


def test_a_network_without_a_source_pair_is_left_alone():
    net = _net().eval()
    with bn_domain(net, "source", "domain"):
        assert not has_source_statistics(net)


def test_reestimate_is_the_cumulative_average_of_batch_statistics():
    net = _net()
    batches = [torch.randn(3, 3, 4, 4) + i for i in range(3)]
    reestimate(net.eval(), batches)
    with torch.no_grad():
        stats = [_stats(net[0](b)) for b in batches]
    torch.testing.assert_close(net[1].running_mean, torch.stack([m for m, _ in stats]).mean(0))
    torch.testing.assert_close(net[1].running_var, torch.stack([v for _, v in stats]).mean(0))
    assert not net.training and net[1].momentum == 0.1  # mode and momentum restored


def test_trained_stages_store_and_reload_both_pairs(tiny):
    from dakd.engine.trainer import train
    from dakd.runtime.builders import network_from_checkpoint

    result = train(tiny("student_da", train__steps=3, train__eval_interval=3))
    model, state = network_from_checkpoint(result.checkpoint.parent / "model.pt")
    assert has_source_statistics(model)
    keys = [k for k in state["model"] if k.endswith(SOURCE_KEYS)]
    assert keys, "the final weights hold the source statistics"
    for key in keys:
        assert torch.equal(model.state_dict()[key], state["model"][key])
    # a one-domain stage has nothing to separate
    result = train(tiny("source_only", name="so", train__steps=2, train__eval_interval=2))
    model, _ = network_from_checkpoint(result.checkpoint.parent / "model.pt")
    assert not has_source_statistics(model)
    # blended mode: one pair, as plain PyTorch
    result = train(
        tiny(
            "student_da",
            name="bl",
            train__steps=2,
            train__eval_interval=2,
            train__bn_stats="blended",
        )
    )
    model, _ = network_from_checkpoint(result.checkpoint.parent / "model.pt")
    assert not has_source_statistics(model)


def test_student_da_target_statistics_come_from_target_batches_only(tiny):
    """In training both modes normalise with batch statistics, so a step computes the same
    thing; in ``domain`` mode source batches update only the source pair, so the network's own
    statistics equal those of ``target`` mode (source batches update nothing) bit for bit, and
    differ from ``blended`` mode's."""
    from dakd.engine.state import TrainState

    cfgs = {
        mode: tiny("student_da", name=mode, train__steps=1, train__bn_stats=mode)
        for mode in ("domain", "target", "blended")
    }
    stats = {}
    for mode, cfg in cfgs.items():
        trainer = TrainState(cfg)
        trainer.train_step()
        bn = next(m for m in trainer.model.modules() if isinstance(m, nn.BatchNorm2d))
        stats[mode] = (bn.running_mean.clone(), bn.running_var.clone())
    torch.testing.assert_close(stats["domain"][0], stats["target"][0], rtol=0, atol=0)
    torch.testing.assert_close(stats["domain"][1], stats["target"][1], rtol=0, atol=0)
    assert not torch.equal(stats["domain"][0], stats["blended"][0])


def test_checkpoint_without_source_pair_loads_into_a_plain_network(tiny):
    from dakd.runtime.builders import build_network, spec_of

    cfg = tiny("student_da")
    spec = spec_of(cfg.models.student)
    plain = build_network(spec)
    state = {"network": spec, "model": plain.state_dict()}
    other = build_network(spec)
    ckpt.load_network(other, state, spec, "x.pt")
    assert not has_source_statistics(other)
    add_source_statistics(plain)
    state = {"network": spec, "model": plain.state_dict()}
    ckpt.load_network(other, state, spec, "y.pt")
    assert has_source_statistics(other)


def _bn_buffers(model):
    return torch.cat(
        [
            torch.cat([m.running_mean, m.running_var])
            for m in model.modules()
            if isinstance(m, nn.BatchNorm2d)
        ]
    )


def test_precise_bn_stores_the_target_statistics_of_the_final_weights(tiny):
    """With train.precise_bn_images the stored target statistics are those of the final weights on
    target images: re-estimating them on other target-train images changes the evaluation by
    at most 1 mIoU and the statistics by sampling noise, while blended running averages (the
    behaviour before bn_stats existed) are far from them. Training itself is unchanged."""
    from dakd.engine.trainer import train
    from dakd.recipes.calibration import bn_reestimation_check
    from dakd.runtime.builders import network_from_checkpoint

    common = {
        "train__steps": 6,
        "train__eval_interval": 6,
        "data__val_size": 40,
        "data__val_batch_size": 20,
    }
    runs = {
        "precise": tiny("student_da", name="precise", train__precise_bn_images=64, **common),
        "plain": tiny("student_da", name="plain", **common),
        "blended": tiny("student_da", name="blended", train__bn_stats="blended", **common),
    }
    models = {}
    for key, cfg in runs.items():
        train(cfg)
        models[key] = network_from_checkpoint(cfg.run_dir / "model.pt")[0]
    # precise BN reads no random numbers and trains on running statistics never: same weights
    weights = {k: v for k, v in models["precise"].state_dict().items() if "running" not in k}
    plain = models["plain"].state_dict()
    assert all(torch.equal(v, plain[k]) for k, v in weights.items() if "num_batches" not in k)

    stored, reestimated = bn_reestimation_check(str(runs["precise"].run_dir / "model.pt"))
    assert abs(stored - reestimated) <= 1.0

    def distance(key):
        model = models[key]
        before = _bn_buffers(model).clone()
        from dakd.data.scenes import SceneDataset

        target = SceneDataset("city", "train", size=(32, 64))
        batches = [
            torch.stack([target[i]["image"] for i in range(j, j + 16)]) for j in (1000, 1016)
        ]
        reestimate(model, batches)
        return (before - _bn_buffers(model)).norm() / _bn_buffers(model).norm()

    near, far = distance("precise"), distance("blended")
    print(
        f"relative distance to re-estimated target statistics: precise {near:.3f}, blended {far:.3f}; mIoU {stored:.2f} -> {reestimated:.2f}"
    )
    assert near < 0.5 * far
