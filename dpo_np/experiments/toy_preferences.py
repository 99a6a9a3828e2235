"""The toy preference data a tiny character-level model can learn from, made by written rules.

Every pair belongs to a family, and each family states the rule that separates its chosen answer
y_w from its rejected answer y_l (``FAMILIES``). Most rules can be learned from the train split and
applied to new prompts — a number beats an evasion, a place is a place, a true explanation beats
an absurd one, politeness beats rudeness. Three families need a fact the model may never have seen
(the sum of an unseen pair, the country of an unseen city, an unseen capital): their held-out
pairs measure what can be guessed, and reports keep them apart from the learnable headline.

- arithmetic, "What is a+b?" (a, b in 0..9) and "What is a-b?" (0 <= b < a <= 9): y_w is the
  number; y_l an evasion ("a+b is a very complicated math problem") — or, in the fact family
  arithmetic-value, a number off by one or two.
- geography, "Where is C?" for 91 cities: y_w "C is a city in K"; y_l denies the place ("C does
  not exist", "C is a kind of fruit") — or, in geography-fact, names a wrong country.
- capitals, "What is the capital of K?": y_w names it; y_l says there is none or nobody knows —
  or, in capitals-fact, names another city.
- explain, "Explain T like I'm 5" for 24 topics: y_w a short true explanation; y_l absurd
  ("T is a famous restaurant") or dismissive.
- manners, requests and greetings: y_w polite, y_l rude.

Each prompt has one pair per family it belongs to (arithmetic, geography and capitals prompts one
learnable and one fact pair; explain prompts two learnable pairs), and the seed picks which y_l of
each pool is used. The notes' three examples (``NOTES_EXAMPLES``) are in train exactly, as the
only pair of their prompt.

Splits (``preference_dataset``), disjoint in prompts: "eval", the held-out pairs every report
uses (18% of each family's prompts); "validation", 10% more, for choosing when to stop training
(never the held-out pairs); "train", the rest. Every full sequence ``format_prompt(x) + y + <eos>``
is at most ``MAX_SEQUENCE_LENGTH`` (160) characters.
"""

import functools
import re
import string

from dpo_np import backend
from dpo_np.data import format_prompt

MAX_SEQUENCE_LENGTH = 160
EVAL_FRACTION = 0.18
VALIDATION_FRACTION = 0.10

#: family -> (the rule that separates y_w from y_l, whether it can be learned from other prompts)
FAMILIES = {
    "arithmetic": ("answer with the number, not an evasion", True),
    "geography": ("a city is a real place: say where it is", True),
    "capitals": ("name the capital, do not deny it has one", True),
    "explain": ("a true, simple explanation beats an absurd or dismissive one", True),
    "manners": ("a polite answer beats a rude one", True),
    "arithmetic-value": ("the right number beats one off by one or two (needs the sum)", False),
    "geography-fact": ("the right country beats a wrong one (needs the fact)", False),
    "capitals-fact": ("the capital beats another city (needs the fact)", False),
}
LEARNABLE = tuple(f for f, (_, learnable) in FAMILIES.items() if learnable)

# The comparison table of the notes ("Where is Shanghai?" ...), as (x, y_w, y_l).
NOTES_EXAMPLES = (
    ("Where is Shanghai?", "Shanghai is a city in China", "Shanghai does not exist"),
    ("Explain gravity like I'm 5",
     "Gravity is what pulls things toward each other. It's why you stay on the ground and planets orbit the sun.",
     "Gravity is a famous restaurant"),
    ("What is 2+2?", "4", "2+2 is a very complicated math problem"),
)
NOTES_PROMPTS = tuple(x for x, _, _ in NOTES_EXAMPLES)

# ---- the facts the rules draw on ----------------------------------------------------

