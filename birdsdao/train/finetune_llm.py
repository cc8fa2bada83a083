"""``finetune-llm``: an Alpaca-format bird Q&A set from the species reference tables, then a P-tuning v2 or LoRA
adapter on a ``transformers`` causal LM (loss on the answer tokens only)."""
from __future__ import annotations

import argparse
import csv
import random
import time
from pathlib import Path

from ..tools.build_species_data import IUCN_ZH
from .common import SHARED, summary, write_json, write_jsonl

HELP = "build Alpaca bird Q&A from the species tables, then P-tuning v2 / LoRA a causal LM (peft)"

REFERENCE = SHARED / "data" / "birds525_species_reference.csv"
# The prompt the model sees; "chatglm2" is the format the original P-tuning v2 run used.
TEMPLATES = {
    "chatglm2": "[Round 1]\n\n问：{instruction}{input}\n\n答：",
    "alpaca": "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n",
}
# The same formats as chat templates, saved with the adapter's tokenizer when the base model has none, so the
# server (BIRDSDAO_TRANSFORMERS_ADAPTER) prompts the tuned model as it was trained. A system message leads the
# first user turn, as ChatGLM2 has no system role.
CHAT_TEMPLATES = {
    "chatglm2": ("{% set ns = namespace(round=1, system='') %}{% for m in messages %}"
                 "{% if m['role'] == 'system' %}{% set ns.system = m['content'] + '\n\n' %}"
                 "{% elif m['role'] == 'user' %}[Round {{ ns.round }}]\n\n问：{{ ns.system }}{{ m['content'] }}\n\n答："
                 "{% set ns.system = '' %}{% else %}{{ m['content'] }}\n\n{% set ns.round = ns.round + 1 %}{% endif %}"
                 "{% endfor %}"),
    "alpaca": ("{% set ns = namespace(system='') %}{% for m in messages %}"
               "{% if m['role'] == 'system' %}{% set ns.system = m['content'] %}"
               "{% elif m['role'] == 'user' %}### Instruction:\n{{ m['content'] }}\n\n### Input:\n{{ ns.system }}"
               "\n\n### Response:\n{% set ns.system = '' %}{% else %}{{ m['content'] }}\n\n{% endif %}{% endfor %}"),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reference", type=Path, nargs="+", default=[REFERENCE],
                   help="species CSV(s) with label, scientific_name, english_name, chinese_name, order, family, "
                        "iucn_status (the shared reference tables)")
    p.add_argument("--species", type=int, default=None, help="only the first N species")
    p.add_argument("--eval-fraction", type=float, default=0.05, help="Q&A pairs held out for `score`")
    p.add_argument("--model", type=Path, default=None,
                   help="a transformers causal LM folder; without it only the Q&A set is written")
    p.add_argument("--method", choices=("prefix", "lora"), default="prefix",
                   help="prefix: P-tuning v2 (the original's); lora: LoRA")
    p.add_argument("--template", choices=tuple(TEMPLATES), default="chatglm2")
    p.add_argument("--virtual-tokens", type=int, default=16, help="prefix length for P-tuning v2")
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--target-modules", default=None,
                   help="comma list for LoRA (default: peft's choice for the model type; ChatGLM2: query_key_value)")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--max-len", type=int, default=256)
    p.add_argument("--device", default="")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--trust-remote-code", action="store_true",
                   help="needed for ChatGLM2; runs code shipped with the model folder — only for models you trust")
    p.add_argument("--out", type=Path, default=Path("runs"))
    p.add_argument("--name", default="finetune-llm")


def species_rows(paths: list[Path], limit: int | None = None) -> list[dict]:
    rows, seen = [], set()
    for path in paths:
        with open(path, newline="", encoding="utf-8") as f:
            for r in csv.DictReader(f):
                key = r.get("scientific_name") or r.get("label")
                if not key or key in seen or r.get("label") == "background":
                    continue
                seen.add(key)
                rows.append(r)
    return rows[:limit] if limit else rows


def qa_for_species(r: dict) -> list[dict]:
    """The original's question plus variations, answered only with facts in the row."""
    en = r.get("english_name") or r.get("label", "").title()
    zh = r.get("chinese_name") or ""
    name = zh or en
    sci, order, family = r.get("scientific_name", ""), r.get("order", ""), r.get("family", "")
    status = r.get("iucn_status", "")
    aka = f"（英文名 {en}）" if zh else ""
    status_zh = f"IUCN 受威胁等级为{IUCN_ZH[status]}（{status}）" if status in IUCN_ZH else ""
    taxon = f"是{order}目{family}科的鸟类" if order and family else ""
    card = "，".join(x for x in (f"{name}{aka}", f"学名 {sci}" if sci else "", taxon, status_zh) if x) + "。"
    qa = [("请告诉我些关于{}的知识吧？", card), ("能介绍一下{}吗？", card), ("{}是什么鸟？", card)]
    if sci:
        qa.append(("{}的学名是什么？", f"{name}的学名是 {sci}。"))
    if taxon:  # rows the taxonomy did not match have no order/family: ask nothing we cannot answer
        qa.append(("{}属于哪个目、哪个科？", f"{name}属于{order}目{family}科。"))
    if status_zh:
        qa.append(("{}的保护等级是什么？", f"{name}的{status_zh}。"))
    out = [{"instruction": q.format(name), "input": "", "output": a} for q, a in qa]
    if zh:
        out.append({"instruction": f"{en}的中文名是什么？", "input": "", "output": f"{en}的中文名是{zh}。"})
    facts = [f"({sci})" if sci else "", f"is a bird of the family {family} in the order {order}" if taxon else "is a bird",
             f"with IUCN status {status}" if status else ""]
    out.append({"instruction": f"Tell me about the {en}.", "input": "",
                "output": f"The {en} " + " ".join(f for f in facts if f) + "."})
    return out


