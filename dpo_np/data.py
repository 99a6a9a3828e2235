"""Preference data: load it, check it, tokenize it, batch it.

A preference dataset is what the notes ask people to produce instead of
scores: for a prompt x, a chosen answer y_w and a rejected answer y_l, as
``{"prompt": x, "chosen": y_w, "rejected": y_l}`` — the layout of the public
preference datasets. Supervised fine-tuning (SFT) data is
``{"prompt": x, "response": y}``, or ``{"text": t}`` for plain text with no prompt (every token of
t is trained on, after a start token). Unpaired data (KTO's thumbs up or down) is
``{"prompt": x, "completion": y, "label": true/false}``, a JSON boolean.

The path from records to the arrays of one DPO step:

    load_preferences(path)          records, every problem named by file and line
    tokenize_preference(tok, rec)   prompt_ids | chosen_ids, rejected_ids (each ends with eos)
    collate_preferences(features)   input_ids, attention_mask, labels  (2B, T): chosen rows, then rejected

JSONL rules (both loaders):

- one JSON object per line, UTF-8; keys beyond the required ones are kept;
- blank (whitespace-only) lines hold no record and are ignored — they are
  counted in the report and line numbers still count them, so a reported line
  is the line an editor shows;
- a record is invalid when its line is not JSON (or names one key twice, so
  that which value is meant is unclear), it is not an object, a required key is
  missing, a value is not a string, a value is empty or only whitespace,
  (preferences and unpaired data) it repeats an earlier record (the same
  required values), (preferences only) chosen == rejected, or it is a
  conversation that one prompt and one answer cannot hold;
- an SFT record that repeats an earlier one is kept: SFT files repeat lines on
  purpose, to weigh them more. The repeats are counted (``"duplicates"`` in the
  report) and warned about (``DataWarning``), with the first places.

By default the first invalid record raises ``ValueError`` naming the file and
line (``data.jsonl:7``), or the list index (``records[6]``) for an in-memory
list. With ``skip_invalid=True`` the loader returns ``(records, report)``:
the valid records, and a report of everything it left out, so nothing
disappears unseen::

    {"source": "data.jsonl", "read": 10, "kept": 8, "blank_lines": 1,
     "skipped": {"duplicate": 1, "empty": 1},                   # counts by reason
     "problems": [{"where": "data.jsonl:4", "line": 4, "reason": "empty",
                   "message": "data.jsonl:4: 'chosen' is empty"}, ...]}

(``read`` counts records, not blank lines; ``line`` is the list index for a list.) The records
come back as ``Records``, a list that remembers where each was read, so that a problem found
later (in tokenizing) still names its line when the list is passed on.

TRL's conversational records are read too, where they hold one question and its answers: a
``"prompt"`` of one user message ``[{"role": "user", "content": x}]`` with ``"chosen"`` and
``"rejected"`` of one assistant message each (or, with no ``"prompt"``, ``"chosen"`` and
``"rejected"`` of ``[user, assistant]`` with the same user message); for SFT ``{"messages": [user,
assistant]}``, and TRL's ``"completion"`` for ``"response"``. The user message becomes x, written
through the prompt template like any other prompt. A system message or several turns cannot be
represented in the template and are refused by name, with the line.

A path must name a regular file: a directory, a FIFO or a device is refused by name before it is
opened (a FIFO would block the reader). A line nested too deeply for the JSON reader is invalid
JSON ("nested too deeply"), named by its line like any other.

Tokenizing can damage data that the records do not show (``find_damage``): the prompt keeps its
end and the responses their start, so two different prompts can become the same tokens, and a
chosen and a rejected response that differ only past the cut (or only in characters an unk token
swallows) become the same tokens. Such a pair has no preference: its margin is 0 whatever π_θ, so
the sigmoid loss sits at log 2 and it counts as wrong in the reward accuracy. The trainers warn
(``DataWarning``) with the counts and the first places, and can drop the pairs
(``TrainingConfig.drop_identical_pairs``). What the cut removed is counted too
(``truncation_report``: records and tokens, prompts and responses apart), and a large share of
cut records is warned about (``warn_truncation``).
"""

import json
import os
import warnings

import numpy as np

from dpo_np import backend, checks
from dpo_np.files import DuplicateKeyError, json_error, loads_json, require_file
from dpo_np.progress import plural
from dpo_np.tokenizer import PROMPT_TEMPLATE

