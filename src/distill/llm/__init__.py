"""Language-model distillation support: GGUF teachers, small Llama students, top-k stores, generation."""
