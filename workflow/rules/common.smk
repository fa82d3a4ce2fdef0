"""Helpers of the rules: the selected suite, the planned runs, paths, each stage's arguments, and the moir source
files each stage runs.

Nothing here decides an experiment: config.yaml does. These helpers turn it into names, paths and the exact values
each rule passes to its `python -m moir.<stage>` command. A rule's `params` carry exactly the settings its stage
depends on, as scalars or canonical strings (sorted options), so that with Snakemake's default rerun triggers a
config change reruns exactly the jobs it affects, and reordering YAML keys reruns nothing.
"""

import ast
import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(workflow.basedir).parent
if Path.cwd().resolve() != REPO.resolve():
    raise WorkflowError(
        f"run snakemake from the repository root ({REPO}): the rules read config.yaml, moir/ and envs/ "
        f"relative to it (current directory: {Path.cwd()})"
    )


def check_references(config):
    """What the JSON schema cannot say: names that must refer to entries elsewhere in the config. A WorkflowError
    names the key."""
    for suite, sc in config["suites"].items():
        where = f"suites.{suite}"
        datasets, models = sc["datasets"], sc["models"]

        def need(kind, names, value, key):
            if value not in names:
                raise WorkflowError(f"config: {key}: {value!r} is not one of {where}.{kind} ({', '.join(names)})")

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
            raise WorkflowError(f"config: {where}.pretrain is required: a model of {where}.models has source: pretrain")
        for block in ("train", "pretrain"):
            if block in sc and sc[block]["batch_size"] % sc[block]["grad_accum"]:
                raise WorkflowError(
                    f"config: {where}.{block}.grad_accum ({sc[block]['grad_accum']}) must divide "
                    f"{where}.{block}.batch_size ({sc[block]['batch_size']})"
                )


check_references(config)

SUITE = config["suite"]
SC = config["suites"][SUITE]  # the selected suite's settings
RESULTS = f"results/{SUITE}"
LOGS = f"logs/{SUITE}"
BENCHMARKS = f"benchmarks/out/{SUITE}"
SEEDS = sorted(set(config["seeds"]))
ENV = "../../envs/moir.yaml"
# Threads differ by suite (the tiny models run best on one). Memory and time are modest local defaults in each
# rule; on a cluster the SLURM profile (workflow/profiles/slurm) sets the paper suite's.
THREADS = SC["threads"]
# GPU stages ask for one GPU when the suite runs on CUDA: the local profile allows one at a time, the SLURM
# executor turns the request into --gpus.
GPU = 1 if SC["device"] == "cuda" else 0


def options(settings, names):
    """`--name value` for each of `names` in `settings`, sorted by name: one canonical string. A boolean is a flag
    (present when true); a null value is left out."""
    args = []
    for name in sorted(names):
        value, flag = settings[name], f"--{name.replace('_', '-')}"
        if isinstance(value, bool):
            if value:
                args.append(flag)
        elif value is not None:
            args.append(f"{flag} {value}")
    return " ".join(args)


def one_of(names):
    """A wildcard constraint matching exactly these names (none: a pattern that matches nothing)."""
    return "|".join(re.escape(name) for name in sorted(names)) or "(?!)"


# ------------------------------------------------------------------------------------------------ the grid


def format_ratio(ratio):
    """k' as it appears in run names (`%g`: 0.1, 0.05, 0.15); moir/report.py names runs the same way."""
    return f"{ratio:g}"


@dataclass(frozen=True)
class Run:
    """One training run of the grid."""

    dataset: str
    model: str
    placement: str
    method: str  # "ft" or "moir"
    ratio: float | None  # k' of a MoIR run
    seed: int

    @property
    def name(self):
        arm = "ft" if self.method == "ft" else f"moir-k{format_ratio(self.ratio)}"
        return f"{self.dataset}__{self.model}__{self.placement}__{arm}__seed{self.seed}"


def table_arms():
    """(dataset, model, placement, method, ratio, evaluations) of every arm of Tables 1-3."""
    t1, t2, t3 = SC["table1"], SC["table2"], SC["table3"]
    arms = []
    for pair in t1["pairs"]:
        for placement in t1["placements"]:
            arms.append((pair["dataset"], pair["model"], placement, "ft", None, {"clean"}))
            arms.append((pair["dataset"], pair["model"], placement, "moir", t1["ratio"], {"clean"}))
    for method, ratio in (("ft", None), ("moir", t1["ratio"])):
        arms.append((t2["dataset"], t2["model"], t2["placement"], method, ratio, {"clean", "noise"}))
    for ratio in t3["ratios"]:
        arms.append((t3["dataset"], t3["model"], t3["placement"], "moir", ratio, {"clean"}))
    return arms


