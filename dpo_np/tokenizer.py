"""Tokenizers: text to ids and back, three ways, one interface.

In the notes ("Short intro to language models") a language model reads a prompt as tokens and
answers with one probability per vocabulary entry for the next token. What a token is, is the
tokenizer's choice:

- ``CharTokenizer``: one token per character of a corpus. The smallest vocabulary for toy data,
  but it knows only the characters it was built from.
- ``ByteTokenizer``: one token per byte of the UTF-8 encoding. Any text encodes, so this is the
  one for a model trained from scratch on user data. It is GPT-2's byte-level BPE with no merges.
- ``BPETokenizer``: GPT-2's byte-level byte-pair encoding, read from ``vocab.json`` and
  ``merges.txt``: the tokenizer of a pretrained GPT-2.

Each has ``encode(text, add_eos=False, allowed_special=False) -> ids``, ``decode(ids,
skip_special_tokens=True) -> text``, ``vocab_size``, ``pad_token_id``, ``eos_token_id``, and
``to_dict``/``from_dict``/``save``/``load`` as JSON with a ``format`` field;
``tokenizer_from_dict`` reads any of them back.

``encode`` reads text literally: the string "<|endoftext|>" inside a text is its characters,
not the end token, unless ``allowed_special=True``. Append ``eos_token_id`` yourself (or pass
``add_eos=True``) to end a response.

Each also carries the prompt template its model is trained and asked with, ``prompt_template``
(``PROMPT_TEMPLATE``, ``"Q: {prompt}\nA: "``, unless set): the text x is read as
``template.format(prompt=x)`` and the response follows directly (``data.format_prompt``). It is
saved with the tokenizer, so a checkpoint answers in the format it was trained in, as a
Hugging Face tokenizer carries its chat template.
"""

import collections
import json
import numbers
import os
import string
import unicodedata

from dpo_np import checks
from dpo_np.files import read_json, write_json_atomic

PAD_TOKEN = "<|pad|>"
EOS_TOKEN = "<|endoftext|>"
BOS_TOKEN = "<|bos|>"
SEP_TOKEN = "<|sep|>"
FORMAT = "dpo_np.CharTokenizer"
BYTE_FORMAT = "dpo_np.ByteTokenizer"
BPE_FORMAT = "dpo_np.BPETokenizer"
VERSION = 1

# The prompt template, in one place: every prompt a model is trained on or asked goes through it.
PROMPT_TEMPLATE = "Q: {prompt}\nA: "


def check_prompt_template(template, name="prompt_template"):
    """``template`` if it is text holding the field ``{prompt}`` exactly once and no other field
    (a literal brace is written ``{{`` or ``}}``, as in ``str.format``); ValueError naming ``name``."""
    if not isinstance(template, str):
        raise TypeError(f"{name} must be a string holding {{prompt}}, got {type(template).__name__}")
    try:
        fields = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(template) if f is not None]
    except ValueError as err:
        raise ValueError(f"{name} {template!r}: {err} (write a literal brace as {{{{ or }}}})") from None
    if [f for f, _, _ in fields] != ["prompt"] or fields[0][1] or fields[0][2]:
        found = ", ".join("{" + f + (f"!{c}" if c else "") + (f":{sp}" if sp else "") + "}"
                          for f, sp, c in fields) or "none"
        raise ValueError(f"{name} must hold the field {{prompt}} exactly once and no other field "
                         f"(a literal brace is written {{{{ or }}}}), got {template!r} (fields: {found})")
    return template


def _check_specials(specials):
    for s in specials:
        if not isinstance(s, str) or len(s) < 2:
            raise ValueError(f"specials: each special token must be a string of 2+ characters "
                             f"(so it cannot be confused with a character), got {s!r}")
    if len(set(specials)) != len(specials):
        raise ValueError(f"specials: duplicate special tokens in {specials}")


def _split_specials(text, specials):
    """``text`` cut into (piece, is_special) around the special tokens' strings, longest first."""
    longest_first = sorted(specials, key=len, reverse=True)
    out, start, i = [], 0, 0
    while i < len(text):
        special = next((s for s in longest_first if text.startswith(s, i)), None)
        if special is None:
            i += 1
            continue
        if i > start:
            out.append((text[start:i], False))
        out.append((special, True))
        i = start = i + len(special)
    if start < len(text):
        out.append((text[start:], False))
    return out


def _check_text(text):
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")


