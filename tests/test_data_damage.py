"""Data that loads fine but arrives damaged: truncation that makes two prompts or a chosen and a
rejected response the same tokens, a character the tokenizer cannot read, a line nested too deeply
for the JSON reader, a path that is not a regular file. Each is named by file and line."""

import json
import math
import os
import signal
import warnings

import numpy as np
import pytest

from dpo_np import data
from dpo_np.data import (DataWarning, TruncationWarning, find_damage, format_prompt, load_preferences, load_sft,
                         tokenize_preference)
from dpo_np.model import GPT, GPTConfig
from dpo_np.sft import SFTTrainer
from dpo_np.tokenizer import ByteTokenizer, CharTokenizer
from dpo_np.trainers import DPOTrainer
from dpo_np.training import TrainingConfig

TOK = CharTokenizer.from_corpus(format_prompt("") + "abcdefgh")
UNK_TOK = CharTokenizer.from_corpus(format_prompt("") + "abcdefgh", unk_token="<|unk|>")
MAX_LENGTH, MAX_PROMPT_LENGTH = 16, 8


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _dpo(tmp_path, train, tokenizer=TOK, **kw):
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=MAX_LENGTH, n_layer=1, n_head=2, n_embd=8),
                seed=0, dtype=np.float64)
    return DPOTrainer(model, args=dict(output_dir=str(tmp_path / "run"), max_length=MAX_LENGTH,
                                       max_prompt_length=MAX_PROMPT_LENGTH, show_progress=False, **kw),
                      train_dataset=train, tokenizer=tokenizer)


def _damage_warnings(record):
    """The damage warnings (the count of what the cut removed is a warning of its own)."""
    return [str(w.message) for w in record
            if issubclass(w.category, DataWarning) and not issubclass(w.category, TruncationWarning)]


# ---- truncation: prompt collisions and identical pairs ------------------------------------

# the prompt keeps its last 8 tokens, "hbcd\nA: ", so "aaaahbcd" and "bbbbhbcd" collide; the responses
# keep the 16 − 8 = 8 tokens left, so responses that agree on their first 8 characters become the same
COLLIDING = [{"prompt": "aaaahbcd", "chosen": "a", "rejected": "b"},
             {"prompt": "bbbbhbcd", "chosen": "c", "rejected": "d"},        # line 2: the same prompt tokens
             {"prompt": "bbbbhbcd", "chosen": "e", "rejected": "f"}]        # line 3: same text as line 2, too
IDENTICAL_AFTER_CUT = [{"prompt": "ab", "chosen": "abcdefghhhh", "rejected": "abcdefghggg"},   # cut at 8: same
                       {"prompt": "cd", "chosen": "abc", "rejected": "abd"},
                       {"prompt": "ef", "chosen": "gggggggga", "rejected": "ggggggggb"}]        # same too


def test_distinct_prompts_that_truncate_to_the_same_tokens_are_counted_and_warned_with_their_lines(tmp_path):
    path = _write_jsonl(tmp_path / "pairs.jsonl", COLLIDING)
    with pytest.warns(DataWarning) as caught:
        trainer = _dpo(tmp_path, str(path))
    (message,) = _damage_warnings(caught)
    # lines 2 and 3 hold a different question from line 1's, but the model reads line 1's tokens
    assert "2 of 3 records" in message and "max_prompt_length=8" in message
    assert f"{path}:2 (as {path}:1)" in message and f"{path}:3 (as {path}:1)" in message
    assert len(trainer.train_features) == 3               # warned, not dropped: the responses still differ
    prompts = {tuple(f["prompt_ids"]) for f in trainer.train_features}
    assert len(prompts) == 1                              # (what the warning claims is what happened)


def test_the_same_prompt_repeated_is_not_a_collision(tmp_path):
    records = [{"prompt": "ab", "chosen": "c", "rejected": "d"}, {"prompt": "ab", "chosen": "e", "rejected": "f"}]
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        warnings.simplefilter("ignore", TruncationWarning)      # the cut of "Q: " is counted, not damage
        assert len(_dpo(tmp_path, records).train_features) == 2


