"""GPT-2 directories in and out: a directory transformers wrote gives transformers' logits here,
one written here gives the same logits in transformers, the tokenizer files give the same ids,
and every GPT-2 config this model cannot compute is refused by key and value.

The transformers, torch and TRL tests skip cleanly where those packages are not installed."""

import json

import numpy as np
import pytest

from dpo_np import cli
from dpo_np.checkpoint import save_checkpoint
from dpo_np.data import format_prompt
from dpo_np.model import GPT, GPTConfig
from dpo_np.pretrained import config_from_hf, config_to_hf, load_model, load_pretrained, save_pretrained
from dpo_np.safetensors import read_header, write_safetensors
from dpo_np.tokenizer import EOS_TOKEN, BPETokenizer, ByteTokenizer, CharTokenizer

from helpers import learn_bpe

CONFIG = GPTConfig(vocab_size=258, block_size=16, n_layer=2, n_head=4, n_embd=32)


def random_gpt(config=CONFIG, seed=0, dtype=np.float32):
    """A GPT whose every parameter is random at scale 0.2, LayerNorms and biases included, so that no
    path through the network hides behind a 1 or a 0 of the usual initialisation."""
    model = GPT(config, dtype=dtype)
    rng = np.random.default_rng(seed)
    for k, p in model.params.items():
        model.params[k] = rng.normal(0.0, 0.2, size=p.shape).astype(dtype)
    return model


def ids_for(config, B=2, seed=1):
    return np.random.default_rng(seed).integers(0, config.vocab_size, size=(B, config.block_size))


# ---- without transformers ------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_save_then_load_gives_every_parameter_back_bit_for_bit(dtype, tmp_path):
    model = random_gpt(dtype=dtype)
    save_pretrained(model, tmp_path / "gpt2")
    back = GPT.from_pretrained(tmp_path / "gpt2")
    assert back.config == model.config and back.dtype == dtype
    assert all(np.array_equal(back.params[k], model.params[k]) for k in model.params)
    tensors, metadata, _ = read_header(tmp_path / "gpt2" / "model.safetensors")
    assert metadata == {"format": "pt"} and "lm_head.weight" not in tensors
    assert set(tensors) == {"transformer." + k for k in model.params}
    other = "float64" if dtype == np.float32 else "float32"
    assert GPT.from_pretrained(tmp_path / "gpt2", dtype=other).dtype == np.dtype(other)
    idx = ids_for(CONFIG)
    assert np.array_equal(back.forward(idx), model.forward(idx))


def test_half_precision_weights_load_as_float32(tmp_path):
    model = random_gpt()
    save_pretrained(model, tmp_path)
    write_safetensors(tmp_path / "model.safetensors",
                      {"transformer." + k: p.astype(np.float16) for k, p in model.params.items()})
    back = load_pretrained(tmp_path)
    assert back.dtype == np.float32
    assert np.array_equal(back.params["wte.weight"], model.params["wte.weight"].astype(np.float16).astype(np.float32))


def _unprefixed_with_masks(params, config):
    """The original ``gpt2`` upload's layout: no "transformer." prefix, each block's causal mask stored."""
    tensors = dict(params)
    for i in range(config.n_layer):
        tensors[f"h.{i}.attn.bias"] = np.tril(np.ones((config.block_size, config.block_size),
                                                      dtype=np.float32))[None, None]
        tensors[f"h.{i}.attn.masked_bias"] = np.array(-1e4, dtype=np.float32)
    return tensors


def test_unprefixed_names_and_stored_causal_masks_load(tmp_path):
    model = random_gpt()
    save_pretrained(model, tmp_path)
    write_safetensors(tmp_path / "model.safetensors", _unprefixed_with_masks(model.params, CONFIG))
    back = load_pretrained(tmp_path)
    assert all(np.array_equal(back.params[k], model.params[k]) for k in model.params)


def test_a_tied_lm_head_loads_and_an_untied_one_is_refused(tmp_path):
    model = random_gpt()
    save_pretrained(model, tmp_path)
    tensors = {"transformer." + k: p for k, p in model.params.items()}
    write_safetensors(tmp_path / "model.safetensors", {**tensors, "lm_head.weight": model.params["wte.weight"]})
    assert np.array_equal(load_pretrained(tmp_path).params["wte.weight"], model.params["wte.weight"])
    write_safetensors(tmp_path / "model.safetensors", {**tensors, "lm_head.weight": model.params["wte.weight"] + 1})
    with pytest.raises(ValueError, match=r"model\.safetensors: 'lm_head.weight' differs from 'transformer.wte.weight'"):
        load_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": False}))
    write_safetensors(tmp_path / "model.safetensors", tensors)
    with pytest.raises(ValueError, match=r"config\.json: tie_word_embeddings = false, and .* holds no 'lm_head.weight'"):
        load_pretrained(tmp_path)