PREFERENCE_KEYS = ("prompt", "chosen", "rejected")
SFT_KEYS = ("prompt", "response")
TEXT_KEYS = ("text",)
UNPAIRED_KEYS = ("prompt", "completion", "label")
LABEL_PAD_TOKEN_ID = -100

REASONS = ("invalid_json", "not_an_object", "missing_key", "not_a_string", "not_a_boolean", "empty", "duplicate",
           "chosen_equals_rejected", "conversation")
SHOWN_EXAMPLES = 5        # how many places a data warning names
TRUNCATION_WARNING_SHARE = 0.1    # warn when the length limits cut more than this share of the records


class DataWarning(UserWarning):
    """Records that load fine but arrive damaged at the model (see ``find_damage``)."""


class Records(list):
    """Records with where each was read (``data.jsonl:7``) and the source's name: what the loaders
    return, so a list passed on as a dataset still names a problem's file and line."""

    def __init__(self, records, wheres, source):
        super().__init__(records)
        self.wheres, self.source = list(wheres), source


class TruncationWarning(DataWarning):
    """A large share of the records lost tokens to the length limits (see ``warn_truncation``)."""


def format_prompt(prompt, template=PROMPT_TEMPLATE):
    """The prompt x as the model reads it: ``template.format(prompt=x)``, by default
    ``"Q: " + prompt + "\\nA: "`` (``tokenizer.PROMPT_TEMPLATE``; a model's own is its
    tokenizer's ``prompt_template``, see ``prompt_template_of``).

    The response y follows directly, so π(y|x) is the probability of the
    response's tokens after these ones.
    """
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
    return template.format(prompt=prompt)


def prompt_template_of(tokenizer):
    """The template a model with this tokenizer is trained and asked with (the default for a
    tokenizer that carries none)."""
    return getattr(tokenizer, "prompt_template", PROMPT_TEMPLATE)


# ---- loading and validation -------------------------------------------------------


def _sft_keys(record):
    """An SFT record is a prompt and a response, or a plain text."""
    return TEXT_KEYS if isinstance(record, dict) and "text" in record and "prompt" not in record else SFT_KEYS


def _problem(record, keys):
    """(reason, message) for the first thing wrong with one record, or None."""
    if not isinstance(record, dict):
        return "not_an_object", f"expected a JSON object with keys {list(keys)}, got {type(record).__name__}"
    for key in keys:
        if key not in record:
            need = f"{list(SFT_KEYS)} or {list(TEXT_KEYS)}" if keys == SFT_KEYS else f"{list(keys)}"
            return "missing_key", f"missing key {key!r} (a record needs {need})"
    if "label" in keys and not isinstance(record["label"], bool):
        return "not_a_boolean", f"'label' must be true or false, got {type(record['label']).__name__}"
    keys = [key for key in keys if key != "label"]
    for key in keys:
        if not isinstance(record[key], str):
            return "not_a_string", f"{key!r} must be a string, got {type(record[key]).__name__}"
    for key in keys:
        if not record[key].strip():
            return "empty", f"{key!r} is empty" + (" (only whitespace)" if record[key] else "")
    if "chosen" in keys and record["chosen"] == record["rejected"]:
        return "chosen_equals_rejected", "'chosen' and 'rejected' are the same text, so there is no preference"
    return None


_BLANK = object()        # a blank JSONL line: no record, no problem

_ONE_TURN = ("dpo_np reads one user message as the prompt (written through the prompt template) and one "
             "assistant message per response; a system message or earlier turns have no place in that "
             "format: fold them into the user message, or use plain strings")


def _message(messages, role, field):
    """The content of ``messages`` if it is exactly one message of ``role``; else (None, problem)."""
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        return None, ("not_a_string", f"{field!r} must be a string or a list of {{\"role\", \"content\"}} "
                                      f"messages, got {type(messages).__name__}")
    roles = [m.get("role") for m in messages]
    if roles != [role]:
        return None, ("conversation", f"{field!r} is a conversation of {len(messages)} message(s) with roles "
                                      f"{roles}, not one {role} message: {_ONE_TURN}")
    content = messages[0].get("content")
    if not isinstance(content, str):
        return None, ("not_a_string", f"{field!r}: the {role} message's 'content' must be a string, got "
                                      f"{type(content).__name__}")
    return content, None