def test_pairs_identical_after_truncation_are_warned_kept_by_default_and_dropped_on_request(tmp_path):
    path = _write_jsonl(tmp_path / "pairs.jsonl", IDENTICAL_AFTER_CUT)
    with pytest.warns(DataWarning) as caught:
        kept = _dpo(tmp_path, str(path))
    (message,) = _damage_warnings(caught)
    assert "2 of 3 pairs" in message and f"{path}:1, {path}:3" in message
    assert "loss log 2" in message and "drop_identical_pairs=True" in message
    assert len(kept.train_features) == 3
    assert [f["chosen_ids"] == f["rejected_ids"] for f in kept.train_features] == [True, False, True]

    with pytest.warns(DataWarning, match="left out"):
        dropped = _dpo(tmp_path, str(path), drop_identical_pairs=True)
    assert dropped.train_features == [kept.train_features[1]]     # exactly the damaged pairs are gone


def test_an_identical_pair_has_margin_zero_whatever_the_policy_so_its_loss_is_log_2(tmp_path):
    """What the warning says, shown: after training moved π_θ away from π_ref, the damaged pair
    still has zero rewards margin and loss log 2, and it counts as wrong."""
    with pytest.warns(DataWarning):
        trainer = _dpo(tmp_path, IDENTICAL_AFTER_CUT, max_steps=3, per_device_train_batch_size=3,
                       learning_rate=1e-2, logging_steps=1)
    trainer.train()
    out = trainer.batch_outputs(np.array([0, 1, 2]))
    margins = out["chosen_rewards"] - out["rejected_rewards"]
    assert abs(margins[1]) > 1e-6                                    # the policy did move
    np.testing.assert_allclose(margins[[0, 2]], 0.0, atol=1e-12)
    np.testing.assert_allclose(out["losses"][[0, 2]], math.log(2), rtol=1e-12)


def test_pairs_that_differ_only_in_characters_an_unk_token_swallows_are_identical_pairs(tmp_path):
    records = [{"prompt": "ab", "chosen": "café", "rejected": "cafè"}, {"prompt": "ab", "chosen": "a", "rejected": "b"}]
    with pytest.warns(DataWarning, match=r"1 of 2 pairs .* at records\[0\]"):
        trainer = _dpo(tmp_path, records, tokenizer=UNK_TOK)
    assert trainer.train_features[0]["chosen_ids"] == trainer.train_features[0]["rejected_ids"]
    with warnings.catch_warnings():                                   # the byte tokenizer tells them apart
        warnings.simplefilter("error", DataWarning)
        model = GPT(GPTConfig(vocab_size=ByteTokenizer().vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=8))
        DPOTrainer(model, args=dict(output_dir=str(tmp_path / "b"), max_length=64, max_prompt_length=16),
                   train_dataset=records, tokenizer=ByteTokenizer())


def test_sft_prompt_collisions_are_warned_too(tmp_path):
    records = [{"prompt": "aaaahbcd", "response": "a"}, {"prompt": "bbbbhbcd", "response": "b"},
               {"text": "abc"}, {"text": "abd"}]               # texts have no prompt: never a collision
    model = GPT(GPTConfig(vocab_size=TOK.vocab_size, block_size=MAX_LENGTH, n_layer=1, n_head=2, n_embd=8))
    with pytest.warns(DataWarning) as caught:
        SFTTrainer(model, args=dict(output_dir=str(tmp_path / "s"), max_length=MAX_LENGTH,
                                    max_prompt_length=MAX_PROMPT_LENGTH), train_dataset=records, tokenizer=TOK)
    (message,) = _damage_warnings(caught)
    assert "1 of 4 records" in message and "records[1] (as records[0])" in message


def test_find_damage_reports_indices():
    features = [tokenize_preference(TOK, r, MAX_LENGTH, MAX_PROMPT_LENGTH) for r in COLLIDING + IDENTICAL_AFTER_CUT]
    damage = find_damage(COLLIDING + IDENTICAL_AFTER_CUT, features)
    assert damage == {"identical_pairs": [3, 5], "prompt_collisions": [(1, 0), (2, 0)]}


def test_drop_identical_pairs_must_be_a_flag():
    with pytest.raises(TypeError, match="drop_identical_pairs"):
        TrainingConfig(drop_identical_pairs="yes")


# ---- a character the tokenizer cannot read ------------------------------------------------

