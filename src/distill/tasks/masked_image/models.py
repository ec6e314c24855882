"""Masked autoencoders for small images (MAE: He et al., "Masked Autoencoders Are Scalable Vision Learners",
CVPR 2022, arXiv:2111.06377; layout of github.com/facebookresearch/mae ``models_mae.py`` and of DMAE's
``models_mae_distill.py``), in plain torch, built from :mod:`distill.models.vit`'s pre-norm blocks.

Encoder: a p x p patch convolution (``patch_embed``), a cls token, a **fixed** 2-D sin-cos position embedding,
``depth`` pre-norm blocks (``blocks.0`` .. ``blocks.{depth-1}``) and a final LayerNorm (``norm``). Given the indices
of the visible patches (``ids_keep``, (B, L_vis)), only those patches (plus the cls token) go through the blocks.
Decoder (``decoder_depth`` > 0): a linear map to ``decoder_dim``, learned mask tokens put back at the masked
positions (``ids_restore``), a fixed sin-cos position embedding, the decoder blocks, a LayerNorm and a linear map to
p*p*3 pixel values per patch.

``forward(x, ids_keep, ids_restore)`` returns the decoder's prediction (B, L, p*p*3); with ``stop_after_block = j``
(a teacher) it runs blocks 0..j only and returns block j's output (B, 1 + L_vis, d), before the final LayerNorm:
DMAE's truncated teacher forward (the blocks after j are kept, so a full checkpoint loads, but never run).
``features(x)`` is the probe representation: every patch visible, the final LayerNorm, the mean patch token.

Taps: ``b0`` .. ``b{depth-1}`` name the block outputs (``blocks.K``), ``tokens`` the normalised encoder output.
"""

from __future__ import annotations

import torch
from torch import nn

from distill.models.vit import Block

__all__ = ["MaskedAutoencoderViT", "mae_vit", "sincos_2d", "patchify", "MAE_MODELS"]


