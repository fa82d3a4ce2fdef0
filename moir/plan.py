"""The experiment, in one place: from the validated config.yaml to every run, path and stage setting.

    plan = Plan(config)                      # config.yaml after the JSON schema (validate_config)
    plan.runs                                # run name -> Run (dataset, model, placement, method, k', seed)
    plan.evaluations                         # evaluation name "<run or base>/<mode>" -> Evaluation
    plan.train_settings(name).to_json()      # what `python -m moir.train --settings` receives
    plan.code_fingerprint("train", name)     # sha256 of the code that can change that run's output

The workflow (workflow/rules/*.smk) turns this into rules, and the report iterates the same grid (`Tables`), so
the grid, the run names and the output paths have one definition. Nothing here imports torch: Snakemake imports
this module while it plans the DAG.

Settings. Each stage receives its settings as one canonical JSON object (sorted keys, no NaN), built from a small
frozen dataclass below. A dataclass holds exactly the settings its stage's outputs depend on (an FT run carries no
router settings; a dataset's generation budget reaches its evaluations only), so a rule whose `params` hold that
JSON reruns exactly when one of them changes. The dataclasses have no defaults: config.yaml holds the experiment's
values; the router's library defaults live in `moir.router.RouterConfig` alone.

Code. `CODE` maps each stage to the source files that can change its outputs; `code_fingerprint` hashes their
normalised syntax tree (docstrings dropped; comments are not in the tree), so a comment or docstring edit reruns
nothing, an edit of the router reruns the MoIR runs and what follows them, and an edit of a metric reruns the
evaluations and the report, never training.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from moir.train.curriculum import Phase, format_phases, format_weights

REPO = Path(__file__).resolve().parents[1]

PLACEMENTS = ("attn", "mlp", "proj")
METHODS = ("ft", "moir")
CLEAN, NO_IMAGE, NOISE = "clean", "no-image", "noise"
DEFER_JUDGE = "defer"  # an evaluation's --judge when the rule `judge` scores its open-ended answers


class PlanError(ValueError):
    """The config describes no valid experiment; the message names the key."""


def canonical_json(value) -> str:
    """One text per value: sorted keys, no spaces, NaN and infinities refused."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


# ------------------------------------------------------------------------------------------------ stage settings


def omit_if_none():
    """A field left out of the JSON when it is None: the stage does not depend on it in this job (the rank
    layer of an evaluation without analysis, the noise seed of a clean one)."""
    return field(metadata={"omit_if_none": True})


@dataclass(frozen=True)
class Settings:
    """A stage's settings: serialised to canonical JSON, the one form in which a stage receives them."""

    def to_dict(self) -> dict:
        out = {}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if value is None and item.metadata.get("omit_if_none"):
                continue
            out[item.name] = value.to_dict() if isinstance(value, Settings) else value
        return out

    def to_json(self) -> str:
        return canonical_json(self.to_dict())


@dataclass(frozen=True)
class SynthImageSettings(Settings):
    seed: int
    pretrain: int
    train: int
    val: int
    test: int
    image_size: int
    hint_accuracy: float
    eval_hint_accuracy: float
    pretrain_hint_accuracy: float | str | None  # "chance": the hint tells nothing (moir.data.synthetic.CHANCE)
    choice_share: float
    fixed_choices: bool | None = omit_if_none()  # None when false: the settings of data made before the option
    pretrain_question_weights: str | None = omit_if_none()  # "type=weight,...", sorted (None: uniform)


@dataclass(frozen=True)
class SynthVideoSettings(Settings):
    seed: int
    pretrain: int
    train: int
    val: int
    test: int
    frames: int
    frame_size: int
    fps: int
    silent_share: float
    tone_share: float
    hint_accuracy: float
    eval_hint_accuracy: float
    pretrain_hint_accuracy: float | str | None  # "chance": the hint tells nothing (moir.data.synthetic.CHANCE)
    choice_share: float
    fixed_choices: bool | None = omit_if_none()  # None when false: the settings of data made before the option
    pretrain_question_weights: str | None = omit_if_none()  # "type=weight,...", sorted (None: uniform)
    background: str | None = omit_if_none()  # None when plain: the settings of data made before the option


@dataclass(frozen=True)
class ConvertSettings(Settings):
    """A benchmark that ships one split (MMBench-Video) is split by video, seeded; the others have no settings."""

    seed: int | None = omit_if_none()
    val_fraction: float | None = omit_if_none()
    test_fraction: float | None = omit_if_none()


@dataclass(frozen=True)
class ExtractSettings(Settings):
    num_frames: int | None
    fps: float | None
    max_frames: int | None
    image_format: str
    jpeg_quality: int
    max_bad_share: float


@dataclass(frozen=True)
class TranscribeSettings(Settings):
    model: str
    revision: str
    language: str | None
    batch_size: int
    device: str
    hub_name: str | None = omit_if_none()  # the model's entry in its lock file (fetch_models)


@dataclass(frozen=True)
class FetchSettings(Settings):
    """One hub model fetched into the shared cache and locked (rule fetch_models)."""

    name: str
    hub_id: str
    revision: str


@dataclass(frozen=True)
class TowerCheckSettings(Settings):
    """Whether `name`'s vision tower is byte-identical to `reference`'s (rule vision_tower_check)."""

    name: str
    reference: str


@dataclass(frozen=True)
class JudgeSettings(Settings):
    """The judge of an evaluation's open-ended predictions (rule judge): moir.evaluate.judge_stage's options."""

    judge: str
    judge_model: str
    workers: int
    max_retries: int
    backoff_s: float
    max_backoff_s: float
    max_failed_share: float
    judge_correct_threshold: int
    judge_url: str | None = omit_if_none()
    judge_api_key_env: str | None = omit_if_none()
    hub_name: str | None = omit_if_none()


@dataclass(frozen=True)
class EncoderCacheSettings(Settings):
    model: str  # a hub id, or the directory of a base the pipeline pretrained
    revision: str | None
    shard_size: int | None
    batch_size: int
    dtype: str
    device: str
    shard_bytes: int | None = omit_if_none()
    pixel_budget: dict | None = omit_if_none()  # Qwen2.5-VL: part of the encoder signature
    hub_name: str | None = omit_if_none()


@dataclass(frozen=True)
class PretrainSettings(Settings):
    name: str  # the tiny architecture
    seed: int
    epochs: int
    lr: float
    weight_decay: float
    batch_size: int
    grad_accum: int
    max_grad_norm: float
    max_length: int
    limit: int | None
    checkpoint_every: int
    device: str
    text_layers: int | None = omit_if_none()  # models.<model>.text_layers (None: moir.models.tiny's default)
    lr_schedule: str | None = omit_if_none()  # pretrain.lr_schedule: None = "constant" (the JSON stays as it was)
    warmup_steps: int | None = omit_if_none()  # pretrain.warmup_steps: None = 0
    phases: str | None = omit_if_none()  # models.<model>.pretrain_phases (moir.train.curriculum.format_phases)


@dataclass(frozen=True)
class RouterSettings(Settings):
    """moir.router.RouterConfig's fields, k' (`ratio`) included: a MoIR run's router, as a float, never a name."""

    ratio: float
    rank: int | None
    center: bool
    scope: str
    align: str
    rms_match: bool
    directions: str
    gate_init: float
    gate_lr_scale: float


