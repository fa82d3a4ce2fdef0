"""The demo suite's embedded benchmark: rendered images and short videos with questions and text hints.

Why it looks like this. The demo must be able to show text dominance and what MoIR does to it, offline and in
minutes. So every question carries a text hint (the manifest's `hint`, shown as "Context: ...") that states an
answer and is right with a configurable probability. A model trained where the hint is right 80% of the time can
score 80% without looking at the image; evaluating where the hint is right only 50% of the time shows whether it
reads the image. The `category` column records the question type and whether the hint was right
("colour:hint-right", "direction:hint-wrong", ...), so accuracy on hint-wrong questions is the share answered from
the pixels.

Datasets
--------
synth-image   PNG images (default 48x48) of 1-4 identical shapes (circle/square/triangle) of one colour
              (red/green/blue/yellow) on a 2x2 grid. Questions: colour, shape, count, side (left/right) and
              level (top/bottom), the last two for single-shape images.
synth-video   MP4 clips (MPEG-4 video + AAC audio, default 12 frames of 64x64 at 8 fps = 1.5 s): one shape moves
              left/right/up/down and may change colour half-way; the audio track is a low or a high tone. Questions:
              direction, colour at the start, colour at the end, whether the colour changes (all need the frames),
              and optionally the tone's pitch (`tone_share`, needs the audio). A configurable share of clips has no
              audio stream at all.
              The background is plain grey or (`background="gradient"`) a light colour gradient that shows
              where each patch of a frame is (`video_background`).

Each question is multiple choice (`choice_share`) or short answer. The options are 2-4 of the answers in a random
order, or, with `fixed_choices`, every answer the question can have in one fixed order (colours always "A. red",
"B. green", ...): then an option letter stands for one answer, and a tiny model answers a multiple-choice question
as it names what it sees, instead of first having to learn to find the option that matches (a pointer that a
4-layer, 64-wide model did not learn in 2,250 pretraining steps). Splits: pretrain (plentiful, used
to pretrain the demo's tiny base models from scratch), train, val, test. Pretrain and train use `hint_accuracy`,
val and test `eval_hint_accuracy`. `pretrain_question_weights` draws the pretrain split's question types in proportion
to weights (a curriculum for the bases: the hard types more often); the other splits keep uniform types. A hint
accuracy of `"chance"` (for the pretrain split) makes the hint name every candidate answer equally often: it then
tells nothing, and a base cannot learn to lean on it. Every example draws from its own random stream seeded by
(seed, split, index), so the same arguments give byte-identical files and changing one split's size leaves the
other splits unchanged.

The words of every prompt and answer these datasets produce (with moir.prompts) are in `VOCABULARY`, split with
`TOKEN_PATTERN`; the tiny models' tokenizer is built from them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw
from moir import runtime

from moir.data.manifest import write_manifest
from moir.storage import atomic_path

log = logging.getLogger(__name__)

SPLITS = ("pretrain", "train", "val", "test")
EVAL_SPLITS = ("val", "test")
_SPLIT_STREAM = {split: code for code, split in enumerate(SPLITS)}

COLOURS = {"red": (215, 48, 39), "green": (26, 152, 80), "blue": (49, 94, 214), "yellow": (240, 200, 30)}
SHAPES = ("circle", "square", "triangle")
NUMBERS = ("one", "two", "three", "four")
SIDES = ("left", "right")
LEVELS = ("top", "bottom")
DIRECTIONS = ("left", "right", "up", "down")
YES_NO = ("yes", "no")
TONES = ("low", "high")
TONE_HZ = {"low": 330.0, "high": 990.0}
BACKGROUND = (236, 236, 236)
VIDEO_BACKGROUNDS = ("plain", "gradient")
VIDEO_BIT_RATE = 2_000_000

HINT_TEMPLATES = ("A friend says the answer is {}.", "The caption says {}.")
# A hint accuracy of "chance": the hint names every candidate answer equally often, so it tells nothing (for the
# pretraining of the bases: a hint right more often than chance is a shortcut they learn before the pixels).
CHANCE = "chance"

# Every word and punctuation mark of the prompts (moir.prompts.build_prompt on these datasets' rows, including
# the optional "Audio transcript:" prefix) and of the target answers, as TOKEN_PATTERN splits them.
TOKEN_PATTERN = r"[A-Za-z]+|\d+|[^\sA-Za-z\d]"
VOCABULARY = (
    # prompt scaffolding from moir.prompts
    "Context", "Audio", "transcript", "Answer", "with", "the", "option", "s", "letter", "from", "given",
    "choices", "directly", "question", "using", "a", "single", "word", "or", "phrase",
    "A", "B", "C", "D", ".", ":", "'", "?",
    # hints
    "friend", "says", "answer", "is", "The", "caption",
    # questions
    "What", "colour", "shape", "shapes", "are", "Which", "shown", "How", "many", "there", "Is", "on", "at",
    "way", "does", "move", "start", "end", "Does", "change", "sound",
    # answers
    *COLOURS, *SHAPES, *NUMBERS, *SIDES, *LEVELS, "up", "down", *YES_NO, *TONES,
)


@dataclass(frozen=True)
class Question:
    """One question about a generated scene: its type, text, the answer and the answers it can have."""

    kind: str
    text: str
    answer: str
    answer_space: tuple[str, ...]


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, _SPLIT_STREAM[split], index])


def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _pick_kind(rng: np.random.Generator, kinds: tuple[str, ...], weights: Mapping[str, float] | None) -> str:
    """A question type: uniform (one draw of `_pick`), or in proportion to `weights` (a type not named weighs 1)."""
    if weights is None:
        return _pick(rng, kinds)
    w = np.array([float(weights.get(kind, 1.0)) for kind in kinds])
    index = int(np.searchsorted(np.cumsum(w / w.sum()), rng.random(), side="right"))
    return kinds[min(index, len(kinds) - 1)]


def check_question_weights(weights: Mapping[str, float] | None, kinds: tuple[str, ...]) -> None:
    """ValueError naming an unknown question type or a weight that is negative (or all zero)."""
    if weights is None:
        return
    unknown = sorted(set(weights) - set(kinds))
    if unknown:
        raise ValueError(f"pretrain_question_weights: unknown question type(s) {unknown}; expected some of {kinds}")
    if any(float(w) < 0 for w in weights.values()) or sum(float(weights.get(k, 1.0)) for k in kinds) <= 0:
        raise ValueError(f"pretrain_question_weights: weights must be >= 0 and not all 0, got {dict(weights)}")


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, radius: float, fill: tuple) -> None:
    """Draw one filled shape centred at (cx, cy) whose bounding box has half-width `radius`."""
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - radius), (cx + radius, cy + radius), (cx - radius, cy + radius)], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def attach_question(
    rng: np.random.Generator, question: Question, *, hint_accuracy: float | str, choice_share: float,
    fixed_choices: bool = False,
) -> dict:
    """Manifest fields for one question: choices (or none), answer, and a hint right with `hint_accuracy`.

    A multiple-choice question lists 2-4 of the answers in a random order, or every answer in the question's fixed
    order (`fixed_choices`); a wrong hint names one of the other options. `hint_accuracy="chance"` makes the hint
    name each candidate (the options, or the answer space) equally often: it carries no information on the answer."""
    wrong = [option for option in question.answer_space if option != question.answer]
    choices: list[str] = []
    answer_index = None
    if rng.random() < choice_share:
        if fixed_choices:
            choices = list(question.answer_space)
        else:
            n_choices = int(rng.integers(2, min(4, len(question.answer_space)) + 1))
            distractors = [wrong[i] for i in rng.permutation(len(wrong))[: n_choices - 1]]
            choices = [question.answer, *distractors]
            choices = [choices[i] for i in rng.permutation(len(choices))]
            wrong = distractors
        answer_index = choices.index(question.answer)
    candidates = len(choices) if choices else len(question.answer_space)
    p_right = 1.0 / candidates if hint_accuracy == CHANCE else hint_accuracy
    hint_right = bool(rng.random() < p_right)
    stated = question.answer if hint_right else _pick(rng, wrong)
    return {
        "question": question.text,
        "choices": choices,
        "answer_index": answer_index,
        "answers": [question.answer],
        "answer_type": None,
        "hint": _pick(rng, HINT_TEMPLATES).format(stated),
        "category": f"{question.kind}:hint-{'right' if hint_right else 'wrong'}",
    }


# ----------------------------------------------------------------------------------------------- synth-image

IMAGE_QUESTION_KINDS = ("colour", "shape", "count", "side", "level")


def image_example(
    rng: np.random.Generator, image_size: int, weights: Mapping[str, float] | None = None
) -> tuple[Image.Image, Question]:
    """Render one scene and ask one question about it."""
    kind = _pick_kind(rng, IMAGE_QUESTION_KINDS, weights)
    count = 1 if kind in ("side", "level") else int(rng.integers(1, 5))
    colour, shape = _pick(rng, tuple(COLOURS)), _pick(rng, SHAPES)
    cells = rng.permutation(4)[:count]  # 2x2 grid: cell = 2 * row + column
    cell = image_size / 2
    image = Image.new("RGB", (image_size, image_size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for c in cells:
        row, column = divmod(int(c), 2)
        jitter = rng.uniform(-0.08, 0.08, size=2) * cell
        radius = cell * rng.uniform(0.30, 0.40)
        draw_shape(draw, shape, (column + 0.5) * cell + jitter[0], (row + 0.5) * cell + jitter[1], radius, COLOURS[colour])
    row, column = divmod(int(cells[0]), 2)
    subject = "the shape" if count == 1 else "the shapes"
    question = {
        "colour": Question("colour", f"What colour {'is' if count == 1 else 'are'} {subject}?", colour, tuple(COLOURS)),
        "shape": Question("shape", "Which shape is shown?", shape, SHAPES),
        "count": Question("count", "How many shapes are there?", NUMBERS[count - 1], NUMBERS),
        "side": Question("side", "Is the shape on the left or the right?", SIDES[column], SIDES),
        "level": Question("level", "Is the shape at the top or the bottom?", LEVELS[row], LEVELS),
    }[kind]
    return image, question


# ----------------------------------------------------------------------------------------------- synth-video

VIDEO_QUESTION_KINDS = ("direction", "start colour", "end colour", "colour change")


@dataclass(frozen=True)
class Clip:
    """What a generated clip shows and plays."""

    shape: str
    direction: str
    start_colour: str
    end_colour: str
    tone: str | None  # None: the clip has no audio stream


def video_background(size: int, kind: str = "plain") -> np.ndarray:
    """The background of every frame, (size, size, 3) uint8: plain light grey, or a light gradient whose red falls
    from left to right and whose green falls from top to bottom, so that each patch of a frame shows where it is.

    Why the gradient: Qwen2.5-VL's vision tower has no absolute position embedding (its rotary positions are
    relative) and, on a plain background, a patch holding the shape looks the same wherever it is; where it is then
    reaches the language model only through M-RoPE's height and width phases, which at the tiny model's 16-dim heads
    (rope_theta 1e6, sections 2/3/3) turn by less than 0.03 rad per merged patch. A scene's background, as in real
    video, lets the base see where the shape is and so which way it moves (docs/study.md, "Bases")."""
    if kind == "plain":
        return np.broadcast_to(np.array(BACKGROUND, dtype=np.uint8), (size, size, 3)).copy()
    if kind != "gradient":
        raise ValueError(f"unknown video background {kind!r}; expected one of {VIDEO_BACKGROUNDS}")
    ramp = np.linspace(1.0, 0.0, size)
    background = np.empty((size, size, 3))
    background[..., 0] = 176 + 72 * ramp[None, :]  # red: 248 at the left edge, 176 at the right
    background[..., 1] = 176 + 72 * ramp[:, None]  # green: 248 at the top, 176 at the bottom
    background[..., 2] = 212
    return np.round(background).astype(np.uint8)


def render_clip(
    rng: np.random.Generator, clip: Clip, *, frames: int, size: int, background: str = "plain"
) -> np.ndarray:
    """The clip's frames, (frames, size, size, 3) uint8: the shape moves across, changing colour half-way."""
    radius = size * rng.uniform(0.12, 0.16)
    lane = size * rng.uniform(0.35, 0.65)  # the fixed coordinate across the motion
    start, stop = 0.15 * size, 0.85 * size
    if clip.direction in ("left", "up"):
        start, stop = stop, start
    video = np.empty((frames, size, size, 3), dtype=np.uint8)
    backdrop = Image.fromarray(video_background(size, background))
    for t in range(frames):
        position = start + (stop - start) * t / (frames - 1)
        cx, cy = (position, lane) if clip.direction in ("left", "right") else (lane, position)
        colour = clip.start_colour if t < frames // 2 else clip.end_colour
        image = backdrop.copy()
        draw_shape(ImageDraw.Draw(image), clip.shape, cx, cy, radius, COLOURS[colour])
        video[t] = np.asarray(image)
    return video


