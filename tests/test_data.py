"""Preference data: every invalid record is named by file and line, nothing is
dropped unseen, the prompt/response boundary is exact, truncation keeps what it
says it keeps, and the collated labels score exactly the response's tokens."""

import json
import string

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dpo_np import backend
from dpo_np.data import (REASONS, DataWarning, batch_indices, batches, collate_preferences, collate_sft,
                         format_prompt, load_preferences, load_sft, split, tokenize_preference, tokenize_sft)
from dpo_np.logprobs import get_batch_logps
from dpo_np.tokenizer import CharTokenizer

TEXT_ALPHABET = "abcdefghij XYZ?.,'\n"
TOK = CharTokenizer.from_corpus([string.ascii_letters, string.punctuation, " \n"])
GOOD = {"prompt": "Where is Paris?", "chosen": "Paris is in France", "rejected": "Paris does not exist"}


def write_jsonl(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def line(**record):
    return json.dumps(record)


# ---- validation: each problem named by file and line --------------------------------------

BAD_LINES = {
    "invalid_json": ('{"prompt": "a", "chosen": "b", "rejected": ', "not valid JSON"),
    "not_an_object": ('["a", "b", "c"]', "expected a JSON object"),
    "missing_key": (line(prompt="a", chosen="b"), "missing key 'rejected'"),
    "not_a_string": (line(prompt="a", chosen=4, rejected="b"), "'chosen' must be a string, got int"),
    "empty": (line(prompt="a", chosen="b", rejected=""), "'rejected' is empty"),
    "whitespace_only": (line(prompt=" \t", chosen="b", rejected="c"), "'prompt' is empty (only whitespace)"),
    "duplicate": (line(**GOOD), "duplicate of the record at {path}:1"),
    "chosen_equals_rejected": (line(prompt="a", chosen="same", rejected="same"), "the same text"),
}


@pytest.mark.parametrize("kind", sorted(BAD_LINES))
def test_every_invalid_preference_line_raises_naming_file_and_line(tmp_path, kind):
    bad, says = BAD_LINES[kind]
    # line 1 valid, line 2 blank (still counted in line numbers), line 3 invalid
    path = write_jsonl(tmp_path / "prefs.jsonl", [line(**GOOD), "", bad])
    with pytest.raises(ValueError) as err:
        load_preferences(path)
    message = str(err.value)
    assert message.startswith(f"{path}:3: ")
    assert says.format(path=path) in message


@pytest.mark.parametrize("kind", ["missing_key", "not_a_string", "empty", "duplicate"])
def test_invalid_records_in_a_list_are_named_by_their_index(kind):
    records = {"missing_key": [GOOD, GOOD | {"prompt": "p2", "x": 1}, {"prompt": "a", "chosen": "b"}],
               "not_a_string": [GOOD, {"prompt": "a", "chosen": "b", "rejected": None}],
               "empty": [GOOD, GOOD | {"prompt": "p2"}, GOOD | {"chosen": ""}],
               "duplicate": [GOOD, GOOD | {"prompt": "p2"}, dict(GOOD)]}[kind]
    with pytest.raises(ValueError, match=rf"^records\[{len(records) - 1}\]: "):
        load_preferences(records)


def test_sft_records_are_validated_by_the_same_rules(tmp_path):
    ok = line(prompt="a", response="b")
    for bad, says in [(line(prompt="a"), "missing key 'response'"),
                      (line(prompt="a", response="  "), "'response' is empty"),
                      ("not json", "not valid JSON")]:
        path = write_jsonl(tmp_path / "sft.jsonl", [ok, bad])
        with pytest.raises(ValueError, match=f"^{path}:2: .*{says}"):
            load_sft(path)
    # prompt/response records are not preference records, and the other way round
    with pytest.raises(ValueError, match="missing key 'chosen'"):
        load_preferences([{"prompt": "a", "response": "b"}])
    assert load_sft([{"prompt": "a", "response": "b"}]) == [{"prompt": "a", "response": "b"}]


def test_a_repeated_sft_line_is_kept_counted_and_warned_as_up_weighting(tmp_path):
    ok, other = line(prompt="a", response="b"), line(text="plain")
    path = write_jsonl(tmp_path / "sft.jsonl", [ok, other, ok, other, ok])
    with pytest.warns(DataWarning, match=rf"3 records repeat an earlier one.*up-weighting.*{path}:3 repeats {path}:1"):
        records, report = load_sft(path, skip_invalid=True)
    assert len(records) == 5 and records[2] == records[0] and report["duplicates"] == 3 and report["skipped"] == {}
    assert records.wheres[2] == f"{path}:3"                          # where each was read travels with the list
    # what cannot be meant is still refused: a preference pair given twice, a line naming a key twice
    pairs = write_jsonl(tmp_path / "p.jsonl", [line(**GOOD), line(**GOOD)])
    with pytest.raises(ValueError, match=f"^{pairs}:2: duplicate of the record at {pairs}:1"):
        load_preferences(pairs)
    twice = tmp_path / "twice.jsonl"
    twice.write_text('{"prompt": "a", "response": "b", "response": "c"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=rf"^{twice}:1: ambiguous JSON: the key 'response' appears twice"):
        load_sft(twice)


def test_a_json_error_names_its_column_once(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a\tb", "response": "c"}\n', encoding="utf-8")          # a raw tab in a string
    with pytest.raises(ValueError, match=r"not valid JSON \(Invalid control character at column 14\)") as err:
        load_sft(path)
    assert "at at" not in str(err.value)


def test_skip_invalid_returns_valid_records_and_a_report_of_every_skipped_line(tmp_path):
    lines = [line(**GOOD),                                                        # 1 kept
             "",                                                                  # 2 blank
             line(prompt="b", chosen="x", rejected="x"),                          # 3 chosen == rejected
             line(**GOOD),                                                        # 4 duplicate of 1
             "{oops",                                                             # 5 invalid JSON
             line(prompt="c", chosen="y", rejected="z", source="extra kept"),     # 6 kept
             "   ",                                                               # 7 blank
             line(prompt="d", chosen="", rejected="z"),                           # 8 empty
             line(prompt="e", chosen="y", rejected="z")]                          # 9 kept
    path = write_jsonl(tmp_path / "mixed.jsonl", lines)
    records, report = load_preferences(path, skip_invalid=True)
    assert [r["prompt"] for r in records] == ["Where is Paris?", "c", "e"]
    assert records[1]["source"] == "extra kept"                    # keys beyond the required ones survive
    assert report["read"] == 7 and report["kept"] == 3 and report["blank_lines"] == 2
    assert report["skipped"] == {"chosen_equals_rejected": 1, "duplicate": 1, "invalid_json": 1, "empty": 1}
    assert set(report["skipped"]) <= set(REASONS)
    assert [(p["line"], p["reason"]) for p in report["problems"]] == [
        (3, "chosen_equals_rejected"), (4, "duplicate"), (5, "invalid_json"), (8, "empty")]
    assert all(p["message"].startswith(f"{path}:{p['line']}: ") for p in report["problems"])
    assert report["kept"] + sum(report["skipped"].values()) == report["read"]   # nothing vanishes
    # without skip_invalid the same file stops at its first problem
    with pytest.raises(ValueError, match=f"^{path}:3: "):
        load_preferences(path)


def test_blank_lines_hold_no_record_and_an_empty_source_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "gaps.jsonl", ["", line(**GOOD), "  ", "", line(**GOOD | {"prompt": "q"}), ""])
    assert [r["prompt"] for r in load_preferences(path)] == ["Where is Paris?", "q"]
    empty = write_jsonl(tmp_path / "empty.jsonl", ["", ""])
    with pytest.raises(ValueError, match="holds no records"):
        load_preferences(empty)
    records, report = load_preferences(empty, skip_invalid=True)
    assert records == [] and report["read"] == 0 and report["blank_lines"] == 2
    with pytest.raises(TypeError, match="source"):
        load_preferences({"prompt": "a"})


def test_a_utf8_byte_order_mark_and_non_ascii_text_load_unchanged(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"prompt": "Où?", "chosen": "Là", "rejected": "Nulle part"},
                                                   ensure_ascii=False).encode("utf-8") + b"\n\xff\n")
    records, report = load_preferences(path, skip_invalid=True)
    assert records == [{"prompt": "Où?", "chosen": "Là", "rejected": "Nulle part"}]
    assert report["problems"][0]["line"] == 2 and report["problems"][0]["reason"] == "invalid_json"