@dataclass(frozen=True)
class TrainSettings(Settings):
    model: str
    revision: str | None
    placement: str
    method: str
    router: RouterSettings | None  # None for an FT run: no router setting reruns it
    seed: int
    epochs: int
    lr: float
    weight_decay: float
    batch_size: int
    grad_accum: int
    max_grad_norm: float
    plateau_factor: float
    plateau_patience: int
    max_length: int
    gradient_checkpointing: bool
    checkpoint_every: int
    train_limit: int | None
    val_limit: int | None
    lora_r: int
    lora_alpha: float
    lora_dropout: float
    device: str
    keep: str | None = omit_if_none()  # which weights a run writes: None = "last" (the JSON stays as it was)
    group_by_length: bool | None = omit_if_none()  # None when false: a random-order run's settings as before
    checkpoint_every_n_layers: int | None = omit_if_none()  # with gradient checkpointing only
    pixel_budget: dict | None = omit_if_none()
    transcript_max_tokens: int | None = omit_if_none()  # datasets with transcripts only
    hub_name: str | None = omit_if_none()
    keep_ratio: float | None = omit_if_none()  # Table 5's visual-token compression arms only


@dataclass(frozen=True)
class EvaluateSettings(Settings):
    model: str
    revision: str | None
    run_name: str
    mode: str
    batch_size: int
    limit: int | None
    max_new_tokens: int
    rank_layer: int | None = omit_if_none()  # clean mode (the analysis) only
    noise_seed: int | None = omit_if_none()  # noise mode only
    judge: str | None = omit_if_none()  # datasets with free-form answers only
    judge_url: str | None = omit_if_none()
    judge_model: str | None = omit_if_none()
    judge_api_key_env: str | None = omit_if_none()
    judge_correct_threshold: int | None = omit_if_none()
    judge_max_failed_share: float | None = omit_if_none()
    device: str
    pixel_budget: dict | None = omit_if_none()
    transcript_max_tokens: int | None = omit_if_none()
    hub_name: str | None = omit_if_none()
    keep_ratio: float | None = omit_if_none()  # visual-token compression (a Table 5 arm, a compressed base)
    router_effect_limit: int | None = omit_if_none()  # a MoIR run's clean evaluation: router on/off on N examples


@dataclass(frozen=True)
class ReportSettings(Settings):
    """The layout of the tables and the files the report reads, as the workflow declared them."""

    tables: dict  # Tables.to_dict()
    seeds: list[int]
    modality: dict[str, str]
    evaluations: dict[str, str]  # "<run>/<mode>" -> metrics.json
    gates: dict[str, str]  # MoIR run -> train_metrics.jsonl
    reference_tables: str | None
    reference_robustness: str | None
    # "<run>/clean" -> predictions.parquet: the per-question correctness that the paired comparisons (FT vs MoIR)
    # resample; empty: no comparisons are made (a report built from metrics alone)
    predictions: dict[str, str] = field(default_factory=dict)
    # Table 5: run -> train_metrics.jsonl of its arms (the time per training step); None (left out) without it
    train_metrics: dict[str, str] | None = field(default=None, metadata={"omit_if_none": True})


# ------------------------------------------------------------------------------------------------ the grid


def format_ratio(ratio: float) -> str:
    """k' as it appears in run names (`%g`: 0.1, 0.05, 0.15)."""
    return f"{ratio:g}"


@dataclass(frozen=True)
class Arm:
    """One row of a table: a (dataset, model, placement) setting trained by one method at one k'.

    A later arm (a gate learning rate, a token-compression arm, a router option) is one more entry: `variant`
    holds its name part and `overrides` the settings it changes ((key, value) pairs of TrainSettings, or of
    RouterSettings as "router.<key>")."""

    dataset: str
    model: str
    placement: str
    method: str
    ratio: float | None  # k' of a MoIR arm
    variant: str = ""
    overrides: tuple[tuple[str, object], ...] = ()

    @property
    def label(self) -> str:
        arm = "ft" if self.method == "ft" else f"moir-k{format_ratio(self.ratio)}"
        return arm + (f"+{self.variant}" if self.variant else "")

    @property
    def keep_ratio(self) -> float | None:
        """The visual-token keep ratio of a compression arm (Table 5), None for all tokens."""
        return dict(self.overrides).get("keep_ratio")

    def run(self, seed: int) -> Run:
        return Run(self, seed)


@dataclass(frozen=True)
class Run:
    """One training run of the grid: an arm at one seed."""

    arm: Arm
    seed: int

    @property
    def name(self) -> str:
        a = self.arm
        return f"{a.dataset}__{a.model}__{a.placement}__{a.label}__seed{self.seed}"

    @property
    def dataset(self) -> str:
        return self.arm.dataset

    @property
    def model(self) -> str:
        return self.arm.model

    @property
    def placement(self) -> str:
        return self.arm.placement

    @property
    def method(self) -> str:
        return self.arm.method

    @property
    def ratio(self) -> float | None:
        return self.arm.ratio


