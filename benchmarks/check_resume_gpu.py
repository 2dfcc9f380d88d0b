"""GPU check that a resumed run continues its random numbers exactly, with the step captured as a CUDA graph.

On the CPU tests/integration/test_durable.py compares whole runs bit for bit. On a GPU the question is whether restoring the
saved CPU and CUDA generator states (mlm.train.state.rng_state) after a new process captured its graph (whose
warm-up steps draw random numbers) makes the graph's replays draw what the uninterrupted run drew. This trains a
tiny BERT 3 steps, saves weights, optimizer and RNG state, trains 6 more; then rebuilds everything as a resume
would, with and without restoring the RNG state, and compares losses and weights exactly.

    PYTHONPATH=. python benchmarks/check_resume_gpu.py
    # one H200, torch 2.11: restored: same losses True, same weights True; not restored: False, False
"""

import torch
from accelerate import Accelerator
from transformers import BertConfig, BertForMaskedLM

from mlm.train.state import rng_state
from mlm.data.masking import MaskingSpec
from mlm.train.objective import MaskedLMObjective
from mlm.train.step import GraphedTrainStep, build_optimizer

accelerator = Accelerator()
device = accelerator.device
config = BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
spec = MaskingSpec(mask_id=4, vocab_size=1000, special_ids=(0, 1, 2, 3, 4), probability=0.15)
torch.manual_seed(0)
blocks = torch.randint(5, 1000, (64, 32), device=device)


def batch(index: int) -> torch.Tensor:
    return blocks[(index % 8) * 8 : (index % 8 + 1) * 8]


def graphed_step(model, optimizer_state=None):
    optimizer = build_optimizer(model, 1e-3, 0.0, (0.9, 0.999), device)
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    for parameter, state in zip(parameters, optimizer_state or []):
        optimizer.state[parameter] = {name: value.clone() for name, value in state.items()}
    return GraphedTrainStep(MaskedLMObjective(model, 200), optimizer, spec, 1.0, None, accelerator, 1,
                            example_batch=batch(0)), optimizer


model = BertForMaskedLM(config).to(device).train()
step, optimizer = graphed_step(model)
for index in range(3):
    step(batch(index))
weights = {name: value.clone() for name, value in model.state_dict().items()}
moments = [{name: value.clone() for name, value in state.items()} for state in optimizer.state.values()]
generators = rng_state(device)
losses = [step(batch(index)).clone() for index in range(3, 9)]
final = {name: value.clone() for name, value in model.state_dict().items()}

for restore in (True, False):
    torch.manual_seed(123)  # a new process: other initial random numbers, overwritten by the checkpoint
    resumed = BertForMaskedLM(config).to(device).train()
    resumed.load_state_dict(weights)
    resumed_step, _ = graphed_step(resumed, moments)
    if restore:
        torch.set_rng_state(generators["cpu"])
        torch.cuda.set_rng_state(generators["cuda"], device)
    resumed_losses = [resumed_step(batch(index)).clone() for index in range(3, 9)]
    same_losses = all(torch.equal(a, b) for a, b in zip(losses, resumed_losses))
    same_weights = all(torch.equal(final[name], value) for name, value in resumed.state_dict().items())
    print(f"{'restored' if restore else 'not restored'}: same losses {same_losses}, same weights {same_weights}")
