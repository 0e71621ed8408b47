"""``padt train`` configuration: one YAML file, one typed schema, every key overridable from the command line.

The schema below is the only place where the training defaults are written. A config is validated as a whole
before anything heavy starts: an unknown key is refused with the closest known one ("did you mean ..."), a bad
value with the key and what it allows. Sections (all optional except ``data`` and ``training.output_dir``)::

    model:       {path: PATH, init_padt_modules: false, dtype: fp32|bf16|fp16}    # a checkpoint, or
                 {tiny: {hidden_size: 128, ...}}                                  # a fresh tiny model
    processor:   {min_pixels: 3136, max_pixels: 12845056}
    data:        {train: [{records: FILE, image_root: DIR}, ...]}                 # record files, and/or
                 {synthetic: {task: all, n: 4000, seed: 1, max_size: 224}}         # generated on first use
                 {synthetic: [{task: all, n: 4000}, {task: ovd, n: 1000, seed: 2}]}  # several, mixed
    padt:        {vrts_per_object: 5, random_select: true, robust_loss: true, answer_format: vrt,
                  warmup_steps: 300, patches: auto, loss_weights: {loss_token: 1, ...},
                  count_token_weight: 1}
    components:  {vision: train, llm: train, decoder: train}                      # train | freeze | lora
    lora:        {r: 16, alpha: 32, dropout: 0.05}
    training:    {output_dir: runs/x, ...}     # any transformers TrainingArguments field
    generation:  {vrt_repeat_penalty: 2.0, ...}    # written into the final model's generation_config
    seed: 42
    resume: auto                               # auto | true | false

Overrides are ``dotted.key=value`` pairs with YAML values: ``training.max_steps=100 padt.robust_loss=false``.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from collections.abc import Mapping, Sequence
from functools import cache, partial
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Tag,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from padt.data.synthetic import BUNDLED_SCENES
from padt.errors import PaDTError
from padt.tiny import TinyModelSpec
from padt.training.batch import StepOptions

COMPONENTS = ("vision", "llm", "decoder")
ComponentMode = Literal["train", "freeze", "lora"]


class _Section(BaseModel):
    """A config section: unknown keys are errors, values are checked when set."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSection(_Section):
    path: str | None = None
    tiny: TinyModelSpec | None = None
    init_padt_modules: bool = False
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    vision_from: str | None = (
        None  # copy the vision component (ViT + image position code) from this checkpoint
    )

    @model_validator(mode="after")
    def _one_source(self) -> ModelSection:
        if (self.path is None) == (self.tiny is None):
            raise ValueError(
                "needs exactly one of model.path (a checkpoint) or model.tiny (a fresh tiny model)"
            )
        return self


class ProcessorSection(_Section):
    min_pixels: PositiveInt | None = None
    max_pixels: PositiveInt | None = None


class RecordSource(_Section):
    records: str
    image_root: str | None = None


class SyntheticData(_Section):
    """A synthetic dataset generated on first use (``padt.data.synthetic.generate_dataset``)."""

    task: Literal["rec", "res", "ovd", "ric", "all"] = "all"
    n: PositiveInt
    seed: NonNegativeInt = 0
    out: str | None = None
    min_size: PositiveInt | None = None
    max_size: PositiveInt | None = None
    max_objects: PositiveInt | None = None
    refs_per_scene: PositiveInt | None = None
    #: REC/RES expression forms' weights, e.g. ``{extreme: 0.5}`` (padt.data.synthetic.FORM_WEIGHTS)
    form_weights: dict[Literal["attribute", "extreme", "relation"], NonNegativeFloat] | None = None
    #: the share of OVD records that list only kinds the scene does not hold (answer: none is there)
    absent_rate: float | None = Field(None, ge=0.0, le=1.0)