def tone_track(tone: str, duration: float, sample_rate: int) -> np.ndarray:
    """A sine tone with 20 ms fades, float32 in [-0.5, 0.5]."""
    t = np.arange(int(round(duration * sample_rate))) / sample_rate
    wave = 0.5 * np.sin(2 * np.pi * TONE_HZ[tone] * t)
    fade = np.clip(np.minimum(t, duration - t) / 0.02, 0.0, 1.0)
    return (wave * fade).astype(np.float32)


def write_mp4(path: Path, frames: np.ndarray, fps: int, audio: np.ndarray | None = None, sample_rate: int = 16000) -> None:
    """Encode RGB frames (T, H, W, 3) uint8 and an optional mono float track into an MP4, atomically.

    Video: MPEG-4 Part 2 at a high bit rate (near-lossless at these sizes); audio: AAC. The codec choice is for
    reproducibility: libx264 gave different bytes for the same frames in about 1 run in 30, while ffmpeg's own
    MPEG-4 encoder, single-threaded, gives identical files. decord reads both like any camera video.
    """
    with atomic_path(path) as tmp, av.open(str(tmp), mode="w", format="mp4") as container:
        video = container.add_stream("mpeg4", rate=fps)
        video.width, video.height = frames.shape[2], frames.shape[1]
        video.pix_fmt = "yuv420p"
        video.bit_rate = VIDEO_BIT_RATE
        video.codec_context.thread_count = 1
        sound = None
        if audio is not None:
            sound = container.add_stream("aac", rate=sample_rate)
            sound.layout = "mono"
            sound.options = {"aac_coder": "fast"}  # the default two-loop search is ~3x slower
        for frame in frames:
            picture = av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(format="yuv420p")
            container.mux(video.encode(picture))
        container.mux(video.encode())
        if sound is not None:
            track = av.AudioFrame.from_ndarray(audio[None, :].astype(np.float32), format="fltp", layout="mono")
            track.sample_rate = sample_rate
            track.pts = 0
            container.mux(sound.encode(track))
            container.mux(sound.encode())