def _read_conversation(record, kind):
    """TRL's conversational record as a plain one ((record, None)), or (record, problem) when it
    cannot be represented; a plain record comes back as it is (see the module docstring)."""
    if not isinstance(record, dict):
        return record, None
    out = dict(record)
    if kind == "sft":
        if "messages" in out and "prompt" not in out and "text" not in out:
            messages = out.pop("messages")
            roles = [m.get("role") if isinstance(m, dict) else None for m in messages] \
                if isinstance(messages, list) else type(messages).__name__
            if roles != ["user", "assistant"]:
                return record, ("conversation", f"'messages' holds roles {roles}, not one user message and "
                                                f"its assistant answer: {_ONE_TURN}")
            out["prompt"], out["response"] = messages[:1], messages[1:]
        if "completion" in out and "response" not in out:
            out["response"] = out.pop("completion")        # TRL's name for the response
        responses = ("response",)
    elif kind == "unpaired":
        responses = ("completion",)
    else:
        if "prompt" not in out and all(isinstance(out.get(k), list) for k in ("chosen", "rejected")):
            turns = [out[k][:-1] for k in ("chosen", "rejected")]     # TRL's implicit prompt
            if turns[0] != turns[1]:
                return record, ("conversation", "'chosen' and 'rejected' start with different user turns, so "
                                                "they answer different prompts")
            out["prompt"], out["chosen"], out["rejected"] = turns[0], out["chosen"][-1:], out["rejected"][-1:]
        responses = ("chosen", "rejected")
    for field, role in (("prompt", "user"),) + tuple((r, "assistant") for r in responses):
        if isinstance(out.get(field), list):
            out[field], problem = _message(out[field], role, field)
            if problem is not None:
                return record, problem
    return out, None


def _entries(source):
    """Yield (where, line_or_index, record, problem) for every record of ``source``.

    ``problem`` is set here only for what must be caught while reading
    (invalid JSON or UTF-8); blank lines are yielded with record ``_BLANK``.
    """
    if isinstance(source, (list, tuple)):
        wheres = source.wheres if isinstance(source, Records) else None
        for i, record in enumerate(source):
            yield (wheres[i] if wheres else f"records[{i}]"), i, record, None
        return
    path = os.fspath(source)
    require_file(path, "JSONL file")
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            where = f"{path}:{lineno}"
            try:
                text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as err:
                yield where, lineno, None, ("invalid_json", f"not UTF-8 ({err})")
                continue
            if not text.strip():
                yield where, lineno, _BLANK, None
                continue
            try:
                record = loads_json(text)
            except json.JSONDecodeError as err:
                yield where, lineno, None, ("invalid_json", f"not valid JSON ({json_error(err).split(' at line')[0]}"
                                                            f" at column {err.colno})")
                continue
            except DuplicateKeyError as err:
                yield where, lineno, None, ("invalid_json", f"ambiguous JSON: {err}, so which value is meant "
                                                            f"is unclear")
                continue
            except RecursionError:      # [[[[… deeper than the reader's recursion limit
                yield where, lineno, None, ("invalid_json", "not readable as JSON: nested too deeply")
                continue
            yield where, lineno, record, None


def _load(source, kind, skip_invalid, locations=False):
    """The loader the record kinds ("preference", "sft", "unpaired") share; see the module docstring
    for the rules. ``locations``: also return where each kept record was read (``data.jsonl:7``, ``records[6]``)."""
    keys = {"preference": PREFERENCE_KEYS, "unpaired": UNPAIRED_KEYS}.get(kind, _sft_keys)
    if isinstance(source, Records):
        name = source.source
    elif isinstance(source, (list, tuple)):
        name = f"records (a list of {len(source)})"
    elif isinstance(source, (str, os.PathLike)):
        name = os.fspath(source)
    else:
        raise TypeError(f"source must be a path to a .jsonl file or a list of dicts, got {type(source).__name__}")
    records, wheres, problems, first_seen, repeats = [], [], [], {}, []
    read = blank = 0
    for where, line, record, problem in _entries(source):
        if record is _BLANK:
            blank += 1
            continue
        read += 1
        if problem is None:
            record, problem = _read_conversation(record, kind)
        record_keys = keys(record) if callable(keys) else keys
        if problem is None:
            problem = _problem(record, record_keys)
        if problem is None:
            identity = tuple(record[k] for k in record_keys)
            if identity in first_seen and kind == "sft":
                repeats.append((where, first_seen[identity]))         # weighed more on purpose: kept
            elif identity in first_seen:
                problem = ("duplicate", f"duplicate of the record at {first_seen[identity]}")
            else:
                first_seen[identity] = where
        if problem is not None:
            reason, message = problem
            message = f"{where}: {message}"
            if not skip_invalid:
                raise ValueError(message + " (pass skip_invalid=True to skip invalid records with a report)")
            problems.append({"where": where, "line": line, "reason": reason, "message": message})
            continue
        records.append(dict(record))
        wheres.append(where)
    if not records and not skip_invalid:
        raise ValueError(f"{name}: holds no records")
    _warn_repeats(repeats, name)
    counts = {}
    for p in problems:
        counts[p["reason"]] = counts.get(p["reason"], 0) + 1
    report = {"source": name, "read": read, "kept": len(records), "blank_lines": blank,
              "skipped": counts, "problems": problems, "duplicates": len(repeats)}
    records = Records(records, wheres, name)
    if locations:
        return records, wheres, name
    return (records, report) if skip_invalid else records


