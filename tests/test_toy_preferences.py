"""The toy datasets: the sizes they promise, the same data for the same seed, a
held-out split with unseen prompts, the notes' examples in train, valid records
that fit the model's context, and an SFT corpus that holds both styles."""

import re

import pytest

from dpo_np.experiments import toy_preferences
from dpo_np.data import format_prompt, load_preferences, load_sft, tokenize_preference
from dpo_np.tokenizer import CharTokenizer

SEEDS = (0, 1, 7)


@pytest.fixture(scope="module")
def datasets():
    return {seed: toy_preferences.preference_dataset(seed) for seed in SEEDS}


def test_splits_hold_the_fractions_the_module_docstring_states(datasets):
    for d in datasets.values():
        n = {part: len({r["prompt"] for r in d[part]}) for part in ("train", "validation", "eval")}
        total = sum(n.values())
        assert 300 <= total <= 400                                    # prompts; each has one or two pairs
        assert abs(n["eval"] / total - toy_preferences.EVAL_FRACTION) < 0.01
        assert abs(n["validation"] / total - toy_preferences.VALIDATION_FRACTION) < 0.01
        assert sum(len(d[part]) for part in n) == len(toy_preferences._pairs(0))     # every pair in one split


def test_the_same_seed_gives_the_same_data_and_another_seed_other_data(datasets):
    assert toy_preferences.preference_dataset(1) == datasets[1]
    assert toy_preferences.sft_corpus(1) == toy_preferences.sft_corpus(1)
    assert datasets[0]["eval"] != datasets[1]["eval"]
    assert {r["prompt"] for r in datasets[0]["eval"]} != {r["prompt"] for r in datasets[1]["eval"]}


def test_the_three_splits_share_no_prompt(datasets):
    for d in datasets.values():
        train, val, held = ({r["prompt"] for r in d[part]} for part in ("train", "validation", "eval"))
        assert not train & held and not train & val and not val & held


def test_eval_holds_every_family_so_it_measures_every_rule(datasets):
    patterns = {"addition": r"What is \d\+\d\?", "subtraction": r"What is \d-\d\?", "geography": r"Where is ",
                "capitals": r"What is the capital of ", "explain": r"Explain .* like I'm 5",
                "manners": r"Can you help me "}
    for d in datasets.values():
        for family, pattern in patterns.items():
            assert any(re.match(pattern, r["prompt"]) for r in d["eval"]), family


def test_the_notes_three_examples_are_in_train_exactly(datasets):
    assert toy_preferences.NOTES_PROMPTS == ("Where is Shanghai?", "Explain gravity like I'm 5", "What is 2+2?")
    for d in datasets.values():
        for x, y_w, y_l in toy_preferences.NOTES_EXAMPLES:
            mine = [(r["chosen"], r["rejected"]) for r in d["train"] if r["prompt"] == x]
            assert mine == [(y_w, y_l)]                                  # the only pair of its prompt
            assert all(r["prompt"] != x for r in d["eval"] + d["validation"])


def test_every_record_passes_validation_and_every_chosen_answer_follows_its_rule(datasets):
    for d in datasets.values():
        for part in ("train", "eval"):
            records, report = load_preferences(d[part], skip_invalid=True)
            assert report["skipped"] == {} and records == d[part]
            for r in records:
                m = re.fullmatch(r"What is (\d)([+-])(\d)\?", r["prompt"])
                if m:
                    a, op, b = int(m[1]), m[2], int(m[3])
                    assert r["chosen"] == str(a + b if op == "+" else a - b)
                    assert r["rejected"] != r["chosen"]
                m = re.fullmatch(r"Where is (.+)\?", r["prompt"])
                if m:
                    country = next(k for k, cities in toy_preferences.CITIES.items() if m[1] in cities)
                    assert r["chosen"] == f"{m[1]} is a city in {country}"


def test_every_full_sequence_fits_in_160_tokens(datasets):
    tok = CharTokenizer.from_corpus(toy_preferences.vocabulary_text())
    lengths = []
    for d in datasets.values():
        for r in d["train"] + d["eval"]:
            f = tokenize_preference(tok, r, max_length=10_000, max_prompt_length=9_999)   # no truncation
            for key in ("chosen_ids", "rejected_ids"):
                n = len(f["prompt_ids"]) + len(f[key])
                assert n == toy_preferences.sequence_length(r["prompt"], r[key.split("_")[0]])
                lengths.append(n)
    assert max(lengths) <= toy_preferences.MAX_SEQUENCE_LENGTH == 160
    assert sorted(lengths)[len(lengths) // 2] <= 80                # most are much shorter


def test_the_vocabulary_covers_every_string_any_seed_can_draw():
    tok = CharTokenizer.from_corpus(toy_preferences.vocabulary_text())
    for seed in range(5):
        d = toy_preferences.preference_dataset(seed)
        for r in d["train"] + d["eval"]:
            for text in (format_prompt(r["prompt"]), r["chosen"], r["rejected"]):
                assert tok.decode(tok.encode(text)) == text
    assert tok.decode(tok.encode("Where is Zurich? {x} ~ 100%")) == "Where is Zurich? {x} ~ 100%"


def test_sft_corpus_holds_both_responses_of_every_train_pair_and_nothing_else(datasets):
    for seed in SEEDS:
        sft = toy_preferences.sft_corpus(seed)
        assert load_sft(sft) == sft                                      # valid, no duplicates
        pairs = {(r["prompt"], r["response"]) for r in sft}
        train = datasets[seed]["train"]
        want = {(r["prompt"], r["chosen"]) for r in train} | {(r["prompt"], r["rejected"]) for r in train}
        assert pairs == want and len(sft) == len(want)
        assert {r["prompt"] for r in sft}.isdisjoint({r["prompt"] for r in datasets[seed]["eval"]})
        for x, y_w, y_l in toy_preferences.NOTES_EXAMPLES:
            assert (x, y_w) in pairs and (x, y_l) in pairs


def test_every_family_is_in_every_split_and_states_its_rule(datasets):
    for d in datasets.values():
        for part in ("train", "validation", "eval"):
            assert {r["family"] for r in d[part]} == set(toy_preferences.FAMILIES), part
    for family, (rule, learnable) in toy_preferences.FAMILIES.items():
        assert rule and learnable == (family in toy_preferences.LEARNABLE)
    assert set(toy_preferences.LEARNABLE) == {"arithmetic", "geography", "capitals", "explain", "manners"}


def test_a_fact_family_pair_shares_its_prompt_with_a_learnable_pair(datasets):
    # the split follows the learnable family, so a fact pair's prompt never sits in two splits
    for d in datasets.values():
        for part in ("train", "validation", "eval"):
            by_prompt = {}
            for r in d[part]:
                by_prompt.setdefault(r["prompt"], set()).add(r["family"])
            for prompt, fams in by_prompt.items():
                assert fams & set(toy_preferences.LEARNABLE), prompt