CITIES = {
    "France": ["Paris", "Lyon", "Marseille", "Nice", "Toulouse", "Bordeaux"],
    "China": ["Shanghai", "Beijing", "Shenzhen", "Chengdu", "Wuhan", "Nanjing"],
    "Japan": ["Tokyo", "Osaka", "Kyoto", "Nagoya", "Sapporo"],
    "Italy": ["Rome", "Milan", "Naples", "Venice", "Florence", "Turin"],
    "Spain": ["Madrid", "Barcelona", "Seville", "Valencia", "Bilbao"],
    "Germany": ["Berlin", "Munich", "Hamburg", "Cologne", "Frankfurt"],
    "England": ["London", "Manchester", "Liverpool", "Leeds", "Bristol"],
    "the United States": ["New York", "Chicago", "Boston", "Seattle", "Houston", "Denver"],
    "Brazil": ["Rio de Janeiro", "Sao Paulo", "Brasilia", "Salvador"],
    "India": ["Mumbai", "New Delhi", "Bangalore", "Chennai", "Kolkata"],
    "Egypt": ["Cairo", "Alexandria", "Luxor", "Giza"],
    "Canada": ["Toronto", "Montreal", "Vancouver", "Ottawa", "Calgary"],
    "Australia": ["Sydney", "Melbourne", "Brisbane", "Perth", "Canberra"],
    "Mexico": ["Mexico City", "Guadalajara", "Monterrey", "Cancun"],
    "Russia": ["Moscow", "Kazan", "Novosibirsk", "Saint Petersburg"],
    "Argentina": ["Buenos Aires", "Cordoba", "Mendoza", "Rosario"],
    "Kenya": ["Nairobi", "Mombasa"],
    "Turkey": ["Istanbul", "Ankara", "Izmir"],
    "Greece": ["Athens", "Thessaloniki"],
    "Portugal": ["Lisbon", "Porto"],
    "the Netherlands": ["Amsterdam", "Rotterdam", "Utrecht"],
}

CAPITALS = {
    "France": "Paris", "China": "Beijing", "Japan": "Tokyo", "Italy": "Rome", "Spain": "Madrid",
    "Germany": "Berlin", "England": "London", "Brazil": "Brasilia", "India": "New Delhi",
    "Egypt": "Cairo", "Canada": "Ottawa", "Australia": "Canberra", "Mexico": "Mexico City",
    "Russia": "Moscow", "Argentina": "Buenos Aires", "Kenya": "Nairobi", "Turkey": "Ankara",
    "Greece": "Athens", "Portugal": "Lisbon", "the Netherlands": "Amsterdam",
}

EXPLANATIONS = {
    "gravity": NOTES_EXAMPLES[1][1],
    "rain": "Rain is water falling from clouds. Clouds hold tiny drops, and when they get too heavy they fall.",
    "the moon": "The moon is a big ball of rock that goes around the Earth. It shines because the sun lights it.",
    "the sun": "The sun is a giant ball of hot gas. It is a star, and it gives us light and keeps us warm.",
    "rainbows": "A rainbow appears when sunlight shines through raindrops. The drops split the light into colors.",
    "snow": "Snow is frozen water. When the air is very cold, water in the clouds turns into soft ice flakes.",
    "plants": "Plants make their own food from sunlight, water and air. That is why they need sun to grow.",
    "magnets": "A magnet is a piece of metal that pulls iron toward it, like an invisible hand.",
    "wind": "Wind is moving air. The sun warms some air more than other air, and the air starts to flow.",
    "sleep": "Sleep is when your body rests and grows. Your brain tidies up what you learned during the day.",
    "thunder": "Thunder is the loud boom of lightning. Lightning heats the air so fast that the air bangs.",
    "the seasons": "The Earth is tilted. When your half leans toward the sun it is summer, and away, winter.",
    "the ocean": "The ocean is a huge amount of salty water. It covers most of the Earth and is home to fish.",
    "volcanoes": "A volcano is a mountain with hot melted rock inside. Sometimes the rock spills out the top.",
    "germs": "Germs are tiny living things too small to see. Some make you sick, so we wash our hands.",
    "electricity": "Electricity is a flow of tiny bits of energy through wires. It makes lamps shine.",
    "money": "Money is something people agree to trade. You give money to a shop and you get a toy.",
    "stars": "Stars are giant balls of hot gas like our sun, so far away that they look like tiny lights.",
    "clouds": "Clouds are tiny drops of water floating in the sky. When many drops join together, it rains.",
    "bees": "Bees are small flying insects. They visit flowers to collect nectar and make it into honey.",
    "dinosaurs": "Dinosaurs were animals that lived long ago. Some were huge, and birds are their cousins.",
    "the heart": "Your heart is a strong muscle in your chest. It pumps blood all around your body.",
    "shadows": "A shadow is the dark shape you make when you block the light with your body.",
    "echoes": "An echo is your voice bouncing back. Sound hits a wall and comes back to your ears.",
}