def test_tensors_that_do_not_fit_the_config_are_named_before_any_is_read(tmp_path):
    model = random_gpt()
    save_pretrained(model, tmp_path)
    tensors = {"transformer." + k: p for k, p in model.params.items()}
    cases = [
        ({**tensors, "transformer.wpe.weight": np.zeros((8, 32), np.float32)},
         r"tensor 'transformer.wpe.weight' has shape \[8, 32\], but config.json .* implies \[16, 32\]"),
        ({k: v for k, v in tensors.items() if k != "transformer.h.1.ln_2.bias"}, r"missing \['h.1.ln_2.bias'\]"),
        ({**tensors, "score.weight": np.zeros((2, 32), np.float32)}, r"unexpected \['score.weight'\]"),
        ({**tensors, "transformer.ln_f.bias": np.zeros(32, np.int32)}, r"'transformer.ln_f.bias' has dtype I32"),
        ({**tensors, "wte.weight": tensors["transformer.wte.weight"]}, r"'wte.weight' is stored twice"),
    ]
    for weights, message in cases:
        write_safetensors(tmp_path / "model.safetensors", weights)
        with pytest.raises(ValueError, match=r"model\.safetensors: .*" + message):
            load_pretrained(tmp_path)
    bad = dict(tensors, **{"transformer.h.0.ln_1.weight": np.full(32, np.nan, np.float32)})
    write_safetensors(tmp_path / "model.safetensors", bad)
    with pytest.raises(ValueError, match=r"'transformer.h.0.ln_1.weight' contains NaN"):
        load_pretrained(tmp_path)


REFUSED = [
    ("model_type", "gpt_neo", r'model_type = "gpt_neo": only GPT-2'),
    ("activation_function", "gelu", r'activation_function = "gelu": .*tanh approximation'),
    ("activation_function", "relu", r'activation_function = "relu"'),
    ("layer_norm_epsilon", 1e-6, r"layer_norm_epsilon = 1e-06: .*ε = 1e-5"),
    ("scale_attn_weights", False, r"scale_attn_weights = false"),
    ("scale_attn_by_inverse_layer_idx", True, r"scale_attn_by_inverse_layer_idx = true"),
    ("add_cross_attention", True, r"add_cross_attention = true"),
    ("n_inner", 64, r"n_inner = 64: .*4·n_embd = 128"),
]


@pytest.mark.parametrize("key, value, message", REFUSED, ids=[f"{k}={v}" for k, v, _ in REFUSED])
def test_a_config_this_gpt_cannot_compute_is_refused_by_key_and_value(key, value, message, tmp_path):
    save_pretrained(random_gpt(), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, key: value}))
    with pytest.raises(ValueError, match=r"config\.json: " + message):
        load_pretrained(tmp_path)


def test_configs_that_compute_the_same_function_are_accepted():
    base = config_to_hf(CONFIG)
    for change in ({"activation_function": "gelu_pytorch_tanh"}, {"activation_function": "gelu_fast"},
                   {"reorder_and_upcast_attn": True}, {"n_inner": 4 * CONFIG.n_embd}, {"resid_pdrop": 0.1}):
        assert config_from_hf({**base, **change}) == CONFIG
    with pytest.raises(ValueError, match=r"missing 'n_embd'"):
        config_from_hf({k: v for k, v in base.items() if k != "n_embd"})


def test_export_refuses_to_mix_with_other_files_and_to_export_a_character_tokenizer(tmp_path):
    model = random_gpt()
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"holds files this export does not write \(notes.txt\)"):
        save_pretrained(model, tmp_path)
    with pytest.raises(ValueError, match=r"a CharTokenizer has no byte-level BPE form.*ByteTokenizer"):
        save_pretrained(model, tmp_path / "new", tokenizer=CharTokenizer.from_corpus("abc"))
    assert not (tmp_path / "new").exists()                  # refused before anything was written
    save_pretrained(model, tmp_path / "new", tokenizer=ByteTokenizer())
    save_pretrained(model, tmp_path / "new")                # again, now without a tokenizer: its files go
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["config.json", "model.safetensors"]


@pytest.mark.parametrize("make", [lambda: ByteTokenizer(),
                                  lambda: BPETokenizer(*learn_bpe(["the cat sat on the mat"], 20))],
                         ids=["byte", "bpe"])