def video_example(
    rng: np.random.Generator, *, silent_share: float, tone_share: float, weights: Mapping[str, float] | None = None
) -> tuple[Clip, Question]:
    """Draw one clip's content and one question about it."""
    start_colour = _pick(rng, tuple(COLOURS))
    changes = bool(rng.random() < 0.5)
    end_colour = _pick(rng, [c for c in COLOURS if c != start_colour]) if changes else start_colour
    tone = None if rng.random() < silent_share else _pick(rng, TONES)
    clip = Clip(_pick(rng, SHAPES), _pick(rng, DIRECTIONS), start_colour, end_colour, tone)
    if tone is not None and rng.random() < tone_share:
        return clip, Question("tone", "Is the sound low or high?", tone, TONES)
    kind = _pick_kind(rng, VIDEO_QUESTION_KINDS, weights)
    question = {
        "direction": Question("direction", "Which way does the shape move?", clip.direction, DIRECTIONS),
        "start colour": Question("start colour", "What colour is the shape at the start?", start_colour, tuple(COLOURS)),
        "end colour": Question("end colour", "What colour is the shape at the end?", end_colour, tuple(COLOURS)),
        "colour change": Question("colour change", "Does the shape change colour?", YES_NO[0 if changes else 1], YES_NO),
    }[kind]
    return clip, question


