"""Wiring: the plan of the selected suite (moir/plan.py) as wildcard constraints, input functions and params.

The experiment is defined in moir/plan.py alone: the grid, run names, paths, each stage's settings and the code
each stage depends on. Each rule passes its stage one canonical JSON object (`params.settings`, sorted keys) and
the fingerprint of the stage's code (`params.code`), so that with Snakemake's default rerun triggers a config
change reruns exactly the jobs whose settings it changes, a code change reruns exactly the stages that code can
change, and reordering YAML keys or editing a comment reruns nothing. Every value reaches the shell quoted (`:q`).
"""

import re
import sys

REPO = Path(workflow.basedir).parent
if Path.cwd().resolve() != REPO.resolve():
    raise WorkflowError(
        f"run snakemake from the repository root ({REPO}): the rules read config.yaml, moir/ and envs/ "
        f"relative to it (current directory: {Path.cwd()})"
    )
sys.path.insert(0, str(REPO))  # `import moir` without installing it (Snakemake's own interpreter)

from moir.plan import NO_IMAGE, Plan, PlanError, code_fingerprint, validate_config  # noqa: E402

try:
    validate_config(config, REPO / "workflow" / "schemas" / "config.schema.yaml")
except PlanError as error:
    raise WorkflowError(str(error)) from None


def check_suite_is_set_up():
    """The paper suite downloads three benchmarks and runs 7B-13B models on GPUs. Planned by accident (config.yaml
    selects it unless --config suite=... says otherwise), it would start with downloads: say what to set instead."""
    chosen = "suite" in workflow.config_settings.overwrite_config
    if config["suite"] != "paper" or chosen:
        return
    sc = config["suites"]["paper"]
    downloaded = all(
        Path(Plan.download_marker(name)).is_file()
        for name, spec in sc["datasets"].items()
        if spec["source"] == "download"
    )
    if not downloaded:
        raise WorkflowError(
            "config.yaml selects the paper suite (suite: paper), whose datasets are not downloaded here "
            "(data/raw/<dataset>/download.complete.json) and which needs GPUs and the Hugging Face hub.\n"
            "  The offline demo:  snakemake --cores 2 --config suite=demo\n"
            "  The paper suite:   snakemake --cores 8 --config suite=paper  (or --workflow-profile workflow/profiles/slurm;"
            " set the account, partitions and GPU type in workflow/profiles/slurm/config.yaml, and "
            "suites.paper.judge in config.yaml)"
        )


check_suite_is_set_up()

try:
    PLAN = Plan(config)
except PlanError as error:
    raise WorkflowError(str(error)) from None

SC = PLAN.sc  # the selected suite's settings
RESULTS, LOGS, BENCHMARKS = PLAN.results, PLAN.logs, PLAN.benchmarks
ENV = "../../envs/moir.yaml"
# Threads differ by suite (the tiny models run best on one). Memory and time are modest local defaults in each
# rule; on a cluster the SLURM profile (workflow/profiles/slurm) sets the paper suite's.
THREADS = SC["threads"]
# GPU stages ask for one GPU when the suite runs on CUDA: the local profile allows one at a time, the SLURM
# executor turns the request into --gpus.
GPU = 1 if SC["device"] == "cuda" else 0


def one_of(names):
    """A wildcard constraint matching exactly these names (none: a pattern that matches nothing)."""
    return "|".join(re.escape(name) for name in sorted(names)) or "(?!)"


def converted_manifests(splits):
    """The manifests one `moir.data convert` job writes for the {dataset} wildcard."""
    return [PLAN.manifest("{dataset}", split) for split in splits]


def not_one_of(names):
    """A wildcard constraint matching any single path component but these names."""
    return f"(?!(?:{one_of(names)})$)[^/]+"


def not_in_grid(wildcards):
    """The input function of `unknown_run`: asking for a run the grid does not have names it and the grid
    (instead of Snakemake's bare MissingRuleException)."""
    raise WorkflowError(
        f"{RESULTS}/runs/{wildcards.run}: the run {wildcards.run!r} is not in the grid of suite {PLAN.suite!r} "
        f"(config.yaml: suites.{PLAN.suite}.table1/table2/table3, seeds). The grid's runs:\n  " + "\n  ".join(PLAN.runs)
    )


# ------------------------------------------------------------------------------------------------ params


