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


# --- vision: a tiny randomly initialised LLaVA (CLIP vision tower + Llama) built from configs here --------
# No real VLM weights exist offline; this exercises the real AutoProcessor / AutoModelForImageTextToText path.
VLM_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% for c in m['content'] %}"
                "{% if c['type'] == 'image' %}<image>{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
                "{% endfor %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
PATCHES = (16 // 4) ** 2  # image side / patch size, squared: image tokens per photo


@pytest.fixture(scope="module")
def tiny_vlm_dir(tmp_path_factory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor, PreTrainedTokenizerFast)

    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<unk>", "<|im_start|>", "<|im_end|>", "<image>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", eos_token="<|im_end|>",
                                        pad_token="<|im_end|>", extra_special_tokens={"image_token": "<image>"})
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}),
        tokenizer=tokenizer, patch_size=4, vision_feature_select_strategy="default", image_token="<image>",
        num_additional_image_tokens=1, chat_template=VLM_TEMPLATE)
    torch.manual_seed(0)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                                       image_size=16, patch_size=4, projection_dim=16),
        text_config=LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=384,
                                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"), vision_feature_layer=-1)
    path = tmp_path_factory.mktemp("tiny-vlm")
    LlavaForConditionalGeneration(config).save_pretrained(path)
    processor.save_pretrained(path)
    return str(path)


def _photo(color) -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (40, 30), color).save(out, format="JPEG")
    return out.getvalue()


@pytest.fixture(scope="module")
def vlm_app(make_module_app, tiny_vlm_dir):
    return make_module_app(services=["llm"], TRANSFORMERS_MODEL=tiny_vlm_dir, TRANSFORMERS_VLM=True, LLM_TEMPERATURE=0)


def test_vision_transformers_vlm_loads_from_a_config_built_model_and_reports_vision(vlm_app):
    models = {m["name"]: m for m in vlm_app.test_client().get("/models").get_json()["models"]}
    assert models["transformers"]["loaded"], models["transformers"].get("error")
    assert models["transformers"]["vision"] is True and models["transformers"]["context_window"] == 384


def test_vision_transformers_vlm_generates_from_the_photo_which_reaches_the_vision_tower(vlm_app):
    from birdsdao.llm.base import Limits, Prompt

    backend = vlm_app.extensions["birdsdao"].get("llm").registry.get("transformers").backend
    messages = [{"role": "system", "content": "Describe bird photos."},
                {"role": "user", "content": "Describe the photo. (The server saw: one American Robin.)"}]
    red = Prompt("d", prompt_type="caption", messages=messages, image=_photo((200, 30, 30)))
    inputs = backend._inputs(red)
    image_id = backend.tokenizer.convert_tokens_to_ids("<image>")
    assert tuple(inputs["pixel_values"].shape) == (1, 3, 16, 16)
    assert int((inputs["input_ids"] == image_id).sum()) == PATCHES  # the processor expanded the image part
    seen = []
    hook = backend.model.model.vision_tower.register_forward_hook(lambda mod, args, out: seen.append(args[0].shape))
    try:
        text = backend.generate(red, Limits(max_new_tokens=6))
    finally:
        hook.remove()
    assert text and seen and tuple(seen[0]) == (1, 3, 16, 16)
    # The pixels change the model's next-token scores; without a photo, no pixel_values and no image tokens.
    with torch.no_grad():
        blue = backend.model(**backend._inputs(Prompt("d", messages=messages, image=_photo((20, 40, 220))))).logits
        red_logits = backend.model(**inputs).logits
    assert not torch.allclose(red_logits[0, -1], blue[0, -1])
    plain = backend._inputs(Prompt("d", messages=messages))
    assert "pixel_values" not in plain and int((plain["input_ids"] == image_id).sum()) == 0
    assert messages[-1]["content"].startswith("Describe")  # the prompt's own messages are not changed