def _warn_repeats(repeats, name):
    """SFT records that repeat an earlier one: kept (a repeat weighs a line more), counted and warned."""
    if repeats:
        first = ", ".join(f"{where} repeats {earlier}" for where, earlier in repeats[:SHOWN_EXAMPLES])
        verb = "repeats" if len(repeats) == 1 else "repeat"
        warnings.warn(f"{name}: {plural(len(repeats), 'record')} {verb} an earlier one (prompt and response); kept, "
                      f"so each is trained on once more (up-weighting); {first}", DataWarning, stacklevel=4)


def load_preferences(source, skip_invalid=False):
    """Preference records ``{"prompt": x, "chosen": y_w, "rejected": y_l}``.

    ``source`` is a path to a JSONL file or a list of dicts. Returns the list
    of records; with ``skip_invalid=True`` returns ``(records, report)`` (see
    the module docstring). Raises ``ValueError`` naming the file and line (or
    list index) of the first invalid record otherwise, and for a source with
    no records at all.
    """
    return _load(source, "preference", skip_invalid)


def load_sft(source, skip_invalid=False):
    """SFT records ``{"prompt": x, "response": y}`` or ``{"text": t}`` (one file may mix them),
    with the same rules and return values as ``load_preferences``."""
    return _load(source, "sft", skip_invalid)


def load_unpaired(source, skip_invalid=False):
    """Unpaired records ``{"prompt": x, "completion": y, "label": true/false}`` (KTO's data: a response
    marked desirable or undesirable), with the same rules and return values as ``load_preferences``."""
    return _load(source, "unpaired", skip_invalid)


def load_located(source, kind):
    """``(records, wheres, name)``: the records of ``load_preferences`` (``kind`` "preference"),
    ``load_sft`` ("sft") or ``load_unpaired`` ("unpaired"), where each was read (``data.jsonl:7``,
    ``records[6]``), and the source's name, so that a problem found later (in tokenizing) can name its line."""
    return _load(source, kind, False, locations=True)


# ---- tokenization ------------------------------------------------------------------


def _check_lengths(max_length, max_prompt_length):
    checks.integer(max_length, "max_length", low=1)
    checks.integer(max_prompt_length, "max_prompt_length", low=1)
    if max_prompt_length >= max_length:
        raise ValueError(f"max_prompt_length ({max_prompt_length}) must be smaller than max_length "
                         f"({max_length}), so every response keeps at least one token")


def _check_record(record, keys, where):
    problem = _problem(record, keys)
    if problem is not None:
        raise ValueError(f"{where}: {problem[1]}")


def _encode(tokenizer, text, what, where):
    """``tokenizer.encode(text)``; a text it cannot read (a character outside a CharTokenizer's
    vocabulary) is named by ``where`` (file:line) and ``what`` (the field), at positions of ``text``."""
    try:
        return tokenizer.encode(text)
    except ValueError as err:
        # the tokenizer's own words, with the byte tokenizer's full name where it suggests it
        detail = str(err).removeprefix("text: ").replace("ByteTokenizer", "dpo_np.tokenizer.ByteTokenizer", 1)
        raise ValueError(f"{where}: {what} cannot be tokenized (positions count the characters of {what} "
                         f"as written): {detail}") from None


def _prompt_ids(tokenizer, prompt, max_prompt_length, where="record", cut=None):
    # keep the END of the prompt: the question and the "A: " cue sit there
    template = prompt_template_of(tokenizer)
    try:
        ids = tokenizer.encode(format_prompt(prompt, template))
    except ValueError:
        # name the culprit with positions in its own text, not in the templated prompt
        _encode(tokenizer, prompt, "'prompt'", where)
        _encode(tokenizer, format_prompt("", template), f"the prompt template {template!r}", where)
        raise
    return _keep(ids, max_prompt_length, "prompt", cut, end=True)