def code(stage):
    """The fingerprint of a stage's code (moir/plan.py CODE), for `params.code`."""
    return code_fingerprint(stage)


def train_code(wildcards):
    return PLAN.train_code(wildcards.run)


def evaluate_code(wildcards):
    return PLAN.evaluate_code(wildcards.evaluation)


def dirname(path):
    return str(Path(path).parent)


def evaluate_paths(wildcards, input):
    """The stage's path options, from the inputs the plan declared for this evaluation."""
    options = {
        "manifest": ("--manifest", input.get("manifest")),
        "cache": ("--cache-dir", dirname(input.cache) if "cache" in input.keys() else None),
        "frames": ("--frames", input.get("frames")),
        "transcripts": ("--transcripts", input.get("transcripts")),
        "run": ("--run", input.get("run")),
        "base_eval": ("--base-eval", dirname(input.base_eval) if "base_eval" in input.keys() else None),
        "clean_eval": ("--clean-eval", dirname(input.clean_eval) if "clean_eval" in input.keys() else None),
        "vision_split": ("--vision-split", input.get("vision_split")),
    }
    return [word for key, (flag, value) in options.items() if key in input.keys() for word in (flag, value)]


def hub_lock_option(wildcards, input):
    """--hub-lock of a stage that loads a hub model (its lock from fetch_models is then an input), else nothing."""
    return ["--hub-lock", input.hub_lock] if "hub_lock" in input.keys() else []


def judged_keys(judged):
    """The clean and noise evaluations whose open-ended answers the rule `judge` scores (judged) or not."""
    return [key for key, ev in PLAN.evaluations.items() if ev.mode != NO_IMAGE and PLAN.judged(key) == judged]


# ------------------------------------------------------------------------------------------------ resources
# The GPU jobs' time and host memory, estimated per job from the model and the data (moir/resources.py: assumed
# throughput, 1.5x margin, rounded up to 15 min); datasets and models it has no numbers for (the demo) keep the
# local defaults given in each rule. Training checkpoints and evaluations resume, so a job that hits its limit
# loses little: `retries` in the SLURM profile resubmits it.
from moir import resources as ESTIMATES  # noqa: E402

UNGROUPED_PADDING = 0.4  # padding share of random batches of mixed lengths (issue 13: ScienceQA ~43%)
GROUPED_PADDING = 0.02  # batches grouped by modality and length (moir.batching)


def train_estimate(run_name):
    run = PLAN.run(run_name)
    model, data = ESTIMATES.MODELS.get(run.model), ESTIMATES.DATASETS.get(run.dataset)
    if model is None or data is None or SC["device"] != "cuda":
        return None
    train = SC["train"]
    return ESTIMATES.train_job(
        run_name,
        model,
        n_train=min(data["train"], train["train_limit"] or data["train"]),
        n_val=min(data["val"], train["val_limit"] or data["val"]),
        epochs=train["epochs"],
        mean_tokens=data["mean_tokens"],
        padding_share=GROUPED_PADDING if train["group_by_length"] else UNGROUPED_PADDING,
        tokens_per_s=ESTIMATES.assumed_train_tokens_per_s(model.params_b),
        batch=train["batch_size"] // train["grad_accum"],
        max_tokens=train["max_length"],
        checkpoint_every_n=SC["models"][run.model].get("checkpoint_every_n_layers", 1),
    )


def evaluate_estimate(key):
    ev = PLAN.evaluation(key)
    model, data = ESTIMATES.MODELS.get(ev.model), ESTIMATES.DATASETS.get(ev.dataset)
    if model is None or data is None or SC["device"] != "cuda":
        return None
    settings = PLAN.evaluate_settings(key)
    return ESTIMATES.eval_job(
        key,
        model,
        n_examples=min(data["eval"], settings.limit or data["eval"]),
        mean_tokens=data["mean_tokens"],
        new_tokens=settings.max_new_tokens,
        batch=settings.batch_size,
        tokens_per_s=ESTIMATES.assumed_train_tokens_per_s(model.params_b),
        analysis=ev.mode == "clean",
    )


def estimated(estimate, key_of, resource, default):
    """A rule's `resources` entry: the job's estimate (moir.resources) or the local default."""

    def get(wildcards):
        job = estimate(key_of(wildcards))
        return default if job is None else job.slurm()[resource]

    return get
