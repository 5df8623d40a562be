"""The VAE's geometry and heads, the KL, the perceptual and pixel losses, and VGG weight loading."""
import math
import re
import warnings

import pytest
import torch
import torchvision
from torch.distributions import Normal, kl_divergence

from conftest import SHARED, trained_like_vgg19
from vae import imageconv
from vae.imageconv import ImageConv2d, padded_conv
from vae.losses import BernoulliLoss, PerceptualLoss, PixelLoss, kl_per_dimension, per_image, vae_loss
from vae.model import VAE, ModelConfig, decoder_start, describe, parameter_counts
from vae.spec import LayerSpec, SpecError, parse_layers
from vae.vgg import RANDOM, TRAINED_STRUCTURE, VGGWeightsError, filter_structure, load_vgg

VGG_WEIGHTS = SHARED / "weights" / "vgg19-features-relu3_1.pth"
SMALL = dict(encoder="8@4x4-1, 16@4x4-2, 16@4x4-2, 32@4x4-2", decoder="32@3x3-1, 16@3x3-2, 16@3x3-2, 8@3x3-2",
             latent=8)


def test_paper_configuration_maps_161_to_161():
    model = VAE()  # the paper's layers, latent 180
    assert model.encoder_grid == 20 and model.start_shape == (768, 21, 21)
    x = torch.rand(1, 3, 161, 161)
    x_hat, mu, sigma = model.eval()(x)
    assert x_hat.shape == (1, 3, 161, 161) and mu.shape == sigma.shape == (1, 180)
    assert 0 <= x_hat.min() and x_hat.max() <= 1
    counts = parameter_counts(model)
    # heads: 2 x (768 * 20 * 20 + 1) * 180; decoder input: (180 + 1) * 768 * 21 * 21
    assert counts["mu and sigma heads"] == 2 * (768 * 400 + 1) * 180
    assert counts["decoder input layer"] == 181 * 768 * 441
    assert counts["total"] == sum(p.numel() for p in model.parameters()) == 186_211_563
    assert "186,211,563" in describe(model)


@pytest.mark.parametrize("size, encoder, decoder", [(161, None, None), (32, SMALL["encoder"], SMALL["decoder"]),
                                                    (16, "4@3x3-2,4@3x3-2,4@3x3-2,4@3x3-2,4@3x3-2", "8@1x1-1,8@3x3-2")])
def test_the_sides_of_the_normalised_maps_are_those_the_batchnorms_see(size, encoder, decoder):
    layers = {"encoder": encoder, "decoder": decoder} if encoder else {}
    model = VAE(ModelConfig(image_size=size, **layers, latent=4)).eval()
    seen = []
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.register_forward_hook(lambda _, inputs, __: seen.append(inputs[0].shape[-1]))
    with torch.no_grad():
        model(torch.rand(1, 3, size, size))
    assert model.normalised_sides == seen


@pytest.mark.parametrize("size", [32, 48, 64, 96, 161, 200])
def test_decoder_reaches_every_input_size_exactly(size):
    model = VAE(ModelConfig(image_size=size, **SMALL))
    assert model(torch.rand(2, 3, size, size))[0].shape == (2, 3, size, size)
    grid, paddings = decoder_start(size, parse_layers(SMALL["decoder"], "--decoder"), LayerSpec(3, 3, 1))
    assert grid >= 1 and all(p in (0, 1) for p in paddings)


@pytest.mark.parametrize("text", ["64@4x4", "64x4-1", "64@4x3-1", "0@4x4-1", ""])
def test_bad_layer_strings_name_the_option(text):
    with pytest.raises(SpecError, match="--encoder"):
        parse_layers(text, "--encoder")


def test_sigma_is_a_softplus_standard_deviation():
    model = VAE(ModelConfig(image_size=32, **SMALL)).eval()
    with torch.no_grad():
        model.fc_sigma.bias.fill_(-12.0)
        model.fc_sigma.weight.zero_()
        _, sigma = model.encode(torch.rand(4, 3, 32, 32))
    # softplus of a std can go well below 1 (the authors' softplus on a log-variance could not)
    assert torch.all(sigma > 0) and torch.all(sigma < 1e-3)


