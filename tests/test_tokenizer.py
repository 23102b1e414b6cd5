import pytest

from dq_jax.model import hf


def test_real_bart_tokenizer_loads_from_local_directory(shared_data):
    tok = hf.load_tokenizer(str(shared_data / "tokenizers" / "bart-base_roberta-base"))
    assert tok("Hello world").input_ids == [0, 31414, 232, 2]
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id) == (0, 1, 2)
    assert len(tok) == 50265


def test_tokenizer_survives_save_pretrained_round_trip(shared_data, tmp_path):
    tok = hf.load_tokenizer(str(shared_data / "tokenizers" / "bart-base_roberta-base"))
    tok.save_pretrained(tmp_path)
    again = hf.load_tokenizer(str(tmp_path))
    text = "The BBC's chief said: prices rose 3.5% in 2016."
    assert again(text).input_ids == tok(text).input_ids


def test_directory_without_tokenizer_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="No tokenizer in"):
        hf.load_tokenizer(str(tmp_path))