@dataclass(frozen=True)
class Tables:
    """The paper's Tables 1-3 as arms: what runs, and what the report lays out."""

    pairs: tuple[tuple[str, str], ...]
    placements: tuple[str, ...]
    ratio: float
    table2: tuple[str, str, str]
    table3: tuple[str, str, str]
    ratios: tuple[float, ...]
    table4: tuple[str, str, str] | None = None  # the design-choice ablation (optional): dataset, model, placement
    variants: tuple[str, ...] = ()  # names of VARIANTS
    gate_lr_scale: float | None = None  # the `gate-lr` variant's router.gate_lr_scale
    table5: tuple[str, str, str] | None = None  # visual-token compression (optional): dataset, model, placement
    keep_ratios: tuple[float, ...] = ()

    @classmethod
    def from_config(cls, suite: Mapping) -> Tables:
        t1, t2, t3, t4 = suite["table1"], suite["table2"], suite["table3"], suite.get("table4")
        return cls(
            pairs=tuple((pair["dataset"], pair["model"]) for pair in t1["pairs"]),
            placements=tuple(t1["placements"]),
            ratio=float(t1["ratio"]),
            table2=(t2["dataset"], t2["model"], t2["placement"]),
            table3=(t3["dataset"], t3["model"], t3["placement"]),
            ratios=tuple(float(ratio) for ratio in t3["ratios"]),
            table4=(t4["dataset"], t4["model"], t4["placement"]) if t4 else None,
            variants=tuple(t4["variants"]) if t4 else (),
            gate_lr_scale=float(t4["gate_lr_scale"]) if t4 and "gate-lr" in t4["variants"] else None,
            table5=(suite["table5"]["dataset"], suite["table5"]["model"], suite["table5"]["placement"])
            if "table5" in suite else None,
            keep_ratios=tuple(float(r) for r in suite["table5"]["keep_ratios"]) if "table5" in suite else (),
        )

    @classmethod
    def from_dict(cls, value: Mapping) -> Tables:
        return cls(
            pairs=tuple(tuple(pair) for pair in value["pairs"]),
            placements=tuple(value["placements"]),
            ratio=float(value["ratio"]),
            table2=tuple(value["table2"]),
            table3=tuple(value["table3"]),
            ratios=tuple(float(ratio) for ratio in value["ratios"]),
            table4=tuple(value["table4"]) if value.get("table4") else None,
            variants=tuple(value.get("variants", ())),
            gate_lr_scale=value.get("gate_lr_scale"),
            table5=tuple(value["table5"]) if value.get("table5") else None,
            keep_ratios=tuple(float(r) for r in value.get("keep_ratios", ())),
        )

    def to_dict(self) -> dict:
        out = {"pairs": [list(pair) for pair in self.pairs], "placements": list(self.placements),
               "ratio": self.ratio, "table2": list(self.table2), "table3": list(self.table3),
               "ratios": list(self.ratios)}
        if self.table4 is not None:  # only when configured: a suite without Table 4 keeps its report's settings
            out.update(table4=list(self.table4), variants=list(self.variants), gate_lr_scale=self.gate_lr_scale)
        if self.table5 is not None:  # likewise for Table 5
            out.update(table5=list(self.table5), keep_ratios=list(self.keep_ratios))
        return out

    def table1(self) -> list[Arm]:
        return [
            arm
            for dataset, model in self.pairs
            for placement in self.placements
            for arm in (Arm(dataset, model, placement, "ft", None), Arm(dataset, model, placement, "moir", self.ratio))
        ]

    def table2_arms(self) -> list[Arm]:
        dataset, model, placement = self.table2
        return [Arm(dataset, model, placement, "ft", None), Arm(dataset, model, placement, "moir", self.ratio)]

    def table3_arms(self) -> list[Arm]:
        dataset, model, placement = self.table3
        return [Arm(dataset, model, placement, "moir", ratio) for ratio in self.ratios]

    def table4_arms(self) -> list[Arm]:
        """FT, then one MoIR arm at Table 1's k' per variant (`VARIANTS`), at Table 4's setting; none without it.
        The `default` variant is the plain MoIR arm (the run Table 1 has at that setting)."""
        if self.table4 is None:
            return []
        dataset, model, placement = self.table4
        arms = [Arm(dataset, model, placement, "ft", None)]
        for variant in self.variants:
            overrides = VARIANTS[variant]
            if variant == "gate-lr":
                overrides = (("router.gate_lr_scale", self.gate_lr_scale),)
            arms.append(Arm(dataset, model, placement, "moir", self.ratio, "" if variant == "default" else variant,
                            overrides))
        return arms

    def table5_arms(self) -> list[Arm]:
        """Visual-token compression (moir.compression) at Table 5's setting: FT and MoIR (Table 1's k') without
        compression, then per keep ratio FT and MoIR trained with it (the variant `keep<r>`); none without it.
        The training-free arm (the base model with compression) is an evaluation, not a run (`Plan`)."""
        if self.table5 is None:
            return []
        dataset, model, placement = self.table5
        arms = [Arm(dataset, model, placement, "ft", None), Arm(dataset, model, placement, "moir", self.ratio)]
        for keep in self.keep_ratios:
            overrides = (("keep_ratio", keep),)
            arms += [Arm(dataset, model, placement, "ft", None, keep_variant(keep), overrides),
                     Arm(dataset, model, placement, "moir", self.ratio, keep_variant(keep), overrides)]
        return arms

    def arms(self) -> list[tuple[Arm, frozenset[str]]]:
        """Every arm of the tables with the evaluations it gets (Table 2's also get the noise evaluation)."""
        return ([(arm, frozenset({CLEAN})) for arm in self.table1()]
                + [(arm, frozenset({CLEAN, NOISE})) for arm in self.table2_arms()]
                + [(arm, frozenset({CLEAN})) for arm in self.table3_arms()]
                + [(arm, frozenset({CLEAN})) for arm in self.table4_arms()]
                + [(arm, frozenset({CLEAN})) for arm in self.table5_arms()])


def keep_variant(keep_ratio: float) -> str:
    """A compression arm's name part: `keep0.25` (the ratio as k' prints: `%g`)."""
    return f"keep{format_ratio(keep_ratio)}"


# Table 4: the design choices the paper leaves open, each a MoIR arm against FT (router overrides on top of the
# config's `router`). `gate-lr` takes its scale from `table4.gate_lr_scale`.
VARIANTS: dict[str, tuple[tuple[str, object], ...]] = {
    "paper-literal": (("router.rms_match", False), ("router.scope", "batch")),  # no RMS matching, batch scores
    "default": (),  # the config's router as it is
    "attend": (("router.align", "attend"),),  # similarity routing instead of the pooled source
    "gate-lr": (),  # router.gate_lr_scale = table4.gate_lr_scale
}


def check_ratio_names(ratios: Iterable[float], where: str) -> None:
    """Two different k' that print the same in a run name would silently share one run: refuse them."""
    seen: dict[str, float] = {}
    for ratio in ratios:
        text = format_ratio(ratio)
        if text in seen and seen[text] != ratio:
            raise PlanError(f"config: {where}: k' values {seen[text]!r} and {ratio!r} both name runs 'moir-k{text}';"
                            " use values that differ in their first 6 significant digits")
        seen[text] = ratio


@dataclass(frozen=True)
class Evaluation:
    """One evaluation job: a run's (or a base model's) evaluation in one mode."""

    name: str  # a run name, or "<dataset>__<model>__base"
    mode: str  # clean | no-image | noise
    dataset: str
    model: str
    run: Run | None  # None for the base model
    keep_ratio: float | None = None  # visual-token compression: a run's arm's, or a compressed base's (Table 5)

    @property
    def key(self) -> str:
        return f"{self.name}/{self.mode}"


# ------------------------------------------------------------------------------------------------ code


# The source files each stage's outputs depend on (a directory: every .py file in it). Reviewed by hand: a module
# belongs here when editing it can change what the stage writes. tests/test_workflow.py walks each stage's
# imports and fails on a module of the package that is neither here nor in its NOT_OUTPUT list.
_DATA = ("moir/data/manifest.py", "moir/storage.py", "moir/runtime.py")
_MEDIA_READ = ("moir/media/pixels.py", "moir/media/frames.py", "moir/media/audio.py", "moir/media/images.py")
_MODELS = ("moir/models", "moir/compression.py", "moir/data/manifest.py", "moir/storage.py",
           "moir/runtime.py") + _MEDIA_READ
_EXAMPLES = ("moir/dataset.py", "moir/prompts.py", "moir/media/transcripts.py", "moir/media/transcript_cap.py",
             "moir/encoder_cache/cache.py")
CODE: dict[str, tuple[str, ...]] = {
    "synthesize": ("moir/data/__main__.py", "moir/data/synthetic.py", "moir/train/curriculum.py") + _DATA,
    "download": ("moir/data/__main__.py", "moir/data/download.py") + _DATA,
    "convert": ("moir/data/__main__.py", "moir/data/scienceqa.py", "moir/data/vizwiz.py",
                "moir/data/mmbench_video.py", "moir/data/safe_pickle.py", "moir/data/download.py") + _DATA,
    "extract": ("moir/media/__main__.py", "moir/media/extract.py", "moir/media/frames.py", "moir/media/audio.py",
                "moir/media/images.py") + _DATA,
    "transcribe": ("moir/media/__main__.py", "moir/media/transcripts.py", "moir/media/audio.py", "moir/media/images.py",
                   "moir/models/fetch.py") + _DATA,
    "encoder_cache": ("moir/encoder_cache",) + _MODELS,
    # pretraining builds the tiny model from the synthetic benchmark's vocabulary; it attaches no router
    "pretrain": ("moir/train/pretrain.py", "moir/train/curriculum.py", "moir/train/loop.py", "moir/batching.py",
                 "moir/data/synthetic.py") + _EXAMPLES + _MODELS,
    "train": ("moir/train/__main__.py", "moir/train/finetune.py", "moir/train/loop.py", "moir/batching.py")
    + _EXAMPLES + _MODELS,
    "evaluate": ("moir/evaluate", "moir/metrics", "moir/train/loop.py", "moir/batching.py")
    + _EXAMPLES + _MODELS,
    "report": ("moir/report", "moir/plan.py", "moir/storage.py", "moir/runtime.py",
               "moir/metrics", "moir/prompts.py"),  # breakdowns (intervals), stats (comparisons): moir.metrics
    "fetch": ("moir/models/fetch.py", "moir/storage.py"),
    "towers": ("moir/models/towers.py", "moir/models/fetch.py", "moir/storage.py", "moir/runtime.py"),
    # the judge stage scores with the evaluation's code (its reply cache makes a rerun cost no new calls)
    "judge": ("moir/evaluate", "moir/metrics", "moir/train/loop.py", "moir/batching.py") + _EXAMPLES + _MODELS,
}
# The router changes the output of the MoIR runs and of their evaluations only.
ROUTER_CODE = ("moir/router.py",)


