"""Methods on the logits of student and teacher (families ``logits`` and ``supervised``): one module per method.

Also the old ``distill.methods.logits`` module: its names (``KD``, ``CrossEntropy``, ``cross_entropy``,
``kl_batchmean``) are re-exported here. Every method reads only the logits; the teacher's are constants and
every loss is computed in float32 (the logits may come out of bf16/fp16 autocast).
"""

from distill.methods.logits.ce import CrossEntropy
from distill.methods.logits.kd import KD
from distill.methods.logits.losses import cross_entropy, kl_batchmean

__all__ = ["KD", "CrossEntropy", "cross_entropy", "kl_batchmean"]