def test_images_of_another_size_are_refused_with_the_size_and_the_conversion():
    """Downstream code that encodes its own images met "mat1 and mat2 shapes cannot be multiplied"."""
    from vae.augment import to_float

    model = VAE(ModelConfig(image_size=32, **SMALL)).eval()
    for shape in ((2, 3, 161, 161), (2, 161, 161, 3), (3, 32, 32)):
        with pytest.raises(ValueError, match=r"\(B, 3, 32, 32\).*to_float\(images, 32\)"):
            model.encode(torch.rand(shape))
    with pytest.raises(ValueError, match="this model encodes"):
        model(torch.rand(2, 3, 48, 48))
    photos = torch.randint(0, 256, (2, 161, 161, 3), dtype=torch.uint8)
    with torch.no_grad():
        assert model.encode(to_float(photos, 32))[0].shape == (2, SMALL["latent"])
    # numpy images (np.asarray of PIL images) convert as tensors do; float or unbatched images are refused, since
    # float ones already in [0, 1] would be divided by 255 again into near-black images
    assert torch.equal(to_float(photos.numpy(), 32), to_float(photos, 32))
    assert torch.equal(to_float(photos.numpy()[..., ::-1], 32), to_float(photos.flip(-1), 32))  # cv2's BGR flipped
    for images, got in ((photos.float() / 255, "float32 of shape (2, 161, 161, 3)"),
                        (photos[0].numpy(), "uint8 of shape (161, 161, 3)")):
        with pytest.raises(ValueError, match=re.escape(f"takes uint8 images of shape (B, H, W, 3), as shards and PIL "
                                                       f"give them; got {got}")):
            to_float(images, 32)


def test_kl_equals_torch_distributions():
    mu, sigma = torch.randn(16, 180), torch.rand(16, 180) * 2 + 0.01
    expected = kl_divergence(Normal(mu, sigma), Normal(torch.zeros_like(mu), torch.ones_like(sigma)))
    assert torch.allclose(kl_per_dimension(mu, sigma), expected, atol=1e-5, rtol=1e-5)