def _response_ids(tokenizer, response, budget, field="response", where="record", cut=None):
    # keep the START of the response; a cut response loses its eos, as in the
    # standard trainers (the model is not taught to stop where the cut fell)
    ids = _encode(tokenizer, response, repr(field), where) + [tokenizer.eos_token_id]
    return _keep(ids, budget, field, cut)


def _keep(ids, limit, field, cut, end=False):
    """The first (``end``: last) ``limit`` of ``ids``; ``cut[field]`` = (tokens removed, tokens there were)."""
    if cut is not None:
        cut[field] = (max(0, len(ids) - limit), len(ids))
    return ids[-limit:] if end else ids[:limit]


def tokenize_preference(tokenizer, record, max_length, max_prompt_length, where="record", cut=None):
    """Token ids of x, y_w and y_l, tokenized SEPARATELY.

    The prompt ``format_prompt(x, template)`` (the tokenizer's ``prompt_template``) and each
    response are encoded on their own
    and only then concatenated, so no token straddles the prompt/response
    boundary and π(y|x) scores exactly the response's tokens. Each response
    ends with ``tokenizer.eos_token_id``.

    Truncation: the prompt keeps its last ``max_prompt_length`` tokens; each
    response keeps its first ``max_length - len(prompt_ids)`` tokens, so
    ``len(prompt_ids) + len(response_ids) <= max_length``. Because
    ``max_prompt_length < max_length`` is required, a response always keeps
    at least one token (its eos, if the text is empty): a response is never
    truncated to nothing.

    Returns ``{"prompt_ids", "chosen_ids", "rejected_ids"}`` (lists of int). An invalid record,
    or a text the tokenizer cannot read, is a ValueError naming ``where`` (``data.jsonl:7``, as
    ``load_located`` gives it), the field, and the position in that field's own text. ``cut``: a
    dict that receives, per field, (tokens the limits removed, tokens there were), eos included
    (``truncation_report`` sums them).
    """
    _check_lengths(max_length, max_prompt_length)
    _check_record(record, PREFERENCE_KEYS, where)
    prompt_ids = _prompt_ids(tokenizer, record["prompt"], max_prompt_length, where, cut)
    budget = max_length - len(prompt_ids)
    return {"prompt_ids": prompt_ids,
            "chosen_ids": _response_ids(tokenizer, record["chosen"], budget, "chosen", where, cut),
            "rejected_ids": _response_ids(tokenizer, record["rejected"], budget, "rejected", where, cut)}


def tokenize_sft(tokenizer, record, max_length, max_prompt_length, where="record", cut=None):
    """``{"prompt_ids", "response_ids"}`` for an SFT record, with the same
    boundary, truncation, error and ``cut`` rules as ``tokenize_preference``.

    A ``{"text": t}`` record has no prompt: its "prompt" is the end token alone, as GPT-2 starts a
    document after ``<|endoftext|>``, so every token of t, the first included, is a target.
    """
    _check_lengths(max_length, max_prompt_length)
    keys = _sft_keys(record)
    _check_record(record, keys, where)
    if keys == TEXT_KEYS:
        return {"prompt_ids": [tokenizer.eos_token_id],
                "response_ids": _response_ids(tokenizer, record["text"], max_length - 1, "text", where, cut)}
    prompt_ids = _prompt_ids(tokenizer, record["prompt"], max_prompt_length, where, cut)
    return {"prompt_ids": prompt_ids,
            "response_ids": _response_ids(tokenizer, record["response"], max_length - len(prompt_ids),
                                          "response", where, cut)}


def tokenize_unpaired(tokenizer, record, max_length, max_prompt_length, where="record", cut=None):
    """``{"prompt_ids", "completion_ids", "label"}`` for an unpaired record, with the same boundary,
    truncation, error and ``cut`` rules as ``tokenize_preference``."""
    _check_lengths(max_length, max_prompt_length)
    _check_record(record, UNPAIRED_KEYS, where)
    prompt_ids = _prompt_ids(tokenizer, record["prompt"], max_prompt_length, where, cut)
    return {"prompt_ids": prompt_ids, "label": record["label"],
            "completion_ids": _response_ids(tokenizer, record["completion"], max_length - len(prompt_ids),
                                            "completion", where, cut)}


