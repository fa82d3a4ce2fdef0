"""Plain helpers of the model-wrapper tests (the fixtures are in conftest.py): examples, and the unmodified reference.

The reference is what a user of plain Hugging Face code gets: the family's processor applied to the chat-templated
prompt and the media, then the model's own forward/generate. The wrapper must reproduce it when MoIR is off.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import PIL.Image
import torch
from transformers import AutoModelForImageTextToText

from moir.models import Example, VLMWrapper, load_vlm


def image(seed: int, height: int = 32, width: int = 32) -> PIL.Image.Image:
    rng = np.random.default_rng(seed)
    return PIL.Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def video(seed: int, n_frames: int = 4, size: int = 32) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n_frames)]


def image_examples() -> list[Example]:
    """Two image questions of different lengths and sizes and a text-only one."""
    return [
        Example("img-0", "What colour is the star?\nAnswer the question using a single word or phrase.", "red",
                "image", pixels=image(0, 32, 40)),
        Example("img-1", "How many circles are there?\nA. two\nB. three\n"
                "Answer with the option's letter from the given choices directly.", "B", "image",
                pixels=image(1, 48, 32)),
        Example("txt-2", "Is the sky blue?", "yes", "none"),
    ]


def video_examples() -> list[Example]:
    return [
        Example("vid-0", "Which way does the square move?", "left", "video", pixels=video(2, 4), fps=2.0),
        Example("vid-1", "Does the circle change colour?", "no", "video", pixels=video(3, 6), fps=1.0),
    ]


def cached(vlm: VLMWrapper, examples: list[Example]) -> list[Example]:
    """The same examples reading the encoder output, as the encoder cache would give it, instead of the pixels."""
    encoded = vlm.encode(examples)
    return [Example(ex.id, ex.prompt, ex.answer, ex.media_kind, media=media, fps=ex.fps)
            for ex, media in zip(examples, encoded)]


def reference_inputs(vlm: VLMWrapper, examples: list[Example]) -> dict[str, torch.Tensor]:
    """The plain processor's inputs for the examples' prompts (left-padded, generation prompt, no answers)."""
    texts = []
    for ex in examples:
        content = ([{"type": ex.media_kind}] if ex.media_kind != "none" else []) + [{"type": "text", "text": ex.prompt}]
        texts.append(vlm.processor.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False))
    media = {}
    images = [ex.pixels for ex in examples if ex.media_kind == "image"]
    videos = [np.stack(ex.pixels) for ex in examples if ex.media_kind == "video"]
    if images:
        media["images"] = images
    if videos:
        media["videos"] = videos
        media["video_metadata"] = [{"total_num_frames": len(ex.pixels), "fps": ex.fps}
                                   for ex in examples if ex.media_kind == "video"]
    vlm.tokenizer.padding_side = "left"
    return dict(vlm.processor(text=texts, padding=True, return_tensors="pt", **media))


def reference_model(model_dir: Path) -> torch.nn.Module:
    return AutoModelForImageTextToText.from_pretrained(model_dir).eval()


def load(tiny_dirs: dict[str, Path], name: str) -> VLMWrapper:
    return load_vlm(tiny_dirs[name])


def randomize_lora(vlm: VLMWrapper, seed: int) -> None:
    """LoRA's B starts at zero (an identity adapter): give every LoRA weight and gate a random value."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in vlm.trainable_parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.5)


def option_letter_tokens(vlm: VLMWrapper, letter: str) -> tuple[list[str], list[str]]:
    """(the prompt's tokens, the answer's tokens without the turn's end and bare spaces) of a four-option question
    whose answer is `letter`, as a training batch tokenises them."""
    prompt = ("Which colour is it?\nA. red\nB. green\nC. blue\nD. yellow\n"
              "Answer with the option's letter from the given choices directly.")
    batch = vlm.collate([Example("mc", prompt, letter, "none")], with_answer=True)
    ids = batch["input_ids"][0]
    tokens = vlm.tokenizer.convert_ids_to_tokens
    answer = [t for t in tokens(ids[batch["answer_mask"][0]].tolist())
              if t not in vlm.tokenizer.all_special_tokens and vlm.tokenizer.convert_tokens_to_string([t]).strip()]
    return tokens(ids[batch["text_mask"][0]].tolist()), answer