def _check_ids(ids, vocab_size):
    """``ids`` as a list of ints in [0, vocab_size): integers only (NumPy's too); a float, a bool or a
    string is refused by position, never rounded or parsed into an id."""
    if isinstance(ids, (str, bytes)):
        raise TypeError(f"ids must be a sequence of integer token ids, got {type(ids).__name__}")
    out = []
    for pos, i in enumerate(ids):
        if isinstance(i, bool) or not isinstance(i, numbers.Integral):
            raise TypeError(f"ids: the id at position {pos} must be an integer, got {i!r} ({type(i).__name__})")
        i = int(i)
        if not 0 <= i < vocab_size:
            raise ValueError(f"ids: id {i} at position {pos} is outside the vocabulary [0, {vocab_size})")
        out.append(i)
    return out


def _utf8(text):
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as err:      # a lone surrogate such as "\ud800"
        raise ValueError(f"text: character {text[err.start]!r} at position {err.start} is a lone "
                         f"surrogate, which UTF-8 cannot encode") from None


def _read_json(path):
    return read_json(path, "tokenizer file")


def _load(from_dict, path):
    d = _read_json(path)
    try:
        return from_dict(d)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{os.fspath(path)}: {err}") from err


def _check_header(d, fmt):
    if not isinstance(d, dict):
        raise ValueError(f"tokenizer data must be a JSON object, got {type(d).__name__}")
    if d.get("format") != fmt:
        raise ValueError(f"tokenizer data: 'format' must be {fmt!r}, got {d.get('format')!r}")
    if d.get("version") != VERSION:
        raise ValueError(f"tokenizer data: unsupported 'version' {d.get('version')!r} "
                         f"(this code reads version {VERSION})")


# ---- one token per character --------------------------------------------------------------

class _Tokenizer:
    """What every tokenizer here shares: its length, equality by content, the prompt template, and
    JSON persistence through its own ``to_dict``/``from_dict``."""

    _prompt_template = PROMPT_TEMPLATE

    @property
    def prompt_template(self):
        """How a prompt x is written before the response: ``template.format(prompt=x)``."""
        return self._prompt_template

    @prompt_template.setter
    def prompt_template(self, template):
        self._prompt_template = check_prompt_template(template)

    def _template_entry(self):
        # written only when it is not the default, so files written before it existed read the same
        return {} if self.prompt_template == PROMPT_TEMPLATE else {"prompt_template": self.prompt_template}

    def _read_template(self, d):
        self.prompt_template = d.get("prompt_template", PROMPT_TEMPLATE)
        return self

    def __len__(self):
        return self.vocab_size

    def __eq__(self, other):
        return type(other) is type(self) and self.to_dict() == other.to_dict()

    def save(self, path):
        """Write the tokenizer as JSON, atomically (temp file, then ``os.replace``)."""
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path):
        return _load(cls.from_dict, path)



