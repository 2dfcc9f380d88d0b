"""mlm.fast.adamw.FusedAdamW against torch.optim.AdamW: the same updates, bit for bit, and interchangeable state."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mlm.fast.adamw import FusedAdamW
from mlm.train.step import build_optimizer, set_learning_rate

LRS = [1e-3, 5e-4, 2e-3, 0.0, 1e-3]


def small_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Embedding(50, 16), nn.Linear(16, 32), nn.LayerNorm(32), nn.Linear(32, 50))


def torch_adamw(model: nn.Module, **options) -> torch.optim.AdamW:
    """The groups and hyper-parameters `build_optimizer` uses, on torch's own class."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=torch.tensor(LRS[0]), betas=(0.9, 0.98), eps=1e-6, **options)


def train(model: nn.Module, optimizer, steps: int, seed: int = 1, start: int = 0) -> None:
    """A few steps on random data, the learning rate changed between steps as the schedule does."""
    generator = torch.Generator().manual_seed(seed)
    for step in range(start, start + steps):
        tokens = torch.randint(0, 50, (4, 7), generator=generator)
        for group in optimizer.param_groups:
            group["lr"].fill_(LRS[step % len(LRS)])
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(tokens).flatten(0, 1), tokens.flatten()).backward()
        optimizer.step()


def ours(model: nn.Module) -> FusedAdamW:
    optimizer = build_optimizer(model, LRS[0], 0.1, (0.9, 0.98), torch.device("cpu"), eps=1e-6)
    assert isinstance(optimizer, FusedAdamW)
    return optimizer


def test_the_same_updates_as_torch_fused_adamw_bit_for_bit():
    mine, theirs = small_model(), small_model()
    train(mine, ours(mine), 6)
    train(theirs, torch_adamw(theirs, fused=True), 6)
    for a, b in zip(mine.parameters(), theirs.parameters()):
        assert torch.equal(a, b)


def test_the_same_updates_as_torch_single_tensor_adamw():
    """An independent implementation: torch's plain loop (no fused kernel), to rounding."""
    mine, theirs = small_model(), small_model()
    train(mine, ours(mine), 6)
    train(theirs, torch_adamw(theirs, foreach=False), 6)
    for a, b in zip(mine.parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_a_parameter_without_a_gradient_is_left_alone_and_gets_no_state():
    model = small_model()
    frozen = model[0].weight.detach().clone()
    optimizer = ours(model)
    model[0].weight.requires_grad_(False)
    train(model, optimizer, 2)
    assert torch.equal(model[0].weight, frozen) and model[0].weight not in optimizer.state


@pytest.mark.parametrize("first, second", [("torch", "ours"), ("ours", "torch")])
def test_state_dicts_move_between_the_two_and_training_goes_on_identically(first, second):
    """Checkpoints written before this class (torch's optimizer) resume into it, and the other way round."""
    make = {"torch": lambda m: torch_adamw(m, fused=True), "ours": ours}
    model = small_model()
    optimizer = make[first](model)
    train(model, optimizer, 3)
    saved_weights = [p.detach().clone() for p in model.parameters()]
    saved = optimizer.state_dict()  # its tensors are the live ones (as torch's): copy them as a checkpoint does
    saved["state"] = {i: {k: v.clone() for k, v in s.items()} for i, s in saved["state"].items()}
    train(model, optimizer, 3, seed=2, start=3)  # the uninterrupted run

    resumed = small_model(seed=5)
    with torch.no_grad():
        for parameter, value in zip(resumed.parameters(), saved_weights):
            parameter.copy_(value)
    other = make[second](resumed)
    state = {"state": saved["state"],
             "param_groups": [{k: v for k, v in g.items() if k != "lr"} | {"lr": o["lr"]}
                              for g, o in zip(saved["param_groups"], other.param_groups)]}
    other.load_state_dict(state)
    train(resumed, other, 3, seed=2, start=3)
    for a, b in zip(model.parameters(), resumed.parameters()):
        if second == "ours":  # an old checkpoint (torch's optimizer) resumes bit for bit
            assert torch.equal(a, b)
        else:  # torch's class, given groups without its `fused` flag, continues on its multi-tensor kernels
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_set_learning_rate_reaches_every_group_and_the_step_reads_it():
    model = small_model()
    optimizer = ours(model)
    set_learning_rate(optimizer, 0.0)
    before = [p.detach().clone() for p in model.parameters()]
    for group in optimizer.param_groups:
        group["weight_decay"] = 0.0
    tokens = torch.randint(0, 50, (2, 5))
    nn.functional.cross_entropy(model(tokens).flatten(0, 1), tokens.flatten()).backward()
    optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # lr 0: nothing moves
    assert all(float(s["step"]) == 1.0 for s in optimizer.state.values())


def test_a_state_dict_for_other_groups_is_refused():
    model = small_model()
    optimizer = ours(model)
    train(model, optimizer, 1)
    saved = optimizer.state_dict()
    saved["param_groups"] = saved["param_groups"][:1]
    with pytest.raises(ValueError, match="other parameter groups"):
        ours(small_model()).load_state_dict(saved)


def test_accelerates_fp16_loss_scaler_drives_it_and_skips_an_overflowing_step():
    """The fp16 path (`accelerator.prepare(optimizer)` with a GradScaler): scaled gradients are unscaled before
    the update, which equals an unscaled run's; a step with an infinite gradient is skipped and changes nothing.
    (On the CPU, with the CPU's GradScaler: accelerate only builds an fp16 scaler on a GPU.)"""
    from accelerate import Accelerator
    from accelerate.optimizer import AcceleratedOptimizer

    Accelerator()  # the state AcceleratedOptimizer reads (what the trainer creates on this machine too)
    scaled, plain = small_model(), small_model()
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    wrapped = AcceleratedOptimizer(ours(scaled), scaler=scaler)
    reference = ours(plain)
    tokens = torch.randint(0, 50, (4, 7))
    for model, backward in ((scaled, lambda loss: scaler.scale(loss).backward()), (plain, torch.Tensor.backward)):
        backward(nn.functional.cross_entropy(model(tokens).flatten(0, 1), tokens.flatten()))
    wrapped.step()
    reference.step()
    for a, b in zip(scaled.parameters(), plain.parameters()):
        torch.testing.assert_close(a, b)
    assert not wrapped.step_was_skipped

    before = [p.detach().clone() for p in scaled.parameters()]
    wrapped.zero_grad()
    scaler.scale(nn.functional.cross_entropy(scaled(tokens).flatten(0, 1), tokens.flatten())).backward()
    next(scaled.parameters()).grad[0, 0] = float("inf")
    wrapped.step()
    assert wrapped.step_was_skipped and all(torch.equal(a, b) for a, b in zip(before, scaled.parameters()))