# ---- tokenization: an exact boundary, a documented truncation ----------------------------


def test_prompt_and_response_are_encoded_separately_and_concatenated():
    calls = []

    class Spy:
        eos_token_id = TOK.eos_token_id

        def encode(self, text):
            calls.append(text)
            return TOK.encode(text)

    record = {"prompt": "Where is a?", "chosen": "a is here", "rejected": "no"}
    f = tokenize_preference(Spy(), record, max_length=100, max_prompt_length=50)
    # never the joined string: three separate encodings of the three parts
    assert sorted(calls) == sorted([format_prompt(record["prompt"]), record["chosen"], record["rejected"]])
    assert f["prompt_ids"] == TOK.encode(format_prompt(record["prompt"]))
    assert f["chosen_ids"] == TOK.encode(record["chosen"]) + [TOK.eos_token_id]
    assert f["rejected_ids"] == TOK.encode(record["rejected"]) + [TOK.eos_token_id]
    assert TOK.decode(f["prompt_ids"]) == format_prompt(record["prompt"])
    assert TOK.decode(f["chosen_ids"]) == record["chosen"]                  # eos is a special: skipped
    assert TOK.decode(f["chosen_ids"], skip_special_tokens=False).endswith(TOK.eos_token)


def test_format_prompt_is_the_one_chat_template():
    assert format_prompt("What is 2+2?") == "Q: What is 2+2?\nA: "
    with pytest.raises(TypeError, match="prompt"):
        format_prompt(None)


