"""Integrations with other libraries; each submodule imports its library on first use.

mhfgen.integrations.transformers   the paper authors' HF model format ("mhffnmoe"),
                                   patching their checkpoints onto mhfgen's kernels, and
                                   Llama with a FlashMHF FFN (pip install .[transformers])
"""
