"""The ``baseline`` variant: what a plain transformers user writes. The same random weights as the toolkit
variant, sdpa attention, peft LoRA, ``gradient_checkpointing_enable``, the model's own loss over full logits
(``model(input_ids, position_ids, labels).loss``), torch AdamW, gradient clipping at 1.0; weights in the
device's dtype (bf16 on CUDA), no autocast. Its rows are drawn before the timed steps."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.harness import LORA_RANK, LORA_TARGETS, Config, Trial
from benchmarks.toolkit_variant import LR, bench_recipe


def run_baseline(config: Config, built: Callable[[], None]) -> Trial:
    import torch
    from peft import LoraConfig, get_peft_model

    from toolkit.data.batches import as_batch, stage_batches
    from toolkit.data.tokenizer import load_tokenizer
    from toolkit.model.loading import build_random
    from toolkit.recipe.schema import Recipe

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    recipe = Recipe.model_validate(bench_recipe(config, Path("unused")))
    tokenizer = load_tokenizer(recipe.model, recipe.seed)
    batches = stage_batches(recipe.train.data, tokenizer, config.seq_len, 1, recipe.seed)
    rows = [next(batches) for _ in range(config.warmup + config.steps)]  # the toolkit variant's rows
    assert recipe.model.init_config is not None
    model: Any = build_random(recipe.model.init_config, tokenizer, "sdpa", dtype, recipe.seed, device)
    if config.method == "lora":
        model = get_peft_model(model, LoraConfig(r=LORA_RANK, lora_alpha=2 * LORA_RANK,
                                                 target_modules=list(LORA_TARGETS), task_type="CAUSAL_LM"))
    if config.checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LR, betas=(0.9, 0.95), weight_decay=0.0,
                                  fused=device.type == "cuda" or None)
    built()
    losses, step_s = [], []
    for i, row in enumerate(rows):
        batch = as_batch(row, device)
        start = time.perf_counter()
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if i >= config.warmup:
            step_s.append(time.perf_counter() - start)
    total = sum(p.numel() for p in model.parameters())
    return Trial(losses=losses, step_s=step_s, trainable_fraction=sum(p.numel() for p in params) / total,
                 attention="sdpa")
