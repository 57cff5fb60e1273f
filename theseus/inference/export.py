"""`theseus export`: a trained run as a Hugging Face folder that `from_pretrained` loads.

The folder gets the weights (LoRA adapters merged into their base), `config.json`, the
tokenizer the run was trained with and its chat template. It is written beside OUT_DIR and
renamed into place when complete, so an interrupted export leaves nothing that looks whole.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from theseus.data.tokenizers import BytesTokenizer, HuggingFaceTokenizer, Tokenizer
from theseus.errors import UserError

DTYPES = {"f32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16"}

# what a Hugging Face tokenizer folder holds besides tokenizer.json
_TOKENIZER_FILES = ("tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")

# theseus's built-in `chatml` template (theseus.data.chat) in Jinja, for transformers'
# apply_chat_template: the same text, so the exported model is prompted as it was trained
CHATML_JINJA = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def export_run(
    run: str | Path, out_dir: str | Path, *, dtype: str = "f32", say: Callable[[str], None] = print
) -> Path:
    """Write the model of `run` (a run or checkpoint folder) as a Hugging Face folder `out_dir`."""
    from theseus.inference.load import load_trained
    from theseus.interop.huggingface import export_hf
    from theseus.model import lora

    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype}: use bf16 or f32")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} exists and is not empty; choose a new folder or remove it first")
    model, _, tokenizer = load_trained(run)
    merged = lora.adapted_parameters(model) > 0
    model = lora.merge(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        export_hf(model, staging, eot_id=tokenizer.eot_id, dtype=DTYPES[dtype])
        told = write_tokenizer(tokenizer, staging, chat_template_of(run))
        _write_generation_config(staging, tokenizer.eot_id)
        if out.exists():
            out.rmdir()  # empty, checked above
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    say(f"wrote {out} ({DTYPES[dtype]}{', LoRA merged into the base' if merged else ''})")
    if told:
        say(told)
    return out


def chat_template_of(run: str | Path) -> str | None:
    """The Jinja chat template a run's training store rendered chats with: the model folder's
    template it recorded, or ChatML's for theseus's `chatml`; None for `plain` or a store gone."""
    from theseus.data.chat import template_of_settings
    from theseus.inference.load import training_store_settings

    settings = training_store_settings(run)
    if settings is None:
        return None
    template, model_template = template_of_settings(settings)
    if model_template is not None:
        return model_template.source
    return CHATML_JINJA if template == "chatml" else None


def write_tokenizer(tokenizer: Tokenizer, folder: Path, chat_template: str | None) -> str | None:
    """Write `tokenizer`'s Hugging Face files into `folder`; returns a note for the user when
    some could not be written."""
    if isinstance(tokenizer, HuggingFaceTokenizer):
        shutil.copyfile(tokenizer.path, folder / "tokenizer.json")
        for name in _TOKENIZER_FILES:
            source = tokenizer.path.parent / name
            if source.is_file():
                shutil.copyfile(source, folder / name)
    elif isinstance(tokenizer, BytesTokenizer):
        bytes_tokenizer_json(folder / "tokenizer.json")
    else:
        return (
            f"the tokenizer ({tokenizer.identity['backend']}:{tokenizer.identity['name']}) has no "
            "Hugging Face files to write; load the same encoding's tokenizer beside the model"
        )
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    eot = tokenizer.decode([tokenizer.eot_id])
    config.setdefault("tokenizer_class", "PreTrainedTokenizerFast")
    config.setdefault("eos_token", eot)
    config.setdefault("pad_token", eot)
    if chat_template:  # what the run's chats were rendered with, whatever the folder holds now
        config["chat_template"] = chat_template
        (folder / "chat_template.jinja").unlink(missing_ok=True)
    config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return None


def bytes_tokenizer_json(path: Path) -> None:
    """A `tokenizers` file that encodes as theseus's bytes tokenizer: byte b is id b, and
    `<|endoftext|>` is id 256 (byte-level BPE without merges)."""
    from tokenizers import AddedToken, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    # each byte as the printable character byte-level BPE uses for it
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    shifted = {b: b for b in printable}
    shifted.update({b: 256 + i for i, b in enumerate(b for b in range(256) if b not in shifted)})
    vocab = {chr(shifted[b]): b for b in range(256)}
    tokenizer = HFTokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken("<|endoftext|>", special=True)])
    tokenizer.save(str(path))


def _write_generation_config(folder: Path, eot_id: int) -> None:
    config = {"bos_token_id": eot_id, "eos_token_id": eot_id, "pad_token_id": eot_id}
    (folder / "generation_config.json").write_text(
        json.dumps(config, indent=2) + "\n", encoding="utf-8"
    )
