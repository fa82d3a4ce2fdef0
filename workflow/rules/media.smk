"""Videos -> sampled frames and 16 kHz audio (data/media/<dataset>/<split>/), and audio -> ASR transcripts.

Frames are decoded once here; the token cache (and evaluation on pixels) read them from frames.parquet. The
transcripts rule runs only for datasets with `audio: transcript` (the V+A+T runs).
"""


def frame_sampling_args():
    media = SC["media"]
    if media["num_frames"] is not None:
        return f"--num-frames {media['num_frames']}"
    return f"--fps {media['fps']}" + (f" --max-frames {media['max_frames']}" if media["max_frames"] else "")


rule extract_media:
    input:
        manifest="data/manifests/{dataset}/{split}.parquet",
        code=moir_sources("moir.media.__main__"),
    output:
        frames="data/media/{dataset}/{split}/frames.parquet",
        audio="data/media/{dataset}/{split}/audio.parquet",
        errors="data/media/{dataset}/{split}/errors.parquet",
    wildcard_constraints:
        dataset=one_of(d for d in SC["datasets"] if is_video(d)),
    params:
        sampling=frame_sampling_args(),
        image_format=SC["media"]["image_format"],
        jpeg_quality=SC["media"]["jpeg_quality"],
        max_bad_share=SC["media"]["max_bad_share"],
    log:
        f"{LOGS}/media/extract_{{dataset}}_{{split}}.log",
    benchmark:
        f"{BENCHMARKS}/media/extract_{{dataset}}_{{split}}.tsv"
    threads: THREADS["media"]
    resources:
        mem_mb=4000,
        runtime=240,
    conda:
        ENV
    shell:
        "python -m moir.media extract --manifest {input.manifest} --out-dir data/media/{wildcards.dataset}/{wildcards.split}"
        " {params.sampling} --image-format {params.image_format} --jpeg-quality {params.jpeg_quality}"
        " --max-bad-share {params.max_bad_share} --workers {threads} 2> {log}"


rule transcribe_audio:
    input:
        audio="data/media/{dataset}/{split}/audio.parquet",
        code=moir_sources("moir.media.__main__"),
    output:
        "data/transcripts/{dataset}/{split}.parquet",
    wildcard_constraints:
        dataset=one_of(d for d in SC["datasets"] if uses_transcripts(d)),
    params:
        model=SC["transcripts"]["model"],
        revision=SC["transcripts"]["revision"],
        language=f"--language {SC['transcripts']['language']}" if SC["transcripts"]["language"] else "",
        batch_size=SC["transcripts"]["batch_size"],
        device=SC["device"],
    log:
        f"{LOGS}/media/transcribe_{{dataset}}_{{split}}.log",
    benchmark:
        f"{BENCHMARKS}/media/transcribe_{{dataset}}_{{split}}.tsv"
    threads: THREADS["transcripts"]
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=GPU,
    conda:
        ENV
    shell:
        # Transcripts are cached per (settings, audio) across splits and reruns under data/transcripts/cache.
        "python -m moir.media transcribe --audio {input.audio} --model {params.model} --revision {params.revision}"
        " {params.language} --batch-size {params.batch_size} --device {params.device}"
        " --out {output} --cache-dir data/transcripts/cache 2> {log}"