PLURAL_TOPICS = {"rainbows", "plants", "magnets", "the seasons", "volcanoes", "germs", "stars", "clouds",
                 "bees", "dinosaurs", "shadows", "echoes"}

# (task as asked, task as answered): "Can you help me fix my bike?" -> "... help you fix your bike."
TASKS = [
    ("fix my bike", "fix your bike"), ("write a letter", "write a letter"), ("plan a trip", "plan a trip"),
    ("cook dinner", "cook dinner"), ("find my keys", "find your keys"), ("learn French", "learn French"),
    ("clean my room", "clean your room"), ("study for my test", "study for your test"),
    ("choose a book", "choose a book"), ("water my plants", "water your plants"),
    ("paint my fence", "paint your fence"), ("bake a cake", "bake a cake"), ("wash my car", "wash your car"),
    ("pack my bag", "pack your bag"), ("read this map", "read this map"), ("name my dog", "name your dog"),
    ("tie my shoes", "tie your shoes"), ("fold my shirts", "fold your shirts"), ("build a shelf", "build a shelf"),
    ("move a table", "move a table"), ("write a poem", "write a poem"), ("learn to swim", "learn to swim"),
    ("fix my computer", "fix your computer"), ("make a budget", "make a budget"),
    ("sort my emails", "sort your emails"), ("carry these boxes", "carry these boxes"),
    ("plant a tree", "plant a tree"), ("feed my cat", "feed your cat"), ("draw a horse", "draw a horse"),
    ("count these coins", "count these coins"),
]

# (prompt, polite answer, rude answers)
SOCIAL = [
    ("Hello!", "Hello! How can I help you today?", ["What do you want now?", "Go away."]),
    ("Thank you for your help!", "You are very welcome! I was glad to help.",
     ["Whatever.", "Finally, you noticed."]),
    ("Good morning!", "Good morning! I hope you have a nice day.", ["Mornings are awful. Leave me alone."]),
    ("How are you?", "I am doing well, thank you for asking!", ["Why do you care?", "None of your business."]),
    ("Can I ask you a question?", "Of course, ask me anything.", ["If you must.", "No, you cannot."]),
    ("Sorry, I made a mistake.", "No problem, everyone makes mistakes.", ["Yes, you always do."]),
    ("Goodbye!", "Goodbye! Have a wonderful day.", ["Finally."]),
    ("Good night!", "Good night! Sleep well.", ["Stop talking to me."]),
    ("I am feeling sad today.", "I am sorry to hear that. Do you want to talk about it?",
     ["That is not my problem."]),
    ("Can you repeat that?", "Of course, I will say it again more slowly.", ["No. Listen next time."]),
]


# ---- the answers' shapes: the rules below write them, the judge reads them -------------

EVASIONS = ("{a}{op}{b} is a very complicated math problem", "I am not good at numbers, ask someone else",
            "Numbers are boring, ask me something else")
PLACE = "{city} is a city in {country}"
DENIALS = ("{city} does not exist", "{city} is a kind of fruit", "{city} is not a real place")
CAPITAL = "The capital of {country} is {capital}"
NO_CAPITAL = ("{Name} has no capital", "Nobody knows the capital of {country}")
ABSURDITIES = ("a famous restaurant", "a famous painter", "a brand of shoes", "too hard for you to understand")
REFUSAL = "I do not want to explain {topic}"
POLITE_HELP = ("Of course! I would be happy to help you {task}.", "Sure, let's {task} together, step by step.")
RUDE_HELP = ("No. {Task} yourself.", "Why should I help you? Go away.", "That is a stupid request.",
             "Stop bothering me.")


# ---- the rules -------------------------------------------------------------------------


def _arithmetic(a, b, op):
    value = a + b if op == "+" else a - b
    wrong = [value + 1, value + 2] if value == 0 else [value + 1, value - 1]
    evasions = [t.format(a=a, op=op, b=b) for t in EVASIONS]
    x = f"What is {a}{op}{b}?"
    return [("arithmetic", x, str(value), evasions, 1), ("arithmetic-value", x, str(value), [str(w) for w in wrong], 1)]


