"""Typed configuration: ``params.yaml`` + ``PUMA_`` environment overrides, read in one place.

Everything that parses ``params.yaml`` goes through :func:`load_settings`. Sections mirror the
pipeline steps (``data``, ``model``, ``prompt``, ``stage1``, ``stage2``, ``mac``, ``runtime``,
``embed``, ``evaluate``, ``tracking``). Environment variables override nested keys with a double
underscore: ``PUMA_MODEL__PRUNE_LAYERS=6``, ``PUMA_MAC__LAMBDA=0.5``.

Mistakes fail early with :class:`ConfigError`, one line per problem naming the dotted key and where
it came from (``params.yaml:23`` or the environment variable)::

    params.yaml:23: model.prune_layers: must be <= model.depth (8), got 12
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from puma.config_base import Section as _Section
from puma.config_bench import BenchSettings

DEFAULT_PARAMS = Path("params.yaml")
ENV_PREFIX = "PUMA_"
ENV_DELIM = "__"


class ConfigError(ValueError):
    """A params file or an environment override is wrong; the message lists every problem."""


PositiveFloat = Field(gt=0)


class DataSettings(_Section):
    source: Literal["synth", "hub"] = "synth"
    root: Path = Path("data/mbeir")
    nli_path: Path = Path("data/nli/nli_for_simcse.csv")
    synth_seed: int = 0
    synth_scale: float = Field(1.0, gt=0)
    synth_eval_scale: float = Field(1.0, gt=0)
    nli_rows: int = Field(512, ge=8)
    download_images: bool = False
    download_splits: list[Literal["train", "val", "test"]] = ["test"]


# The embedded default's checkpoints: the random tiny Qwen2-VL (`tiny` stage) and the base the pipeline
# starts from, that model after `pretrain` (the stages write these paths; dvc.yaml names them too).
TINY_DIR = "artifacts/tiny"
PRETRAINED_DIR = "artifacts/pretrained"


class ModelSettings(_Section):
    base: str = PRETRAINED_DIR
    depth: int = Field(8, ge=1)
    prune_layers: int = Field(4, ge=1)
    ret_token: str = "[RET]"
    ret_init: str = "mean"
    ret_trainable: bool = True
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    tiny_seed: int = 0

    @field_validator("prune_layers")
    @classmethod
    def _k_within_depth(cls, k: int, info) -> int:
        depth = info.data.get("depth")
        if depth is not None and k > depth:
            raise ValueError(f"must be <= model.depth ({depth})")
        return k

    @field_validator("ret_init")
    @classmethod
    def _ret_init_form(cls, v: str) -> str:
        if v != "mean" and not (v.startswith("token:") and len(v) > len("token:")):
            raise ValueError("must be 'mean' or 'token:<text>'")
        return v


class PromptSettings(_Section):
    min_pixels: int = Field(4 * 28 * 28, ge=28 * 28)
    max_pixels: int = Field(300 * 28 * 28, ge=28 * 28)
    max_text_tokens: int = Field(450, ge=8)
    suffix: Literal["modality", "reference"] = "modality"

    @model_validator(mode="after")
    def _budget_order(self) -> PromptSettings:
        if self.max_pixels < self.min_pixels:
            raise ValueError(f"prompt.max_pixels ({self.max_pixels}) < prompt.min_pixels ({self.min_pixels})")
        return self


class _StageSettings(_Section):
    epochs: int = Field(2, ge=1)
    lr: float = Field(1e-4, gt=0)
    batch_size: int = Field(32, ge=2)  # in-batch negatives need at least two samples
    grad_accum: int = Field(1, ge=1)
    tau: float = Field(0.05, gt=0)
    lora_r: int = Field(8, ge=1)
    lora_alpha: float = Field(16, gt=0)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    max_steps: int = Field(-1, ge=-1)
    checkpoint_every: int = Field(50, ge=1)


class Stage1Settings(_StageSettings):
    enabled: bool = True  # false: no stage 1, stage 2 starts from the pruned model (Table 3's rows)
    dataset: str = "nli"  # a name in puma.data.stage1_datasets.STAGE1_DATASETS
    alpha_mode: Literal["fixed", "dynamic", "reverse"] = "dynamic"
    distill_kind: Literal["mse", "cos", "kl", "none"] = "mse"  # none: contrastive only (Table 10's none row)
    distill_scale: float = Field(1.0, ge=0)  # multiplies alpha2 (Eq. 4); the authors' released code: 0.05
    teacher: Literal["cache", "live"] = "cache"


class PretrainSettings(_Section):
    """The embedded tiny base's pretraining (puma.train.pretrain); nothing runs for a hub base."""

    steps: int = Field(1000, ge=0)  # 0: off, the base passes through unchanged
    batch_size: int = Field(32, ge=1)
    lr: float = Field(5e-3, gt=0)
    answer_weight: float = Field(4.0, ge=0)  # extra weight on the word after [RET]
    head_init: Literal["zero", "embeddings", "random"] = "zero"  # lm_head before pretraining (puma.train.pretrain)
    schedule: Literal["constant", "linear"] = "constant"  # after a 5% warm-up: constant, or linear decay to 0
    # The first token of a left-padded row is predicted from the padding before it (HF's shifted loss; the
    # shipped recipe) or not. The padding's state is exactly zero, so that term is a constant without gradient:
    # the option changes the logged loss and the LM mean's count only (docs/results/reproducibility.md).
    predict_from_padding: bool = True
    # The fixed prompt suffix between the content and [RET] ("Summarize above ... in one word: ...") is predicted
    # like any text (the shipped recipe) or not (false; docs/results/reproducibility.md).
    template_loss: bool = True
    # The first text_steps steps take text rows only (a text phase, as Qwen2-VL's language model was pretrained
    # before it saw pictures), the rest all rows (puma.train.pretrain.step_chunks).
    text_steps: int = Field(0, ge=0)
    # lm_head's learning rate as a fraction of lr for the first head_lr_steps steps, then lr
    # (puma.train.pretrain.head_param_groups)
    head_lr_scale: float = Field(1.0, gt=0)
    head_lr_steps: int = Field(0, ge=0)
    # the vision tower's learning rate as a fraction of lr, every step (puma.train.pretrain.head_param_groups)
    vision_lr_scale: float = Field(1.0, gt=0)
    # caption pairs (caption -> picture, picture -> caption) also give the captioned picture, whose caption's
    # next-token loss is captioning (puma.train.pretrain.caption_row)
    caption_rows: bool = False
    # the token after a picture's last token (<|vision_end|>) is predicted from that picture token (the shipped
    # recipe) or not (false; puma.train.pretrain.lm_labels)
    predict_after_picture: bool = True
    # a vision stage of vision_steps steps before the language steps: the tower learns to name its pictures'
    # attributes at vision_lr (the miniature of a CLIP-pretrained ViT; puma.train.vision_stage); 0 = off
    vision_steps: int = Field(0, ge=0)
    vision_lr: float = Field(2e-3, gt=0)
    # after the text phase, align_steps steps on the rows that are a picture alone in which only the vision tower
    # learns (at lr x align_lr_scale), the language model and its head frozen (puma.train.pretrain.pretrain_base)
    align_steps: int = Field(0, ge=0)
    align_lr_scale: float = Field(1.0, gt=0)
    # > 0: each language step also costs ground_weight x the grounding loss of its picture rows (a picture's
    # mean-pooled tokens score the words naming it against the input embeddings; puma.train.pretrain.ground_terms)
    ground_weight: float = Field(0.0, ge=0)
    weight_decay: float = Field(0.01, ge=0)  # AdamW's in the language steps
    seed: int = 0

    @model_validator(mode="after")
    def _text_phase_within(self) -> PretrainSettings:
        if 0 < self.steps < self.text_steps + self.align_steps:  # steps 0 (off) keeps any text_steps
            raise ValueError(f"pretrain.text_steps + align_steps ({self.text_steps} + {self.align_steps}) > "
                             f"pretrain.steps ({self.steps})")
        return self