class CharTokenizer(_Tokenizer):
    """Maps text to ids character by character, and back.

    The vocabulary is the set of characters of a corpus, sorted so the same corpus always gives
    the same ids, with the special tokens first:

        id 0  <|pad|>          padding (never a target: masked out of log-probs)
        id 1  <|endoftext|>    end of a response (the generator stops on it)
        ...   optional specials (e.g. "<|bos|>", "<|sep|>", an unk token)
        ...   the characters, in sorted order

    Build one with ``CharTokenizer.from_corpus(texts)``; ``specials`` adds special tokens after
    pad and end-of-text (``BOS_TOKEN``, ``SEP_TOKEN``, or your own). Characters outside the
    vocabulary raise ``ValueError`` listing each of them with its first position (and pointing
    to ``ByteTokenizer``, which encodes any text), unless an ``unk_token`` was given: then they
    are encoded as that token (a lossy choice, so it is opt-in).
    """

    def __init__(self, chars, specials=(), unk_token=None):
        specials = [PAD_TOKEN, EOS_TOKEN] + [s for s in specials if s not in (PAD_TOKEN, EOS_TOKEN)]
        if unk_token is not None and unk_token not in specials:
            specials.append(unk_token)
        _check_specials(specials)
        chars = list(chars)
        for c in chars:
            if not isinstance(c, str) or len(c) != 1:
                raise ValueError(f"chars: each entry must be a single character, got {c!r}")
        if len(set(chars)) != len(chars):
            raise ValueError("chars: duplicate characters in the vocabulary")
        self.specials = tuple(specials)
        self.chars = tuple(chars)
        self.unk_token = unk_token
        self.itos = self.specials + self.chars                   # id -> token string
        self.stoi = {s: i for i, s in enumerate(self.itos)}       # token string -> id
        self.pad_token_id = self.stoi[PAD_TOKEN]
        self.eos_token_id = self.stoi[EOS_TOKEN]
        self.bos_token_id = self.stoi.get(BOS_TOKEN)
        self.sep_token_id = self.stoi.get(SEP_TOKEN)
        self.unk_token_id = None if unk_token is None else self.stoi[unk_token]
        self._special_ids = frozenset(range(len(self.specials)))

    @classmethod
    def from_corpus(cls, texts, specials=(), unk_token=None):
        """The sorted set of characters in ``texts`` (a string or an iterable of strings)."""
        if isinstance(texts, str):
            texts = [texts]
        chars = set()
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"texts[{i}] must be a str, got {type(t).__name__}")
            chars.update(t)
        return cls(sorted(chars), specials=specials, unk_token=unk_token)

    @property
    def vocab_size(self):
        return len(self.itos)

    @property
    def pad_token(self):
        return PAD_TOKEN

    @property
    def eos_token(self):
        return EOS_TOKEN

    def encode(self, text, add_eos=False, allowed_special=False):
        """Ids of the characters of ``text`` (plus the end token if ``add_eos``).

        With ``allowed_special=True`` the strings of the special tokens inside
        ``text`` become their ids, so ``decode(ids, skip_special_tokens=False)``
        round-trips.
        """
        _check_text(text)
        ids = []
        unknown = {}                   # character -> its first position
        start = 0
        for piece, special in _split_specials(text, self.specials) if allowed_special else [(text, False)]:
            if special:
                ids.append(self.stoi[piece])
            for offset, c in enumerate(() if special else piece):
                tok = self.stoi.get(c)     # specials are 2+ characters, so never hit here
                if tok is None:
                    unknown.setdefault(c, start + offset)
                    tok = self.unk_token_id
                ids.append(tok)
            start += len(piece)
        if unknown and self.unk_token_id is None:
            raise ValueError(self._unknown_message(unknown))
        if add_eos:
            ids.append(self.eos_token_id)
        return ids

    def _unknown_message(self, unknown):
        shown = [f"{c!r} (U+{ord(c):04X}) at position {i}" for c, i in list(unknown.items())[:10]]
        more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
        return (f"text: {len(unknown)} character{'s' if len(unknown) > 1 else ''} not in the vocabulary "
                f"of {len(self.chars)} characters: {', '.join(shown)}{more}. A CharTokenizer knows only "
                f"the characters of the corpus it was built from; ByteTokenizer encodes any UTF-8 text "
                f"(train with it), or rebuild this one from a corpus containing them, or pass unk_token=...")

    def decode(self, ids, skip_special_tokens=True):
        """The text of ``ids``; special tokens dropped unless ``skip_special_tokens=False``."""
        ids = _check_ids(ids, len(self.itos))
        return "".join(self.itos[i] for i in ids if not (skip_special_tokens and i in self._special_ids))

    def __repr__(self):
        return (f"CharTokenizer(vocab_size={self.vocab_size}, specials={list(self.specials)}, "
                f"unk_token={self.unk_token!r})")

    # ---- persistence ------------------------------------------------------------

    def to_dict(self):
        return {"format": FORMAT, "version": VERSION, "specials": list(self.specials),
                "unk_token": self.unk_token, "chars": list(self.chars), **self._template_entry()}

    @classmethod
    def from_dict(cls, d):
        _check_header(d, FORMAT)
        for key in ("specials", "chars"):
            if not isinstance(d.get(key), list):
                raise ValueError(f"tokenizer data: {key!r} must be a list")
        specials = d["specials"]
        if specials[:2] != [PAD_TOKEN, EOS_TOKEN]:
            raise ValueError(f"tokenizer data: 'specials' must start with {PAD_TOKEN!r}, {EOS_TOKEN!r}, "
                             f"got {specials[:2]}")
        tok = cls(d["chars"], specials=specials[2:], unk_token=d.get("unk_token"))
        if list(tok.specials) != specials:
            raise ValueError(f"tokenizer data: 'unk_token' {d.get('unk_token')!r} is not among 'specials'")
        return tok._read_template(d)

# ---- one token per byte -------------------------------------------------------------------

