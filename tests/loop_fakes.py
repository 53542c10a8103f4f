"""A scripted engine for loop tests: real tokenizer, real token ids, deterministic texts.

A random tiny model never writes a valid question, so the full iteration (influence, generator update,
solver update) could not be exercised with it. ScriptedEngine keeps everything real except the text:
generator prompts get canned responses (valid questions with right or wrong keys, garbage, 3 choices),
solver prompts get "... \\boxed{L}" with a letter drawn from the prompt's seed, so correctness varies.
The sampler log-probs are a fixed -1.0 per token, which keeps the TIS weights active (min(pi_old / e^-1, 2)).
Under FSDP2 the real HFEngine is still called once per generate (its weight gather is a collective).
"""
import json
import random

from questions import GENERATOR_SYSTEM_PROMPT
from records import Sample
from rollout import HFEngine
from records import render_prompt

CANNED = [
    json.dumps({"question_text": "Ann has 3 pears and buys 2 more. How many now?",
                "choices": ["4", "5", "6", "1"], "ground_truth": "5"}),
    json.dumps({"question_text": "Bo has 7 nuts and loses 4. How many left?",
                "choices": ["3", "11", "2", "4"], "ground_truth": "3"}),
    json.dumps({"question_text": "Cy has 9 figs and sells 5. How many left?",
                "choices": ["4", "14", "5", "3"], "ground_truth": "14"}),       # a wrong key
    "I could not think of a question.",
    json.dumps({"question_text": "Too few choices?", "choices": ["1", "2", "3"], "ground_truth": "1"}),
]


WORDS = ["first", "add", "then", "take", "away", "so", "the", "total", "is", "left", "count", "each", "more"]


class ScriptedEngine(HFEngine):
    def generate(self, prompts, params, seeds=None):
        self.generate_ids([[1]], params.__class__(n=1, max_new_tokens=1, seed=0))   # keep FSDP ranks in step
        out = []
        for i, msgs in enumerate(prompts):
            rng = random.Random(seeds[i] if seeds is not None else i)
            ids = render_prompt(self.tokenizer, msgs)
            samples = []
            for _ in range(params.n):
                if msgs[0]["content"] == GENERATOR_SYSTEM_PROMPT:
                    text = rng.choice(CANNED)
                else:
                    n_choices = msgs[1]["content"].count(") ")
                    # varied reasoning, like real samples: rollouts of one question that differ in a
                    # single token would make the Dr.GRPO gradient sum_i A_i grad log p_i a difference of
                    # nearly equal vectors, which fp32 resolves to only a few digits
                    words = " ".join(rng.choice(WORDS) for _ in range(rng.randrange(3, 12)))
                    text = f"{words}. \\boxed{{{'ABCD'[rng.randrange(min(n_choices, 4) or 1)]}}}"
                resp = self.tokenizer.encode(text, add_special_tokens=False)[:params.max_new_tokens - 1]
                resp = resp + [self.tokenizer.eos_token_id]
                samples.append(Sample(prompt_ids=ids, response_ids=resp, logprobs=[-1.0] * len(resp),
                                      finish_reason="stop", text=text))
            out.append(samples)
        return out


def short_data(tmp):
    """Short documents and dev questions (byte-level prompts stay small)."""
    docs = tmp / "docs.jsonl"
    docs.write_text("".join(json.dumps({"doc_id": f"d{i}", "text": f"Farm {i} has {i + 2} pears."}) + "\n"
                            for i in range(6)))
    dev = tmp / "dev.jsonl"
    dev.write_text("".join(json.dumps({"id": f"q{i}", "question": f"{i} + 1 = ?",
                                       "choices": [str(i + 1), str(i), str(i + 2), str(i + 3)],
                                       "answer": "A"}) + "\n" for i in range(4)))
    return docs, dev


def loop_args(tmp, out, extra=()):
    docs, dev = short_data(tmp)
    return ["--preset", "tiny", f"--documents={docs}", f"--dev={dev}", f"--out_dir={out}", "--doc_batch_size=4",
            "--n_gen=4", "--n_solver=4", "--gen_max_new_tokens=200", "--solver_max_new_tokens=16",
            "--ppo_minibatch_groups=2", "--micro_batch=4", "--dev_limit=4", "--influence_chunk=2", *extra]
