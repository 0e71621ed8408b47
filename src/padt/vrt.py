"""The visual reference token (VRT) id space.

A VRT is a merged 28x28-px patch of an input image used as a token (docs/method.md §2.3, §3).

- Patch ``j`` of an image is the raster index over its ``(H/m) x (W/m)`` merged grid (``m`` = spatial merge
  size, 2 for Qwen2.5-VL): ``j = row * (W/m) + col``.
- **Local ids** are what a user, a dataset and the text protocol see: within one *sample*, the VRTs of its
  images are numbered consecutively, image after image: image ``k`` of the sample owns local ids
  ``[V + L_k, V + L_k + N_k)`` with ``L_k = sum(N of the sample's earlier images)``. With one image per sample
  this is exactly the reference's ``V + j``. In text a local id is written ``<|VRT_{id - V}|>``.
- **Global ids** are what the model sees: all images of a batch are concatenated, so image ``i`` owns rows
  ``[V + P_i, V + P_i + N_i)`` of the extended table, ``P_i = sum(N of earlier images in the batch)``.
  A sample's images are consecutive in the batch, so local -> global is a shift by the global offset of the
  sample's first image.
- Text ids ``< V`` are never touched (``V`` = rows of the text embedding table, ``config.vocab_size``).

:class:`VRTLayout` is the single source of these conversions and of the per-sample logit mask.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from padt.errors import PaDTError

VRT_FORMAT = "<|VRT_{}|>"
VRT_PATTERN = re.compile(r"<\|VRT_(\d+)\|>")


def vrt_token(index: int) -> str:
    """The text form of local VRT index ``index`` (``id - V``), e.g. ``<|VRT_12|>``."""
    return VRT_FORMAT.format(int(index))


def vrts_per_image(image_grid_thw: torch.Tensor, merge_size: int) -> torch.Tensor:
    """Number of VRTs (merged patches) of each image: ``t * H * W / m^2``. ``image_grid_thw`` is ``(I, 3)``."""
    if image_grid_thw.ndim != 2 or image_grid_thw.shape[-1] != 3:
        raise ValueError(f"image_grid_thw must have shape (num_images, 3), got {tuple(image_grid_thw.shape)}")
    return image_grid_thw.prod(-1) // (merge_size * merge_size)


def _exclusive_cumsum(x: torch.Tensor) -> torch.Tensor:
    return torch.cumsum(x, 0) - x


@dataclass(frozen=True)
class VRTLayout:
    """Where every image's VRTs live in one batch.

    Attributes:
        vocab_size: ``V``, the number of text ids.
        image_grid_thw: ``(I, 3)`` patch grids of all images of the batch, in batch order.
        image_sample: ``(I,)`` sample (batch row) each image belongs to; non-decreasing.
        num_samples: batch size ``B``.
        merge_size: spatial merge size ``m`` (the base model's, :class:`~padt.backbones.PatchGeometry`).
    """

    vocab_size: int
    image_grid_thw: torch.Tensor
    image_sample: torch.Tensor
    num_samples: int
    merge_size: int

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_input_ids(
        cls,
        input_ids: torch.Tensor,
        image_grid_thw: torch.Tensor | None,
        *,
        vocab_size: int,
        image_token_id: int,
        merge_size: int,
    ) -> VRTLayout:
        """Assign the images of ``image_grid_thw`` to batch rows by counting ``<|image_pad|>`` tokens.

        Images are consumed in order: a row with ``n`` image tokens owns the next images whose VRT counts sum
        to ``n``. Rows without image tokens (text-only samples) own no image.
        """
        num_samples = input_ids.shape[0]
        if image_grid_thw is None or image_grid_thw.numel() == 0:
            grid = torch.zeros(0, 3, dtype=torch.long, device=input_ids.device)
            return cls(
                vocab_size,
                grid,
                torch.zeros(0, dtype=torch.long, device=input_ids.device),
                num_samples,
                merge_size,
            )
        counts = (input_ids == image_token_id).sum(-1).tolist()
        sizes = vrts_per_image(image_grid_thw, merge_size).tolist()
        owner: list[int] = []
        image = 0
        for row, count in enumerate(counts):
            while count > 0:
                if image >= len(sizes) or sizes[image] > count:
                    raise PaDTError(
                        f"sample {row} has image tokens that do not match image_grid_thw "
                        f"(image sizes {sizes}, image tokens per sample {counts}); pass the processor's "
                        "input_ids and image_grid_thw together"
                    )
                owner.append(row)
                count -= sizes[image]
                image += 1
        if image != len(sizes):
            raise PaDTError(
                f"image_grid_thw has {len(sizes)} images but the input_ids hold image tokens for {image}; "
                "pass the processor's input_ids and image_grid_thw together"
            )
        return cls(
            vocab_size,
            image_grid_thw,
            torch.tensor(owner, dtype=torch.long, device=input_ids.device),
            num_samples,
            merge_size,
        )

    def to(self, device: torch.device | str) -> VRTLayout:
        """The same layout with its tensors on ``device``."""
        return replace(
            self, image_grid_thw=self.image_grid_thw.to(device), image_sample=self.image_sample.to(device)
        )

    # ---------------------------------------------------------------- sizes and offsets
    @property
    def vrts_per_image(self) -> torch.Tensor:
        """``(I,)`` N_i."""
        return vrts_per_image(self.image_grid_thw, self.merge_size)

    @property
    def num_vrts(self) -> int:
        """ΣN: rows added to the output table for this batch."""
        return int(self.vrts_per_image.sum())

    @property
    def image_global_offset(self) -> torch.Tensor:
        """``(I,)`` P_i: first global VRT row (minus V) of each image."""
        return _exclusive_cumsum(self.vrts_per_image)

    @property
    def sample_num_vrts(self) -> torch.Tensor:
        """``(B,)`` number of VRTs a sample may reference (over all its images)."""
        out = torch.zeros(self.num_samples, dtype=torch.long, device=self.image_grid_thw.device)
        return out.index_add_(0, self.image_sample, self.vrts_per_image)

    @property
    def sample_global_offset(self) -> torch.Tensor:
        """``(B,)`` global offset of each sample's first image (0-width samples get the running offset)."""
        return _exclusive_cumsum(self.sample_num_vrts)

    @property
    def image_local_offset(self) -> torch.Tensor:
        """``(I,)`` L_k: offset of each image inside its sample's local VRT range."""
        return self.image_global_offset - self.sample_global_offset[self.image_sample]

    # ---------------------------------------------------------------- conversions
    def _check_rows(self, ids: torch.Tensor) -> None:
        if ids.ndim != 2 or ids.shape[0] != self.num_samples:
            raise PaDTError(f"expected ids of shape ({self.num_samples}, L), got {tuple(ids.shape)}")

    def _check_range(self, rel: torch.Tensor, is_vrt: torch.Tensor, kind: str) -> None:
        """The one range check: ``rel`` (id - V - the sample's offset for global ids, id - V for local ones)
        must name a VRT of the row's own images."""
        limit = self.sample_num_vrts[:, None].to(rel.device)
        bad = is_vrt & ((rel >= limit) | (rel < 0))
        if bool(bad.any()):
            row, col = (int(v) for v in bad.nonzero()[0])
            hint = " (was it already local?)" if kind == "global" and int(rel[row, col]) < 0 else ""
            raise PaDTError(
                f"{kind} VRT index {int(rel[row, col])} at sample {row}, position {col} is out of range{hint}: the "
                f"sample's images have {int(limit[row, 0])} VRTs (indices 0..{int(limit[row, 0]) - 1}); reference "
                "only patches of the sample's own images"
            )

    def to_global(self, ids: torch.Tensor) -> torch.Tensor:
        """Local -> global VRT ids for ``(B, L)`` ids; text ids and negative ids (padding/ignore) unchanged."""
        self._check_rows(ids)
        is_vrt = ids >= self.vocab_size
        self._check_range(ids - self.vocab_size, is_vrt, "local")
        shift = self.sample_global_offset.to(ids.device)[:, None]
        return torch.where(is_vrt, ids + shift, ids)

    def check_global_ids(self, ids: torch.Tensor) -> None:
        """Raise if a global VRT id of ``(B, L)`` ids names a patch outside its row's images."""
        self._check_rows(ids)
        is_vrt = ids >= self.vocab_size
        self._check_range(
            ids - self.vocab_size - self.sample_global_offset.to(ids.device)[:, None], is_vrt, "global"
        )

    def to_local(self, ids: torch.Tensor) -> torch.Tensor:
        """Global -> local VRT ids for ``(B, L)`` ids (what generate returns -> what the parser reads)."""
        self.check_global_ids(ids)
        is_vrt = ids >= self.vocab_size
        shift = self.sample_global_offset.to(ids.device)[:, None]
        return torch.where(is_vrt, ids - shift, ids)

    def locate(self, sample: int, local_index: int) -> tuple[int, int]:
        """``(image index in the batch, patch index j in that image)`` of local VRT index ``id - V``."""
        [(image, patch)] = self.split(sample, [local_index])
        return image, patch

    def split(self, sample: int, local_indices: Sequence[int]) -> list[tuple[int, int]]:
        """``(batch image, patch index j in it)`` of each local VRT index (``id - V``) of ``sample``."""
        images = (self.image_sample == sample).nonzero().flatten().tolist()
        starts = self.image_local_offset.tolist()
        sizes = self.vrts_per_image.tolist()
        out = []
        for index in local_indices:
            found = [(i, int(index) - starts[i]) for i in images if starts[i] <= index < starts[i] + sizes[i]]
            if not found:
                total = int(self.sample_num_vrts[sample])
                raise PaDTError(
                    f"VRT index {index} is out of range for sample {sample}, whose images have {total} VRTs"
                )
            out.append(found[0])
        return out

    def global_ids(self, image: int, patches: Sequence[int]) -> list[int]:
        """Global ids ``V + P_image + j`` of patches ``j`` of batch image ``image``."""
        offset = self.vocab_size + int(self.image_global_offset[image])
        size = int(self.vrts_per_image[image])
        bad = [int(j) for j in patches if not 0 <= int(j) < size]
        if bad:
            raise PaDTError(f"patch indices {bad[:5]} are outside image {image}'s {size} VRTs")
        return [offset + int(j) for j in patches]

    def local_ids(self, image: int, patches: Sequence[int]) -> list[int]:
        """Local indices (``id - V``) within the image's sample of patches ``j`` of batch image ``image``."""
        start = int(self.image_local_offset[image])
        return [start + int(j) for j in patches]

    def allowed_mask(self) -> torch.Tensor:
        """``(B, V + ΣN)`` bool: True for every text id and for the VRTs of the row's own images.

        The reference builds it per image and broadcasts it per row (one image per sample); per sample it is
        the union of the sample's images, and a text-only sample may only emit text.
        """
        device = self.image_grid_thw.device
        total = self.vocab_size + self.num_vrts
        cols = torch.arange(total, device=device)
        rel = cols - self.vocab_size
        start = self.sample_global_offset[:, None]
        end = start + self.sample_num_vrts[:, None]
        return (cols < self.vocab_size)[None, :] | ((rel >= start) & (rel < end))
