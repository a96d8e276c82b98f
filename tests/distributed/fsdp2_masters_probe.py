"""FSDP2 as the toolkit hands it to accelerate, on one CPU process over gloo, for
``tests/test_bf16_master_weights.py``: the launch environment of ``configs/fsdp2.yaml`` (one process), the runner's
mixed precision and the toolkit's FSDP2 plugin for a bf16 recipe, and accelerate's own ``fsdp2_prepare_model`` on a
bf16 micro Llama with tied embeddings inside the training objective, as the runner prepares it; then one forward,
backward and AdamW step at lr 1e-5. Prints one JSON line: whether the embeddings are still one tensor after
preparing, the dtypes of the sharded parameters, of the loss's logits and of the gradients, and how many parameter
entries the step moved.

``python -m tests.distributed.fsdp2_masters_probe LAUNCH_ENV.json STORE_FILE``. accelerate sets FSDP up for GPU
processes only (``toolkit.training.session`` refuses an FSDP2 launch on CPU), so the preparation is called directly,
with the accelerator's attributes it reads.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist
from accelerate import PartialState
from accelerate.utils.fsdp_utils import fsdp2_prepare_model
from transformers import LlamaConfig, LlamaForCausalLM

from toolkit.parallel.engines import fsdp_plugin, mixed_precision
from toolkit.training.objective import CausalLMObjective


def main(launch_env: dict[str, str], store: Path) -> None:
    os.environ.update(launch_env, WORLD_SIZE="1", RANK="0", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    state = PartialState(cpu=True)
    dtype = torch.bfloat16
    accelerator = SimpleNamespace(state=SimpleNamespace(fsdp_plugin=fsdp_plugin(dtype)), device=state.device,
                                  mixed_precision=mixed_precision(dtype), is_main_process=True,
                                  parallelism_config=None)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    llama = LlamaForCausalLM(config).to(dtype)  # type: ignore[arg-type]  # transformers' wrapped .to
    logits: list[torch.dtype] = []
    llama.lm_head.register_forward_hook(lambda _module, _args, output: logits.append(output.dtype))
    objective = fsdp2_prepare_model(accelerator, CausalLMObjective(llama, loss_chunk_size=None))
    before = [p.detach().full_tensor().clone() for p in objective.parameters()]
    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(1))
    total, _count = objective(input_ids=ids, position_ids=torch.arange(16).repeat(2, 1), labels=ids)
    total.backward()
    optimizer = torch.optim.AdamW(objective.parameters(), lr=1e-5)
    optimizer.step()
    moved = sum(int((p.detach().full_tensor() != b).sum()) for p, b in zip(objective.parameters(), before, strict=True))
    print(json.dumps({"tied": llama.lm_head.weight is llama.model.embed_tokens.weight,
                      "parameters": sorted({str(p.dtype) for p in objective.parameters()}),
                      "sharded": all(type(p).__name__ == "DTensor" for p in objective.parameters()),
                      "logits": sorted({str(dtype) for dtype in logits}),
                      "gradients": sorted({str(p.grad.dtype) for p in objective.parameters() if p.grad is not None}),
                      "moved": moved, "entries": sum(p.numel() for p in objective.parameters())}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]))
