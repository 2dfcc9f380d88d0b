"""From-scratch initialisations: Hugging Face's (the model as built) or the mimetic init (`--init mimetic`)."""

from __future__ import annotations

import math

import torch

from mlm.config import INITS
from mlm.errors import UserError


def initialised(model, init: str):
    """`model` as built (Hugging Face's init: "bert"), or re-initialised by `mimetic_init`."""
    if init == "mimetic":
        mimetic_init(model)
    elif init != "bert":
        raise UserError(f"unknown init '{init}'; choose one of {', '.join(INITS)}")
    return model


def sinusoids(positions: int, width: int) -> torch.Tensor:
    """The Transformer paper's position table: sin/cos pairs at geometrically spaced frequencies."""
    position = torch.arange(positions, dtype=torch.float64)[:, None]
    frequency = torch.exp(torch.arange(0, width, 2, dtype=torch.float64) * (-math.log(10000.0) / width))
    table = torch.zeros(positions, width, dtype=torch.float64)
    table[:, 0::2], table[:, 1::2] = torch.sin(position * frequency), torch.cos(position * frequency)
    return table


def mimetic_init(model) -> None:
    """Start attention looking at neighbours, so the model leaves the loss plateau in 2-3 epochs instead of 6-10.

    From Hugging Face's init the model spends epochs near loss 6, predicting word frequencies: its attention is
    uniform (query and key weights of std 0.02 give logits near 0) and its learned positions are random vectors,
    so nothing says which words are near each other. Two changes, the architecture untouched:
      * the position embeddings start as the Transformer paper's sinusoids (at HF's std, 0.02), so nearby
        positions start with similar vectors;
      * each layer's key weights start equal to its query weights, both twice HF's scale ("mimetic"
        initialisation, Trockman & Kolter 2023): q.k = x W^T W x' is then large for similar inputs, so from the
        first step a position attends to itself and its neighbours rather than uniformly.
    The speedrun log (benchmarks/LOG.md) has the measurements, rows 15-18 (benchmarks/init_ablation.py): each
    change alone shortens the plateau; together `fast` reaches loss 3.9 at epoch 7-8 instead of 18, in two seeds
    out of two. tests/unit/test_model.py checks the tables against an independent numpy one."""
    sinusoidal_positions(model, model.config.initializer_range)
    mimetic_attention(model, 2.0)


@torch.no_grad()
def sinusoidal_positions(model, std: float) -> None:
    positions = model.bert.embeddings.position_embeddings.weight
    table = sinusoids(*positions.shape)
    positions.copy_(table / table.std() * std)


@torch.no_grad()
def mimetic_attention(model, scale: float) -> None:
    for layer in model.bert.encoder.layer:
        attention = layer.attention.self
        attention.query.weight.mul_(scale)
        attention.key.weight.copy_(attention.query.weight)
