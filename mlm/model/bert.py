"""BERT for masked language modelling in plain torch: what a from-scratch training run builds, without transformers.

Importing `transformers` costs seconds of a training command's start-up (issue 12 wants the whole command at the
first step within 5 s), and a from-scratch run uses nothing of it but the model. This is the same network as
`transformers.BertForMaskedLM` (post-LN encoder, exact-erf GELU, dropout after the embeddings, on the attention
probabilities and after each sublayer; absolute positions; one token type), with the same module and parameter
names, so its state_dict loads strictly into BertForMaskedLM and back, and `save_pretrained` writes the folder
HF writes (`model.safetensors` without the tied decoder, `config.json`): `pipeline("fill-mask", folder)` loads it.
Its linear and layer-norm layers are `mlm.fast.layers`': torch's, with a faster backward on a GPU; which backward
runs is the `kernels` switch's choice (mlm/fast/kernels.py), given when the model is built and never saved.

Initialisation is HF's `_init_weights`: Linear and Embedding weights N(0, 0.02), biases zero, the padding row of
the word embeddings zero, LayerNorm weight 1 and bias 0. The modules are even built and initialised in HF's order
(the encoder built, then initialised children before parents; then the head likewise, the decoder's own weight drawn
and then replaced by the tied embedding), so under the same seed the random start, and the dropout masks drawn in
training, are bit for bit HF's (tests/unit/test_bert.py): the random-start snapshot of older runs still rebuilds from its
seed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from mlm.fast.layers import LayerNorm, Linear, linear

# The tied parameters: HF's save_pretrained leaves them out of model.safetensors, and so does this one.
TIED = {"cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
        "cls.predictions.decoder.bias": "cls.predictions.bias"}


@dataclass
class BertConfig:
    """The fields of transformers.BertConfig this model uses (same names, same defaults apart from the size)."""

    vocab_size: int = 30522
    hidden_size: int = 256
    num_hidden_layers: int = 3
    num_attention_heads: int = 4
    intermediate_size: int = 1024
    max_position_embeddings: int = 512
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    pad_token_id: int = 0

    @classmethod
    def from_dict(cls, values: dict) -> "BertConfig":
        return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})

    def to_json(self) -> dict:
        """config.json as transformers reads it (BertConfig's other fields keep their defaults)."""
        return {"architectures": ["BertForMaskedLM"], "model_type": "bert", "hidden_act": "gelu",
                "position_embedding_type": "absolute", "tie_word_embeddings": True, "dtype": "float32", **asdict(self)}


@dataclass
class Output:
    last_hidden_state: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    loss: torch.Tensor | None = None


class Embeddings(nn.Module):
    def __init__(self, c: BertConfig, kernels: str):
        super().__init__()
        self.word_embeddings = nn.Embedding(c.vocab_size, c.hidden_size, padding_idx=c.pad_token_id)
        self.position_embeddings = nn.Embedding(c.max_position_embeddings, c.hidden_size)
        self.token_type_embeddings = nn.Embedding(c.type_vocab_size, c.hidden_size)
        self.LayerNorm = LayerNorm(c.hidden_size, eps=c.layer_norm_eps, kernels=kernels)
        self.dropout = nn.Dropout(c.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # every token is of type 0 and positions count from 0, as in HF without token_type_ids / position_ids
        x = self.word_embeddings(input_ids) + self.token_type_embeddings.weight[0]
        x = x + self.position_embeddings.weight[: input_ids.shape[1]]
        return self.dropout(self.LayerNorm(x))


class SelfAttention(nn.Module):
    def __init__(self, c: BertConfig, kernels: str):
        super().__init__()
        self.heads, self.dropout_p, self.kernels = c.num_attention_heads, c.attention_probs_dropout_prob, kernels
        self.query = Linear(c.hidden_size, c.hidden_size, kernels=kernels)
        self.key = Linear(c.hidden_size, c.hidden_size, kernels=kernels)
        self.value = Linear(c.hidden_size, c.hidden_size, kernels=kernels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        # queries, keys and values from one matrix product: one cast of x and a third of the launches
        projections = (self.query, self.key, self.value)
        weight = torch.cat([p.weight for p in projections])
        bias = torch.cat([p.bias for p in projections])
        q, k, v = linear(x, weight, bias, self.kernels).view(batch, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        context = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout_p if self.training else 0.0)
        return context.transpose(1, 2).reshape(batch, length, width)


class AddNorm(nn.Module):
    """dense -> dropout -> + residual -> LayerNorm: HF's BertSelfOutput and BertOutput."""

    def __init__(self, c: BertConfig, inputs: int, kernels: str):
        super().__init__()
        self.dense = Linear(inputs, c.hidden_size, kernels=kernels)
        self.LayerNorm = LayerNorm(c.hidden_size, eps=c.layer_norm_eps, kernels=kernels)
        self.dropout = nn.Dropout(c.hidden_dropout_prob)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class Attention(nn.Module):
    def __init__(self, c: BertConfig, kernels: str):
        super().__init__()
        self.self = SelfAttention(c, kernels)
        self.output = AddNorm(c, c.hidden_size, kernels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x), x)


class Intermediate(nn.Module):
    def __init__(self, c: BertConfig, kernels: str):
        super().__init__()
        self.dense = Linear(c.hidden_size, c.intermediate_size, kernels=kernels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))


class Layer(nn.Module):
    def __init__(self, c: BertConfig, kernels: str):
        super().__init__()
        self.attention = Attention(c, kernels)
        self.intermediate = Intermediate(c, kernels)
        self.output = AddNorm(c, c.intermediate_size, kernels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attention(x)
        return self.output(self.intermediate(x), x)


class Encoder(nn.Module):
    def __init__(self, c: BertConfig, kernels: str):
        super().__init__()
        self.layer = nn.ModuleList(Layer(c, kernels) for _ in range(c.num_hidden_layers))


class BertModel(nn.Module):
    def __init__(self, c: BertConfig, kernels: str):
        super().__init__()
        self.embeddings = Embeddings(c, kernels)
        self.encoder = Encoder(c, kernels)

    def forward(self, input_ids: torch.Tensor) -> Output:
        x = self.embeddings(input_ids)
        for layer in self.encoder.layer:
            x = layer(x)
        return Output(last_hidden_state=x)


class HeadTransform(nn.Module):
    def __init__(self, c: BertConfig, kernels: str):
        super().__init__()
        self.dense = Linear(c.hidden_size, c.hidden_size, kernels=kernels)
        self.LayerNorm = LayerNorm(c.hidden_size, eps=c.layer_norm_eps, kernels=kernels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(F.gelu(self.dense(x)))


class LMPredictionHead(nn.Module):
    def __init__(self, c: BertConfig, kernels: str):
        super().__init__()
        self.transform = HeadTransform(c, kernels)
        self.decoder = Linear(c.hidden_size, c.vocab_size, kernels=kernels)  # weight and bias tied after initialisation
        self.bias = nn.Parameter(torch.zeros(c.vocab_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(x))


class MLMHead(nn.Module):
    def __init__(self, c: BertConfig, kernels: str):
        super().__init__()
        self.predictions = LMPredictionHead(c, kernels)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.predictions(hidden)


class BertForMaskedLM(nn.Module):
    def __init__(self, config: BertConfig, kernels: str = "auto"):
        """`kernels`: which backward the linear and layer-norm layers run (mlm/fast/kernels.py)."""
        super().__init__()
        self.config = config
        # HF initialises its inner BertModel as soon as it is built, then builds and initialises the head (children
        # before parents): the same order here gives the same random start under the same seed
        self.bert = BertModel(config, kernels).apply(self._init_weights)
        self.cls = MLMHead(config, kernels).apply(self._init_weights)
        head = self.cls.predictions
        head.decoder.weight = self.bert.embeddings.word_embeddings.weight
        head.decoder.bias = head.bias

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            module.weight.normal_(0.0, std)
            module.bias.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.normal_(0.0, std)
            if module.padding_idx is not None:
                module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            module.weight.fill_(1.0)
            module.bias.zero_()
        elif isinstance(module, LMPredictionHead):
            module.bias.zero_()

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None) -> Output:
        logits = self.cls(self.bert(input_ids).last_hidden_state)
        loss = None if labels is None else F.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1))
        return Output(logits=logits, loss=loss)

    def save_pretrained(self, folder: str | Path, safe_serialization: bool = True) -> None:
        """model.safetensors and config.json as HF's save_pretrained writes them (the tied tensors left out)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items() if k not in TIED}
        save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
        (folder / "config.json").write_text(json.dumps(self.config.to_json(), indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, folder: str | Path, dropout: float | None = None,
                        kernels: str = "auto") -> "BertForMaskedLM":
        """A saved BERT MLM folder (this model's or HF's), fp32; every non-tied tensor must be in the file."""
        folder = Path(folder)
        values = json.loads((folder / "config.json").read_text())
        if dropout is not None:
            values = {**values, "hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout}
        model = cls(BertConfig.from_dict(values), kernels)
        missing, unexpected = model.load_state_dict(load_file(folder / "model.safetensors"), strict=False)
        if set(missing) - set(TIED) or set(unexpected) - set(TIED):
            raise ValueError(f"{folder} does not hold this BERT's weights (missing {sorted(set(missing) - set(TIED))[:3]}, "
                             f"unexpected {sorted(set(unexpected) - set(TIED))[:3]})")
        return model
