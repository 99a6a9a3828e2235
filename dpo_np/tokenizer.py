"""A character-level tokenizer: one token per Unicode character.

In the notes ("Short intro to language models") a language model reads a prompt
as tokens and answers with one probability per vocabulary entry for the next
token. At toy scale the simplest honest vocabulary is the set of characters of
the corpus, sorted so the same corpus always gives the same ids, with the
special tokens first:

    id 0  <|pad|>          padding (never a target: masked out of log-probs)
    id 1  <|endoftext|>    end of a response (the generator stops on it)
    ...   optional specials (e.g. "<|bos|>", "<|sep|>", an unk token)
    ...   the characters, in sorted order

``encode`` reads text literally: the string "<|endoftext|>" inside a text is
thirteen characters, not the end token, unless ``allowed_special=True``. Append
``eos_token_id`` yourself (or pass ``add_eos=True``) to end a response.
"""

import json
import os

from dpo_np.files import write_json_atomic

PAD_TOKEN = "<|pad|>"
EOS_TOKEN = "<|endoftext|>"
BOS_TOKEN = "<|bos|>"
SEP_TOKEN = "<|sep|>"
FORMAT = "dpo_np.CharTokenizer"
VERSION = 1


class CharTokenizer:
    """Maps text to ids character by character, and back.

    Build one with ``CharTokenizer.from_corpus(texts)``; ``specials`` adds
    special tokens after pad and end-of-text (``BOS_TOKEN``, ``SEP_TOKEN``, or
    your own). A character outside the vocabulary raises ``ValueError`` naming
    it and its position, unless an ``unk_token`` was given: then it is encoded
    as that token (a lossy choice, so it is opt-in).
    """

    def __init__(self, chars, specials=(), unk_token=None):
        specials = [PAD_TOKEN, EOS_TOKEN] + [s for s in specials if s not in (PAD_TOKEN, EOS_TOKEN)]
        if unk_token is not None and unk_token not in specials:
            specials.append(unk_token)
        for s in specials:
            if not isinstance(s, str) or len(s) < 2:
                raise ValueError(f"specials: each special token must be a string of 2+ characters "
                                 f"(so it cannot be confused with a character), got {s!r}")
        if len(set(specials)) != len(specials):
            raise ValueError(f"specials: duplicate special tokens in {specials}")
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
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        ids = []
        i = 0
        while i < len(text):
            if allowed_special and text.startswith("<|", i):
                special = next((s for s in self.specials if text.startswith(s, i)), None)
                if special is not None:
                    ids.append(self.stoi[special])
                    i += len(special)
                    continue
            c = text[i]
            tok = self.stoi.get(c)     # specials are 2+ characters, so never hit here
            if tok is None:
                if self.unk_token_id is None:
                    raise ValueError(f"text: character {c!r} (U+{ord(c):04X}) at position {i} is not in "
                                     f"the vocabulary of {len(self.chars)} characters; rebuild the "
                                     f"tokenizer from a corpus containing it, or pass unk_token=...")
                tok = self.unk_token_id
            ids.append(tok)
            i += 1
        if add_eos:
            ids.append(self.eos_token_id)
        return ids

    def decode(self, ids, skip_special_tokens=True):
        """The text of ``ids``; special tokens dropped unless ``skip_special_tokens=False``."""
        out = []
        for pos, i in enumerate(ids):
            i = int(i)
            if not 0 <= i < len(self.itos):
                raise ValueError(f"ids: id {i} at position {pos} is outside the vocabulary "
                                 f"[0, {len(self.itos)})")
            if skip_special_tokens and i in self._special_ids:
                continue
            out.append(self.itos[i])
        return "".join(out)

    def __len__(self):
        return self.vocab_size

    def __eq__(self, other):
        return isinstance(other, CharTokenizer) and self.to_dict() == other.to_dict()

    def __repr__(self):
        return (f"CharTokenizer(vocab_size={self.vocab_size}, specials={list(self.specials)}, "
                f"unk_token={self.unk_token!r})")

    # ---- persistence ------------------------------------------------------------

    def to_dict(self):
        return {"format": FORMAT, "version": VERSION, "specials": list(self.specials),
                "unk_token": self.unk_token, "chars": list(self.chars)}

    @classmethod
    def from_dict(cls, d):
        if not isinstance(d, dict):
            raise ValueError(f"tokenizer data must be a JSON object, got {type(d).__name__}")
        if d.get("format") != FORMAT:
            raise ValueError(f"tokenizer data: 'format' must be {FORMAT!r}, got {d.get('format')!r}")
        if d.get("version") != VERSION:
            raise ValueError(f"tokenizer data: unsupported 'version' {d.get('version')!r} "
                             f"(this code reads version {VERSION})")
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
        return tok

    def save(self, path):
        """Write the tokenizer as JSON, atomically (temp file, then ``os.replace``)."""
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path):
        path = os.fspath(path)
        try:
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from err
        try:
            return cls.from_dict(d)
        except (ValueError, TypeError) as err:
            raise ValueError(f"{path}: {err}") from err
