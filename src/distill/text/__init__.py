"""Text embedding and ranking distillation: data formats, sentence-transformers models, retrieval evaluation."""