def plan_runs():
    """Run name -> (Run, the evaluations it gets). A run that several tables share is trained once."""
    runs = {}
    for dataset, model, placement, method, ratio, evaluations in table_arms():
        for seed in SEEDS:
            run = Run(dataset, model, placement, method, ratio, seed)
            runs[run.name] = (run, runs.get(run.name, (run, set()))[1] | evaluations)
    return runs


RUNS = plan_runs()
NOISE_RUNS = [name for name, (_, evaluations) in RUNS.items() if "noise" in evaluations]
# The base model of each (dataset, model) of the grid is evaluated too: its effective ranks are what the runs'
# rank deltas subtract, and (for the robustness setting) its answers without media define the vision split.
BASES = {f"{run.dataset}__{run.model}__base": (run.dataset, run.model) for run, _ in RUNS.values()}


def run_of(wildcards):
    return RUNS[wildcards.run][0]


def base_of(run):
    return f"{run.dataset}__{run.model}__base"


# ------------------------------------------------------------------------------------------------ data


def datasets_from(source):
    return [name for name, spec in SC["datasets"].items() if spec["source"] == source]


def manifest(dataset, split):
    return f"data/manifests/{dataset}/{split}.parquet"


def split_name(dataset, role):
    """The split of `dataset` that plays `role` (train, val or eval)."""
    return SC["datasets"][dataset]["splits"][role]


def is_video(dataset):
    return SC["datasets"][dataset]["media"] == "video"


def uses_transcripts(dataset):
    return SC["datasets"][dataset]["audio"] == "transcript"


def frames(dataset, split):
    return f"data/media/{dataset}/{split}/frames.parquet"


def transcripts(dataset, split):
    return f"data/transcripts/{dataset}/{split}.parquet"


def synth(dataset):
    return SC["datasets"][dataset]["synthetic"]


def synth_sizes(dataset):
    sizes = synth(dataset)["sizes"]
    return " ".join(f"--{split} {sizes[split]}" for split in sorted(sizes))


def synth_media_args(dataset):
    """The generator's media settings as arguments, sorted by name."""
    names = ("fps", "frame_size", "frames", "silent_share", "tone_share") if is_video(dataset) else ("image_size",)
    return options(synth(dataset), names)


def convert_args(dataset):
    """Converter options: a benchmark that ships one split (MMBench-Video) is split by video, seeded."""
    spec = SC["datasets"][dataset]
    if "split_seed" not in spec:
        return ""
    return f"--seed {spec['split_seed']} --val-fraction {spec['val_fraction']} --test-fraction {spec['test_fraction']}"


def frame_sampling_args():
    media = SC["media"]
    if media["num_frames"] is not None:
        return f"--num-frames {media['num_frames']}"
    return options(media, ("fps", "max_frames"))


# ------------------------------------------------------------------------------------------------ models


def model_source(model):
    """What `--model` gets: a hub id, or the directory of a base the pipeline pretrained."""
    spec = SC["models"][model]
    return spec["hub_id"] if spec["source"] == "hub" else f"{RESULTS}/base/{model}"


def model_inputs(model):
    """Files a stage that loads `model` depends on: the pretrained base; nothing for a hub model."""
    return [] if SC["models"][model]["source"] == "hub" else [f"{RESULTS}/base/{model}"]


def revision_arg(model):
    """`--revision <rev>` for a hub model, nothing for a pretrained base."""
    spec = SC["models"][model]
    return f"--revision {spec['revision']}" if spec["source"] == "hub" else ""


def pretrain_data(model):
    """`--data <manifest> [<frames>]` for the pretrain split of each dataset the base learns from."""
    return " ".join(
        f"--data {manifest(dataset, 'pretrain')}" + (f" {frames(dataset, 'pretrain')}" if is_video(dataset) else "")
        for dataset in SC["models"][model]["pretrain_datasets"]
    )


def pretrain_inputs(wildcards):
    inputs = {"code": moir_sources("moir.train.pretrain"), "manifests": [], "frames": []}
    for dataset in SC["models"][wildcards.model]["pretrain_datasets"]:
        inputs["manifests"].append(manifest(dataset, "pretrain"))
        if is_video(dataset):
            inputs["frames"].append(frames(dataset, "pretrain"))
    return inputs


# ------------------------------------------------------------------------------------------------ token caches


def encoder(model):
    """Name of the model's vision encoder in cache paths: models with the same frozen tower share a cache."""
    return SC["models"][model].get("encoder", model)


def encoder_model(name):
    """The model whose tower dumps the cache of encoder `name` (the first in config order)."""
    return next(model for model in SC["models"] if encoder(model) == name)


def cache_meta(dataset, split, model):
    """The cache's meta.json: the dump writes it last, so it is the declared output and the shards of an
    interrupted dump survive for the rerun to resume from."""
    return f"data/cache/{dataset}/{split}/{encoder(model)}/meta.json"


