import pytest
import torch

from errors import UserInputError
import torch.nn.functional as F

from models import ConditionalUNet
from models.layers import attention
from models.token_unet import depth_to_space, depthwise_conv3x3, space_to_depth
from models.unet import BACKBONES

PUBLIC = dict(latent_dim=256, hidden_dims=[256, 512, 1024, 512, 256], time_emb_dim=256, num_classes=2)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_output_is_shaped_like_input_and_starts_at_zero(backbone):
    net = ConditionalUNet(**PUBLIC, backbone=backbone)
    z = torch.randn(5, 256)
    out = net(z, torch.randint(0, 1000, (5,)), torch.tensor([0, 1, 2, 0, 1]))
    assert out.shape == z.shape
    assert torch.count_nonzero(out) == 0  # zero-initialised output layer: training starts from eps_hat = 0


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_sample_does_not_depend_on_its_batch(randomize, mode, backbone):
    net = randomize(ConditionalUNet(**PUBLIC, backbone=backbone))
    net.train(mode == "train")
    z, t, y = torch.randn(6, 256), torch.randint(0, 1000, (6,)), torch.randint(0, 3, (6,))
    together = net(z, t, y)
    alone = torch.cat([net(z[i : i + 1], t[i : i + 1], y[i : i + 1]) for i in range(6)])
    assert torch.allclose(together, alone, atol=1e-4)
    shuffled = net(z.flip(0), t.flip(0), y.flip(0)).flip(0)
    assert torch.allclose(together, shuffled, atol=1e-4)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_output_depends_on_time_class_and_every_position(randomize, backbone):
    net = randomize(ConditionalUNet(**PUBLIC, backbone=backbone)).eval()
    z, t, y = torch.randn(1, 256), torch.tensor([500]), torch.tensor([0])
    base = net(z, t, y)
    assert not torch.allclose(base, net(z, torch.tensor([20]), y))
    assert not torch.allclose(base, net(z, t, torch.tensor([1])))
    z.requires_grad_(True)
    net(z, t, y)[0, 0].backward()
    assert (z.grad.abs() > 0).float().mean() > 0.9  # attention (and the U's levels) let one output see the whole latent


def test_up_half_uses_skip_connections(randomize):
    """The finest-level skip alone carries signal: zeroing the deepest level's output does not silence the network."""
    net = randomize(ConditionalUNet(**PUBLIC)).eval()
    for p in net.backbone.split[-1].parameters():
        torch.nn.init.zeros_(p)  # nothing comes up from the bottom of the U
    z, t, y = torch.randn(2, 256), torch.tensor([10, 900]), torch.tensor([0, 1])
    out = net(z, t, y)
    assert out.abs().sum() > 0
    z2 = z.clone()
    z2[:, :4] += 1.0
    assert not torch.allclose(out, net(z2, t, y))


def test_bad_hidden_dims_are_refused():
    with pytest.raises(ValueError, match="symmetric"):
        ConditionalUNet(hidden_dims=[256, 512, 256, 128])
    with pytest.raises(ValueError, match="token grid"):
        ConditionalUNet(hidden_dims=[64, 128, 256, 512, 1024, 512, 256, 128, 64])
    with pytest.raises(ValueError, match="backbone"):
        ConditionalUNet(backbone="mlp")


@pytest.mark.parametrize("side", [1, 2, 4])
def test_token_depthwise_conv_equals_a_grouped_conv2d(side):
    x, w = torch.randn(3, side, side, 8), torch.randn(8, 3, 3)
    expected = F.conv2d(x.permute(0, 3, 1, 2), w[:, None], padding=1, groups=8).permute(0, 2, 3, 1)
    assert torch.allclose(depthwise_conv3x3(x, w), expected, atol=1e-5)


def test_merge_and_split_are_strided_convolutions_on_tokens():
    """A linear map after space_to_depth is a 2x2 stride-2 convolution; depth_to_space undoes space_to_depth."""
    x = torch.randn(2, 4, 4, 6)
    assert torch.equal(depth_to_space(space_to_depth(x, 2), 2), x)
    weight = torch.randn(5, 6, 2, 2)  # Conv2d layout (out, in, kh, kw)
    as_linear = weight.permute(0, 2, 3, 1).reshape(5, 24)  # tokens are merged row-major, channels last
    expected = F.conv2d(x.permute(0, 3, 1, 2), weight, stride=2).permute(0, 2, 3, 1)
    assert torch.allclose(space_to_depth(x, 2) @ as_linear.T, expected, atol=1e-5)


