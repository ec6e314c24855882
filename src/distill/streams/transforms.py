"""Fixed, seeded domain transforms: each domain of a domain-shift stream is one deterministic function of the input.

Image transforms take a float tensor (B, C, H, W) in the normalised scale the model sees and return one of the
same shape; their parameters are fixed once when the transform is built (a seed picks the random ones, e.g. the
colour-jitter factors), so a domain is the same on every call, in training and at test, before and after a resume.
Text transforms map a string to a string the same way (a fixed surface rewrite), for text streams.

Registered by name in :data:`DOMAIN_TRANSFORMS`; a stream config names them (``domains: [identity, invert, ...]``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

ImageTransform = Callable[[torch.Tensor], torch.Tensor]


def identity(x: torch.Tensor) -> torch.Tensor:
    """The source domain: the input unchanged."""
    return x


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """Every channel replaced by the channel mean (a no-op on one-channel images)."""
    return x.mean(dim=1, keepdim=True).expand_as(x).contiguous()


def invert(x: torch.Tensor) -> torch.Tensor:
    """Photographic negative in the normalised scale: x -> -x (for standardised inputs this is 1 - pixel up to the
    normalisation's affine map)."""
    return -x


def blur(x: torch.Tensor, size: int = 3) -> torch.Tensor:
    """A ``size`` x ``size`` box blur per channel, with replicated borders."""
    c = x.shape[1]
    kernel = torch.full((c, 1, size, size), 1.0 / (size * size), dtype=x.dtype, device=x.device)
    pad = size // 2
    return F.conv2d(F.pad(x, (pad, pad, pad, pad), mode="replicate"), kernel, groups=c)


@dataclass(frozen=True)
class ColourJitter:
    """Fixed brightness shift, contrast factor and per-channel gain, drawn once from ``seed``:
    x -> gain_c * (contrast * (x - mean(x)) + mean(x)) + brightness."""

    brightness: float
    contrast: float
    gains: tuple[float, ...]

    @classmethod
    def from_seed(cls, seed: int, channels: int, strength: float = 0.4) -> ColourJitter:
        g = torch.Generator().manual_seed(seed)
        u = (torch.rand(2 + channels, generator=g) * 2 - 1) * strength
        return cls(float(u[0]), float(1 + u[1]), tuple(float(1 + v) for v in u[2:]))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        y = self.contrast * (x - mean) + mean
        gains = torch.tensor(self.gains, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return gains[:, : x.shape[1]] * y + self.brightness


def upper_swap(text: str) -> str:
    """A fixed text surface transform: upper case, and the vowels a/e/o written as 4/3/0 (the target domain of a
    text stream; the words stay readable, the tokens change)."""
    return text.upper().translate(str.maketrans({"A": "4", "E": "3", "O": "0"}))


@dataclass(frozen=True)
class CharNoise:
    """A fixed character-noise "dialect" (the synthetic target language of the ProKD demonstration, text-graph.md
    row 10): each word of at least ``min_length`` characters is rewritten with probability ``rate`` by one edit,
    a swap of two adjacent characters, a dropped character or a duplicated one, at a position; whether a word is
    rewritten, the edit and the position are a function of (``seed``, the word) only (a keyed BLAKE2 hash), so the
    same word is always written the same way, in training and at test, in every process. Words are maximal runs of
    letters and digits; spaces and punctuation are kept."""

    rate: float = 0.5
    seed: int = 0
    min_length: int = 4

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"rate: {self.rate} is not in [0, 1]")
        if self.min_length < 2:
            raise ValueError(f"min_length: {self.min_length} is below 2")

    def word(self, w: str) -> str:
        if len(w) < self.min_length:
            return w
        h = hashlib.blake2b(w.encode("utf-8"), digest_size=16, key=str(self.seed).encode()).digest()
        if int.from_bytes(h[:8], "big") / 2**64 >= self.rate:
            return w
        op, pos = h[8] % 3, int.from_bytes(h[9:13], "big")
        if op == 0:  # swap w[i], w[i + 1]
            i = pos % (len(w) - 1)
            return w[:i] + w[i + 1] + w[i] + w[i + 2:]
        i = pos % len(w)
        if op == 1:  # drop w[i]
            return w[:i] + w[i + 1:]
        return w[:i + 1] + w[i] + w[i + 1:]  # duplicate w[i]

    def __call__(self, text: str) -> str:
        return _WORD.sub(lambda m: self.word(m.group(0)), text)


_WORD = re.compile(r"\w+")


def text_transform(name: str, **options: Any) -> Callable[[str], str]:
    """The text transform registered as ``name`` (see :data:`TEXT_DOMAINS`), built with ``options`` (``char_noise``:
    ``rate``, ``seed``, ``min_length``; the others take none)."""
    if name not in TEXT_DOMAINS:
        raise ValueError(f"unknown text domain {name!r}; allowed: {', '.join(TEXT_DOMAINS)}")
    if name == "char_noise":
        return CharNoise(**options)
    if options:
        raise ValueError(f"text domain {name!r} takes no options, got {sorted(options)}")
    return TEXT_DOMAINS[name]


def image_transform(name: str, channels: int, seed: int = 0) -> ImageTransform:
    """The image transform registered as ``name`` (see :data:`IMAGE_DOMAINS`)."""
    if name not in IMAGE_DOMAINS:
        raise ValueError(f"unknown image domain {name!r}; allowed: {', '.join(IMAGE_DOMAINS)}")
    if name == "jitter":
        return ColourJitter.from_seed(seed, channels)
    return IMAGE_DOMAINS[name]


#: the image domains a ``stream.domains`` list may name (``jitter`` is built per stream seed)
IMAGE_DOMAINS: dict[str, ImageTransform] = {
    "identity": identity, "grayscale": grayscale, "invert": invert, "blur": blur, "jitter": identity,
}
#: the text domains
TEXT_DOMAINS: dict[str, Callable[[str], str]] = {"identity": lambda s: s, "upper_swap": upper_swap,
                                                  "char_noise": CharNoise()}
