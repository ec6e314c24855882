"""``data.noise_images``: Gaussian-noise images with random labels appended to an image training set (TGeo-KD's
outlier probe), reproducible, last in the set, and refused where they cannot be honoured."""

from __future__ import annotations

import pytest
import torch

from distill.config import ConfigError, parse_config
from distill.data.images import ImageArrays
from distill.experiment import build_experiment
from distill.tasks.image.data import RoutedImages, add_noise_images


def config(**data):
    return parse_config({
        "data": {"train": "builtin:cifar10_demo.tar.gz", "train_per_class": 2, "augment": None, **data},
        "student": {"arch": "resnet20", "options": {"widths": [4, 4, 4]}},
        "teacher": {"arch": "resnet20", "weights": "random", "options": {"widths": [4, 4, 4]}},
        "methods": [{"name": "kd"}],
        "train": {"epochs": 1, "batch_size": 4, "max_steps": 1, "progress": False}})


def test_noise_images_are_appended_last_reproducibly_with_labels_in_range():
    clean = build_experiment(config()).train_data
    a = build_experiment(config(noise_images=7)).train_data
    b = build_experiment(config(noise_images=7)).train_data
    n = len(clean)
    assert len(a) == n + 7 and torch.equal(a.images[:n], clean.images) and torch.equal(a.labels[:n], clean.labels)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    noise = a.images[n:].float()
    assert noise.shape[1:] == clean.images.shape[1:] and 100 < noise.mean() < 155 and 40 < noise.std() < 80
    assert ((a.labels[n:] >= 0) & (a.labels[n:] < len(a.classes))).all()
    other = build_experiment(config(noise_images=7, subset_seed=1)).train_data
    assert not torch.equal(other.images[-7:], a.images[n:])  # the seed follows subset_seed


def test_noise_images_refuse_routed_sets_and_bad_counts():
    routed = RoutedImages(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.tensor([0, 1]), ["a", "b"], "",
                          torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="route"):
        add_noise_images(routed, 3, 0)
    assert len(add_noise_images(ImageArrays(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.tensor([0, 1]),
                                            ["a", "b"]), 3, 0)) == 5
    with pytest.raises(ConfigError, match="noise_images"):
        config(noise_images=0)
