"""The method catalogue. Importing this package registers every built-in method in ``METHODS``.

One file per registered method, named after its canonical registry name, in a folder chosen by the family the
method is registered with (``distill methods`` prints each method's file):

* ``logits/``: family ``logits`` (kd, dkd, dist, lskd, dho, lelp, lsf_idm, makd, mealv2, mixkd, mixstd, pld,
  random_teachers, tgeo) and family ``supervised`` (ce, lm_ce: label losses on the student's logits);
* ``features/``: family ``features`` (fitnet, at, vid, ab, ft, fsp, nst, crd, reviewkd, nd, ofa,
  cnn_vit_coop, orr_invariance, afkd, paired_view_kd);
* ``relations/``: family ``relations`` (sp, cc, rkd, pkt, trg);
* ``llm/``: family ``llm`` (fkl, rkl, gjsd, tvd, skl, srkl, taid, on_policy);
* ``graph/``: families ``graph`` (ffg2m, glnn) and ``graph-unlearning`` (d2dgn; a hyphen is no module name);
* ``ranking/``: family ``ranking`` (margin_mse, score_mse, ranking_nll);
* ``embedding/``: family ``embedding`` (leaf);
* ``augmentation/``: family ``augmentation`` (mixup, cox_block_mask);
* ``dense/``: family ``dense`` (l1, dsclora: super-resolution; transkd: segmentation; acam_kd: CNN maps of
  classification and segmentation; reverse_distillation: anomaly maps; mae_reconstruction, dmae: masked-image
  pre-training).

:data:`FAMILY_FOLDERS` states the mapping; a test checks every method's file against it.

Maths shared by several methods lives in modules not named like a method: ``features/adapters.py`` (FitNet's
regressor, spatial matching), ``features/stages.py`` (initialisation-stage options), ``relations/rows.py``,
``logits/losses.py`` (cross-entropy, batch-mean KL, logit standardisation), ``augmentation/mixing.py`` (mixup
sampling), ``llm/divergences.py`` (token-level divergences), ``dense/affinity.py`` (FAKD spatial affinity),
``llm/chunked.py`` (those
losses from hidden states and heads, chunk by chunk), ``graph/base.py`` and ``ranking/scores.py``. The tap
declaration, tap-list checks and set-up teacher check of the feature and relation methods are in
:class:`distill.core.method.TapMethod` (:class:`~distill.core.method.FeaturePair`,
:class:`~distill.core.method.FeaturePairs`).

The old module paths (``distill.methods.feature_transfer``, ``lm_divergences``, ``logit_variants``, ``crd``, ...)
are thin re-exporting shims kept for one release.
"""

from distill.core.method import METHODS, Method
from distill.methods.augmentation import cox_block_mask, mixup  # noqa: F401  (the imports below register the methods)
from distill.methods.dense import (  # noqa: F401
    acam_kd,
    dmae,
    dsclora,
    l1,
    mae_reconstruction,
    reverse_distillation,
    transkd,
)
from distill.methods.embedding import leaf  # noqa: F401
from distill.methods.features import (  # noqa: F401
    ab,
    afkd,
    at,
    cnn_vit_coop,
    crd,
    fitnet,
    fsp,
    ft,
    leader,
    nd,
    nst,
    ofa,
    orr_invariance,
    paired_view_kd,
    reviewkd,
    vid,
)
from distill.methods.graph import d2dgn, ffg2m, glnn  # noqa: F401
from distill.methods.llm import fkl, gjsd, on_policy, rkl, skl, srkl, taid, tvd, uld  # noqa: F401
from distill.methods.logits import (  # noqa: F401
    ce,
    dho,
    dist,
    dkd,
    kd,
    lelp,
    lm_ce,
    lsf_idm,
    lskd,
    makd,
    mealv2,
    mixkd,
    mixstd,
    pld,
    random_teachers,
    tgeo,
)
from distill.methods.ranking import margin_mse, ranking_nll, score_mse  # noqa: F401
from distill.methods.relations import cc, pkt, rkd, sp, trg  # noqa: F401

#: the folder of each family's methods (families whose name is no valid module name, or that share a folder)
FAMILY_FOLDERS: dict[str, str] = {
    "logits": "logits",
    "supervised": "logits",
    "features": "features",
    "relations": "relations",
    "llm": "llm",
    "graph": "graph",
    "graph-unlearning": "graph",
    "ranking": "ranking",
    "embedding": "embedding",
    "augmentation": "augmentation",
    "dense": "dense",
}

__all__ = ["FAMILY_FOLDERS", "METHODS", "Method"]
