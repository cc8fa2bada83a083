"""The transformers chat backend with a tiny model built here (random weights, a real BPE tokenizer
trained offline with a chat template, saved and loaded by path), and the ChatGLM2 P-tuning v2 prefix loader.
The real ChatGLM2-6B cannot be loaded here (no weights offline); see birdsdao/llm/README.md."""
from __future__ import annotations

import json
import pickle

import pytest
import torch

from birdsdao.llm.transformers_chat import chatglm_turns, load_prefix_state, pre_seq_len_of

CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CORPUS = ["The bald eagle eats fish and nests in tall trees.", "白头海雕主要以鱼类为食。",
          "Owls hunt at night; cranes dance in spring.", "What do birds eat? Where do they live?"] * 20


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<unk>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", eos_token="<|im_end|>",
                                        pad_token="<|im_end|>")
    tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    path = tmp_path_factory.mktemp("tiny-chat")
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture
def app(make_app, tiny_model_dir):
    return make_app(services=["llm"], TRANSFORMERS_MODEL=tiny_model_dir, LLM_TEMPERATURE=0)


def test_transformers_backend_loads_by_path_and_reports_its_window(app):
    models = {m["name"]: m for m in app.test_client().get("/models").get_json()["models"]}
    assert models["transformers"]["loaded"] and models["transformers"]["generative"] is True
    assert models["transformers"]["context_window"] == 512


def test_transformers_backend_stream_equals_plain_answer_within_max_new_tokens(app):
    client = app.test_client()
    form = {"user_input": "What do birds eat?", "model_type": "transformers", "max_new_tokens": 10}
    plain = client.post("/get_response", data=form)
    assert plain.status_code == 200, plain.get_json()
    text = plain.get_json()["response"]
    backend = app.extensions["birdsdao"].get("llm").registry.get("transformers").backend
    assert 0 < backend.count_tokens(text) <= 12
    r = client.post("/get_response", data={**form, "stream": 1})
    events = [json.loads(x[6:]) for x in r.data.decode().split("\n\n") if x.startswith("data: ")]
    assert events[-1]["done"] is True
    assert "".join(e.get("delta", "") for e in events[:-1]) == text   # greedy: same text both ways


def test_transformers_stream_closed_early_stops_the_generate_thread(app):
    llm = app.extensions["birdsdao"].get("llm")
    r = app.test_client().post("/get_response", data={"user_input": "Tell me about owls.", "model_type": "transformers",
                                                      "max_new_tokens": 400, "stream": 1}, buffered=False)
    next(iter(r.response))
    r.close()
    assert llm.registry.get("transformers").gate.running == 0 and llm.stats["cancelled"] == 1
    import threading
    assert not any(t.name == "generate-transformers" and t.is_alive() for t in threading.enumerate())


def _prefix_checkpoint(directory, pre_seq_len=8, width=24, fmt="bin", with_config=True):
    directory.mkdir()
    state = {"transformer.prefix_encoder.embedding.weight": torch.randn(pre_seq_len, width),
             "transformer.other.weight": torch.zeros(1)}
    if fmt == "bin":
        torch.save(state, directory / "pytorch_model.bin")
    else:
        from safetensors.torch import save_file
        save_file(state, str(directory / "model.safetensors"))
    if with_config:
        (directory / "config.json").write_text(json.dumps({"pre_seq_len": pre_seq_len}))
    return state


@pytest.mark.parametrize("fmt, with_config", [("bin", True), ("safetensors", False)])
def test_ptuning_prefix_weights_load_into_a_prefix_encoder(tmp_path, fmt, with_config):
    state = _prefix_checkpoint(tmp_path / "ckpt", fmt=fmt, with_config=with_config)
    prefix = load_prefix_state(tmp_path / "ckpt")
    assert list(prefix) == ["embedding.weight"]          # only the prefix encoder, key prefix stripped
    assert pre_seq_len_of(tmp_path / "ckpt", prefix) == 8
    encoder = torch.nn.Module()
    encoder.embedding = torch.nn.Embedding(8, 24)           # ChatGLM2's PrefixEncoder shape (no projection)
    encoder.load_state_dict(prefix)
    assert torch.equal(encoder.embedding.weight, state["transformer.prefix_encoder.embedding.weight"])


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_ptuning_checkpoint_with_pickled_code_is_refused(tmp_path):
    (tmp_path / "ckpt").mkdir()
    torch.save({"transformer.prefix_encoder.embedding.weight": _Evil()}, tmp_path / "ckpt" / "pytorch_model.bin")
    with pytest.raises(pickle.UnpicklingError):
        load_prefix_state(tmp_path / "ckpt")


def test_chatglm2_without_weights_is_listed_with_its_load_error(make_app, tmp_path):
    app = make_app(services=["llm"], CHATGLM2_PATH=str(tmp_path / "no-such-model"))
    client = app.test_client()
    r = client.post("/get_response", data={"user_input": "你好", "model_type": "chatglm2"})
    assert r.status_code == 503 and r.get_json()["code"] == "model_unavailable"
    models = {m["name"]: m for m in client.get("/models").get_json()["models"]}
    assert models["chatglm2"]["loaded"] is False and "no-such-model" in models["chatglm2"]["error"]


def test_chat_messages_become_chatglm2_query_and_history():
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "u1"},
                {"role": "assistant", "content": "a1"}, {"role": "user", "content": "u2"}]
    assert chatglm_turns(messages) == ("u2", [("S\n\nu1", "a1")])
    assert chatglm_turns(messages[:1] + messages[-1:]) == ("S\n\nu2", [])