texts = st.text(alphabet=st.sampled_from(TEXT_ALPHABET), min_size=1, max_size=40).filter(str.strip)


@settings(max_examples=80, deadline=None)
@given(prompt=texts, chosen=texts, rejected=texts, max_prompt_length=st.integers(1, 40),
       extra=st.integers(1, 40))
def test_truncation_keeps_the_prompts_end_and_the_responses_start(prompt, chosen, rejected,
                                                                   max_prompt_length, extra):
    if chosen == rejected:
        rejected = rejected + "."
    max_length = max_prompt_length + extra
    f = tokenize_preference(TOK, {"prompt": prompt, "chosen": chosen, "rejected": rejected},
                            max_length, max_prompt_length)
    full_prompt = TOK.encode(format_prompt(prompt))
    assert f["prompt_ids"] == full_prompt[-max_prompt_length:]            # the end of the prompt
    assert format_prompt(prompt).endswith(TOK.decode(f["prompt_ids"]))
    budget = max_length - len(f["prompt_ids"])
    for key, text in (("chosen_ids", chosen), ("rejected_ids", rejected)):
        full = TOK.encode(text) + [TOK.eos_token_id]
        assert f[key] == full[:budget]                                    # the start of the response
        assert 1 <= len(f[key]) and len(f["prompt_ids"]) + len(f[key]) <= max_length
        assert (f[key][-1] == TOK.eos_token_id) == (len(full) <= budget)  # eos survives only if it fits


def test_a_long_prompt_is_cut_from_the_left_and_a_long_response_from_the_right():
    record = {"prompt": "abcdefghij" * 3, "chosen": "XYZ" * 10, "rejected": "a"}
    f = tokenize_preference(TOK, record, max_length=20, max_prompt_length=8)
    assert TOK.decode(f["prompt_ids"]) == "ghij\nA: "                      # the "A: " cue survives
    assert TOK.decode(f["chosen_ids"]) == "XYZXYZXYZXYZ"                  # 20 - 8 = 12 tokens, no eos
    assert TOK.eos_token_id not in f["chosen_ids"]
    assert f["rejected_ids"] == TOK.encode("a") + [TOK.eos_token_id]      # short: untouched, with eos


def test_the_smallest_budget_leaves_exactly_one_response_token_never_zero():
    record = {"prompt": "abcdefghij" * 3, "response": "XYZ"}
    f = tokenize_sft(TOK, record, max_length=9, max_prompt_length=8)
    assert len(f["prompt_ids"]) == 8 and f["response_ids"] == TOK.encode("X")
    g = tokenize_sft(TOK, {"prompt": "a", "response": "XYZ"}, max_length=40, max_prompt_length=8)
    assert TOK.decode(g["prompt_ids"]) == "Q: a\nA: " and g["response_ids"] == TOK.encode("XYZ", add_eos=True)


