"""How a training run writes its checkpoints, and keeps best/.

Separate from the loop because every save decision guards against losing work or publishing a broken model: all
processes must hold the same weights, the weights must give finite predictions (else the run diverged and the last
good checkpoint stays), and the files, optimizer and random-number state are published as one unit (mlm.train.state,
mlm.runs.manifest). `best/` is written beside, with the weights of the lowest validation loss so far.
"""

from __future__ import annotations

import math
import platform
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from mlm.config import TrainConfig
from mlm.model.build import parameter_count
from mlm.model.files import save_model
from mlm.runs import durability
from mlm.runs.atomic import replace_folder, staged, write_text_atomic
from mlm.runs.card import model_card
from mlm.runs.layout import BEST_DIR, CARD_FILE, CONFIG_FILE, STATE_DIR
from mlm.runs.manifest import publish
from mlm.runs.metrics import read_metrics
from mlm.runs.snapshots import card_section
from mlm.train.state import rng_state, save_training_state


def machine_name(device: torch.device, processes: int) -> str:
    if device.type == "cuda":
        return f"{processes} x {torch.cuda.get_device_name(device)} (torch {torch.__version__})"
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads (torch {torch.__version__})"


class Checkpointer:
    """Saves one run: its checkpoints (periodic and last), best/, and the divergence mark.

    config: the run's settings (saved with each checkpoint, and described in the card). model, tokenizer, optimizer:
    what a checkpoint holds. line_counts: the data's non-blank lines, for the card. probe_logits: the model's logits
    on a validation batch (mlm.train.evaluation.Evaluator.probe_logits), which a checkpoint's weights must keep
    finite. start_step, resumed: where the run starts (a resumed run's checkpoint is already saved).
    """

    def __init__(self, run_dir: Path, config: TrainConfig, accelerator, model: nn.Module, tokenizer, optimizer,
                 line_counts: dict, probe_logits: Callable[[], torch.Tensor], start_step: int, resumed: bool):
        self.run_dir, self.config, self.accelerator = run_dir, config, accelerator
        self.model, self.tokenizer, self.optimizer, self.line_counts = model, tokenizer, optimizer, line_counts
        self.probe_logits = probe_logits
        self.device, self.is_main = accelerator.device, accelerator.is_main_process
        self.schedule = durability.CheckpointSchedule(config.checkpoint_every_steps or None,
                                                      config.checkpoint_every_minutes or None, start_step)
        self.saved_step = start_step if resumed else None
        self.best_weights: dict[str, torch.Tensor] | None = None  # a better validation's, until best/ is written
        self.best_loss = min((m["loss"] for m in read_metrics(run_dir) if m["split"] == "valid"), default=math.inf)

    def note_validation(self, step: int, loss: float) -> None:
        """Keep the weights of a new lowest validation loss, on the device; written with the next checkpoint."""
        if step > 0 and loss < self.best_loss:
            self.best_loss = loss
            self.best_weights = {k: v.detach().clone() for k, v in self.trainable_state().items()}

    def due(self, step: int) -> bool:
        """Whether a periodic checkpoint is due; with several processes, the one that says yes first decides (their
        clocks differ)."""
        due = self.schedule.due(step)
        if self.accelerator.num_processes == 1:
            return due
        return bool(self.accelerator.reduce(torch.tensor(float(due), device=self.device), "max").item())

    def save(self, step: int, total_steps: int) -> bool:
        """Publish the checkpoint of `step` as one unit; False (nothing written) if its weights are broken: the run
        diverged."""
        self.check_replicas_agree()
        self.accelerator.wait_for_everyone()
        if not self.weights_usable():
            return False
        rng = {name: self.accelerator.gather(state.to(self.device)[None]) for name, state in rng_state(self.device).items()}
        self.save_best()
        if self.is_main:
            with staged(self.run_dir) as staging:
                self.save_model_files(staging)
                self.config.save(staging / CONFIG_FILE)
                save_training_state(staging / STATE_DIR, self.optimizer,
                                    {"step": step, "total_steps": total_steps, "finished": step >= total_steps}, rng)
                publish(staging, self.run_dir, step)
        self.schedule.saved(step)
        self.saved_step = step
        self.accelerator.wait_for_everyone()
        return True

    def mark_diverged(self, step: int, reason: str) -> None:
        """Keep the last good checkpoint and mark the run diverged (the app does not offer it)."""
        if self.is_main:
            message = durability.mark_diverged(self.run_dir, step, reason, self.saved_step)
            print(f"error: {message}", file=sys.stderr)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def card(self) -> str:
        config = self.config
        what = f"`{config.pretrained}` fine-tuned" if config.pretrained else "A small BERT pre-trained from scratch"
        source = config.data_dir or ", ".join(config.text_files) or "wikitext/wikitext-2-raw-v1 (hub)"
        lines = ", ".join(f"{k}: {v:,}" for k, v in self.line_counts.items())
        description = (f"{what} as a masked language model ({parameter_count(self.model):,} parameters, "
                       f"{sum(p.numel() for p in self.model.parameters() if p.requires_grad):,} trained) on {source} "
                       f"(non-blank lines: {lines}; {config.block_size}-token blocks).")
        command = "python -m mlm.train " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        return model_card(Path(config.output_dir).name, description, vars(config), read_metrics(self.run_dir), command,
                          machine_name(self.device, self.accelerator.num_processes)) + card_section(self.run_dir)

    def save_model_files(self, folder: Path) -> None:
        save_model(self.model, self.tokenizer, folder, base_model=self.config.pretrained)
        write_text_atomic(folder / CARD_FILE, self.card())

    def save_best(self) -> None:
        """best/ holds the weights of the lowest validation loss (swapped in briefly, then the last ones back)."""
        if not self.is_main or self.best_weights is None:
            return
        last = {k: v.detach().clone() for k, v in self.trainable_state().items()}
        with torch.no_grad():
            for name, parameter in self.trainable_state().items():
                parameter.copy_(self.best_weights[name])
            with staged(self.run_dir) as staging:
                self.save_model_files(staging)
                replace_folder(staging, self.run_dir / BEST_DIR)
            for name, parameter in self.trainable_state().items():
                parameter.copy_(last[name])
        self.best_weights = None  # written; the next periodic checkpoint rewrites best/ only if a better one comes

    def check_replicas_agree(self) -> None:
        """Every process must hold the same weights; if not, gradient averaging is broken and the run is wrong."""
        if self.accelerator.num_processes == 1:
            return
        checksums = torch.stack([p.detach().double().sum() for p in self.trainable_state().values()])
        spread = self.accelerator.reduce(checksums, "max") + self.accelerator.reduce(-checksums, "max")
        if spread.abs().max().item() > 0:
            raise RuntimeError(f"the {self.accelerator.num_processes} processes' weights differ: gradient averaging failed")

    @torch.no_grad()
    def weights_usable(self) -> bool:
        """Finite weights that give finite logits on a validation batch (weights of 1e30 are finite, yet useless):
        only such a checkpoint may replace the last good one."""
        finite = torch.stack([p.isfinite().all() for p in self.trainable_state().values()]).all()
        broken = (~(finite & self.probe_logits().isfinite().all())).float()
        return not self.accelerator.reduce(broken, "max").item()  # usable only if usable on every process