class Stage2Settings(_StageSettings):
    tau: float = Field(0.03, gt=0)
    lora_dropout: float = Field(0.1, ge=0, lt=1)


class MacSettings(_Section):
    enabled: bool = True
    lambda_: float = Field(0.2, ge=0, alias="lambda")
    form: Literal["paper", "reference"] = "paper"
    reverse: bool = False


class RuntimeSettings(_Section):
    precision: Literal["no", "bf16", "fp16"] = "no"
    num_processes: int = Field(1, ge=1)
    launcher: Literal["torchrun", "accelerate"] = "torchrun"
    deepspeed: bool = False
    deepspeed_config: Path = Path("infra/deepspeed/zero2.json")
    gradient_checkpointing: bool = False
    num_workers: int = Field(0, ge=0)
    # Multi-node (torchrun's / accelerate's own c10d rendezvous): num_processes is per node.
    nnodes: int = Field(1, ge=1)
    node_rank: int = Field(0, ge=0)
    rdzv_endpoint: str = ""  # host:port of the rendezvous (node 0's address); required when nnodes > 1
    rdzv_id: str = "puma"  # the job id every node of one job shares

    @model_validator(mode="after")
    def _multi_node(self) -> RuntimeSettings:
        if self.node_rank >= self.nnodes:
            raise ValueError(f"node_rank {self.node_rank} must be < nnodes {self.nnodes}")
        if self.nnodes > 1 and ":" not in self.rdzv_endpoint:
            raise ValueError(f"nnodes {self.nnodes} > 1 needs rdzv_endpoint host:port, got {self.rdzv_endpoint!r}")
        return self

    @field_validator("precision", mode="before")
    @classmethod
    def _yaml11_no(cls, v: Any) -> Any:
        # `dvc exp run -S` rewrites params.yaml as YAML 1.2 and drops the quotes around "no", which
        # PyYAML (YAML 1.1) then reads as False: map it back to the string it was.
        return "no" if v is False else v