def sincos_2d(dim: int, grid: int, cls_token: bool = True) -> torch.Tensor:
    """The fixed 2-D sin-cos position embedding of MAE, (1 [+ 1], grid * grid, dim): half the channels encode the
    row, half the column, each as sin / cos of position * 10000^(-2i / (dim / 2)); a zero row for the cls token."""
    if dim % 4:
        raise ValueError(f"a 2-D sin-cos embedding needs a width divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    ys, xs = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                            indexing="ij")

    def one(pos: torch.Tensor) -> torch.Tensor:
        out = pos.reshape(-1)[:, None] * omega[None]
        return torch.cat([out.sin(), out.cos()], dim=1)

    emb = torch.cat([one(xs), one(ys)], dim=1)  # w then h, as MAE's get_2d_sincos_pos_embed
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim, dtype=torch.float64), emb])
    return emb.float()[None]


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, 3, H, W) -> (B, L, patch * patch * 3), patches in row-major order, pixels (row, col, channel)."""
    b, c, h, w = images.shape
    gh, gw = h // patch, w // patch
    x = images.reshape(b, c, gh, patch, gw, patch)
    return torch.einsum("bchpwq->bhwpqc", x).reshape(b, gh * gw, patch * patch * c)


def gather_tokens(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """x (B, L, d) at the token indices ``ids`` (B, n) -> (B, n, d)."""
    return torch.gather(x, 1, ids[:, :, None].expand(-1, -1, x.shape[-1]))


class MaskedAutoencoderViT(nn.Module):
    """A ViT encoder + light decoder trained by masked reconstruction (see the module docstring)."""

    feature_taps: dict[str, str]

    def __init__(self, image_size: int = 32, patch_size: int = 4, dim: int = 128, depth: int = 8,
                 heads: int | None = None, decoder_dim: int = 128, decoder_depth: int = 2,
                 decoder_heads: int | None = None, mlp_ratio: float = 4.0, stop_after_block: int | None = None,
                 num_classes: int | None = None):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        if stop_after_block is not None and not 0 <= stop_after_block < depth:
            raise ValueError(f"stop_after_block must be in [0, {depth - 1}], got {stop_after_block}")
        heads = heads or (3 if dim == 192 else max(1, dim // 64))
        decoder_heads = decoder_heads or max(1, decoder_dim // 64)
        self.patch, self.grid, self.dim, self.depth = patch_size, image_size // patch_size, dim, depth
        self.num_patches = self.grid ** 2
        self.stop_after_block = stop_after_block
        self.patch_embed = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("pos_embed", sincos_2d(dim, self.grid), persistent=False)
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.decoder_depth = decoder_depth
        if decoder_depth > 0:
            self.decoder_embed = nn.Linear(dim, decoder_dim)
            self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
            self.register_buffer("decoder_pos_embed", sincos_2d(decoder_dim, self.grid), persistent=False)
            self.decoder_blocks = nn.Sequential(*[Block(decoder_dim, decoder_heads, mlp_ratio)
                                                  for _ in range(decoder_depth)])
            self.decoder_norm = nn.LayerNorm(decoder_dim)
            self.decoder_pred = nn.Linear(decoder_dim, patch_size * patch_size * 3)
        self.feature_taps = {f"b{k}": f"blocks.{k}" for k in range(depth)} | {"tokens": "norm"}
        self._init()

    def _init(self) -> None:
        w = self.patch_embed.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # as MAE: the patch conv like a Linear
        nn.init.normal_(self.cls_token, std=0.02)
        if self.decoder_depth > 0:
            nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def embed(self, x: torch.Tensor, ids_keep: torch.Tensor | None) -> torch.Tensor:
        """cls token + the visible patch tokens (all patches when ``ids_keep`` is None), with positions."""
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed[:, 1:]
        if ids_keep is not None:
            tokens = gather_tokens(tokens, ids_keep)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        return torch.cat([cls, tokens], dim=1)

    def encode(self, x: torch.Tensor, ids_keep: torch.Tensor | None = None, stop: int | None = None
               ) -> torch.Tensor:
        """Encoder output: after the final LayerNorm, or block ``stop``'s raw output when ``stop`` is given."""
        h = self.embed(x, ids_keep)
        for i, block in enumerate(self.blocks):
            h = block(h)
            if stop is not None and i == stop:
                return h
        return self.norm(h)

    def decode(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Pixel predictions (B, L, p*p*3) from the encoded visible tokens and the un-shuffling indices."""
        h = self.decoder_embed(latent)
        b, n_vis = h.shape[0], h.shape[1] - 1
        masks = self.mask_token.expand(b, self.num_patches - n_vis, -1)
        seq = gather_tokens(torch.cat([h[:, 1:], masks], dim=1), ids_restore)  # back to the patch order
        h = torch.cat([h[:, :1], seq], dim=1) + self.decoder_pos_embed
        h = self.decoder_norm(self.decoder_blocks(h))
        return self.decoder_pred(h[:, 1:])

    def forward(self, x: torch.Tensor, ids_keep: torch.Tensor | None = None,
                ids_restore: torch.Tensor | None = None) -> torch.Tensor:
        if self.stop_after_block is not None:
            return self.encode(x, ids_keep, stop=self.stop_after_block)
        latent = self.encode(x, ids_keep)
        if self.decoder_depth == 0:
            return latent
        if ids_restore is None:
            ids_restore = torch.arange(self.num_patches, device=x.device).expand(x.shape[0], -1)
        return self.decode(latent, ids_restore)

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The probe representation (B, d): every patch visible, normalised, the mean of the patch tokens."""
        return self.encode(x)[:, 1:].mean(1)


def mae_vit(image_size: int = 32, patch_size: int = 4, dim: int = 128, depth: int = 8, heads: int | None = None,
            decoder_dim: int = 128, decoder_depth: int = 2, decoder_heads: int | None = None,
            mlp_ratio: float = 4.0, stop_after_block: int | None = None) -> MaskedAutoencoderViT:
    """``arch: mae_vit`` with ``options``: the arguments of :class:`MaskedAutoencoderViT`."""
    return MaskedAutoencoderViT(image_size, patch_size, dim, depth, heads, decoder_dim, decoder_depth, decoder_heads,
                                mlp_ratio, stop_after_block)


#: the named builders of ``task: masked_image_pretraining``
MAE_MODELS = {"mae_vit": mae_vit}