def test_load_model_reads_a_gpt2_directory_with_its_tokenizer(make, tmp_path):
    tokenizer = make()
    model = random_gpt(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=8))
    save_pretrained(model, tmp_path, tokenizer=tokenizer)
    back, tok = load_model(tmp_path)
    assert isinstance(tok, BPETokenizer) and all(np.array_equal(back.params[k], model.params[k]) for k in model.params)
    text = "the cat sat on the mat, Héllo 🐈\n"
    assert tok.encode(text) == tokenizer.encode(text)
    assert (tok.eos_token_id, tok.pad_token_id) == (tokenizer.eos_token_id, tokenizer.pad_token_id)


def test_load_model_reads_a_dpo_np_checkpoint_and_its_byte_tokenizer(tmp_path):
    model = random_gpt()
    save_checkpoint(tmp_path / "ckpt", model, tokenizer=ByteTokenizer())
    back, tok = load_model(tmp_path / "ckpt")
    assert tok == ByteTokenizer() and np.array_equal(back.params["wte.weight"], model.params["wte.weight"])
    assert load_model(tmp_path / "ckpt", dtype="float64")[0].dtype == np.float64


def test_load_model_names_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere: no such directory"):
        load_model(tmp_path / "nowhere")
    with pytest.raises(ValueError, match=r"neither a dpo_np checkpoint .* nor a Hugging Face GPT-2 directory"):
        load_model(tmp_path)
    save_pretrained(random_gpt(), tmp_path / "bare")
    with pytest.raises(ValueError, match=r"bare: no tokenizer \(looked for tokenizer.json, or vocab.json"):
        load_model(tmp_path / "bare")
    assert load_model(tmp_path / "bare", require_tokenizer=False)[1] is None
    (tmp_path / "bare" / "model.safetensors").unlink()
    (tmp_path / "bare" / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors: file is missing \(pytorch_model.bin is a torch.save archive"):
        load_model(tmp_path / "bare")
    with pytest.raises(ValueError, match=r"dtype must be float32, float64 or None"):
        load_pretrained(tmp_path, dtype=np.float16)


def test_export_command_writes_a_gpt2_directory_from_a_checkpoint(tmp_path, capsys):
    model = random_gpt()
    save_checkpoint(tmp_path / "ckpt", model, tokenizer=ByteTokenizer())
    assert cli.main(["export", str(tmp_path / "ckpt"), str(tmp_path / "hf")]) == 0
    assert "with tokenizer" in capsys.readouterr().out
    back, tok = load_model(tmp_path / "hf")
    assert np.array_equal(back.forward(ids_for(CONFIG)), model.forward(ids_for(CONFIG)))
    save_checkpoint(tmp_path / "chars", model, tokenizer=CharTokenizer.from_corpus("abc"))
    assert cli.main(["export", str(tmp_path / "chars"), str(tmp_path / "hf2")]) == 2
    assert "CharTokenizer has no byte-level BPE form" in capsys.readouterr().err
    assert cli.main(["export", str(tmp_path / "chars"), str(tmp_path / "hf2"), "--without-tokenizer"]) == 0


# ---- against transformers (skipped where torch or transformers is not installed) ------------

HF_CONFIGS = [dict(vocab_size=61, n_positions=12, n_embd=16, n_layer=1, n_head=2),
              dict(vocab_size=97, n_positions=20, n_embd=24, n_layer=3, n_head=3),
              dict(vocab_size=258, n_positions=16, n_embd=32, n_layer=2, n_head=4,
                   activation_function="gelu_pytorch_tanh")]
TOLERANCE = {np.float32: 5e-6, np.float64: 1e-12}     # max |Δlogits| / max(1, max |logits|)


@pytest.fixture(scope="module")
def hf():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    return torch, transformers


def _hf_model(hf, config_kwargs, seed, dtype):
    torch, transformers = hf
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**config_kwargs, bos_token_id=0, eos_token_id=0))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model.to(torch.float64 if dtype == np.float64 else torch.float32).eval()


def _hf_logits(hf, model, idx, mask=None):
    torch, _ = hf
    with torch.no_grad():
        kwargs = {} if mask is None else {"attention_mask": torch.tensor(mask)}
        return model(torch.tensor(idx), **kwargs).logits.numpy()


def _rel_diff(a, b):
    return float(np.abs(a - b).max() / max(1.0, np.abs(b).max()))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k", range(len(HF_CONFIGS)))
