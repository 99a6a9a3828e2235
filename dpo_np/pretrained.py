"""GPT-2 checkpoints in and out: a Hugging Face GPT-2 directory as a ``GPT``, and a ``GPT`` as one.

A Hugging Face GPT-2 directory holds

    config.json             GPT2Config: "model_type": "gpt2", vocab_size, n_positions, n_embd, ...
    model.safetensors       the weights, "transformer.wte.weight", "transformer.h.0.attn.c_attn.weight", ...
                            (the original ``gpt2`` upload names them without "transformer." and also
                            stores each block's causal mask, "h.N.attn.bias": both are read)
    vocab.json, merges.txt  the tokenizer (``BPETokenizer``), with tokenizer_config.json, whose
                            "chat_template" (written on export) is the prompt template the model was
                            trained with, as a Jinja template (``chat_template``)

``GPT.params`` already uses GPT-2's names and its Conv1D layout (y = x @ W + b, W of shape
(in, out)), so the weights map one to one under the "transformer." prefix, with no transpose.
The head is tied to the token embedding, as in GPT-2, so no "lm_head.weight" is written (and one
that is read must equal "wte.weight").

What this GPT computes is GPT-2 with GELU's tanh approximation, LayerNorm ε = 1e-5 and
attention scaled by 1/√head_size. A config.json that asks for anything else is refused, naming
the key and its value, rather than loaded into a model that would compute something different:

    activation_function             gelu_new, gelu_pytorch_tanh, gelu_fast (one function) only
    layer_norm_epsilon              1e-5 only
    scale_attn_weights              true only
    scale_attn_by_inverse_layer_idx false only
    add_cross_attention             false only
    n_inner                         null or 4·n_embd only
    tie_word_embeddings             true, or false with an lm_head.weight equal to wte.weight

``reorder_and_upcast_attn`` is accepted either way: it reorders the scaling and computes the
softmax in float32 under mixed precision, the same function in float32 and float64. Dropout
rates are accepted and unused (this GPT has no dropout).
"""

import json
import os
import re
import string
import warnings

import numpy as np

from dpo_np import backend
from dpo_np.files import atomic_write, read_json, require_file, write_json_atomic
from dpo_np.model import GPT, GPTConfig, param_shapes
from dpo_np.safetensors import read_header, read_safetensors, write_safetensors
from dpo_np.tokenizer import (PROMPT_TEMPLATE, TOKENIZERS, BPETokenizer, ByteTokenizer, CharTokenizer,
                              check_prompt_template, load_tokenizer)

CONFIG, WEIGHTS = "config.json", "model.safetensors"
VOCAB, MERGES, TOKENIZER_CONFIG, SPECIAL_TOKENS_MAP = ("vocab.json", "merges.txt", "tokenizer_config.json",
                                                       "special_tokens_map.json")
CHAT_TEMPLATE_FILE = "chat_template.jinja"       # transformers 5 saves a chat template here, not in the config
WRITTEN = (CONFIG, WEIGHTS, VOCAB, MERGES, TOKENIZER_CONFIG, SPECIAL_TOKENS_MAP)
PREFIX = "transformer."
TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
CAUSAL_MASK = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)")   # buffers of old checkpoints, not parameters


# ---- config.json ----------------------------------------------------------------------------

def config_from_hf(d, source=CONFIG):
    """The ``GPTConfig`` of a Hugging Face GPT-2 ``config.json`` dict, or ``ValueError`` naming the
    key and value that this GPT cannot compute (see the module docstring)."""
    if not isinstance(d, dict):
        raise ValueError(f"{source}: must be a JSON object, got {type(d).__name__}")

    def refuse(key, why):
        raise ValueError(f"{source}: {key} = {json.dumps(d.get(key))}: {why}")

    if d.get("model_type") != "gpt2":
        refuse("model_type", "only GPT-2 directories (\"gpt2\") are read")
    if d.get("activation_function", "gelu_new") not in TANH_GELUS:
        refuse("activation_function", f"this GPT computes GELU's tanh approximation ({', '.join(TANH_GELUS)})")
    if d.get("layer_norm_epsilon", 1e-5) != 1e-5:
        refuse("layer_norm_epsilon", "this GPT's LayerNorm uses ε = 1e-5")
    if d.get("scale_attn_weights", True) is not True:
        refuse("scale_attn_weights", "this GPT scales attention scores by 1/√head_size")
    if d.get("scale_attn_by_inverse_layer_idx", False) is not False:
        refuse("scale_attn_by_inverse_layer_idx", "this GPT does not scale attention by 1/(layer + 1)")
    if d.get("add_cross_attention", False) is not False:
        refuse("add_cross_attention", "this GPT is a decoder alone, with no cross-attention")
    for key in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
        if key not in d:
            raise ValueError(f"{source}: missing {key!r}")
    if d.get("n_inner") not in (None, 4 * d["n_embd"]):
        refuse("n_inner", f"this GPT's MLP has 4·n_embd = {4 * d['n_embd']} hidden units")
    try:
        return GPTConfig(vocab_size=d["vocab_size"], block_size=d["n_positions"], n_layer=d["n_layer"],
                         n_head=d["n_head"], n_embd=d["n_embd"])
    except (TypeError, ValueError) as err:
        raise ValueError(f"{source}: {err} (block_size is n_positions)") from None