class EmbedSettings(_Section):
    batch_size: int = Field(64, ge=1)
    shard_size: int = Field(4096, ge=1)
    dtype: Literal["float16", "float32"] = "float16"


class EvaluateSettings(_Section):
    split: Literal["test", "val"] = "test"  # val: model selection without touching the test set
    instruction_seed: int = 0
    k_default: int = Field(5, ge=1)
    k_overrides: dict[str, int] = {"fashion200k_task0": 10, "fashion200k_task3": 10, "fashioniq_task7": 10}
    pools: list[Literal["local", "global"]] = ["local", "global"]
    top_k_saved: int = Field(50, ge=1)
    bootstrap_resamples: int = Field(1000, ge=1)  # ci_metrics.json: bootstrap over queries
    bootstrap_seed: int = 0
    ci_level: float = Field(0.95, gt=0, lt=1)

    def k_for(self, column: str) -> int:
        """Recall cut-off for a Table-1 column such as ``fashioniq_task7``."""
        return self.k_overrides.get(column, self.k_default)


class TrackingSettings(_Section):
    enabled: bool = True
    live: bool = True  # per-step MLflow logging from inside `puma train` (PUMA_TRACKING__LIVE=0: off)
    uri: str = "sqlite:///mlruns.db"
    artifact_location: str = "mlartifacts"
    experiment: str = "puma"
    model_name: str = "puma-retriever"