# One synthetic dataset, or a list of them mixed into one (e.g. a second, OVD-only one that weighs that task
# more). The tag is chosen by the input's type, so a mistake is reported for that form only.
_ONE, _MANY = "one dataset", "several datasets"
SyntheticSpec = Annotated[
    Annotated[SyntheticData, Tag(_ONE)] | Annotated[list[SyntheticData], Tag(_MANY)],
    Discriminator(lambda value: _MANY if isinstance(value, list) else _ONE),
]


class DataSection(_Section):
    train: list[RecordSource] = Field(default_factory=list)
    synthetic: SyntheticSpec | None = None

    @model_validator(mode="after")
    def _some_data(self) -> DataSection:
        if not self.train and not self.synthetic:
            raise ValueError("no training data; set data.train (record files) or data.synthetic")
        outs = [item.out for item in self.synthetic_datasets() if item.out is not None]
        if len(set(outs)) < len(outs):
            raise ValueError("two data.synthetic datasets share one `out` folder; give each its own")
        return self

    def synthetic_datasets(self) -> list[SyntheticData]:
        """``synthetic`` as a list (empty when unset)."""
        if self.synthetic is None:
            return []
        return list(self.synthetic) if isinstance(self.synthetic, list) else [self.synthetic]


class PaDTSection(_Section):
    """What PaDT adds to a training step (the defaults of :class:`~padt.training.batch.StepOptions`, which are
    the reference's)."""

    vrts_per_object: int = StepOptions.vrts_per_object  # -1 = every foreground patch
    random_select: bool = StepOptions.random_select
    robust_loss: bool = StepOptions.robust_loss
    answer_format: Literal["vrt", "text"] = StepOptions.answer_format
    #: factor on the token loss of the counts in OVD answers (1 = the reference)
    count_token_weight: NonNegativeFloat = StepOptions.count_token_weight
    warmup_steps: NonNegativeInt = 300
    #: where each object's foreground patches come from: ``record`` (the record's list, computed with the default
    #: base's cells on the grid its processor gives the image; other cells or another grid are an error),
    #: ``recompute`` (from the mask on the processor's actual grid), ``auto`` (the record's list where it
    #: applies, else ``recompute``; padt.training.batch.object_patches).
    patches: Literal["auto", "record", "recompute"] = "auto"
    strict_patches: bool = False
    loss_weights: dict[str, NonNegativeFloat] = Field(default_factory=dict)

    @field_validator("vrts_per_object")
    @classmethod
    def _vrts(cls, value: int) -> int:
        if value == 0 or value < -1:
            raise ValueError("must be a positive number of VRTs, or -1 for every foreground patch")
        return value

    @field_validator("loss_weights")
    @classmethod
    def _terms(cls, value: dict[str, float]) -> dict[str, float]:
        from padt.losses import LOSS_TERMS

        return _known_terms(value, LOSS_TERMS)

    @model_validator(mode="after")
    def _step_options(self) -> PaDTSection:
        try:  # the combinations StepOptions refuses, reported before anything is built
            StepOptions(answer_format=self.answer_format, count_token_weight=self.count_token_weight)
        except PaDTError as exc:
            raise ValueError(str(exc)) from None
        return self


class ComponentsSection(_Section):
    vision: ComponentMode = "train"
    llm: ComponentMode = "train"
    decoder: ComponentMode = "train"

    @model_validator(mode="after")
    def _something_trains(self) -> ComponentsSection:
        if all(getattr(self, c) == "freeze" for c in COMPONENTS):
            raise ValueError("every component is frozen; set at least one of components.* to train or lora")
        return self


class LoraSection(_Section):
    r: PositiveInt = 16
    alpha: PositiveInt = 32
    dropout: float = Field(0.05, ge=0.0, lt=1.0)


