"""Token-level distillation of language models (family ``llm``): one module per method; the divergences they
share are in :mod:`distill.methods.llm.divergences`."""
