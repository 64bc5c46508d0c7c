"""Thresholding and counting on toy networks whose numbers can be checked by hand."""

import math
from collections import OrderedDict

import pytest
import torch
from torch import nn

from slabbench import metrics as M
from slabbench.api import DatasetSpec
from slabbench.layers import MaskedLinear
from slabbench.models import build_model
from slabbench.prune import apply_masks, n_keep, topk_masks


def toy_mlp():
    """3 inputs -> 2 hidden -> 2 outputs; all weights 1, biases 0."""
    net = nn.Sequential(OrderedDict(fc1=MaskedLinear(3, 2), act=nn.ReLU(), fc2=MaskedLinear(2, 2)))
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(1.0)
        net.fc1.bias.zero_()
        net.fc2.bias.zero_()
    return net


def test_structure_of_a_known_mask():
    net = toy_mlp()
    # fc1: keep w[0,0], w[0,1] (hidden unit 0 reads inputs 0 and 1); unit 1 has no inputs.
    # fc2: keep w[0,0] and w[1,1] (unit 1 has an outgoing weight but no incoming one).
    apply_masks(net, {"fc1.weight": torch.tensor([[1., 1., 0.], [0., 0., 0.]]),
                      "fc2.weight": torch.tensor([[1., 0.], [0., 1.]])})
    s = M.structure(net, (3,))
    assert s["n_weights"] == 10 and s["nonzero_weights"] == 4
    assert s["sparsity"] == pytest.approx(0.6)
    assert s["compression"] == pytest.approx(2.5)
    assert s["n_biases"] == 4 and s["nonzero_biases"] == 0
    assert s["sparsity_all"] == pytest.approx(1 - 4 / 14)
    assert s["flops_kept"] == pytest.approx(0.4)
    assert s["nodes_kept"] == [1]
    assert s["features_kept"] == 2 and s["selected_features"] == [0, 1]
    # pruned weights are zeroed, and the mask acts in forward
    assert net.fc1.weight[1].abs().sum() == 0
    assert net(torch.tensor([[1.0, 2.0, 100.0]])).tolist() == [[3.0, 0.0]]


def test_lenet5_counts_and_conv_flops():
    spec = DatasetSpec(name="x", task="classification", input_shape=(1, 28, 28), outputs=10, sizes={})
    net = build_model("lenet5", spec)
    s = M.structure(net, spec.input_shape)
    assert s["n_weights"] == 500 + 25000 + 400000 + 5000
    dense_flops = 500 * 24 * 24 + 25000 * 8 * 8 + 400000 + 5000
    masks = {f"{n}.weight": torch.ones_like(l.weight) for n, l in net.named_modules() if isinstance(l, (MaskedLinear,)) or n.startswith("conv")}
    masks["conv1.weight"][:10] = 0  # drop half of conv1's output channels
    apply_masks(net, masks)
    s = M.structure(net, spec.input_shape)
    assert s["nodes_kept"][0] == 20  # their biases still feed a constant forward
    with torch.no_grad():
        net.conv1.bias[:10] = 0
    s = M.structure(net, spec.input_shape)
    assert s["flops_kept"] == pytest.approx((dense_flops - 250 * 576) / dense_flops)
    assert s["nodes_kept"][0] == 10  # conv1 channels still in use
    assert s["features_kept"] == 784  # pixels, as for an MLP on the same images (not 1 input channel)


def test_conv_features_are_the_pixels_a_kept_kernel_reads():
    """A 2x2 convolution with stride 2 over a 1x4x4 input whose only kept weight is the kernel's
    top-left corner reads the pixels (0,0), (0,2), (2,0), (2,2): 4 features, flattened (c, h, w)."""
    from slabbench.layers import MaskedConv2d

    net = nn.Sequential(OrderedDict(conv=MaskedConv2d(1, 1, 2, stride=2), act=nn.ReLU(), flat=nn.Flatten(),
                                    fc=MaskedLinear(4, 1)))
    apply_masks(net, {"conv.weight": torch.tensor([[[[1., 0.], [0., 0.]]]]), "fc.weight": torch.ones(1, 4)})
    s = M.structure(net, (1, 4, 4))
    assert s["features_kept"] == 4 and s["selected_features"] == [0, 2, 8, 10]
    apply_masks(net, {"conv.weight": torch.ones(1, 1, 2, 2), "fc.weight": torch.zeros(1, 4)})
    assert M.structure(net, (1, 4, 4))["features_kept"] == 0  # no path to the output


