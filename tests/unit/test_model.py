"""The model: its size, the fast masked-only loss against Hugging Face's own, and checkpoint round trips."""

from __future__ import annotations

import pytest
import torch

from mlm.data.masking import MaskingSpec, mask_tokens, max_predictions
from mlm.data.tokenizer import load_tokenizer
from mlm.errors import UserError
from mlm.model.build import parameter_count, scratch_bert, scratch_model
from mlm.model.files import load_model, save_model
from mlm.model.lora import add_lora
from mlm.train.objective import MaskedLMObjective


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


@pytest.fixture
def masked_batch(tokenizer):
    torch.manual_seed(1)
    ids = torch.randint(1000, 30000, (4, 128))
    ids[:, 0], ids[:, -1] = tokenizer.cls_token_id, tokenizer.sep_token_id
    return mask_tokens(ids, MaskingSpec.from_tokenizer(tokenizer))


def test_parameter_count_is_the_missions(tokenizer):
    model = scratch_model(tokenizer)
    assert parameter_count(model) == 10_411_834
    config = model.config
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads, config.intermediate_size,
            config.max_position_embeddings) == (3, 256, 4, 1024, 512)
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight


def test_the_mimetic_init_starts_positions_as_sinusoids_and_keys_as_queries(tokenizer, tmp_path):
    import numpy as np
    from transformers import pipeline

    torch.manual_seed(3)
    plain = scratch_model(tokenizer)
    torch.manual_seed(3)
    mimetic = scratch_model(tokenizer, init="mimetic")
    # An independent table (numpy, the Transformer paper's formula), scaled to Hugging Face's std 0.02
    position, pair = np.arange(512)[:, None], np.arange(0, 256, 2)[None, :]
    angle = position / 10000 ** (pair / 256)
    table = np.zeros((512, 256))
    table[:, 0::2], table[:, 1::2] = np.sin(angle), np.cos(angle)
    table = table / table.std() * 0.02
    positions = mimetic.bert.embeddings.position_embeddings.weight.detach().numpy()
    assert np.allclose(positions, table, atol=1e-6)
    changed = {"bert.embeddings.position_embeddings.weight"}
    for number, layer in enumerate(mimetic.bert.encoder.layer):
        attention, reference = layer.attention.self, plain.bert.encoder.layer[number].attention.self
        assert torch.equal(attention.query.weight, 2 * reference.query.weight)
        assert torch.equal(attention.key.weight, attention.query.weight)
        changed |= {f"bert.encoder.layer.{number}.attention.self.{w}.weight" for w in ("query", "key")}
    plain_state = plain.state_dict()
    for name, value in mimetic.state_dict().items():  # everything else is Hugging Face's own init, same seed
        assert name in changed or torch.equal(value, plain_state[name]), name
    torch.manual_seed(3)  # what a training run builds: the plain-torch twin, the same start bit for bit
    trained = scratch_bert(tokenizer, init="mimetic").state_dict()
    assert all(torch.equal(trained[name], value) for name, value in mimetic.state_dict().items())
    save_model(mimetic.eval(), tokenizer, tmp_path)  # still a plain BertForMaskedLM checkpoint
    with torch.no_grad():
        ids = tokenizer("Paris is the [MASK] of France.", return_tensors="pt")["input_ids"]
        assert torch.equal(load_model(tmp_path)(input_ids=ids).logits, mimetic(input_ids=ids).logits)
    assert len(pipeline("fill-mask", model=str(tmp_path))("Paris is the [MASK] of France.")) == 5
    with pytest.raises(UserError, match="unknown init"):
        scratch_model(tokenizer, init="xavier")


# "auto" on the CPU is torch's path; "custom" the one a GPU step takes (the fused output-layer loss), on the CPU
GPU_PATHS = pytest.mark.parametrize("kernels", ["auto", "custom"], ids=["torch", "gpu-backward-forced"])


@GPU_PATHS
def test_fast_loss_equals_bert_for_masked_lm(tokenizer, masked_batch, kernels):
    """Also on the path a GPU step takes (mlm.fast.layers' backward, the fused output-layer loss), forced on the CPU."""
    torch.manual_seed(0)
    model = scratch_model(tokenizer).eval()  # no dropout: both forwards see the same network
    inputs, labels = masked_batch
    objective = MaskedLMObjective(model, max_predictions(inputs.numel(), 0.15), kernels)
    reference = model(input_ids=inputs, labels=labels).loss
    assert torch.allclose(objective(inputs, labels), reference, rtol=1e-5)

    with torch.autocast("cpu", dtype=torch.bfloat16):  # the CPU fallback's mixed precision
        fast_bf16 = objective(inputs, labels)
    assert abs(fast_bf16.item() - reference.item()) < 0.02 * reference.item()


@GPU_PATHS
def test_fast_loss_gradients_equal_bert_for_masked_lm(tokenizer, masked_batch, kernels):
    torch.manual_seed(0)
    model = scratch_model(tokenizer).eval()
    inputs, labels = masked_batch
    model(input_ids=inputs, labels=labels).loss.backward()
    reference = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    MaskedLMObjective(model, max_predictions(inputs.numel(), 0.15), kernels)(inputs, labels).backward()
    for name, parameter in model.named_parameters():
        assert torch.allclose(parameter.grad, reference[name], atol=1e-6, rtol=1e-4), name


def test_save_load_round_trip_gives_identical_logits(tokenizer, tmp_path, masked_batch):
    from transformers import AutoModelForMaskedLM, pipeline

    model = scratch_model(tokenizer).eval()
    save_model(model, tokenizer, tmp_path)
    inputs, _ = masked_batch
    with torch.no_grad():
        expected = model(input_ids=inputs).logits
        assert torch.equal(load_model(tmp_path)(input_ids=inputs).logits, expected)
        assert torch.equal(AutoModelForMaskedLM.from_pretrained(tmp_path)(input_ids=inputs).logits, expected)
    assert len(pipeline("fill-mask", model=str(tmp_path))("Paris is the [MASK] of France.")) == 5


def test_lora_checkpoint_is_small_and_reloads_merged(tokenizer, tmp_path, masked_batch):
    """A LoRA folder holds adapter + head only; loading merges it into the named base with the same outputs."""
    base = tmp_path / "base"
    torch.manual_seed(0)
    scratch_model(tokenizer).save_pretrained(base)
    from mlm.model.build import pretrained_model

    model = add_lora(pretrained_model(str(base)), rank=4)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.requires_grad:  # pretend training moved adapters and head away from their start
                parameter.add_(torch.randn_like(parameter) * 0.02)
    model.eval()
    save_model(model, tokenizer, tmp_path / "lora", base_model=str(base))
    inputs, _ = masked_batch
    with torch.no_grad():
        expected = model(input_ids=inputs).logits
        reloaded = load_model(tmp_path / "lora")(input_ids=inputs).logits
    assert torch.allclose(reloaded, expected, atol=1e-4)
    weights = sum(f.stat().st_size for f in (tmp_path / "lora").glob("*.safetensors"))
    assert weights < 0.2 * (base / "model.safetensors").stat().st_size


def test_broken_checkpoint_is_a_user_error(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(UserError, match="cannot load"):
        load_model(tmp_path)
