"""The model card: the text of a run folder's README.md, from its config and metrics.

Written with every checkpoint, so the folder a user downloads or uploads to the Hub says how it was made and how
well it does; the Compare tab reads its description back (mlm/serve/cards.py).
"""

from __future__ import annotations


def model_card(title: str, description: str, config: dict, metrics: list[dict], command: str, machine: str) -> str:
    valid = [m for m in metrics if m.get("split") == "valid"]
    train = [m for m in metrics if m.get("split") == "train"]
    final = valid[-1] if valid else {}
    rows = "\n".join(
        f"| {m['step']} | {m['epoch']:.2f} | {m['loss']:.4f} | {m['perplexity']:.1f} | {m['top1']:.3f} | {m['top5']:.3f} |"
        for m in valid
    )
    settings = "\n".join(f"| `{k}` | `{v}` |" for k, v in config.items() if v not in (None, [], ""))
    elapsed = train[-1].get("elapsed_s") if train else None
    return f"""---
library_name: transformers
pipeline_tag: fill-mask
tags: [bert, masked-lm, wikitext]
---
# {title}

{description}

- **Command**: `{command}`
- **Machine**: {machine}
- **Training time**: {f'{elapsed:.1f} s' if elapsed is not None else 'n/a'} (training steps only; start-up and evaluations excluded)
- **Final validation** (15% fixed masks): loss {final.get('loss', float('nan')):.4f}, perplexity {final.get('perplexity', float('nan')):.1f}, top-1 {final.get('top1', float('nan')):.3f}, top-5 {final.get('top5', float('nan')):.3f}

## Validation curve

| step | epoch | loss | perplexity | top-1 | top-5 |
| --- | --- | --- | --- | --- | --- |
{rows}

## Settings

| setting | value |
| --- | --- |
{settings}

Use: `transformers.pipeline("fill-mask", model=<this folder>)` (a LoRA folder loads through `mlm.model.files.load_model`).
"""