def test_classification_nll_is_log_softmax_not_a_clamped_log():
    logits = torch.tensor([[0.0, 100.0]])
    m = M.predictive_metrics(logits, torch.tensor([0]), "classification")
    assert m["test_nll"] == pytest.approx(100.0)  # a clamp at 1e-12 capped it at 27.6
    assert m["test_accuracy"] == 0.0
    # probabilities (a BMA): log of p[y], clamped only where it underflowed to 0
    p = torch.tensor([[0.0, 1.0], [0.25, 0.75]])
    m = M.predictive_metrics(p, torch.tensor([0, 0]), "classification", probs=True)
    tiny = torch.finfo(torch.float32).tiny
    assert m["test_nll"] == pytest.approx((-math.log(tiny) + math.log(4)) / 2)


def test_non_finite_outputs_give_nan_metrics_not_class_0_accuracy():
    y = torch.tensor([0, 0, 1])
    logits = torch.tensor([[float("nan")] * 2] * 3)
    m = M.predictive_metrics(logits, y, "classification", prefix="val")
    assert set(m) == {"val_accuracy", "val_nll", "val_ece"} and all(math.isnan(v) for v in m.values())
    m = M.predictive_metrics(torch.tensor([1.0, float("inf")]), torch.zeros(2), "regression")
    assert math.isnan(m["test_rmse"]) and math.isnan(m["test_nll"])


def test_regression_bma_nll_is_minus_log_of_the_mean_density():
    """Two samples predicting 0 and 2 for y = 1 (sd 1): the mixture density is N(1; 0, 1), so
    NLL = 1/2 + log(2 pi)/2 = 1.418939; a Gaussian at the averaged mean 1 would give 0.918939."""
    samples = torch.tensor([[0.0], [2.0]])
    nll = M.gaussian_mixture_nll(samples, torch.tensor([1.0]), 1.0)
    assert float(nll) == pytest.approx(0.5 + 0.5 * math.log(2 * math.pi))
    # (S, n) = (2, 2): averaged means [1, 2] against y = [1, 4]: errors 0 and 2, RMSE sqrt(2)
    m = M.predictive_metrics(torch.tensor([[0.0, 0.0], [2.0, 4.0]]), torch.tensor([1.0, 4.0]), "regression", probs=True)
    assert m["test_rmse"] == pytest.approx(math.sqrt(2.0)) and m["test_nll"] > 0
    # the average alone gives the RMSE and no NLL (it cannot give the mixture's density)
    assert set(M.predictive_metrics(torch.tensor([1.0]), torch.tensor([1.0]), "regression", probs=True)) == {"test_rmse"}
    # one sample: the plain Gaussian NLL; far tails stay finite (logsumexp)
    assert float(M.gaussian_mixture_nll(torch.tensor([[3.0]]), torch.tensor([0.0]), 1.0)) == pytest.approx(
        float(M.gaussian_nll(torch.tensor(3.0), torch.tensor(0.0), 1.0)))
    assert math.isfinite(float(M.gaussian_mixture_nll(torch.tensor([[1e4], [2e4]]), torch.tensor([0.0]), 1.0)))


def test_constant_predictor_rmse_by_hand():
    # training mean 2; test targets 0 and 4 -> errors 2 and 2 -> RMSE 2
    assert M.constant_predictor_metrics(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 4.0])) == {"test_rmse_constant": 2.0}


def test_topk_global_and_layerwise():
    scores = {"a.weight": torch.tensor([[5., 1.], [4., 0.]]), "b.weight": torch.tensor([[3., 2.]])}
    g = topk_masks(scores, sparsity=0.5)  # 6 weights, keep 3: 5, 4, 3
    assert g["a.weight"].tolist() == [[1, 0], [1, 0]] and g["b.weight"].tolist() == [[1, 0]]
    lw = topk_masks(scores, sparsity=0.5, scope="layerwise")  # keep 2 of a, 1 of b
    assert lw["a.weight"].tolist() == [[1, 0], [1, 0]] and lw["b.weight"].tolist() == [[1, 0]]
    ties = topk_masks({"w": torch.ones(4)}, sparsity=0.5)  # ties broken by index
    assert ties["w"].tolist() == [1, 1, 0, 0]
    nan = topk_masks({"w": torch.tensor([float("nan"), 1.0])}, sparsity=0.5)
    assert nan["w"].tolist() == [0, 1]
    with pytest.raises(ValueError, match="unknown prune scope 'local'"):
        topk_masks(scores, 0.5, scope="local")