def code_files(stage: str, *, router: bool = False) -> list[str]:
    """The files of CODE[stage] (and the router's), directories expanded, sorted."""
    files = set()
    for entry in CODE[stage] + (ROUTER_CODE if router else ()):
        path = REPO / entry
        if path.is_dir():
            files.update(str(p.relative_to(REPO)) for p in path.rglob("*.py"))
        elif path.is_file():
            files.add(entry)
        else:
            raise PlanError(f"moir/plan.py: CODE[{stage!r}] names {entry}, which does not exist")
    return sorted(files)


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


@functools.cache
def source_digest(path: str) -> str:
    """sha256 of a file's syntax tree without docstrings (comments and layout are not in the tree)."""
    file = REPO / path
    try:
        tree = ast.parse(file.read_text(), filename=str(file))
    except SyntaxError as error:
        raise PlanError(f"{path}: not valid Python ({error})") from error
    return hashlib.sha256(ast.dump(_strip_docstrings(tree), include_attributes=False).encode()).hexdigest()


@functools.cache
def code_fingerprint(stage: str, *, router: bool = False) -> str:
    """One sha256 over the normalised code of a stage: a job's `params` carry it, so that a change to that code
    (and only to it) reruns the job."""
    digest = hashlib.sha256()
    for path in code_files(stage, router=router):
        digest.update(f"{path}\0{source_digest(path)}\n".encode())
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------------ config


def coerce_command_line(config: dict) -> None:
    """`--config seeds=1` gives an int and `--config 'seeds=[0,1]'` a list of strings: make both a list of ints
    (anything else is left for the schema to report)."""
    seeds = config.get("seeds")
    if isinstance(seeds, (int, str)) and not isinstance(seeds, bool):
        seeds = [seeds]
    if isinstance(seeds, list):
        coerced = []
        for seed in seeds:
            if isinstance(seed, str) and seed.strip().isdigit():
                seed = int(seed.strip())
            coerced.append(seed)
        config["seeds"] = coerced


def check_values(value, where: str = "config") -> None:
    """What the JSON schema lets through: NaN passes every comparison (each is false), infinity passes
    `minimum`, and a pattern's `$` also matches before a final newline. Refuse non-finite numbers and strings
    with control characters (newlines included) anywhere, naming the key."""
    if isinstance(value, float) and not math.isfinite(value):
        raise PlanError(f"{where}: {value!r} is not a finite number")
    if isinstance(value, str) and any(ord(char) < 32 or ord(char) == 127 for char in value):
        raise PlanError(f"{where}: {value!r} contains a control character (a newline?)")
    if isinstance(value, Mapping):
        for key, item in value.items():
            check_values(item, f"{where}.{key}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            check_values(item, f"{where}[{index}]")


def validate_config(config: dict, schema_path: str | Path) -> None:
    """The JSON schema, then what it cannot say. A PlanError names the key and the problem, and only those."""
    import jsonschema  # noqa: PLC0415  (Snakemake's dependency; imported where it is used)
    import yaml  # noqa: PLC0415

    coerce_command_line(config)
    check_values(config)
    schema = yaml.safe_load(Path(schema_path).read_text())
    validator = jsonschema.Draft202012Validator(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(config))
    if error is not None:
        where = "config" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
        message = error.message
        if error.validator in ("oneOf", "anyOf", "not", "if", "allOf"):
            message = f"does not match the schema ({error.schema.get('description', error.validator)})"
        elif error.validator == "pattern":
            message = f"{error.instance!r} does not match {error.validator_value!r}"
        raise PlanError(f"{where}: {message}")
    check_references(config)


def check_references(config: Mapping) -> None:
    """Names that must refer to entries elsewhere in the config; k' values that would share a run name."""
    for suite, sc in config["suites"].items():
        where = f"suites.{suite}"
        datasets, models = sc["datasets"], sc["models"]

        def need(kind, names, value, key):
            if value not in names:
                raise PlanError(f"config: {key}: {value!r} is not one of {where}.{kind} ({', '.join(names)})")

        for index, pair in enumerate(sc["table1"]["pairs"]):
            need("datasets", datasets, pair["dataset"], f"{where}.table1.pairs[{index}].dataset")
            need("models", models, pair["model"], f"{where}.table1.pairs[{index}].model")
        for table in ("table2", "table3"):
            need("datasets", datasets, sc[table]["dataset"], f"{where}.{table}.dataset")
            need("models", models, sc[table]["model"], f"{where}.{table}.model")
        synthetic = [name for name, spec in datasets.items() if spec["source"] == "synthetic"]
        for name, spec in models.items():
            for index, dataset in enumerate(spec.get("pretrain_datasets", [])):
                need("datasets (synthetic)", synthetic, dataset, f"{where}.models.{name}.pretrain_datasets[{index}]")
        if any(spec["source"] == "pretrain" for spec in models.values()) and "pretrain" not in sc:
            raise PlanError(f"config: {where}.pretrain is required: a model of {where}.models has source: pretrain")
        for block in ("train", "pretrain"):
            if block in sc and sc[block]["batch_size"] % sc[block]["grad_accum"]:
                raise PlanError(
                    f"config: {where}.{block}.grad_accum ({sc[block]['grad_accum']}) must divide "
                    f"{where}.{block}.batch_size ({sc[block]['batch_size']})"
                )
        check_ratio_names([sc["table1"]["ratio"], *sc["table3"]["ratios"]], f"{where}.table1.ratio/table3.ratios")
        check_split_roles(datasets, where)
        if "table4" in sc:
            need("datasets", datasets, sc["table4"]["dataset"], f"{where}.table4.dataset")
            need("models", models, sc["table4"]["model"], f"{where}.table4.model")
            if "gate-lr" in sc["table4"]["variants"] and "gate_lr_scale" not in sc["table4"]:
                raise PlanError(f"config: {where}.table4.gate_lr_scale is required by the variant 'gate-lr'")
        if "table5" in sc:
            check_table5(sc["table5"], datasets, models, f"{where}.table5")
        for name, spec in models.items():
            check_pixel_budget(spec, f"{where}.models.{name}")


def check_table5(table5: Mapping, datasets: Mapping, models: Mapping, where: str) -> None:
    """Table 5 (visual-token compression): known dataset and model, keep ratios in (0, 1] that name distinct runs."""
    for kind, names in (("dataset", datasets), ("model", models)):
        if table5[kind] not in names:
            raise PlanError(f"config: {where}.{kind}: {table5[kind]!r} is not one of the suite's {kind}s "
                            f"({', '.join(names)})")
    seen: dict[str, float] = {}
    for index, ratio in enumerate(table5["keep_ratios"]):
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio) \
                or not 0 < ratio <= 1:
            raise PlanError(f"config: {where}.keep_ratios[{index}]: {ratio!r} is not a keep ratio in (0, 1]")
        name = keep_variant(float(ratio))
        if name in seen:
            raise PlanError(f"config: {where}.keep_ratios[{index}]: {ratio!r} names the runs '{name}' as "
                            f"{seen[name]!r} does; give distinct ratios")
        seen[name] = ratio


