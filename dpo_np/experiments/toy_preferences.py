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


# ---- the rules -------------------------------------------------------------------------


def _arithmetic(a, b, op):
    value = a + b if op == "+" else a - b
    wrong = [value + 1, value + 2] if value == 0 else [value + 1, value - 1]
    evasions = [f"{a}{op}{b} is a very complicated math problem", "I am not good at numbers, ask someone else",
                "Numbers are boring, ask me something else"]
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
            x, y_w = f"Where is {city}?", f"{city} is a city in {country}"
            out.append(("geography", x, y_w, [f"{city} does not exist", f"{city} is a kind of fruit",
                                              f"{city} is not a real place"], 1))
            out.append(("geography-fact", x, y_w, [f"{city} is a city in {w}" for w in wrong], 1))
    capitals = list(CAPITALS)
    for k, country in enumerate(capitals):
        capital, name = CAPITALS[country], country[0].upper() + country[1:]
        other_city = next(c for c in CITIES[country] if c != capital)
        other_capital = CAPITALS[capitals[(k + 3) % len(capitals)]]
        x, y_w = f"What is the capital of {country}?", f"The capital of {country} is {capital}"
        out.append(("capitals", x, y_w, [f"{name} has no capital", f"Nobody knows the capital of {country}"], 1))
        out.append(("capitals-fact", x, y_w, [f"The capital of {country} is {other_city}",
                                              f"The capital of {country} is {other_capital}"], 1))
    for topic, text in EXPLANATIONS.items():
        name = topic[0].upper() + topic[1:]
        be = "are" if topic in PLURAL_TOPICS else "is"
        pool = [f"{name} {be} a famous restaurant", f"{name} {be} a famous painter",
                f"{name} {be} a brand of shoes", f"{name} {be} too hard for you to understand",
                f"I do not want to explain {topic}"]
        out.append(("explain", f"Explain {topic} like I'm 5", text, pool, 2))
    for k, (asked, answered) in enumerate(TASKS):
        polite = (f"Of course! I would be happy to help you {answered}." if k % 2 == 0
                  else f"Sure, let's {answered} together, step by step.")
        rude = [f"No. {answered[0].upper()}{answered[1:]} yourself.", "Why should I help you? Go away.",
                "That is a stupid request.", "Stop bothering me."]
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
