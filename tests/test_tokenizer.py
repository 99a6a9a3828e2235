"""The tokenizers: ids round-trip, special tokens are where they are said to be, errors name
what is wrong, and saving loses nothing. GPT-2's BPE and its pre-tokenization are held against
transformers (and its Rust ``tokenizers``) on the same files, where those are installed."""

import json
import unicodedata

import numpy as np
import pytest
from helpers import learn_bpe
from hypothesis import given, settings
from hypothesis import strategies as st

from dpo_np.tokenizer import (BOS_TOKEN, BYTE_TO_UNICODE, EOS_TOKEN, PAD_TOKEN, SEP_TOKEN, BPETokenizer,
                              ByteTokenizer, CharTokenizer, load_tokenizer, pretokenize, tokenizer_from_dict)

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


def test_unknown_characters_are_all_listed_once_and_the_byte_tokenizer_suggested():
    with pytest.raises(ValueError) as err:
        TOK.encode("the ZZ cat ¿q")
    msg = str(err.value)
    assert "3 characters not in the vocabulary" in msg
    assert "'Z' (U+005A) at position 4, '¿' (U+00BF) at position 11, 'q' (U+0071) at position 12" in msg
    assert "ByteTokenizer encodes any UTF-8 text" in msg


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


@pytest.mark.parametrize("ids, what", [([1.0], "1.0 (float)"), ([True], "True (bool)"), (["3"], "'3' (str)"),
                                       ([2, 2.7], "2.7 (float)"), (np.array([1.0]), "float64")])
@pytest.mark.parametrize("tok", [TOK, ByteTokenizer(), BPETokenizer.train(["abcabc ab"], 260)],
                         ids=["char", "byte", "bpe"])
def test_decode_takes_integer_ids_only_and_names_the_first_other_by_position(tok, ids, what):
    """A float id is not rounded, a bool is not 1, a string is not parsed: each is refused where it sits."""
    with pytest.raises(TypeError, match="ids") as err:
        tok.decode(ids)
    assert what in str(err.value) and ("position" in str(err.value))
    with pytest.raises(TypeError, match="a sequence of integer token ids, got str"):
        tok.decode("12")
    assert tok.decode(np.array([2, 3])) == tok.decode([2, 3]) == tok.decode([np.int64(2), 3])


@pytest.mark.parametrize("make", [lambda s: CharTokenizer.from_corpus("abcx", specials=s),
                                  lambda s: ByteTokenizer(specials=s),
                                  lambda s: BPETokenizer.train(["abcx abc"], 260 + len(s), specials=s)],
                         ids=["char", "byte", "bpe"])
@pytest.mark.parametrize("specials", [["<|s|>", "<|s|>x"], ["<|s|>x", "<|s|>"], ["[S]", "[S]x"]])
def test_a_special_token_that_is_a_prefix_of_another_loses_to_the_longer_one(make, specials):
    """Special tokens are matched longest first whatever their order in the list (and whatever their
    spelling: one that does not start with <| is a special token too)."""
    tok = make(specials)
    short, long_ = sorted(specials, key=len)
    ids = tok.encode(f"a{long_}b{short}", allowed_special=True)
    special_ids = [i for i in ids if tok.decode([i], skip_special_tokens=False) in specials]
    assert [tok.decode([i], skip_special_tokens=False) for i in special_ids] == [long_, short]
    assert tok.decode(ids, skip_special_tokens=False) == f"a{long_}b{short}"


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


# ---- ByteTokenizer ------------------------------------------------------------------------

BYTES = ByteTokenizer()


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_byte_tokenizer_encodes_any_text_as_its_utf8_bytes_and_decodes_it_exactly(text):
    ids = BYTES.encode(text)
    assert ids == list(text.encode("utf-8"))             # id = byte value
    assert BYTES.decode(ids) == text


