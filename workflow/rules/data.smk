"""Datasets -> manifests (data/manifests/<dataset>/<split>.parquet).

demo: `moir.data synth` generates a synthetic dataset (media and its four splits) in one job.
paper: `moir.data download` fetches the pinned files (its completion marker is the output, so the partial files
of an interrupted transfer survive for the rerun to resume), then `moir.data convert` writes the manifests.
"""


rule synthesize_data:
    input:
        code=moir_sources("moir.data.__main__"),
    output:
        raw=directory("data/raw/{dataset}"),
        manifests=expand("data/manifests/{{dataset}}/{split}.parquet", split=("pretrain", "train", "val", "test")),
    log:
        f"{LOGS}/data/synthesize_{{dataset}}.log",
    benchmark:
        f"{BENCHMARKS}/data/synthesize_{{dataset}}.tsv"
    wildcard_constraints:
        dataset=one_of(datasets_from("synthetic")),
    conda:
        ENV
    threads: THREADS["data"]
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        seed=lambda wc: synth(wc.dataset)["seed"],
        sizes=lambda wc: synth_sizes(wc.dataset),
        media=lambda wc: synth_media_args(wc.dataset),
        hints=lambda wc: options(
            synth(wc.dataset), ("choice_share", "eval_hint_accuracy", "hint_accuracy", "pretrain_hint_accuracy")
        ),
    shell:
        "python -m moir.data synth {wildcards.dataset} --raw {output.raw}"
        " --manifests data/manifests/{wildcards.dataset} --seed {params.seed} {params.sizes} {params.media}"
        " {params.hints} 2> {log}"


rule download_data:
    input:
        code=moir_sources("moir.data.__main__"),
    output:
        "data/raw/{dataset}/download.complete.json",
    log:
        f"{LOGS}/data/download_{{dataset}}.log",
    benchmark:
        f"{BENCHMARKS}/data/download_{{dataset}}.tsv"
    wildcard_constraints:
        dataset=one_of(datasets_from("download")),
    conda:
        ENV
    threads: THREADS["data"]
    resources:
        mem_mb=4000,
        runtime=720,
    shell:
        # VizWiz publishes no checksums: its files are fetched unpinned, their sha256 logged (moir/data/download.py).
        "python -m moir.data download {wildcards.dataset} --out data/raw/{wildcards.dataset} --allow-unpinned"
        " 2> {log}"


rule convert_data:
    input:
        download="data/raw/{dataset}/download.complete.json",
        code=moir_sources("moir.data.__main__"),
    output:
        expand("data/manifests/{{dataset}}/{split}.parquet", split=("train", "val", "test")),
    log:
        f"{LOGS}/data/convert_{{dataset}}.log",
    benchmark:
        f"{BENCHMARKS}/data/convert_{{dataset}}.tsv"
    wildcard_constraints:
        dataset=one_of(datasets_from("download")),
    conda:
        ENV
    threads: THREADS["data"]
    resources:
        mem_mb=16000,
        runtime=120,
    params:
        options=lambda wc: convert_args(wc.dataset),
    shell:
        "python -m moir.data convert {wildcards.dataset} --raw data/raw/{wildcards.dataset}"
        " --manifests data/manifests/{wildcards.dataset} {params.options} 2> {log}"
