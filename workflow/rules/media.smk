"""Videos -> sampled frames and 16 kHz audio (data/media/<dataset>/<split>/), and audio -> ASR transcripts.

Frames are decoded once, here; the token cache and the evaluations on pixels read them from frames.parquet.
Transcripts are made only for datasets with `audio: transcript` (the V+A+T runs); they are cached per
(settings, audio) under data/transcripts/cache, across splits and reruns.
"""


rule extract_media:
    input:
        manifest="data/manifests/{dataset}/{split}.parquet",
        code=moir_sources("moir.media.__main__"),
    output:
        frames="data/media/{dataset}/{split}/frames.parquet",
        audio="data/media/{dataset}/{split}/audio.parquet",
        errors="data/media/{dataset}/{split}/errors.parquet",
    log:
        f"{LOGS}/media/extract_{{dataset}}_{{split}}.log",
    benchmark:
        f"{BENCHMARKS}/media/extract_{{dataset}}_{{split}}.tsv"
    wildcard_constraints:
        dataset=one_of(d for d in SC["datasets"] if is_video(d)),
    conda:
        ENV
    threads: THREADS["media"]
    resources:
        mem_mb=4000,
        runtime=240,
    params:
        sampling=frame_sampling_args(),
        encoding=options(SC["media"], ("image_format", "jpeg_quality", "max_bad_share")),
        out=lambda wc, output: os.path.dirname(output.frames),
    shell:
        "python -m moir.media extract --manifest {input.manifest} --out-dir {params.out} {params.sampling}"
        " {params.encoding} --workers {threads} 2> {log}"


rule transcribe_audio:
    input:
        audio="data/media/{dataset}/{split}/audio.parquet",
        code=moir_sources("moir.media.__main__"),
    output:
        "data/transcripts/{dataset}/{split}.parquet",
    log:
        f"{LOGS}/media/transcribe_{{dataset}}_{{split}}.log",
    benchmark:
        f"{BENCHMARKS}/media/transcribe_{{dataset}}_{{split}}.tsv"
    wildcard_constraints:
        dataset=one_of(d for d in SC["datasets"] if uses_transcripts(d)),
    conda:
        ENV
    threads: THREADS["transcripts"]
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=GPU,
    params:
        asr=options(SC["transcripts"], ("batch_size", "language", "model", "revision")),
        device=SC["device"],
    shell:
        "python -m moir.media transcribe --audio {input.audio} {params.asr} --device {params.device}"
        " --out {output} --cache-dir data/transcripts/cache 2> {log}"