# ---- damage that tokenizing does -------------------------------------------------------


def find_damage(records, features):
    """What tokenizing did to ``records`` that the records themselves do not show, by index:

    - ``identical_pairs`` [i]: chosen_ids == rejected_ids, though the texts differ (a load checks
      that), because they differ only past the cut or only in characters an unk token swallows;
    - ``prompt_collisions`` [(i, j)]: record i's prompt differs from record j's (the first record
      with these tokens, j < i), yet the truncated prompt tokens are the same.

    A {"text"} SFT record has no prompt and takes part in neither.
    """
    identical = [i for i, f in enumerate(features) if "chosen_ids" in f and f["chosen_ids"] == f["rejected_ids"]]
    first, collisions = {}, []
    for i, (record, f) in enumerate(zip(records, features)):
        if "prompt" in record:
            j = first.setdefault(tuple(f["prompt_ids"]), i)
            if records[j]["prompt"] != record["prompt"]:
                collisions.append((i, j))
    return {"identical_pairs": identical, "prompt_collisions": collisions}


def _places(items):
    more = f" and {len(items) - SHOWN_EXAMPLES} more" if len(items) > SHOWN_EXAMPLES else ""
    return ", ".join(items[:SHOWN_EXAMPLES]) + more


def warn_damage(damage, wheres, name, max_length, max_prompt_length, dropped=False):
    """A ``DataWarning`` for each kind of damage ``find_damage`` found, with the count and the first
    places (``wheres[i]``, from ``load_located``); ``dropped``: the identical pairs were left out."""
    n, identical, collisions = len(wheres), damage["identical_pairs"], damage["prompt_collisions"]
    if identical:
        fix = ("they were left out (drop_identical_pairs=True)" if dropped else
               "raise max_length, use a tokenizer that reads every character (dpo_np.tokenizer.ByteTokenizer), "
               "or set drop_identical_pairs=True to leave them out")
        warnings.warn(f"{name}: {len(identical)} of {plural(n, 'pair')} have the same tokens for chosen and rejected after "
                      f"tokenization (max_length={max_length}, max_prompt_length={max_prompt_length}), at "
                      f"{_places([wheres[i] for i in identical])}: the texts differ only past the cut, or only in "
                      f"characters the tokenizer's unk token stands for. Such a pair has no preference (its "
                      f"margin is 0 whatever the policy): it trains at loss log 2 and counts as wrong in the "
                      f"reward accuracy; {fix}", DataWarning, stacklevel=4)
    if collisions:
        warnings.warn(f"{name}: {len(collisions)} of {plural(n, 'record')} have a prompt that differs from an earlier "
                      f"record's but has the same tokens once cut to its last max_prompt_length="
                      f"{max_prompt_length}, at {_places([f'{wheres[i]} (as {wheres[j]})' for i, j in collisions])}: "
                      f"the model cannot tell these questions apart; raise max_prompt_length or shorten the "
                      f"prompts", DataWarning, stacklevel=4)


def truncation_report(cuts):
    """What the length limits removed, from the ``cut`` dicts of ``tokenize_preference``/``_sft``
    (one per record): ``{"records", "records_cut", "prompts_cut", "prompt_tokens_removed",
    "prompt_tokens", "responses_cut", "response_tokens_removed", "response_tokens"}``. A response is
    chosen, rejected, response or text; its tokens count its end token."""
    report = dict.fromkeys(("records_cut", "prompts_cut", "prompt_tokens_removed", "prompt_tokens",
                            "responses_cut", "response_tokens_removed", "response_tokens"), 0)
    report["records"] = len(cuts)
    for cut in cuts:
        report["records_cut"] += any(removed for removed, _ in cut.values())
        for field, (removed, total) in cut.items():
            side = "prompt" if field == "prompt" else "response"
            report[f"{side}s_cut"] += removed > 0
            report[f"{side}_tokens_removed"] += removed
            report[f"{side}_tokens"] += total
    return report


def describe_truncation(report):
    """What ``truncation_report`` counted, in words: "3 of 16 records (2 prompts lost 41 of 612
    tokens, 3 responses 310 of 2,048)"."""
    r = report
    return (f"{r['records_cut']:,} of {plural(r['records'], 'record')} ({plural(r['prompts_cut'], 'prompt')} lost "
            f"{r['prompt_tokens_removed']:,} of {plural(r['prompt_tokens'], 'token')}, "
            f"{plural(r['responses_cut'], 'response')} {r['response_tokens_removed']:,} of {r['response_tokens']:,})")


