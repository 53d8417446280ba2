"""Ports of PyTorch's SWA utility tests (test/optim/test_swa_utils.py, ``TestSWAUtils``) to
``inertia.torch.SGD``.

torch's tests move the weights by hand; ours train them with an optimizer, once with
``inertia.torch.SGD`` and once with ``torch.optim.SGD`` (for-loop), and require the averaged
models (``AveragedModel`` with SWA or EMA averaging, buffers too), ``SWALR``'s rates and
``update_bn``'s statistics to be the same bit for bit, and the averages to be the averages
of the weights the optimizer produced. README.md maps every torch test to its port here.
"""

from __future__ import annotations

import itertools
import pickle

import pytest

from torch_harness_common import SGD, assert_bitwise, assert_same_state, torch

from torch.optim.swa_utils import SWALR, AveragedModel, get_ema_multi_avg_fn, get_swa_multi_avg_fn, update_bn  # noqa: E402

OPTIMIZERS = {"inertia": SGD, "torch": lambda params, **kw: torch.optim.SGD(params, foreach=False, **kw)}


def convnet():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 5, kernel_size=3), torch.nn.ReLU(), torch.nn.MaxPool2d(kernel_size=2), torch.nn.BatchNorm2d(5, momentum=0.3),
        torch.nn.Conv2d(5, 2, kernel_size=3), torch.nn.ReLU(), torch.nn.Linear(5, 5), torch.nn.ReLU(), torch.nn.Linear(5, 10),
    )


def small_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 5, kernel_size=3), torch.nn.BatchNorm2d(5, momentum=0.3), torch.nn.Linear(5, 10))


def batches(count, size, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 1, size, size, generator=generator) for _ in range(count)]


INPUT_SIZE = {"convnet": 16, "small_net": 7}  # the last Linear layers act on the width


def train_and_average(which, make_net, averaged_of, steps=10):
    """Train ``make_net()`` with the optimizer ``which`` (momentum, weight decay), updating
    the average after each step; returns the net, the averaged model and the snapshots of
    the weights (and buffers) after each step."""
    net = make_net()
    optimizer = OPTIMIZERS[which](net.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-3, nesterov=True)
    averaged = averaged_of(net)
    snapshots = []
    for x in batches(steps, INPUT_SIZE[make_net.__name__]):
        optimizer.zero_grad()
        net(x).pow(2).mean().backward()
        optimizer.step()
        averaged.update_parameters(net)
        snapshots.append([t.detach().clone() for t in itertools.chain(net.parameters(), net.buffers())])
    return net, optimizer, averaged, snapshots


def run_both(make_net, averaged_of, steps=10):
    runs = {which: train_and_average(which, make_net, averaged_of, steps) for which in OPTIMIZERS}
    (net, optimizer, averaged, snapshots), (twin, reference, twin_averaged, _) = runs["inertia"], runs["torch"]
    assert_bitwise(net.parameters(), twin.parameters())
    assert_bitwise(net.buffers(), twin.buffers(), "buffer")
    assert_same_state(optimizer, net.parameters(), reference, twin.parameters())
    assert_bitwise(averaged.parameters(), twin_averaged.parameters(), "averaged parameter")
    assert_bitwise(averaged.buffers(), twin_averaged.buffers(), "averaged buffer")
    return net, averaged, snapshots


@pytest.mark.parametrize("ema", [False, True], ids=["swa", "ema"])
def test_averaged_model_all_devices(ema):
    # On the CPU (torch's CUDA variants aside): the average of the weights inertia's SGD
    # produced, an equal one (SWA) or decaying by 0.999 (EMA), as with torch.optim.SGD.
    decay = 0.999
    multi = get_ema_multi_avg_fn(decay) if ema else get_swa_multi_avg_fn()
    net, averaged, snapshots = run_both(convnet, lambda net: AveragedModel(net, device=torch.device("cpu"), multi_avg_fn=multi))
    count = len(list(net.parameters()))
    n = len(snapshots)
    for k, average in enumerate(averaged.parameters()):
        history = [snapshot[k] for snapshot in snapshots]
        if ema:
            expected = history[0] * decay ** (n - 1) + sum(h * (1 - decay) * decay ** (n - 1 - i) for i, h in enumerate(history) if i > 0)
        else:
            expected = sum(history) / n
        torch.testing.assert_close(average, expected)
        assert average.device.type == "cpu"
    assert k == count - 1
    assert averaged.n_averaged.item() == n and averaged.n_averaged.device.type == "cpu"


def test_averaged_model_state_dict():
    net, averaged, _ = run_both(small_net, lambda net: AveragedModel(net))
    copy = AveragedModel(small_net())
    copy.load_state_dict(averaged.state_dict())
    assert_bitwise(copy.parameters(), averaged.parameters(), "averaged parameter")
    assert copy.n_averaged == averaged.n_averaged == 10


def test_averaged_model_default_avg_fn_picklable():
    net, averaged, _ = run_both(small_net, lambda net: AveragedModel(net), steps=3)
    restored = pickle.loads(pickle.dumps(averaged))
    assert_bitwise(restored.parameters(), averaged.parameters(), "averaged parameter")


