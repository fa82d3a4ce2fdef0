"""One LoRA run per (dataset, model, placement, method, k', seed) of the grid: results/<suite>/runs/<run>/
(adapter with the router's gates, train_metrics.jsonl, run_card.json).

A run reads the train and val splits' manifests and token caches. Its checkpoints go to
results/<suite>/checkpoints/<run>/, outside the declared output (Snakemake deletes a job's outputs before it runs
the job): a run killed part-way, or preempted on a cluster, resumes from its last checkpoint when it reruns.
"""


rule train_run:
    input:
        unpack(train_inputs),
    output:
        directory(f"{RESULTS}/runs/{{run}}"),
    log:
        f"{LOGS}/train/{{run}}.log",
    benchmark:
        f"{BENCHMARKS}/train/{{run}}.tsv"
    wildcard_constraints:
        run=one_of(RUNS),
    conda:
        ENV
    threads: THREADS["train"]
    resources:
        mem_mb=4000,
        runtime=1440,
        gpu=GPU,
    params:
        model=lambda wc: model_source(run_of(wc).model),
        revision=lambda wc: revision_arg(run_of(wc).model),
        placement=lambda wc: run_of(wc).placement,
        method=lambda wc: run_of(wc).method,
        router=lambda wc: router_args(run_of(wc)),
        seed=lambda wc: run_of(wc).seed,
        optim=options(SC["train"], TRAIN_OPTIONS),
        lora=lora_args(),
        device=SC["device"],
        data=lambda wc, input: train_data_args(input),
        checkpoints=lambda wc: f"{RESULTS}/checkpoints/{wc.run}",
    shell:
        "python -m moir.train --model {params.model} {params.revision} {params.data} --placement {params.placement}"
        " --method {params.method} {params.router} --seed {params.seed} {params.optim} {params.lora}"
        " --device {params.device} --out-dir {output} --checkpoint-dir {params.checkpoints} 2> {log}"
