"""The gold judge of generated answers: it calls every y_w of the toy data preferred and every y_l
rejected, garbled or unfinished text neither, and it judges the style a family's rule sees — not
the facts (a wrong number is still a number)."""

import re

import pytest

from dpo_np.experiments import toy_preferences as tp
from dpo_np.experiments.toy_preferences import NEITHER, PREFERRED, REJECTED, judge


def _learnable_candidates():
    """(family, x, y_w, every y_l the rules can draw) of the learnable families, over every seed."""
    return [(f, x, y_w, pool) for f, x, y_w, pool, _ in tp._candidates() if f in tp.LEARNABLE]


def test_every_chosen_answer_is_preferred_and_every_rejected_one_rejected():
    candidates = _learnable_candidates()
    assert len(candidates) > 300
    for family, x, y_w, pool in candidates:
        assert tp.family_of(x) == family, x
        assert judge(x, y_w) == PREFERRED, (x, y_w)
        for y_l in pool:
            assert judge(x, y_l) == REJECTED, (x, y_l)


@pytest.mark.parametrize("seed", [0, 3])
def test_the_datasets_pairs_are_judged_by_their_learnable_family(seed):
    data = tp.preference_dataset(seed)
    pairs = [r for part in data.values() for r in part if r["family"] in tp.LEARNABLE]
    assert all(judge(r["prompt"], r["chosen"]) == PREFERRED and judge(r["prompt"], r["rejected"]) == REJECTED
               for r in pairs)


def test_the_notes_three_pairs_are_judged_like_the_rest():
    for x, y_w, y_l in tp.NOTES_EXAMPLES:
        assert (judge(x, y_w), judge(x, y_l)) == (PREFERRED, REJECTED)
        assert tp.notes_answer_is_chosen(x, y_w) and not tp.notes_answer_is_chosen(x, y_l)


def _garble(text):
    """``text`` with two letters no toy word contains pushed into its longest word."""
    word = max(re.findall(r"[A-Za-z]+", text), key=len)
    i = text.index(word) + len(word) // 2
    return text[:i] + "qx" + text[i:]


def test_a_garbled_word_makes_any_answer_neither():
    for _, x, y_w, pool in _learnable_candidates():
        for y in [y_w] + pool:
            if re.search(r"[A-Za-z]", y):
                assert judge(x, _garble(y)) == NEITHER, (x, _garble(y))


def test_an_answer_cut_in_the_middle_follows_neither_rule():
    for family, x, y_w, pool in _learnable_candidates():
        for y in [y_w] + pool:
            words = y.split()
            if len(words) >= 2:
                cut = " ".join(words[:len(words) // 2])
                if cut.endswith("."):                       # a whole first sentence is not a cut answer
                    cut = cut.rsplit(" ", 1)[0]
                assert judge(x, cut) == NEITHER, (x, cut)


@pytest.mark.parametrize("answer", ["", " ", "4 ", " 4", "4\n", "4  4", "Shanghai  is a city in China",
                                    "shanghai is a city in China", "Shanghai is a city in Atlantis",
                                    "Lyon is a city in France", "Shanghai is a city in China and Japan, really",
                                    "ÿ", "Shanghai"])
def test_odd_answers_to_a_place_question_are_neither(answer):
    assert judge("Where is Shanghai?", answer) == NEITHER


def test_the_judge_sees_the_style_of_the_rule_not_the_facts():
    # the fact families' y_l (a wrong number, country or capital) follow the learnable family's rule
    assert judge("What is 2+2?", "5") == PREFERRED
    assert judge("What is 2+2?", "17") == PREFERRED
    assert judge("Where is Shanghai?", "Shanghai is a city in Japan") == PREFERRED
    assert judge("What is the capital of France?", "The capital of France is Lyon") == PREFERRED
    # an evasion with other numbers in it is still an evasion
    assert judge("What is 2+2?", "7-3 is a very complicated math problem") == REJECTED
    # the rule names the prompt's own place and country
    assert judge("What is the capital of France?", "The capital of Spain is Madrid") == NEITHER
    # a polite answer about another task is still polite; a rude one still rude
    assert judge("Can you help me fix my bike?", "Of course! I would be happy to help you bake a cake.") == PREFERRED
    assert judge("Hello!", "Stop bothering me.") == REJECTED


def test_explanations_must_be_about_the_topic_and_an_absurd_one_is_rejected_anywhere():
    x = "Explain rain like I'm 5"
    assert judge(x, "Rain is water falling from clouds.") == PREFERRED
    assert judge(x, "Snow is frozen water. When the air is very cold, it falls.") == NEITHER   # another topic
    assert judge(x, "Rain is water.") == NEITHER                                               # too short
    assert judge(x, "Rain is a famous restaurant. It is water falling from clouds.") == REJECTED
    assert judge(x, "I do not want to explain rain") == REJECTED
    # a y_w that never names its topic is known by its text
    seasons = "Explain the seasons like I'm 5"
    assert judge(seasons, tp.EXPLANATIONS["the seasons"]) == PREFERRED


def test_unknown_prompts_and_wrong_types_are_refused_by_name():
    with pytest.raises(ValueError, match="no rule of the toy data"):
        judge("Tell me a joke", "No.")
    with pytest.raises(TypeError, match="prompt must be a str"):
        judge(3, "4")
    with pytest.raises(TypeError, match="answer must be a str"):
        judge("What is 2+2?", 4)
    with pytest.raises(ValueError, match="not one of the notes' prompts"):
        tp.notes_answer_is_chosen("What is 3+3?", "6")


def test_notes_answers_are_exact_where_short_and_judged_where_long():
    assert tp.notes_answer_is_chosen("What is 2+2?", "4")
    assert not tp.notes_answer_is_chosen("What is 2+2?", "5")                     # a number, not the answer
    assert not tp.notes_answer_is_chosen("Where is Shanghai?", "Shanghai is a city in Japan")
    assert tp.notes_answer_is_chosen("Explain gravity like I'm 5",
                                     "Gravity is what pulls things toward the ground. It keeps you on the ground.")


def test_judge_shares_count_every_answer_once_and_unfinished_ones_as_neither():
    prompts = ["What is 2+2?", "What is 2+2?", "Where is Paris?", "Hello!", "Hello!"]
    answers = ["4", "Numbers are boring, ask me something else", "Paris is a city in France", None, "Go away."]
    shares = tp.judge_shares(prompts, answers)
    assert shares["n"] == 5
    assert (shares["preferred"], shares["rejected"], shares["neither"]) == (2 / 5, 2 / 5, 1 / 5)
    assert shares["by_family"] == {"arithmetic": {PREFERRED: 1, REJECTED: 1, NEITHER: 0},
                                   "geography": {PREFERRED: 1, REJECTED: 0, NEITHER: 0},
                                   "manners": {PREFERRED: 0, REJECTED: 1, NEITHER: 1}}
    with pytest.raises(ValueError, match="differ in length"):
        tp.judge_shares(prompts, answers[:2])
