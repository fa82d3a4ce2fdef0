"""The demo suite's base models: each tiny architecture is built from its config and fully pretrained on the
synthetic benchmark's `pretrain` split (results/<suite>/base/<model>/), then loaded by the token cache and the
LoRA runs exactly as a hub model is. Hub models (the paper suite) have no such job.
"""

PRETRAIN_OPTIONS = (
    "epochs", "lr", "weight_decay", "batch_size", "grad_accum", "max_grad_norm", "max_length", "limit",
    "checkpoint_every",
)


def pretrain_data(model):
    """(manifest, frames or None) of the pretrain split of each dataset the base learns from."""
    data = []
    for dataset in SC["models"][model]["pretrain_datasets"]:
        data.append((manifest(dataset, "pretrain"), frames(dataset, "pretrain") if is_video(dataset) else None))
    return data


rule pretrain_base:
    input:
        data=lambda wc: [path for entry in pretrain_data(wc.model) for path in entry if path],
        code=moir_sources("moir.pretrain"),
    output:
        directory(f"{RESULTS}/base/{{model}}"),
    wildcard_constraints:
        model=one_of(m for m, spec in SC["models"].items() if spec["source"] == "pretrain"),
    params:
        architecture=lambda wc: SC["models"][wc.model]["architecture"],
        data=lambda wc: " ".join(f"--data {' '.join(p for p in entry if p)}" for entry in pretrain_data(wc.model)),
        seed=lambda wc: SC["models"][wc.model]["seed"],
        optim=lambda wc: options(SC["pretrain"], PRETRAIN_OPTIONS),
        device=SC["device"],
        checkpoints=lambda wc: f"{RESULTS}/checkpoints/base-{wc.model}",
    log:
        f"{LOGS}/pretrain/{{model}}.log",
    benchmark:
        f"{BENCHMARKS}/pretrain/{{model}}.tsv"
    threads: THREADS["pretrain"]
    resources:
        mem_mb=4000,
        runtime=120,
        gpu=GPU,
    conda:
        ENV
    shell:
        "python -m moir.pretrain --name {params.architecture} --seed {params.seed} {params.data} {params.optim}"
        " --device {params.device} --out-dir {output} --checkpoint-dir {params.checkpoints} 2> {log}"
