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