def test_topk_ranks_pairs_lexicographically_and_keeps_float64_precision():
    # two layers whose weights all share one primary score (e.g. one gate each, both at the
    # clamp): the tie-break alone decides, across layers; kept by hand: 0.9, 0.8, 0.7
    scores = {"a.weight": (torch.ones(2, 2), torch.tensor([[0.1, 0.9], [0.8, 0.2]])),
              "b.weight": (torch.ones(1, 2), torch.tensor([[0.7, 0.3]]))}
    g = topk_masks(scores, sparsity=0.5)
    assert g["a.weight"].tolist() == [[0, 1], [1, 0]] and g["b.weight"].tolist() == [[1, 0]]
    # the primary key dominates any tie-break
    g = topk_masks({"w": (torch.tensor([2.0, 1.0]), torch.tensor([0.0, 100.0]))}, sparsity=0.5)
    assert g["w"].tolist() == [1, 0]
    # float64 scores are ranked in float64: a float32 cast would tie them and keep index 0
    fine = topk_masks({"w": torch.tensor([1.0, 1.0 + 1e-12], dtype=torch.float64)}, sparsity=0.5)
    assert fine["w"].tolist() == [0, 1]
    with pytest.raises(ValueError, match="one shape"):
        topk_masks({"w": (torch.ones(2), torch.ones(3))}, 0.5)


def test_n_keep():
    assert n_keep(1000, 0.9) == 100
    assert n_keep(10, 0.995) == 1  # never prune everything
    assert n_keep(3, 0.5) == 2  # round half up: 1.5 -> 2
    with pytest.raises(ValueError):
        n_keep(10, 1.0)


def test_ece_by_hand():
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    y = torch.tensor([0, 1, 1])
    # bins of width 1/15: 0.9 right, 0.6 wrong, 0.8 right, each alone in its bin
    assert M.ece(probs, y) == pytest.approx((0.1 + 0.6 + 0.2) / 3)
    # two points in one bin: |mean acc - mean conf| weighted by 2/2
    assert M.ece(torch.tensor([[0.9, 0.1], [0.91, 0.09]]), torch.tensor([0, 1])) == pytest.approx(abs(0.5 - 0.905))


def test_predictive_metrics_by_hand():
    logits = torch.log(torch.tensor([[0.75, 0.25], [0.5, 0.5]]))
    m = M.predictive_metrics(logits, torch.tensor([0, 1]), "classification")
    assert m["test_accuracy"] == 0.5  # argmax of a tie is class 0
    assert m["test_nll"] == pytest.approx(-(math.log(0.75) + math.log(0.5)) / 2, rel=1e-6)
    r = M.predictive_metrics(torch.tensor([1.0, 3.0]), torch.tensor([2.0, 3.0]), "regression", noise_sd=2.0)
    assert r["test_rmse"] == pytest.approx(math.sqrt(0.5))
    assert r["test_nll"] == pytest.approx(0.5 * (0.25 + 0) / 2 + math.log(2) + 0.5 * math.log(2 * math.pi))


def test_selection_errors():
    e = M.selection_errors([0, 1, 2, 7], [0, 1, 2, 3, 4], 10)
    assert e == {"fnr": pytest.approx(0.4), "fpr": pytest.approx(0.2)}


