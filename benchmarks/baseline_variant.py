"""The ``baseline`` variant: what a plain transformers user writes, in its fastest plain setting. The same random
weights as the toolkit variant and the same documents, unpacked: each document its own batch of one, so sdpa runs
causal without a mask (flash or cuDNN on a GPU); peft LoRA, ``gradient_checkpointing_enable``, the model's own loss
over full logits (``model(input_ids, labels).loss``, weighted by its target tokens so that a step's loss is the
token-weighted one of the toolkit), torch AdamW, gradient clipping at 1.0; weights in the device's dtype (bf16 on
CUDA), no autocast."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.harness import Config, Trial
from benchmarks.rows import StepRow
from benchmarks.toolkit_variant import bench_recipe
from toolkit.plan.command import LORA


def run_baseline(config: Config, built: Callable[[], None], rows: list[StepRow]) -> Trial:
    import torch
    from peft import LoraConfig, get_peft_model

    from toolkit.data.tokenizer import load_tokenizer
    from toolkit.model.loading import build_random
    from toolkit.model.lora import count_parameters, peft_settings

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    recipe = bench_recipe(config, Path("unused"))
    tokenizer = load_tokenizer(recipe.model, recipe.seed)
    documents = [_documents(step, device) for step in rows]
    assert recipe.model.init_config is not None
    model: Any = build_random(recipe.model.init_config, tokenizer, "sdpa", dtype, recipe.seed, device)
    if config.method == "lora":
        model = get_peft_model(model, LoraConfig(**peft_settings(LORA), task_type="CAUSAL_LM"))
    if config.checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    train = recipe.train  # the toolkit run's optimizer settings, so the two differ only in how they compute
    optimizer = torch.optim.AdamW(params, lr=train.stages[0].lr, betas=train.betas, weight_decay=train.weight_decay,
                                  fused=device.type == "cuda" or None)
    built()
    losses, step_s = [], []
    for i, step in enumerate(documents):
        start = time.perf_counter()
        targets = sum(count for _, _, count in step)
        total = torch.zeros((), device=device)
        for ids, labels, count in step:
            loss = model(input_ids=ids, labels=labels).loss * (count / targets)
            loss.backward()
            total += loss.detach()
        if train.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, train.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(total.item())
        if i >= config.warmup:
            step_s.append(time.perf_counter() - start)
    trainable, count = count_parameters(model)
    return Trial(losses=losses, step_s=step_s, trainable_fraction=trainable / count, attention="sdpa")


def _documents(step: StepRow, device: Any) -> list[tuple[Any, Any, int]]:
    """The documents of a step's row: ``(input_ids, labels)`` of shape ``[1, length]`` on ``device`` and the
    number of tokens the shifted loss takes (known before the step, so that counting it costs no sync)."""
    import torch

    from toolkit.data.packing import IGNORE_INDEX

    documents = []
    for start, length in step.documents:
        ids, labels = (step.row[key][start:start + length] for key in ("input_ids", "labels"))
        targets = sum(label != IGNORE_INDEX for label in labels[1:])
        documents.append((torch.tensor([ids], device=device), torch.tensor([labels], device=device), targets))
    return documents
