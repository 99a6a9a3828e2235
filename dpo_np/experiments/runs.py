"""The command-line runs: each builds a model and data, trains, and reports what it measured.

    python -m dpo_np sft      # run_sft(): the toy corpus, a small GPT, a checkpoint, greedy answers
"""

import time

from dpo_np.experiments import toy_preferences
from dpo_np.generate import greedy_answer
from dpo_np.model import GPT, GPTConfig
from dpo_np.sft import SFTConfig, SFTTrainer
from dpo_np.tokenizer import CharTokenizer


def run_sft(output_dir="runs/sft", max_steps=2000, learning_rate=3e-3, batch_size=16, n_layer=3, n_head=4,
            n_embd=96, block_size=160, seed=0, data_seed=0, show_progress=True, print_fn=print):
    """Supervised fine-tuning of a small GPT on ``toy_preferences.sft_corpus(data_seed)``; the command ``sft``.

    Builds the character tokenizer from ``toy_preferences.vocabulary_text()``, trains for ``max_steps``
    (cosine schedule), saves the checkpoint ``output_dir/final`` (metrics in
    ``output_dir/metrics.jsonl``), then prints the greedy answers to the notes' three prompts.
    Returns ``{"model", "tokenizer", "trainer", "result", "answers", "checkpoint", "seconds"}``.
    """
    tokenizer = CharTokenizer.from_corpus(toy_preferences.vocabulary_text())
    config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=block_size, n_layer=n_layer,
                       n_head=n_head, n_embd=n_embd)
    model = GPT(config, seed=seed)
    corpus = toy_preferences.sft_corpus(data_seed)
    args = SFTConfig(output_dir=output_dir, max_steps=max_steps, learning_rate=learning_rate,
                     per_device_train_batch_size=batch_size, max_length=block_size, seed=seed,
                     show_progress=show_progress)
    trainer = SFTTrainer(model, args, train_dataset=corpus, tokenizer=tokenizer)
    print_fn(f"sft: {len(corpus)} examples, GPT {n_layer} layers × {n_embd} channels "
             f"({model.num_params():,} parameters), {trainer.total_steps} steps")
    start = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - start
    print_fn(f"sft: final training loss {result['metrics'].get('loss', float('nan')):.4f} "
             f"in {seconds:.0f} s; checkpoint: {trainer.final_checkpoint}")
    answers = {}
    for prompt in toy_preferences.NOTES_PROMPTS:
        answers[prompt] = greedy_answer(model, tokenizer, prompt)
        print_fn(f"  Q: {prompt}\n  A: {answers[prompt]}")
    return {"model": model, "tokenizer": tokenizer, "trainer": trainer, "result": result,
            "answers": answers, "checkpoint": trainer.final_checkpoint, "seconds": seconds}