def check_split_roles(datasets: Mapping, where: str) -> None:
    """The validation split (read by the plateau scheduler) and the training split must share no example with
    the evaluation split. Within a dataset, different splits share none (the converters make them so: the
    official splits; MMBench-Video's split by video; VizWiz's val_heldout, cut from train), so two roles share
    examples exactly when they name the same split: refuse that, naming the key."""
    for name, spec in datasets.items():
        splits = spec["splits"]
        for role in ("val", "train"):
            if splits[role] == splits["eval"]:
                raise PlanError(
                    f"config: {where}.datasets.{name}.splits: {role} and eval are both {splits['eval']!r}: the "
                    f"{'validation loss would tune training on' if role == 'val' else 'run would train on'} the "
                    "evaluation examples; give them different splits (VizWiz: val: val_heldout)")



def check_pixel_budget(spec: Mapping, where: str) -> None:
    """A pixel budget belongs to a Qwen2.5-VL model, and each minimum is at most its maximum."""
    budget = spec.get("pixel_budget")
    if budget is None:
        return
    qwen = spec.get("architecture") == "tiny-qwen2.5-vl" or "qwen2.5-vl" in spec.get("hub_id", "").lower()
    if not qwen:
        raise PlanError(f"config: {where}.pixel_budget: only Qwen2.5-VL models take a pixel budget")
    for kind in ("image", "video"):
        low, high = budget[f"{kind}_min_pixels"], budget[f"{kind}_max_pixels"]
        if low > high:
            raise PlanError(f"config: {where}.pixel_budget: {kind}_min_pixels ({low}) > {kind}_max_pixels ({high})")


# ------------------------------------------------------------------------------------------------ the plan


