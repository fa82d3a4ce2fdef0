"""Tiny models of the two real architectures, built offline: `tiny-llava` and `tiny-qwen2.5-vl`.

They are the real Hugging Face classes (LlavaForConditionalGeneration with a CLIP vision tower and a Llama
language model; Qwen2_5_VLForConditionalGeneration with its windowed vision transformer, patch merger and M-RoPE
language model), only narrow and shallow, with a tokenizer and a processor made here instead of downloaded. The
tests use them, and the demo suite pretrains them on its synthetic benchmark before fine-tuning them.

`build_tiny_model(name, out_dir, seed=0)` writes a `save_pretrained` directory (config, random weights drawn from
`seed`, generation config, tokenizer, processor with the family's chat template) that `load_vlm(out_dir)`
loads through exactly the code path of a hub model.

The tokenizer is a byte-level BPE trained here, deterministically, on a fixed corpus: the words the prompts and the
synthetic benchmark use (moir.data.synthetic.VOCABULARY, plus colours, shapes, counts, positions, directions,
yes/no, letters, digits, the benchmarks' instructions and the chat-template words). Byte-level means any other text still encodes, as bytes. The special
tokens and chat templates are those of the real families (LLaVA-1.5: `<s>`, `</s>`, `<image>`, "USER: ...
ASSISTANT:"; Qwen2.5-VL: `<|im_start|>`, `<|im_end|>`, `<|vision_start|>`, `<|image_pad|>`, `<|video_pad|>`, ...).

Sizes: images are 48 px for LLaVA (the synthetic benchmark's size, in 6 px patches: 64 visual tokens); Qwen2.5-VL
takes images up to 64x64 px (4 px patches merged 2x2: up to 64 tokens) and video frames up to 32x32 px (2 frames per
temporal patch: 16 tokens per pair of frames). The language models have 2 decoder layers, or `text_layers`
(a per-model setting, models.<name>.text_layers: the study's bases have 4), and tie their output matrix to the input
embedding. A forward+backward of a batch of 4 takes a few tens of milliseconds on one CPU core.

CLI:
    python -m moir.models.tiny --name tiny-llava --out results/demo/base/tiny-llava/init --seed 0
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    GenerationConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
)
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from moir.data.synthetic import VOCABULARY as SYNTHETIC_VOCABULARY
from moir.runtime import setup_logging
from moir.storage import atomic_directory

log = logging.getLogger(__name__)

TINY_MODELS = ("tiny-llava", "tiny-qwen2.5-vl")

# The chat templates of llava-hf/llava-1.5-7b-hf and Qwen/Qwen2.5-VL-7B-Instruct.
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}"
    "{% endif %}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
QWEN_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

LLAVA_SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<image>", "<pad>"]
QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>",
]

# The words the BPE merges are learnt from (anything else still encodes, byte by byte).
CORPUS_WORDS = """
red green blue yellow orange purple pink brown black white gray grey cyan magenta colour color colours colors
circle square triangle rectangle star diamond hexagon cross ellipse oval shape shapes object objects dot dots
zero one two three four five six seven eight nine ten eleven twelve many more fewer most least same different
left right top bottom middle center centre above below under over upper lower next beside between corner side
up down moving moves move static still stays changes changed turns becomes appears disappears first last
before after then during begins ends start end frame frames video image picture clip sound tone tones audio
beep beeps high low pitch loud quiet silent silence
yes no true false A B C D E F G H 0 1 2 3 4 5 6 7 8 9 10
what which how where when who is are was were does do did the a an of in on at to from with by and or not there
this that these those it its count number size big small large tiny larger smaller bigger position direction
Context Answer answer question questions option options letter choices given directly using single word phrase
When provided information insufficient respond Unanswerable Audio transcript Hint hint
USER ASSISTANT user assistant system You are helpful
"""
CORPUS_LINES = [
    "Answer with the option's letter from the given choices directly.",
    "Answer the question using a single word or phrase.",
    "When the provided information is insufficient, respond with 'Unanswerable'.",
    "Context: Audio transcript: Hint:",
    "A. B. C. D. E.",
    "You are a helpful assistant.",
    "USER: ASSISTANT:",
]
TOKENIZER_VOCAB_SIZE = 1024
# A space before a one-letter word is a token of its own, never merged into the letter: an option letter is then the
# same token in the prompt, where it starts a line ("\nB. red": "Ċ", "B"), and in LLaVA's answer, which follows a
# space ("ASSISTANT: B": "Ġ", "B"). With "ĠB" in the answer and "B" in the options, a tiny model must learn the
# mapping between two unrelated embeddings before it can answer a multiple-choice question from the image; with one
# token it can copy the letter of the option it matched.
ONE_LETTER_WORD_SPACE = r"\s(?=[A-Za-z]\b)"

# The std of the language model's (and projector's) initial weights. The families' 0.02 is sized for 4096-wide
# layers; at width 64 it makes every weight matrix on the path image -> projector -> attention value/output ->
# answer logits nearly zero, so that path's gradient (a product of those matrices) starts near zero while the
# text-only path (embedding -> lm_head) learns the answer prior at once: pretraining then plateaus at chance on the
# image questions. About 0.5 / sqrt(width) lets the image path learn from the first epoch.
TINY_INITIALIZER_RANGE = 0.06
# The language model's depth (`text_layers`, a per-model setting: models.<name>.text_layers): the demo keeps the
# default, cheap to fine-tune; the study's bases are deeper (docs/study.md, "Bases"). Output matrix = input
# embedding (tied, as in Qwen2.5-VL-3B; the 7B/13B checkpoints are untied): fewer parameters, same step time.
TINY_TEXT_LAYERS = 2
TINY_TIE_EMBEDDINGS = True
# tiny-llava sees a 48 px image (the synthetic benchmark's size: no resampling blurs its shapes) in 6 px patches:
# an 8x8 grid, 64 visual tokens, as 32 px in 4 px patches did.
LLAVA_IMAGE_SIZE = 48
LLAVA_PATCH_SIZE = 6
# CLIP layers of tiny-llava: LLaVA reads the second-to-last (vision_feature_layer=-2), so 3 layers give it 2 (the
# study's measured bases, docs/study.md "Bases"); the pixel path only, not a step from the encoder cache.
LLAVA_VISION_LAYERS = 3
QWEN_VISION_LAYERS = 2
LLAVA_VISION_WIDTH = 32


def _train_byte_level_bpe(special_tokens: list[str]) -> Tokenizer:
    """A byte-level BPE learnt from the fixed corpus and the synthetic benchmark's vocabulary; special tokens take
    the first ids, in the order given."""
    words = list(dict.fromkeys(CORPUS_WORDS.split() + list(SYNTHETIC_VOCABULARY)))
    corpus = CORPUS_LINES + [" ".join(words)] + words + [" " + word for word in words]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(ONE_LETTER_WORD_SPACE), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB_SIZE,
        min_frequency=1,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer)
    return tokenizer


def llava_tokenizer() -> PreTrainedTokenizerFast:
    """LLaVA-1.5's conventions: `<s>` prepended to every sequence, `</s>` ends an answer, `<image>` placeholder."""
    tokenizer = _train_byte_level_bpe(LLAVA_SPECIAL_TOKENS)
    bos_id = tokenizer.token_to_id("<s>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"}, padding_side="left",
    )


