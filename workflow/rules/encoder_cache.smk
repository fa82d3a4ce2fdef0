"""The encoder-token cache: the frozen vision tower's output for every image or video of a split, computed once
per (dataset, split, encoder) and read by every run and evaluation instead of pixels.

The declared output is meta.json, which the dump writes last: the shards of an interrupted dump survive, and the
rerun resumes at the first missing shard.
"""


rule dump_tokens:
    input:
        unpack(dump_inputs),
    output:
        "data/cache/{dataset}/{split}/{encoder}/meta.json",
    log:
        f"{LOGS}/tokens/dump_{{dataset}}_{{split}}_{{encoder}}.log",
    benchmark:
        f"{BENCHMARKS}/tokens/dump_{{dataset}}_{{split}}_{{encoder}}.tsv"
    wildcard_constraints:
        dataset=one_of(SC["datasets"]),
        encoder=one_of({encoder(model) for model in SC["models"]}),
    conda:
        ENV
    threads: THREADS["tokens"]
    resources:
        mem_mb=8000,
        runtime=480,
        gpu=GPU,
    params:
        model=lambda wc: model_source(encoder_model(wc.encoder)),
        revision=lambda wc: revision_arg(encoder_model(wc.encoder)),
        frames=lambda wc, input: f"--frames {input.frames}" if "frames" in input.keys() else "",
        cache=options(SC["tokens"], ("batch_size", "dtype", "shard_size")),
        device=SC["device"],
        out=lambda wc, output: os.path.dirname(output[0]),
    shell:
        "python -m moir.encoder_cache dump --manifest {input.manifest} --model {params.model} {params.revision}"
        " {params.frames} {params.cache} --device {params.device} --out {params.out} 2> {log}"