def test_byte_tokenizer_puts_the_specials_after_the_256_bytes():
    tok = ByteTokenizer(specials=[BOS_TOKEN, SEP_TOKEN])
    assert (tok.eos_token_id, tok.pad_token_id, tok.bos_token_id, tok.sep_token_id) == (256, 257, 258, 259)
    assert tok.vocab_size == len(tok) == 260 and BYTES.vocab_size == 258
    assert tok.encode("é", add_eos=True) == [0xC3, 0xA9, 256]
    text = BOS_TOKEN + "x" + SEP_TOKEN + "y" + EOS_TOKEN
    ids = tok.encode(text, allowed_special=True)
    assert ids == [258, ord("x"), 259, ord("y"), 256]
    assert tok.decode(ids, skip_special_tokens=False) == text and tok.decode(ids) == "xy"
    assert tok.encode(EOS_TOKEN) == list(EOS_TOKEN.encode())          # literal unless allowed


def test_byte_tokenizer_decodes_a_cut_character_as_a_replacement_character():
    cat = BYTES.encode("猫🐈")                       # 3 bytes, then 4 bytes
    assert BYTES.decode(cat[:2]) == "\ufffd"         # an incomplete character: one U+FFFD, no error
    assert BYTES.decode(cat[:5]) == "猫\ufffd"
    assert BYTES.decode([0xFF, ord("a")]) == "\ufffda"   # a byte that starts nothing
    assert BYTES.decode(cat[:2] + [256] + cat[2:3], skip_special_tokens=False) == "\ufffd" + EOS_TOKEN + "\ufffd"


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 257), max_size=40))
def test_byte_tokenizer_decodes_any_id_sequence_like_python_with_errors_replace(ids):
    assert BYTES.decode(ids) == bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


def test_byte_tokenizer_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"'\\ud800' at position 1 is a lone surrogate"):
        BYTES.encode("a\ud800")
    with pytest.raises(ValueError, match=r"id 258 at position 0"):
        BYTES.decode([258])
    with pytest.raises(TypeError, match="text must be a str"):
        BYTES.encode(b"bytes")


# ---- saving any of them -------------------------------------------------------------------

def _bpe():
    vocab, merges = learn_bpe(["the cat sat on the mat, the cat's hat", "Héllo wörld 12345 猫猫"], 60)
    return BPETokenizer(vocab, merges)


@pytest.mark.parametrize("tok", [TOK, ByteTokenizer(specials=[SEP_TOKEN]), _bpe()], ids=type)
def test_every_tokenizer_comes_back_from_its_json_by_its_format_field(tok, tmp_path):
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    for back in (load_tokenizer(path), type(tok).load(path), tokenizer_from_dict(json.loads(path.read_text()))):
        assert type(back) is type(tok) and back == tok and back.to_dict() == tok.to_dict()
        assert back.encode("the cat") == tok.encode("the cat")


def test_an_unknown_tokenizer_format_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"unknown 'format' 'other'.*dpo_np.ByteTokenizer"):
        tokenizer_from_dict({"format": "other"})
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"format": "dpo_np.ByteTokenizer", "version": 1, "specials": ["x"]}))
    with pytest.raises(ValueError, match=r"t\.json.*'specials' must be a list starting with"):
        load_tokenizer(path)


# ---- GPT-2's pre-tokenization -------------------------------------------------------------

# what GPT-2's pattern gives, worked out by hand from the regex (and checked against transformers below)
SPLITS = {
    "Hello world": ["Hello", " world"],
    "it's they're we've I'm you'll he'd don't": ["it", "'s", " they", "'re", " we", "'ve", " I", "'m",
                                                    " you", "'ll", " he", "'d", " don", "'t"],
    "IT'S 'S": ["IT", "'", "S", " '", "S"],                 # contractions are lowercase only
    "a   b": ["a", "  ", " b"],                            # a run of spaces leaves its last to the word
    "a \n b": ["a", " \n", " b"],
    "x\n\ny": ["x", "\n", "\n", "y"],                      # the same rule for newlines, which do not glue
    "x\n\n\ny": ["x", "\n\n", "\n", "y"],
    "end   ": ["end", "   "],                             # trailing spaces stay one piece
    "3.14159 and 2024!!": ["3", ".", "14159", " and", " 2024", "!!"],
    "naïve café": ["naïve", " café"],
    "e\u0301t\u00e9": ["e", "\u0301", "t\u00e9"],          # a combining accent is not a letter
    "猫が好き123": ["猫が好き", "123"],
    "🐈🐈 ok": ["🐈🐈", " ok"],
    "a\u00a0b": ["a", "\u00a0", "b"],                      # only U+0020 is the optional space
    "½ ²": ["½", " ²"],                                     # numbers are category N, not only digits
}


