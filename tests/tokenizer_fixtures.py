"""A small real BPE tokenizer (built with `tokenizers`, saved as a HF directory) for tests."""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

# A ChatML template of the Qwen2 family, written for these tests.
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

CORPUS = [
    "Let x = 3. Then x + 4 = 7, so the answer is \\boxed{7}.",
    "```python\nprint(2 ** 10)\n```\n```output\n1024\n```",
    "We compute the sum of the first 100 integers: 5050.",
    "import sympy\nx = sympy.symbols('x')\nprint(sympy.solve(x**2 - 4, x))",
]


def build_tokenizer(directory, vocab_size: int = 300, chat_template: str | None = CHATML) -> str:
  """Trains a byte-level BPE on a tiny corpus and saves it with special tokens and template."""
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(CORPUS * 20, trainer)
  fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                 bos_token=None, unk_token=None)
  if chat_template:
    fast.chat_template = chat_template
  fast.save_pretrained(str(directory))
  return str(directory)