class Settings(BaseSettings):
    """All of params.yaml, typed. Build it with :func:`load_settings`, not directly."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter=ENV_DELIM, extra="forbid", populate_by_name=True
    )

    seed: int = 0
    data: DataSettings = DataSettings()
    model: ModelSettings = ModelSettings()
    prompt: PromptSettings = PromptSettings()
    pretrain: PretrainSettings = PretrainSettings()
    stage1: Stage1Settings = Stage1Settings()
    stage2: Stage2Settings = Stage2Settings()
    mac: MacSettings = MacSettings()
    runtime: RuntimeSettings = RuntimeSettings()
    embed: EmbedSettings = EmbedSettings()
    evaluate: EvaluateSettings = EvaluateSettings()
    tracking: TrackingSettings = TrackingSettings()
    bench: BenchSettings = BenchSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment beats the file (the file's values arrive as init kwargs).
        return (env_settings, init_settings)

    def flat(self) -> dict[str, Any]:
        """Dotted-key view of every value (for MLflow params and DVC-style diffs)."""
        out: dict[str, Any] = {}

        def walk(prefix: str, obj: Any) -> None:
            if isinstance(obj, dict):
                for key, val in obj.items():
                    walk(f"{prefix}.{key}" if prefix else str(key), val)
            else:
                out[prefix] = obj

        walk("", self.model_dump(mode="json", by_alias=True))
        return out


def _key_lines(text: str) -> dict[str, int]:
    """Map each dotted key of a YAML mapping to its 1-based line number."""
    lines: dict[str, int] = {}
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return lines

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, val_node in node.value:
                key = f"{prefix}.{key_node.value}" if prefix else str(key_node.value)
                lines[key] = key_node.start_mark.line + 1
                walk(val_node, key)

    walk(root, "")
    return lines


def _env_keys() -> dict[str, str]:
    """Dotted keys set through PUMA_ environment variables -> the variable's name."""
    keys = {}
    for name in os.environ:
        if name.upper().startswith(ENV_PREFIX):
            keys[name[len(ENV_PREFIX) :].lower().replace(ENV_DELIM, ".")] = name
    return keys


def _format_errors(err: ValidationError, path: Path, lines: dict[str, int]) -> str:
    env = _env_keys()
    msgs = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        if key in env:
            where = f"environment variable {env[key]}"
        else:
            # Point at the key's own line, else its nearest parent's, else the file.
            probe, line = key, None
            while probe and line is None:
                line = lines.get(probe)
                probe = probe.rpartition(".")[0]
            where = f"{path}:{line}" if line else str(path)
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (not in the schema; check the spelling)"
        elif "input" in e and e["type"] not in ("missing",):
            msg = f"{msg} (got {e['input']!r})"
        msgs.append(f"{where}: {key}: {msg}")
    return "invalid configuration:\n  " + "\n  ".join(msgs)


def load_settings(path: str | os.PathLike | None = None) -> Settings:
    """Load and validate ``params.yaml`` (default: ``$PUMA_PARAMS`` or ./params.yaml) plus env overrides.

    A missing file is an error unless no path was given and ./params.yaml does not exist, in which
    case the built-in defaults (the tiny embedded setup) are used.
    """
    explicit = path is not None or "PUMA_PARAMS" in os.environ
    path = Path(path if path is not None else os.environ.get("PUMA_PARAMS", DEFAULT_PARAMS))
    if path.exists():
        return settings_from_text(path.read_text(), path)
    if explicit:
        raise ConfigError(f"{path}: params file not found")
    return settings_from_text("", path)


def settings_from_text(text: str, path: str | os.PathLike = DEFAULT_PARAMS) -> Settings:
    """Validate params text as if it were the file ``path`` (errors name ``path:line``); env overrides apply."""
    path = Path(path)
    data: dict[str, Any] = {}
    lines: dict[str, int] = {}
    if text:
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark else str(path)
            raise ConfigError(f"{where}: not valid YAML: {getattr(e, 'problem', e)}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}:1: top level must be a mapping of sections, got {type(loaded).__name__}")
        data = loaded
        lines = _key_lines(text)
    # Drop the PUMA_PARAMS pointer itself so it is not read as a (unknown) setting.
    saved = os.environ.pop("PUMA_PARAMS", None)
    try:
        return Settings(**data)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, path, lines)) from None
    finally:
        if saved is not None:
            os.environ["PUMA_PARAMS"] = saved


# --- Profiles (puma/profiles.py): the YAML side of `puma config use`, kept here with the one YAML reader.


