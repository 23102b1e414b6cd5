"""What bench.generate runs on, made once before any worker starts: the teacher, the 2-2-8
student (fp32 master) and its HF export, the CTranslate2 conversions of that export, the batch
and the generation settings; `_inputs` reads the batch and settings back in a worker."""

from __future__ import annotations

import json
import time

import numpy as np

from bench.common import PRESETS

QUANT = (2, 2, 8)
INIT_STD = 0.1
SPECIAL = ("<s>", "<pad>", "</s>", "<unk>")  # ids 0-3, as in BART's tokenizer


def convert_ct2(hf_dir: str, out_dir: str, quantization: str) -> str:
    """CTranslate2 model of an HF BART/mBART directory (with a tokenizer), weights stored as
    `quantization`. The one workaround (see bench.generate's docstring): `normalize_before`,
    read by ctranslate2 4.x's BART loader and gone from transformers 5's configs, is set on the
    loaded model's config when missing: False for BART (post-norm), True for mBART (pre-norm)."""
    from ctranslate2.converters import TransformersConverter

    class _Converter(TransformersConverter):
        def load_model(self, model_class, model_name_or_path, **kwargs):
            model = super().load_model(model_class, model_name_or_path, **kwargs)
            if not hasattr(model.config, "normalize_before"):
                model.config.normalize_before = model.config.model_type == "mbart"
            return model

    return _Converter(hf_dir).convert(out_dir, quantization=quantization, force=True)


def word_tokenizer(vocab_size: int, out_dir: str) -> str:
    """A word-level tokenizer whose token of id i is `t<i>` (BART's special tokens at 0-3)."""
    import transformers
    from tokenizers import Tokenizer, models

    vocab = {tok: i for i, tok in enumerate(SPECIAL)}
    vocab.update({f"t{i}": i for i in range(len(SPECIAL), vocab_size)})
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")),
        bos_token="<s>",
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
    )
    tok.save_pretrained(out_dir)
    return out_dir


def prepare(preset_name: str, d: str, gen_overrides: dict) -> dict:
    """Teacher -> student (fp32 master, for our workers) -> its HF export -> CTranslate2 models."""
    import torch
    import transformers

    from dq_jax.export import hf_dir as export
    from dq_jax.inference.generation_config import GenerationConfig
    from dq_jax.model import hf
    from dq_jax.quant.config import QuantConfig
    from dq_jax.training import distill

    p = PRESETS[preset_name]
    torch.manual_seed(0)
    hf_cfg = transformers.BartConfig(**dict(p["model"].to_hf_dict(), init_std=INIT_STD))
    transformers.BartForConditionalGeneration(hf_cfg).save_pretrained(f"{d}/teacher")
    tcfg, tparams = hf.load_pretrained(f"{d}/teacher")
    scfg, sparams = distill.init_student(tcfg, tparams, *p["student_layers"])
    hf.save_pretrained(scfg, sparams, f"{d}/student")
    export.export_hf(
        scfg, sparams, QuantConfig(*QUANT), f"{d}/hf", tokenizer_dir=word_tokenizer(scfg.vocab_size, f"{d}/tokenizer")
    )
    convert_s = {}
    for q in ("int8", "float32"):
        t = time.perf_counter()
        convert_ct2(f"{d}/hf", f"{d}/ct2_{q}", q)
        convert_s[q] = time.perf_counter() - t

    rng = np.random.RandomState(0)
    batch, source = p["batch"], p["source"]
    ids = rng.randint(len(SPECIAL), scfg.vocab_size, (batch, source))
    am = np.ones_like(ids)
    for b in range(1, batch):  # right padding of different lengths, as real batches have
        am[b, source - b * source // (2 * batch) :] = 0
    ids[am == 0] = scfg.pad_token_id
    np.savez(f"{d}/batch.npz", input_ids=ids, attention_mask=am)
    gen = GenerationConfig.from_model_config(scfg, forced_bos_token_id=None, forced_eos_token_id=None, **gen_overrides)
    with open(f"{d}/gen.json", "w") as f:
        json.dump(gen.to_hf_dict(), f)
    return {"generation": gen.to_hf_dict(), "convert_s": convert_s, "student": scfg.to_hf_dict()}


def _inputs(d: str):
    from dq_jax.inference.generation_config import GenerationConfig

    b = np.load(f"{d}/batch.npz")
    with open(f"{d}/gen.json") as f:
        return b["input_ids"], b["attention_mask"], GenerationConfig(**json.load(f))