@pytest.mark.parametrize("field", ["prompt", "chosen", "rejected"])
def test_an_unknown_character_is_named_by_file_line_field_and_position_in_that_field(tmp_path, field):
    record = {"prompt": "abc", "chosen": "abd", "rejected": "abe"}
    record[field] = "ab\u00e9c"                                       # 'é' at position 2 of the field itself
    path = _write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "c"}, record])
    with pytest.raises(ValueError) as err:
        _dpo(tmp_path, str(path))
    message = str(err.value)
    assert message.startswith(f"{path}:2: '{field}' cannot be tokenized")
    assert "'é' (U+00E9) at position 2" in message                  # not 5, which counts the "Q: " template
    assert "dpo_np.tokenizer.ByteTokenizer" in message


@pytest.mark.parametrize("record,field", [({"prompt": "ab", "response": "aé"}, "response"),
                                          ({"text": "abcé"}, "text")])
def test_an_unknown_character_in_sft_data_names_its_field(tmp_path, record, field):
    path = _write_jsonl(tmp_path / "sft.jsonl", [record])
    model = GPT(GPTConfig(vocab_size=TOK.vocab_size, block_size=MAX_LENGTH, n_layer=1, n_head=2, n_embd=8))
    with pytest.raises(ValueError, match=rf"^{path}:1: '{field}' cannot be tokenized.*'é' \(U\+00E9\) at position "
                                         rf"{record[field].index('é')}"):
        SFTTrainer(model, args=dict(output_dir=str(tmp_path / "s"), max_length=MAX_LENGTH,
                                    max_prompt_length=MAX_PROMPT_LENGTH), train_dataset=str(path), tokenizer=TOK)


def test_a_tokenizer_that_cannot_read_the_prompt_template_is_told_so():
    bare = CharTokenizer.from_corpus("abc")                            # no "Q", ":", " ", "\n", "A"
    with pytest.raises(ValueError, match=r"^records\[0\]: the prompt template .* cannot be tokenized.*'Q'"):
        tokenize_preference(bare, {"prompt": "ab", "chosen": "a", "rejected": "b"}, 16, 8, where="records[0]")


# ---- lines and paths the reader must not choke on -----------------------------------------

def test_a_line_nested_too_deeply_is_invalid_json_named_by_its_line(tmp_path):
    path = tmp_path / "deep.jsonl"
    good = json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"})
    path.write_text(good + "\n" + "[" * 100_000 + "]" * 100_000 + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"^{path}:2: .*nested too deeply"):
        load_preferences(str(path))
    records, report = load_preferences(str(path), skip_invalid=True)
    assert len(records) == 1 and report["skipped"] == {"invalid_json": 1}
    assert report["problems"][0]["where"] == f"{path}:2"


@pytest.fixture
def fail_if_blocked():
    """Turn a read that would block forever into a test failure after a few seconds."""
    if not hasattr(signal, "SIGALRM"):
        yield
        return

    def blocked(signum, frame):
        raise TimeoutError("the loader blocked reading the path")
    previous = signal.signal(signal.SIGALRM, blocked)
    signal.alarm(5)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")
@pytest.mark.parametrize("load", [load_preferences, load_sft])
def test_a_fifo_is_refused_before_it_is_opened_naming_the_path(tmp_path, fail_if_blocked, load):
    fifo = tmp_path / "pairs.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match=rf"^{fifo} is a FIFO \(named pipe\), not a regular file"):
        load(str(fifo))


def test_a_directory_or_a_device_is_refused_naming_the_path(tmp_path, fail_if_blocked):
    with pytest.raises(ValueError, match=rf"^{tmp_path} is a directory, not a regular file"):
        load_preferences(tmp_path)
    if os.path.exists("/dev/zero"):                                   # would never end
        with pytest.raises(ValueError, match="^/dev/zero is a character device"):
            load_preferences("/dev/zero")
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        load_preferences(tmp_path / "missing.jsonl")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")
def test_a_trainer_given_a_fifo_refuses_it_too(tmp_path, fail_if_blocked):
    fifo = tmp_path / "pairs.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match=f"^{fifo} is a FIFO"):
        _dpo(tmp_path, str(fifo))


def test_load_located_names_where_each_kept_record_was_read(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n\n{"prompt": "b", "chosen": "c", '
                    '"rejected": "a"}\n', encoding="utf-8")
    records, wheres, name = data.load_located(str(path), "preference")
    assert len(records) == 2 and wheres == [f"{path}:1", f"{path}:3"] and name == str(path)
    assert data.load_located([{"text": "ab"}], "sft")[1:] == (["records[0]"], "records (a list of 1)")