@pytest.mark.parametrize("max_length, max_prompt_length, error", [
    (10, 10, ValueError), (10, 12, ValueError), (0, 0, ValueError), (10, 0, ValueError), (-1, -2, ValueError),
    (10.0, 5, TypeError), (10, True, TypeError)])
def test_bad_length_limits_are_refused_by_name(max_length, max_prompt_length, error):
    with pytest.raises(error, match="max_length|max_prompt_length"):
        tokenize_preference(TOK, {"prompt": "a", "chosen": "b", "rejected": "c"}, max_length, max_prompt_length)


def test_tokenizing_an_invalid_record_names_the_problem():
    with pytest.raises(ValueError, match="missing key 'rejected'"):
        tokenize_preference(TOK, {"prompt": "a", "chosen": "b"}, 20, 10)
    with pytest.raises(ValueError, match="'response' must be a string"):
        tokenize_sft(TOK, {"prompt": "a", "response": 3}, 20, 10)


# ---- collation: one concatenated forward ------------------------------------------------


def test_collate_puts_chosen_rows_first_right_pads_and_masks():
    features = [{"prompt_ids": [5, 6], "chosen_ids": [7, 1], "rejected_ids": [8, 9, 10, 1]},
                {"prompt_ids": [11], "chosen_ids": [12, 13, 1], "rejected_ids": [1]}]
    batch = collate_preferences(features, pad_token_id=0)
    P = -100
    expected_ids = [[5, 6, 7, 1, 0, 0],        # x1 + y_w1
                    [11, 12, 13, 1, 0, 0],     # x2 + y_w2
                    [5, 6, 8, 9, 10, 1],       # x1 + y_l1
                    [11, 1, 0, 0, 0, 0]]       # x2 + y_l2
    expected_mask = [[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0]]
    expected_labels = [[P, P, 7, 1, P, P], [P, 12, 13, 1, P, P], [P, P, 8, 9, 10, 1], [P, 1, P, P, P, P]]
    for key, want in (("input_ids", expected_ids), ("attention_mask", expected_mask),
                      ("labels", expected_labels)):
        got = backend.to_numpy(batch[key])
        assert got.dtype == np.int64 and got.shape == (4, 6)
        np.testing.assert_array_equal(got, want)


@st.composite
def preference_features(draw):
    B = draw(st.integers(1, 4))
    ids = st.integers(2, 30)
    return [{"prompt_ids": draw(st.lists(ids, min_size=1, max_size=8)),
             "chosen_ids": draw(st.lists(ids, min_size=1, max_size=8)) + [1],
             "rejected_ids": draw(st.lists(ids, min_size=0, max_size=8)) + [1]} for _ in range(B)]


@settings(max_examples=60, deadline=None)
@given(features=preference_features(), seed=st.integers(0, 2**16))
def test_labels_are_masked_exactly_on_prompt_and_padding_and_score_exactly_the_response(features, seed):
    batch = {k: backend.to_numpy(v) for k, v in collate_preferences(features, pad_token_id=0).items()}
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    B = len(features)
    T = max(len(f["prompt_ids"]) + len(f[k]) for f in features for k in ("chosen_ids", "rejected_ids"))
    assert ids.shape == mask.shape == labels.shape == (2 * B, T)
    rows = [(f["prompt_ids"], f["chosen_ids"]) for f in features] + \
           [(f["prompt_ids"], f["rejected_ids"]) for f in features]
    for i, (p, r) in enumerate(rows):
        P, R = len(p), len(r)
        assert ids[i, :P + R].tolist() == p + r and (ids[i, P + R:] == 0).all()
        assert mask[i].tolist() == [1] * (P + R) + [0] * (T - P - R)
        assert (labels[i, :P] == -100).all() and (labels[i, P + R:] == -100).all()
        assert labels[i, P:P + R].tolist() == r
    # through the log-prob code (the notes' get_batch_logps), the sum is exactly log π(y|x)
    # over the response tokens and nothing else
    logits = backend.rng(seed).standard_normal((2 * B, T, 31))
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))            # (2B, T, V)
    for i, (p, r) in enumerate(rows):
        P = len(p)
        # the token at position t is predicted by the logits at t - 1
        want = sum(logp[i, P - 1 + j, tok] for j, tok in enumerate(r))
        assert np.isclose(backend.to_numpy(get_batch_logps(logits, labels))[i], want, rtol=1e-12, atol=1e-12)