def config_to_hf(config, dtype=np.float32, tokenizer=None):
    """A GPT-2 ``config.json`` dict that transformers' ``GPT2LMHeadModel`` reads as this ``GPTConfig``.

    Dropout rates are 0 because the model was trained here without dropout; the token ids are
    the tokenizer's when one is given."""
    eos = None if tokenizer is None else tokenizer.eos_token_id
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
            "vocab_size": config.vocab_size, "n_positions": config.block_size, "n_embd": config.n_embd,
            "n_layer": config.n_layer, "n_head": config.n_head, "n_inner": None,
            "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
            "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
            "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
            "reorder_and_upcast_attn": False, "add_cross_attention": False, "tie_word_embeddings": True,
            "bos_token_id": eos, "eos_token_id": eos,
            "pad_token_id": None if tokenizer is None else tokenizer.pad_token_id,
            "dtype": np.dtype(dtype).name, "use_cache": True}


def _read_json(path):
    return read_json(path)


def _check_dtype(dtype):
    """float32 or float64 as a NumPy scalar type; None passes (it means: as stored)."""
    if dtype is None:
        return None
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"dtype must be float32, float64 or None (as stored), got {dtype!r}")
    return dt.type


def _stored_dtype(kinds):
    # float32 or float64 stay as stored; half precisions (F16, BF16) and mixtures become float32
    return {frozenset({"F32"}): np.float32, frozenset({"F64"}): np.float64}.get(frozenset(kinds),
                                                                                 backend.default_dtype())


# ---- model.safetensors -----------------------------------------------------------------------