def dump_inputs(wildcards):
    inputs = {
        "manifest": manifest(wildcards.dataset, wildcards.split),
        "model": model_inputs(encoder_model(wildcards.encoder)),
        "code": moir_sources("moir.encoder_cache"),
    }
    if is_video(wildcards.dataset):
        inputs["frames"] = frames(wildcards.dataset, wildcards.split)
    return inputs


# ------------------------------------------------------------------------------------------------ training

TRAIN_OPTIONS = (
    "epochs",
    "lr",
    "weight_decay",
    "batch_size",
    "grad_accum",
    "max_grad_norm",
    "plateau_factor",
    "plateau_patience",
    "max_length",
    "gradient_checkpointing",
    "checkpoint_every",
    "train_limit",
    "val_limit",
)
PRETRAIN_OPTIONS = (
    "epochs",
    "lr",
    "weight_decay",
    "batch_size",
    "grad_accum",
    "max_grad_norm",
    "max_length",
    "limit",
    "checkpoint_every",
)


def lora_args():
    lora = config["lora"]
    return f"--lora-r {lora['r']} --lora-alpha {lora['alpha']} --lora-dropout {lora['dropout']}"


def router_args(run):
    """k' and the router's settings for a MoIR run; an FT run has no router, so none of them reruns it."""
    if run.method != "moir":
        return ""
    router = config["router"]
    return " ".join(
        arg
        for arg in (
            f"--ratio {run.ratio}",
            f"--router-rank {'none' if router['rank'] is None else router['rank']}",
            "--router-center" if router["center"] else "",
            f"--router-scope {router['scope']}",
            f"--router-align {router['align']}",
            "--router-rms-match" if router["rms_match"] else "--no-router-rms-match",
            f"--router-directions {router['directions']}",
            f"--gate-init {router['gate_init']}",
        )
        if arg
    )


def split_inputs(prefix, dataset, split, model):
    """Manifest, token cache (and transcripts) of one split, keyed `<prefix>_manifest`, ..."""
    inputs = {f"{prefix}_manifest": manifest(dataset, split), f"{prefix}_cache": cache_meta(dataset, split, model)}
    if uses_transcripts(dataset):
        inputs[f"{prefix}_transcripts"] = transcripts(dataset, split)
    return inputs


def train_inputs(wildcards):
    run = run_of(wildcards)
    return {
        **split_inputs("train", run.dataset, split_name(run.dataset, "train"), run.model),
        **split_inputs("val", run.dataset, split_name(run.dataset, "val"), run.model),
        "model": model_inputs(run.model),
        "code": moir_sources("moir.train"),
    }


def train_data_args(input):
    args = []
    for prefix in ("train", "val"):
        args.append(f"--{prefix}-manifest {input[f'{prefix}_manifest']}")
        args.append(f"--{prefix}-cache {os.path.dirname(input[f'{prefix}_cache'])}")
        if f"{prefix}_transcripts" in input.keys():
            args.append(f"--{prefix}-transcripts {input[f'{prefix}_transcripts']}")
    return " ".join(args)


# ------------------------------------------------------------------------------------------------ evaluation

EVALUATE_OPTIONS = ("batch_size", "limit")


def generation_args(dataset):
    return f"--max-new-tokens {SC['datasets'][dataset]['max_new_tokens']}"


def eval_inputs(dataset, model, *, cache=True, pixels=False):
    """The eval split's manifest, plus its token cache (clean) or its frames (noise, on a video dataset)."""
    split = split_name(dataset, "eval")
    inputs = {"manifest": manifest(dataset, split), "model": model_inputs(model), "code": moir_sources("moir.evaluate")}
    if cache:
        inputs["cache"] = cache_meta(dataset, split, model)
    if pixels and is_video(dataset):
        inputs["frames"] = frames(dataset, split)
    if uses_transcripts(dataset):
        inputs["transcripts"] = transcripts(dataset, split)
    return inputs


def run_eval_inputs(wildcards):
    """A run's clean evaluation: its adapter and the base model's clean evaluation (for the rank deltas)."""
    run = run_of(wildcards)
    base = f"{RESULTS}/eval/{base_of(run)}/clean"
    return {
        **eval_inputs(run.dataset, run.model),
        "adapter": f"{RESULTS}/runs/{wildcards.run}",
        "base_predictions": f"{base}/predictions.parquet",
        "base_metrics": f"{base}/metrics.json",
    }