def bytes_to_unicode():
    """GPT-2's map from each byte to a printable character (``encoder.py`` in GPT-2's code).

    A BPE vocabulary file is JSON text, and its merges file splits on spaces and newlines, so
    bytes that are spaces, control characters or invalid alone cannot stand for themselves: the
    188 printable bytes keep their own character ('!'..'~', '¡'..'¬', '®'..'ÿ') and the other 68
    are shifted to U+0100 onwards, in byte order (space, byte 32, becomes 'Ġ'; newline 'Ċ').
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    shifted = [b for b in range(256) if b not in printable]
    table = {b: chr(b) for b in printable}
    table.update({b: chr(256 + n) for n, b in enumerate(shifted)})
    return dict(sorted(table.items()))


BYTE_TO_UNICODE = bytes_to_unicode()
UNICODE_TO_BYTE = {c: b for b, c in BYTE_TO_UNICODE.items()}


class ByteTokenizer(_Tokenizer):
    """Maps text to the bytes of its UTF-8 encoding, one token per byte, and back.

        ids 0..255   the bytes themselves: id = byte value
        id  256      <|endoftext|>   end of a response (the generator stops on it)
        id  257      <|pad|>         padding (never a target: masked out of log-probs)
        258...       optional specials (e.g. "<|bos|>", "<|sep|>")

    Any text encodes, with nothing learned from a corpus: the tokenizer for a model trained from
    scratch on user data. A token is a byte, so a character costs what UTF-8 spends on it: ASCII
    1 token, accented Latin, Greek, Cyrillic, Hebrew or Arabic letters 2, Chinese, Japanese or Korean
    3, an emoji 4, and the length limits (``max_length``) count these tokens.

    This is GPT-2's byte-level BPE with no merges: ``bpe_vocab()`` names each id as GPT-2's
    vocabulary would (byte b as ``BYTE_TO_UNICODE[b]``, the specials as themselves, after the
    bytes, where GPT-2 keeps <|endoftext|>), so a ``vocab.json`` of it and an empty
    ``merges.txt`` give exactly these ids in transformers' ``GPT2Tokenizer`` and in
    ``BPETokenizer``.

    ``decode`` of bytes that are not valid UTF-8 (a generation stopped inside a character leaves
    one) does not raise: each maximal invalid piece becomes U+FFFD '�', as ``bytes.decode(...,
    errors="replace")`` and transformers do. Every text that ``encode`` made decodes exactly.
    """

    def __init__(self, specials=()):
        specials = [EOS_TOKEN, PAD_TOKEN] + [s for s in specials if s not in (PAD_TOKEN, EOS_TOKEN)]
        _check_specials(specials)
        self.specials = tuple(specials)
        self.special_ids = {s: 256 + k for k, s in enumerate(self.specials)}
        self.eos_token_id = self.special_ids[EOS_TOKEN]
        self.pad_token_id = self.special_ids[PAD_TOKEN]
        self.bos_token_id = self.special_ids.get(BOS_TOKEN)
        self.sep_token_id = self.special_ids.get(SEP_TOKEN)

    @property
    def vocab_size(self):
        return 256 + len(self.specials)

    @property
    def pad_token(self):
        return PAD_TOKEN

    @property
    def eos_token(self):
        return EOS_TOKEN

    def encode(self, text, add_eos=False, allowed_special=False):
        """The UTF-8 bytes of ``text`` as ids (plus the end token if ``add_eos``); with
        ``allowed_special=True`` the special tokens' strings inside ``text`` become their ids."""
        _check_text(text)
        pieces = _split_specials(text, self.specials) if allowed_special else [(text, False)]
        ids = []
        for piece, special in pieces:
            ids.extend([self.special_ids[piece]] if special else _utf8(piece))
        if add_eos:
            ids.append(self.eos_token_id)
        return ids

    def decode(self, ids, skip_special_tokens=True):
        """The text of ``ids``: each run of bytes decoded as UTF-8 (invalid bytes become U+FFFD),
        special tokens dropped unless ``skip_special_tokens=False``."""
        out, run = [], bytearray()
        for i in _check_ids(ids, self.vocab_size):
            if i < 256:
                run.append(i)
                continue
            if not skip_special_tokens:
                out.append(run.decode("utf-8", errors="replace"))
                out.append(self.specials[i - 256])
                run.clear()
        out.append(run.decode("utf-8", errors="replace"))
        return "".join(out)

    def bpe_vocab(self):
        """This tokenizer as a byte-level BPE vocabulary {GPT-2 token string: id}, whose merges
        are none: what ``vocab.json`` holds when it is exported for transformers."""
        vocab = {BYTE_TO_UNICODE[b]: b for b in range(256)}
        vocab.update(self.special_ids)
        return vocab

    def __repr__(self):
        return f"ByteTokenizer(vocab_size={self.vocab_size}, specials={list(self.specials)})"

    def to_dict(self):
        return {"format": BYTE_FORMAT, "version": VERSION, "specials": list(self.specials),
                **self._template_entry()}

    @classmethod
    def from_dict(cls, d):
        _check_header(d, BYTE_FORMAT)
        specials = d.get("specials")
        if not isinstance(specials, list) or specials[:2] != [EOS_TOKEN, PAD_TOKEN]:
            raise ValueError(f"tokenizer data: 'specials' must be a list starting with {EOS_TOKEN!r}, "
                             f"{PAD_TOKEN!r}, got {specials!r}")
        tok = cls(specials[2:])
        if list(tok.specials) != specials:
            raise ValueError(f"tokenizer data: duplicate entries in 'specials' {specials}")
        return tok._read_template(d)

