"""One optimisation step with no host synchronisation: mask -> forward -> backward -> clip -> AdamW.

The from-scratch model is so small that an H100 finishes each kernel in microseconds; the original loop spent its
time launching kernels and waiting on `.item()`. Here everything, masking included, stays on the device, and on a
GPU the whole step is captured once as a CUDA graph and replayed: one launch per step instead of hundreds. With
several processes the step averages gradients itself (`GradientAverager`), so the all-reduce is captured too.
Elsewhere (CPU, fp16 with its loss scaler) the same step runs eagerly.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from mlm.fast.adamw import FusedAdamW
from mlm.data.masking import MaskingSpec, mask_tokens


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, betas, device: torch.device,
                    eps: float = 1e-8) -> FusedAdamW:
    """AdamW (torch's fused kernel) with decay on weight matrices only, and a learning rate held in a tensor so a
    captured graph reads the current value of the schedule at every replay."""
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in trainable if p.ndim >= 2]
    no_decay = [p for n, p in trainable if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return FusedAdamW(groups, lr=torch.tensor(lr, dtype=torch.float32, device=device), betas=betas, eps=eps)


def set_learning_rate(optimizer: FusedAdamW, value: float) -> None:
    for group in optimizer.param_groups:
        group["lr"].fill_(value)


class GradientAverager:
    """Averages gradients over processes with one all-reduce of a flat buffer, between backward and clipping.

    It stands in for DDP: DDP's bucket hooks keep host-side state that a replayed CUDA graph never updates, while a
    single explicit all-reduce captures cleanly (NCCL supports capture) and runs the same on CPU (gloo). With a tiny
    model the lost overlap of communication and backward costs little; one launch per step saves far more.
    """

    def __init__(self, parameters: list[torch.Tensor], world_size: int):
        self.parameters = parameters
        self.world_size = world_size

    @staticmethod
    def broadcast_from_first(module: nn.Module) -> None:
        """Make every process start from process 0's weights (DDP did this at construction)."""
        with torch.no_grad():
            for tensor in [*module.parameters(), *module.buffers()]:
                torch.distributed.broadcast(tensor, src=0)

    def __call__(self) -> None:
        grads = [p.grad for p in self.parameters if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat)  # a sum: gloo has no average
        flat.div_(self.world_size)
        # one multi-tensor copy back (the kernel torch's own optimizers use), not a launch per parameter
        torch._foreach_copy_(grads, [part.view_as(g) for part, g in zip(flat.split([g.numel() for g in grads]), grads)])


class TrainStep:
    """Call with a batch of token blocks (on the device); returns the loss as a device tensor (no sync)."""

    def __init__(self, objective, optimizer, spec: MaskingSpec, max_grad_norm: float, autocast_dtype, accelerator,
                 world_size: int = 1):
        self.objective = objective
        self.optimizer = optimizer
        self.spec = spec
        self.max_grad_norm = max_grad_norm
        self.autocast_dtype = autocast_dtype
        self.accelerator = accelerator
        self.parameters = [p for group in optimizer.param_groups for p in group["params"]]
        # read by the masking at every step (and every graph replay): `set_mask_rate` moves it along a schedule
        self.mask_rate = torch.tensor(spec.probability, dtype=torch.float32, device=accelerator.device)
        self.average_gradients = GradientAverager(self.parameters, world_size) if world_size > 1 else None

    def autocast(self):
        device = self.accelerator.device
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.autocast_dtype, cache_enabled=False)

    def set_mask_rate(self, value: float) -> None:
        self.mask_rate.fill_(value)

    def run(self, block_ids: torch.Tensor) -> torch.Tensor:
        inputs, labels = mask_tokens(block_ids, self.spec, probability=self.mask_rate)
        with self.autocast():
            loss = self.objective(inputs, labels)
        self.accelerator.backward(loss)
        if self.average_gradients:
            self.average_gradients()
        if self.max_grad_norm:
            # torch's own clipping: accelerate's imports DTensor and sympy with it (the speedrun log, row 22)
            self.accelerator.unscale_gradients()  # fp16's loss scale out first (nothing to do otherwise)
            torch.nn.utils.clip_grad_norm_(self.parameters, self.max_grad_norm, foreach=True)
        self.optimizer.step()
        return loss.detach()

    def __call__(self, block_ids: torch.Tensor) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        return self.run(block_ids)

    def close(self) -> None:
        """Release what the step holds (nothing here)."""


class GraphedTrainStep(TrainStep):
    """The same step captured as one CUDA graph (bf16 or fp32; with several processes, the all-reduce included).

    Capture needs a few eager warm-up steps (to create cuBLAS handles, NCCL communicators, optimizer state and the
    allocator's pools); they would change the model, so parameters and optimizer state (fresh, or loaded for a
    resume) are restored afterwards, in place, keeping the addresses the graph will use. Random numbers (masks,
    dropout) advance at every replay as in eager mode.
    """

    WARMUP_STEPS = 3

    def __init__(self, *args, example_batch: torch.Tensor, **kwargs):
        super().__init__(*args, **kwargs)
        self.static_batch = example_batch.clone()
        saved = [p.detach().clone() for p in self.parameters]
        saved_state = {p: {k: v.clone() for k, v in state.items()} for p, state in self.optimizer.state.items()}
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.WARMUP_STEPS):
                super().__call__(self.static_batch)
        torch.cuda.current_stream().wait_stream(side)
        with torch.no_grad():
            for parameter, value in zip(self.parameters, saved):
                parameter.copy_(value)
            for parameter, state in self.optimizer.state.items():  # back to the loaded state, or to none
                for key, value in state.items():
                    value.copy_(saved_state[parameter][key]) if parameter in saved_state else value.zero_()
        self.optimizer.zero_grad(set_to_none=True)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_loss = self.run(self.static_batch)

    def __call__(self, block_ids: torch.Tensor) -> torch.Tensor:
        self.static_batch.copy_(block_ids)
        self.graph.replay()
        return self.static_loss

    def close(self) -> None:
        """Free the graph. With several processes it holds NCCL work, and must go before the communicators do:
        tearing them down under a live graph hangs the process at exit."""
        torch.cuda.synchronize()
        self.graph.reset()