def warn_truncation(report, name, max_length, max_prompt_length, tokenizer=None):
    """A ``TruncationWarning`` (a ``DataWarning``) when the limits cut more than
    ``TRUNCATION_WARNING_SHARE`` of the records:
    what was lost is never trained on, and a response cut before its end is never taught to stop."""
    if report["records_cut"] <= TRUNCATION_WARNING_SHARE * report["records"]:
        return
    bytes_note = (" (a token of the byte tokenizer is a byte: 1 per ASCII character, 2 or 3 for most others)"
                  if type(tokenizer).__name__ == "ByteTokenizer" else "")
    warnings.warn(f"{name}: the length limits max_length={max_length} (--max-length) and max_prompt_length="
                  f"{max_prompt_length} (--max-prompt-length) cut {describe_truncation(report)}{bytes_note}. "
                  f"The prompt keeps its end and a response its start; what is cut is never trained on and a "
                  f"cut response is not taught to stop. Raise the limits (a new model's context is its "
                  f"max_length) or shorten the texts", TruncationWarning, stacklevel=4)


# ---- collation ---------------------------------------------------------------------


def _pad(prompts, responses, pad_token_id, label_pad_token_id):
    """Right-padded (N, T) input_ids, attention_mask and labels for N prompt+response rows.

    labels[i, t] = input_ids[i, t] on response tokens and ``label_pad_token_id``
    on prompt tokens and padding. They stay aligned with input_ids: the
    log-prob function drops the first label and the last logit, so the logit
    at t scores the label at t+1 (the notes' ``get_batch_logps``).
    """
    checks.integer(pad_token_id, "pad_token_id")
    checks.integer(label_pad_token_id, "label_pad_token_id")
    N = len(prompts)
    T = max(len(p) + len(r) for p, r in zip(prompts, responses))
    input_ids = np.full((N, T), pad_token_id, dtype=np.int64)            # (N, T)
    attention_mask = np.zeros((N, T), dtype=np.int64)                     # (N, T)
    labels = np.full((N, T), label_pad_token_id, dtype=np.int64)          # (N, T)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        P, R = len(p), len(r)
        input_ids[i, :P] = p
        input_ids[i, P:P + R] = r
        attention_mask[i, :P + R] = 1
        labels[i, P:P + R] = r
    if any(label_pad_token_id in r for r in responses):
        # a real target equal to the masking value would be silently masked out
        raise ValueError(f"label_pad_token_id ({label_pad_token_id}) is the id of a real response token; "
                         f"use a negative value such as -100")
    return {"input_ids": backend.asarray(input_ids, dtype=np.int64),
            "attention_mask": backend.asarray(attention_mask, dtype=np.int64),
            "labels": backend.asarray(labels, dtype=np.int64)}


def _ids(features, i, key):
    f = features[i]
    if not isinstance(f, dict) or key not in f:
        raise ValueError(f"features[{i}]: missing {key!r}")
    ids = f[key]
    if any(isinstance(t, bool) or not isinstance(t, (int, np.integer)) or t < 0 for t in ids):
        raise ValueError(f"features[{i}][{key!r}]: ids must be non-negative ints")
    return list(ids)


def _check_features(features):
    if not isinstance(features, (list, tuple)) or len(features) == 0:
        raise ValueError(f"features must be a non-empty list, got {features!r:.60}")


def collate_preferences(features, pad_token_id, label_pad_token_id=LABEL_PAD_TOKEN_ID):
    """One concatenated forward for B preference pairs, as the DPO reference trainer does.

    Returns int64 arrays (on the backend in use), each (2B, T):

    - ``input_ids``: rows 0..B-1 are x ⊕ y_w (chosen), rows B..2B-1 are
      x ⊕ y_l (rejected), in the order of ``features``; right-padded with
      ``pad_token_id``; T is the longest row;
    - ``attention_mask``: 1 on real tokens, 0 on padding;
    - ``labels``: input_ids with ``label_pad_token_id`` on the prompt tokens
      and the padding, so only the response's tokens count in log π(y|x).

    Row i and row B+i share their prompt, so ``logps[:B] - logps[B:]``
    compares y_w and y_l for the same x.
    """
    _check_features(features)
    n = len(features)
    prompts = [_ids(features, i, "prompt_ids") for i in range(n)]
    chosen = [_ids(features, i, "chosen_ids") for i in range(n)]
    rejected = [_ids(features, i, "rejected_ids") for i in range(n)]
    return _pad(prompts + prompts, chosen + rejected, pad_token_id, label_pad_token_id)


