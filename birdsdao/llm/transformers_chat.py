"""Chat models through Hugging Face transformers: a generic backend (chat template, streamed; with
TRANSFORMERS_VLM an image-text-to-text model that sees the question's photo) and ChatGLM2 (``stream_chat``,
P-tuning v2 prefixes); local paths only, no full unpickling."""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Iterator

from ..config import DEFAULTS
from .base import Backend, Limits, Prompt
from .vision import as_parts, decode_rgb, with_image

PREFIX_KEY = "transformer.prefix_encoder."


def _quantization_kwargs(bits: int | None) -> tuple[dict, str | None]:
    """(from_pretrained kwargs, note). 4/8-bit needs CUDA + bitsandbytes; elsewhere full precision."""
    if not bits:
        return {}, None
    import torch

    if not torch.cuda.is_available():
        return {}, f"{bits}-bit requested but no CUDA device: loaded in full precision"
    try:
        from transformers import BitsAndBytesConfig
        import bitsandbytes  # noqa: F401
    except ImportError:
        return {}, f"{bits}-bit requested but bitsandbytes is not installed: loaded in full precision"
    quant = BitsAndBytesConfig(load_in_4bit=True) if int(bits) == 4 else BitsAndBytesConfig(load_in_8bit=True)
    return {"quantization_config": quant, "device_map": "auto"}, None


class TransformersChatBackend(Backend):
    kind = "generative"
    generative = True
    local = True

    def __init__(self, name: str, path: str, quantize: int | None = None,
                 temperature: float = DEFAULTS["LLM_TEMPERATURE"], context_window: int | None = None,
                 adapter: str | None = None, vlm: bool = False):
        from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

        self.path, self.adapter = path, adapter or None
        self.vision = bool(vlm)
        kwargs, self.note = _quantization_kwargs(quantize)
        if self.vision:
            # The processor pairs the tokenizer with the image preprocessor and owns the chat template that
            # places the image tokens.
            self.processor = AutoProcessor.from_pretrained(path, local_files_only=True)
            self.tokenizer = self.processor.tokenizer
            model = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True, **kwargs)
        else:
            self.processor = None
            # A finetune-llm adapter folder carries the tokenizer (and chat template) it was trained with.
            self.tokenizer = AutoTokenizer.from_pretrained(self.adapter or path, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, **kwargs)
        if self.adapter:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, self.adapter, local_files_only=True)
        self.model = model.eval()
        text_config = self.model.config.get_text_config()  # a VLM's language model holds the window
        window = context_window or getattr(text_config, "max_position_embeddings", None) or 2048
        super().__init__(name, context_window=int(window))
        self.temperature = temperature

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def _inputs(self, prompt: Prompt):
        if self.vision:
            # Processor chat templates read part lists; the photo goes in the last user message as an image
            # part, and its pixels go to the processor beside the text.
            images = [decode_rgb(prompt.image)] if prompt.image else None
            messages = (with_image(prompt.messages, {"type": "image"}, all_parts=True) if images else
                        [{**m, "content": as_parts(m["content"])} for m in prompt.messages])
            text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            encoded = self.processor(text=text, images=images, return_tensors="pt")
        else:
            encoded = self.tokenizer.apply_chat_template(prompt.messages, add_generation_prompt=True,
                                                         return_tensors="pt", return_dict=True)
        return {k: v.to(self.model.device) for k, v in encoded.items()}

    def stream(self, prompt: Prompt, limits: Limits) -> Iterator[str]:
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        class _Stop(StoppingCriteria):
            # Checked after every token: a closed client or a timeout ends generate() promptly.
            def __call__(self, input_ids, scores, **kwargs):
                return limits.expired() or stop.is_set()

        stop = threading.Event()
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=60)
        sampling = {"do_sample": True, "temperature": self.temperature} if self.temperature > 0 else {"do_sample": False}
        kwargs = dict(**self._inputs(prompt), max_new_tokens=limits.max_new_tokens, streamer=streamer,
                      stopping_criteria=StoppingCriteriaList([_Stop()]),
                      pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id, **sampling)
        errors: list[BaseException] = []

        def run():
            try:
                self.model.generate(**kwargs)
            except BaseException as exc:  # surfaced to the caller below, not lost in the thread
                errors.append(exc)
                streamer.end()

        worker = threading.Thread(target=run, name=f"generate-{self.name}", daemon=True)
        worker.start()
        try:
            for text in streamer:
                if text:
                    yield text
        finally:
            stop.set()
            worker.join()
        if errors:
            raise errors[0]

    def describe(self) -> dict:
        info = {"model": os.path.basename(os.path.normpath(self.path)), "vision": self.vision}
        if getattr(self, "adapter", None):
            info["adapter"] = os.path.basename(os.path.normpath(self.adapter))
        if self.note:
            info["note"] = self.note
        return info