# transformers TrainingArguments fields whose values PaDT constrains further (the rest are checked against the
# field's own type only).
_TRAINING_RANGES: dict[str, tuple[str, float]] = {
    "learning_rate": ("gt", 0.0),
    "per_device_train_batch_size": ("ge", 1),
    "gradient_accumulation_steps": ("ge", 1),
    "num_train_epochs": ("gt", 0.0),
    "warmup_steps": ("ge", 0),
    "weight_decay": ("ge", 0.0),
    "max_grad_norm": ("ge", 0.0),
    "save_steps": ("gt", 0),
    "logging_steps": ("gt", 0),
    "dataloader_num_workers": ("ge", 0),
    "save_total_limit": ("ge", 1),
}


class TrainingSection(_Section):
    """transformers ``TrainingArguments``, with PaDT's defaults (the reference's where they suit any machine)."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    output_dir: str
    learning_rate: float = 2e-5
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    logging_steps: float = 10
    save_steps: float = 100
    per_device_train_batch_size: int = 4
    dataloader_num_workers: int = 0
    #: default: TensorBoard when it is installed, plus W&B when installed and ``WANDB_PROJECT`` is set.
    report_to: str | list[str] | None = None
    #: The decoder runs after the model's forward (padt_loss), so DDP's search for unused parameters at the
    #: end of the forward would mark its parameters ready before their gradients exist.
    ddp_find_unused_parameters: bool = False

    @field_validator("output_dir")
    @classmethod
    def _output_dir(cls, value: str) -> str:
        if not str(value).strip():
            raise ValueError("set training.output_dir (where checkpoints and the final model go)")
        return value

    @model_validator(mode="before")
    @classmethod
    def _strategies(cls, data: Any) -> Any:
        if isinstance(data, Mapping):  # YAML 1.1 reads `save_strategy: no` as false
            data = {k: ("no" if k.endswith("_strategy") and v is False else v) for k, v in data.items()}
        return data

    @model_validator(mode="after")
    def _check(self) -> TrainingSection:
        fields = _training_argument_types()
        for name, value in {**self.__dict__, **(self.__pydantic_extra__ or {})}.items():
            if name not in fields:
                raise ValueError(
                    f"training.{name} is not a transformers TrainingArguments field{_did_you_mean(name, fields, 'training.')}"
                )
            if name in (self.__pydantic_extra__ or {}):
                try:
                    value = TypeAdapter(fields[name]).validate_python(value)
                except ValidationError as error:
                    raise ValueError(f"training.{name}: {_first_message(error)}, got {value!r}") from None
                self.__pydantic_extra__[name] = value
            if name in _TRAINING_RANGES and value is not None:
                op, bound = _TRAINING_RANGES[name]
                if not (value > bound if op == "gt" else value >= bound):
                    sign = ">" if op == "gt" else ">="
                    raise ValueError(f"training.{name} must be {sign} {bound:g}, got {value!r}")
        if self.__pydantic_extra__ and self.__pydantic_extra__.get("max_steps") == 0:
            raise ValueError("training.max_steps must be positive (or -1 to train num_train_epochs)")
        return self

    def arguments(self) -> dict[str, Any]:
        """Keyword arguments for ``TrainingArguments``."""
        return self.model_dump(exclude_none=True) | {"remove_unused_columns": False}


class TrainConfig(_Section):
    model: ModelSection
    processor: ProcessorSection = Field(default_factory=ProcessorSection)
    data: DataSection
    padt: PaDTSection = Field(default_factory=PaDTSection)
    components: ComponentsSection = Field(default_factory=ComponentsSection)
    lora: LoraSection = Field(default_factory=LoraSection)
    training: TrainingSection
    #: generation_config fields written into the final model (e.g. ``vrt_repeat_penalty``).
    generation: dict[str, Any] = Field(default_factory=dict)
    seed: int = 42
    resume: Literal["auto", True, False] = "auto"

    @field_validator("generation")
    @classmethod
    def _generation(cls, value: dict[str, Any]) -> dict[str, Any]:
        from transformers import GenerationConfig

        from padt.generation import (
            OVD_END_PENALTY,
            OVD_GRAMMAR,
            VRT_PENALTIES,
            decoding_setting,
            ovd_end_penalty_of,
            ovd_grammar_of,
        )
        from padt.postprocess import (
            MASK_BOX_WEIGHT,
            OVD_DUPLICATE_IOU,
            mask_box_weight_of,
            ovd_duplicate_iou_of,
        )

        checks = {name: partial(decoding_setting, None, name) for name in VRT_PENALTIES} | {
            OVD_END_PENALTY: partial(ovd_end_penalty_of, None),
            OVD_GRAMMAR: partial(ovd_grammar_of, None),
            OVD_DUPLICATE_IOU: partial(ovd_duplicate_iou_of, None),
            MASK_BOX_WEIGHT: partial(mask_box_weight_of, None),
        }
        known = set(GenerationConfig().to_dict()) | set(checks)
        for name in value:
            if name not in known:
                raise ValueError(f"unknown generation_config field {name!r}{_did_you_mean(name, known)}")
        for name, check in checks.items():
            if value.get(name) is not None:
                check(value[name])  # a PaDTError is a ValueError: a validation error
        return value

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", exclude_none=True), sort_keys=False)


SECTIONS = tuple(TrainConfig.model_fields)


# ------------------------------------------------------------------------------- vision pretraining stage
class VisionScenes(_Section):
    """The generated scenes of a vision stage (``padt.data.synthetic.make_scene``)."""

    n: PositiveInt = 4000
    seed: NonNegativeInt = 11
    min_size: PositiveInt = BUNDLED_SCENES.min_size
    max_size: PositiveInt = BUNDLED_SCENES.max_size
    max_objects: PositiveInt = BUNDLED_SCENES.max_objects


class VisionDataSection(_Section):
    synthetic: VisionScenes = Field(default_factory=VisionScenes)


class VisionSection(_Section):
    #: per loss term of :data:`padt.training.vision_pretrain.LOSS_TERMS`; unset terms keep their default.
    loss_weights: dict[str, NonNegativeFloat] = Field(default_factory=dict)
    eval_scenes: PositiveInt = 200  # held-out scenes for the per-head accuracies and the object probe
    eval_seed: NonNegativeInt = 12

    @field_validator("loss_weights")
    @classmethod
    def _terms(cls, value: dict[str, float]) -> dict[str, float]:
        from padt.training.vision_pretrain import LOSS_TERMS

        return _known_terms(value, LOSS_TERMS)


class VisionStageConfig(_Section):
    """A vision pretraining stage (:mod:`padt.training.vision_pretrain`): the model and processor as for PaDT
    training, the scenes, the heads' loss weights and ``TrainingArguments``."""

    model: ModelSection
    processor: ProcessorSection = Field(default_factory=ProcessorSection)
    data: VisionDataSection = Field(default_factory=VisionDataSection)
    vision: VisionSection = Field(default_factory=VisionSection)
    training: TrainingSection
    seed: int = 42
    resume: Literal["auto", True, False] = "auto"

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", exclude_none=True), sort_keys=False)


