import pytest
import torch

from errors import UserInputError
import torch.nn.functional as F

from models import ConditionalUNet
from models.layers import attention

PUBLIC = dict(latent_dim=256, hidden_dims=[256, 512, 1024, 512, 256], time_emb_dim=256, num_classes=2)


def test_output_is_shaped_like_input_and_starts_at_zero():
    net = ConditionalUNet(**PUBLIC)
    z = torch.randn(5, 256)
    out = net(z, torch.randint(0, 1000, (5,)), torch.tensor([0, 1, 2, 0, 1]))
    assert out.shape == z.shape
    assert torch.count_nonzero(out) == 0  # zero-initialised output layer: training starts from a zero prediction


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_sample_does_not_depend_on_its_batch(randomize, mode):
    net = randomize(ConditionalUNet(**PUBLIC))
    net.train(mode == "train")
    z, t, y = torch.randn(6, 256), torch.randint(0, 1000, (6,)), torch.randint(0, 3, (6,))
    together = net(z, t, y)
    alone = torch.cat([net(z[i : i + 1], t[i : i + 1], y[i : i + 1]) for i in range(6)])
    assert torch.allclose(together, alone, atol=1e-4)
    shuffled = net(z.flip(0), t.flip(0), y.flip(0)).flip(0)
    assert torch.allclose(together, shuffled, atol=1e-4)


def test_output_depends_on_time_class_and_every_position(randomize):
    net = randomize(ConditionalUNet(**PUBLIC)).eval()
    z, t, y = torch.randn(1, 256), torch.tensor([500]), torch.tensor([0])
    base = net(z, t, y)
    assert not torch.allclose(base, net(z, torch.tensor([20]), y))
    assert not torch.allclose(base, net(z, t, torch.tensor([1])))
    z.requires_grad_(True)
    net(z, t, y)[0, 0].backward()
    assert (z.grad.abs() > 0).float().mean() > 0.9  # attention and the U's coarse levels let one output see it all


def test_up_half_uses_skip_connections(randomize):
    """The skips alone carry signal: with nothing coming up from the middle of the U, the output still moves."""
    net = randomize(ConditionalUNet(**PUBLIC)).eval()
    for p in net.backbone.up[0].parameters():  # the upsampling out of the middle
        torch.nn.init.zeros_(p)
    z, t, y = torch.randn(2, 256), torch.tensor([10, 900]), torch.tensor([0, 1])
    out = net(z, t, y)
    assert out.abs().sum() > 0
    z2 = z.clone()
    z2[:, :4] += 1.0
    assert not torch.allclose(out, net(z2, t, y))


def test_hidden_dims_are_values_per_2x2_cell_of_each_level():
    """[256, 512, 1024, 512, 256]: 64 channels on the 8x8 grid, 128 on 4x4, a middle of 256 on 2x2."""
    net = ConditionalUNet(**PUBLIC)
    assert net.backbone.conv_in.out_channels == 64 and net.backbone.out.in_channels == 64
    assert {block.res.conv_in.out_channels for block in net.backbone.middle} == {256}
    assert net(torch.randn(2, 256), torch.tensor([1, 2]), torch.tensor([0, 1])).shape == (2, 256)
    small = ConditionalUNet(hidden_dims=[128, 256, 128])
    assert small.backbone.conv_in.out_channels == 32
    assert {block.res.conv_in.out_channels for block in small.backbone.middle} == {64}


def test_bad_hidden_dims_are_refused():
    with pytest.raises(ValueError, match="symmetric"):
        ConditionalUNet(hidden_dims=[256, 512, 256, 128])
    with pytest.raises(ValueError, match="multiples of 4"):
        ConditionalUNet(hidden_dims=[66, 130, 66])
    with pytest.raises(ValueError, match="cannot be halved"):
        ConditionalUNet(hidden_dims=[64, 128, 256, 512, 1024, 512, 256, 128, 64])