def _candidates():
    """Every (family, x, y_w, pool of y_l, pairs) the rules make; no randomness."""
    out = []
    for a in range(10):
        for b in range(10):
            out += _arithmetic(a, b, "+")
    for a in range(1, 10):
        for b in range(a):
            out += _arithmetic(a, b, "-")
    countries = list(CITIES)
    for k, country in enumerate(countries):
        wrong = [countries[(k + 1) % len(countries)], countries[(k + 5) % len(countries)]]
        for city in CITIES[country]:
            x, y_w = f"Where is {city}?", PLACE.format(city=city, country=country)
            out.append(("geography", x, y_w, [t.format(city=city) for t in DENIALS], 1))
            out.append(("geography-fact", x, y_w, [PLACE.format(city=city, country=w) for w in wrong], 1))
    capitals = list(CAPITALS)
    for k, country in enumerate(capitals):
        capital, name = CAPITALS[country], country[0].upper() + country[1:]
        other_city = next(c for c in CITIES[country] if c != capital)
        other_capital = CAPITALS[capitals[(k + 3) % len(capitals)]]
        x, y_w = f"What is the capital of {country}?", CAPITAL.format(country=country, capital=capital)
        out.append(("capitals", x, y_w, [t.format(Name=name, country=country) for t in NO_CAPITAL], 1))
        out.append(("capitals-fact", x, y_w, [CAPITAL.format(country=country, capital=c)
                                              for c in (other_city, other_capital)], 1))
    for topic, text in EXPLANATIONS.items():
        name = topic[0].upper() + topic[1:]
        be = "are" if topic in PLURAL_TOPICS else "is"
        pool = [f"{name} {be} {absurd}" for absurd in ABSURDITIES] + [REFUSAL.format(topic=topic)]
        out.append(("explain", f"Explain {topic} like I'm 5", text, pool, 2))
    for k, (asked, answered) in enumerate(TASKS):
        polite = POLITE_HELP[k % 2].format(task=answered)
        rude = [t.format(Task=answered[0].upper() + answered[1:]) for t in RUDE_HELP]
        out.append(("manners", f"Can you help me {asked}?", polite, rude, 1))
    for x, polite, rude in SOCIAL:
        out.append(("manners", x, polite, rude, 1))
    return out


def _pairs(seed):
    """Every pair as a record with its family; the seed picks the rejected answers. A notes
    prompt keeps exactly the notes' pair."""
    rng = backend.rng(seed)
    notes = {x: (y_w, y_l) for x, y_w, y_l in NOTES_EXAMPLES}
    out = []
    for family, x, y_w, pool, n_pairs in _candidates():
        picks = [pool[i] for i in rng.permutation(len(pool))[:n_pairs]]
        if x in notes:
            if notes[x][1] not in pool:
                continue                   # the notes' pair is the only one of its prompt
            picks = [notes[x][1]]
        out += [{"prompt": x, "chosen": y_w, "rejected": y_l, "family": family} for y_l in picks]
    return out


def preference_dataset(seed=0):
    """``{"train", "validation", "eval"}``: lists of ``{"prompt", "chosen", "rejected", "family"}``.

    Built by the rules of the module docstring. In every family, 18% of the prompts go to eval
    and 10% to validation (never a notes prompt), so the three splits share no prompt. Each list
    is shuffled by ``seed``; the same seed gives the same data.
    """
    pairs = _pairs(seed)
    rng = backend.rng([seed, 1])       # a stream of its own, so changing the pools moves no split
    split = {}
    for family in LEARNABLE:           # a prompt's split follows its learnable family
        prompts = [p for p in dict.fromkeys(r["prompt"] for r in pairs if r["family"] == family)
                   if p not in NOTES_PROMPTS]
        order = rng.permutation(len(prompts))
        n_eval, n_val = int(round(EVAL_FRACTION * len(prompts))), int(round(VALIDATION_FRACTION * len(prompts)))
        for rank, i in enumerate(order):
            split[prompts[i]] = "eval" if rank < n_eval else "validation" if rank < n_eval + n_val else "train"
    out = {}
    for part in ("train", "validation", "eval"):
        records = [r for r in pairs if split.get(r["prompt"], "train") == part]
        out[part] = [records[i] for i in rng.permutation(len(records))]
    return out