def load_pretrained(directory, dtype=None):
    """A ``GPT`` holding the weights of the Hugging Face GPT-2 directory ``directory``.

    ``dtype``: float32 or float64; None keeps the stored dtype when it is one of them (F16 and
    BF16 weights become float32). Every name, shape and dtype is checked against ``config.json``
    from the header alone, before any weight is read; errors name the file and the tensor.
    """
    directory = os.fspath(directory)
    dtype = _check_dtype(dtype)
    config_path, weights_path = os.path.join(directory, CONFIG), os.path.join(directory, WEIGHTS)
    for path in (config_path, weights_path):
        if not os.path.lexists(path):
            raise FileNotFoundError(f"{path}: file is missing{_why_missing(directory, path)}")
        require_file(path, os.path.basename(path))
    hf_config = _read_json(config_path)
    config = config_from_hf(hf_config, config_path)
    tied = hf_config.get("tie_word_embeddings", True)

    header, _, _ = read_header(weights_path)
    expected = param_shapes(config)
    found, unexpected, lm_head = {}, [], None
    for key, (kind, shape, _, _) in header.items():
        name = key[len(PREFIX):] if key.startswith(PREFIX) else key
        if name in expected:
            if name in found:
                raise ValueError(f"{weights_path}: {name!r} is stored twice, as {found[name]!r} and {key!r}")
            if shape != expected[name]:
                raise ValueError(f"{weights_path}: tensor {key!r} has shape {list(shape)}, but {CONFIG} "
                                 f"({config}) implies {list(expected[name])}")
            if kind not in ("F16", "BF16", "F32", "F64"):
                raise ValueError(f"{weights_path}: tensor {key!r} has dtype {kind}, not a floating type")
            found[name] = key
        elif key == "lm_head.weight" and shape == expected["wte.weight"]:
            lm_head = key
        elif not CAUSAL_MASK.fullmatch(name):
            unexpected.append(key)
    missing = [n for n in expected if n not in found]
    if missing or unexpected:
        raise ValueError(f"{weights_path}: tensors do not match a GPT-2 LM of {CONFIG} ({config}): missing "
                         f"{missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected "
                         f"{unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
    if not tied and lm_head is None:
        raise ValueError(f"{config_path}: tie_word_embeddings = false, and {weights_path} holds no "
                         f"'lm_head.weight': this GPT's head is the token embedding")

    dtype = dtype or _stored_dtype({header[key][0] for key in found.values()})
    arrays = read_safetensors(weights_path, names=list(found.values()) + ([lm_head] if lm_head else []))
    model = GPT(config, dtype=dtype)
    for name, key in found.items():
        a = arrays[key]
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{weights_path}: tensor {key!r} contains NaN or inf")
        model.params[name] = backend.asarray(a.astype(dtype, copy=False))
    if lm_head is not None and not np.array_equal(arrays[lm_head], arrays[found["wte.weight"]]):
        raise ValueError(f"{weights_path}: 'lm_head.weight' differs from {found['wte.weight']!r} "
                         f"(tie_word_embeddings = {json.dumps(tied)} in {CONFIG}): this GPT's head is the "
                         f"token embedding, so an untied head cannot be loaded")
    return model


def _why_missing(directory, path):
    if os.path.basename(path) == WEIGHTS:
        if os.path.isfile(os.path.join(directory, "model.safetensors.index.json")):
            return " (sharded weights, model.safetensors.index.json, are not read: save them in one file)"
        if os.path.isfile(os.path.join(directory, "pytorch_model.bin")):
            return (" (pytorch_model.bin is a torch.save archive, which can run code as it loads, "
                    "and is never read: convert it with transformers' "
                    "model.save_pretrained(DIR), which writes model.safetensors)")
    return ""


def save_pretrained(model, directory, tokenizer=None):
    """Write ``model`` (and ``tokenizer``) as a Hugging Face GPT-2 directory; returns its path.

    ``transformers.GPT2LMHeadModel.from_pretrained(directory)`` then gives the same logits, and with a
    ``ByteTokenizer`` or ``BPETokenizer`` ``GPT2Tokenizer``/``AutoTokenizer.from_pretrained(directory)``
    gives the same ids (``tokenizer_files``). Each file is written atomically, and config.json last
    (an earlier export's is removed first), so a directory with a config.json is a whole export. The
    directory must be new, empty, or hold only files this function writes, so nothing else is replaced.
    """
    directory = os.path.abspath(os.fspath(directory))
    if not isinstance(getattr(model, "config", None), GPTConfig) or not isinstance(getattr(model, "params", None), dict):
        raise TypeError(f"model must be a GPT, got {type(model).__name__}")
    if os.path.lexists(directory):
        if not os.path.isdir(directory):
            raise ValueError(f"{directory} exists and is not a directory")
        others = sorted(set(os.listdir(directory)) - set(WRITTEN))
        if others:
            raise ValueError(f"{directory} holds files this export does not write ({', '.join(others[:5])}); "
                             f"refusing to mix them with a GPT-2 directory: choose a new or empty directory")
    files = {} if tokenizer is None else tokenizer_files(tokenizer, model.config)
    dtype = np.dtype(model.dtype)
    os.makedirs(directory, exist_ok=True)
    if os.path.exists(os.path.join(directory, CONFIG)):
        os.remove(os.path.join(directory, CONFIG))     # until the new one is written last, no export is here
    write_safetensors(os.path.join(directory, WEIGHTS),
                      {PREFIX + k: backend.to_numpy(p) for k, p in model.params.items()}, {"format": "pt"})
    for name in (VOCAB, MERGES, TOKENIZER_CONFIG, SPECIAL_TOKENS_MAP):
        path = os.path.join(directory, name)
        if name not in files and os.path.exists(path):
            os.remove(path)          # a tokenizer of an earlier export would not match this one
    for name, content in files.items():
        if isinstance(content, str):
            with atomic_write(os.path.join(directory, name)) as f:
                f.write(content)
        else:
            write_json_atomic(os.path.join(directory, name), content)
    write_json_atomic(os.path.join(directory, CONFIG), config_to_hf(model.config, dtype, tokenizer))
    return directory


# ---- the tokenizer's files --------------------------------------------------------------------

def tokenizer_files(tokenizer, config=None):
    """{file name: content} of ``tokenizer`` as a GPT-2 tokenizer of transformers: ``vocab.json``,
    ``merges.txt`` (GPT-2's "#version" line, then one merge per line), ``tokenizer_config.json`` (its
    "chat_template" the tokenizer's prompt template, see ``chat_template``)
    and ``special_tokens_map.json``.

    A ``ByteTokenizer`` is the byte-level BPE with no merges (``ByteTokenizer.bpe_vocab``). The
    config marks the special tokens, adds no prefix space and no BOS, and cleans nothing up in
    decoding, so transformers gives ``encode(text)``'s ids. Like transformers by default (and TRL,
    which appends the end token to a response as text, relies on it), it reads a special token's
    string inside a text as that token: ``encode(text, allowed_special=True)``. A ``CharTokenizer``
    is refused (``ValueError``): a character vocabulary has no byte-level BPE form (the bytes of
    characters outside it have no ids).
    """
    if isinstance(tokenizer, ByteTokenizer):
        vocab, merges = tokenizer.bpe_vocab(), []
    elif isinstance(tokenizer, BPETokenizer):
        vocab, merges = tokenizer.vocab, tokenizer.merges
    elif isinstance(tokenizer, CharTokenizer):
        raise ValueError("tokenizer: a CharTokenizer has no byte-level BPE form that transformers can load "
                         "(a character vocabulary gives no id to the bytes outside it); train with "
                         "ByteTokenizer, or export without the tokenizer (tokenizer=None; on the command "
                         "line, --without-tokenizer)")
    else:
        raise TypeError(f"tokenizer must be a ByteTokenizer or BPETokenizer, got {type(tokenizer).__name__}")
    if config is not None and tokenizer.vocab_size > config.vocab_size:
        raise ValueError(f"tokenizer has {tokenizer.vocab_size} tokens, more than the model's vocab_size "
                         f"{config.vocab_size}")
    special = dict.fromkeys(tokenizer.specials)
    added = {str(vocab[s]): {"content": s, "lstrip": False, "normalized": False, "rstrip": False,
                             "single_word": False, "special": True} for s in special}
    tokens = {"bos_token": tokenizer.eos_token, "eos_token": tokenizer.eos_token,
              "unk_token": tokenizer.eos_token, "pad_token": tokenizer.pad_token}
    tokenizer_config = {"tokenizer_class": "GPT2Tokenizer", **tokens, "add_prefix_space": False,
                        "add_bos_token": False, "errors": "replace", "clean_up_tokenization_spaces": False,
                        "added_tokens_decoder": added, "chat_template": chat_template(tokenizer.prompt_template)}
    if config is not None:
        tokenizer_config["model_max_length"] = config.block_size
    merges_text = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)
    return {VOCAB: vocab, MERGES: merges_text, TOKENIZER_CONFIG: tokenizer_config, SPECIAL_TOKENS_MAP: tokens}


