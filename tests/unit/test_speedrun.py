"""The speedrun's new paths (issue 12): scheduled masking rate, bf16 softmax, padded output vocabulary, the fused
output-layer loss, evaluation every N epochs, and their resume."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from conftest import WIKITEXT_DIR
from mlm.runs.metrics import read_metrics
from mlm.config import PRESETS, TrainConfig, argument_parser, config_from_args
from mlm.data.masking import IGNORE_INDEX, MaskingSpec, mask_tokens, max_predictions
from mlm.data.tokenizer import load_tokenizer
from mlm.model.build import scratch_bert, scratch_model
from mlm.train.objective import MaskedLMObjective
from mlm.train.schedule import masking_schedule
from mlm.train.trainer import main

TINY = ["--max-train-blocks", "16", "--max-eval-blocks", "8", "--batch-size", "8", "--log-every", "1"]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


def test_a_rate_tensor_masks_as_the_float_rate_does(tokenizer):
    ids = torch.randint(1000, 30000, (300, 128))
    spec = MaskingSpec.from_tokenizer(tokenizer, 0.45)
    by_float = mask_tokens(ids, spec, torch.Generator().manual_seed(3))
    by_tensor = mask_tokens(ids, MaskingSpec.from_tokenizer(tokenizer, 0.1), torch.Generator().manual_seed(3),
                            probability=torch.tensor(0.45))
    assert torch.equal(by_float[0], by_tensor[0]) and torch.equal(by_float[1], by_tensor[1])
    rate = (by_tensor[1] != IGNORE_INDEX).float().mean().item()
    assert abs(rate - 0.45) < 0.01


def test_masking_schedule_runs_linearly_from_start_to_end():
    assert masking_schedule(0, 101, 0.45, 0.15) == 0.45
    assert masking_schedule(50, 101, 0.45, 0.15) == pytest.approx(0.30)
    assert masking_schedule(100, 101, 0.45, 0.15) == pytest.approx(0.15)
    assert masking_schedule(70, 101, 0.3, None) == 0.3


@pytest.mark.parametrize("build", [scratch_model, scratch_bert], ids=["transformers", "mlm.model.bert"])
@pytest.mark.parametrize("kernels", ["auto", "custom"], ids=["torch", "gpu-backward-forced"])
def test_bf16_loss_and_gradients_match_bert_for_masked_lm(tokenizer, build, kernels):
    """The bf16 path computes the softmax on bf16 logits (no fp32 copy): same loss and gradient direction as the
    plain fp32 BertForMaskedLM loss, within bf16's precision; for transformers' model and the plain-torch one that
    training uses (the same seed gives both the same weights); also on a GPU step's path, forced on the CPU
    (kernels="custom": for the plain-torch model its layers' backward too)."""
    torch.manual_seed(0)
    bert_for_masked_lm = scratch_model(tokenizer).eval()
    torch.manual_seed(0)
    own_layers = build is scratch_bert  # transformers' model has its own layers: the switch reaches its loss only
    model = (build(tokenizer, kernels=kernels) if own_layers else build(tokenizer)).eval()
    ids = torch.randint(1000, 30000, (4, 128))
    inputs, labels = mask_tokens(ids, MaskingSpec.from_tokenizer(tokenizer, 0.3))
    reference = bert_for_masked_lm(input_ids=inputs, labels=labels).loss
    reference.backward()
    expected = {n: p.grad.clone() for n, p in bert_for_masked_lm.named_parameters()}
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = MaskedLMObjective(model, max_predictions(inputs.numel(), 0.3), kernels)(inputs, labels)
    assert loss.dtype == torch.float32 and abs(loss.item() - reference.item()) < 0.01 * reference.item()
    loss.backward()
    largest = max(g.norm() for g in expected.values())
    for name, parameter in model.named_parameters():
        if expected[name].norm() < 1e-4 * largest:  # the key biases: zero in exact arithmetic, rounding noise here
            continue
        cosine = torch.nn.functional.cosine_similarity(parameter.grad.flatten(), expected[name].flatten(), dim=0)
        assert cosine > 0.98, (name, cosine.item())


def test_new_fields_survive_the_saved_config(tmp_path):
    config = TrainConfig(mask_probability=0.45, mask_probability_end=0.15, eval_epochs=3, adam_eps=1e-6)
    config.save(tmp_path / "train_config.json")
    loaded = TrainConfig.load(tmp_path / "train_config.json")
    assert (loaded.mask_probability_end, loaded.eval_epochs, loaded.adam_eps) == (0.15, 3, 1e-6)
    assert PRESETS["fast"]["eval_epochs"] == PRESETS["fast-long"]["eval_epochs"] == 4


def test_an_older_saved_config_loads_without_its_removed_fields_and_with_the_new_defaults(tmp_path):
    saved = {**dataclasses.asdict(TrainConfig(lr=3e-3)), "adam_betas": [0.8, 0.9], "a_removed_field": 1}
    del saved["kernels"]  # a field added after the run was saved
    (tmp_path / "train_config.json").write_text(json.dumps(saved))
    loaded = TrainConfig.load(tmp_path / "train_config.json")
    assert (loaded.lr, loaded.adam_betas, loaded.kernels) == (3e-3, (0.8, 0.9), "auto")


def test_every_field_is_a_flag_with_its_help_and_reads_into_that_field():
    parser = argument_parser()
    text = "".join(parser.format_help().split())  # without the white space that wrapping puts in
    flags = {action.dest: action for action in parser._actions}
    for field in dataclasses.fields(TrainConfig):
        action = flags[field.name]
        assert action.default is None  # a flag left out keeps the preset's (or the resumed run's) value
        assert "".join(field.metadata["help"].replace("%%", "%").split()) in text, field.name
    config, _ = config_from_args(["--kernels", "linear,output_loss", "--adam-betas", "0.8", "0.9", "--text-file", "a",
                                  "--text-file", "b", "--no-cuda-graphs", "--compile", "--max-eval-blocks", "3"])
    assert (config.kernels, config.adam_betas, config.text_files) == ("linear,output_loss", (0.8, 0.9), ["a", "b"])
    assert (config.cuda_graphs, config.compile, config.max_eval_blocks, config.batch_size) == (False, True, 3, 8)


@pytest.mark.parametrize("flags, message", [
    (["--mask-probability-end", "1.5"], "--mask-probability-end must be between 0 and 1"),
    (["--eval-epochs", "-1"], "--eval-epochs"),
    (["--adam-eps", "0"], "--adam-eps"),
    (["--kernels", "cuda"], "--kernels must be auto, torch, custom or a comma-separated list of linear, layer_norm"),
])
def test_bad_speedrun_flags_are_one_line_errors(capsys, tmp_path, flags, message):
    assert main(["--data-dir", str(WIKITEXT_DIR), "--output-dir", str(tmp_path / "out"), *flags]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_scheduled_run_evaluates_every_n_epochs_and_resumes_on_schedule(tmp_path):
    """3 epochs of 2 steps, evaluated at 0, 2 and the end; the logged masking rate falls from 0.45 towards 0.15;
    resumed to 4 epochs it continues from step 6 on the schedule of the new length."""
    run_dir = tmp_path / "run"
    flags = ["--preset", "fast", "--data-dir", str(WIKITEXT_DIR), "--output-dir", str(run_dir), *TINY,
             "--epochs", "3", "--eval-epochs", "2", "--mask-probability", "0.45", "--mask-probability-end", "0.15"]
    assert main(flags) == 0
    valid = [m["epoch"] for m in read_metrics(run_dir) if m["split"] == "valid"]
    assert valid == [0.0, 2.0, 3.0]
    rates = [m["mask_rate"] for m in read_metrics(run_dir) if m["split"] == "train"]
    assert rates[0] == pytest.approx(0.45) and rates[-1] == pytest.approx(0.15) and rates == sorted(rates, reverse=True)

    assert main(["--resume", str(run_dir), "--epochs", "4"]) == 0
    train = [m for m in read_metrics(run_dir) if m["split"] == "train"]
    after = [m for m in train if m["step"] > 6]
    assert [m["step"] for m in after] == [7, 8]
    assert after[0]["mask_rate"] == pytest.approx(masking_schedule(6, 8, 0.45, 0.15))
    state = json.loads((run_dir / "training_state" / "state.json").read_text())
    assert state["finished"] and state["step"] == 8


def test_auto_precision_is_bf16_on_any_bf16_gpu_batch_and_fp32_without(monkeypatch):
    """bf16 at the original recipe's batch of 8 too (it pays with mlm.fast.layers' backward); the explicit choices win."""
    from mlm.train.precision import autocast_dtype

    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert autocast_dtype("auto", cuda) is torch.bfloat16
    assert autocast_dtype("no", cuda) is None and autocast_dtype("fp16", cuda) is torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)  # an older GPU: fp32 (with TF32 matmuls)
    assert autocast_dtype("auto", cuda) is None


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_output_layer_loss_equals_torch_cross_entropy(autocast):
    """The fused output-layer loss (vocabulary padded inside, softmax kept, gradient formed in place, 1/n applied
    beside the products) against F.linear + F.cross_entropy over the real vocabulary: loss and the gradients of
    input, weight and bias, with ignored rows; a batch with nothing to predict has loss 0 and zero gradients."""
    from mlm.fast.output_loss import OutputLayerLoss

    torch.manual_seed(0)
    x = torch.randn(40, 32, requires_grad=True)
    weight = (torch.randn(61, 32) / 4).requires_grad_()
    bias = torch.randn(61).requires_grad_()
    targets = torch.randint(0, 61, (40,))
    targets[::3] = IGNORE_INDEX
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits = torch.nn.functional.linear(x, weight, bias)
    expected = torch.nn.functional.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX)
    expected_grads = torch.autograd.grad(expected, (x, weight, bias))
    dtype = torch.bfloat16 if autocast else torch.float32
    loss = OutputLayerLoss.apply(x, weight, bias, targets, dtype)
    grads = torch.autograd.grad(loss, (x, weight, bias))
    assert loss.dtype == torch.float32
    assert abs(loss.item() - expected.item()) < (5e-3 if autocast else 1e-6)
    for got, want in zip(grads, expected_grads):
        assert got.dtype == want.dtype == torch.float32 and got.shape == want.shape
        if autocast:
            assert torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0) > 0.999
        else:
            assert torch.allclose(got, want, atol=1e-7, rtol=1e-5)

    nothing = torch.full_like(targets, IGNORE_INDEX)
    loss = OutputLayerLoss.apply(x, weight, bias, nothing, dtype)
    assert loss.item() == 0 and all(g.abs().max() == 0 for g in torch.autograd.grad(loss, (x, weight, bias)))
