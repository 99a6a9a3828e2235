"""dpo_np: Direct Preference Optimization from first principles, in NumPy.

The package mirrors Umar Jamil's lecture notes on DPO (CC BY-NC 4.0): each section of the notes
has a module, a test that proves its equations, and a command or notebook that shows it.

    from dpo_np import GPT, GPTConfig, ByteTokenizer, DPOConfig, DPOTrainer

    dpo_trainer = DPOTrainer(model, model_ref, args=DPOConfig(...), beta=0.1,
                             train_dataset=train_dataset, tokenizer=tokenizer)
    dpo_trainer.train()

The names below are the main public ones, each defined in the module named beside it (see
ARCHITECTURE.md for the map). Importing the package loads NumPy and nothing else; plotting,
notebooks and the GPU backend load when used.
"""

# the engine
from dpo_np.autograd import Tensor, no_grad
from dpo_np.backend import set_backend
# §1 language models
from dpo_np.model import GPT, GPTConfig
from dpo_np.tokenizer import BPETokenizer, ByteTokenizer, CharTokenizer
from dpo_np.generate import beam_search, generate, greedy_answer
# §2–4 Bradley–Terry, the RLHF objective and its optimum π*
from dpo_np.rlhf import (bradley_terry, bradley_terry_loss, implicit_reward, kl_divergence, log_partition,
                         optimal_policy, rlhf_objective)
from dpo_np.reward_model import RewardConfig, RewardModel, RewardTrainer
# §5–6 the DPO loss, log-probabilities, the trainer
from dpo_np.losses import dpo_loss
from dpo_np.logprobs import get_batch_logps
from dpo_np.trainers import DPOConfig, DPOTrainer
from dpo_np.data import load_preferences, load_sft
from dpo_np.sft import SFTConfig, SFTTrainer

__version__ = "0.1.0"

__all__ = ["Tensor", "no_grad", "set_backend", "load_preferences", "load_sft", "beam_search", "generate",
           "greedy_answer", "get_batch_logps", "dpo_loss", "GPT", "GPTConfig", "RewardConfig", "RewardModel",
           "RewardTrainer", "bradley_terry", "bradley_terry_loss", "implicit_reward", "kl_divergence",
           "log_partition", "optimal_policy", "rlhf_objective", "SFTConfig", "SFTTrainer", "CharTokenizer",
           "ByteTokenizer", "BPETokenizer", "DPOConfig", "DPOTrainer"]
