"""Videos -> sampled frames and 16 kHz audio (data/media/<dataset>/<split>/), and audio -> ASR transcripts.

Frames are decoded once, here; the encoder cache and the evaluations on pixels read them from frames.parquet.
Transcripts are made only for datasets with `audio: transcript` (the V+A+T runs); they are cached per
(settings, audio) under data/transcripts/cache, across splits and reruns.
"""


rule extract_media:
    input:
        manifest=PLAN.manifest("{dataset}", "{split}"),
    output:
        frames=PLAN.frames("{dataset}", "{split}"),
        audio=PLAN.audio("{dataset}", "{split}"),
        errors=PLAN.media_errors("{dataset}", "{split}"),
    log:
        f"{LOGS}/media/extract_{{dataset}}_{{split}}.log",
    benchmark:
        f"{BENCHMARKS}/media/extract_{{dataset}}_{{split}}.tsv"
    wildcard_constraints:
        dataset=one_of(d for d in SC["datasets"] if PLAN.is_video(d)),
    conda:
        ENV
    threads: THREADS["media"]
    resources:
        mem_mb=4000,
        runtime=240,
    params:
        settings=PLAN.extract_settings().to_json(),
        code=code("extract"),
        out=lambda wc, output: dirname(output.frames),
    shell:
        "python -m moir.media extract --manifest {input.manifest:q} --out-dir {params.out:q}"
        " --settings {params.settings:q} --workers {threads} 2> {log:q}"


rule transcribe_audio:
    input:
        **PLAN.hub_lock_input(PLAN.ASR),
        audio=PLAN.audio("{dataset}", "{split}"),
    output:
        PLAN.transcripts("{dataset}", "{split}"),
    log:
        f"{LOGS}/media/transcribe_{{dataset}}_{{split}}.log",
    benchmark:
        f"{BENCHMARKS}/media/transcribe_{{dataset}}_{{split}}.tsv"
    wildcard_constraints:
        dataset=one_of(d for d in SC["datasets"] if PLAN.uses_transcripts(d)),
    conda:
        ENV
    threads: THREADS["transcripts"]
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=GPU,
    params:
        settings=PLAN.transcribe_settings().to_json(),
        code=code("transcribe"),
        cache=PLAN.TRANSCRIPT_CACHE,
        hub=hub_lock_option,
    shell:
        "python -m moir.media transcribe --audio {input.audio:q} {params.hub:q} --out {output:q} --cache-dir {params.cache:q}"
        " --settings {params.settings:q} 2> {log:q}"