def noise_eval_inputs(wildcards):
    """A run's noise evaluation: pixels, its clean evaluation, and the base model's vision split."""
    run = run_of(wildcards)
    clean = f"{RESULTS}/eval/{wildcards.run}/clean"
    return {
        **eval_inputs(run.dataset, run.model, cache=False, pixels=True),
        "adapter": f"{RESULTS}/runs/{wildcards.run}",
        "clean_predictions": f"{clean}/predictions.parquet",
        "clean_metrics": f"{clean}/metrics.json",
        "vision_split": f"{RESULTS}/eval/{base_of(run)}/no-image/vision_split.parquet",
    }


def eval_data_args(input):
    """--cache-dir / --frames / --transcripts for the inputs a rule declared."""
    args = []
    if "cache" in input.keys():
        args.append(f"--cache-dir {os.path.dirname(input.cache)}")
    if "frames" in input.keys():
        args.append(f"--frames {input.frames}")
    if "transcripts" in input.keys():
        args.append(f"--transcripts {input.transcripts}")
    return " ".join(args)


def judge_args(dataset):
    """The judge of free-form answers, for the datasets that need one (the others do not depend on it)."""
    if not SC["datasets"][dataset]["judge"]:
        return ""
    judge = SC["judge"]
    if judge["backend"] == "local":
        return f"--judge local --judge-model {judge['model']}"
    return (
        f"--judge openai --judge-url {judge['url']} --judge-model {judge['model']} "
        f"--judge-api-key-env {judge['api_key_env']}"
    )


# ------------------------------------------------------------------------------------------------ report

REFERENCE = {"tables": "moir/reference/paper_tables.csv", "robustness": "moir/reference/paper_robustness.csv"}
REPORT_TABLES = ("table1", "table2", "table3")
REPORT_FIGURES = ("mdi_aei", "accuracy_rank", "ablation", "gates", "robustness")


def report_inputs(wildcards):
    inputs = {
        "metrics": [
            f"{RESULTS}/eval/{name}/{evaluation}/metrics.json"
            for name, (_, evaluations) in RUNS.items()
            for evaluation in sorted(evaluations)
        ],
        "runs": [f"{RESULTS}/runs/{name}" for name, (run, _) in RUNS.items() if run.method == "moir"],
        "code": moir_sources("moir.report"),
    }
    if SUITE == "paper":
        inputs.update(REFERENCE)
    return inputs


def report_args():
    """The table layout of config.yaml as moir.report's arguments."""
    t1, t2, t3 = SC["table1"], SC["table2"], SC["table3"]
    args = [
        "--table1 " + " ".join(f"{pair['dataset']}:{pair['model']}" for pair in t1["pairs"]),
        "--placements " + " ".join(t1["placements"]),
        f"--ratio {t1['ratio']}",
        f"--table2 {t2['dataset']}:{t2['model']}:{t2['placement']}",
        f"--table3 {t3['dataset']}:{t3['model']}:{t3['placement']}",
        "--ratios " + " ".join(str(ratio) for ratio in t3["ratios"]),
        "--seeds " + " ".join(str(seed) for seed in SEEDS),
        "--modality " + " ".join(f"{name}={spec['modality']}" for name, spec in sorted(SC["datasets"].items())),
    ]
    if SUITE == "paper":
        args.append(f"--reference-tables {REFERENCE['tables']} --reference-robustness {REFERENCE['robustness']}")
    return " ".join(args)


# ------------------------------------------------------------------------------------------------ code


def _module_file(name):
    """moir/a/b.py or moir/a/b/__init__.py for the module "moir.a.b"; None when no such file exists."""
    base = REPO.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@functools.cache
def _imports(path):
    """Modules of the `moir` package that the file at `path` imports (anywhere in it, relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = list(path.relative_to(REPO).with_suffix("").parts)
    if path.name != "__init__.py":
        package = package[:-1]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            parts = package[: len(package) - node.level + 1] if node.level else []
            name = ".".join(parts + ([node.module] if node.module else []))
            found.add(name)
            found.update(f"{name}.{alias.name}" for alias in node.names)  # submodules imported by name
    return {name for name in found if name == "moir" or name.startswith("moir.")}


@functools.cache
def _sources(entry):
    files, todo = set(), [entry, f"{entry}.__main__"]  # `python -m <package>` runs its __main__
    while todo:
        parts = todo.pop().split(".")
        for depth in range(1, len(parts) + 1):
            path = _module_file(".".join(parts[:depth]))
            if path is not None and path not in files:
                files.add(path)
                todo.extend(_imports(path))
    return tuple(sorted(str(path.relative_to(REPO)) for path in files))


def moir_sources(entry):
    """The moir source files `python -m <entry>` runs: the module, everything it imports from the package,
    transitively, and the `__init__.py` of every package on the way (importing moir.a.b runs moir/__init__.py
    and moir/a/__init__.py). A rule declares them as inputs, so that a code change reruns exactly the stages
    that run the changed code."""
    return list(_sources(entry))
