"""A SmolVLM (Idefics3) model of the real architecture with random weights,
built here from a config, with a byte-level BPE tokenizer trained here: what
the local-model tests and `benchmarks/local.py` load through the same code
path users take. Nothing is downloaded.

`tiny()` is a 60k-parameter model for tests (a 300 KB folder); `smolvlm_256m()`
has SmolVLM-256M-Instruct's dimensions (SigLIP-base/512 vision encoder,
SmolLM2-135M text model, 49k vocabulary) for honest timings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SPECIALS = ["<|im_start|>", "<end_of_utterance>", "<pad>", "<image>", "<fake_token_around_image>", "<global-img>"] + [
    f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
# The shape of SmolVLM's own template: "User:<image>prompt<end_of_utterance>\nAssistant:".
CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}:"
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}"
    "{% else %}<image>{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}")
TRAINING_TEXT = [
    "User: Describe this photo in one or two factual sentences: the main subject, the setting, and any legible "
    "text. Do not speculate.\n\nAssistant: A dog runs on a beach at sunset; a rocket stands on its pad.",
] * 20


@dataclass(frozen=True)
class Dimensions:
    vocab: int = 400  # the tokenizer's size; the text model's vocabulary is at least this
    text_vocab: int = 0
    text_hidden: int = 32
    text_intermediate: int = 64
    text_layers: int = 2
    text_heads: int = 2
    text_kv_heads: int = 2
    vision_hidden: int = 32
    vision_intermediate: int = 64
    vision_layers: int = 1
    vision_heads: int = 2
    image_size: int = 32  # the tile the vision encoder sees
    patch: int = 8
    scale_factor: int = 2
    longest_edge: int = 64  # high detail splits images up to this size into tiles


def tiny() -> Dimensions:
    return Dimensions()


def smolvlm_256m() -> Dimensions:
    """SmolVLM-256M-Instruct's published config (hidden 576, 30 layers, 9 heads, 3 KV heads; SigLIP-base
    patch 16 at 512 px; scale factor 4: 64 tokens per tile; images split up to 2048 px)."""
    return Dimensions(vocab=400, text_vocab=49280, text_hidden=576, text_intermediate=1536, text_layers=30,
                      text_heads=9, text_kv_heads=3, vision_hidden=768, vision_intermediate=3072, vision_layers=12,
                      vision_heads=12, image_size=512, patch=16, scale_factor=4, longest_edge=2048)


def build(folder: Path, dims: Dimensions | None = None, seed: int = 0) -> Path:
    """Write a model folder in the Hugging Face layout (config, safetensors, tokenizer, processor)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3Processor,
        PreTrainedTokenizerFast,
    )

    try:
        from transformers import Idefics3ImageProcessorPil as ImageProcessor  # transformers 5
    except ImportError:
        from transformers import Idefics3ImageProcessor as ImageProcessor  # type: ignore[no-redef]

    dims = dims or tiny()
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=dims.vocab, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(TRAINING_TEXT, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|im_start|>",
                                        eos_token="<end_of_utterance>", pad_token="<pad>", padding_side="left",
                                        chat_template=CHAT_TEMPLATE)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>", "<fake_token_around_image>",
                                                                "<global-img>"]})
    image_processor = ImageProcessor(size={"longest_edge": dims.longest_edge},
                                     max_image_size={"longest_edge": dims.image_size}, do_image_splitting=True)
    tokens_per_tile = (dims.image_size // dims.patch) ** 2 // dims.scale_factor ** 2
    processor = Idefics3Processor(image_processor, tokenizer, image_seq_len=tokens_per_tile,
                                  chat_template=CHAT_TEMPLATE)
    config = Idefics3Config(
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"), scale_factor=dims.scale_factor,
        vision_config={"image_size": dims.image_size, "patch_size": dims.patch, "hidden_size": dims.vision_hidden,
                       "intermediate_size": dims.vision_intermediate, "num_hidden_layers": dims.vision_layers,
                       "num_attention_heads": dims.vision_heads},
        text_config={"model_type": "llama", "vocab_size": max(len(tokenizer), dims.text_vocab),
                     "hidden_size": dims.text_hidden, "intermediate_size": dims.text_intermediate,
                     "num_hidden_layers": dims.text_layers, "num_attention_heads": dims.text_heads,
                     "num_key_value_heads": dims.text_kv_heads, "pad_token_id": tokenizer.pad_token_id,
                     "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id},
    )
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def as_hub_cache(folder: Path, cache: Path, repo_id: str, revision: str = "0" * 40) -> Path:
    """Lay a model folder out as the Hugging Face cache holds a downloaded repository."""
    import shutil

    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / revision
    shutil.copytree(folder, snapshot)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return snapshot
