"""Tiny, offline stand-ins for the Qwen2.5-VL tokenizer and processor, for tests and examples.

Nothing here downloads anything. The tokenizer is a byte-level BPE trained on the spot on a small built-in
English corpus (the task prompts and answers of docs/method.md §5, shape/colour scenes, COCO class names),
with Qwen2's own normaliser and pre-tokeniser, followed by the Qwen special tokens in Qwen's order. It
tokenises any text (byte-level), just with more, shorter tokens than the real one.

- :func:`tiny_tokenizer`: a transformers ``Qwen2Tokenizer`` with the Qwen2.5-VL chat template.
- :func:`tiny_processor`: a transformers ``Qwen2_5_VLProcessor`` (PIL image path) around it.
- :data:`TINY_VOCAB_SIZE`: the text vocabulary size ``V`` a tiny model should use with this tokenizer. It is
  larger than ``len(tiny_tokenizer())``; like the real checkpoints, ids in ``[len(tokenizer), V)`` are unused
  rows (``<|empty_token_k|>`` in the reference, docs/method.md §3.3) and ids ``>= V`` are VRTs.
"""

from __future__ import annotations

import copy
import functools
import itertools
from typing import TYPE_CHECKING, Any

import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLProcessor, Qwen2Tokenizer, Qwen2VLImageProcessorPil

from padt import prompts
from padt.processing import QWEN2_5_VL_CHAT_TEMPLATE, build_qwen2_5_vl_processor

if TYPE_CHECKING:
    from padt.modeling import PaDTForConditionalGeneration

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

#: Qwen2.5-VL's special tokens, in the order of their ids (appended right after the BPE vocabulary).
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
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


def tiny_tokenizer() -> Qwen2Tokenizer:
    """A small offline Qwen2 tokenizer (byte-level BPE + Qwen specials + Qwen2.5-VL chat template).

    eos is ``<|im_end|>`` and pad is ``<|endoftext|>``, as in Qwen2.5-VL-Instruct. Each call returns a new
    wrapper (callers may change its settings), built from a cached backend in milliseconds.
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
        chat_template=QWEN2_5_VL_CHAT_TEMPLATE,
    )
    if len(tokenizer) > TINY_VOCAB_SIZE:
        raise AssertionError(f"tiny tokenizer has {len(tokenizer)} entries, more than V={TINY_VOCAB_SIZE}")
    return tokenizer


def tiny_processor(min_pixels: int = 56 * 56, max_pixels: int = 12845056) -> Qwen2_5_VLProcessor:
    """A ``Qwen2_5_VLProcessor`` with :func:`tiny_tokenizer` and a PIL ``Qwen2VLImageProcessor``.

    The pixel bounds default to the reference training values (docs/method.md §2.2), i.e. native resolution
    rounded to multiples of 28 px; pass a small ``max_pixels`` to keep tiny-model runs cheap.
    """
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=min_pixels, max_pixels=max_pixels, patch_size=14, temporal_patch_size=2, merge_size=2
    )
    return build_qwen2_5_vl_processor(image_processor, tiny_tokenizer(), QWEN2_5_VL_CHAT_TEMPLATE)


# ======================================================================================================
# Tiny model factories (tiny_config(), tiny_model()) go below this line.
# ======================================================================================================


def tiny_config(
    *,
    vocab_size: int = TINY_VOCAB_SIZE,
    tie_word_embeddings: bool = True,
    hidden_size: int = 64,
    num_hidden_layers: int = 2,
    vision_hidden_size: int = 32,
    vision_depth: int = 2,
    use_visual_prototype_projection: bool = True,
    vision_num_heads: int = 2,
    decoder_ordering: str = "reference",
    decoder_absolute_position: bool = False,
    image_position_code: bool = False,
    **text_overrides: Any,
) -> Qwen2_5_VLConfig:
    """A tiny Qwen2.5-VL PaDT config matching :func:`tiny_tokenizer`'s special token ids.

    Real Qwen2.5-VL geometry (14-px patches, 2x2 merge, 112-px windows, one full-attention block) with tiny
    widths, so every code path of the 3B/7B models runs in milliseconds on a CPU. ``tie_word_embeddings=True``
    is 3B-like, ``False`` is 7B-like. ``decoder_ordering="raster"`` gives a decoder for training from scratch
    (:class:`~padt.decoder.PaDTDecoderConfig`); ``image_position_code=True`` adds the model's absolute
    image position code (:class:`~padt.modeling.PaDTForConditionalGeneration`).
    """
    tokenizer = tiny_tokenizer()
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in QWEN_SPECIAL_TOKENS}
    heads = 4
    head_dim = hidden_size // heads
    half = head_dim // 2  # M-RoPE sections (t, h, w) must sum to half the head dim
    mrope = [half - 2 * (half // 3), half // 3, half // 3]
    text_config = {
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "intermediate_size": 2 * hidden_size,
        "num_hidden_layers": num_hidden_layers,
        "num_attention_heads": heads,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "mrope_section": mrope, "rope_theta": 1000000.0},
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
        **text_overrides,
    }
    vision_config = {
        "depth": vision_depth,
        "hidden_size": vision_hidden_size,
        "intermediate_size": 2 * vision_hidden_size,
        "num_heads": vision_num_heads,
        "out_hidden_size": hidden_size,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 112,
        "fullatt_block_indexes": [vision_depth - 1],
    }
    config = Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=tie_word_embeddings,
        use_visual_prototype_projection=use_visual_prototype_projection,
        vl_decoder={"ordering": decoder_ordering, "absolute_position": decoder_absolute_position},
    )
    if image_position_code:  # written only when on, so configs of the published layout stay as they are
        config.image_position_code = True
    return config


def tiny_model(
    seed: int = 0, *, random_prototypes: bool = True, **config_kwargs: Any
) -> PaDTForConditionalGeneration:
    """A randomly initialised tiny PaDT model (fp32, SDPA, eval mode), deterministic for a seed.

    ``vis_norm`` is zero-initialised in PaDT, which makes every prototype 0; ``random_prototypes`` gives it
    random weights instead so that VRT logits and embeddings are informative in tests.
    """
    from padt.modeling import PaDTForConditionalGeneration

    torch.manual_seed(seed)
    config = tiny_config(**config_kwargs)
    config._attn_implementation = "sdpa"
    model = PaDTForConditionalGeneration(config)
    if random_prototypes and config.use_visual_prototype_projection:
        with torch.no_grad():
            model.vis_norm.weight.normal_(1.0, 0.1)
            model.vis_norm.bias.normal_(0.0, 0.1)
    return model.eval()