# --- ChatGLM2 --------------------------------------------------------------------------------------
def load_prefix_state(ptuning_dir: str | os.PathLike) -> dict:
    """The prefix-encoder weights of a P-tuning v2 checkpoint (keys without the ``transformer.prefix_encoder.``
    prefix), from ``model.safetensors`` or ``pytorch_model.bin`` (tensors only: weights_only=True)."""
    directory = Path(ptuning_dir)
    safetensors_file = directory / "model.safetensors"
    bin_file = directory / "pytorch_model.bin"
    if safetensors_file.is_file():
        from safetensors.torch import load_file

        state = load_file(str(safetensors_file))
    elif bin_file.is_file():
        import torch

        state = torch.load(str(bin_file), map_location="cpu", weights_only=True)
    else:
        raise FileNotFoundError(f"no model.safetensors or pytorch_model.bin in {directory}")
    prefix = {k[len(PREFIX_KEY):]: v for k, v in state.items() if k.startswith(PREFIX_KEY)}
    if not prefix:
        raise ValueError(f"{directory} holds no '{PREFIX_KEY}*' weights: not a P-tuning v2 checkpoint")
    return prefix


def pre_seq_len_of(ptuning_dir: str | os.PathLike, prefix_state: dict) -> int:
    """``pre_seq_len`` from the checkpoint's config.json, else from the prefix embedding's row count."""
    config_file = Path(ptuning_dir) / "config.json"
    if config_file.is_file():
        value = json.loads(config_file.read_text(encoding="utf-8")).get("pre_seq_len")
        if value:
            return int(value)
    return int(prefix_state["embedding.weight"].shape[0])


def chatglm_turns(messages: list[dict]) -> tuple[str, list[tuple[str, str]]]:
    """Chat messages -> ChatGLM2's (query, history). It has no system role: the system text leads the
    first user turn."""
    system = "\n".join(m["content"] for m in messages if m["role"] == "system")
    turns = [m for m in messages if m["role"] != "system"]
    query = turns[-1]["content"]
    history = [(turns[i]["content"], turns[i + 1]["content"]) for i in range(0, len(turns) - 1, 2)]
    if system and history:
        history[0] = (f"{system}\n\n{history[0][0]}", history[0][1])
    elif system:
        query = f"{system}\n\n{query}"
    return query, history


class ChatGLM2Backend(TransformersChatBackend):
    """THUDM/chatglm2-6b (or chatglm3) with its remote code; ``stream_chat`` yields the whole reply so far
    after each token, so closing our generator stops decoding at the next token."""

    def __init__(self, name: str, path: str, ptuning: str | None = None, quantize: int | None = None,
                 temperature: float = DEFAULTS["LLM_TEMPERATURE"]):
        import torch
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        self.path = path
        self.note = None
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True, local_files_only=True)
        prefix = None
        extra = {}
        if ptuning:
            prefix = load_prefix_state(ptuning)
            extra["pre_seq_len"] = pre_seq_len_of(ptuning, prefix)
        config = AutoConfig.from_pretrained(path, trust_remote_code=True, local_files_only=True, **extra)
        model = AutoModel.from_pretrained(path, config=config, trust_remote_code=True, local_files_only=True)
        if prefix is not None:
            model.transformer.prefix_encoder.load_state_dict(prefix)
        cuda = torch.cuda.is_available()
        if quantize and cuda:
            model = model.quantize(int(quantize))  # ChatGLM2's own int4/int8 kernels (CUDA)
        elif quantize:
            self.note = f"{quantize}-bit requested but no CUDA device: running in float32 on CPU"
        model = model.half().cuda() if cuda else model.float()
        if prefix is not None:
            model.transformer.prefix_encoder.float()  # the recipe keeps the prefix encoder in fp32
        self.model = model.eval()
        self.ptuning = ptuning
        Backend.__init__(self, name, context_window=int(getattr(config, "seq_length", 8192)))
        self.temperature = temperature

    def stream(self, prompt: Prompt, limits: Limits) -> Iterator[str]:
        query, history = chatglm_turns(prompt.messages)
        replies = self.model.stream_chat(self.tokenizer, query, history=history, max_length=self.context_window,
                                         temperature=max(self.temperature, 0.01), top_p=0.8)
        sent = 0
        try:
            for step, (response, _history) in enumerate(replies, start=1):
                if len(response) > sent:
                    yield response[sent:]
                    sent = len(response)
                if limits.expired() or step >= limits.max_new_tokens:
                    return
        finally:
            replies.close()

    def describe(self) -> dict:
        info = super().describe()
        if self.ptuning:
            info["ptuning"] = os.path.basename(os.path.normpath(self.ptuning))
        return info


def create(name: str, config, services) -> TransformersChatBackend:
    return TransformersChatBackend(name, config["TRANSFORMERS_MODEL"], quantize=config["TRANSFORMERS_QUANTIZE"],
                                   temperature=float(config["LLM_TEMPERATURE"]),
                                   adapter=config["TRANSFORMERS_ADAPTER"], vlm=bool(config["TRANSFORMERS_VLM"]))


def create_chatglm2(name: str, config, services) -> Backend:
    path = config["CHATGLM2_PATH"]
    if str(path).lower().endswith(".gguf"):
        # CPU-only deployments: a ChatGLM GGUF conversion served by llama.cpp under the same name.
        from . import llama

        return llama.create(name, config, services, path=path)
    return ChatGLM2Backend(name, path, ptuning=config["CHATGLM2_PTUNING"], quantize=config["CHATGLM2_QUANTIZE"],
                           temperature=float(config["LLM_TEMPERATURE"]))
