"""Pretraining jobs: GPT-2 and Llama on token stores, with the shared `BaseTrainer` loop."""

from __future__ import annotations

from theseus.model.models import GPT2, LLAMA, Transformer
from theseus.registry import job
from theseus.training.base import BaseTrainer, BaseTrainerConfig


@job("gpt/train/pretrain")
class PretrainGPT(BaseTrainer[BaseTrainerConfig, Transformer]):
    """Pretrain a GPT-2 style model (default GPT-2 small) with AdamW and a cosine schedule."""

    MODEL = Transformer
    ARCHITECTURE = GPT2
    CONFIG = BaseTrainerConfig

    @classmethod
    def schedule(cls) -> str:
        return "cosine"


@job("llama/train/pretrain")
class PretrainLlama(BaseTrainer[BaseTrainerConfig, Transformer]):
    """Pretrain a Llama style model (RoPE, RMSNorm, SwiGLU, GQA) with a warmup-stable-decay schedule."""

    MODEL = Transformer
    ARCHITECTURE = LLAMA
    CONFIG = BaseTrainerConfig

    @classmethod
    def schedule(cls) -> str:
        return "wsd"