def test_the_file_carries_architecture_prediction_and_process(tmp_path):
    from checkpoints import load_weights, save_weights
    from models.pipeline import build

    other = {"attention_max_positions": 64}
    trained = ConditionalUNet(**PUBLIC, prediction="eps", **other)
    trained.process = {"n_steps": 500, "schedule": "linear", "normalize_latents": False}
    save_weights(trained, tmp_path / "eps.pt")
    state = torch.load(tmp_path / "eps.pt", weights_only=True)  # still a plain weights file
    rebuilt = build(ConditionalUNet, state, tmp_path / "eps.pt")  # what load_pipeline does
    assert rebuilt.config == trained.config and rebuilt.process == trained.process and rebuilt.prediction == "eps"
    assert all(torch.equal(a, b) for a, b in zip(rebuilt.parameters(), trained.parameters()))
    fresh = ConditionalUNet(**PUBLIC, **other)  # as in the notebook snippet: no prediction given
    assert fresh.prediction == "v"
    load_weights(fresh, tmp_path / "eps.pt")
    assert fresh.prediction == "eps" and fresh.process["schedule"] == "linear"
    with pytest.raises(UserInputError, match="attention_max_positions: file 64 vs model 16"):
        load_weights(ConditionalUNet(**PUBLIC), tmp_path / "eps.pt")  # same shapes, another network
    with pytest.raises(ValueError, match="prediction"):
        ConditionalUNet(prediction="x0")


def test_a_file_of_the_earlier_token_unet_gives_one_line_naming_the_fix(tmp_path):
    """Denoiser files written before the bake-off hold the token U-Net: they are named as another network, and the
    message says to retrain the diffusion stage, both for the notebook's load_weights and for load_pipeline."""
    from checkpoints import AUTOENCODER_FILE, DIFFUSION_FILE, load_weights, save_weights
    from models import SimpleAutoencoder
    from models.pipeline import load_pipeline

    old = {"patch_in.weight": torch.zeros(256, 16), "down.0.blocks.0.depthwise": torch.zeros(256, 3, 3)}
    config = {**ConditionalUNet().config, "patch_size": 2, "attention_min_tokens": 4}
    old["_extra_state"] = {"config": config, "process": {}}
    torch.save(old, tmp_path / DIFFUSION_FILE)
    with pytest.raises(UserInputError, match="does not match ConditionalUNet: .*--retrain-diffusion"):
        load_weights(ConditionalUNet(**PUBLIC), tmp_path / DIFFUSION_FILE)
    save_weights(SimpleAutoencoder(), tmp_path / AUTOENCODER_FILE)
    with pytest.raises(UserInputError, match="cannot build .*--retrain-diffusion"):
        load_pipeline(tmp_path)


def test_attention_equals_torch_scaled_dot_product_attention_and_its_gradients():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 4, 16, 64, generator=gen, requires_grad=True) for _ in range(3))
    ours, theirs = attention(q, k, v), F.scaled_dot_product_attention(q, k, v)
    assert torch.allclose(ours, theirs, atol=1e-5)
    grads = torch.autograd.grad(ours.square().sum(), (q, k, v))
    expected = torch.autograd.grad(theirs.square().sum(), (q, k, v))
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(grads, expected))


def test_a_file_that_carries_an_earlier_versions_guide_network_loads_without_it(tmp_path):
    """Files written with the autoguidance option (since removed) hold a second network under "guide."."""
    from checkpoints import load_weights, save_weights
    from models.pipeline import build

    torch.manual_seed(0)
    unet, guide = ConditionalUNet(**PUBLIC), ConditionalUNet(**{**PUBLIC, "hidden_dims": [128, 256, 512, 256, 128]})
    state = {**unet.state_dict(), **{f"guide.{k}": v for k, v in guide.state_dict().items()}}
    torch.save(state, tmp_path / "with_guide.pt")
    fresh = ConditionalUNet(**PUBLIC)
    fresh.load_state_dict(torch.load(tmp_path / "with_guide.pt", weights_only=True))  # the notebook's strict load
    assert all(torch.equal(a, b) for a, b in zip(fresh.parameters(), unet.parameters()))
    assert not any(k.startswith("guide.") for k in fresh.state_dict())
    load_weights(ConditionalUNet(**PUBLIC), tmp_path / "with_guide.pt")
    rebuilt = build(ConditionalUNet, torch.load(tmp_path / "with_guide.pt", weights_only=True), tmp_path / "x.pt")
    assert all(torch.equal(a, b) for a, b in zip(rebuilt.parameters(), unet.parameters()))
    save_weights(fresh, tmp_path / "again.pt")
    assert not any(k.startswith("guide.") for k in torch.load(tmp_path / "again.pt", weights_only=True))
