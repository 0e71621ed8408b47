"""Small PaDT models built from scratch: an offline tokenizer, a processor, a typed model spec.

Training a tiny PaDT on the synthetic world (the bundled model, ``configs/bundled.yaml``), the tests and the
benchmarks all build their models here, for any supported base (``TinyModelSpec.backbone``). Nothing is
downloaded:

- :func:`tiny_tokenizer`: a byte-level BPE trained on the spot on a small built-in English corpus (the task
  prompts and answers of docs/method.md §5, shape/colour scenes, COCO class names), with Qwen2's normaliser and
  pre-tokeniser, followed by the Qwen special tokens in Qwen's order; the base's chat template. It tokenises any
  text (byte-level), with more, shorter tokens than the real one.
- :func:`tiny_processor`: the base's transformers processor (PIL image path) around it.
- :class:`TinyModelSpec`: the sizes and options of a small model, each default written once here; the
  ``model.tiny`` section of a training config is this spec. :func:`tiny_config` / :func:`tiny_model` build it.
- :data:`TINY_VOCAB_SIZE`: the text vocabulary size ``V`` of tiny models. It is larger than
  ``len(tiny_tokenizer())``; like the real checkpoints, ids in ``[len(tokenizer), V)`` are unused rows
  (``<|empty_token_k|>`` in the reference, docs/method.md §3.3) and ids ``>= V`` are VRTs.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import itertools
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import ConfigDict
from pydantic.dataclasses import dataclass as pydantic_dataclass
from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer
from torch import nn
from transformers import Qwen2Tokenizer

from padt import prompts
from padt.backbones import DEFAULT_BACKBONE, get_backbone
from padt.backbones.base import QWEN_SPECIAL_TOKENS

if TYPE_CHECKING:
    from padt.modeling import PaDTMixin

#: Text vocabulary size ``V`` for tiny models built on :func:`tiny_tokenizer` (``>= len(tokenizer)``).
TINY_VOCAB_SIZE = 1024

#: Merges the BPE trainer may learn on top of the 256 byte symbols. With the 14 specials the tokenizer stays
#: below :data:`TINY_VOCAB_SIZE`, so a few unused ids remain, as in the real checkpoints.
_BPE_VOCAB_SIZE = 1000

#: Qwen2's pre-tokenisation regex (the same string transformers' Qwen2Tokenizer uses).
QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)


COLOURS = ("red", "green", "blue", "yellow", "orange", "purple", "pink", "brown", "black", "white", "gray")
SHAPES = (
    "square",
    "circle",
    "triangle",
    "rectangle",
    "star",
    "ellipse",
    "diamond",
    "ring",
    "cross",
    "stripe",
)
SIZES = ("small", "big", "large", "tiny", "tall", "wide")
PLACES = (
    "on the left",
    "on the right",
    "at the top",
    "at the bottom",
    "in the middle",
    "in the corner",
    "next to the",
    "above the",
    "below the",
    "behind the",
    "in front of the",
    "near the",
)
COCO_CLASSES = (
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "backpack",
    "umbrella",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "dining table",
    "toilet",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
)


def _corpus() -> list[str]:
    """Deterministic training text: every task prompt/answer form and the words tests and examples use."""
    lines = ["You are a helpful assistant.", "system", "user", "assistant", prompts.ric_prompt()]
    lines.append(prompts.OVD_ANSWER_NONE)
    lines.append(prompts.ovd_prompt(COCO_CLASSES))
    objects = [f"{s} {c} {shape}" for s, c, shape in itertools.product(SIZES[:3], COLOURS, SHAPES)]
    for i, obj in enumerate(objects):
        sentence = f"the {obj} {PLACES[i % len(PLACES)]}"
        lines.append(prompts.rec_prompt(sentence))
        lines.append(prompts.rec_answer_template(sentence))
    for i in range(0, len(COCO_CLASSES) - 2, 3):
        names = list(COCO_CLASSES[i : i + 3])
        counts = [1 + i % 3, 0, 2]
        lines.append(prompts.ovd_prompt(names))
        lines.append(prompts.ovd_answer_template(names, counts))
        lines.append(prompts.ovd_answer_template(names[:1], counts[:1]))
    for colour, shape, other in zip(COLOURS, SHAPES, reversed(SHAPES)):
        lines.append(
            f"A {colour} {shape} (<|Obj_0|>) sits next to a {other} (<|Obj_1|>, <|Obj_2|>) "
            "on a plain background. "
            f"The {shape} is {SIZES[len(shape) % len(SIZES)]} and there are 2 shapes in this picture."
        )
    lines.extend(str(n) for n in range(100))
    return lines


@functools.lru_cache(maxsize=1)
def _tiny_backend() -> Tokenizer:
    """Train the BPE once per process (the expensive part); callers get copies."""
    tokenizer = Tokenizer(BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(
        vocab_size=_BPE_VOCAB_SIZE,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tokenizer.train_from_iterator(_corpus(), trainer=trainer)
    # Specials after the BPE vocabulary, unnormalised, as in Qwen's tokenizer.json.
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN_SPECIAL_TOKENS])
    return tokenizer


def tiny_tokenizer(backbone: str = DEFAULT_BACKBONE) -> Qwen2Tokenizer:
    """A small offline Qwen2 tokenizer (byte-level BPE + Qwen specials + the base's chat template).

    eos is ``<|im_end|>`` and pad is ``<|endoftext|>``, as in the Qwen-VL instruct models. Each call returns a
    new wrapper (callers may change its settings), built from a cached backend in milliseconds.
    """
    tokenizer = Qwen2Tokenizer(
        tokenizer_object=copy.deepcopy(_tiny_backend()),
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        errors="replace",
        clean_up_tokenization_spaces=False,
        model_max_length=32768,
        chat_template=get_backbone(backbone).chat_template,
    )
    if len(tokenizer) > TINY_VOCAB_SIZE:
        raise AssertionError(f"tiny tokenizer has {len(tokenizer)} entries, more than V={TINY_VOCAB_SIZE}")
    return tokenizer


def tiny_processor(
    min_pixels: int = 56 * 56, max_pixels: int | None = None, backbone: str = DEFAULT_BACKBONE
) -> Any:
    """The base's transformers processor with :func:`tiny_tokenizer` and a PIL image processor.

    ``max_pixels`` defaults to the base's (native resolution rounded to VRT cells); pass a small value to keep
    tiny-model runs cheap.
    """
    base = get_backbone(backbone)
    return base.build_processor(
        base.image_processor(min_pixels=min_pixels, max_pixels=max_pixels),
        tiny_tokenizer(backbone),
        base.chat_template,
    )


@pydantic_dataclass(config=ConfigDict(extra="forbid"))
class TinyModelSpec:
    """A small PaDT: the base's real geometry (patches, merge, windows) at tiny widths, random weights."""

    #: the base model (:mod:`padt.backbones`).
    backbone: str = DEFAULT_BACKBONE
    vocab_size: int = TINY_VOCAB_SIZE
    #: True is 3B-like (tied input/output embeddings), False 7B-like.
    tie_word_embeddings: bool = True
    hidden_size: int = 64
    num_hidden_layers: int = 2
    vision_hidden_size: int = 32
    vision_depth: int = 2
    vision_num_heads: int = 2
    use_visual_prototype_projection: bool = True
    #: ``raster``: the decoder reads its inputs in true spatial order (for decoders trained from scratch); the
    #: default is the base's (``reference`` for Qwen2.5-VL, ``raster`` for Qwen3-VL).
    decoder_ordering: Literal["reference", "raster"] | None = None
    #: a normalised (x, y) code in the decoder's image memory (raster ordering only).
    decoder_absolute_position: bool = False
    #: a learned (x, y) code added to the image features (:class:`~padt.modeling.PaDTMixin`).
    image_position_code: bool = False
    #: a randomly initialised (x, y) term added to the VRT prototypes (:class:`~padt.modeling.PaDTMixin`).
    prototype_position_code: bool = False
    #: std of that term's random init (default: the model config's, ``padt.config.PROTOTYPE_POSITION_INIT_STD``).
    prototype_position_init_std: float | None = None
    #: ``torch``: PyTorch's default init for the decoder's linear layers. At tiny widths the reference's
    #: N(0, 0.02) leaves the decoder's output almost independent of its input, and it then barely learns.
    decoder_init: Literal["reference", "torch"] = "reference"
    #: Qwen3-VL only: a VRT fed back as input also gets the DeepStack features of its patch (docs/method.md §13).
    vrt_deepstack: bool = False
    #: weight seed (a training config uses its own ``seed`` when this is left out).
    seed: int | None = None

    def __post_init__(self) -> None:
        get_backbone(self.backbone)  # a clear error for an unknown base
        if self.vrt_deepstack and get_backbone(self.backbone).model_type != "qwen3_vl":
            raise ValueError(f"vrt_deepstack is a Qwen3-VL option; backbone is {self.backbone!r}")
        for name in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "vision_hidden_size",
            "vision_depth",
            "vision_num_heads",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


def tiny_config(spec: TinyModelSpec | None = None, **fields: Any) -> Any:
    """The PaDT config of a tiny model: ``spec`` or :class:`TinyModelSpec` fields (``hidden_size=128``, ...)."""
    from padt.modeling import padt_class_for

    spec = spec if spec is not None else TinyModelSpec(**fields)
    base = get_backbone(spec.backbone)
    tokenizer = tiny_tokenizer(spec.backbone)
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in base.special_tokens}
    config = base.tiny_config(
        ids,
        vocab_size=spec.vocab_size,
        hidden_size=spec.hidden_size,
        num_hidden_layers=spec.num_hidden_layers,
        vision_hidden_size=spec.vision_hidden_size,
        vision_depth=spec.vision_depth,
        vision_num_heads=spec.vision_num_heads,
        tie_word_embeddings=spec.tie_word_embeddings,
    )
    padt_config = padt_class_for(base.model_type).config_class.from_dict(
        config.to_dict()
        | {
            "use_visual_prototype_projection": spec.use_visual_prototype_projection,
            "vl_decoder": {
                "ordering": spec.decoder_ordering or base.default_decoder_ordering,
                "absolute_position": spec.decoder_absolute_position,
            },
            "image_position_code": spec.image_position_code,
            "prototype_position_code": spec.prototype_position_code,
        }
        | (
            {"prototype_position_init_std": spec.prototype_position_init_std}
            if spec.prototype_position_init_std is not None
            else {}
        )
        | ({"vrt_deepstack": True} if spec.vrt_deepstack else {})
    )
    padt_config._attn_implementation = "sdpa"
    return padt_config