def qwen_tokenizer() -> PreTrainedTokenizerFast:
    """Qwen2.5-VL's conventions: no BOS, `<|im_end|>` ends a turn, `<|endoftext|>` pads."""
    tokenizer = _train_byte_level_bpe(QWEN_SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
        padding_side="left",
    )


def _padded_vocab_size(tokenizer: PreTrainedTokenizerFast) -> int:
    """The embedding rows: the tokenizer's size rounded up to a multiple of 64, as the real checkpoints do."""
    return -(-len(tokenizer) // 64) * 64


def build_tiny_llava(
    seed: int, text_layers: int = TINY_TEXT_LAYERS
) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    tokenizer = llava_tokenizer()
    vision_config = CLIPVisionConfig(
        hidden_size=LLAVA_VISION_WIDTH, intermediate_size=2 * LLAVA_VISION_WIDTH, num_hidden_layers=LLAVA_VISION_LAYERS,
        num_attention_heads=2, image_size=LLAVA_IMAGE_SIZE, patch_size=LLAVA_PATCH_SIZE, projection_dim=32,
    )
    text_config = LlamaConfig(
        vocab_size=_padded_vocab_size(tokenizer), hidden_size=64, intermediate_size=128,
        num_hidden_layers=text_layers, num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024,
        rms_norm_eps=1e-5, initializer_range=TINY_INITIALIZER_RANGE, tie_word_embeddings=TINY_TIE_EMBEDDINGS,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    config = LlavaConfig(
        vision_config=vision_config.to_dict(), text_config=text_config.to_dict(),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"), image_seq_length=64,
        pad_token_id=tokenizer.pad_token_id, vision_feature_layer=-2, vision_feature_select_strategy="default",
        projector_hidden_act="gelu", tie_word_embeddings=TINY_TIE_EMBEDDINGS,
    )
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": LLAVA_IMAGE_SIZE}, crop_size={"height": LLAVA_IMAGE_SIZE, "width": LLAVA_IMAGE_SIZE},
        image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD,
    )
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=LLAVA_PATCH_SIZE, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=LLAVA_CHAT_TEMPLATE,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    return model, processor


def build_tiny_qwen(
    seed: int, text_layers: int = TINY_TEXT_LAYERS
) -> tuple[Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor]:
    tokenizer = qwen_tokenizer()
    text_hidden = 64
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": _padded_vocab_size(tokenizer), "hidden_size": text_hidden, "intermediate_size": 128,
            "num_hidden_layers": text_layers, "num_attention_heads": 4, "num_key_value_heads": 2,
            "max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "initializer_range": TINY_INITIALIZER_RANGE,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [2, 3, 3]},
            "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id, "bos_token_id": None,
        },
        vision_config={
            "depth": QWEN_VISION_LAYERS, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "patch_size": 4,
            "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 16, "fullatt_block_indexes": [1],
            "out_hidden_size": text_hidden, "tokens_per_second": 2, "initializer_range": TINY_INITIALIZER_RANGE,
        },
        image_token_id=tokenizer.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tokenizer.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tokenizer.convert_tokens_to_ids("<|vision_end|>"),
        tie_word_embeddings=TINY_TIE_EMBEDDINGS,
    )
    patch = {"patch_size": 4, "temporal_patch_size": 2, "merge_size": 2}
    pixel_floor = 16 * 16  # smaller images are upscaled to 16x16 px (one merged token per 8x8 px)
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(
            size={"shortest_edge": pixel_floor, "longest_edge": 64 * 64}, image_mean=OPENAI_CLIP_MEAN,
            image_std=OPENAI_CLIP_STD, **patch,
        ),
        video_processor=Qwen2VLVideoProcessor(
            size={"shortest_edge": pixel_floor, "longest_edge": 32 * 32}, image_mean=OPENAI_CLIP_MEAN,
            image_std=OPENAI_CLIP_STD, cap_pixels_per_frame=False, **patch,
        ),
        tokenizer=tokenizer,
        chat_template=QWEN_CHAT_TEMPLATE,
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    return model, processor