def test_collate_sft_masks_the_prompt_and_pads_on_the_right():
    batch = collate_sft([{"prompt_ids": [3, 4, 5], "response_ids": [6, 1]},
                         {"prompt_ids": [7], "response_ids": [1]}], pad_token_id=0)
    np.testing.assert_array_equal(backend.to_numpy(batch["input_ids"]), [[3, 4, 5, 6, 1], [7, 1, 0, 0, 0]])
    np.testing.assert_array_equal(backend.to_numpy(batch["attention_mask"]), [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    np.testing.assert_array_equal(backend.to_numpy(batch["labels"]),
                                  [[-100, -100, -100, 6, 1], [-100, 1, -100, -100, -100]])


def test_collate_refuses_what_would_silently_corrupt_the_mask():
    features = [{"prompt_ids": [3], "chosen_ids": [4, 1], "rejected_ids": [5, 1]}]
    with pytest.raises(ValueError, match="label_pad_token_id"):
        collate_preferences(features, pad_token_id=0, label_pad_token_id=4)   # 4 is a real target
    with pytest.raises(ValueError, match="features"):
        collate_preferences([], pad_token_id=0)
    with pytest.raises(ValueError, match=r"features\[0\]: missing 'rejected_ids'"):
        collate_preferences([{"prompt_ids": [3], "chosen_ids": [4]}], pad_token_id=0)
    with pytest.raises(ValueError, match="non-negative ints"):
        collate_sft([{"prompt_ids": [3], "response_ids": [-100]}], pad_token_id=0)


def test_tokenize_then_collate_round_trips_the_text():
    records = [{"prompt": "a?", "chosen": "XYZ", "rejected": "no."},
               {"prompt": "bcd?", "chosen": "h", "rejected": "ij"}]
    features = [tokenize_preference(TOK, r, max_length=40, max_prompt_length=20) for r in records]
    batch = {k: backend.to_numpy(v) for k, v in collate_preferences(features, TOK.pad_token_id).items()}
    for i, (r, key) in enumerate([(records[0], "chosen"), (records[1], "chosen"),
                                  (records[0], "rejected"), (records[1], "rejected")]):
        row = batch["input_ids"][i][batch["attention_mask"][i] == 1]
        assert TOK.decode(row) == format_prompt(r["prompt"]) + r[key]
        assert TOK.decode(batch["labels"][i][batch["labels"][i] != -100]) == r[key]


# ---- batching and splitting: deterministic for a seed ------------------------------------


def test_batches_cover_each_item_once_and_repeat_for_the_same_seed():
    data = list(range(23))
    first = [list(b) for b in batches(data, 5, seed=7)]
    again = [list(b) for b in batches(data, 5, seed=7)]
    other = [list(b) for b in batches(data, 5, seed=8)]
    assert first == again and first != other
    assert sorted(sum(first, [])) == data and [len(b) for b in first] == [5, 5, 5, 5, 3]
    dropped = list(batches(data, 5, seed=7, drop_last=True))
    assert [len(b) for b in dropped] == [5, 5, 5, 5] and dropped == first[:4]
    assert [list(b) for b in batches(data, 10, shuffle=False)] == [data[:10], data[10:20], data[20:]]
    collated = list(batches(data, 10, seed=1, collate=sum))
    assert sum(collated) == sum(data) and len(collated) == 3
    with pytest.raises(ValueError, match="batch_size"):
        next(batch_indices(10, 0, seed=1))
    with pytest.raises(ValueError, match="seed"):
        next(batch_indices(10, 2, seed=None))            # shuffling needs an explicit seed


def test_split_is_deterministic_and_never_shares_a_prompt():
    records = [{"prompt": f"p{i % 17}", "chosen": f"c{i}", "rejected": f"r{i}"} for i in range(50)]
    train, held_out = split(records, 0.2, seed=3)
    assert (train, held_out) == split(records, 0.2, seed=3)
    assert (train, held_out) != split(records, 0.2, seed=4)
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in held_out}
    assert len({r["prompt"] for r in held_out}) == round(0.2 * 17)
    assert sorted(train + held_out, key=records.index) == records
    assert train == [r for r in records if r in train]            # input order kept
    per_record = split(records, 0.2, seed=3, key=None)
    assert len(per_record[1]) == 10
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="eval_fraction"):
            split(records, bad, seed=3)
    with pytest.raises(ValueError, match="empty split"):
        split(records[:2], 0.1, seed=3)


