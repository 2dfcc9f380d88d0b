"""The plain-torch BERT (mlm.model.bert) against transformers' BertForMaskedLM: same start, same outputs, same files."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

from conftest import WIKITEXT_DIR
from mlm.model import bert
from mlm.data.corpus import read_wikitext
from mlm.data.masking import MaskingSpec, max_predictions
from mlm.hub import minilm_path
from mlm.model.build import parameter_count, scratch_bert, scratch_config, scratch_model
from mlm.train.objective import MaskedLMObjective
from mlm.runs.snapshots import unique_tensors
from mlm.data.tokenizer import TokenizerFiles
from test_model import masked_batch, tokenizer  # noqa: F401 - the same fixtures

BERT_FOLDER = WIKITEXT_DIR.parent / "bert-base-uncased"


def test_same_seed_gives_transformers_random_start_bit_for_bit(tokenizer):
    torch.manual_seed(7)
    reference = scratch_model(tokenizer)
    after_reference = torch.rand(3)
    torch.manual_seed(7)
    model = scratch_bert(tokenizer)
    assert torch.equal(torch.rand(3), after_reference)  # the same random numbers drawn, no more, no fewer
    expected, own = reference.state_dict(), model.state_dict()
    assert list(own) == list(expected)
    assert all(torch.equal(own[name], expected[name]) for name in expected)
    assert list(unique_tensors(model)) == list(unique_tensors(reference))  # snapshots store the same tensors
    assert parameter_count(model) == 10_411_834
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    assert model.cls.predictions.decoder.bias is model.cls.predictions.bias


def trained_looking(model):
    """Perturb every weight (a fresh model's zero biases and unit LayerNorms would hide a swapped parameter)."""
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return model.eval()


def assert_same_outputs(model, reference, batch):
    inputs, labels = batch
    output, expected = model(inputs, labels=labels), reference(input_ids=inputs, labels=labels)
    assert torch.allclose(output.logits, expected.logits, atol=1e-5, rtol=1e-5)
    assert torch.allclose(output.loss, expected.loss, atol=1e-5, rtol=1e-5)


def test_saved_weights_load_into_transformers_with_the_same_logits_and_loss(tokenizer, tmp_path, masked_batch):
    torch.manual_seed(0)
    model = trained_looking(scratch_bert(tokenizer))
    model.save_pretrained(tmp_path)
    reference = BertForMaskedLM.from_pretrained(tmp_path, use_safetensors=True).eval()
    assert_same_outputs(model, reference, masked_batch)
    strict = BertForMaskedLM(BertConfig(**scratch_config(tokenizer)))
    strict.load_state_dict(model.state_dict(), strict=True)  # the same names, also in memory

    written = json.loads((tmp_path / "config.json").read_text())
    expected = BertConfig(**scratch_config(tokenizer)).to_dict()
    for key in ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "intermediate_size", "max_position_embeddings", "hidden_dropout_prob", "attention_probs_dropout_prob",
                "type_vocab_size", "layer_norm_eps", "initializer_range", "pad_token_id", "hidden_act",
                "tie_word_embeddings"):
        assert BertConfig.from_pretrained(tmp_path).to_dict()[key] == expected[key] == written[key], key


def test_transformers_weights_load_into_the_plain_model(tokenizer, tmp_path, masked_batch):
    torch.manual_seed(0)
    reference = trained_looking(scratch_model(tokenizer))
    reference.save_pretrained(tmp_path)
    assert_same_outputs(bert.BertForMaskedLM.from_pretrained(tmp_path).eval(), reference, masked_batch)
    assert bert.BertForMaskedLM.from_pretrained(tmp_path, dropout=0.0).config.hidden_dropout_prob == 0.0


def test_a_foreign_checkpoint_is_refused(tmp_path, tokenizer):
    scratch_bert(tokenizer).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 4}))
    with pytest.raises(ValueError, match="encoder.layer.3"):
        bert.BertForMaskedLM.from_pretrained(tmp_path)


def twins(tokenizer, dropout: float = 0.1, kernels: str = "auto"):
    """The plain model (trained-looking, in eval mode) and a transformers BertForMaskedLM holding its weights."""
    torch.manual_seed(0)
    model = trained_looking(scratch_bert(tokenizer, dropout, kernels=kernels))
    reference = BertForMaskedLM(BertConfig(**scratch_config(tokenizer, dropout)))
    reference.load_state_dict(model.state_dict())
    return model, reference.eval()


