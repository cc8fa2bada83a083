"""finetune-llm end to end on a tiny Llama the test builds (random weights, a BPE tokenizer trained here):
the Q&A set is built from the species table, the loss goes down, and the adapter loads back with peft."""
from __future__ import annotations

import json

import pytest
import torch

from birdsdao.train.__main__ import main
from birdsdao.train.finetune_llm import REFERENCE, build_dataset, encode, qa_for_species, species_rows

# peft 0.21 still uses transformers' renamed `is_gradient_checkpointing` and `past_key_values` (prefix
# tuning): third-party deprecations, not ours.
pytestmark = [pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"),
              pytest.mark.filterwarnings("ignore:`past_key_values` is deprecated:FutureWarning")]


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = tmp_path_factory.mktemp("tiny-llama")
    train, _ = build_dataset([REFERENCE], limit=8, eval_fraction=0.0)
    texts = [t["instruction"] + t["output"] for t in train] + ["[Round 1] 问： 答："]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    from tokenizers import decoders
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")
    fast.save_pretrained(path)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                      initializer_range=0.3,  # the default 0.02 makes a 2-layer toy nearly insensitive to adapters
                      bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id)
    LlamaForCausalLM(cfg).save_pretrained(path)
    return path


def test_qa_uses_the_original_question_and_only_known_facts():
    rows = species_rows([REFERENCE])
    eagle = next(r for r in rows if r["label"] == "BALD EAGLE")
    qa = qa_for_species(eagle)
    name = eagle["chinese_name"] or eagle["english_name"]
    first = qa[0]
    assert first["instruction"] == f"请告诉我些关于{name}的知识吧？"
    assert eagle["scientific_name"] in first["output"] and eagle["family"] in first["output"]
    assert all(set(q) == {"instruction", "input", "output"} for q in qa)
    unmatched = [r for r in rows if not r["order"]]
    for r in unmatched[:5]:  # no taxonomy: no "目科" sentence with blanks
        assert all("目科" not in q["output"] for q in qa_for_species(r))


def test_answer_tokens_alone_carry_the_loss(tiny_lm):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_lm)
    item = {"instruction": "白头海雕是什么鸟？", "input": "", "output": "白头海雕是鹰科的鸟类。"}
    enc = encode(tok, item, "chatglm2", 256)
    n_answer = sum(1 for x in enc["labels"] if x != -100)
    assert n_answer == len(tok(item["output"], add_special_tokens=False)["input_ids"]) + 1  # + eos
    assert enc["labels"][-1] == tok.eos_token_id


@pytest.mark.parametrize("method", ["lora", "prefix"])
def test_finetune_llm_lowers_loss_and_adapter_loads_back(tiny_lm, tmp_path, method):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    res = main(["finetune-llm", "--model", str(tiny_lm), "--method", method, "--species", "4", "--steps", "8", "--max-len", "64",
                "--batch", "4", "--lr", "5e-2", "--virtual-tokens", "4", "--device", "cpu", "--out", str(tmp_path)])
    assert res["probe_loss_after"] < res["probe_loss_before"] - 0.05, res
    out = tmp_path / "finetune-llm"
    train = json.loads((out / "alpaca_train.json").read_text(encoding="utf-8"))
    assert train and all(set(t) == {"instruction", "input", "output"} for t in train)
    assert (out / "eval_refs.jsonl").exists()
    base = AutoModelForCausalLM.from_pretrained(tiny_lm)
    tok = AutoTokenizer.from_pretrained(tiny_lm)
    loaded = PeftModel.from_pretrained(base, res["adapter"]).eval()
    ids = torch.tensor([encode(tok, train[0], "chatglm2", 256)["input_ids"]])
    with torch.no_grad():
        tuned = loaded(input_ids=ids).logits
        with loaded.disable_adapter():
            plain = loaded(input_ids=ids).logits
    assert not torch.allclose(tuned, plain), "the saved adapter changed nothing"


def test_a_trained_adapter_is_served_by_the_transformers_backend(tiny_lm, tmp_path, make_app):
    """train → serve → answer: finetune-llm's LoRA adapter, named by TRANSFORMERS_ADAPTER, is what answers
    /get_response (its chat template is the training format), and it answers differently from the base model."""
    import shutil

    from transformers import AutoTokenizer

    res = main(["finetune-llm", "--model", str(tiny_lm), "--method", "lora", "--species", "4", "--steps", "8",
                "--max-len", "64", "--batch", "4", "--lr", "5e-2", "--device", "cpu", "--out", str(tmp_path)])
    form = {"user_input": "白头海雕是什么鸟？", "model_type": "transformers", "max_new_tokens": "12"}

    def answer(model, **config):
        app = make_app(services=["llm"], TRANSFORMERS_MODEL=str(model), LLM_TEMPERATURE=0, **config)
        r = app.test_client().post("/get_response", data=form)
        assert r.status_code == 200, r.get_json()
        models = app.test_client().get("/models").get_json()["models"]
        return r.get_json(), next(m for m in models if m["name"] == "transformers")

    tuned, described = answer(tiny_lm, TRANSFORMERS_ADAPTER=res["adapter"])
    # The base model with the adapter's tokenizer and chat template: only the adapter's weights differ.
    base = tmp_path / "base-with-template"
    shutil.copytree(tiny_lm, base)
    AutoTokenizer.from_pretrained(res["adapter"]).save_pretrained(base)
    plain, _ = answer(base)
    assert tuned["generative"] is True and described["adapter"] == "adapter"
    assert tuned["response"] != plain["response"], "the served adapter changed nothing"