class Plan:
    """The selected suite of a validated config: its runs, evaluations, paths and stage settings."""

    def __init__(self, config: Mapping):
        self.config = config
        self.suite = config["suite"]
        self.sc = config["suites"][self.suite]
        # the command line's (or the top level's) seeds, else the suite's own (the study's three), else seed 0
        seeds = config["seeds"] if config.get("seeds") is not None else self.sc.get("seeds", [0])
        self.seeds = sorted(set(seeds))
        self.results = f"results/{self.suite}"
        self.logs = f"logs/{self.suite}"
        self.benchmarks = f"benchmarks/out/{self.suite}"
        self.tables = Tables.from_config(self.sc)
        self.runs: dict[str, Run] = {}
        self.run_evaluations: dict[str, set[str]] = {}
        for arm, modes in self.tables.arms():  # a run that several tables share is trained once
            for seed in self.seeds:
                run = arm.run(seed)
                self.runs.setdefault(run.name, run)
                self.run_evaluations.setdefault(run.name, set()).update(modes)
        # The base model of each (dataset, model) is evaluated too: its effective ranks are what the runs' rank
        # deltas subtract, and its answers without media define the vision split of the robustness evaluation.
        self.bases = {self.base_name(run): (run.dataset, run.model) for run in self.runs.values()}
        self.evaluations: dict[str, Evaluation] = {}
        for name, (dataset, model) in self.bases.items():
            self._add(Evaluation(name, CLEAN, dataset, model, None))
        for name, run in self.runs.items():
            for mode in sorted(self.run_evaluations[name]):
                self._add(Evaluation(name, mode, run.dataset, run.model, run, run.arm.keep_ratio))
                if mode == NOISE:
                    self._add(Evaluation(self.base_name(run), NO_IMAGE, run.dataset, run.model, None))
        if self.tables.table5 is not None:  # Table 5's training-free arm: the base model with compression
            dataset, model, _ = self.tables.table5
            for keep in self.tables.keep_ratios:
                self._add(Evaluation(self.compressed_base_name(dataset, model, keep), CLEAN, dataset, model, None,
                                     keep))

    def _add(self, evaluation: Evaluation) -> None:
        self.evaluations.setdefault(evaluation.key, evaluation)

    @staticmethod
    def base_name(run: Run) -> str:
        return f"{run.dataset}__{run.model}__base"

    @staticmethod
    def compressed_base_name(dataset: str, model: str, keep_ratio: float) -> str:
        """The evaluation name of the base model with visual-token compression (Table 5's training-free arm)."""
        return f"{dataset}__{model}__base+{keep_variant(keep_ratio)}"

    def run(self, name: str) -> Run:
        if name not in self.runs:
            raise PlanError(f"run {name!r} is not in the grid of suite {self.suite!r}; the grid: "
                            + ", ".join(self.runs))
        return self.runs[name]

    # -------------------------------------------------------------------------------------- datasets, models

    def dataset(self, name: str) -> Mapping:
        return self.sc["datasets"][name]

    def datasets_from(self, source: str) -> list[str]:
        return [name for name, spec in self.sc["datasets"].items() if spec["source"] == source]

    def is_video(self, dataset: str) -> bool:
        return self.dataset(dataset)["media"] == "video"

    def uses_transcripts(self, dataset: str) -> bool:
        return self.dataset(dataset)["audio"] == "transcript"

    def split(self, dataset: str, role: str) -> str:
        """The split of `dataset` that plays `role` (train, val or eval)."""
        return self.dataset(dataset)["splits"][role]

    def encoder(self, model: str) -> str:
        """The model's vision encoder in cache paths: models with the same frozen tower share a cache. A hub model
        that names the encoder of an earlier hub model gets a cache of its own name, which its dump fills by
        linking the earlier model's cache when the fetched towers are byte-identical (`reuses_encoder_of`)."""
        if self.reuses_encoder_of(model) is not None:
            return model
        return self.sc["models"][model].get("encoder", model)

    def reuses_encoder_of(self, model: str) -> str | None:
        """The earlier hub model (config order) whose `encoder` this hub model names: its tower is compared on the
        fetched weights (rule vision_tower_check) before its cache is reused. None otherwise."""
        models = self.sc["models"]
        spec = models[model]
        if spec["source"] != "hub" or "encoder" not in spec:
            return None
        first = next(name for name, other in models.items() if other.get("encoder") == spec["encoder"])
        return first if first != model and models[first]["source"] == "hub" else None

    def encoder_model(self, encoder: str) -> str:
        """The model whose tower dumps the cache of `encoder` (the first in config order)."""
        return next(model for model in self.sc["models"] if self.encoder(model) == encoder)

    def pretrained_models(self) -> list[str]:
        return [name for name, spec in self.sc["models"].items() if spec["source"] == "pretrain"]

    def model_source(self, model: str) -> tuple[str, str | None]:
        """(what a stage loads, its hub revision): a hub id, or the directory of a pretrained base."""
        spec = self.sc["models"][model]
        return (spec["hub_id"], spec["revision"]) if spec["source"] == "hub" else (self.base_model(model), None)

    def model_inputs(self, model: str) -> list[str]:
        """Files a stage that loads `model` depends on: the pretrained base; nothing for a hub model."""
        return [] if self.sc["models"][model]["source"] == "hub" else [self.base_model(model)]

    # -------------------------------------------------------------------------------------- paths

    @staticmethod
    def raw(dataset: str) -> str:
        return f"data/raw/{dataset}"

    @staticmethod
    def download_marker(dataset: str) -> str:
        return f"data/raw/{dataset}/download.complete.json"

    @staticmethod
    def manifest_dir(dataset: str) -> str:
        return f"data/manifests/{dataset}"

    @staticmethod
    def manifest(dataset: str, split: str) -> str:
        return f"data/manifests/{dataset}/{split}.parquet"

    @staticmethod
    def media_dir(dataset: str, split: str) -> str:
        return f"data/media/{dataset}/{split}"

    @staticmethod
    def frames(dataset: str, split: str) -> str:
        return f"data/media/{dataset}/{split}/frames.parquet"

    @staticmethod
    def audio(dataset: str, split: str) -> str:
        return f"data/media/{dataset}/{split}/audio.parquet"

    @staticmethod
    def media_errors(dataset: str, split: str) -> str:
        return f"data/media/{dataset}/{split}/errors.parquet"

    @staticmethod
    def transcripts(dataset: str, split: str) -> str:
        return f"data/transcripts/{dataset}/{split}.parquet"

    TRANSCRIPT_CACHE = "data/transcripts/cache"

    @staticmethod
    def encoder_cache_dir(dataset: str, split: str, encoder: str) -> str:
        return f"data/cache/{dataset}/{split}/{encoder}"

    @staticmethod
    def encoder_cache_meta(dataset: str, split: str, encoder: str) -> str:
        """The dump writes meta.json last: it is the declared output, so the shards of an interrupted dump survive
        for the rerun to resume from."""
        return f"data/cache/{dataset}/{split}/{encoder}/meta.json"

    def encoder_cache_of(self, dataset: str, split: str, model: str) -> str:
        return self.encoder_cache_meta(dataset, split, self.encoder(model))

    def base_model(self, model: str) -> str:
        return f"{self.results}/base/{model}"

    def base_checkpoints(self, model: str) -> str:
        return f"{self.results}/checkpoints/base-{model}"

    def run_dir(self, run: str) -> str:
        return f"{self.results}/runs/{run}"

    def run_checkpoints(self, run: str) -> str:
        return f"{self.results}/checkpoints/{run}"

    def evaluation_dir(self, key: str) -> str:
        """key: "<run or base>/<mode>"."""
        return f"{self.results}/eval/{key}"

    def metrics(self, key: str) -> str:
        return f"{self.evaluation_dir(key)}/metrics.json"

    def predictions(self, key: str) -> str:
        return f"{self.evaluation_dir(key)}/predictions.parquet"

    def vision_split(self, base: str) -> str:
        return f"{self.evaluation_dir(f'{base}/{NO_IMAGE}')}/vision_split.parquet"

    def report_dir(self) -> str:
        return f"{self.results}/report"

    REPORT_TABLES = ("table1", "table2", "table3")
    REPORT_FIGURES = ("mdi_aei", "accuracy_rank", "ablation", "gates", "robustness")
    REFERENCE = {"tables": "moir/reference/paper_tables.csv", "robustness": "moir/reference/paper_robustness.csv"}

    # -------------------------------------------------------------------------------------- inputs of each stage

    def pretrain_inputs(self, model: str) -> dict[str, list[str]]:
        inputs = {"manifests": [], "frames": []}
        for dataset in self.sc["models"][model]["pretrain_datasets"]:
            inputs["manifests"].append(self.manifest(dataset, "pretrain"))
            if self.is_video(dataset):
                inputs["frames"].append(self.frames(dataset, "pretrain"))
        return inputs

    def pretrain_data(self, model: str) -> list[list[str]]:
        """[manifest] or [manifest, frames] of each dataset the base learns from (the CLI's --data)."""
        return [[self.manifest(d, "pretrain")] + ([self.frames(d, "pretrain")] if self.is_video(d) else [])
                for d in self.sc["models"][model]["pretrain_datasets"]]

    def encoder_cache_inputs(self, dataset: str, split: str, encoder: str) -> dict:
        model = self.encoder_model(encoder)
        inputs = {"manifest": self.manifest(dataset, split), "model": self.model_inputs(model)}
        if self.is_video(dataset):
            inputs["frames"] = self.frames(dataset, split)
        inputs.update(self.hub_lock_input(model))
        reference = self.reuses_encoder_of(model)
        if reference is not None:  # linked from the reference's cache when the towers match, else dumped
            inputs["tower_check"] = self.tower_check(model)
            inputs["reuse"] = self.encoder_cache_of(dataset, split, reference)
        return inputs

    def split_inputs(self, prefix: str, dataset: str, split: str, model: str) -> dict:
        """Manifest, encoder cache (and transcripts) of one split, keyed `<prefix>_manifest`, ..."""
        inputs = {f"{prefix}_manifest": self.manifest(dataset, split),
                  f"{prefix}_cache": self.encoder_cache_of(dataset, split, model)}
        if self.uses_transcripts(dataset):
            inputs[f"{prefix}_transcripts"] = self.transcripts(dataset, split)
        return inputs

    def train_inputs(self, name: str) -> dict:
        run = self.run(name)
        return {
            **self.split_inputs("train", run.dataset, self.split(run.dataset, "train"), run.model),
            **self.split_inputs("val", run.dataset, self.split(run.dataset, "val"), run.model),
            "model": self.model_inputs(run.model),
            **self.hub_lock_input(run.model),
        }

    def evaluation(self, key: str) -> Evaluation:
        if key not in self.evaluations:
            raise PlanError(f"evaluation {key!r} is not in the plan of suite {self.suite!r}")
        return self.evaluations[key]

    def evaluate_inputs(self, key: str) -> dict:
        """The eval split's manifest, its encoder cache (clean, no-image) or frames (noise, on videos), the
        transcripts; a run's LoRA directory; the base model's clean evaluation (rank deltas) or, for noise, the
        run's clean evaluation and the base model's vision split."""
        ev = self.evaluation(key)
        split = self.split(ev.dataset, "eval")
        inputs = {"manifest": self.manifest(ev.dataset, split), "model": self.model_inputs(ev.model)}
        if ev.mode == NOISE:
            if self.is_video(ev.dataset):
                inputs["frames"] = self.frames(ev.dataset, split)
        else:
            inputs["cache"] = self.encoder_cache_of(ev.dataset, split, ev.model)
        if self.uses_transcripts(ev.dataset):
            inputs["transcripts"] = self.transcripts(ev.dataset, split)
        inputs.update(self.hub_lock_input(ev.model))
        if ev.run is not None:
            inputs["run"] = self.run_dir(ev.name)
            base = self.base_name(ev.run)
            if ev.mode == CLEAN:
                inputs["base_eval"] = self.gpu_metrics(f"{base}/{CLEAN}")
            else:
                inputs["clean_eval"] = self.gpu_metrics(f"{ev.name}/{CLEAN}")
                inputs["vision_split"] = self.vision_split(base)
        return inputs

    @staticmethod
    def reported(ev: Evaluation) -> bool:
        """The evaluations the report reads: every run's, and the base models' clean ones (Table 1's base rows)."""
        return ev.run is not None or ev.mode == CLEAN

    def report_inputs(self) -> dict:
        inputs = {
            "metrics": [self.metrics(key) for key, ev in self.evaluations.items() if self.reported(ev)],
            "runs": [self.run_dir(name) for name, run in self.runs.items()
                     if run.method == "moir" or name in self.table5_runs()],
            "predictions": list(self.report_predictions().values()),
        }
        if self.suite == "paper":
            inputs.update(self.REFERENCE)
        return inputs

    # -------------------------------------------------------------------------------------- settings

    def synth_settings(self, dataset: str) -> Settings:
        spec = self.dataset(dataset)["synthetic"]
        common = {**spec["sizes"], "seed": spec["seed"], "hint_accuracy": spec["hint_accuracy"],
                  "eval_hint_accuracy": spec["eval_hint_accuracy"],
                  "pretrain_hint_accuracy": spec["pretrain_hint_accuracy"], "choice_share": spec["choice_share"],
                  "fixed_choices": True if spec.get("fixed_choices", False) else None,
                  # the data CLI's --pretrain-question-weights (None: uniform)
                  "pretrain_question_weights": format_weights(spec["pretrain_question_weights"])
                  if spec.get("pretrain_question_weights") else None}
        if self.is_video(dataset):
            background = spec.get("background", "plain")
            return SynthVideoSettings(**common, **{key: spec[key] for key in (
                "frames", "frame_size", "fps", "silent_share", "tone_share")},
                background=None if background == "plain" else background)
        return SynthImageSettings(**common, image_size=spec["image_size"])

    def convert_settings(self, dataset: str) -> ConvertSettings:
        spec = self.dataset(dataset)
        return ConvertSettings(seed=spec.get("split_seed"), val_fraction=spec.get("val_fraction"),
                               test_fraction=spec.get("test_fraction"))

    def extract_settings(self) -> ExtractSettings:
        media = self.sc["media"]
        return ExtractSettings(**{key: media[key] for key in (
            "num_frames", "fps", "max_frames", "image_format", "jpeg_quality", "max_bad_share")})

    def transcribe_settings(self) -> TranscribeSettings:
        asr = self.sc["transcripts"]
        return TranscribeSettings(model=asr["model"], revision=asr["revision"], language=asr["language"],
                                  batch_size=asr["batch_size"], device=self.sc["device"],
                                  hub_name=self.ASR if self.ASR in self.hub_models() else None)

    def encoder_cache_settings(self, encoder: str) -> EncoderCacheSettings:
        model, revision = self.model_source(self.encoder_model(encoder))
        cache = self.sc["encoder_cache"]
        return EncoderCacheSettings(model=model, revision=revision, shard_size=cache["shard_size"],
                                    batch_size=cache["batch_size"], dtype=cache["dtype"], device=self.sc["device"],
                                    shard_bytes=cache["shard_bytes"],
                                    pixel_budget=self.pixel_budget(self.encoder_model(encoder)),
                                    hub_name=self.hub_name(self.encoder_model(encoder)))

    def pretrain_settings(self, model: str) -> PretrainSettings:
        spec, pretrain = self.sc["models"][model], self.sc["pretrain"]
        phases = [Phase(phase["epochs"], phase.get("question_weights") or {},
                        **{key: phase[key] for key in ("lr", "lr_schedule", "warmup_steps") if key in phase})
                  for phase in spec.get("pretrain_phases") or ()]
        return PretrainSettings(name=spec["architecture"], seed=spec["seed"], device=self.sc["device"],
                                text_layers=spec.get("text_layers"),
                                phases=format_phases(phases) if phases else None,
                                epochs=sum(phase.epochs for phase in phases) if phases
                                else spec.get("pretrain_epochs", pretrain["epochs"]),
                                **{key: pretrain[key] for key in (
                                    "lr", "weight_decay", "batch_size", "grad_accum", "max_grad_norm",
                                    "max_length", "limit", "checkpoint_every")},
                                # a constant rate without warm-up: the JSON as before the option
                                lr_schedule=None if pretrain.get("lr_schedule", "constant") == "constant"
                                else pretrain["lr_schedule"], warmup_steps=pretrain.get("warmup_steps") or None)

    def train_settings(self, name: str) -> TrainSettings:
        run = self.run(name)
        model, revision = self.model_source(run.model)
        train, lora = self.sc["train"], self.config["lora"]
        router = None
        if run.method == "moir":
            router = RouterSettings(ratio=float(run.ratio), **self.config["router"])
        settings = TrainSettings(
            model=model, revision=revision, placement=run.placement, method=run.method, router=router, seed=run.seed,
            lora_r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"], device=self.sc["device"],
            **{key: train[key] for key in (
                "epochs", "lr", "weight_decay", "batch_size", "grad_accum", "max_grad_norm", "plateau_factor",
                "plateau_patience", "max_length", "gradient_checkpointing", "checkpoint_every", "train_limit",
                "val_limit")},
            keep=None if train.get("keep", "last") == "last" else train["keep"],
            group_by_length=True if train["group_by_length"] else None,
            checkpoint_every_n_layers=self.sc["models"][run.model].get("checkpoint_every_n_layers", 1)
            if train["gradient_checkpointing"] else None,
            pixel_budget=self.pixel_budget(run.model),
            transcript_max_tokens=self.transcript_max_tokens(run.dataset),
            hub_name=self.hub_name(run.model),
            keep_ratio=None,  # a compression arm's override (Table 5)
        )
        for key, value in run.arm.overrides:  # a later arm's changes
            if key.startswith("router."):
                settings = dataclasses.replace(
                    settings, router=dataclasses.replace(settings.router, **{key.removeprefix("router."): value}))
            else:
                settings = dataclasses.replace(settings, **{key: value})
        return settings

    def evaluate_settings(self, key: str) -> EvaluateSettings:
        ev = self.evaluation(key)
        model, revision = self.model_source(ev.model)
        evaluate, dataset = self.sc["evaluate"], self.dataset(ev.dataset)
        # A judged evaluation's GPU job leaves the open-ended answers to the rule `judge` (judge: "defer"): the
        # judge's settings are then that rule's alone. The no-image evaluation still judges in its job (the
        # vision split needs the judged correctness).
        deferred = self.judged(key)
        judge = self.sc["judge"] if dataset["judge"] and not deferred else None
        openai = judge is not None and judge["backend"] == "openai"
        return EvaluateSettings(
            model=model, revision=revision, run_name=ev.name, mode=ev.mode,
            batch_size=dataset.get("eval_batch_size") or evaluate["batch_size"],
            limit=evaluate["limit"], max_new_tokens=dataset["max_new_tokens"],
            rank_layer=evaluate["rank_layer"] if ev.mode == CLEAN else None,
            noise_seed=evaluate["noise_seed"] if ev.mode == NOISE else None,
            judge=DEFER_JUDGE if deferred else judge["backend"] if judge else None,
            judge_model=judge["model"] if judge else None,
            judge_url=judge["url"] if openai else None, judge_api_key_env=judge["api_key_env"] if openai else None,
            judge_correct_threshold=evaluate.get("judge_correct_threshold", 2) if judge else None,
            judge_max_failed_share=judge.get("max_failed_share", 0.02) if judge else None,
            device=self.sc["device"],
            pixel_budget=self.pixel_budget(ev.model),
            transcript_max_tokens=self.transcript_max_tokens(ev.dataset),
            hub_name=self.hub_name(ev.model),
            keep_ratio=ev.keep_ratio,
            router_effect_limit=(evaluate.get("router_effect_limit")
                                 if ev.mode == CLEAN and ev.run is not None and ev.run.method == "moir" else None),
        )

    def report_settings(self) -> ReportSettings:
        return ReportSettings(
            tables=self.tables.to_dict(),
            seeds=self.seeds,
            modality={name: spec["modality"] for name, spec in self.sc["datasets"].items()},
            evaluations={key: self.metrics(key) for key, ev in self.evaluations.items() if self.reported(ev)},
            gates={name: f"{self.run_dir(name)}/train_metrics.jsonl"
                   for name, run in self.runs.items() if run.method == "moir"},
            reference_tables=self.REFERENCE["tables"] if self.suite == "paper" else None,
            reference_robustness=self.REFERENCE["robustness"] if self.suite == "paper" else None,
            predictions=self.report_predictions(),
            train_metrics={name: f"{self.run_dir(name)}/train_metrics.jsonl" for name in self.table5_runs()}
            if self.tables.table5 is not None else None,
        )

    def table5_runs(self) -> list[str]:
        """The runs of Table 5's arms (their train metrics give the time per training step); none without it."""
        arms = set(self.tables.table5_arms())
        return [name for name, run in self.runs.items() if run.arm in arms]

    def report_predictions(self) -> dict[str, str]:
        """"<name>/clean" -> predictions.parquet of every clean evaluation: the runs' (the paired comparisons) and
        the base models' (Table 5's training-free arm is compared with its base)."""
        return {key: self.predictions(key) for key, ev in self.evaluations.items() if ev.mode == CLEAN}

    def report_extra_outputs(self) -> list[str]:
        """The report's files beyond Tables 1-3 and their figures: the comparisons, the router diagnostics, the
        MDI/AEI validity figure, and Table 4 when the suite has one."""
        names = ["comparisons.csv", "comparisons.md", "router_effect.csv", "router_channels.csv", "validity.png",
                 "gates_selected.png"]
        if self.tables.table4 is not None:
            names += ["table4.csv", "table4.md"]
        if self.tables.table5 is not None:
            names += ["table5.csv", "table5.md", "table5.tex"]
        if any(self.dataset(name)["source"] == "synthetic" for name in self.sc["datasets"]):
            names.append("base_reading.csv")  # the synthetic benchmarks label their hints
        return [f"{self.report_dir()}/{name}" for name in names]

    # -------------------------------------------------------------------------------------- code

    def train_code(self, name: str) -> str:
        return code_fingerprint("train", router=self.run(name).method == "moir")

    def evaluate_code(self, key: str) -> str:
        ev = self.evaluation(key)
        return code_fingerprint("evaluate", router=ev.run is not None and ev.run.method == "moir")

    # -------------------------------------------------------------------------------------- hub models (fetch)

    ASR, JUDGE = "asr", "judge"  # lock names of the ASR model and of a local judge model

    def hub_models(self) -> dict[str, tuple[str, str]]:
        """Every hub model a stage of this suite loads, by lock name -> (hub id, revision): the grid's models, the
        ASR model when a dataset has transcripts, a local judge given as a hub id when a dataset is judged.
        Each is fetched once (rule fetch_models) and every stage loads it offline from its lock."""
        used = {model for dataset, model in self.tables.pairs} | {self.tables.table2[1], self.tables.table3[1]}
        used |= {self.tables.table5[1]} if self.tables.table5 is not None else set()
        models = {name: (spec["hub_id"], spec["revision"]) for name, spec in self.sc["models"].items()
                  if name in used and spec["source"] == "hub"}
        if any(self.uses_transcripts(d) for d in self.sc["datasets"]):
            models[self.ASR] = (self.sc["transcripts"]["model"], self.sc["transcripts"]["revision"])
        judge = self.sc["judge"]
        if any(spec["judge"] for spec in self.sc["datasets"].values()) and judge["backend"] == "local" \
                and re.fullmatch(r"[\w.-]+/[\w.-]+", judge["model"]) and not Path(judge["model"]).exists():
            models[self.JUDGE] = (judge["model"], "main")
        if models and "hub" not in self.sc:
            raise PlanError(f"config: suites.{self.suite}.hub is required: the suite loads hub models "
                            f"({', '.join(sorted(models))}), fetched once into hub.cache_dir")
        clash = {self.ASR, self.JUDGE} & set(self.sc["models"]) & set(models)
        if clash:
            raise PlanError(f"config: suites.{self.suite}.models: {sorted(clash)} are reserved lock names; rename it")
        return models

    def hub_name(self, model: str) -> str | None:
        """The lock name of a grid model loaded from the hub (None: a pretrained local base)."""
        return model if model in self.hub_models() else None

    @staticmethod
    def lock(name: str) -> str:
        return f"data/models/{name}.lock.json"

    @staticmethod
    def tower_check(model: str) -> str:
        return f"data/models/{model}.vision_tower.json"

    def hub_cache_dir(self) -> str:
        return self.sc["hub"]["cache_dir"]

    def hub_lock_input(self, name: str) -> dict[str, str]:
        """{"hub_lock": its lock file} for a hub model (the stage loads it offline from there), {} otherwise."""
        return {"hub_lock": self.lock(name)} if name in self.hub_models() else {}

    def fetch_settings(self, name: str) -> FetchSettings:
        hub_id, revision = self.hub_models()[name]
        return FetchSettings(name=name, hub_id=hub_id, revision=revision)

    def tower_checks(self) -> dict[str, str]:
        """model -> the earlier model whose encoder cache it reuses when the fetched towers are identical."""
        return {model: ref for model in self.hub_models() if model in self.sc["models"]
                for ref in [self.reuses_encoder_of(model)] if ref is not None}

    def tower_check_settings(self, model: str) -> TowerCheckSettings:
        return TowerCheckSettings(name=model, reference=self.tower_checks()[model])

    # -------------------------------------------------------------------------------------- new stage settings

    def pixel_budget(self, model: str) -> dict | None:
        """The model's pixel budget (Qwen2.5-VL: moir.models.pixel_budget), None for the processor's own."""
        return self.sc["models"][model].get("pixel_budget")

    def transcript_max_tokens(self, dataset: str) -> int | None:
        """The transcript cap of a dataset with transcripts (None: no transcripts, or no cap)."""
        return self.sc["transcripts"]["max_tokens"] if self.uses_transcripts(dataset) else None

    # -------------------------------------------------------------------------------------- the judge stage

    def judged(self, key: str) -> bool:
        """Whether the rule `judge` scores this evaluation's open-ended answers after its GPU job (`predict`):
        judged datasets, clean and noise modes (a no-image evaluation judges in its own job: the vision split it
        writes needs the judged correctness)."""
        ev = self.evaluation(key)
        return bool(self.dataset(ev.dataset)["judge"]) and ev.mode != NO_IMAGE

    def predict_dir(self, key: str) -> str:
        """Where a judged evaluation's GPU job writes its unjudged predictions and metrics."""
        return f"{self.evaluation_dir(key)}/predict"

    def gpu_metrics(self, key: str) -> str:
        """The metrics.json of an evaluation's GPU job: what another evaluation reads (ranks, normalised answers,
        none of them judged), so that a judge change reruns no GPU job. For a judged evaluation, its predict/."""
        return f"{self.predict_dir(key)}/metrics.json" if self.judged(key) else self.metrics(key)

    def judge_scores(self, key: str) -> str:
        return f"{self.evaluation_dir(key)}/judge_scores.parquet"

    def judge_inputs(self, key: str) -> dict:
        ev = self.evaluation(key)
        inputs = {"predictions": f"{self.predict_dir(key)}/predictions.parquet",
                  "metrics": f"{self.predict_dir(key)}/metrics.json",
                  "manifest": self.manifest(ev.dataset, self.split(ev.dataset, "eval"))}
        inputs.update(self.hub_lock_input(self.JUDGE))
        return inputs

    def judge_settings(self) -> JudgeSettings:
        judge = self.sc["judge"]
        openai = judge["backend"] == "openai"
        return JudgeSettings(
            judge=judge["backend"], judge_model=judge["model"],
            **{key: judge[key] for key in ("workers", "max_retries", "backoff_s", "max_backoff_s",
                                           "max_failed_share")},
            judge_correct_threshold=self.sc["evaluate"].get("judge_correct_threshold", 2),
            judge_url=judge["url"] if openai else None, judge_api_key_env=judge["api_key_env"] if openai else None,
            hub_name=self.JUDGE if self.JUDGE in self.hub_models() else None,
        )