@pytest.mark.parametrize("text", SPLITS)
def test_pretokenize_follows_gpt2s_pattern(text):
    assert pretokenize(text) == SPLITS[text]


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_pretokenize_pieces_put_back_together_give_the_text(text):
    pieces = pretokenize(text)
    assert "".join(pieces) == text and all(pieces)


# ---- GPT-2's byte-level BPE ---------------------------------------------------------------

BPE = _bpe()


def test_gpt2_byte_map_is_a_bijection_onto_printable_characters():
    assert sorted(BYTE_TO_UNICODE) == list(range(256))
    chars = list(BYTE_TO_UNICODE.values())
    assert len(set(chars)) == 256 and all(c.isprintable() and not c.isspace() for c in chars)
    assert BYTE_TO_UNICODE[ord(" ")] == "Ġ" and BYTE_TO_UNICODE[ord("\n")] == "Ċ"
    assert BYTE_TO_UNICODE[ord("A")] == "A"


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_bpe_decode_inverts_encode_on_any_text(text):
    assert BPE.decode(BPE.encode(text)) == text


def test_bpe_merges_the_learned_words_and_adds_no_special_token():
    ids = BPE.encode("the cat")
    assert len(ids) < len("the cat") and BPE.eos_token_id not in ids
    assert [BPE.itos[i] for i in BPE.encode(" the")] == ["Ġthe"]
    assert BPE.encode("the cat", add_eos=True) == ids + [BPE.eos_token_id]


def test_bpe_has_no_padding_token_of_its_own_so_pads_with_end_of_text():
    assert BPE.pad_token_id == BPE.eos_token_id == BPE.vocab[EOS_TOKEN]


@settings(max_examples=100, deadline=None)
@given(st.text())
def test_byte_tokenizer_is_the_byte_level_bpe_with_no_merges(text):
    as_bpe = BPETokenizer(BYTES.bpe_vocab(), [], pad_token=PAD_TOKEN)
    assert as_bpe.encode(text) == BYTES.encode(text)
    assert (as_bpe.eos_token_id, as_bpe.pad_token_id, as_bpe.vocab_size) == (256, 257, 258)


def test_bpe_files_that_do_not_make_a_byte_level_bpe_are_refused_by_name(tmp_path):
    vocab, merges = learn_bpe(["the cat"], 3)
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges) + "t q\n")
    with pytest.raises(ValueError, match=r"merges\.txt: merges\[3\]: 't' 'q' uses or makes 'tq'"):
        BPETokenizer.from_pretrained(tmp_path)
    del vocab["Ġ"]
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(ValueError, match=r"vocab\.json: .*needs all 256 byte tokens.*missing bytes \[32\]"):
        BPETokenizer.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"share the id"):
        BPETokenizer({**BYTES.bpe_vocab(), "x y": 3}, [])
    with pytest.raises(ValueError, match=r"'<\|pad\|>' is not in the vocabulary"):
        BPETokenizer(vocab, [], pad_token=PAD_TOKEN)
    with pytest.raises(FileNotFoundError, match=r"merges\.txt"):
        BPETokenizer.from_pretrained(tmp_path / "nowhere")


def _tokenizers_json(vocab, merges, **changes):
    """A tokenizer.json of the ``tokenizers`` library, as transformers 5 saves a GPT-2 tokenizer."""
    d = {"version": "1.0", "added_tokens": [{"id": vocab[EOS_TOKEN], "content": EOS_TOKEN, "special": True}],
         "normalizer": None, "post_processor": {"type": "ByteLevel", "trim_offsets": True},
         "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
         "decoder": {"type": "ByteLevel"},
         "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                   "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                   "vocab": vocab, "merges": [f"{a} {b}" for a, b in merges]}}
    d.update(changes)
    return d