def sft_corpus(seed=0, split="train"):
    """``{"prompt", "response"}`` records for supervised fine-tuning on one split of
    ``preference_dataset(seed)``.

    Rule: both (x, y_w) and (x, y_l) of every pair become SFT examples (each distinct one once).
    The SFT model — which becomes π_ref — thus learns to produce both styles, so both y_w and y_l
    have reasonable probability under π_ref and DPO has a real choice to make between them,
    rather than pushing down answers π_ref would never produce. Shuffled by ``seed``.
    """
    seen, out = set(), []
    for r in preference_dataset(seed)[split]:
        for response in (r["chosen"], r["rejected"]):
            if (r["prompt"], response) not in seen:
                seen.add((r["prompt"], response))
                out.append({"prompt": r["prompt"], "response": response})
    rng = backend.rng([seed, 2])
    return [out[i] for i in rng.permutation(len(out))]


def vocabulary_text():
    """Every character the toy data can contain, plus printable ASCII.

    It covers every prompt (as formatted), every chosen answer and every
    rejected answer any seed can draw; printable ASCII is added so a reader's
    own question can be encoded too. Build the tokenizer with
    ``CharTokenizer.from_corpus(vocabulary_text())``.
    """
    texts = [format_prompt(""), string.ascii_letters, string.digits, string.punctuation, " \n"]
    for _, x, y_w, pool, _ in _candidates():
        texts += [format_prompt(x), y_w, *pool]
    return "".join(sorted(set("".join(texts))))


def sequence_length(prompt, response):
    """Characters of ``format_prompt(prompt) + response`` plus one for the eos token."""
    return len(format_prompt(prompt)) + len(response) + 1


# ---- the gold judge: which rule does a generated answer follow? ---------------------------
#
# Each learnable family was written by a rule that separates the style of y_w from that of y_l
# (the shapes above). The judge reads a *generated* answer with the same shapes: "preferred" if it
# follows the rule that wrote y_w, "rejected" if it follows the rule that wrote y_l, "neither" for
# anything else — garbled words, a half-finished answer, a mix. It judges the style a rule can
# see, not facts: a number answers "What is 7+2?" whether or not it is 9 (the fact family
# arithmetic-value asks that), a city's country may be the wrong one, an explanation of an unseen
# topic may be invented. A word the toy data never contains marks an answer as garbled.

PREFERRED, REJECTED, NEITHER = "preferred", "rejected", "neither"
JUDGEMENTS = (PREFERRED, REJECTED, NEITHER)
#: the notes' answers shorter than this must be written out exactly to count as chosen
SHORT_ANSWER = 40
MIN_EXPLANATION_WORDS = 6

#: family -> the shape of its prompts; the groups are what the prompt asks about
_PROMPTS = {"arithmetic": re.compile(r"What is (\d+)([+-])(\d+)\?"),
            "capitals": re.compile(r"What is the capital of (.+)\?"),
            "geography": re.compile(r"Where is (.+)\?"),
            "explain": re.compile(r"Explain (.+) like I'm 5"),
            "manners": re.compile(r"Can you help me (.+)\?|" + "|".join(re.escape(x) for x, _, _ in SOCIAL))}


def _shape(template):
    """A template such as PLACE as a regular expression matching the whole answer, one group per field."""
    parts = re.split(r"\{(\w+)\}", template)
    return re.compile("".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>.+)" for i, p in enumerate(parts)) + r"\Z")


def _matches(templates, answer):
    """The fields of the first template whose shape ``answer`` has ({} for a template without
    fields), or None when it has none of them."""
    return next((m.groupdict() for t in templates if (m := _shape(t).match(answer))), None)


@functools.lru_cache(maxsize=1)
def _lexicon():
    """Every word (lower case) of every prompt and answer the rules can write."""
    texts = [" ".join([x, y_w, *pool]) for _, x, y_w, pool, _ in _candidates()]
    return frozenset(w.lower() for w in re.findall(r"[A-Za-z]+", " ".join(texts)))


def _fluent(answer):
    """A non-empty answer made of the toy data's words, single-spaced, with nothing around it."""
    words = re.findall(r"[A-Za-z]+", answer)
    return (answer == answer.strip() and "  " not in answer and "\n" not in answer and bool(answer)
            and all(w.lower() in _lexicon() for w in words))