def test_vgg_counts_padding_and_method_layers():
    """A two-conv VGG-like net on 3x8x8 inputs: literal weight and FLOP counts; every method's
    training-time layers keep the 3x3 convolutions' padding (same output shape)."""
    from slabbench.api import TrainContext, make_params
    from slabbench.registry import method_class

    spec = DatasetSpec(name="x", task="classification", input_shape=(3, 8, 8), outputs=10, sizes={})
    net = build_model("vgg", spec, {"channels": [4, "M", 8, "M"]})
    s = M.structure(net, spec.input_shape)
    assert s["n_weights"] == 3 * 4 * 9 + 4 * 8 * 9 + 8 * 2 * 2 * 512 + 512 * 10
    dense_flops = 108 * 8 * 8 + 288 * 4 * 4 + 32 * 512 + 5120
    assert s["flops_kept"] == 1.0
    # one conv1 output channel (27 weights at 8x8 positions) and one conv2 weight (4x4 positions)
    # masked: the literal FLOPs they cost leave the count
    with torch.no_grad():
        net.conv1.weight_mask[0] = 0
        net.conv2.weight_mask[0, 0, 0, 0] = 0
    assert M.structure(net, spec.input_shape)["flops_kept"] == pytest.approx(
        (dense_flops - 27 * 8 * 8 - 1 * 4 * 4) / dense_flops, rel=1e-12)
    x = torch.randn(5, 3, 8, 8)
    net.eval()
    assert net(x).shape == (5, 10)
    assert build_model("vgg", spec, {"channels": [4, "M"], "width": 0.5}).conv1.out_channels == 2
    for name in ("spike_slab", "sparse_vd", "l0"):
        cls = method_class(name)
        ctx = TrainContext("classification", 10, 1, 1, 1e-3, torch.device("cpu"), spec)
        method = cls(make_params(cls.Params, {}, name), ctx)
        model = method.build(build_model("vgg", spec, {"channels": [4, "M", 8, "M"]})).eval()
        assert model(x).shape == (5, 10), name
        assert method.export(model)(x).shape == (5, 10), name


def test_vgg_rejects_bad_options():
    spec = DatasetSpec(name="x", task="classification", input_shape=(3, 8, 8), outputs=10, sizes={})
    with pytest.raises(ValueError, match="too many pools"):
        build_model("vgg", spec, {"channels": [4, "M", "M", "M", "M"]})
    with pytest.raises(ValueError, match=r"channels is \[4, 'P'\]; expected a list of convolution widths"):
        build_model("vgg", spec, {"channels": [4, "P"]})
    with pytest.raises(ValueError, match="width is 0; expected a finite number > 0"):
        build_model("vgg", spec, {"width": 0})


def test_features_need_a_path_to_the_output():
    """An input counts as selected only if a chain of nonzero weights reaches an output: with
    the last layer cut off from a hidden unit, that unit's inputs are not selected; with every
    hidden unit cut off, no input is."""
    spec = DatasetSpec(name="x", task="regression", input_shape=(3,), outputs=1, sizes={})
    net = build_model("mlp", spec, {"hidden": [2]})
    with torch.no_grad():
        net.fc1.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 3.0]]))
        net.fc2.weight.copy_(torch.tensor([[0.0, 1.0]]))  # unit 0 (fed by input 0) leads nowhere
    s = M.structure(net, spec.input_shape)
    assert s["selected_features"] == [1, 2] and s["features_kept"] == 2
    with torch.no_grad():
        net.fc2.weight.zero_()
    s = M.structure(net, spec.input_shape)
    assert s["selected_features"] == [] and s["features_kept"] == 0


def test_bai_rule_as_written_counts_inputs_into_units_cut_off_from_the_outputs():
    """fc1 reads inputs 0 and 1 into unit 0 and input 2 into unit 1; fc2 reads only unit 1:
    input 2 reaches the outputs, inputs 0 and 1 do not.  Bai et al.'s rule as written selects
    all three; ours selects input 2 only (true support {0, 2} of 4 inputs)."""
    net = nn.Sequential(MaskedLinear(4, 2), nn.ReLU(), MaskedLinear(2, 1))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]))
        net[2].weight.copy_(torch.tensor([[0.0, 1.0]]))
    s = M.structure(net, (4,))
    assert (s["selected_features"], s["features_kept"]) == ([2], 1)
    assert (s["selected_features_bai"], s["features_kept_bai"]) == ([0, 1, 2], 3)
    assert M.selection_errors(s["selected_features_bai"], (0, 2), 4, suffix="_bai") == {"fnr_bai": 0.0, "fpr_bai": 0.5}