# ---- the prompt template as a chat template ----------------------------------------------------

# A user message is written as the prompt template writes a prompt, an assistant message as the
# response and the end token, exactly the sequences the model was trained on; any other role has no
# place in that format. The literal parts are JSON strings, which Jinja reads as its own string
# literals, so no character of the template can be taken for Jinja syntax.
_CHAT_TEMPLATE = ("{%- for message in messages -%}"
                  "{%- if message['role'] == 'user' -%}{{ @PREFIX@ ~ message['content'] ~ @SUFFIX@ }}"
                  "{%- elif message['role'] == 'assistant' -%}{{ message['content'] ~ eos_token }}"
                  "{%- else -%}{{ raise_exception(@REFUSAL@) }}"
                  "{%- endif -%}{%- endfor -%}")
_REFUSAL = ("this model was trained on a user message and its answer, written in its prompt template; "
            "it has no place for a message of another role, such as a system prompt")
_LITERAL = r'"(?:[^"\\]|\\.)*"'


def chat_template(prompt_template=PROMPT_TEMPLATE):
    """The Jinja chat template (``tokenizer_config.json``'s "chat_template") that writes a user message
    as ``prompt_template`` writes a prompt x, and an assistant message as its content and the end
    token: ``apply_chat_template([{"role": "user", "content": x}])`` is ``prompt_template.format(prompt=x)``,
    the text the model answers (the answer's cue is part of it, with or without a generation prompt)."""
    parts = list(string.Formatter().parse(check_prompt_template(prompt_template)))
    prefix, suffix = parts[0][0], "".join(literal for literal, _, _, _ in parts[1:])
    literal = lambda text: json.dumps(text, ensure_ascii=False)          # noqa: E731
    return (_CHAT_TEMPLATE.replace("@PREFIX@", literal(prefix)).replace("@SUFFIX@", literal(suffix))
            .replace("@REFUSAL@", literal(_REFUSAL)))