@pytest.mark.parametrize("use_buffers", [False, True], ids=["parameters", "with-buffers"])
@pytest.mark.parametrize("use_multi_avg_fn", [False, True], ids=["avg_fn", "multi_avg_fn"])
def test_averaged_model_exponential(use_multi_avg_fn, use_buffers):
    # EMA (decay 0.9) by avg_fn or multi_avg_fn, of the parameters or of the buffers too
    # (the BatchNorm statistics; its step counter, 0-dim, is copied, not averaged).
    decay = 0.9
    if use_multi_avg_fn:
        make = lambda net: AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=use_buffers)  # noqa: E731
    else:
        make = lambda net: AveragedModel(net, avg_fn=lambda avg, p, n: decay * avg + (1 - decay) * p, use_buffers=use_buffers)  # noqa: E731
    net, averaged, snapshots = run_both(small_net, make)
    tracked = list(itertools.chain(net.parameters(), net.buffers())) if use_buffers else list(net.parameters())
    mine = list(itertools.chain(averaged.module.parameters(), averaged.module.buffers())) if use_buffers else list(averaged.parameters())
    for k, (original, average) in enumerate(zip(tracked, mine)):
        if original.dim() == 0:
            continue
        expected = snapshots[0][k]
        for snapshot in snapshots[1:]:
            expected = expected * decay + snapshot[k] * (1 - decay)
        torch.testing.assert_close(average, expected)
    if not use_buffers:  # the buffers are copies of the trained model's
        assert_bitwise(averaged.module.buffers(), net.buffers(), "buffer")


class DenseBN(torch.nn.Module):
    def __init__(self, features):
        super().__init__()
        self.n_features = 100
        self.fc1 = torch.nn.Linear(features, self.n_features)
        self.bn = torch.nn.BatchNorm1d(self.n_features)

    def preactivation(self, x):
        return self.fc1(x)

    def forward(self, x):
        return self.bn(self.fc1(x))


class ConvBN(torch.nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.n_features = 10
        self.conv1 = torch.nn.Conv2d(channels, self.n_features, kernel_size=3, padding=1)
        self.bn = torch.nn.BatchNorm2d(self.n_features, momentum=0.3)

    def preactivation(self, x):
        return self.conv1(x)

    def forward(self, x):
        return self.bn(self.conv1(x))


def check_update_bn(make, shape):
    # Train with each optimizer, then recompute the BatchNorm statistics of the averaged
    # model with update_bn: the exact mean / variance of its preactivations over the data
    # (torch's tolerances), the same bits for both optimizers, from loaders with and
    # without targets, after a reset too; training mode kept.
    torch.manual_seed(3)
    x, y = torch.rand(100, *shape), torch.rand(100)
    with_targets = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=5)
    inputs_only = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=5)
    results = []
    for which in OPTIMIZERS:
        torch.manual_seed(0)
        net = make()
        optimizer = OPTIMIZERS[which](net.parameters(), lr=0.05, momentum=0.9)
        averaged = AveragedModel(net, use_buffers=False)
        for xb, yb in itertools.islice(with_targets, 8):
            optimizer.zero_grad()
            (net(xb).mean(dim=tuple(range(1, net(xb).dim()))) - yb).pow(2).mean().backward()
            optimizer.step()
            averaged.update_parameters(net)
        model = averaged.module
        model.train()
        with torch.no_grad():
            pre = model.preactivation(x)
            pre = pre.transpose(1, 3) if pre.dim() == 4 else pre
            pre = pre.reshape(-1, model.n_features)
            mean, var = pre.mean(dim=0), pre.var(dim=0, unbiased=False)
        for loader in (with_targets, inputs_only):
            model.bn.running_mean = torch.zeros_like(model.bn.running_mean)
            model.bn.running_var = torch.ones_like(model.bn.running_var)
            update_bn(loader, model)
            torch.testing.assert_close(model.bn.running_mean, mean)
            torch.testing.assert_close(model.bn.running_var, var, atol=1e-1, rtol=0)
        assert model.training
        results.append((model.bn.running_mean.clone(), model.bn.running_var.clone(), list(model.parameters())))
    assert_bitwise(results[0][2], results[1][2])
    assert_bitwise(results[0][:2], results[1][:2], "running statistic")


def test_update_bn_dnn():
    check_update_bn(lambda: DenseBN(5), (5,))


def test_update_bn_cnn():
    check_update_bn(lambda: ConvBN(3), (3, 5, 5))


def test_bn_update_eval_momentum():
    # update_bn leaves a model in eval mode in eval mode, with its BatchNorm momentum.
    torch.manual_seed(3)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.rand(100, 3, 5, 5)), batch_size=5)
    net = ConvBN(3)
    optimizer = SGD(net.parameters(), lr=0.01)
    for (xb,) in itertools.islice(loader, 3):
        optimizer.zero_grad()
        net(xb).pow(2).mean().backward()
        optimizer.step()
    net.eval()
    update_bn(loader, net)
    assert not net.training and net.bn.momentum == 0.3


def test_swa_recipe_end_to_end_matches_torch():
    # The documented recipe: cosine annealing, then from epoch 5 SWALR with an averaged
    # model updated each epoch, then update_bn: the same bits with either optimizer.
    torch.manual_seed(4)
    data = [torch.randn(8, 3, 5, 5) for _ in range(4)]
    outcome = []
    for which in OPTIMIZERS:
        torch.manual_seed(0)
        net = ConvBN(3)
        optimizer = OPTIMIZERS[which](net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        averaged = AveragedModel(net)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=10)
        swa_schedule = SWALR(optimizer, swa_lr=0.05, anneal_epochs=2)
        rates = []
        for epoch in range(10):
            for xb in data:
                optimizer.zero_grad()
                net(xb).pow(2).mean().backward()
                optimizer.step()
            if epoch >= 5:
                averaged.update_parameters(net)
                swa_schedule.step()
            else:
                schedule.step()
            rates.append(optimizer.param_groups[0]["lr"])
        update_bn(data, averaged)
        outcome.append((rates, list(averaged.parameters()) + list(averaged.buffers()), list(net.parameters())))
    assert outcome[0][0] == outcome[1][0]
    assert outcome[0][0][-1] == pytest.approx(0.05)
    assert_bitwise(outcome[0][1], outcome[1][1], "averaged tensor")
    assert_bitwise(outcome[0][2], outcome[1][2])
