"""The PaDT decoder: VRT hidden states + image features -> box, score and mask per object (docs/method.md §7).

A SAM-style two-way transformer. Each object is decoded independently: its query sequence is three learned
tokens (box, score, mask) followed by its projected VRT features, and it owns a private copy of its image's
memory (the memory is updated by image->query attention, per object). Objects are batched: queries and
memories are padded to the longest object and attention uses key-padding masks on PyTorch SDPA, which
computes the same function as the reference's per-object flash-attn varlen calls.

Parameter names and shapes follow the reference checkpoints (§11.1) so the published weights load unchanged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import ModelOutput

ORDERINGS = ("reference", "raster")
#: Attention implementations a config may name (all computed with SDPA here).
ATTENTION_NAMES = ("flash_attention_2", "sdpa", "eager")
#: Options that exist in padt only; a config written with them off looks like the reference's.
PADT_ONLY_FIELDS = ("ordering", "absolute_position")


@dataclass
class PaDTDecoderConfig:
    """The ``vl_decoder`` dict of a PaDT ``config.json``, with the reference's key names (§7.1).

    ``hidden_size`` and ``num_heads`` must equal the vision tower's: raw ViT features are added to decoder
    states without projection and the ViT RoPE tables are applied inside decoder heads.
    """

    hidden_size: int = 1280
    intermediate_size: int = 3420
    llm_hidden_state: int = 2048
    num_heads: int = 16
    spatial_merge_size: int = 2
    #: ``False``: the decoder predicts no masks (boxes and scores only), as the reference does.
    use_mask_loss: bool = True
    name: str = "PaDTDecoder"
    #: The reference's kernel choice, kept so configs round-trip; padt's SDPA computes the same function.
    attn_implementation: str = "flash_attention_2"
    #: ``"reference"``: the published decoders' mixed window/raster orders (§7.7), required for their weights.
    #: ``"raster"``: every input in its true spatial order (for decoders trained from scratch with padt).
    ordering: str = "reference"
    #: Add a fixed sinusoidal code of each memory token's normalised (x, y) to the image memory (raster
    #: ordering only). The published decoders rely on the pre-trained ViT's features to know where a patch is;
    #: a ViT trained from scratch at tiny scale carries little absolute position, and the box head then cannot
    #: learn (RoPE only shapes attention weights; the values it mixes carry no position).
    absolute_position: bool = False

    def __post_init__(self) -> None:
        if self.ordering not in ORDERINGS:
            raise ValueError(f"vl_decoder.ordering must be one of {ORDERINGS}, got {self.ordering!r}")
        if self.absolute_position and self.ordering != "raster":
            raise ValueError("vl_decoder.absolute_position needs ordering 'raster'")
        if self.attn_implementation not in ATTENTION_NAMES:
            raise ValueError(
                f"vl_decoder.attn_implementation must be one of {ATTENTION_NAMES}, got {self.attn_implementation!r}"
            )
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"vl_decoder.hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}"
            )
        if self.hidden_size % 16:
            raise ValueError(
                f"vl_decoder.hidden_size {self.hidden_size} must be a multiple of 16 (mask upsampling)"
            )

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PaDTDecoderConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown vl_decoder settings {unknown}; known: {', '.join(sorted(known))}")
        return cls(**values)

    def to_dict(self, *, reference_layout: bool = False) -> dict[str, Any]:
        """All fields; with ``reference_layout``, padt's own options only when they are switched on, so that
        configs of the published layout stay exactly as the reference wrote them."""
        out = asdict(self)
        if reference_layout:
            for name in PADT_ONLY_FIELDS:
                if out[name] == getattr(PaDTDecoderConfig, name):
                    del out[name]
        return out

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


@dataclass
class PaDTDecoderOutput(ModelOutput):
    """Per-object decoder outputs.

    Attributes:
        pred_boxes: ``(O, 4)`` normalised ``(cx, cy, w, h)`` of the (resized) image, in [0, 1].
        pred_score: ``(O, 1)`` raw score logits (``sigmoid`` is the confidence; trained so that
            ``2 * sigmoid - 1`` regresses the GIoU).
        pred_mask: ``(O, 4 * H_max, 4 * W_max)`` mask logits; only ``[:4H, :4W]`` of each object is valid.
        pred_mask_valid_hw: ``(O, 2)`` the ViT patch grid ``(H, W)`` of each object's image.
        object_image: ``(O,)`` batch index of the image each object was decoded against.
        sample_idx: ``(O,)`` batch row of each object (set by the model's ``decode_objects``).
    """

    pred_boxes: torch.Tensor | None = None
    pred_score: torch.Tensor | None = None
    pred_mask: torch.Tensor | None = None
    pred_mask_valid_hw: torch.Tensor | None = None
    object_image: torch.Tensor | None = None
    sample_idx: torch.Tensor | None = None


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE over the whole head dim, in fp32 like the reference. ``x``: (O, L, heads, hd);
    ``cos``/``sin``: (O, L, hd)."""
    dtype = x.dtype
    x = x.float()
    cos, sin = cos.float().unsqueeze(-2), sin.float().unsqueeze(-2)
    return (x * cos + rotate_half(x) * sin).to(dtype)


class Attention(nn.Module):
    """Multi-head attention used for self-attention and both cross-attentions.

    Positions enter in one of two ways per side: added to the input before the projection (learned query
    positions) or as RoPE after the projection (the ViT's 2-D RoPE on image tokens). Values never get positions.
    """

    def __init__(self, hidden_size: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.q_proj = nn.Linear(hidden_size, hidden_size)
        self.k_proj = nn.Linear(hidden_size, hidden_size)
        self.v_proj = nn.Linear(hidden_size, hidden_size)
        self.proj = nn.Linear(hidden_size, hidden_size)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(*x.shape[:2], self.num_heads, self.head_dim)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        key_padding: torch.Tensor,
        query_pos: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
        key_pos: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        """
        Args:
            query: ``O x Lq x C``.
            key: ``O x Lk x C`` (also the values).
            key_padding: ``O x Lk`` bool, True for real tokens.
            query_pos / key_pos: a ``O x L x C`` tensor added before the projection, or a ``(cos, sin)`` pair of
                ``O x L x head_dim`` tensors applied as RoPE after it.
        Returns:
            ``O x Lq x C``.
        """
        if isinstance(query_pos, tuple):
            q = apply_rotary(self._heads(self.q_proj(query)), *query_pos)
        else:
            q = self._heads(self.q_proj(query + query_pos))
        if isinstance(key_pos, tuple):
            k = apply_rotary(self._heads(self.k_proj(key)), *key_pos)
        else:
            k = self._heads(self.k_proj(key + key_pos))
        v = self._heads(self.v_proj(key))
        mask = key_padding[:, None, None, :]
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask
        )
        return self.proj(out.transpose(1, 2).reshape(*query.shape[:2], -1))


class PaDTDecoderBlock(nn.Module):
    """Two-way block: queries attend to themselves and to the image, then the image memory attends to the
    queries. Memory tokens never attend to each other and the memory has no MLP (§7.4)."""

    def __init__(
        self, hidden_size: int, intermediate_size: int, num_heads: int, norm: type[nn.Module]
    ) -> None:
        super().__init__()
        self.self_attn = Attention(hidden_size, num_heads)
        self.cross_attn_query_to_image = Attention(hidden_size, num_heads)
        self.cross_attn_image_to_query = Attention(hidden_size, num_heads)
        self.mlp = nn.Sequential(
            nn.Linear(hidden_size, intermediate_size), nn.GELU(), nn.Linear(intermediate_size, hidden_size)
        )
        for i in range(1, 7):
            setattr(self, f"norm{i}", norm(hidden_size, eps=1e-6))

    def forward(
        self,
        queries: torch.Tensor,
        memory: torch.Tensor,
        query_pe: torch.Tensor,
        memory_pe: tuple[torch.Tensor, torch.Tensor],
        query_valid: torch.Tensor,
        memory_valid: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``queries``: O x Lq x C, ``memory``: O x Lm x C, ``query_pe``: O x Lq x C (the initial queries),
        ``memory_pe``: (cos, sin) each O x Lm x head_dim. Returns updated ``(queries, memory)``."""
        # 1. Self-attention of the object's queries (learned positions added to q and k).
        x = self.norm1(queries)
        queries = queries + self.self_attn(x, x, query_valid, query_pe, query_pe)
        # 2. Queries -> image (RoPE on the image keys).
        queries = queries + self.cross_attn_query_to_image(
            self.norm2(queries), self.norm3(memory), memory_valid, query_pe, memory_pe
        )
        # 3. MLP on the queries.
        queries = queries + self.mlp(self.norm4(queries))
        # 4. Image -> queries: every memory token reads the queries (RoPE on the memory-side queries).
        memory = memory + self.cross_attn_image_to_query(
            self.norm6(memory), self.norm5(queries), query_valid, memory_pe, query_pe
        )
        return queries, memory


def normalised_position_code(positions: torch.Tensor, grid_hw: torch.Tensor, dim: int) -> torch.Tensor:
    """``O x n x dim`` sinusoidal code of the normalised centre ``(x, y)`` in ``[0, 1]`` of raster cell
    ``positions[j]`` on each object's ``(H, W)`` grid: ``sin/cos(pi 2^k x)`` and ``sin/cos(pi 2^k y)``."""
    h, w = grid_hw[:, :1].float(), grid_hw[:, 1:].float()
    row = torch.div(positions[None], grid_hw[:, 1:], rounding_mode="floor").float()
    col = positions[None].float() - row * w
    y, x = (row + 0.5) / h, (col + 0.5) / w
    freqs = torch.pi * 2.0 ** torch.arange(dim // 4, device=positions.device).clamp(max=12).float()
    angles = torch.cat([x[..., None] * freqs, y[..., None] * freqs], dim=-1)
    code = torch.cat([angles.sin(), angles.cos()], dim=-1)
    return nn.functional.pad(code, (0, dim - code.shape[-1]))


class PaDTDecoder(nn.Module):
    """Decodes objects from VRT hidden states (§7.3-§7.6).

    Inputs live in three different orders, and the mismatch is part of the published weights (§7.7): the
    high-res ViT features and the ViT RoPE are in *window* order, the low-res prototypes in *unit-raster* order,
    and mask blocks are pasted by sequence index. See :meth:`forward`.
    """

    def __init__(self, config: PaDTDecoderConfig, norm: type[nn.Module]) -> None:
        """``norm``: the base model's RMSNorm class (``Backbone.decoder_norm``; parameter ``weight`` only)."""
        super().__init__()
        self.config = config
        RMSNorm = norm
        d, llm_d = config.hidden_size, config.llm_hidden_state
        self.vp_embedding = nn.Embedding(1, d)
        self.bbox_score_mask_tokens = nn.Embedding(3, d)  # rows: box, score, mask
        # Shared by the VRT features and the low-res prototypes.
        self.input_projection = nn.Sequential(
            RMSNorm(llm_d, eps=1e-6), nn.Linear(llm_d, d), nn.GELU(), nn.Linear(d, d)
        )
        block = (d, config.intermediate_size, config.num_heads, norm)
        self.low_res_transformer = PaDTDecoderBlock(*block)
        self.high_res_norm = RMSNorm(d, eps=1e-6)
        self.high_res_transformer1 = PaDTDecoderBlock(*block)
        self.high_res_transformer2 = PaDTDecoderBlock(*block)
        self.bbox_prediction = nn.Sequential(
            nn.Linear(d, d), nn.GELU(), nn.Linear(d, d), nn.GELU(), nn.Linear(d, 4), nn.Sigmoid()
        )
        self.score_prediction = nn.Linear(d, 1)
        # Mask: every high-res token becomes a 4x4 block of (d/16)-dim embeddings in two 2x upsampling stages.
        self.mask_output_upscaling1 = nn.Sequential(nn.Linear(d, d // 4 * 4), RMSNorm(d, eps=1e-6), nn.GELU())
        self.mask_output_upscaling2 = nn.Sequential(nn.Linear(d // 4, d // 16 * 4), nn.GELU())
        self.mask_output_mlp = nn.Sequential(
            nn.Linear(d, d), nn.GELU(), nn.Linear(d, d), nn.GELU(), nn.Linear(d, d // 16)
        )

    # ------------------------------------------------------------------------------------------------ inputs
    def embed_queries(self, vrt_features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Initial queries ``Q0`` (also the query positional embedding of every block).

        Returns ``(O x (3 + K_max) x d, O x (3 + K_max) bool valid)``: ``[box, score, mask,
        input_projection(f_1..k) + vp_embedding]`` per object, zero-padded.
        """
        weight = self.vp_embedding.weight
        counts = [f.shape[0] for f in vrt_features]
        k_max = max(counts)
        feats = torch.zeros(
            len(vrt_features), k_max, self.config.llm_hidden_state, device=weight.device, dtype=weight.dtype
        )
        valid = torch.zeros(len(vrt_features), 3 + k_max, dtype=torch.bool, device=weight.device)
        valid[:, :3] = True
        for o, f in enumerate(vrt_features):
            feats[o, : f.shape[0]] = f.to(weight.dtype)
            valid[o, 3 : 3 + f.shape[0]] = True
        vrt_queries = self.input_projection(feats) + self.vp_embedding.weight
        special = self.bbox_score_mask_tokens.weight.unsqueeze(0).expand(len(vrt_features), -1, -1)
        queries = torch.cat([special, vrt_queries], dim=1) * valid[..., None]
        return queries, valid

    # ------------------------------------------------------------------------------------------------ forward
    def forward(
        self,
        vrt_features: list[torch.Tensor],
        object_image: torch.Tensor,
        prototypes: torch.Tensor,
        high_res_image_embeds: torch.Tensor,
        visual_pe: tuple[torch.Tensor, torch.Tensor],
        image_grid_thw: torch.Tensor,
    ) -> PaDTDecoderOutput:
        """Decode ``O`` objects.

        Args:
            vrt_features: ``O`` tensors of shape ``k_o x D``: the LLM's last-layer state that predicted each VRT
                of the object (or, during warm-up, the prototypes of its ground-truth VRTs).
            object_image: ``(O,)`` batch index of the image each object refers to.
            prototypes: ``ΣN x D`` VRT prototypes of all images, unit-raster order.
            high_res_image_embeds: ``Σn x d`` last ViT block output (pre-merger), ViT window order.
            visual_pe: ``(cos, sin)``, each ``Σn x head_dim``: ViT 2-D RoPE, window order.
            image_grid_thw: ``I x 3`` patch grids.
        """
        device, dtype = self.vp_embedding.weight.device, self.vp_embedding.weight.dtype
        num_objects = len(vrt_features)
        if num_objects == 0:
            empty = torch.zeros(0, device=device, dtype=dtype)
            return PaDTDecoderOutput(
                pred_boxes=empty.view(0, 4),
                pred_score=empty.view(0, 1),
                pred_mask=empty.view(0, 8, 8),
                pred_mask_valid_hw=torch.zeros(0, 2, dtype=torch.long, device=device),
                object_image=torch.zeros(0, dtype=torch.long, device=device),
            )
        m2 = self.config.spatial_merge_size**2
        object_image = object_image.to(device)
        grid = image_grid_thw.to(device)
        n_high = grid.prod(-1)  # high-res tokens per image
        n_low = n_high // m2
        high_start = torch.cumsum(n_high, 0) - n_high
        low_start = high_start // m2

        # Per-object gather indices into the concatenated image tensors (padded to the largest image).
        obj_n_high, obj_n_low = n_high[object_image], n_low[object_image]
        high_pos = torch.arange(int(obj_n_high.max()), device=device)
        low_pos = torch.arange(int(obj_n_low.max()), device=device)
        high_valid = high_pos[None] < obj_n_high[:, None]
        low_valid = low_pos[None] < obj_n_low[:, None]
        high_idx = torch.where(high_valid, high_start[object_image, None] + high_pos[None], 0)
        low_idx = torch.where(low_valid, low_start[object_image, None] + low_pos[None], 0)

        cos, sin = visual_pe
        raster = self.config.ordering == "raster"
        merge = self.config.spatial_merge_size
        if raster:
            # Inputs in true raster order: unit u = (ur, uc) takes the RoPE of its own top-left patch.
            width = grid[object_image, 2][:, None]
            ur, uc = low_pos[None] // (width // merge), low_pos[None] % (width // merge)
            own_patch = (merge * ur) * width + merge * uc
            low_pe_idx = torch.where(low_valid, high_start[object_image, None] + own_patch, 0)
        else:
            # Low-res unit u gets the RoPE of sub-patch 0 of the window-ordered 4-token group u, not its own
            # position (§7.7 a).
            low_pe_idx = low_idx * m2
        low_memory = self.input_projection(prototypes.to(dtype))[low_idx]
        low_pe = (cos[low_pe_idx], sin[low_pe_idx])
        if self.config.absolute_position:
            units_hw = grid[object_image, 1:] // merge
            low_memory = low_memory + normalised_position_code(low_pos, units_hw, low_memory.shape[-1]).to(
                dtype
            )
        queries, query_valid = self.embed_queries(vrt_features)
        query_pe = queries

        queries, low_memory = self.low_res_transformer(
            queries, low_memory, query_pe, low_pe, query_valid, low_valid
        )

        if raster:
            # Each patch gets the low-res unit it lies in.
            width = grid[object_image, 2][:, None]
            row, col = high_pos[None] // width, high_pos[None] % width
            unit = torch.where(high_valid, (row // merge) * (width // merge) + col // merge, 0)
            low_for_high = low_memory.gather(1, unit[..., None].expand(-1, -1, low_memory.shape[-1]))
        else:
            # Raster-ordered low-res unit p // 4 is added to the window-ordered ViT token p (§7.7 b).
            low_for_high = low_memory.repeat_interleave(m2, dim=1)
        high_memory = low_for_high + high_res_image_embeds.to(dtype)[high_idx]
        if self.config.absolute_position:
            high_memory = high_memory + normalised_position_code(
                high_pos, grid[object_image, 1:], high_memory.shape[-1]
            ).to(dtype)
        high_memory = self.high_res_norm(high_memory)
        high_pe = (cos[high_idx], sin[high_idx])
        for block in (self.high_res_transformer1, self.high_res_transformer2):
            queries, high_memory = block(queries, high_memory, query_pe, high_pe, query_valid, high_valid)

        pred_boxes = self.bbox_prediction(queries[:, 0])
        pred_score = self.score_prediction(queries[:, 1])
        grid_hw = grid[object_image, 1:]
        # The reference skips the mask head when its config switches masks off; the modules exist anyway.
        pred_mask = (
            self.predict_masks(queries[:, 2], high_memory, grid_hw) if self.config.use_mask_loss else None
        )
        return PaDTDecoderOutput(
            pred_boxes=pred_boxes,
            pred_score=pred_score,
            pred_mask=pred_mask,
            pred_mask_valid_hw=grid_hw,
            object_image=object_image,
        )

    def placeholder(self) -> PaDTDecoderOutput:
        """The outputs for one all-zero object on a one-unit, all-zero image. A training batch without any object
        decodes this (as the reference does), so that every decoder parameter takes part in the backward pass."""
        weight = self.vp_embedding.weight
        m = self.config.spatial_merge_size
        zeros = weight.new_zeros
        grid = torch.tensor([[1, m, m]], device=weight.device)
        identity = (
            zeros(m * m, self.config.head_dim) + 1,
            zeros(m * m, self.config.head_dim),
        )  # cos 1, sin 0
        return self.forward(
            [zeros(1, self.config.llm_hidden_state)],
            torch.zeros(1, dtype=torch.long, device=weight.device),
            zeros(1, self.config.llm_hidden_state),
            zeros(m * m, self.config.hidden_size),
            identity,
            grid,
        )

    def predict_masks(
        self, mask_tokens: torch.Tensor, memory: torch.Tensor, grid_hw: torch.Tensor
    ) -> torch.Tensor:
        """Mask logits ``O x 4H_max x 4W_max`` from the mask-token output ``O x d`` and the high-res memory
        ``O x n_max x d``; each high-res token yields a 4x4 block of logits."""
        num_objects, n_max, d = memory.shape
        weights = self.mask_output_mlp(mask_tokens)  # O x d/16
        up = self.mask_output_upscaling1(memory).view(num_objects, n_max, 2, 2, d // 4)  # (a, b)
        up = self.mask_output_upscaling2(up).view(num_objects, n_max, 2, 2, 2, 2, d // 16)  # (a, b, c, d')
        logits = torch.einsum("onabcdk,ok->onabcd", up, weights)
        # Row 2a + c, column 2b + d' of the token's 4x4 block.
        blocks = logits.permute(0, 1, 2, 4, 3, 5).reshape(num_objects, n_max, 4, 4)
        h_max, w_max = (int(v) for v in grid_hw.max(0).values)
        out = blocks.new_zeros(num_objects, 4 * h_max, 4 * w_max)
        # The block of sequence position p goes to raster cell (p // W, p % W). With the reference ordering p is a
        # window-ordered token (§7.7 c): the published decoders learned this layout. One paste per grid size.
        for h, w in {tuple(hw) for hw in grid_hw.tolist()}:
            sel = ((grid_hw[:, 0] == h) & (grid_hw[:, 1] == w)).nonzero().flatten()
            cells = blocks[sel, : h * w].view(len(sel), h, w, 4, 4).permute(0, 1, 3, 2, 4)
            out[sel, : 4 * h, : 4 * w] = cells.reshape(len(sel), 4 * h, 4 * w)
        return out
