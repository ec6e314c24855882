"""Streams and shifts: data as a sequence of tasks or domains, the continual runner and the setting's metrics.

* :mod:`.stream`: class-incremental splits, domain splits by fixed transforms (:mod:`.transforms`), novel classes;
* :mod:`.data`: the datasets a stream is cut from; :mod:`.metrics`: seen-class accuracy, forgetting, per-domain
  accuracy, clustering accuracy (Hungarian);
* :mod:`.learners`: the learner protocol and registry (methods in :mod:`distill.methods.continual`);
* :mod:`.runner`: task-after-task training with exact resume; :mod:`.section`: the validated config;
  ``python -m distill.streams CONFIG`` runs one.
"""
