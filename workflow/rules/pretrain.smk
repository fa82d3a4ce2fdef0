"""The demo suite's base models: each tiny architecture is built from its config and fully pretrained, vision
tower included, on the `pretrain` splits of the synthetic benchmark (results/<suite>/base/<model>/); the token
caches and the LoRA runs then load it exactly as they load a hub model. Hub models (the paper suite) need no job.
"""


rule pretrain_base:
    input:
        unpack(pretrain_inputs),
    output:
        directory(f"{RESULTS}/base/{{model}}"),
    log:
        f"{LOGS}/pretrain/{{model}}.log",
    benchmark:
        f"{BENCHMARKS}/pretrain/{{model}}.tsv"
    wildcard_constraints:
        model=one_of(m for m, spec in SC["models"].items() if spec["source"] == "pretrain"),
    conda:
        ENV
    threads: THREADS["pretrain"]
    resources:
        mem_mb=4000,
        runtime=120,
        gpu=GPU,
    params:
        architecture=lambda wc: SC["models"][wc.model]["architecture"],
        seed=lambda wc: SC["models"][wc.model]["seed"],
        data=lambda wc: pretrain_data(wc.model),
        optim=lambda wc: options(SC["pretrain"], PRETRAIN_OPTIONS),
        device=SC["device"],
        checkpoints=lambda wc: f"{RESULTS}/checkpoints/base-{wc.model}",
    shell:
        "python -m moir.train.pretrain --name {params.architecture} --seed {params.seed} {params.data} {params.optim}"
        " --device {params.device} --out-dir {output} --checkpoint-dir {params.checkpoints} 2> {log}"
