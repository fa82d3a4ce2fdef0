"""The encoder-token cache: the frozen vision tower's output for every image or video of a split, once per
(dataset, split, encoder), read by every run and evaluation instead of pixels.

The declared output is meta.json, which the dump writes last: the shards of an interrupted dump survive and the
rerun resumes at the first missing shard.
"""


def dump_inputs(wildcards):
    model = encoder_model(wildcards.encoder)
    inputs = {
        "manifest": manifest(wildcards.dataset, wildcards.split),
        "model": model_inputs(model),
        "code": moir_sources("moir.tokens"),
    }
    if is_video(wildcards.dataset):
        inputs["frames"] = frames(wildcards.dataset, wildcards.split)
    return inputs


rule dump_tokens:
    input:
        unpack(dump_inputs),
    output:
        "data/cache/{dataset}/{split}/{encoder}/meta.json",
    wildcard_constraints:
        dataset=one_of(SC["datasets"]),
        encoder=one_of({encoder(model) for model in SC["models"]}),
    params:
        model=lambda wc: model_source(encoder_model(wc.encoder)),
        revision=lambda wc: revision_arg(encoder_model(wc.encoder)),
        frames=lambda wc, input: f"--frames {input.frames}" if "frames" in input.keys() else "",
        shard_size=SC["tokens"]["shard_size"],
        batch_size=SC["tokens"]["batch_size"],
        dtype=SC["tokens"]["dtype"],
        device=SC["device"],
    log:
        f"{LOGS}/tokens/dump_{{dataset}}_{{split}}_{{encoder}}.log",
    benchmark:
        f"{BENCHMARKS}/tokens/dump_{{dataset}}_{{split}}_{{encoder}}.tsv"
    threads: THREADS["tokens"]
    resources:
        mem_mb=8000,
        runtime=480,
        gpu=GPU,
    conda:
        ENV
    shell:
        "python -m moir.tokens dump --manifest {input.manifest} --model {params.model} {params.revision}"
        " --out data/cache/{wildcards.dataset}/{wildcards.split}/{wildcards.encoder} {params.frames}"
        " --shard-size {params.shard_size} --batch-size {params.batch_size} --dtype {params.dtype}"
        " --device {params.device} 2> {log}"
