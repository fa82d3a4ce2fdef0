"""The demo suite's base models: each tiny architecture is built from its config and fully pretrained, vision
tower included, on the `pretrain` splits of the synthetic benchmark (results/<suite>/base/<model>/); the encoder
caches and the LoRA runs then load it exactly as they load a hub model. Hub models (the paper suite) need no job.
"""


rule pretrain_base:
    input:
        unpack(lambda wc: PLAN.pretrain_inputs(wc.model)),
    output:
        directory(PLAN.base_model("{model}")),
    log:
        f"{LOGS}/pretrain/{{model}}.log",
    benchmark:
        f"{BENCHMARKS}/pretrain/{{model}}.tsv"
    wildcard_constraints:
        model=one_of(PLAN.pretrained_models()),
    conda:
        ENV
    threads: THREADS["pretrain"]
    resources:
        mem_mb=4000,
        runtime=120,
        gpu=GPU,
    params:
        settings=lambda wc: PLAN.pretrain_settings(wc.model).to_json(),
        code=code("pretrain"),
        data=lambda wc: [word for data in PLAN.pretrain_data(wc.model) for word in ("--data", *data)],
        checkpoints=lambda wc: PLAN.base_checkpoints(wc.model),
    shell:
        "python -m moir.train.pretrain {params.data:q} --out-dir {output:q} --checkpoint-dir {params.checkpoints:q}"
        " --settings {params.settings:q} 2> {log:q}"