# ---- GPT-2's byte-level BPE ---------------------------------------------------------------

# What the pattern's \s matches in transformers' regex engine (checked against it character by
# character): Unicode's White_Space property. Python's str.isspace() differs (it adds U+001C..U+001F).
WHITESPACE = frozenset("\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
                       "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")
CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")


def _char_class(c):
    """'L' letter (\\p{L}), 'N' number (\\p{N}), 's' white space (\\s), or 'o' anything else."""
    if c in WHITESPACE:
        return "s"
    cat = unicodedata.category(c)[0]        # Lu Ll Lt Lm Lo -> L; Nd Nl No -> N
    return cat if cat in "LN" else "o"


def pretokenize(text):
    r"""GPT-2's pre-tokenization: the pieces ``regex.findall(PAT, text)`` gives for GPT-2's pattern

        's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+

    written as a scan, because the standard ``re`` has no \p{L} (letters) or \p{N} (numbers):
    each position takes the first alternative that matches there, as the regex does. BPE merges
    never cross a piece, so " world" can become one token but "d w" never does. The pieces
    concatenate back to ``text``. Letters and numbers are Unicode general categories L* and N*
    (``unicodedata``, Unicode 14 on Python 3.11: a character assigned later counts as "other").
    """
    n = len(text)
    kind = [_char_class(c) for c in text]
    pieces, i = [], 0
    while i < n:
        if text[i] == "'":                                   # 's 't 're 've 'm 'll 'd, lowercase only
            c = next((c for c in CONTRACTIONS if text.startswith(c, i)), None)
            if c is not None:
                pieces.append(c)
                i += len(c)
                continue
        j = i + 1 if text[i] == " " and i + 1 < n and kind[i + 1] != "s" else i
        if kind[j] != "s":                                   # ' ?\p{L}+', ' ?\p{N}+', ' ?[^\s\p{L}\p{N}]+'
            k = j + 1                                        # (one optional space, then a run of one class)
            while k < n and kind[k] == kind[j]:
                k += 1
        else:                                                # a run of white space
            k = i + 1
            while k < n and kind[k] == "s":
                k += 1
            if k < n and k - i > 1:                          # '\s+(?!\S)': leave the last one to the word
                k -= 1
        pieces.append(text[i:k])
        i = k
    return pieces


def _token_text(token):
    """A BPE token string as the bytes it stands for."""
    return bytes(UNICODE_TO_BYTE[c] for c in token)