# ----------------------------------------------------------------------------------- weight-averaging stage
class AverageSection(_Section):
    #: the checkpoints to average: earlier stages' names or folders, all of one architecture.
    models: list[str] = Field(min_length=2)
    #: one weight per model (normalised to sum to 1); unset: the plain mean.
    weights: list[PositiveFloat] | None = None

    @model_validator(mode="after")
    def _one_weight_per_model(self) -> AverageSection:
        if self.weights is not None and len(self.weights) != len(self.models):
            raise ValueError(
                f"weights has {len(self.weights)} entries for {len(self.models)} models; give one per model"
            )
        return self


class OutputSection(_Section):
    output_dir: str


class AverageStageConfig(_Section):
    """A stage that averages the weights of earlier stages' models (:mod:`padt.training.average`). It trains
    nothing, so it takes none of the recipe's shared sections: only ``average`` and ``training.output_dir``."""

    average: AverageSection
    training: OutputSection
    resume: Literal["auto", True, False] = "auto"

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", exclude_none=True), sort_keys=False)


# ------------------------------------------------------------------------------------------ growing stage
class GrowSection(_Section):
    #: the checkpoint to grow: an earlier stage's name or a folder.
    model: str
    #: every language-model layer's MLP width after growing (unset: unchanged); not below the current one.
    intermediate_size: PositiveInt | None = None
    #: indices of the model's language-model layers after each of which an identity layer is inserted.
    insert_after: list[NonNegativeInt] = Field(default_factory=list)
    #: every vision-tower block's MLP width after growing (unset: unchanged); not below the current one.
    vision_intermediate_size: PositiveInt | None = None
    #: std of the new weights that are not zero (unset: the model's ``initializer_range``).
    init_std: PositiveFloat | None = None
    seed: int = 0

    @model_validator(mode="after")
    def _grows(self) -> GrowSection:
        if self.intermediate_size is None and not self.insert_after and self.vision_intermediate_size is None:
            raise ValueError(
                "set intermediate_size, insert_after or vision_intermediate_size: otherwise nothing grows"
            )
        return self