def read_overrides(path: str | os.PathLike) -> dict[str, Any]:
    """A profile file (nested YAML mapping of sections) as dotted ``key -> value`` overrides."""
    path = Path(path)
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}:1: a profile is a mapping of sections, got {type(loaded).__name__}")
    out: dict[str, Any] = {}

    def walk(prefix: str, obj: Any) -> None:
        # Mappings nest, except under keys whose value is itself a mapping (evaluate.k_overrides).
        if isinstance(obj, dict) and obj and prefix not in _MAPPING_VALUED:
            for key, val in obj.items():
                walk(f"{prefix}.{key}" if prefix else str(key), val)
        else:
            out[prefix] = obj

    walk("", loaded)
    return out


_MAPPING_VALUED = {"evaluate.k_overrides"}


def _yaml_scalar(value: Any) -> str:
    """One value in YAML flow style, as it would be written after ``key: `` (``"no"`` stays quoted).

    Small floats keep the file's ``1.0e-4`` style (PyYAML reads ``1e-4`` without the dot as a string).
    """
    if isinstance(value, float) and value and abs(value) < 1e-2:
        mantissa, exp = f"{value:e}".split("e")
        mantissa = mantissa.rstrip("0")
        return f"{mantissa}0e{int(exp)}" if mantissa.endswith(".") else f"{mantissa}e{int(exp)}"
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000, sort_keys=False).strip()
    return text.removesuffix("...").strip()


def _comment_column(text: str) -> int:
    """The most common column of comments that follow a value (params.yaml aligns them; 0: none)."""
    from collections import Counter

    cols = Counter()
    for line in text.splitlines():
        code, sep, _ = line.partition(" #")
        if sep and code.strip() and not code.lstrip().startswith("#"):
            cols[len(code) + 1] += 1
    return cols.most_common(1)[0][0] if cols else 0


def _replace_keeping_comment(text: str, start: int, end: int, new: str, column: int) -> str:
    """``text[start:end] = new``; a comment after the value on the same line goes back to ``column``."""
    gap_end = end
    while gap_end < len(text) and text[gap_end] == " ":
        gap_end += 1
    if gap_end < len(text) and text[gap_end] == "#" and gap_end > end:
        line_start = text.rfind("\n", 0, start) + 1
        pad = max(1, column - (start - line_start) - len(new))
        return text[:start] + new + " " * pad + text[gap_end:]
    return text[:start] + new + text[end:]


def edit_params_text(text: str, edits: dict[str, Any], path: str | os.PathLike = DEFAULT_PARAMS) -> str:
    """Set dotted keys of params text to new values in place, keeping every comment and the layout.

    Each value is replaced where it stands (its YAML node's span), so the comment beside it stays.
    A key the text does not have yet is an error naming it (a profile may only edit existing keys).
    """
    root = yaml.compose(text)
    spans: dict[str, tuple[int, int, Any]] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, val_node in node.value:
                key = f"{prefix}.{key_node.value}" if prefix else str(key_node.value)
                spans[key] = (val_node.start_mark.index, val_node.end_mark.index, val_node)
                if key not in _MAPPING_VALUED:
                    walk(val_node, key)

    walk(root, "")
    missing = sorted(k for k in edits if k not in spans)
    if missing:
        raise ConfigError(f"{path}: keys not in the file (add them first): {', '.join(missing)}")
    out, column = text, _comment_column(text)
    for key in sorted(edits, key=lambda k: spans[k][0], reverse=True):
        start, end, node = spans[key]
        if isinstance(node, yaml.MappingNode) and node.flow_style is not True:
            raise ConfigError(f"{path}:{node.start_mark.line + 1}: {key} is a block mapping; edit its keys instead")
        value = _yaml_scalar(edits[key])
        if value.startswith("'") and '"' not in value and "\\" not in value:
            value = '"' + value[1:-1].replace("''", "'") + '"'  # params.yaml quotes with "" ("no")
        out = _replace_keeping_comment(out, start, end, value, column)
    return out
