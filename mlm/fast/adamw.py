"""AdamW on torch's fused kernel, without `torch.optim`'s machinery.

Why not `torch.optim.AdamW(fused=True)`, which runs the very same kernel (`torch._fused_adamw_`)? Its base class
imports `torch._dynamo` at the first `add_param_group` and `step` (to mark graph breaks for `torch.compile`), and
with it sympy and half of torch's compiler stack: seconds of every training command's start-up, which a lesson
waits for (the speedrun log, benchmarks/LOG.md row 21, has the measurements).
This class is the part of the optimizer training uses: parameter groups with their own weight decay, one learning
rate held in a tensor (a captured CUDA graph reads the current value at every replay), `state` per parameter and
`state_dict` / `load_state_dict` in torch's layout, so checkpoints written with either load into the other.
tests/unit/test_adamw.py checks it against `torch.optim.AdamW`, bit for bit.
"""

from __future__ import annotations

import torch

SETTINGS = ("betas", "eps", "weight_decay")  # a parameter group's settings that a saved state restores
GROUP_KEYS = ("lr", *SETTINGS)  # what a parameter group's entry in `state_dict` carries


class FusedAdamW:
    def __init__(self, groups: list[dict], lr: torch.Tensor, betas=(0.9, 0.999), eps: float = 1e-8):
        """`groups`: dicts with "params" and "weight_decay". `lr`: a 0-d float tensor on the parameters' device,
        shared by every group (`mlm.train.step.set_learning_rate` fills it)."""
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps}
        self.param_groups = [{**defaults, **group, "params": list(group["params"])} for group in groups]
        self.state: dict[torch.Tensor, dict[str, torch.Tensor]] = {}

    @property
    def parameters(self) -> list[torch.Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for parameter in self.parameters:
            if set_to_none:
                parameter.grad = None
            elif parameter.grad is not None:
                parameter.grad.zero_()

    def _state_of(self, parameter: torch.Tensor) -> dict[str, torch.Tensor]:
        if parameter not in self.state:  # as torch's: created at the first step, `step` a float on the device
            self.state[parameter] = {
                "step": torch.zeros((), dtype=torch.float32, device=parameter.device),
                "exp_avg": torch.zeros_like(parameter, memory_format=torch.preserve_format),
                "exp_avg_sq": torch.zeros_like(parameter, memory_format=torch.preserve_format),
            }
        return self.state[parameter]

    @torch.no_grad()
    def step(self, closure=None) -> None:
        """One update of every parameter that has a gradient. (`closure`: accelerate's fp16 loss scaler passes
        None; AdamW never re-evaluates the loss.)"""
        if closure is not None:
            raise ValueError("FusedAdamW takes no closure")
        for group in self.param_groups:
            # the kernel takes lists of one device and dtype: group them, as torch's optimizer does
            by_kind: dict[tuple, list[torch.Tensor]] = {}
            for parameter in group["params"]:
                if parameter.grad is not None:
                    by_kind.setdefault((parameter.device, parameter.dtype), []).append(parameter)
            beta1, beta2 = group["betas"]
            for params in by_kind.values():
                states = [self._state_of(p) for p in params]
                steps = [s["step"] for s in states]
                torch._foreach_add_(steps, 1)
                torch._fused_adamw_(params, [p.grad for p in params], [s["exp_avg"] for s in states],
                                    [s["exp_avg_sq"] for s in states], [], steps, amsgrad=False, lr=group["lr"],
                                    beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"], eps=group["eps"],
                                    maximize=False, grad_scale=None, found_inf=None)

    def state_dict(self) -> dict:
        """torch's layout: parameters numbered in group order, state keyed by those numbers."""
        index = {id(p): i for i, p in enumerate(self.parameters)}
        groups, start = [], 0
        for group in self.param_groups:
            count = len(group["params"])
            groups.append({**{k: group[k] for k in GROUP_KEYS}, "params": list(range(start, start + count))})
            start += count
        state = {index[id(p)]: dict(entries) for p, entries in self.state.items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, saved: dict) -> None:
        """Moments onto the parameters' devices and dtypes (`step` stays float32); betas, eps and weight decay from
        `saved`. The learning rate stays this optimizer's tensor: the schedule sets it before every step."""
        if [len(g["params"]) for g in saved["param_groups"]] != [len(g["params"]) for g in self.param_groups]:
            raise ValueError("the saved optimizer state has other parameter groups than this model's")
        for group, saved_group in zip(self.param_groups, saved["param_groups"]):
            group.update({k: saved_group[k] for k in SETTINGS if k in saved_group})
            group["betas"] = tuple(group["betas"])
        parameters = self.parameters
        self.state = {}
        for index, entries in saved["state"].items():
            parameter = parameters[int(index)]
            self.state[parameter] = {
                key: value.to(parameter.device, torch.float32 if key == "step" else parameter.dtype).clone()
                for key, value in entries.items()
            }
