"""A small real BPE tokenizer (built with `tokenizers`, saved as a HF directory) for tests."""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

# A ChatML template of the Qwen2 family, written for these tests.
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

# A Llama-3-style template (header tokens, turns closed by <|eot_id|>), written for these tests.
LLAMA3 = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>"
    "\n\n{{ m['content'] | trim }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}"
    "<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
LLAMA3_SPECIALS = ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                   "<|end_header_id|>", "<|eot_id|>")

CORPUS = [
    "Let x = 3. Then x + 4 = 7, so the answer is \\boxed{7}.",
    "```python\nprint(2 ** 10)\n```\n```output\n1024\n```",
    "We compute the sum of the first 100 integers: 5050.",
    "import sympy\nx = sympy.symbols('x')\nprint(sympy.solve(x**2 - 4, x))",
]


def build_tokenizer(directory, vocab_size: int = 300, chat_template: str | None = CHATML,
                    specials=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
                    eos_token: str = "<|im_end|>", bos_token: str | None = None) -> str:
  """Trains a byte-level BPE on a tiny corpus and saves it with special tokens and template.

  The defaults are a Qwen2 chat tokenizer (EOS = <|im_end|>); a Qwen2 *base* tokenizer is
  eos_token="<|endoftext|>", a Llama 3 one specials=LLAMA3_SPECIALS, chat_template=LLAMA3,
  eos_token="<|end_of_text|>" (base) or "<|eot_id|>" (instruct), bos "<|begin_of_text|>".
  """
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  specials = list(specials)
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(CORPUS * 20, trainer)
  fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos_token,
                                 bos_token=bos_token, unk_token=None)
  if chat_template:
    fast.chat_template = chat_template
  fast.save_pretrained(str(directory))
  return str(directory)