def test_transformers_tokenizer_json_reads_as_the_same_bpe_and_other_tokenizers_are_refused(tmp_path):
    vocab, merges = learn_bpe(["the cat sat on the mat, the cat's hat"], 30)
    (tmp_path / "tokenizer.json").write_text(json.dumps(_tokenizers_json(vocab, merges)), encoding="utf-8")
    tok = BPETokenizer.from_pretrained(tmp_path)
    assert tok == BPETokenizer(vocab, merges) and tok.encode("the cat's hat") == BPETokenizer(vocab, merges).encode("the cat's hat")
    for field, change, shown in [
            ("normalizer", {"normalizer": {"type": "NFC"}}, r'\{"type": "NFC"\}'),
            ("pre_tokenizer", {"pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": True}}, r".*add_prefix_space"),
            ("model.type", {"model": {**_tokenizers_json(vocab, merges)["model"], "type": "WordPiece"}}, '"WordPiece"'),
            ("post_processor", {"post_processor": {"type": "TemplateProcessing", "special_tokens": {"<s>": {}}}}, "")]:
        (tmp_path / "tokenizer.json").write_text(json.dumps(_tokenizers_json(vocab, merges, **change)))
        with pytest.raises(ValueError, match=rf"tokenizer\.json: {field} = {shown}.*byte-level BPE only"):
            BPETokenizer.from_pretrained(tmp_path)


# ---- against transformers (skipped where it is not installed) -----------------------------

TRICKY = list(SPLITS) + [
    "Hello   world  ", "  leading", "tabs\tand\ttabs", "a\r\nb", "x \n\n y", "multiple\n\n\nnewlines\n",
    "'s's 's''s", "I'LL they'RE O'Neil's", "1,000,000.50 €100 ¥5", "e-mail: a.b@c.d; (parens) [x]",
    "Ünïcödé Ελληνικά Кириллица עברית العربية हिन्दी", "日本語のテキストと漢字123", "한국어 텍스트",
    "emoji 🐈‍⬛ 👍🏽 🇫🇷 flags", "zero\u200bwidth", "\u3000ideographic space", "a\u2028b\u2029c",
    "Ⅻ ½ ² ٣ ๓", "", " ", "\n", "   ", "x  \t y",
]


def _assigned(c):
    # transformers' regex engine may know characters assigned after this Python's Unicode version
    return unicodedata.category(c) not in ("Cn", "Cs")


def test_pretokenize_matches_transformers_on_tricky_text_and_every_character_to_u2fff():
    pre_tokenizers = pytest.importorskip("tokenizers.pre_tokenizers")
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)

    def theirs(text):
        return [piece for piece, _ in byte_level.pre_tokenize_str(text)]

    def ours(text):
        return ["".join(BYTE_TO_UNICODE[b] for b in p.encode("utf-8")) for p in pretokenize(text)]

    for text in TRICKY:
        assert ours(text) == theirs(text), text
    # every character in the contexts that decide its class: inside a word, after a space, in a run
    chars = [chr(cp) for cp in range(0x3000) if _assigned(chr(cp))]
    for start in range(0, len(chars), 500):
        text = "".join(f"a{c}b {c}1{c}2 {c}{c}x!{c}?  {c}'{c}s\n" for c in chars[start:start + 500])
        assert ours(text) == theirs(text)


@settings(max_examples=150, deadline=None)
@given(st.text(st.characters(exclude_categories=("Cn", "Cs"))))
def test_pretokenize_matches_transformers_on_any_text(text):
    pre_tokenizers = pytest.importorskip("tokenizers.pre_tokenizers")
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    theirs = [piece for piece, _ in byte_level.pre_tokenize_str(text)]
    assert ["".join(BYTE_TO_UNICODE[b] for b in p.encode()) for p in pretokenize(text)] == theirs


