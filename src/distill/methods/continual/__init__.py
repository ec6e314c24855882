"""Continual-learning and novel-class-discovery methods: learners for :mod:`distill.streams` (one file per method:
``onpro.py``, ``dynamic_ykd.py``, ``crkd.py``). Importing :mod:`distill.streams.registry` registers them."""
