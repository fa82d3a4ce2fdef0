"""One LoRA run per (dataset, model, placement, method, k', seed) of the grid: results/<suite>/runs/<run>/
(LoRA weights with the router's gates, train_metrics.jsonl, run_card.json).

A run reads the train and val splits' manifests and encoder caches. Its checkpoints go to
results/<suite>/checkpoints/<run>/, outside the declared output (Snakemake deletes a job's outputs before it runs
the job): a run killed part-way, or preempted on a cluster, resumes from its last checkpoint when it reruns.
"""


rule train_run:
    input:
        unpack(lambda wc: PLAN.train_inputs(wc.run)),
    output:
        directory(PLAN.run_dir("{run}")),
    log:
        f"{LOGS}/train/{{run}}.log",
    benchmark:
        f"{BENCHMARKS}/train/{{run}}.tsv"
    wildcard_constraints:
        run=one_of(PLAN.runs),
    conda:
        ENV
    threads: THREADS["train"]
    resources:
        # paper: sized per run from the model and dataset (common.smk, moir/resources.py); demo: local defaults
        mem_mb=estimated(train_estimate, lambda wc: wc.run, "mem_mb", 4000),
        runtime=estimated(train_estimate, lambda wc: wc.run, "runtime", 1440),
        gpu=GPU,
    params:
        settings=lambda wc: PLAN.train_settings(wc.run).to_json(),
        code=train_code,
        data=lambda wc, input: [
            word
            for prefix in ("train", "val")
            for word in (
                f"--{prefix}-manifest",
                input[f"{prefix}_manifest"],
                f"--{prefix}-cache",
                dirname(input[f"{prefix}_cache"]),
                *(
                    [f"--{prefix}-transcripts", input[f"{prefix}_transcripts"]]
                    if f"{prefix}_transcripts" in input.keys()
                    else []
                ),
            )
        ],
        checkpoints=lambda wc: PLAN.run_checkpoints(wc.run),
        hub=hub_lock_option,
    shell:
        "python -m moir.train {params.data:q} {params.hub:q} --out-dir {output:q} --checkpoint-dir {params.checkpoints:q}"
        " --settings {params.settings:q} 2> {log:q}"


rule unknown_run:
    """Matches only a run the grid does not have; its input function stops the plan with a message that names
    the run and lists the grid."""
    input:
        not_in_grid,
    output:
        directory(PLAN.run_dir("{run}")),
    log:
        f"{LOGS}/train/unknown_{{run}}.log",
    benchmark:
        f"{BENCHMARKS}/train/unknown_{{run}}.tsv"
    wildcard_constraints:
        run=not_one_of(PLAN.runs),
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=100,
        runtime=1,
    shell:
        "false"
