"""The character tokenizer: ids round-trip, special tokens are where they are said to be,
errors name what is wrong, and saving loses nothing."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dpo_np.tokenizer import BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, SEP_TOKEN, CharTokenizer

CORPUS = ["the cat sat on the mat.", "Héllo, wörld! 猫 🐈", "tabs\tand\nnewlines"]
TOK = CharTokenizer.from_corpus(CORPUS)
ALPHABET = sorted(set("".join(CORPUS)))


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.sampled_from(ALPHABET), max_size=60))
def test_decode_inverts_encode_on_any_text_over_the_vocabulary(text):
    ids = TOK.encode(text)
    assert len(ids) == len(text)                       # one token per character
    assert all(len(TOK.specials) <= i < TOK.vocab_size for i in ids)
    assert TOK.decode(ids) == text


@settings(max_examples=30, deadline=None)
@given(st.text(alphabet=st.sampled_from(ALPHABET), max_size=30))
def test_special_tokens_round_trip_when_allowed_and_are_skipped_by_default(text):
    tok = CharTokenizer.from_corpus(CORPUS, specials=[BOS_TOKEN, SEP_TOKEN])
    full = BOS_TOKEN + text + SEP_TOKEN + EOS_TOKEN
    ids = tok.encode(full, allowed_special=True)
    assert ids[0] == tok.bos_token_id and ids[-2] == tok.sep_token_id and ids[-1] == tok.eos_token_id
    assert tok.decode(ids, skip_special_tokens=False) == full
    assert tok.decode(ids) == text


def test_vocabulary_is_specials_then_sorted_characters():
    assert TOK.pad_token_id == 0 and TOK.itos[0] == PAD_TOKEN
    assert TOK.eos_token_id == 1 and TOK.itos[1] == EOS_TOKEN
    assert TOK.bos_token_id is None and TOK.sep_token_id is None
    assert list(TOK.itos[2:]) == ALPHABET
    assert TOK.vocab_size == 2 + len(ALPHABET) == len(TOK)
    # the same characters in any order and multiplicity give the same ids
    again = CharTokenizer.from_corpus(list(reversed(CORPUS)) + CORPUS)
    assert again == TOK and again.encode("the cat") == TOK.encode("the cat")


def test_optional_specials_come_after_pad_and_eos():
    tok = CharTokenizer.from_corpus("ab", specials=[BOS_TOKEN, SEP_TOKEN])
    assert tok.itos[:4] == (PAD_TOKEN, EOS_TOKEN, BOS_TOKEN, SEP_TOKEN)
    assert (tok.bos_token_id, tok.sep_token_id) == (2, 3)
    assert tok.encode("ab", add_eos=True) == [4, 5, tok.eos_token_id]


def test_special_token_text_is_literal_unless_allowed():
    tok = CharTokenizer.from_corpus(["<|endoftext|> x"])
    literal = tok.encode(EOS_TOKEN)
    assert len(literal) == len(EOS_TOKEN) and tok.eos_token_id not in literal
    assert tok.encode(EOS_TOKEN, allowed_special=True) == [tok.eos_token_id]


def test_unknown_character_error_names_the_character_and_its_position():
    with pytest.raises(ValueError, match=r"'Z'.*position 4"):
        TOK.encode("the Zebra")


def test_unk_token_replaces_unknown_characters_when_asked():
    tok = CharTokenizer.from_corpus("abc", unk_token="<|unk|>")
    ids = tok.encode("aZc")
    assert ids == [tok.encode("a")[0], tok.unk_token_id, tok.encode("c")[0]]
    assert tok.decode(ids) == "ac"
    assert tok.decode(ids, skip_special_tokens=False) == "a<|unk|>c"


def test_decode_rejects_ids_outside_the_vocabulary():
    with pytest.raises(ValueError, match=r"id 999 at position 1"):
        TOK.decode([2, 999])
    with pytest.raises(ValueError, match=r"id -1"):
        TOK.decode([-1])


def test_bad_constructor_arguments_are_rejected():
    with pytest.raises(ValueError, match="single character"):
        CharTokenizer(["ab"])
    with pytest.raises(ValueError, match="duplicate"):
        CharTokenizer(["a", "a"])
    with pytest.raises(ValueError, match="specials"):
        CharTokenizer(["a"], specials=["x"])
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        CharTokenizer.from_corpus(["ok", 3])
    with pytest.raises(TypeError, match="text must be a str"):
        TOK.encode(b"bytes")


def test_save_then_load_gives_an_equal_tokenizer(tmp_path):
    tok = CharTokenizer.from_corpus(CORPUS, specials=[SEP_TOKEN], unk_token="<|unk|>")
    path = tmp_path / "tok.json"
    tok.save(path)
    back = CharTokenizer.load(path)
    assert back == tok and back.itos == tok.itos and back.unk_token_id == tok.unk_token_id
    assert back.encode("Héllo 🐈?") == tok.encode("Héllo 🐈?")
    assert CharTokenizer.from_dict(tok.to_dict()) == tok
    assert [p.name for p in tmp_path.iterdir()] == ["tok.json"]      # no temp file left behind


def test_save_replaces_an_existing_file_atomically(tmp_path, monkeypatch):
    path = tmp_path / "tok.json"
    TOK.save(path)
    before = path.read_text(encoding="utf-8")

    def boom(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(json, "dump", boom)
    with pytest.raises(OSError, match="disk full"):
        CharTokenizer.from_corpus("xyz").save(path)
    assert path.read_text(encoding="utf-8") == before
    assert [p.name for p in tmp_path.iterdir()] == ["tok.json"]


def test_corrupt_json_error_names_the_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"format": "dpo_np.CharTokenizer", "chars": [', encoding="utf-8")
    with pytest.raises(ValueError, match=r"broken\.json.*not valid JSON"):
        CharTokenizer.load(path)


def test_well_formed_json_with_wrong_content_error_names_the_file_and_field(tmp_path):
    path = tmp_path / "odd.json"
    d = TOK.to_dict()
    d["chars"] = ["a", "a"]
    path.write_text(json.dumps(d), encoding="utf-8")
    with pytest.raises(ValueError, match=r"odd\.json.*duplicate"):
        CharTokenizer.load(path)
    d = TOK.to_dict()
    d["specials"] = [EOS_TOKEN, PAD_TOKEN]
    path.write_text(json.dumps(d), encoding="utf-8")
    with pytest.raises(ValueError, match=r"odd\.json.*'specials' must start"):
        CharTokenizer.load(path)
    path.write_text(json.dumps({"format": "something else"}), encoding="utf-8")
    with pytest.raises(ValueError, match=r"odd\.json.*'format'"):
        CharTokenizer.load(path)