# ----------------------------------------------------------------------------------------------- datasets


@dataclass(frozen=True)
class HintSettings:
    """Hint and question-form settings shared by both datasets."""

    hint_accuracy: float = 0.8
    eval_hint_accuracy: float = 0.5
    pretrain_hint_accuracy: float | str | None = None  # None: same as hint_accuracy; "chance": uninformative
    choice_share: float = 0.5
    fixed_choices: bool = False  # multiple choice lists every answer in a fixed order (module docstring)

    def for_split(self, split: str) -> float | str:
        if split in EVAL_SPLITS:
            return self.eval_hint_accuracy
        if split == "pretrain" and self.pretrain_hint_accuracy is not None:
            return self.pretrain_hint_accuracy
        return self.hint_accuracy

    def check(self) -> None:
        for name in ("hint_accuracy", "eval_hint_accuracy", "pretrain_hint_accuracy", "choice_share"):
            value = getattr(self, name)
            if value is None or (name == "pretrain_hint_accuracy" and value == CHANCE):
                continue
            if isinstance(value, str) or not 0.0 <= value <= 1.0:  # NaN fails the comparison
                raise ValueError(f"{name} must be in [0, 1]{' or chance' if name == 'pretrain_hint_accuracy' else ''}, "
                                 f"got {value!r}")


def _row(dataset: str, split: str, index: int, kind: str, media_path: str, fields: dict) -> dict:
    return {
        "id": f"{dataset}/{split}/{index:06d}",
        "dataset": dataset,
        "split": split,
        "media_kind": kind,
        "media_path": media_path,
        "has_image": True,
        **fields,
    }