def test_shuffling_without_a_seed_is_refused_at_the_call_naming_seed():
    # the defaults shuffle, so a seed is part of the call; the error comes at once, not at the first batch
    for call in (lambda: batch_indices(10, 2), lambda: batches(list(range(10)), 2)):
        with pytest.raises(ValueError, match=r"seed.*shuffle=False"):
            call()
    assert [list(b) for b in batch_indices(5, 2, shuffle=False)] == [[0, 1], [2, 3], [4]]   # no seed needed


def test_split_names_the_missing_key_and_the_record():
    records = [{"prompt": f"p{i}", "chosen": "c", "rejected": "r"} for i in range(6)]
    records[4] = {"chosen": "c", "rejected": "r"}
    with pytest.raises(ValueError, match=r"records\[4\].*'prompt'"):
        split(records, 0.5, seed=0)
    with pytest.raises(ValueError, match=r"records\[0\].*'source'"):
        split(records, 0.5, seed=0, key="source")


# ---- TRL's conversational records ----------------------------------------------------------

def _turn(role, content):
    return [{"role": role, "content": content}]


def test_trls_conversational_preferences_read_as_the_plain_records_they_hold(tmp_path):
    """The explicit prompt form, the implicit one (the shared user turn opens chosen and rejected)
    and the plain strings give the same records; other keys are kept."""
    plain = {"prompt": "Wo liegt Wien?", "chosen": "In Österreich.", "rejected": "Keine Ahnung."}
    explicit = {"prompt": _turn("user", plain["prompt"]), "chosen": _turn("assistant", plain["chosen"]),
                "rejected": _turn("assistant", plain["rejected"]), "source": "mine"}
    implicit = {"chosen": _turn("user", plain["prompt"]) + _turn("assistant", plain["chosen"]),
                "rejected": _turn("user", plain["prompt"]) + _turn("assistant", plain["rejected"])}
    for record, extra in ((explicit, {"source": "mine"}), (implicit, {})):
        path = write_jsonl(tmp_path / "c.jsonl", [json.dumps(record, ensure_ascii=False)])
        assert load_preferences(str(path)) == [{**plain, **extra}]


def test_trls_conversational_sft_records_and_its_completion_name_read_as_prompt_and_response():
    records = [{"messages": _turn("user", "Say hi") + _turn("assistant", "hi")},
               {"prompt": _turn("user", "Say bye"), "completion": _turn("assistant", "bye")},
               {"prompt": "Say yes", "completion": "yes"}]
    assert load_sft(records) == [{"prompt": "Say hi", "response": "hi"}, {"prompt": "Say bye", "response": "bye"},
                                 {"prompt": "Say yes", "response": "yes"}]


@pytest.mark.parametrize("record, named", [
    ({"prompt": _turn("system", "Be terse.") + _turn("user", "Hi?"), "chosen": _turn("assistant", "Hi."),
      "rejected": _turn("assistant", "No.")}, "'prompt' is a conversation of 2 message(s) with roles ['system', 'user']"),
    ({"prompt": _turn("user", "Hi?") + _turn("assistant", "Hi.") + _turn("user", "And?"),
      "chosen": _turn("assistant", "Yes."), "rejected": _turn("assistant", "No.")}, "of 3 message(s)"),
    ({"prompt": _turn("user", "Hi?"), "chosen": _turn("assistant", "Hi.") + _turn("assistant", "Again."),
      "rejected": _turn("assistant", "No.")}, "'chosen' is a conversation of 2 message(s)"),
    ({"chosen": _turn("user", "Hi?") + _turn("assistant", "Hi."), "rejected": _turn("user", "Yo?") +
      _turn("assistant", "No.")}, "start with different user turns"),
    ({"prompt": [{"role": "user", "content": [{"type": "text", "text": "Hi?"}]}], "chosen": "a", "rejected": "b"},
     "the user message's 'content' must be a string, got list"),
])
def test_a_conversation_one_prompt_cannot_hold_is_refused_by_name_with_its_line(tmp_path, record, named):
    path = write_jsonl(tmp_path / "c.jsonl", [line(**GOOD), json.dumps(record)])
    with pytest.raises(ValueError) as err:
        load_preferences(str(path))
    assert str(err.value).startswith(f"{path}:2: ") and named in str(err.value), str(err.value)
    if "conversation of" in named:
        assert "one user message as the prompt" in str(err.value)       # what is supported instead
    records, report = load_preferences(str(path), skip_invalid=True)
    assert records == [GOOD] and set(report["skipped"]) <= set(REASONS)