def test_latent_layout_round_trips_through_the_patches():
    """Patching reads the latent in its VAE layout (C, 8, 8): a 2x2 patch holds 4 neighbouring positions."""
    z = torch.arange(256.0).view(1, 4, 8, 8)
    patches = space_to_depth(z.permute(0, 2, 3, 1), 2)  # (1, 4, 4, 16)
    assert patches.shape == (1, 4, 4, 16)
    assert patches[0, 0, 0].view(2, 2, 4).permute(2, 0, 1).tolist() == z[0, :, :2, :2].tolist()


def test_the_file_carries_architecture_prediction_and_process_and_old_files_still_load(tmp_path):
    from checkpoints import load_weights, save_weights

    one = {"backbone_options": {"attention_min_tokens": 1}}
    trained = ConditionalUNet(**PUBLIC, prediction="v", **one)
    trained.process = {"n_steps": 500, "schedule": "linear", "normalize_latents": False}
    save_weights(trained, tmp_path / "v.pt")
    state = torch.load(tmp_path / "v.pt", weights_only=True)  # still a plain weights file
    rebuilt = ConditionalUNet.from_state_dict(state)
    assert rebuilt.config == trained.config and rebuilt.process == trained.process and rebuilt.prediction == "v"
    assert all(torch.equal(a, b) for a, b in zip(rebuilt.parameters(), trained.parameters()))
    fresh = ConditionalUNet(**PUBLIC, **one)  # as in the notebook snippet: no prediction given
    load_weights(fresh, tmp_path / "v.pt")
    assert fresh.prediction == "v" and fresh.process["schedule"] == "linear"
    with pytest.raises(UserInputError, match="backbone_options: file .*'attention_min_tokens': 1"):
        load_weights(ConditionalUNet(**PUBLIC), tmp_path / "v.pt")  # same shapes, another network
    # files from before "_extra_state": eps, or v where their v_prediction buffer said so; no recorded process
    old = {k: v for k, v in state.items() if k != "_extra_state"}
    for flag, prediction in ((None, "eps"), (True, "v"), (False, "eps")):
        torch.save(old if flag is None else {**old, "v_prediction": torch.tensor(flag)}, tmp_path / "old.pt")
        load_weights(fresh, tmp_path / "old.pt")
        assert fresh.prediction == prediction and fresh.process == {}
    with pytest.raises(ValueError, match="prediction"):
        ConditionalUNet(prediction="x0")


def test_attention_equals_torch_scaled_dot_product_attention_and_its_gradients():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 4, 16, 64, generator=gen, requires_grad=True) for _ in range(3))
    ours, theirs = attention(q, k, v), F.scaled_dot_product_attention(q, k, v)
    assert torch.allclose(ours, theirs, atol=1e-5)
    grads = torch.autograd.grad(ours.square().sum(), (q, k, v))
    expected = torch.autograd.grad(theirs.square().sum(), (q, k, v))
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(grads, expected))


def test_a_guide_network_travels_inside_the_denoisers_file(tmp_path):
    """The notebook snippet builds ConditionalUNet(...) without a guide: loading a file that has one builds it."""
    from checkpoints import load_weights, save_weights

    torch.manual_seed(0)
    unet, guide = ConditionalUNet(**PUBLIC), ConditionalUNet(**{**PUBLIC, "hidden_dims": [128, 256, 512, 256, 128]})
    unet.attach_guide(guide)
    save_weights(unet, tmp_path / "with_guide.pt")
    fresh = ConditionalUNet(**PUBLIC)
    load_weights(fresh, tmp_path / "with_guide.pt")
    assert fresh.guide is not None and fresh.guide.config["hidden_dims"] == [128, 256, 512, 256, 128]
    assert all(torch.equal(a, b) for a, b in zip(fresh.guide.parameters(), guide.parameters()))
    z, t, y = torch.randn(2, 256), torch.tensor([10, 900]), torch.tensor([0, 1])
    assert torch.equal(fresh(z, t, y), unet(z, t, y))  # forward never calls the guide
    unet.attach_guide(None)
    save_weights(unet, tmp_path / "without.pt")
    load_weights(fresh, tmp_path / "without.pt")
    assert fresh.guide is None