class BPETokenizer(_Tokenizer):
    """GPT-2's byte-level byte-pair encoding: ``vocab.json`` and ``merges.txt``.

    encode: pre-tokenize (``pretokenize``), write each piece's UTF-8 bytes as GPT-2's printable
    characters (``BYTE_TO_UNICODE``), then merge adjacent symbols, always the pair ranked
    highest in ``merges`` (earliest line) first, every occurrence of it, until no pair of the
    piece is a merge; each resulting symbol's id is its entry in ``vocab``. ``encode`` adds no
    special token. decode: the tokens' strings back to bytes, then UTF-8 (invalid bytes become
    U+FFFD, as transformers does), so ``decode(encode(s)) == s`` for every text.

    ``vocab`` {token string: id} must hold the 256 byte symbols (so every text encodes) and
    each merge's two parts and their concatenation; ``merges`` is a list of (left, right)
    pairs or "left right" strings, in rank order. ``specials`` are the vocabulary entries that
    are special tokens (default: ``eos_token`` and ``pad_token``).

    GPT-2 has no padding token, so ``pad_token`` defaults to the end-of-text token and
    ``pad_token_id == eos_token_id``: padding positions are hidden by the attention mask and
    their labels are −100, so the id that fills them is never read and never a target.
    """

    def __init__(self, vocab, merges, eos_token=EOS_TOKEN, pad_token=None, specials=()):
        if not isinstance(vocab, dict):
            raise TypeError(f"vocab must be a dict {{token: id}}, got {type(vocab).__name__}")
        pad_token = eos_token if pad_token is None else pad_token
        specials = list(dict.fromkeys([eos_token, pad_token, *specials]))
        _check_specials(specials)
        for s in specials:
            if s not in vocab:
                raise ValueError(f"vocab: the special token {s!r} is not in the vocabulary")
        ids = {}
        for token, i in vocab.items():
            if not isinstance(token, str) or not token:
                raise ValueError(f"vocab: tokens must be non-empty strings, got {token!r}")
            if isinstance(i, bool) or not isinstance(i, int) or i < 0:
                raise ValueError(f"vocab: the id of {token!r} must be an int >= 0, got {i!r}")
            if i in ids:
                raise ValueError(f"vocab: {token!r} and {ids[i]!r} share the id {i}")
            if token not in specials and not all(c in UNICODE_TO_BYTE for c in token):
                raise ValueError(f"vocab: {token!r} is neither a special token nor made of GPT-2's "
                                 f"byte characters (BYTE_TO_UNICODE)")
            ids[i] = token
        missing = [b for b, c in BYTE_TO_UNICODE.items() if c not in vocab]
        if missing:
            raise ValueError(f"vocab: a byte-level BPE needs all 256 byte tokens, so that any text "
                             f"encodes; missing bytes {missing[:10]}{'...' if len(missing) > 10 else ''}")
        pairs = []
        for rank, m in enumerate(merges):
            pair = tuple(m.split(" ")) if isinstance(m, str) else tuple(m)
            if len(pair) != 2 or not all(isinstance(p, str) and p for p in pair):
                raise ValueError(f"merges[{rank}]: a merge is two tokens 'left right', got {m!r}")
            for token in (*pair, pair[0] + pair[1]):
                if token not in vocab:
                    raise ValueError(f"merges[{rank}]: {pair[0]!r} {pair[1]!r} uses or makes {token!r}, "
                                     f"which is not in the vocabulary")
            pairs.append(pair)
        self.vocab = dict(vocab)
        self.merges = pairs
        # a merge listed twice ranks where it is listed last, as transformers reads merges.txt (both its
        # GPT2Tokenizer and the tokenizers library), so a file ranks its merges the same way in both
        self.ranks = {pair: rank for rank, pair in enumerate(pairs)}
        self.itos = ids
        self.specials = tuple(specials)
        self._special_ids = frozenset(vocab[s] for s in specials)
        self.eos_token, self.pad_token = eos_token, pad_token
        self.eos_token_id, self.pad_token_id = vocab[eos_token], vocab[pad_token]
        self.vocab_size = max(ids) + 1
        self._cache = {}

    @classmethod
    def train(cls, texts, vocab_size, specials=()):
        """A byte-level BPE learned from ``texts`` with GPT-2's recipe, ``vocab_size`` tokens in all.

        Pre-tokenize (``pretokenize``), write each piece's bytes as GPT-2's characters, then merge
        the most frequent adjacent pair, again and again (ties broken by the pair itself, so the
        same texts always give the same merges), until the vocabulary holds ``vocab_size`` tokens:
        the 256 bytes, one per merge, then <|endoftext|> and ``specials``, as GPT-2 orders them.
        Pair counts are updated only in the pieces a merge touches.
        """
        vocab_size = checks.integer(vocab_size, "vocab_size", low=257 + len(specials))
        if isinstance(texts, (str, bytes)):
            raise TypeError("texts must be a list of strings; a bare string would be read one character at a time, "
                            "each character a text of its own: pass [text]")
        pieces = collections.Counter(tuple(BYTE_TO_UNICODE[b] for b in piece.encode("utf-8"))
                                     for t in texts if _check_text(t) is None for piece in pretokenize(t))
        words = [list(w) for w in pieces]
        counts = list(pieces.values())
        pair_count, where = collections.Counter(), collections.defaultdict(set)
        for i, w in enumerate(words):
            for pair in zip(w, w[1:]):
                pair_count[pair] += counts[i]
                where[pair].add(i)
        merges = []
        while 257 + len(specials) + len(merges) < vocab_size and pair_count:
            best = max(pair_count, key=lambda pair: (pair_count[pair], pair))
            merges.append(best)
            for i in where.pop(best):
                w = words[i]
                for pair in zip(w, w[1:]):
                    pair_count[pair] -= counts[i]
                    if pair_count[pair] <= 0:
                        del pair_count[pair]
                merged, k = [], 0
                while k < len(w):
                    if k + 1 < len(w) and (w[k], w[k + 1]) == best:
                        merged.append(w[k] + w[k + 1])
                        k += 2
                    else:
                        merged.append(w[k])
                        k += 1
                words[i] = merged
                for pair in zip(merged, merged[1:]):
                    pair_count[pair] += counts[i]
                    where[pair].add(i)
        vocab = {c: i for i, c in enumerate(BYTE_TO_UNICODE.values())}
        for a, b in merges:
            vocab.setdefault(a + b, len(vocab))
        for token in (EOS_TOKEN, *specials):
            vocab[token] = len(vocab)
        return cls(vocab, merges, specials=specials)

    @classmethod
    def from_files(cls, vocab_file, merges_file, eos_token=EOS_TOKEN, pad_token=None, specials=()):
        """Read GPT-2's ``vocab.json`` (JSON {token: id}) and ``merges.txt`` (a "#version" line,
        then one "left right" merge per line, in rank order)."""
        vocab = _read_json(vocab_file)
        merges_file = os.fspath(merges_file)
        with open(merges_file, encoding="utf-8") as f:
            lines = f.read().split("\n")
        if lines and lines[0].startswith("#version"):
            lines = lines[1:]
        merges = [line for line in lines if line]
        try:        # the vocabulary alone first, so that an error names the file at fault
            cls(vocab, [], eos_token, pad_token, specials)
        except (ValueError, TypeError) as err:
            raise ValueError(f"{os.fspath(vocab_file)}: {err}") from err
        try:
            return cls(vocab, merges, eos_token, pad_token, specials)
        except (ValueError, TypeError) as err:
            raise ValueError(f"{merges_file}: {err} (merges[k] is the k-th merge line, from 0)") from err

    @classmethod
    def from_pretrained(cls, directory):
        """The tokenizer of a Hugging Face GPT-2 directory: ``vocab.json`` and ``merges.txt``, or else
        the ``tokenizer.json`` that transformers 5 writes alone, when it describes this byte-level BPE;
        with the end-of-text and padding tokens that ``tokenizer_config.json`` names, when there is
        one (GPT-2's own names none: "<|endoftext|>", and padding with it)."""
        directory = os.fspath(directory)
        path = lambda name: os.path.join(directory, name)         # noqa: E731
        config = _read_json(path("tokenizer_config.json")) if os.path.isfile(path("tokenizer_config.json")) else {}
        if not isinstance(config, dict):
            raise ValueError(f"{path('tokenizer_config.json')}: must be a JSON object")
        content = lambda t: t.get("content") if isinstance(t, dict) else t    # noqa: E731  (AddedToken dicts)
        eos_token = content(config.get("eos_token")) or EOS_TOKEN
        pad_token = content(config.get("pad_token"))
        specials = [content(t) for t in (config.get("added_tokens_decoder") or {}).values()
                    if isinstance(t, dict) and t.get("special")]
        if os.path.isfile(path("vocab.json")) and os.path.isfile(path("merges.txt")):
            return cls.from_files(path("vocab.json"), path("merges.txt"), eos_token, pad_token, specials)
        if os.path.isfile(path("tokenizer.json")):
            return cls._from_tokenizers_json(path("tokenizer.json"), eos_token, pad_token, specials)
        raise FileNotFoundError(f"{directory}: no GPT-2 tokenizer here: neither vocab.json and merges.txt "
                                f"nor a tokenizer.json")

    @classmethod
    def _from_tokenizers_json(cls, path, eos_token, pad_token, specials):
        """transformers' ``tokenizer.json`` (the ``tokenizers`` library's format), if it is GPT-2's byte-level
        BPE: no normalizer, GPT-2's pattern without a prefix space, no special token added around a text."""
        d = _read_json(path)
        if not isinstance(d, dict) or not isinstance(d.get("model"), dict):
            raise ValueError(f"{path}: not a tokenizers JSON file (no 'model' object)")
        model, pre, post = d["model"], d.get("pre_tokenizer") or {}, d.get("post_processor") or {}
        checks = [("model.type", model.get("type"), model.get("type") == "BPE"),
                  ("model.dropout", model.get("dropout"), model.get("dropout") is None),
                  ("model.byte_fallback", model.get("byte_fallback"), not model.get("byte_fallback")),
                  ("model.ignore_merges", model.get("ignore_merges"), not model.get("ignore_merges")),
                  ("model.continuing_subword_prefix", model.get("continuing_subword_prefix"),
                   not model.get("continuing_subword_prefix")),
                  ("model.end_of_word_suffix", model.get("end_of_word_suffix"), not model.get("end_of_word_suffix")),
                  ("normalizer", d.get("normalizer"), d.get("normalizer") is None),
                  ("pre_tokenizer", d.get("pre_tokenizer"), pre.get("type") == "ByteLevel"
                   and pre.get("use_regex", True) and not pre.get("add_prefix_space")),
                  ("post_processor", d.get("post_processor"), post.get("type") in (None, "ByteLevel")
                   or (post.get("type") == "TemplateProcessing" and not post.get("special_tokens")))]
        for field, value, ok in checks:
            if not ok:
                raise ValueError(f"{path}: {field} = {json.dumps(value)}: this reads GPT-2's byte-level BPE only")
        vocab = dict(model.get("vocab") or {})
        added = [t for t in d.get("added_tokens") or [] if isinstance(t, dict)]
        for t in added:
            vocab.setdefault(t.get("content"), t.get("id"))
        specials = specials + [t.get("content") for t in added if t.get("special")]
        try:
            return cls(vocab, model.get("merges") or [], eos_token, pad_token, specials)
        except (ValueError, TypeError) as err:
            raise ValueError(f"{path}: {err}") from err

    def bpe(self, piece):
        """The BPE tokens of one pre-tokenized piece (a string of byte characters)."""
        tokens = self._cache.get(piece)
        if tokens is not None:
            return tokens
        parts = list(piece)
        while len(parts) > 1:
            pair = min(zip(parts, parts[1:]), key=lambda p: self.ranks.get(p, len(self.ranks)))
            if pair not in self.ranks:
                break
            merged, k = [], 0
            while k < len(parts):                       # every occurrence, left to right
                if k + 1 < len(parts) and (parts[k], parts[k + 1]) == pair:
                    merged.append(parts[k] + parts[k + 1])
                    k += 2
                else:
                    merged.append(parts[k])
                    k += 1
            parts = merged
        if len(self._cache) < 100_000:
            self._cache[piece] = parts
        return parts

    def encode(self, text, add_eos=False, allowed_special=False):
        """The BPE ids of ``text`` (plus the end token if ``add_eos``); with ``allowed_special=True``
        the special tokens' strings inside ``text`` become their ids, as transformers does by default."""
        _check_text(text)
        segments = _split_specials(text, self.specials) if allowed_special else [(text, False)]
        ids = []
        for segment, special in segments:
            if special:
                ids.append(self.vocab[segment])
                continue
            for piece in pretokenize(segment):
                symbols = "".join(BYTE_TO_UNICODE[b] for b in _utf8(piece))
                ids.extend(self.vocab[t] for t in self.bpe(symbols))
        if add_eos:
            ids.append(self.eos_token_id)
        return ids

    def decode(self, ids, skip_special_tokens=True):
        """The text of ``ids``: each run of ordinary tokens as bytes, decoded as UTF-8 (invalid bytes
        become U+FFFD); special tokens dropped unless ``skip_special_tokens=False``."""
        out, run = [], bytearray()
        for pos, i in enumerate(_check_ids(ids, self.vocab_size)):
            token = self.itos.get(i)
            if token is None:
                raise ValueError(f"ids: id {i} at position {pos} is not in the vocabulary")
            if i not in self._special_ids:
                run += _token_text(token)
            elif not skip_special_tokens:
                out.append(run.decode("utf-8", errors="replace"))
                out.append(token)
                run.clear()
        out.append(run.decode("utf-8", errors="replace"))
        return "".join(out)

    def __repr__(self):
        return (f"BPETokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, "
                f"eos_token={self.eos_token!r}, pad_token={self.pad_token!r})")

    def to_dict(self):
        return {"format": BPE_FORMAT, "version": VERSION, "eos_token": self.eos_token,
                "pad_token": self.pad_token, "specials": list(self.specials), "vocab": self.vocab,
                "merges": [f"{a} {b}" for a, b in self.merges], **self._template_entry()}

    @classmethod
    def from_dict(cls, d):
        _check_header(d, BPE_FORMAT)
        for key, kind in (("vocab", dict), ("merges", list), ("specials", list), ("eos_token", str),
                          ("pad_token", str)):
            if not isinstance(d.get(key), kind):
                raise ValueError(f"tokenizer data: {key!r} must be a JSON {kind.__name__}")
        return cls(d["vocab"], d["merges"], d["eos_token"], d["pad_token"], d["specials"])._read_template(d)

# ---- any of them --------------------------------------------------------------------------

TOKENIZERS = {FORMAT: CharTokenizer, BYTE_FORMAT: ByteTokenizer, BPE_FORMAT: BPETokenizer}


def tokenizer_from_dict(d):
    """The tokenizer that ``to_dict`` wrote, whichever it is: its class is named by the ``format`` field."""
    if not isinstance(d, dict):
        raise ValueError(f"tokenizer data must be a JSON object, got {type(d).__name__}")
    cls = TOKENIZERS.get(d.get("format"))
    if cls is None:
        raise ValueError(f"tokenizer data: unknown 'format' {d.get('format')!r}; "
                         f"this code reads {', '.join(map(repr, TOKENIZERS))}")
    return cls.from_dict(d)


def load_tokenizer(path):
    """``tokenizer_from_dict`` of the JSON file ``path``; errors name the file."""
    return _load(tokenizer_from_dict, path)