@pytest.fixture(scope="module")
def gpt2_files(tmp_path_factory):
    """A GPT-2 vocabulary and merges file learned from a small corpus, and transformers' tokenizer of them."""
    transformers = pytest.importorskip("transformers")
    corpus = TRICKY * 3 + ["the cat sat on the mat. The cat's hat is 12345 years old, isn't it?\n"] * 5
    vocab, merges = learn_bpe(corpus, 300)
    folder = tmp_path_factory.mktemp("gpt2_tokenizer")
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
                                       encoding="utf-8")
    return BPETokenizer.from_pretrained(folder), transformers.GPT2Tokenizer.from_pretrained(folder)


def test_bpe_gives_transformers_ids_on_the_same_files(gpt2_files):
    ours, theirs = gpt2_files
    assert len(ours.merges) == 300
    for text in TRICKY + ["the cat sat on the mat. The cat's hat is 12345 years old, isn't it?"]:
        ids = ours.encode(text)
        assert ids == theirs(text, add_special_tokens=False)["input_ids"], text
        assert ours.decode(ids) == theirs.decode(ids) == text
    text = "a cat<|endoftext|>"
    assert ours.encode(text, allowed_special=True) == theirs(text)["input_ids"]     # theirs reads specials by default
    assert ours.decode(ours.encode(text, allowed_special=True), skip_special_tokens=False) == text


@settings(max_examples=150, deadline=None)
@given(text=st.text(st.characters(exclude_categories=("Cn", "Cs"))))
def test_bpe_gives_transformers_ids_on_any_text(gpt2_files, text):
    ours, theirs = gpt2_files
    assert ours.encode(text) == theirs(text, add_special_tokens=False)["input_ids"]


