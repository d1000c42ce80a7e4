"""experiments/throughput_trials.py builds every variant it times from the stages' real step functions, and each
one trains."""

import torch
import torch.optim.optimizer as optimizer_hooks

from conftest import load_experiment


def test_every_uncompiled_variant_runs_its_stage_step_with_an_optimizer_step(monkeypatch):
    trials = load_experiment("throughput_trials")
    monkeypatch.setattr(torch, "compile", lambda model, **kw: model)  # compilation is timed on the CPU, not tested
    steps, threads = [], torch.get_num_threads()
    hook = optimizer_hooks.register_optimizer_step_post_hook(lambda opt, args, kwargs: steps.append(opt))
    try:
        for build, optimizers in ((trials.denoiser_step, 1), (trials.vae_step, 1), (trials.decoder_step, 2)):
            table = trials.variants(lambda batch=4, build=build, **kw: build(batch=batch, **kw), (8,), amp=False)
            assert "fp32" not in table  # fp32 is today's setting where the CPU has no native bf16
            assert {"today", "channels_last", "torch.compile", "foreach AdamW", "1 thread", "batch 8"} <= set(table)
            for label, make in table.items():
                step, items = make()
                steps.clear()
                step()
                assert items == (8 if label == "batch 8" else 4), label
                assert len(steps) == optimizers, label  # the decoder stage also steps its discriminator
                assert torch.get_num_threads() == threads, label  # the 1-thread variant gives the threads back
    finally:
        hook.remove()


def test_a_channels_last_variant_lays_out_the_network_and_its_images_channels_last():
    from training.timing import TODAY, Variant

    layout = Variant(channels_last=True)
    conv, images = layout.place(torch.nn.Conv2d(3, 8, 3), "cpu"), layout.place(torch.rand(2, 3, 8, 8), "cpu")
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous()
    assert layout.place(torch.rand(2, 256), "cpu").is_contiguous()  # flat latents stay as they are
    assert TODAY.place(torch.rand(2, 3, 8, 8), "cpu").is_contiguous()


def test_capacity_and_width_rows_are_ordered_by_parameter_count(monkeypatch):
    import training.timing
    from models.discriminator import PatchDiscriminator
    from training.config import DecoderConfig

    trials = load_experiment("throughput_trials")
    capacity = trials.capacity(lambda **kw: trials.decoder_step(batch=2, **kw), amp=False)
    assert list(capacity)[0].startswith("32/64/128, 1 block a level (today)")
    sizes = [label for label in capacity if "PatchGAN" not in label]
    params = [float(label.rsplit(", ", 1)[1].rstrip("M")) for label in sizes]
    assert params[0] == min(params) and params[-1] == max(params)
    built = []  # the PatchGAN rows time the discriminator at their width, the others at the configured one
    monkeypatch.setattr(
        training.timing, "PatchDiscriminator", lambda width: built.append(width) or PatchDiscriminator(width=width)
    )
    configured = DecoderConfig().discriminator_width
    for label, make in capacity.items():
        make()
        expected = int(label.split("PatchGAN ")[1].split()[0]) if "PatchGAN" in label else configured
        assert built.pop() == expected, label
    widths = list(trials.widths(trials.denoiser_step, amp=False))
    counts = [float(label.split("(")[1].split("M")[0]) for label in widths]
    assert counts == sorted(counts, reverse=True) and counts[0] < 7.5


def test_the_matrix_multiply_forms_of_a_convolution_equal_it_in_value_and_gradient():
    """The conv trials time two rewrites of the denoiser's 3x3 convolutions: they must compute the same function."""
    trials = load_experiment("throughput_trials")
    torch.manual_seed(0)
    for side in (2, 4):
        x = torch.randn(3, 5, side, side, requires_grad=True)
        w, b = torch.randn(6, 5, 3, 3, requires_grad=True), torch.randn(6, requires_grad=True)
        reference = torch.nn.functional.conv2d(x, w, b, padding=1)
        expected = torch.autograd.grad(reference.square().sum(), (x, w, b))
        for form in (trials.im2col_conv, trials.dense_conv):
            out = form(x, w, b)
            assert torch.allclose(out, reference, atol=1e-5), (form.__name__, side)
            grads = torch.autograd.grad(out.square().sum(), (x, w, b))
            assert all(torch.allclose(g, e, atol=1e-4) for g, e in zip(grads, expected)), (form.__name__, side)
    shapes = trials.conv_shapes(batch=2)
    assert {side for _, _, side in shapes} == {8, 4, 2}  # the denoiser's three grids
    assert (256, 256, 2) in shapes and (64, 64, 8) in shapes


def test_the_precision_trials_time_every_grid_in_every_precision(capsys):
    trials = load_experiment("throughput_trials")
    trials.precision_trials(batch=2, rounds=1, steps=1)
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "GFLOP/s" in line]
    assert [row.split("|")[1].strip() for row in rows] == ["8x8", "4x4", "2x2"]
    assert all(row.count("GFLOP/s") == len(trials.PRECISIONS) == 3 for row in rows)
