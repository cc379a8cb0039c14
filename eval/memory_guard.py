"""How fast a prompt that cannot fit is refused by the memory guard of a method without gradients.

    python eval/memory_guard.py   # SmolLM2, a 4161-token prompt, method="attention"
"""

import time

import torch

import llm_attrib
from llm_attrib import Attributor, InvalidInputError

torch.set_num_threads(1)
model, tokenizer = llm_attrib.zoo.load("smollm2")
prompt = " ".join(["the river runs past the old mill and"] * 520)
print("prompt tokens", len(tokenizer(prompt)["input_ids"]))
start = time.perf_counter()
try:
    Attributor(model, tokenizer, show_progress=False).explain(prompt, " water", method="attention")
    print(f"ran in {time.perf_counter() - start:.1f} s")
except InvalidInputError as error:
    print(f"refused after {time.perf_counter() - start:.1f} s: {error}")