def prompt_template_from_chat(chat):
    """The prompt template of a chat template that ``chat_template`` wrote, or None for any other."""
    pattern = re.escape(chat_template("@P@{prompt}@S@"))
    pattern = pattern.replace(re.escape('"@P@"'), f"({_LITERAL})").replace(re.escape('"@S@"'), f"({_LITERAL})")
    m = re.fullmatch(pattern, chat) if isinstance(chat, str) else None
    if m is None:
        return None
    escape = lambda text: json.loads(text).replace("{", "{{").replace("}", "}}")   # noqa: E731
    return escape(m.group(1)) + "{prompt}" + escape(m.group(2))


# ---- either kind of directory ------------------------------------------------------------------

def load_model(path, dtype=None, require_tokenizer=True):
    """``(model, tokenizer)`` from a dpo_np checkpoint directory or a Hugging Face GPT-2 directory.

    A dpo_np checkpoint (``state.json``, ``params.npz``) is read by ``checkpoint.load_checkpoint``.
    A GPT-2 directory (``config.json`` and ``model.safetensors``) by ``load_pretrained``, with its
    tokenizer from a dpo_np ``tokenizer.json``, else ``BPETokenizer.from_pretrained`` (``vocab.json``
    + ``merges.txt``, or the ``tokenizer.json`` transformers writes, as a TRL run saves it). ``dtype``
    as in ``load_pretrained`` (a checkpoint's parameters are cast when it is given). Without a
    tokenizer: ``ValueError`` naming what was looked for, or ``(model, None)`` when
    ``require_tokenizer=False``.
    """
    from dpo_np.checkpoint import PARAMS, STATE, load_checkpoint

    path = os.fspath(path)
    dtype = _check_dtype(dtype)
    is_checkpoint = any(os.path.isfile(os.path.join(path, f)) for f in (STATE, PARAMS))
    if is_checkpoint or not os.path.isdir(path):      # (load_checkpoint also finds an interrupted save's backup)
        if not is_checkpoint and not os.path.lexists(path):
            raise FileNotFoundError(f"{path}: no such directory (expected a dpo_np checkpoint or a "
                                    f"Hugging Face GPT-2 directory)")
        ckpt = load_checkpoint(path)
        model, tokenizer, looked_for = ckpt["model"], ckpt["tokenizer"], "tokenizer.json"
        if dtype is not None:
            model.params = {k: p.astype(dtype, copy=False) for k, p in model.params.items()}
    elif os.path.isfile(os.path.join(path, CONFIG)):
        model = load_pretrained(path, dtype)
        tokenizer, looked_for = _hf_tokenizer(path), f"tokenizer.json, or {VOCAB} and {MERGES}"
    else:
        raise ValueError(f"{path}: neither a dpo_np checkpoint ({STATE}, {PARAMS}) nor a Hugging Face "
                         f"GPT-2 directory ({CONFIG}, {WEIGHTS})")
    if tokenizer is None:
        if require_tokenizer:
            raise ValueError(f"{path}: no tokenizer (looked for {looked_for}); the model cannot read text")
        return model, None
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ValueError(f"{path}: the tokenizer has {tokenizer.vocab_size} tokens, more than the model's "
                         f"vocab_size {model.config.vocab_size}")
    return model, tokenizer


def _hf_tokenizer(directory):
    own = os.path.join(directory, "tokenizer.json")
    if os.path.isfile(own):
        d = _read_json(own)           # transformers writes a tokenizer.json of its own format too
        if isinstance(d, dict) and d.get("format") in TOKENIZERS:
            return load_tokenizer(own)
    if (os.path.isfile(os.path.join(directory, VOCAB)) and os.path.isfile(os.path.join(directory, MERGES))
            or os.path.isfile(own)):
        tokenizer = BPETokenizer.from_pretrained(directory)      # GPT-2's files, or transformers' tokenizer.json
        config, jinja = os.path.join(directory, TOKENIZER_CONFIG), os.path.join(directory, CHAT_TEMPLATE_FILE)
        chat = _read_json(config).get("chat_template") if os.path.isfile(config) else None
        if chat is None and os.path.isfile(jinja):         # where transformers 5 saves it
            with open(jinja, encoding="utf-8") as f:
                chat, config = f.read(), jinja
        template = prompt_template_from_chat(chat)
        if chat is not None and template is None:
            warnings.warn(f"{config}: its chat template is not one this package writes (a prompt template "
                          f"around one user message), so prompts are written as {PROMPT_TEMPLATE!r}; if the model "
                          f"expects another format, set the tokenizer's prompt_template (--prompt-template)",
                          stacklevel=3)
        tokenizer.prompt_template = template or PROMPT_TEMPLATE
        return tokenizer
    return None

