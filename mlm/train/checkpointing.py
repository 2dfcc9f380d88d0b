"""How a training run writes its checkpoints (a mixin of mlm.train.trainer.Trainer, which owns the loop and the state).

Separate from the loop because every save decision guards against losing work or publishing a broken model: all
processes must hold the same weights, the weights must give finite predictions (else the run diverged and the last
good checkpoint stays), and the files, optimizer and random-number state are published as one unit (mlm.runs.checkpoint,
mlm.runs.manifest). `best/` is written beside, with the weights of the lowest validation loss so far.
"""

from __future__ import annotations

import platform
import shlex
import sys
from pathlib import Path

import torch

from mlm.runs import checkpoint as ckpt
from mlm.runs import durability
from mlm.train.evaluation import predictions_in
from mlm.model.build import bert_for_masked_lm, parameter_count, save_model
from mlm.train.snapshots import card_section


def machine_name(device: torch.device, processes: int) -> str:
    if device.type == "cuda":
        return f"{processes} x {torch.cuda.get_device_name(device)} (torch {torch.__version__})"
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads (torch {torch.__version__})"


class Checkpointing:
    """Needs the Trainer's model, tokenizer, optimizer, accelerator, config, run_dir, progress, schedule (of
    periodic saves), eval_objective and validation tensors."""

    def card(self) -> str:
        what = (f"`{self.config.pretrained}` fine-tuned" if self.config.pretrained else "A small BERT pre-trained from scratch")
        source = self.config.data_dir or ", ".join(self.config.text_files) or "wikitext/wikitext-2-raw-v1 (hub)"
        lines = ", ".join(f"{k}: {v:,}" for k, v in self.line_counts.items())
        description = (f"{what} as a masked language model ({parameter_count(self.model):,} parameters, "
                       f"{sum(p.numel() for p in self.model.parameters() if p.requires_grad):,} trained) on {source} "
                       f"(non-blank lines: {lines}; {self.config.block_size}-token blocks).")
        command = "python -m mlm.train " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        return ckpt.model_card(Path(self.config.output_dir).name, description, vars(self.config),
                               ckpt.read_metrics(self.run_dir), command, machine_name(self.device, self.accelerator.num_processes)
                               ) + card_section(self.run_dir)

    def save_model_files(self, folder: Path) -> None:
        save_model(self.model, self.tokenizer, folder, base_model=self.config.pretrained)
        ckpt.write_text_atomic(folder / "README.md", self.card())

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def save_best(self) -> None:
        """best/ holds the weights of the lowest validation loss (swapped in briefly, then the last ones back)."""
        if not self.is_main or self.best_weights is None:
            return
        last = {k: v.detach().clone() for k, v in self.trainable_state().items()}
        with torch.no_grad():
            for name, parameter in self.trainable_state().items():
                parameter.copy_(self.best_weights[name])
            with ckpt.staged(self.run_dir) as staging:
                self.save_model_files(staging)
                ckpt.replace_folder(staging, self.run_dir / ckpt.BEST_DIR)
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

    def save(self, step: int) -> None:
        """Publish the checkpoint of `step` as one unit, unless its weights are broken (then the run diverged)."""
        self.progress.update(phase="saving")
        self.check_replicas_agree()
        self.accelerator.wait_for_everyone()
        if not self.weights_usable():
            self.diverged = "its weights give non-finite predictions"
            return
        rng = {name: self.accelerator.gather(state.to(self.device)[None]) for name, state in ckpt.rng_state(self.device).items()}
        self.save_best()
        if self.is_main:
            with ckpt.staged(self.run_dir) as staging:
                self.save_model_files(staging)
                self.config.save(staging / ckpt.CONFIG_FILE)
                ckpt.save_training_state(staging / ckpt.STATE_DIR, self.optimizer,
                                         {"step": step, "total_steps": self.total_steps, "finished": step >= self.total_steps},
                                         rng)
                ckpt.publish(staging, self.run_dir, step)
        self.schedule.saved(step)
        self.saved_step = step
        self.accelerator.wait_for_everyone()

    def checkpoint_due(self, step: int) -> bool:
        """Whether a periodic checkpoint is due; with several processes, the one that says yes first decides (their
        clocks differ)."""
        due = self.schedule.due(step)
        if self.accelerator.num_processes == 1:
            return due
        return bool(self.accelerator.reduce(torch.tensor(float(due), device=self.device), "max").item())

    @torch.no_grad()
    def weights_usable(self) -> bool:
        """Finite weights that give finite logits on a validation batch (weights of 1e30 are finite, yet useless):
        only such a checkpoint may replace the last good one."""
        finite = torch.stack([p.isfinite().all() for p in self.trainable_state().values()]).all()
        model = bert_for_masked_lm(self.model).eval()
        batch = slice(0, self.config.eval_batch_size)
        logits, _ = predictions_in(self.eval_objective, self.valid_inputs[batch], self.valid_labels[batch], self.autocast)
        model.train()
        broken = (~(finite & logits.isfinite().all())).float()
        return not self.accelerator.reduce(broken, "max").item()  # usable only if usable on every process

    def stop_diverged(self, step: int) -> int:
        """Keep the last good checkpoint, mark the run diverged (not offered by the app), exit with status 3."""
        if self.is_main:
            message = durability.mark_diverged(self.run_dir, step, self.diverged, self.saved_step)
            print(f"error: {message}", file=sys.stderr)
        self.step_fn.close()
        self.accelerator.end_training()
        return 3
