"""One LoRA run per (dataset, model, placement, method, k', seed) of the grid: results/<suite>/runs/<run>/.

The run reads the train and val splits' manifests and token caches. Its checkpoints go to
results/<suite>/checkpoints/<run>/, outside the declared output (Snakemake deletes a job's outputs before it
runs it): a run killed part-way, or preempted on a cluster, resumes from its last checkpoint when it reruns.
"""


TRAIN_OPTIONS = (
    "epochs", "lr", "weight_decay", "batch_size", "grad_accum", "max_grad_norm", "plateau_factor",
    "plateau_patience", "max_length", "gradient_checkpointing", "checkpoint_every", "train_limit", "val_limit",
)


def router_args(run):
    """The router's settings for a MoIR run; an FT run has no router, so its command does not mention one."""
    if run.method != "moir":
        return ""
    router = config["router"]
    args = [
        f"--ratio {run.ratio}",
        f"--router-rank {router['rank'] if router['rank'] is not None else 'none'}",
        "--router-center" if router["center"] else "",
        f"--router-scope {router['scope']}",
        f"--router-align {router['align']}",
        "--router-rms-match" if router["rms_match"] else "--no-router-rms-match",
        f"--router-directions {router['directions']}",
        f"--gate-init {router['gate_init']}",
    ]
    return " ".join(arg for arg in args if arg)


def train_inputs(wildcards):
    run = run_of(wildcards)
    train, val = split_name(run.dataset, "train"), split_name(run.dataset, "val")
    inputs = {f"train_{k}": v for k, v in split_inputs(run.dataset, train, run.model).items()}
    inputs.update({f"val_{k}": v for k, v in split_inputs(run.dataset, val, run.model).items()})
    inputs["model"] = model_inputs(run.model)
    inputs["code"] = moir_sources("moir.train")
    return inputs


def transcript_args(input):
    return " ".join(
        f"--{split}-transcripts {input[f'{split}_transcripts']}"
        for split in ("train", "val")
        if f"{split}_transcripts" in input.keys()
    )


rule train_run:
    input:
        unpack(train_inputs),
    output:
        directory(f"{RESULTS}/runs/{{run}}"),
    wildcard_constraints:
        run=one_of(RUNS),
    params:
        model=lambda wc: model_source(run_of(wc).model),
        placement=lambda wc: run_of(wc).placement,
        method=lambda wc: run_of(wc).method,
        router=lambda wc: router_args(run_of(wc)),
        seed=lambda wc: run_of(wc).seed,
        optim=options(SC["train"], TRAIN_OPTIONS),
        lora=f"--lora-r {config['lora']['r']} --lora-alpha {config['lora']['alpha']} --lora-dropout {config['lora']['dropout']}",
        device=SC["device"],
        train_cache=lambda wc, input: os.path.dirname(input.train_cache),
        val_cache=lambda wc, input: os.path.dirname(input.val_cache),
        transcripts=lambda wc, input: transcript_args(input),
        checkpoints=lambda wc: f"{RESULTS}/checkpoints/{wc.run}",
    log:
        f"{LOGS}/train/{{run}}.log",
    benchmark:
        f"{BENCHMARKS}/train/{{run}}.tsv"
    threads: THREADS["train"]
    resources:
        mem_mb=4000,
        runtime=1440,
        gpu=GPU,
    conda:
        ENV
    shell:
        "python -m moir.train --model {params.model}"
        " --train-manifest {input.train_manifest} --train-cache {params.train_cache}"
        " --val-manifest {input.val_manifest} --val-cache {params.val_cache} {params.transcripts}"
        " --placement {params.placement} --method {params.method} {params.router} --seed {params.seed}"
        " {params.optim} {params.lora} --device {params.device}"
        " --out-dir {output} --checkpoint-dir {params.checkpoints} 2> {log}"