class GrowStageConfig(_Section):
    """A stage that grows an earlier stage's model (language model, vision-tower MLPs) without changing what it computes
    (:mod:`padt.training.grow`). It trains nothing, so it takes none of the recipe's shared sections: only
    ``grow`` and ``training.output_dir``."""

    grow: GrowSection
    training: OutputSection
    resume: Literal["auto", True, False] = "auto"

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", exclude_none=True), sort_keys=False)


# ------------------------------------------------------------------------------------------------ loading
_SCIENTIFIC = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


def _numbers(value: Any) -> Any:
    """YAML 1.1 reads ``1e-3`` (no dot) as a string; read such strings as floats."""
    if isinstance(value, dict):
        return {k: _numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    if isinstance(value, str) and _SCIENTIFIC.match(value.strip()):
        return float(value)
    return value


@cache
def _training_argument_types() -> dict[str, Any]:
    from transformers import TrainingArguments

    hints = typing.get_type_hints(TrainingArguments)
    return {f.name: hints[f.name] for f in dataclasses.fields(TrainingArguments) if f.init}


def _known_terms(weights: dict[str, float], known: Sequence[str]) -> dict[str, float]:
    """``weights`` if every key is a loss term of ``known``, else a ``ValueError`` naming the first that is not."""
    for name in weights:
        if name not in known:
            raise ValueError(f"unknown loss term {name!r}{_did_you_mean(name, known)}")
    return weights


def _did_you_mean(name: str, known: Any, prefix: str = "") -> str:
    known = [str(k) for k in known]
    close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.6)
    if close:
        return f"; did you mean {prefix + close[0]!r}?"
    return f"; known keys: {', '.join(known)}" if 0 < len(known) <= 12 else ""


def _first_message(error: ValidationError) -> str:
    first = error.errors()[0]
    return str(first.get("msg", "")).removeprefix("Value error, ")


_UNKNOWN_KEY = ("extra_forbidden", "unexpected_keyword_argument")


def _describe(error: ValidationError, root: type[BaseModel] | None = None) -> str:
    """One line for the first problem: the dotted key, then what is wrong. An unknown key comes first: it is
    usually the cause of the others (a typo'd required key is also reported missing)."""
    errors = error.errors()
    first = next((e for e in errors if e.get("type") in _UNKNOWN_KEY), errors[0])
    loc = [str(p) for p in first.get("loc", ())]
    msg = str(first.get("msg", "")).removeprefix("Value error, ")
    loc = [p for p in loc if p not in (_ONE, _MANY)]  # the tags of a one-or-many field are not keys
    key = "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in loc).lstrip(".")
    if first.get("type") in _UNKNOWN_KEY and loc:
        section = _section_fields(loc[:-1], root or TrainConfig)
        prefix = key[: len(key) - len(loc[-1])]  # the section, so the suggestion is a key one can paste
        return f"unknown key {key!r}{_did_you_mean(loc[-1], section, prefix)}"
    if first.get("type") == "missing":
        return f"{key} is required"
    if first.get("type") == "literal_error":
        return f"{key}: {msg}, got {first.get('input')!r}"
    if msg.startswith(("training.", "set training.", "needs ", "no training", "every component")) or not key:
        return msg
    if "got " in msg or "input" not in first:
        return f"{key}: {msg}"
    return f"{key}: {msg}, got {first.get('input')!r}"


