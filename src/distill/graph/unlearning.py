"""Deprecated import path, kept for one release: use distill.pipelines.graph_unlearning."""

from distill.pipelines.graph_unlearning import (  # noqa: F401
    LinkGCN,
    LinkSplit,
    MembershipAttacker,
    UnlearningConfig,
    auroc,
    choose_deleted,
    d2dgn_unlearn,
    df_auroc,
    evaluate_unlearning,
    gradient_ascent,
    link_split,
    run_unlearning,
    train_link_model,
    undirected,
)