def tiny_model(
    seed: int | None = None,
    *,
    random_prototypes: bool = True,
    spec: TinyModelSpec | None = None,
    **fields: Any,
) -> PaDTMixin:
    """A randomly initialised tiny PaDT model (fp32, SDPA, eval mode), deterministic for a seed.

    ``vis_norm`` is zero-initialised in PaDT, which makes every prototype 0; ``random_prototypes`` gives it
    random weights instead so that VRT logits and embeddings are informative in tests.
    """
    from padt.modeling import padt_class_for

    spec = spec if spec is not None else TinyModelSpec(**fields)
    seed = seed if seed is not None else (spec.seed if spec.seed is not None else 0)
    torch.manual_seed(seed)
    config = tiny_config(spec)
    model = padt_class_for(config.model_type)(config)
    if spec.decoder_init == "torch":
        torch.manual_seed(seed)
        for module in model.vl_decoder.modules():
            if isinstance(module, nn.Linear):
                module.reset_parameters()
    if random_prototypes and config.use_visual_prototype_projection:
        with torch.no_grad():
            model.vis_norm.weight.normal_(1.0, 0.1)
            model.vis_norm.bias.normal_(0.0, 0.1)
    return model.eval()


def spec_fields() -> list[str]:
    """The field names of :class:`TinyModelSpec`."""
    return [f.name for f in dataclasses.fields(TinyModelSpec)]