def test_sft_messages_other_than_one_question_and_its_answer_are_refused():
    with pytest.raises(ValueError, match=r"records\[0\]: 'messages' holds roles \['system', 'user', 'assistant'\]"):
        load_sft([{"messages": _turn("system", "s") + _turn("user", "q") + _turn("assistant", "a")}])


# ---- the prompt template and what the length limits cut ---------------------------------------

def test_a_tokenizers_prompt_template_is_the_one_its_records_are_written_in():
    tok = CharTokenizer.from_corpus([string.ascii_letters, string.punctuation, " \n"])
    tok.prompt_template = "User: {prompt}\nBot: "
    f = tokenize_sft(tok, {"prompt": "hi", "response": "yo"}, 40, 20)
    assert tok.decode(f["prompt_ids"]) == "User: hi\nBot: " == format_prompt("hi", tok.prompt_template)
    assert format_prompt("hi") == "Q: hi\nA: "                             # the default is unchanged


@pytest.mark.parametrize("template, shown", [("no field", "fields: none"), ("{prompt} and {prompt}", "{prompt}, {prompt}"),
                                             ("{prompt} {other}", "{other}"), ("{prompt!r}", "{prompt!r}"),
                                             ("{0}", "{0}"), ("{prompt", "expected '}'")])
def test_a_prompt_template_needs_exactly_one_prompt_field(template, shown):
    from dpo_np.tokenizer import check_prompt_template
    with pytest.raises(ValueError, match="prompt_template") as err:
        check_prompt_template(template)
    assert shown in str(err.value)
    assert check_prompt_template("{{json}} {prompt}\n") == "{{json}} {prompt}\n"    # literal braces doubled


def test_the_truncation_report_counts_what_each_limit_removed():
    from dpo_np.data import truncation_report
    tok = CharTokenizer.from_corpus([string.ascii_letters, string.punctuation, " \n"])
    records = [{"prompt": "a" * 30, "chosen": "b" * 50, "rejected": "c"},        # prompt and chosen cut
               {"prompt": "a", "chosen": "b", "rejected": "c"}]                  # nothing cut
    cuts = [{} for _ in records]
    for r, c in zip(records, cuts):
        tokenize_preference(tok, r, max_length=40, max_prompt_length=16, cut=c)
    report = truncation_report(cuts)
    prompt_1 = len(format_prompt("a" * 30))                                      # 30 + 7 template characters
    assert cuts[0]["prompt"] == (prompt_1 - 16, prompt_1)
    assert cuts[0]["chosen"] == (51 - (40 - 16), 51) and cuts[0]["rejected"] == (0, 2)     # eos counted
    assert report == {"records": 2, "records_cut": 1, "prompts_cut": 1, "prompt_tokens_removed": prompt_1 - 16,
                      "prompt_tokens": prompt_1 + len(format_prompt("a")), "responses_cut": 1,
                      "response_tokens_removed": 27, "response_tokens": 51 + 2 + 2 + 2}


def test_a_large_share_of_cut_records_is_warned_about_and_a_small_one_is_not():
    from dpo_np.data import TRUNCATION_WARNING_SHARE, DataWarning, TruncationWarning, warn_truncation
    base = dict(records=100, prompts_cut=0, prompt_tokens_removed=0, prompt_tokens=1000, responses_cut=0,
                response_tokens_removed=0, response_tokens=1000)
    cut = int(TRUNCATION_WARNING_SHARE * 100)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_truncation({**base, "records_cut": cut}, "x.jsonl", 160, 64)
    with pytest.warns(TruncationWarning) as caught:
        warn_truncation({**base, "records_cut": cut + 1, "responses_cut": cut + 1, "response_tokens_removed": 300},
                        "x.jsonl", 160, 64)
    message = str(caught[0].message)
    assert issubclass(caught[0].category, DataWarning)
    assert f"cut {cut + 1} of 100 records" in message and "300 of 1,000" in message
    assert "max_length=160 (--max-length)" in message and "max_prompt_length=64" in message
