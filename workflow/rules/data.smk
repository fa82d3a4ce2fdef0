"""Datasets -> manifests (data/manifests/<dataset>/<split>.parquet).

demo: `moir.data synth` generates the benchmark (media and the four splits) in one job.
paper: `moir.data download` fetches the pinned files (its completion marker is the output, so the partial files
of an interrupted transfer survive for the rerun to resume), then `moir.data convert` writes the manifests.
"""

SYNTH_SPLITS = ("pretrain", "train", "val", "test")
PAPER_SPLITS = ("train", "val", "test")


def synth(dataset):
    return SC["datasets"][dataset]["synthetic"]


def synth_media_args(dataset):
    """The generator's media settings, as CLI arguments (sorted by name: a canonical string)."""
    settings = synth(dataset)
    names = ("image_size",) if not is_video(dataset) else ("fps", "frame_size", "frames", "silent_share", "tone_share")
    return " ".join(f"--{name.replace('_', '-')} {settings[name]}" for name in names)


rule synthesize_data:
    output:
        raw=directory("data/raw/{dataset}"),
        manifests=expand("data/manifests/{{dataset}}/{split}.parquet", split=SYNTH_SPLITS),
    wildcard_constraints:
        dataset=one_of(datasets_from("synthetic")),
    params:
        seed=lambda wc: synth(wc.dataset)["seed"],
        sizes=lambda wc: " ".join(f"--{split} {synth(wc.dataset)['sizes'][split]}" for split in SYNTH_SPLITS),
        media=lambda wc: synth_media_args(wc.dataset),
        hint_accuracy=lambda wc: synth(wc.dataset)["hint_accuracy"],
        eval_hint_accuracy=lambda wc: synth(wc.dataset)["eval_hint_accuracy"],
        choice_share=lambda wc: synth(wc.dataset)["choice_share"],
    input:
        code=moir_sources("moir.data.__main__"),
    log:
        f"{LOGS}/data/synthesize_{{dataset}}.log",
    benchmark:
        f"{BENCHMARKS}/data/synthesize_{{dataset}}.tsv"
    threads: THREADS["data"]
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        ENV
    shell:
        "python -m moir.data synth {wildcards.dataset} --raw {output.raw} --manifests data/manifests/{wildcards.dataset}"
        " --seed {params.seed} {params.sizes} {params.media} --hint-accuracy {params.hint_accuracy}"
        " --eval-hint-accuracy {params.eval_hint_accuracy} --choice-share {params.choice_share} 2> {log}"


rule download_data:
    output:
        "data/raw/{dataset}/download.complete.json",
    wildcard_constraints:
        dataset=one_of(datasets_from("download")),
    input:
        code=moir_sources("moir.data.__main__"),
    log:
        f"{LOGS}/data/download_{{dataset}}.log",
    benchmark:
        f"{BENCHMARKS}/data/download_{{dataset}}.tsv"
    threads: THREADS["data"]
    resources:
        mem_mb=4000,
        runtime=720,
    conda:
        ENV
    shell:
        # VizWiz publishes no checksums: its files are fetched unpinned and their sha256 logged (moir/data/download.py).
        "python -m moir.data download {wildcards.dataset} --out data/raw/{wildcards.dataset} --allow-unpinned"
        " 2> {log}"


def convert_args(dataset):
    """Converter options of a dataset (MMBench-Video's by-video split), canonical order."""
    spec = SC["datasets"][dataset]
    if dataset == "mmbench_video":
        return (
            f"--seed {spec['split_seed']} --val-fraction {spec['val_fraction']} "
            f"--test-fraction {spec['test_fraction']}"
        )
    return ""


rule convert_data:
    input:
        download="data/raw/{dataset}/download.complete.json",
        code=moir_sources("moir.data.__main__"),
    output:
        expand("data/manifests/{{dataset}}/{split}.parquet", split=PAPER_SPLITS),
    wildcard_constraints:
        dataset=one_of(datasets_from("download")),
    params:
        options=lambda wc: convert_args(wc.dataset),
    log:
        f"{LOGS}/data/convert_{{dataset}}.log",
    benchmark:
        f"{BENCHMARKS}/data/convert_{{dataset}}.tsv"
    threads: THREADS["data"]
    resources:
        mem_mb=16000,
        runtime=120,
    conda:
        ENV
    shell:
        "python -m moir.data convert {wildcards.dataset} --raw data/raw/{wildcards.dataset}"
        " --manifests data/manifests/{wildcards.dataset} {params.options} 2> {log}"