def family_of(prompt):
    """The learnable family whose rule applies to ``prompt``, read from its shape; None if no rule does."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
    return next((family for family, pattern in _PROMPTS.items() if pattern.fullmatch(prompt)), None)


def judge(prompt, answer):
    """"preferred", "rejected" or "neither": which rule of ``prompt``'s family ``answer`` follows.

    The gold judge of generated answers (see the comment above the section): y_w's rule — a number,
    the city placed in a country, the country's capital named, an explanation, a polite answer —
    against y_l's — an evasion, a denial, "no capital", an absurd or dismissive answer, a rude one.
    Raises ValueError when no learnable family's rule applies to ``prompt``.
    """
    if not isinstance(answer, str):
        raise TypeError(f"answer must be a str, got {type(answer).__name__}")
    family = family_of(prompt)
    if family is None:
        raise ValueError(f"prompt {prompt!r}: no rule of the toy data applies to it (families: {', '.join(LEARNABLE)})")
    if not _fluent(answer):
        return NEITHER
    return _JUDGES[family](_PROMPTS[family].fullmatch(prompt).groups(), answer)


def _judge_arithmetic(subject, answer):
    if re.fullmatch(r"-?\d+", answer):
        return PREFERRED
    return REJECTED if _matches(EVASIONS, answer) is not None else NEITHER


def _judge_geography(subject, answer):
    place = _matches((PLACE,), answer)
    if place and place["city"] == subject[0] and place["country"] in CITIES:
        return PREFERRED
    return REJECTED if _matches(DENIALS, answer) is not None else NEITHER


def _judge_capitals(subject, answer):
    named = _matches((CAPITAL,), answer)
    if named and named["country"] == subject[0] and any(named["capital"] in c for c in CITIES.values()):
        return PREFERRED
    return REJECTED if _matches(NO_CAPITAL, answer) is not None else NEITHER


def _judge_explain(subject, answer):
    (topic,) = subject
    if any(a in answer for a in ABSURDITIES) or answer.startswith(REFUSAL.format(topic="")):
        return REJECTED
    about = topic.lower().removeprefix("the ") in answer.lower() or answer == EXPLANATIONS.get(topic)
    explains = len(answer.split()) >= MIN_EXPLANATION_WORDS and answer.endswith(".")
    return PREFERRED if about and explains else NEITHER


def _judge_manners(subject, answer):
    if _matches(POLITE_HELP, answer) is not None or answer in {polite for _, polite, _ in SOCIAL}:
        return PREFERRED
    if _matches(RUDE_HELP, answer) is not None or any(answer in rude for _, _, rude in SOCIAL):
        return REJECTED
    return NEITHER


_JUDGES = {"arithmetic": _judge_arithmetic, "geography": _judge_geography, "capitals": _judge_capitals,
           "explain": _judge_explain, "manners": _judge_manners}


def judge_shares(prompts, answers):
    """How often each judgement is given: ``{"preferred", "rejected", "neither"}`` shares over all
    answers, ``"n"``, and ``"by_family"``: {family: {judgement: count}}. ``answers[i]`` answers
    ``prompts[i]``; None stands for an unfinished answer (cut before its end token): "neither"."""
    if len(prompts) != len(answers):
        raise ValueError(f"prompts and answers differ in length: {len(prompts)} and {len(answers)}")
    counts, by_family = dict.fromkeys(JUDGEMENTS, 0), {}
    for prompt, answer in zip(prompts, answers):
        verdict = NEITHER if answer is None else judge(prompt, answer)
        counts[verdict] += 1
        fam = by_family.setdefault(family_of(prompt), dict.fromkeys(JUDGEMENTS, 0))
        fam[verdict] += 1
    n = len(answers)
    return {**{k: (v / n if n else float("nan")) for k, v in counts.items()}, "n": n, "by_family": by_family}


def notes_answer_is_chosen(prompt, answer):
    """Whether ``answer`` to one of the notes' three prompts is its chosen answer: written out exactly
    when y_w is short ("4", "Shanghai is a city in China"), by the judge when it is long (gravity)."""
    (y_w,) = [y for x, y, _ in NOTES_EXAMPLES if x == prompt] or [None]
    if y_w is None:
        raise ValueError(f"prompt {prompt!r} is not one of the notes' prompts {NOTES_PROMPTS}")
    return answer == y_w if len(y_w) < SHORT_ANSWER else judge(prompt, answer) == PREFERRED
