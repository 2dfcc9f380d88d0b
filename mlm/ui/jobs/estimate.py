"""How long a training form's run would take on this machine, before it is started.

The speed is measured, not assumed: a training step of the preset's model on 2 and on 8 random token blocks (each
after a warm-up step), and one validation batch, on the CPU (once per preset and app: the machine does not
change); a step's time is its fixed part plus a part per sequence, fitted from the two. A GPU trains
faster than this says. The amount of work comes from the data's size: a WikiText
file of 610 bytes makes one 128-token block (wiki.train.tokens: 10,797,148 bytes, 17,770 blocks). Start-up (loading
data, building the model) is not included.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from mlm.config import preset_config
from mlm.data.corpus import HELD_OUT_FRACTION  # an uploaded text is held out as every text corpus is
from mlm.data.masking import MaskingSpec, fixed_validation_masks, mask_tokens, max_predictions
from mlm.data.tokenizer import load_tokenizer
from mlm.hub import offline_stand_in
from mlm.model.build import pretrained_model, scratch_bert
from mlm.train.objective import MaskedLMObjective
from mlm.train.precision import autocast_dtype
from mlm.runs.progress import evaluations_expected
from mlm.train.step import build_optimizer

BYTES_PER_BLOCK = 610
HUB_BLOCKS = (17_770, 1_901)  # WikiText-2 (train, validation)
CALIBRATION_BATCHES = (2, 8)


@dataclass
class Estimate:
    seconds: float
    steps: int
    step_s: float
    evaluations: int
    evaluation_s: float
    capped_by_minutes: float | None = None  # the minutes cap ends the run first


def data_blocks(source: str, data_dir: str = "", text_file: str = "") -> tuple[int, int]:
    """(train, validation) blocks of 128 tokens a data source makes, from its size in bytes."""
    if source == "file" and text_file and Path(text_file).is_file():
        size = Path(text_file).stat().st_size
        return (max(1, int(size * (1 - HELD_OUT_FRACTION) / BYTES_PER_BLOCK)),
                max(1, int(size * HELD_OUT_FRACTION / BYTES_PER_BLOCK)))
    if source == "folder" and data_dir and Path(data_dir).is_dir():
        sizes = [sum(f.stat().st_size for f in Path(data_dir).glob(f"wiki.{stem}.*")) for stem in ("train", "valid")]
        return max(1, sizes[0] // BYTES_PER_BLOCK), max(1, sizes[1] // BYTES_PER_BLOCK)
    return HUB_BLOCKS


@functools.cache
def measured_speed(preset: str) -> tuple[float, float, float]:
    """(seconds per training step, plus seconds per sequence in it; seconds per validation sequence) of `preset`'s
    model on this machine: a step costs a fixed part (the optimizer, overheads) plus a part per sequence, so it is
    timed at two batch sizes, each after a warm-up step of that shape."""
    config = preset_config(preset)
    tokenizer = load_tokenizer(config.tokenizer)
    model = (pretrained_model(offline_stand_in(config.pretrained), config.dropout) if config.pretrained
             else scratch_bert(tokenizer, 0.1 if config.dropout is None else config.dropout, config.init)).train()
    spec = MaskingSpec.from_tokenizer(tokenizer, config.mask_probability)
    optimizer = build_optimizer(model, config.lr, config.weight_decay, config.adam_betas, torch.device("cpu"))
    dtype = autocast_dtype(config.mixed_precision, torch.device("cpu"))
    seconds = {}
    with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None, cache_enabled=False):
        for batch in CALIBRATION_BATCHES:
            blocks = torch.randint(1000, len(tokenizer), (batch, config.block_size))
            objective = MaskedLMObjective(model, max_predictions(blocks.numel(), config.mask_probability))
            for step in range(2):  # the trainer's step without its device plumbing; the first one warms up
                began = time.perf_counter()
                optimizer.zero_grad(set_to_none=True)
                objective(*mask_tokens(blocks, spec)).backward()
                optimizer.step()
            seconds[batch] = time.perf_counter() - began
        inputs, labels = fixed_validation_masks(blocks, spec)
        began = time.perf_counter()
        with torch.no_grad():
            MaskedLMObjective(model.eval(), inputs.numel()).predictions(inputs, labels)
        valid_s = (time.perf_counter() - began) / len(blocks)
    small, large = CALIBRATION_BATCHES
    per_sequence = max(seconds[large] - seconds[small], 0.0) / (large - small)
    return max(seconds[small] - small * per_sequence, 0.0), per_sequence, valid_s


def estimate(request) -> Estimate:
    """Training and validation time of a TrainRequest's run (runs on the CPU; GPUs are faster)."""
    config = preset_config(request.preset)
    batch_size = request.batch_size or config.batch_size
    epochs = request.epochs or config.epochs
    train_blocks, valid_blocks = data_blocks(request.data_source, request.data_dir, request.text_file)
    if request.max_train_blocks:
        train_blocks = min(train_blocks, request.max_train_blocks)
    if request.max_eval_blocks:
        valid_blocks = min(valid_blocks, request.max_eval_blocks)
    steps_per_epoch = max(1, train_blocks // batch_size)
    steps = math.ceil(epochs * steps_per_epoch)
    fixed_s, sequence_s, block_s = measured_speed(request.preset)
    step_s = fixed_s + sequence_s * batch_size
    evaluations = evaluations_expected(0, steps, steps_per_epoch, None)
    result = Estimate(steps * step_s + evaluations * valid_blocks * block_s, steps, step_s, evaluations,
                      valid_blocks * block_s)
    if request.max_minutes and result.seconds > 60 * request.max_minutes:
        result.capped_by_minutes = request.max_minutes
    return result