def collate_unpaired(features, pad_token_id, label_pad_token_id=LABEL_PAD_TOKEN_ID, completions=None):
    """(B, T) ``input_ids``, ``attention_mask``, ``labels`` of x_i ⊕ y_i for unpaired features, with the
    layout rules of ``collate_preferences``; ``completions``: an order of the features whose completions
    to put after the prompts instead (KTO's mismatched rows x_i ⊕ y_{order[i]})."""
    _check_features(features)
    n = len(features)
    prompts = [_ids(features, i, "prompt_ids") for i in range(n)]
    order = range(n) if completions is None else completions
    return _pad(prompts, [_ids(features, int(j), "completion_ids") for j in order], pad_token_id, label_pad_token_id)


def collate_sft(features, pad_token_id, label_pad_token_id=LABEL_PAD_TOKEN_ID):
    """(B, T) ``input_ids``, ``attention_mask``, ``labels`` for SFT features,
    with the same layout rules as ``collate_preferences``: the loss counts
    only the response's tokens."""
    _check_features(features)
    n = len(features)
    prompts = [_ids(features, i, "prompt_ids") for i in range(n)]
    responses = [_ids(features, i, "response_ids") for i in range(n)]
    return _pad(prompts, responses, pad_token_id, label_pad_token_id)


# ---- batching and splitting --------------------------------------------------------


def batch_indices(n, batch_size, seed=None, shuffle=True, drop_last=False):
    """An iterator of index arrays covering ``range(n)`` once (one epoch).

    With ``shuffle`` (the default) the order is a permutation drawn from
    ``seed``, which is then required: the same seed gives the same batches, so
    pass ``seed + epoch`` for a new order each epoch. ``seed`` may be left out
    only with ``shuffle=False`` (the order 0..n−1). The last batch is smaller
    unless ``drop_last``. Arguments are checked at the call, not at the first batch.
    """
    checks.integer(batch_size, "batch_size", low=1)
    checks.integer(n, "n", low=0)
    if shuffle and seed is None:
        raise ValueError("seed is required to shuffle (an int: the same seed gives the same order); "
                         "pass seed=..., or shuffle=False for the order 0..n-1")
    order = backend.rng(seed).permutation(n) if shuffle else np.arange(n)
    stop = n - n % batch_size if drop_last else n
    return (order[start:start + batch_size] for start in range(0, stop, batch_size))


def batches(dataset, batch_size, seed=None, shuffle=True, drop_last=False, collate=None):
    """An iterator of lists of items of ``dataset`` (``collate(items)`` if given), one
    epoch, in the order of ``batch_indices`` (so ``seed`` is required to shuffle)."""
    order = batch_indices(len(dataset), batch_size, seed, shuffle, drop_last)
    return (_items(dataset, idx, collate) for idx in order)


def _items(dataset, idx, collate):
    items = [dataset[int(i)] for i in idx]
    return items if collate is None else collate(items)


def split(records, eval_fraction, seed, key="prompt"):
    """``(train, eval)``: a seeded split that never puts one prompt in both.

    Records are grouped by ``record[key]`` (``key=None``: each record is its
    own group), ``round(eval_fraction * groups)`` groups go to eval, and both
    parts keep the input order. The same seed gives the same split.
    """
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction!r}")
    groups = {}
    for i, r in enumerate(records):
        if key is not None and (not isinstance(r, dict) or key not in r):
            raise ValueError(f"records[{i}] has no key {key!r} to group by "
                             f"(pass key=None to split record by record)")
        groups.setdefault(i if key is None else r[key], []).append(i)
    names = list(groups)
    n_eval = int(round(eval_fraction * len(names)))
    if not 0 < n_eval < len(names):
        raise ValueError(f"eval_fraction={eval_fraction} of {len(names)} groups leaves an empty split "
                         f"({n_eval} for eval)")
    chosen = backend.rng(seed).permutation(len(names))[:n_eval]
    in_eval = {i for g in chosen for i in groups[names[g]]}
    train = [r for i, r in enumerate(records) if i not in in_eval]
    held_out = [r for i, r in enumerate(records) if i in in_eval]
    return train, held_out