def _generate(
    dataset: str,
    sizes: dict[str, int],
    raw_dir: Path,
    manifest_dir: Path,
    make_example: Callable[[np.random.Generator, str, int, Path], tuple[str, str, Question]],
    hints: HintSettings,
    seed: int,
) -> dict[str, Path]:
    hints.check()
    unknown = set(sizes) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown split(s) {sorted(unknown)}; expected some of {SPLITS}")
    written = {}
    for split, n in sizes.items():
        if n < 0:
            raise ValueError(f"split {split!r}: size must be >= 0, got {n}")
        (raw_dir / split).mkdir(parents=True, exist_ok=True)
        rows = []
        for index in runtime.progress(range(n), desc=f"{dataset}/{split}", unit="example", leave=False):
            rng = _rng(seed, split, index)
            kind, media_path, question = make_example(rng, split, index, raw_dir)
            fields = attach_question(rng, question, hint_accuracy=hints.for_split(split),
                                     choice_share=hints.choice_share, fixed_choices=hints.fixed_choices)
            rows.append(_row(dataset, split, index, kind, media_path, fields))
        written[split] = write_manifest(rows, manifest_dir / f"{split}.parquet", media_root=raw_dir)
        log.info("%s/%s: %d examples -> %s", dataset, split, n, written[split])
    return written


def generate_synth_image(
    raw_dir: str | os.PathLike,
    manifest_dir: str | os.PathLike,
    sizes: dict[str, int],
    *,
    image_size: int = 48,
    hints: HintSettings = HintSettings(),
    seed: int = 0,
    dataset: str = "synth-image",
    pretrain_question_weights: Mapping[str, float] | None = None,
) -> dict[str, Path]:
    """Render the synth-image splits into `raw_dir/<split>/` and write one manifest per split."""
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16 pixels, got {image_size}")
    check_question_weights(pretrain_question_weights, IMAGE_QUESTION_KINDS)

    def make(rng: np.random.Generator, split: str, index: int, root: Path) -> tuple[str, str, Question]:
        image, question = image_example(rng, image_size, pretrain_question_weights if split == "pretrain" else None)
        media_path = f"{split}/{index:06d}.png"
        with atomic_path(root / media_path) as tmp:
            image.save(tmp, format="PNG")
        return "image", media_path, question

    return _generate(dataset, sizes, Path(raw_dir), Path(manifest_dir), make, hints, seed)


def generate_synth_video(
    raw_dir: str | os.PathLike,
    manifest_dir: str | os.PathLike,
    sizes: dict[str, int],
    *,
    frames: int = 12,
    frame_size: int = 64,
    fps: int = 8,
    sample_rate: int = 16000,
    silent_share: float = 0.05,
    tone_share: float = 0.0,
    background: str = "plain",
    hints: HintSettings = HintSettings(),
    seed: int = 0,
    dataset: str = "synth-video",
    pretrain_question_weights: Mapping[str, float] | None = None,
) -> dict[str, Path]:
    """Encode the synth-video splits into `raw_dir/<split>/*.mp4` and write one manifest per split.

    `frame_size` must be a multiple of 32: decord 0.6 misreads some other widths (48, for one).
    """
    if frames < 4:
        raise ValueError(f"frames must be >= 4 (motion and a colour change need them), got {frames}")
    check_question_weights(pretrain_question_weights, VIDEO_QUESTION_KINDS)
    if frame_size < 32 or frame_size % 32:
        raise ValueError(f"frame_size must be a positive multiple of 32 (decord misreads e.g. 48), got {frame_size}")
    if fps < 1:
        raise ValueError(f"fps must be >= 1, got {fps}")
    for name, share in (("silent_share", silent_share), ("tone_share", tone_share)):
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {share}")
    if background not in VIDEO_BACKGROUNDS:
        raise ValueError(f"background must be one of {VIDEO_BACKGROUNDS}, got {background!r}")
    duration = frames / fps

    def make(rng: np.random.Generator, split: str, index: int, root: Path) -> tuple[str, str, Question]:
        clip, question = video_example(rng, silent_share=silent_share, tone_share=tone_share,
                                       weights=pretrain_question_weights if split == "pretrain" else None)
        video = render_clip(rng, clip, frames=frames, size=frame_size, background=background)
        audio = None if clip.tone is None else tone_track(clip.tone, duration, sample_rate)
        media_path = f"{split}/{index:06d}.mp4"
        write_mp4(root / media_path, video, fps, audio, sample_rate)
        return "video", media_path, question

    return _generate(dataset, sizes, Path(raw_dir), Path(manifest_dir), make, hints, seed)
