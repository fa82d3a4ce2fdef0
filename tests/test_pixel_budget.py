"""The Qwen2.5-VL pixel budget, with the real processors built offline from the shipped hub settings: the token
counts of 360p, 720p and 1080p videos, the longest MMBench-Video example against max_length, the transcript cap,
and the budget reaching the wrapper's processor and encoder signature."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_helpers import video
from transformers import Qwen2_5_VLProcessor

from moir.media.transcript_cap import cap_transcript
from moir.models import Example, load_vlm
from moir.models.pixel_budget import (
    PAPER_BUDGET,
    PixelBudget,
    build_qwen_media_processors,
    process_videos,
    video_tokens,
)
from moir.models.tiny import QWEN_CHAT_TEMPLATE, qwen_tokenizer

RESOLUTIONS = {"360p": (360, 640), "720p": (720, 1280), "1080p": (1080, 1920)}
QWEN = "Qwen/Qwen2.5-VL-7B-Instruct"


def frames(height: int, width: int, n: int = 16) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, height, width, 3), dtype=np.uint8)


def grid_tokens(grid: torch.Tensor) -> int:
    return int(grid.prod()) // 4


def test_hub_settings_give_the_issue_counts():
    """Without a budget the hub processor keeps up to 12.8 MP per frame: 2,392 / 9,568 / 21,528 tokens."""
    hub = PixelBudget(3136, 12845056, 3136, 12845056)
    assert [video_tokens(h, w, 16, hub) for h, w in RESOLUTIONS.values()] == [2392, 9568, 21528]
    _, video_processor = build_qwen_media_processors(QWEN)
    out = process_videos(video_processor, [frames(*RESOLUTIONS["360p"])], None)
    assert grid_tokens(out["video_grid_thw"]) == 2392


@pytest.mark.parametrize("name", list(RESOLUTIONS))
def test_paper_budget_video_tokens(name):
    _, video_processor = build_qwen_media_processors(QWEN, PAPER_BUDGET)
    height, width = RESOLUTIONS[name]
    out = process_videos(video_processor, [frames(height, width)], PAPER_BUDGET)
    assert out["video_grid_thw"].tolist() == [[8, 16, 30]]  # 224 x 420 px per frame
    assert grid_tokens(out["video_grid_thw"]) == video_tokens(height, width, 16, PAPER_BUDGET) == 960


def test_total_pixels_bound_any_frame_count():
    for n_frames in (4, 16, 32, 64):
        for height, width in [*RESOLUTIONS.values(), (480, 640), (1920, 1080)]:
            assert video_tokens(height, width, n_frames, PAPER_BUDGET) <= 1024
    _, video_processor = build_qwen_media_processors(QWEN, PAPER_BUDGET)
    out = process_videos(video_processor, [frames(720, 1280, 32)], PAPER_BUDGET)
    assert grid_tokens(out["video_grid_thw"]) == video_tokens(720, 1280, 32, PAPER_BUDGET) <= 1024


def test_longest_mmbench_video_example_fits_max_length():
    """1080p x 16 frames + a 512-token transcript + a 200-token question + a 256-token answer <= 2048 tokens,
    counted by the real processor (shipped settings, the paper budget) with the chat template (the tokenizer is the
    tiny model's: the caps are in the tokenizer's own tokens, so the count is the same for the real one)."""
    image_processor, video_processor = build_qwen_media_processors(QWEN, PAPER_BUDGET)
    tokenizer = qwen_tokenizer()
    processor = Qwen2_5_VLProcessor(image_processor=image_processor, video_processor=video_processor,
                                    tokenizer=tokenizer, chat_template=QWEN_CHAT_TEMPLATE)
    words = "the speaker explains how the red square moves left while a circle changes colour " * 400
    transcript = cap_transcript(words, tokenizer=tokenizer, max_tokens=512)
    question = tokenizer.decode(tokenizer.encode(words, add_special_tokens=False)[:200])
    answer = tokenizer.decode(tokenizer.encode(words, add_special_tokens=False)[:256]) + "<|im_end|>"
    messages = [{"role": "user", "content": [{"type": "video"},
                                             {"type": "text", "text": f"Audio transcript: {transcript}\n{question}"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], videos=[frames(1080, 1920)], return_tensors="pt")
    n_answer = len(tokenizer.encode(answer, add_special_tokens=False))
    n_video = int((inputs["input_ids"] == tokenizer.convert_tokens_to_ids("<|video_pad|>")).sum())
    total = inputs["input_ids"].shape[1] + n_answer
    assert n_video == 960
    assert total <= 2048, total


def test_cap_transcript():
    tokenizer = qwen_tokenizer()
    text = "the circle moves left and the square moves right " * 50
    for cap in (5, 17, 100):
        capped = cap_transcript(text, tokenizer=tokenizer, max_tokens=cap)
        assert len(tokenizer.encode(capped, add_special_tokens=False)) <= cap
        assert capped.endswith(" ...") and text.startswith(capped[:-4])
    assert cap_transcript("short", tokenizer=tokenizer, max_tokens=100) == "short"
    assert cap_transcript(text, max_chars=20) == text[:16].rstrip() + " ..."
    assert len(cap_transcript(text, max_chars=20)) <= 20
    with pytest.raises(ValueError, match="tokenizer"):
        cap_transcript(text, max_tokens=10)


def test_bad_budget_names_the_field():
    with pytest.raises(ValueError, match="video_max_pixels"):
        PixelBudget(3136, 802816, 3136, 0)
    with pytest.raises(ValueError, match="image_min_pixels 9000 > image_max_pixels"):
        PixelBudget(9000, 8000, 3136, 100352)
    with pytest.raises(ValueError, match="unknown field"):
        PixelBudget.from_mapping({"image_min_pixels": 1, "image_max_pixels": 2, "video_min_pixels": 1,
                                  "video_max_pixels": 2, "video_pixels": 3})


def test_budget_reaches_wrapper_and_signature(tiny_dirs):  # noqa: F811
    """On tiny-qwen2.5-vl (4 px patches): a smaller per-video budget shrinks the video grid and changes the encoder
    signature, so a cache dumped under another budget is refused."""
    path = tiny_dirs["tiny-qwen2.5-vl"]
    plain = load_vlm(path)
    budget = PixelBudget(image_min_pixels=256, image_max_pixels=1024, video_min_pixels=64, video_max_pixels=1024,
                         video_total_pixels=2 * 256)
    small = load_vlm(path, pixel_budget=budget)
    example = [Example("v", "What moves?", "left", "video", pixels=video(0, 4), fps=2.0)]
    grid_plain = plain.collate(example)["video_grid_thw"]
    grid_small = small.collate(example)["video_grid_thw"]
    assert grid_plain.tolist() == [[2, 8, 8]]  # 32 x 32 px frames
    assert grid_small.tolist() == [[2, 4, 4]]  # 256 px per frame: 16 x 16
    assert small.encode(example)[0].grid_thw.tolist() == [[2, 4, 4]]
    signature = small.encoder_signature()
    assert signature["video_total_pixels"] == 512 and signature["video_pixels"] == "64-1024"
    assert "video_total_pixels" not in plain.encoder_signature()  # caches dumped before the budget stay valid
    with pytest.raises(ValueError, match="qwen2_5_vl"):
        load_vlm(tiny_dirs["tiny-llava"], pixel_budget=budget)