def _vgg():
    if VGG_WEIGHTS.exists():
        return load_vgg(str(VGG_WEIGHTS))[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_vgg(RANDOM)[0]


def test_perceptual_loss_is_zero_for_identical_images_and_leaves_vgg_alone():
    loss = PerceptualLoss(_vgg())
    before = {k: v.clone() for k, v in loss.vgg.state_dict().items()}
    model = VAE(ModelConfig(image_size=32, **SMALL))
    x = torch.rand(4, 3, 32, 32)
    assert torch.all(loss(x, x) == 0)
    loss.train()  # the model around it goes to train mode; the VGG must not
    model.train()
    assert not loss.vgg.training and all(not m.training for m in loss.vgg.modules())
    optimizer = torch.optim.Adam([*model.parameters(), *loss.parameters()], lr=0.1)
    for _ in range(2):
        x_hat, mu, sigma = model(x)
        terms = vae_loss(x, x_hat, mu, sigma, loss, 1.0, 0.03)
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
    assert terms["rec"] > 0
    assert all(p.grad is None and not p.requires_grad for p in loss.vgg.parameters())
    assert all(torch.equal(before[k], v) for k, v in loss.vgg.state_dict().items())
    assert not loss.vgg.training


def test_reductions_and_pixel_loss():
    vgg = _vgg()
    x, y = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    total = PerceptualLoss(vgg, "sum")(x, y)
    layer_means = PerceptualLoss(vgg, "mean")(x, y)
    assert torch.all(total > layer_means)  # sums over 64*32*32, 128*16*16 and 256*8*8 elements
    assert torch.allclose(PixelLoss("sum")(x, y), ((x - y) ** 2).sum((1, 2, 3)))
    assert torch.allclose(PixelLoss("mean")(x, y), ((x - y) ** 2).mean((1, 2, 3)))


def test_per_image_sums_in_two_stages_to_the_float64_total_in_any_layout():
    """The per-image reduction (spatial axes first, then channels, for the GPU's sake) gives the float64 sum
    of every element of an image, and its mean divides by all of them, not by the channels."""
    generator = torch.Generator().manual_seed(0)
    maps = torch.rand(3, 64, 9, 7, generator=generator)
    exact = maps.double().sum((1, 2, 3))
    for layout in (maps, maps.contiguous(memory_format=torch.channels_last), maps.bfloat16()):
        total = per_image(layout, "sum")
        assert total.dtype == torch.float32 and total.shape == (3,)
        assert torch.allclose(total.double(), layout.double().sum((1, 2, 3)), rtol=1e-6)
        assert torch.allclose(per_image(layout, "mean").double(), layout.double().sum((1, 2, 3)) / (64 * 9 * 7),
                              rtol=1e-6)
    flat = maps.flatten(1)
    assert torch.allclose(per_image(flat, "sum").double(), exact, rtol=1e-6)
    assert torch.allclose(per_image(flat, "mean").double(), exact / flat.shape[1], rtol=1e-6)


def test_the_perceptual_loss_sums_squared_feature_differences_in_any_layout_and_precision():
    """Per image, the sum over relu1_1, relu2_1 and relu3_1 of the squared differences, against a float64
    reference: in fp32, in channels_last, and under bf16 autocast, where the squares of the bf16 maps are
    summed in fp32 without an fp32 copy of the maps."""
    loss = PerceptualLoss(_vgg())
    x, y = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)

    def reference(features_y, features_x):
        return sum((a - b).double().square().sum((1, 2, 3)) for a, b in zip(features_y, features_x))

    exact = reference(loss.features(y), loss.features(x))
    assert torch.allclose(loss(x, y).double(), exact, rtol=1e-5)
    loss.to(memory_format=torch.channels_last)  # the same weights, stored as the trainer stores them
    x_cl, y_cl = (t.contiguous(memory_format=torch.channels_last) for t in (x, y))
    assert loss.features(y_cl)[0].is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(loss(x_cl, y_cl).double(), exact, rtol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features_y, features_x = loss.features(y), loss.features(x)
        mixed = loss(x, y)
    assert features_y[0].dtype == torch.bfloat16 and mixed.dtype == torch.float32
    assert torch.allclose(mixed.double(), reference(features_y, features_x), rtol=1e-3)


def test_the_reparameterisation_stays_in_fp32_under_bf16_autocast():
    model = VAE(ModelConfig(image_size=32, **SMALL)).eval()
    seen = {}
    model.fc_decode.register_forward_hook(lambda module, inputs, output: seen.update(z=inputs[0], h=output))
    x = torch.rand(4, 3, 32, 32)
    noise = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x_hat, mu, sigma = model(x, noise)
    assert mu.dtype == sigma.dtype == torch.float32 and seen["z"].dtype == seen["h"].dtype == torch.float32
    assert torch.equal(seen["z"], mu + sigma * noise)  # z itself, not z rounded to bf16's 2^-7 steps
    assert not torch.equal(seen["z"], seen["z"].bfloat16().float())
    assert x_hat.shape == (4, 3, 32, 32)  # the convolutions still run under autocast


def test_bernoulli_loss_is_the_binary_cross_entropy_of_binary_images():
    x = (torch.rand(3, 3, 8, 8) > 0.7).float()
    x_hat = torch.rand(3, 3, 8, 8).clamp(0.01, 0.99)
    expected = -(x * x_hat.log() + (1 - x) * (1 - x_hat).log()).flatten(1)
    torch.testing.assert_close(BernoulliLoss("sum")(x, x_hat), expected.sum(1))
    torch.testing.assert_close(BernoulliLoss("mean")(x, x_hat), expected.mean(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the trainer computes its loss inside autocast
        torch.testing.assert_close(BernoulliLoss()(x, x_hat.bfloat16()), expected.sum(1), atol=0.5, rtol=0.01)
    assert BernoulliLoss()(x, x).max() == 0  # a perfect reconstruction costs nothing


def test_vgg_weights_found_refused_or_random(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    with pytest.raises(VGGWeightsError, match="--vgg-weights PATH.*vgg19-dcbb9e9d.pth"):
        load_vgg(None)
    with pytest.raises(VGGWeightsError, match="file not found"):
        load_vgg(str(tmp_path / "nope.pth"))
    reference = trained_like_vgg19()
    # torchvision's whole-model layout ("features.N.*") in the hub cache is found and loaded
    hub = tmp_path / "torch-home" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    torch.save({f"features.{k}": v for k, v in reference.state_dict().items()}, hub / "vgg19-dcbb9e9d.pth")
    vgg, record = load_vgg(None)
    assert record["source"].endswith("vgg19-dcbb9e9d.pth") and len(record["sha256"]) == 64
    assert all(torch.equal(a, b) for a, b in zip(vgg.state_dict().values(), reference.state_dict().values()))
    torch.save({"0.weight": reference[0].weight}, tmp_path / "partial.pth")
    with pytest.raises(VGGWeightsError, match="missing 0.bias"):
        load_vgg(str(tmp_path / "partial.pth"))
    # another network's layer of the same name: torch's list of mismatches, one line each, becomes one line
    torch.save({**reference.state_dict(), "2.weight": reference[2].weight[:32]}, tmp_path / "narrow.pth")
    with pytest.raises(VGGWeightsError) as refused:
        load_vgg(str(tmp_path / "narrow.pth"))
    assert "\n" not in str(refused.value) and ("do not fit VGG-19's first layers (Error(s) in loading state_dict for "
                                               "Sequential: size mismatch for 2.weight") in str(refused.value)
    with pytest.warns(UserWarning, match="NOT perceptual"):
        assert load_vgg(RANDOM)[1] == {"source": "random"}


def test_vgg_weights_of_an_untrained_model_or_of_vgg16_are_refused(tmp_path):
    """Both load into VGG-19's first layers without an error, and would train with another loss than the paper's:
    random features (a model saved without its pretrained weights), or VGG-16's, whose layers up to relu3_1 are
    VGG-19's."""
    assert filter_structure(trained_like_vgg19()[0].weight) > 0.5
    for seed in range(3):
        torch.manual_seed(seed)
        whole = torchvision.models.vgg19().state_dict()  # torchvision's layout: features.N.*, classifier.*
        assert abs(filter_structure(whole["features.0.weight"])) < TRAINED_STRUCTURE / 2
        # the classifier (0.5 GB, which the loader skips) is saved whole below, once for each other network
        torch.save({k: v for k, v in whole.items() if k.startswith("features.")}, tmp_path / "untrained.pth")
        with pytest.raises(VGGWeightsError, match=r"look untrained: .* r = -?0\.0\d.*--vgg-weights random"):
            load_vgg(str(tmp_path / "untrained.pth"))
    vgg16 = torchvision.models.vgg16().state_dict()
    vgg16.update({f"features.{k}": v for k, v in trained_like_vgg19().state_dict().items()})  # first layers: trained
    torch.save(vgg16, tmp_path / "vgg16.pth")
    with pytest.raises(VGGWeightsError, match=r"lie at VGG-16's places \(convolutions at 12, 14, 17, 19, 21, 24"):
        load_vgg(str(tmp_path / "vgg16.pth"))
    trained = torchvision.models.vgg19().state_dict()
    trained.update({f"features.{k}": v for k, v in trained_like_vgg19().state_dict().items()})
    torch.save(trained, tmp_path / "vgg19.pth")
    assert load_vgg(str(tmp_path / "vgg19.pth"))[1]["source"].endswith("vgg19.pth")  # VGG-19's whole layout
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(VGGWeightsError, match="holds a list, not a state dict"):
        load_vgg(str(tmp_path / "list.pth"))


def test_real_vgg_weights_load():
    if not VGG_WEIGHTS.exists():
        pytest.skip(f"{VGG_WEIGHTS} is absent (it is only in ../shared beside the checkout)")
    vgg, record = load_vgg(str(VGG_WEIGHTS))
    assert record["sha256"] == "800be076141fdb77782d962275ab2e21bd491f7e53e620614f38c98d87f214e5"
    assert 0.45 < filter_structure(vgg[0].weight) < 0.6  # trained: the refusal of untrained weights has room
    features = PerceptualLoss(vgg).features(torch.rand(1, 3, 64, 64))
    assert [f.shape[1] for f in features] == [64, 128, 256]


@pytest.mark.parametrize("padded", [False, True], ids=["as-is", "3-channel-convolutions-padded"])
def test_the_whole_objective_compiles_to_what_eager_computes(padded, monkeypatch):
    """--compile compiles the model, the perceptual loss and the loss arithmetic together: the compiled
    objective must give the eager loss and gradients (the trainer checks the reconstructions too). Padded:
    the compiled graph pads the 3-channel convolutions as it does on CUDA, eager execution does not."""
    import torch._dynamo

    from vae.losses import Objective
    from vae.runtime import Runtime, compile_checked

    if padded:
        monkeypatch.setattr(imageconv, "PADDED_ON", ("cpu",))
    torch._dynamo.reset()  # no graph compiled by another test under the other setting
    torch.manual_seed(0)
    model = VAE(ModelConfig(image_size=32, encoder="16@4x4-2, 32@4x4-2", decoder="32@3x3-2, 16@3x3-2", latent=8))
    model = model.to(memory_format=torch.channels_last)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loss = PerceptualLoss(load_vgg(RANDOM)[0]).to(memory_format=torch.channels_last)
    objective = Objective(model, loss, 1.0, 0.03)
    x = torch.rand(8, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    noise = torch.randn(8, 8, generator=torch.Generator().manual_seed(1))
    state = {key: value.clone() for key, value in model.state_dict().items()}
    compiled, check = compile_checked(objective, model, x, noise, Runtime(torch.device("cpu"), 0, 1, False))
    assert check["used"] and check["mean_difference"] < 1e-4 and check["what"] == "model, loss and loss arithmetic"
    # forward and backward: the loss and every parameter's gradient (fp32: equal up to summation order)
    assert check["loss_difference"] < 1e-5 and check["gradient_difference"] < 1e-3, check
    # the check leaves no gradient behind for the first step, and the batch-norm statistics as they were
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(value, model.state_dict()[key]) for key, value in state.items())
    gradients = []
    for run in (objective, compiled):
        model.zero_grad(set_to_none=True)
        terms = run(x, noise)
        terms["loss"].backward()
        gradients.append((terms["loss"].detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(gradients[0][0], gradients[1][0], rtol=1e-5, atol=1e-3)
    for eager, compiled_grad in zip(gradients[0][1], gradients[1][1]):  # equal up to summation order
        assert (eager - compiled_grad).norm() <= 1e-3 * eager.norm() + 1e-8


def small_objective(vgg_first_conv_doubled: bool = False):
    """A small VAE and its perceptual loss with a random VGG (the VGG's first convolution twice what it is on
    request, as a kernel that adds a sum twice would make it), channels_last as the trainer runs them."""

    torch.manual_seed(0)
    model = VAE(ModelConfig(image_size=32, encoder="16@4x4-2, 32@4x4-2", decoder="32@3x3-2, 16@3x3-2", latent=8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vgg = load_vgg(RANDOM)[0]
    if vgg_first_conv_doubled:
        with torch.no_grad():
            vgg[0].weight.mul_(2)
            vgg[0].bias.mul_(2)
    loss = PerceptualLoss(vgg).to(memory_format=torch.channels_last)
    return model.to(memory_format=torch.channels_last), loss


def checked_against_eager(model, eager, other):
    """compiled_differences of `other` (standing for a compiled objective) against `eager`, and the check's
    verdict, as compile_checked records it."""
    from vae.runtime import COMPILE_TOLERANCE, GRADIENT_TOLERANCE, LOSS_TOLERANCE, Runtime, compiled_differences

    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(2)).contiguous(
        memory_format=torch.channels_last)
    noise = torch.randn(8, 8, generator=torch.Generator().manual_seed(1))
    state = {key: value.clone() for key, value in model.state_dict().items()}
    record = {"tolerance": COMPILE_TOLERANCE, "loss_tolerance": LOSS_TOLERANCE,
              "gradient_tolerance": GRADIENT_TOLERANCE,
              **compiled_differences(eager, other, model, x, noise, Runtime(torch.device("cpu"), 0, 1, False))}
    assert all(p.grad is None for p in model.parameters())  # nothing left for the first training step
    assert all(torch.equal(value, model.state_dict()[key]) for key, value in state.items())
    return record


def test_the_compile_check_refuses_a_backward_pass_that_is_wrong_where_the_forward_pass_is_right():
    """A kernel whose forward pass is right and whose weight gradient is not (here the output layer's taps
    flipped, as a wrong index in vae.tritonconv's weight-gradient kernel would give) passes a check of the
    reconstructions alone; the check of the gradients refuses it, and says in which parameter."""
    from vae.losses import Objective
    from vae.runtime import check_failures, compile_line

    model, loss = small_objective()
    objective = Objective(model, loss, 1.0, 0.03)
    hooks = []

    def wrong_backward(x, noise):
        hooks.append(model.output.weight.register_hook(lambda grad: grad.flip(2, 3)))
        return objective(x, noise)

    try:
        record = checked_against_eager(model, objective, wrong_backward)
    finally:
        for hook in hooks:
            hook.remove()
    assert record["mean_difference"] == record["max_difference"] == record["loss_difference"] == 0
    assert record["gradient_parameter"] == "output.weight"
    assert record["gradient_difference"] > record["gradient_tolerance"]
    assert check_failures(record) == [f"the gradient of output.weight by {record['gradient_difference']:.3g} of its "
                                      "norm (tolerance 0.5)"]
    line = compile_line("--compile yes", {**record, "error": None, "used": False,
                                          "image_conv": {"triton_layers": ["output"]}})
    assert line.startswith("--compile yes: the compiled objective differs from eager execution on a training batch, "
                           "in the gradient of output.weight by ")
    assert "vae.tritonconv's kernels (--image-conv triton, in output)" in line and "training without compiling" in line
    # the same objective computed again passes: the check itself adds nothing
    assert check_failures(checked_against_eager(model, objective, objective)) == []


def test_the_compile_check_refuses_a_loss_network_that_is_wrong_where_the_reconstructions_are_right():
    """The reconstructions do not pass through the loss network: a VGG convolution computed wrongly by a factor
    (as a wrong --image-conv triton kernel for its conv1_1 could) shows in the loss. Errors that keep the loss's
    scale (the taps flipped: 0.1% of the loss, 0.49 in the gradients here) are for the kernels' own check."""
    from vae.losses import Objective
    from vae.runtime import check_failures

    model, loss = small_objective()
    _, doubled = small_objective(vgg_first_conv_doubled=True)
    record = checked_against_eager(model, Objective(model, loss, 1.0, 0.03), Objective(model, doubled, 1.0, 0.03))
    assert record["mean_difference"] == 0 and record["loss_difference"] > record["loss_tolerance"]
    assert check_failures(record)[0] == f"its loss by {record['loss_difference']:.3g} of the loss (tolerance 0.01)"


def test_gradients_are_compared_parameter_by_parameter_relative_to_their_norm():
    from vae.runtime import GRADIENT_FLOOR, gradient_difference

    eager = {"a": torch.tensor([3.0, 4.0]), "b": torch.tensor([0.0, 1e-9]), "unused": None}
    assert gradient_difference(eager, {"a": torch.tensor([3.0, 4.5]), "b": torch.tensor([0.0, 2e-9]),
                                       "unused": None}) == (pytest.approx(0.1), "a")
    # an all-but-zero gradient's rounding is measured against the floor, not against itself
    small = gradient_difference(eager, {"a": eager["a"], "b": torch.tensor([0.0, 5e-9]), "unused": None})
    assert small == (pytest.approx(4e-9 / (GRADIENT_FLOOR * 5)), "b")
    assert gradient_difference(eager, {**eager, "b": torch.tensor([float("nan"), 0.0])})[1] == "b"
    assert math.isnan(gradient_difference(eager, {**eager, "b": torch.tensor([float("nan"), 0.0])})[0])
    assert gradient_difference(eager, {**eager, "unused": torch.zeros(2)}) == (math.inf, "unused")


@pytest.mark.parametrize("in_channels, out_channels, kernel, stride, padding, bias",
                         [(3, 5, 4, 1, 1, True), (3, 5, 4, 2, 1, False), (3, 4, 3, 1, 1, True), (6, 3, 3, 1, 1, True),
                          (6, 3, 4, 1, 2, False), (3, 3, 3, 1, 1, True)])
def test_a_padded_image_convolution_computes_the_same_function_and_gradients(in_channels, out_channels, kernel,
                                                                            stride, padding, bias):
    torch.manual_seed(0)
    conv = ImageConv2d(in_channels, out_channels, kernel, stride, padding, bias=bias).double()
    x = torch.randn(2, in_channels, 19, 19, dtype=torch.float64, requires_grad=True)
    results = []
    for run in (conv, lambda x: padded_conv(conv, x, 8)):
        y = run(x)
        grads = torch.autograd.grad((y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum(),
                                    [x, *conv.parameters()])
        results.append((y, grads))
    (y, grads), (y_padded, grads_padded) = results
    assert y_padded.shape == y.shape
    torch.testing.assert_close(y_padded, y, rtol=0, atol=1e-12)
    for g, g_padded in zip(grads, grads_padded):
        assert g_padded.shape == g.shape
        torch.testing.assert_close(g_padded, g, rtol=0, atol=1e-12)


def test_image_convolutions_pad_only_in_compiled_graphs_of_the_devices_that_gain(monkeypatch):
    """Eagerly the padding is one more pass over the maps (slower on an H100), and on the CPU it only adds
    work: a model pads only in a graph compiled for a device of PADDED_ON."""
    import torch._dynamo
    from torch.utils.flop_counter import FlopCounterMode

    model = VAE(ModelConfig(image_size=32, **SMALL))
    assert isinstance(model.encoder[0], ImageConv2d) and isinstance(model.output, ImageConv2d)
    assert not any(isinstance(m, ImageConv2d) for m in list(model.encoder)[1:] + list(model.decoder))
    x = torch.rand(2, 3, 32, 32)

    def pads_traced() -> int:
        counts = []

        def backend(graph_module, example_inputs):
            counts.append(sum(node.target in (torch.nn.functional.pad, torch._C._nn.pad)
                              for node in graph_module.graph.nodes))
            return graph_module.forward
        torch._dynamo.reset()
        torch.compile(model, backend=backend)(x)
        return sum(counts)

    assert pads_traced() == 0  # the CPU is not among the devices that pad
    monkeypatch.setattr(imageconv, "PADDED_ON", ("cpu",))
    assert pads_traced() == 4  # the input and weights of encoder.0, the weights and bias of the output layer
    with FlopCounterMode(display=False) as eager:  # eager on a padding device: the plain convolutions
        model(x)
    monkeypatch.setattr(imageconv, "PADDED_ON", ())
    with FlopCounterMode(display=False) as plain:
        model(x)
    assert eager.get_total_flops() == plain.get_total_flops()
    torch._dynamo.reset()


def test_the_vgg_reads_images_through_an_image_convolution_with_the_random_draws_of_torchvision():
    """conv1_1 is an ImageConv2d that applies relu1_1 itself (so that the Triton kernels can make the activated map
    in one pass); the network keeps torchvision's weights, names and draws, and computes torchvision's features at
    every tap, relu1_1's included."""
    from torchvision.models.vgg import make_layers

    from vae.vgg import TAPS, TRUNCATED_CONFIG, truncated_vgg19

    torch.manual_seed(3)
    ours = truncated_vgg19()
    torch.manual_seed(3)
    theirs = make_layers(TRUNCATED_CONFIG, batch_norm=False)
    assert isinstance(ours[0], ImageConv2d) and ours[0].weight.device.type == "cpu" and ours[0].relu
    assert "relu=True" in repr(ours[0]) and isinstance(ours[1], torch.nn.Identity)
    for a, b in zip(ours.state_dict().items(), theirs.state_dict().items()):
        assert a[0] == b[0] and torch.equal(a[1], b[1])
    x = torch.rand(2, 3, 24, 24)
    for index in TAPS.values():
        assert torch.equal(ours[:index + 1](x), theirs[:index + 1](x)), index
    assert ours[:2](x).min() == 0  # the ReLU ran


def test_the_trainer_its_loss_network_and_the_analyses_import_neither_torchvision_dynamo_nor_matplotlib():
    """torch._dynamo takes about 1 s to import on 2 cores, and matplotlib 0.4-0.6 s: a vae-train or an analysis
    whose input is refused should not wait for them (a run that trains imports dynamo anyway, with torch's optimizer,
    and one that draws imports matplotlib then), and training needs no torchvision at all."""
    import subprocess
    import sys

    code = ("import sys, warnings; warnings.simplefilter('ignore'); import vae.train, analysis.area_vs_number, "
            "analysis.readout; from vae.vgg import load_vgg; from vae.losses import PerceptualLoss; "
            "PerceptualLoss(load_vgg('random')[0]); print(sorted(m for m in ('torchvision', 'torch._dynamo', "
            "'matplotlib') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_objective_traces_as_one_graph_without_breaks():
    """A graph break (a .item(), a Python branch on a tensor's value) would split the compiled step in
    pieces with Python between them and, under --compile-mode reduce-overhead, split its CUDA graph too:
    the launches that mode exists to save."""
    import torch._dynamo

    from vae.losses import Objective

    model = VAE(ModelConfig(image_size=32, encoder="16@4x4-2, 32@4x4-2", decoder="32@3x3-2, 16@3x3-2", latent=8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loss = PerceptualLoss(load_vgg(RANDOM)[0])
    objective = Objective(model, loss, 1.0, 0.03).train()
    explained = torch._dynamo.explain(objective)(torch.rand(4, 3, 32, 32), torch.randn(4, 8))
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1