def _repeated_merge_files(tmp_path, merges):
    vocab = {c: i for i, c in enumerate(BYTE_TO_UNICODE.values())}
    for token in ("ab", "bc"):
        vocab[token] = len(vocab)
    vocab[EOS_TOKEN] = len(vocab)
    (tmp_path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    return BPETokenizer.from_pretrained(tmp_path)


@pytest.mark.parametrize("merges, tokens", [([("b", "c"), ("a", "b"), ("b", "c")], ["ab", "c"]),
                                            ([("a", "b"), ("b", "c"), ("a", "b")], ["a", "bc"])])
def test_a_merge_listed_twice_ranks_at_its_last_line_as_in_transformers(tmp_path, merges, tokens):
    """'abc' with "b c" ranked both before and after "a b": the last line decides, as transformers'
    GPT2Tokenizer and the tokenizers library read merges.txt (checked against them where installed)."""
    ours = _repeated_merge_files(tmp_path, merges)
    assert [ours.itos[i] for i in ours.encode("abc")] == tokens
    transformers = pytest.importorskip("transformers")
    theirs = transformers.GPT2Tokenizer.from_pretrained(tmp_path)
    assert theirs.tokenize("abc") == tokens
    assert ours.encode("abc") == theirs("abc", add_special_tokens=False)["input_ids"]


# ---- training on any text -----------------------------------------------------------------

def test_dpo_trains_on_text_the_character_tokenizer_cannot_encode(tmp_path):
    """The story of the byte tokenizer: user data with accents, CJK and emoji trains from scratch,
    the first loss is log 2 (reference = initial policy), and the checkpoint brings it back."""
    from dpo_np.checkpoint import load_checkpoint
    from dpo_np.data import format_prompt
    from dpo_np.model import GPT, GPTConfig
    from dpo_np.trainers import DPOConfig, DPOTrainer
    from dpo_np.training import read_metrics

    pairs = [{"prompt": "Café?", "chosen": "☕ oui", "rejected": "non"},
             {"prompt": "猫は?", "chosen": "🐈 にゃー", "rejected": "わん"},
             {"prompt": "Größe", "chosen": "groß", "rejected": "klein"}]
    english = CharTokenizer.from_corpus([format_prompt("Cafe?"), "oui non"])
    with pytest.raises(ValueError, match=r"'é' \(U\+00E9\) at position 6.*ByteTokenizer encodes any UTF-8 text"):
        english.encode(format_prompt(pairs[0]["prompt"]))
    tok = ByteTokenizer()
    config = GPTConfig(vocab_size=tok.vocab_size, block_size=48, n_layer=1, n_head=2, n_embd=8)
    args = DPOConfig(output_dir=str(tmp_path / "run"), max_steps=2, max_length=48, max_prompt_length=24,
                     per_device_train_batch_size=3, logging_steps=1, show_progress=False)
    trainer = DPOTrainer(GPT(config, seed=0), GPT(config, seed=0), args=args, train_dataset=pairs, tokenizer=tok)
    trainer.train()
    first = read_metrics(trainer.metrics_path)[0]
    assert first["loss"] == pytest.approx(np.log(2), rel=1e-6)
    assert load_checkpoint(trainer.final_checkpoint)["tokenizer"] == tok


# ---- learning a byte-level BPE ---------------------------------------------------------------

BPE_TEXTS = ["Q: Where is Paris?\nA: Paris is a city in France", "Q: What is 2+2?\nA: 4",
             "Où est Zürich ? 東京 🐈 — the cat sat on the mat, the cat sat.", "  leading spaces\n\nand lines  "]


@pytest.mark.parametrize("vocab_size", [257, 260, 300, 400])
def test_bpe_trained_here_learns_the_merges_the_plain_recipe_learns(vocab_size):
    """The incremental pair counts give exactly the merges of recounting every pair after each
    merge (tests/helpers.learn_bpe, GPT-2's recipe written the slow, obvious way)."""
    tok = BPETokenizer.train(BPE_TEXTS, vocab_size)
    vocab, merges = learn_bpe(BPE_TEXTS, vocab_size - 257)
    assert [tuple(m) for m in tok.merges] == [tuple(m) for m in merges]
    assert tok.vocab_size == min(vocab_size, 257 + len(merges)) and tok.vocab == vocab
    assert tok.eos_token_id == tok.vocab_size - 1 == tok.pad_token_id       # after the merges, as in GPT-2


@settings(max_examples=40, deadline=None)
@given(st.text(max_size=60))
def test_a_trained_bpe_round_trips_any_text_and_compresses_its_own(text):
    tok = BPETokenizer.train(BPE_TEXTS, 320)
    assert tok.decode(tok.encode(text)) == text
    assert len(tok.encode(BPE_TEXTS[0])) < len(BPE_TEXTS[0].encode("utf-8"))


def test_bpe_training_checks_its_arguments():
    with pytest.raises(ValueError, match="vocab_size must be >= 257"):
        BPETokenizer.train(BPE_TEXTS, 100)
    with pytest.raises(TypeError, match=r"a bare string would be read one character at a time.*pass \[text\]"):
        BPETokenizer.train("some text to learn from", 260)
    with pytest.raises(TypeError, match="text must be a str"):
        BPETokenizer.train(["ok", None], 300)
    assert BPETokenizer.train(BPE_TEXTS, 300, specials=("<|sep|>",)).vocab["<|sep|>"] == 299


@pytest.mark.parametrize("make", [lambda: CharTokenizer.from_corpus("abc"), lambda: ByteTokenizer(),
                                  lambda: BPETokenizer.train(["abcabc ab"], 260)], ids=["char", "byte", "bpe"])
def test_the_prompt_template_is_saved_with_the_tokenizer_and_the_default_is_not_written(make, tmp_path):
    """A checkpoint answers in the format it was trained in: the template travels in tokenizer.json;
    the default leaves the file as it was before templates existed, so older fingerprints still match."""
    from dpo_np.tokenizer import PROMPT_TEMPLATE, load_tokenizer
    tok = make()
    assert tok.prompt_template == PROMPT_TEMPLATE and "prompt_template" not in tok.to_dict()
    tok.prompt_template = "User: {prompt}\nBot: "
    tok.save(tmp_path / "t.json")
    back = load_tokenizer(tmp_path / "t.json")
    assert back.prompt_template == "User: {prompt}\nBot: " and back == tok and back != make()
    with pytest.raises(ValueError, match="exactly once"):
        tok.prompt_template = "no field"