def test_a_directory_transformers_wrote_gives_transformers_logits(hf, k, dtype, tmp_path):
    theirs = _hf_model(hf, HF_CONFIGS[k], seed=k, dtype=dtype)
    theirs.save_pretrained(tmp_path)
    ours = GPT.from_pretrained(tmp_path)
    assert ours.dtype == dtype
    idx = ids_for(ours.config, B=3, seed=k)
    assert _rel_diff(ours.forward(idx), _hf_logits(hf, theirs, idx)) < TOLERANCE[dtype]
    mask = np.ones_like(idx)
    mask[1, 5:] = 0                                        # right padding: real tokens see the same
    real = mask.astype(bool)
    assert _rel_diff(ours.forward(idx, mask)[real], _hf_logits(hf, theirs, idx, mask)[real]) < TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k", range(len(HF_CONFIGS)))
def test_a_directory_written_here_gives_the_same_logits_in_transformers(hf, k, dtype, tmp_path):
    torch, transformers = hf
    c = HF_CONFIGS[k]
    ours = random_gpt(GPTConfig(vocab_size=c["vocab_size"], block_size=c["n_positions"], n_layer=c["n_layer"],
                                n_head=c["n_head"], n_embd=c["n_embd"]), seed=k, dtype=dtype)
    ours.save_pretrained(tmp_path)
    theirs = transformers.GPT2LMHeadModel.from_pretrained(
        tmp_path, dtype=torch.float64 if dtype == np.float64 else torch.float32).eval()
    assert torch.equal(theirs.lm_head.weight, theirs.transformer.wte.weight)       # tied on loading
    idx = ids_for(ours.config, B=3, seed=k)
    assert _rel_diff(ours.forward(idx), _hf_logits(hf, theirs, idx)) < TOLERANCE[dtype]


def test_the_original_gpt2_layout_gives_transformers_logits(hf, tmp_path):
    numpy_api = pytest.importorskip("safetensors.numpy")
    theirs = _hf_model(hf, HF_CONFIGS[1], seed=3, dtype=np.float32)
    theirs.save_pretrained(tmp_path)
    params = {k.removeprefix("transformer."): v.numpy() for k, v in theirs.state_dict().items()
              if k != "lm_head.weight"}
    ours_config = config_from_hf(json.loads((tmp_path / "config.json").read_text()))
    numpy_api.save_file(_unprefixed_with_masks(params, ours_config), str(tmp_path / "model.safetensors"))
    ours = GPT.from_pretrained(tmp_path)
    idx = ids_for(ours.config)
    assert _rel_diff(ours.forward(idx), _hf_logits(hf, theirs, idx)) < TOLERANCE[np.float32]


TEXTS = ["Hello world", "the cat sat on the mat.\n", "  leading and trailing  ", "it's 12,345!",
         "Héllo wörld — naïve café", "猫が好き 🐈‍⬛ 👍🏽", "tabs\tand\r\nnewlines\n\n", ""]


@pytest.mark.parametrize("make", [lambda: ByteTokenizer(),
                                  lambda: BPETokenizer(*learn_bpe(TEXTS * 2, 80))], ids=["byte", "bpe"])
def test_an_exported_tokenizer_gives_the_same_ids_in_transformers(hf, make, tmp_path):
    _, transformers = hf
    tokenizer = make()
    model = random_gpt(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=8))
    save_pretrained(model, tmp_path, tokenizer=tokenizer)
    for cls in (transformers.GPT2Tokenizer, transformers.AutoTokenizer):
        theirs = cls.from_pretrained(tmp_path)
        assert (theirs.eos_token_id, theirs.pad_token_id) == (tokenizer.eos_token_id, tokenizer.pad_token_id)
        for text in TEXTS:
            ids = tokenizer.encode(text)
            assert theirs(text)["input_ids"] == ids, text
            assert theirs.decode(ids) == text
        text = "a response" + EOS_TOKEN
        assert theirs(text)["input_ids"] == tokenizer.encode(text, allowed_special=True)
    # and back: what transformers saves (transformers 5: tokenizer.json alone) reads here with the same ids
    theirs.save_pretrained(tmp_path / "resaved")
    for name in ("vocab.json", "merges.txt"):
        (tmp_path / "resaved" / name).unlink(missing_ok=True)
    back = BPETokenizer.from_pretrained(tmp_path / "resaved")
    assert all(back.encode(text) == tokenizer.encode(text) for text in TEXTS)
    assert (back.eos_token_id, back.pad_token_id) == (tokenizer.eos_token_id, tokenizer.pad_token_id)