def test_fast_loss_of_the_plain_model_equals_transformers_loss(tokenizer, masked_batch):
    model, reference = twins(tokenizer)
    inputs, labels = masked_batch
    objective = MaskedLMObjective(model, max_predictions(inputs.numel(), 0.15))
    assert torch.allclose(objective(inputs, labels), reference(input_ids=inputs, labels=labels).loss, rtol=1e-5)


@pytest.mark.parametrize("kernels", ["auto", "custom", "linear,output_loss"], ids=["auto", "many-rows", "few-rows"])
def test_fast_loss_gradients_of_the_plain_model_equal_transformers(tokenizer, masked_batch, kernels):
    """Also with the GPU backward of the layers and of the output layer's loss (mlm/fast), which a CPU run does not
    take ("auto" on the CPU is torch's): switched on here, every piece as for `fast`'s many rows on a GPU, and all but
    LayerNorm's as for the original recipe's few."""
    model, reference = twins(tokenizer, kernels=kernels)
    inputs, labels = masked_batch
    reference(input_ids=inputs, labels=labels).loss.backward()
    loss = MaskedLMObjective(model, max_predictions(inputs.numel(), 0.15), kernels)(inputs, labels)
    assert loss.grad_fn.name().startswith("OutputLayerLoss") == (kernels != "auto")  # the switch reached the loss
    loss.backward()
    expected = dict(reference.named_parameters())
    for name, parameter in model.named_parameters():
        assert torch.allclose(parameter.grad, expected[name].grad, atol=1e-6, rtol=1e-4), name


def test_dropout_is_where_transformers_has_it(tokenizer, masked_batch):
    """In training mode, from the same random state, both draw the same dropout masks in the same order (embeddings,
    attention probabilities, after each sublayer): the same logits and loss, and the same random state after."""
    model, reference = twins(tokenizer, dropout=0.3)
    model.train(), reference.train()
    inputs, labels = masked_batch
    torch.manual_seed(5)
    output, after = model(inputs, labels=labels), torch.rand(2)
    torch.manual_seed(5)
    expected, reference_after = reference(input_ids=inputs, labels=labels), torch.rand(2)
    assert torch.allclose(output.logits, expected.logits, atol=1e-5, rtol=1e-5) and torch.equal(after, reference_after)
    assert torch.allclose(output.loss, expected.loss, atol=1e-5)
    assert not torch.allclose(output.logits, model.eval()(inputs).logits, atol=1e-2)  # dropout did act


@pytest.mark.parametrize("folder", [BERT_FOLDER, None], ids=["bert-base-uncased", "minilm"])
def test_tokenizer_files_encode_as_transformers(folder):
    folder = folder or minilm_path()
    plain, reference = TokenizerFiles(folder), AutoTokenizer.from_pretrained(folder)
    lines = read_wikitext(WIKITEXT_DIR / "wiki.valid.tokens")[:3000]
    assert plain(lines)["input_ids"] == reference(lines)["input_ids"]
    assert plain.all_special_ids == sorted(reference.all_special_ids)
    assert MaskingSpec.from_tokenizer(plain) == MaskingSpec.from_tokenizer(reference)
    assert (plain.pad_token_id, plain.unk_token_id) == (reference.pad_token_id, reference.unk_token_id)
    assert plain.backend_tokenizer.to_str() == reference.backend_tokenizer.to_str()  # the same cached blocks


def test_saved_tokenizer_is_what_transformers_saves(tmp_path):
    """MiniLM's tokenizer.json pads and truncates to 128; transformers saves it without once it has encoded text
    (as the trainer's tokenizer had, and as the shipped checkpoint holds it), and loads it back."""
    plain, reference = TokenizerFiles(minilm_path()), AutoTokenizer.from_pretrained(minilm_path())
    text = ["a [MASK] sentence that the tokenizer splits into word ##pieces, " * 30]
    reference(text)
    plain.save_pretrained(tmp_path / "plain")
    reference.save_pretrained(tmp_path / "reference")
    assert json.loads((tmp_path / "plain" / "tokenizer.json").read_text()) == \
        json.loads((tmp_path / "reference" / "tokenizer.json").read_text())
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "plain")
    assert reloaded(text)["input_ids"] == reference(text)["input_ids"] and len(reference(text)["input_ids"][0]) > 128
    assert reloaded.all_special_ids == reference.all_special_ids and len(reloaded) == len(reference)