def build_dataset(paths, limit=None, eval_fraction=0.05, seed=0) -> tuple[list[dict], list[dict]]:
    items = [qa for r in species_rows(paths, limit) for qa in qa_for_species(r)]
    random.Random(seed).shuffle(items)
    n_eval = int(len(items) * eval_fraction)
    return items[n_eval:], items[:n_eval]


def encode(tokenizer, item: dict, template: str, max_len: int) -> dict:
    prompt = TEMPLATES[template].format(**item)
    p_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    a_ids = tokenizer(item["output"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = (p_ids + a_ids)[:max_len]
    labels = ([-100] * len(p_ids) + a_ids)[:max_len]
    return {"input_ids": ids, "labels": labels}


def collate(batch: list[dict], pad_id: int):
    import torch

    n = max(len(b["input_ids"]) for b in batch)
    ids = torch.full((len(batch), n), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), n), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), n), dtype=torch.long)
    for i, b in enumerate(batch):  # right padding: positions of real tokens stay 0..len-1
        L = len(b["input_ids"])
        ids[i, :L] = torch.tensor(b["input_ids"])
        labels[i, :L] = torch.tensor(b["labels"])
        mask[i, :L] = 1
    return ids, mask, labels


def peft_config(args, model):
    from peft import LoraConfig, PrefixTuningConfig, TaskType

    if args.method == "prefix":
        return PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=args.virtual_tokens)
    targets = args.target_modules.split(",") if args.target_modules else None
    if targets is None and getattr(model.config, "model_type", "") == "chatglm":
        targets = ["query_key_value"]
    return LoraConfig(task_type=TaskType.CAUSAL_LM, r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.05,
                      target_modules=targets)


def train_adapter(args, train_items: list[dict], out: Path) -> dict:
    import torch
    from peft import get_peft_model
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .common import pick_device

    torch.manual_seed(args.seed)
    device = pick_device(args.device)
    tok = AutoTokenizer.from_pretrained(args.model, trust_remote_code=args.trust_remote_code)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(args.model, trust_remote_code=args.trust_remote_code)
    model = get_peft_model(model, peft_config(args, model)).to(device)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    encoded = [encode(tok, it, args.template, args.max_len) for it in train_items]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    # A fixed probe batch scored in eval mode before and after: a noise-free "did it learn" number.
    probe = tuple(t.to(device) for t in collate(encoded[:max(args.batch, 8)], tok.pad_token_id))

    def probe_loss() -> float:
        model.eval()
        with torch.no_grad():
            value = model(input_ids=probe[0], attention_mask=probe[1], labels=probe[2]).loss.item()
        model.train()
        return value

    loss_before = probe_loss()
    rng = random.Random(args.seed)
    order: list[int] = []
    losses = []
    model.train()
    for _ in tqdm(range(args.steps), desc=f"{args.method}"):
        if len(order) < args.batch:
            order += rng.sample(range(len(encoded)), len(encoded))
        batch = [encoded[order.pop()] for _ in range(min(args.batch, len(encoded)))]
        ids, mask, labels = (t.to(device) for t in collate(batch, tok.pad_token_id))
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    loss_after = probe_loss()
    adapter = out / "adapter"
    model.save_pretrained(adapter)
    if not tok.chat_template:
        tok.chat_template = CHAT_TEMPLATES[args.template]
    tok.save_pretrained(adapter)
    k = max(1, len(losses) // 5)
    return {"adapter": str(adapter), "method": args.method, "trainable_params": trainable, "losses": losses,
            "probe_loss_before": loss_before, "probe_loss_after": loss_after,
            "loss_first": sum(losses[:k]) / k, "loss_last": sum(losses[-k:]) / k}


def run(args) -> dict:
    out = Path(args.out) / args.name
    train_items, eval_items = build_dataset(args.reference, args.species, args.eval_fraction, args.seed)
    write_json(out / "alpaca_train.json", train_items)
    write_json(out / "alpaca_eval.json", eval_items)
    # References in the JSONL shape `score` reads, so backends' answers can be scored against them.
    write_jsonl(out / "eval_refs.jsonl", ({"id": i, "question": it["instruction"], "text": it["output"]}
                                          for i, it in enumerate(eval_items)))
    result = {"train_items": len(train_items), "eval_items": len(eval_items), "data": str(out / "alpaca_train.json")}
    rows = {"Q&A pairs (train / held out)": f"{len(train_items)} / {len(eval_items)}", "data": out / "alpaca_train.json",
            "references for score": out / "eval_refs.jsonl"}
    if args.model:
        t0 = time.perf_counter()
        result.update(train_adapter(args, train_items, out))
        result["seconds"] = round(time.perf_counter() - t0, 1)
        write_json(out / "train_log.json", result)
        rows.update({"method": args.method, "trainable params": f"{result['trainable_params']:,}",
                     "loss (first → last fifth)": f"{result['loss_first']:.3f} → {result['loss_last']:.3f}",
                     "probe-batch loss (before → after)":
                         f"{result['probe_loss_before']:.3f} → {result['probe_loss_after']:.3f}",
                     "adapter": result["adapter"]})
    summary("finetune-llm", rows)
    return result