def test_one_trl_dpo_step_on_an_exported_model(hf, tmp_path):
    """TRL's DPOTrainer runs on what ``export`` writes: it tokenizes our data to our ids, its first loss
    is log 2 (the reference is the initial policy), and the step moves the weights."""
    pytest.importorskip("trl")
    pytest.importorskip("datasets")
    torch, transformers = hf
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    tokenizer = ByteTokenizer()
    save_pretrained(random_gpt(GPTConfig(vocab_size=258, block_size=64, n_layer=1, n_head=2, n_embd=16)),
                    tmp_path / "model", tokenizer=tokenizer)
    records = [{"prompt": format_prompt(p), "chosen": c, "rejected": r} for p, c, r in
               [("What is 2+2?", "4", "5"), ("Name a cat.", "Tom", "a dog"), ("Say hi.", "hi", "bye")] * 2]
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    before = model.transformer.wte.weight.detach().clone()
    args = DPOConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=2, max_steps=1, beta=0.1,
                     learning_rate=1e-2, max_length=64, logging_steps=1, report_to=[], save_strategy="no",
                     use_cpu=True, bf16=False, dataset_num_proc=None)
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(records),
                         processing_class=transformers.AutoTokenizer.from_pretrained(tmp_path / "model"))
    row = trainer.train_dataset[0]
    assert row["prompt_ids"] == tokenizer.encode(records[0]["prompt"])
    assert row["chosen_ids"] == tokenizer.encode(records[0]["chosen"], add_eos=True)
    trainer.train()
    first = next(h for h in trainer.state.log_history if "loss" in h)
    assert first["loss"] == pytest.approx(np.log(2), abs=1e-4)
    assert not torch.equal(model.transformer.wte.weight.detach(), before)
    # and back to NumPy: what TRL saves loads here with its tokenizer and gives its logits
    trainer.save_model(str(tmp_path / "trl-final"))
    ours, tok = load_model(tmp_path / "trl-final")
    assert tok.encode("Tom 🐈") == tokenizer.encode("Tom 🐈") and tok.pad_token_id == tokenizer.pad_token_id
    idx = np.array([tokenizer.encode(records[1]["prompt"] + records[1]["chosen"])])
    assert _rel_diff(ours.forward(idx), _hf_logits(hf, model.eval(), idx)) < TOLERANCE[np.float32]


# ---- the prompt template as transformers' chat template ------------------------------------------

TEMPLATES = ["Q: {prompt}\nA: ", "User: «{prompt}» {{json}} \"quoted\" \\ back}}\n<|assistant|> ", "{prompt}",
             "Frage 👋: {prompt}\n"]


@pytest.mark.parametrize("template", TEMPLATES)
def test_the_chat_template_written_on_export_reads_back_as_the_prompt_template(template, tmp_path):
    from dpo_np.pretrained import chat_template, prompt_template_from_chat
    assert prompt_template_from_chat(chat_template(template)) == template
    assert prompt_template_from_chat("{{ messages[0]['content'] }}") is None
    tokenizer = ByteTokenizer()
    tokenizer.prompt_template = template
    save_pretrained(random_gpt(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=16, n_layer=1, n_head=2,
                                         n_embd=8)), tmp_path, tokenizer=tokenizer)
    assert load_model(tmp_path)[1].prompt_template == template


@pytest.mark.parametrize("template", TEMPLATES)
def test_transformers_writes_a_user_message_as_the_model_was_trained_to_read_it(hf, template, tmp_path):
    """apply_chat_template on an exported tokenizer gives the prompt template's text, with or without a
    generation prompt; an assistant turn follows as the response and the end token; a system
    message is refused; and what transformers saves again reads back with the same template."""
    _, transformers = hf
    tokenizer = ByteTokenizer()
    tokenizer.prompt_template = template
    model = random_gpt(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=8))
    save_pretrained(model, tmp_path / "x", tokenizer=tokenizer)
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path / "x")
    x, y = "Wo liegt Wien? {not a field} \\n", "In Österreich."
    for generation_prompt in (True, False):
        assert theirs.apply_chat_template([{"role": "user", "content": x}], tokenize=False,
                                          add_generation_prompt=generation_prompt) == template.format(prompt=x)
    pair = [{"role": "user", "content": x}, {"role": "assistant", "content": y}]
    assert theirs.apply_chat_template(pair, tokenize=False) == template.format(prompt=x) + y + EOS_TOKEN
    with pytest.raises(Exception, match="no place for a message of another role"):
        theirs.apply_chat_template([{"role": "system", "content": "s"}, {"role": "user", "content": x}], tokenize=False)
    theirs.save_pretrained(tmp_path / "y")                     # transformers 5: chat_template.jinja
    transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "x").save_pretrained(tmp_path / "y")
    assert load_model(tmp_path / "y")[1].prompt_template == template