def build_tiny_model(
    name: str, out_dir: str | os.PathLike, seed: int = 0, text_layers: int = TINY_TEXT_LAYERS
) -> Path:
    """Write the tiny model `name` ("tiny-llava" | "tiny-qwen2.5-vl") with weights drawn from `seed` and
    `text_layers` language-model layers to `out_dir`.

    The directory is written whole or not at all (built in a temporary sibling, then renamed into place).
    """
    builders = {"tiny-llava": build_tiny_llava, "tiny-qwen2.5-vl": build_tiny_qwen}
    if name not in builders:
        raise ValueError(f"unknown tiny model {name!r}; choose one of {TINY_MODELS}")
    out_dir = Path(out_dir)
    if text_layers < 1:
        raise ValueError(f"text_layers must be >= 1, got {text_layers}")
    model, processor = builders[name](seed, text_layers)
    with atomic_directory(out_dir) as staging:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("wrote %s (%d parameters, seed %d) to %s", name, n_params, seed, out_dir)
    return out_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True, choices=TINY_MODELS, help="which tiny architecture")
    parser.add_argument("--out", required=True, help="output directory (a save_pretrained model directory)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random initial weights")
    args = parser.parse_args(argv)
    setup_logging("INFO")
    build_tiny_model(args.name, args.out, seed=args.seed)


if __name__ == "__main__":
    main()