def _section_fields(path: Sequence[str], root: type[BaseModel]) -> list[str]:
    model: Any = root
    for part in (p for p in path if not p.isdigit()):
        fields = _fields_of(model)
        if part not in fields:
            return []
        model = _model_in(fields[part])
    return list(_fields_of(model))


def _model_in(annotation: Any) -> Any:
    """The first class in a (possibly nested: optional, list, annotated, union) type annotation."""
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _fields_of(model: Any) -> dict[str, Any]:
    """Field name -> annotation of a pydantic model or dataclass (empty for anything else)."""
    if isinstance(model, type) and issubclass(model, BaseModel):
        return {name: f.annotation for name, f in model.model_fields.items()}
    if isinstance(model, type) and dataclasses.is_dataclass(model):
        hints = typing.get_type_hints(model)
        return {f.name: hints.get(f.name) for f in dataclasses.fields(model)}
    return {}


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b=3"`` -> ``(["a", "b"], 3)``; the value is parsed as YAML."""
    key, sep, value = text.partition("=")
    key = key.strip().lstrip("-")
    if not sep or not key:
        raise PaDTError(
            f"cannot read override {text!r}; write it as section.key=value, e.g. training.max_steps=100"
        )
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    return key.split("."), parsed


def set_override(raw: dict[str, Any], keys: Sequence[str], value: Any, item: str) -> None:
    """Set ``raw[k1][k2]...[kn] = value``, creating sections; ``item`` (the override's text) names a key that
    is not a section."""
    node = raw
    for k in keys[:-1]:
        if not isinstance(node.setdefault(k, {}), dict):
            raise PaDTError(f"override {item!r}: {k!r} is not a section")
        node = node[k]
    node[keys[-1]] = value


def validate_config(
    raw: Mapping[str, Any], where: str = "config", schema: type[_Section] = TrainConfig
) -> Any:
    """The typed config (a ``schema``: :class:`TrainConfig` or :class:`VisionStageConfig`), or a one-line
    :class:`PaDTError` naming the first problem."""
    try:
        return schema.model_validate(_numbers(dict(raw)))
    except ValidationError as error:
        raise PaDTError(f"{where}: {_describe(error, schema)}") from None


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file as a mapping, with ``extends: OTHER.yaml`` (relative to the file) merged under it."""
    if not path.is_file():
        raise PaDTError(f"config file not found: {path}; pass --config FILE.yaml (see configs/)")
    if path.resolve() in seen:
        raise PaDTError(
            f"{path}: 'extends' goes round in a circle ({' -> '.join(str(p) for p in (*seen, path))})"
        )
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise PaDTError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise PaDTError(f"{path}: the config must be a YAML mapping of sections {', '.join(SECTIONS)}")
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    if not isinstance(parent, str):
        raise PaDTError(f"{path}: extends must name one YAML file, got {parent!r}")
    return _merge(_read_yaml(path.parent / parent, (*seen, path.resolve())), raw)


def _merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        out[key] = (
            _merge(out[key], value)
            if isinstance(value, Mapping) and isinstance(out.get(key), dict)
            else value
        )
    return out


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> TrainConfig:
    """The config at ``path`` (and the file it ``extends``, if any) with ``overrides`` applied, validated."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        raw = _read_yaml(path)
    for item in overrides:
        keys, value = parse_override(item)
        set_override(raw, keys, value, item)
    return validate_config(raw, where=str(path) if path else "config")
