"""Datasets -> manifests (data/manifests/<dataset>/<split>.parquet).

demo: `moir.data synth` generates a synthetic dataset (media and its four splits) in one job.
paper: `moir.data download` fetches the pinned files (its completion marker is the output, so the partial files
of an interrupted transfer survive for the rerun to resume), then `moir.data convert` writes the manifests.
"""


rule synthesize_data:
    output:
        raw=directory(PLAN.raw("{dataset}")),
        manifests=[PLAN.manifest("{dataset}", split) for split in ("pretrain", "train", "val", "test")],
    log:
        f"{LOGS}/data/synthesize_{{dataset}}.log",
    benchmark:
        f"{BENCHMARKS}/data/synthesize_{{dataset}}.tsv"
    wildcard_constraints:
        dataset=one_of(PLAN.datasets_from("synthetic")),
    conda:
        ENV
    threads: THREADS["data"]
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        settings=lambda wc: PLAN.synth_settings(wc.dataset).to_json(),
        code=code("synthesize"),
        manifests=lambda wc: PLAN.manifest_dir(wc.dataset),
    shell:
        "python -m moir.data synth {wildcards.dataset:q} --raw {output.raw:q} --manifests {params.manifests:q}"
        " --settings {params.settings:q} 2> {log:q}"


rule download_data:
    output:
        PLAN.download_marker("{dataset}"),
    log:
        f"{LOGS}/data/download_{{dataset}}.log",
    benchmark:
        f"{BENCHMARKS}/data/download_{{dataset}}.tsv"
    wildcard_constraints:
        dataset=one_of(PLAN.datasets_from("download")),
    conda:
        ENV
    threads: THREADS["data"]
    resources:
        mem_mb=4000,
        runtime=720,
    params:
        code=code("download"),
        raw=lambda wc: PLAN.raw(wc.dataset),
    shell:
        # VizWiz publishes no checksums: its files are fetched unpinned, their sha256 logged (moir/data/download.py).
        "python -m moir.data download {wildcards.dataset:q} --out {params.raw:q} --allow-unpinned 2> {log:q}"


rule convert_data:
    input:
        download=PLAN.download_marker("{dataset}"),
    output:
        [PLAN.manifest("{dataset}", split) for split in ("train", "val", "test")],
    log:
        f"{LOGS}/data/convert_{{dataset}}.log",
    benchmark:
        f"{BENCHMARKS}/data/convert_{{dataset}}.tsv"
    wildcard_constraints:
        dataset=one_of(d for d in PLAN.datasets_from("download") if d != "vizwiz"),
    conda:
        ENV
    threads: THREADS["data"]
    resources:
        mem_mb=16000,
        runtime=120,
    params:
        settings=lambda wc: PLAN.convert_settings(wc.dataset).to_json(),
        code=code("convert"),
        raw=lambda wc: PLAN.raw(wc.dataset),
        manifests=lambda wc: PLAN.manifest_dir(wc.dataset),
    shell:
        "python -m moir.data convert {wildcards.dataset:q} --raw {params.raw:q} --manifests {params.manifests:q}"
        " --settings {params.settings:q} 2> {log:q}"


# VizWiz's conversion also writes val_heldout, its validation split held out of train (moir/data/vizwiz.py).
use rule convert_data as convert_vizwiz with:
    output:
        converted_manifests(("train", "val_heldout", "val", "test")),
    wildcard_constraints:
        dataset=one_of(d for d in PLAN.datasets_from("download") if d == "vizwiz"),
