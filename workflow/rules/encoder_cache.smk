"""The encoder cache: the frozen vision tower's output for every image or video of a split, computed once per
(dataset, split, encoder) and read by every run and evaluation instead of pixels.

The declared output is meta.json, which the dump writes last: the shards of an interrupted dump survive, and the
rerun resumes at the first missing shard. A hub model loads from its lock (rules/fetch.smk). A model that names an
earlier hub model's encoder (LLaVA-1.5-13B) has a cache of its own name whose dump reads vision_tower_check's
comparison: identical towers, and the job hard-links the earlier model's finished cache (seconds; the job still
asks for a GPU, since which branch runs is known only once the weights are fetched); different towers, and it
dumps its own.
"""


rule dump_encoder_cache:
    input:
        unpack(lambda wc: PLAN.encoder_cache_inputs(wc.dataset, wc.split, wc.encoder)),
    output:
        PLAN.encoder_cache_meta("{dataset}", "{split}", "{encoder}"),
    log:
        f"{LOGS}/encoder_cache/dump_{{dataset}}_{{split}}_{{encoder}}.log",
    benchmark:
        f"{BENCHMARKS}/encoder_cache/dump_{{dataset}}_{{split}}_{{encoder}}.tsv"
    wildcard_constraints:
        dataset=one_of(SC["datasets"]),
        encoder=one_of({PLAN.encoder(model) for model in SC["models"]}),
    conda:
        ENV
    threads: THREADS["encoder_cache"]
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=GPU,
    params:
        settings=lambda wc: PLAN.encoder_cache_settings(wc.encoder).to_json(),
        code=code("encoder_cache"),
        frames=lambda wc, input: ["--frames", input.frames] if "frames" in input.keys() else [],
        hub=hub_lock_option,
        reuse=lambda wc, input: (
            ["--reuse", dirname(input.reuse), "--tower-check", input.tower_check] if "reuse" in input.keys() else []
        ),
        out=lambda wc, output: dirname(output[0]),
    shell:
        "python -m moir.encoder_cache dump --manifest {input.manifest:q} {params.frames:q} {params.hub:q}"
        " {params.reuse:q} --out {params.out:q} --settings {params.settings:q} 2> {log:q}"
