"""Fine-tuning jobs: a pretrained Hugging Face model (`architecture.init_from`) trained further on
token stores, every weight or (`finetune.lora.rank` > 0) LoRA adapters only.

The same trainer as pretraining: continued pretraining reads variable-length stores, supervised
fine-tuning reads blockwise chat stores, whose loss mask counts only the assistant's tokens.
Defaults fit fine-tuning: a short warmup, cosine decay, a small learning rate, no weight decay.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from theseus.config.schema import MISSING
from theseus.model.lora import LoRAConfig
from theseus.model.models import GPT2, LLAMA, Transformer
from theseus.registry import job
from theseus.training.base import BaseTrainer, BaseTrainerConfig
from theseus.training.optimizers import OptimizerConfig
from theseus.training.pretrained import InitConfig

FINETUNE_TRAINING = dataclasses.replace(BaseTrainerConfig(), steps=1000, batch_size=32)
FINETUNE_OPTIMIZATION = dataclasses.replace(
    OptimizerConfig(), lr=5e-5, warmup_steps=20, weight_decay=0.0
)
REQUIRED_INIT = InitConfig(init_from=MISSING)


class FinetuneTrainer(BaseTrainer[BaseTrainerConfig, Transformer]):
    """A `BaseTrainer` whose model comes from `architecture.init_from` (required), with
    fine-tuning defaults and the `finetune.lora.*` settings."""

    MODEL = Transformer
    CONFIG = BaseTrainerConfig

    @classmethod
    def components(cls) -> list[Any]:
        presets = {
            id(BaseTrainerConfig): FINETUNE_TRAINING,
            id(OptimizerConfig): FINETUNE_OPTIMIZATION,
            id(InitConfig): REQUIRED_INIT,
        }
        return [presets.get(id(c), c) for c in super().components()] + [LoRAConfig]

    @classmethod
    def schedule(cls) -> str:
        return "cosine"


@job("llama/train/finetune")
class FinetuneLlama(FinetuneTrainer):
    """Fine-tune a Llama model (or Mistral-style one) from architecture.init_from (a Hugging Face folder or hub id), fully or with LoRA (finetune.lora.rank > 0).

    Continued pretraining on variable-length stores, or supervised fine-tuning on blockwise chat
    stores (loss on the assistant's tokens only). Defaults: 1000 steps x 32 sequences, lr 5e-5
    with 20 warmup steps and cosine decay, no weight decay; LoRA usually wants ~10x the rate.
    """

    ARCHITECTURE = LLAMA


@job("qwen/train/finetune")
class FinetuneQwen(FinetuneTrainer):
    """Fine-tune a Qwen2/Qwen3 model from architecture.init_from (a Hugging Face folder or hub id), fully or with LoRA (finetune.lora.rank > 0).

    The architecture (q/k norms, q/k/v biases, tied embeddings, ...) is the folder's. Defaults as
    llama/train/finetune.
    """

    ARCHITECTURE = LLAMA


@job("gpt_neox/train/finetune")
class FinetuneGPTNeoX(FinetuneTrainer):
    """Fine-tune a GPT-NeoX model (Pythia) from architecture.init_from (a Hugging Face folder or hub id), fully or with LoRA (finetune.lora.rank > 0).

    The architecture (parallel residual, partial rotary, ...) is the folder's. Defaults as
    llama/train/finetune.
    """

    ARCHITECTURE = GPT2


@job("gpt/train/finetune")
class FinetuneGPT(FinetuneTrainer):
    """Fine-tune a GPT-2 model from architecture.init_from (a Hugging Face folder or hub id), fully or with LoRA (finetune.lora.rank > 0; targets q, k, v, o, fc, down).

    Defaults as llama/train/finetune.
    """

    ARCHITECTURE = GPT2
