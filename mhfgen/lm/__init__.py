"""End-to-end check of FlashMHF: a small byte-level causal language model.

data (the standard library's .py files as bytes) -> model (Llama-style decoder whose FFN is
FlashMHF or SwiGLU, parameters matched) -> train (AdamW, warm-up + cosine, bf16 autocast)
-> report (CSV, PNG, markdown) -> experiment (several runs, one directory).
See docs/TRAINING.md and examples/train_lm.py.
"""

from .data import BatchSampler, ByteCorpus, load_corpus
from .model import CausalLM, ModelConfig, count_parameters, matched_swiglu_intermediate
from .train import RunResult, TrainConfig, train

__all__ = [
    "BatchSampler",
    "ByteCorpus",
    "load_corpus",
    "CausalLM",
    "ModelConfig",
    "count_parameters",
    "matched_swiglu_intermediate",
    "RunResult",
    "TrainConfig",
    "train",
]
