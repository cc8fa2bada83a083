"""Ingest throughput: our pipeline (KnowledgeBaseService.upload) vs a naive LangChain pipeline
(RecursiveCharacterTextSplitter + FAISS.from_documents) with the same e5 embedder, same corpus, same run.

The corpus is field-note style Markdown (species cards plus the boilerplate real club documents carry:
a shared header and licence footer). Scenario 1 ingests it fresh; scenario 2 re-ingests it after 10% of
the documents were edited (the naive pipeline has no incremental path and rebuilds).

    nice -n 10 .venv/bin/python bench/bench_kb_ingest.py [--docs 150]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import kb_corpus  # noqa: E402
from birdsdao.kb import KnowledgeBaseService  # noqa: E402
from birdsdao.kb.embeddings import EmbedderRegistry  # noqa: E402

HEADER = "本资料由观鸟协会整理，仅供会员学习交流使用。This note was compiled by the bird club for members.\n\n"
FOOTER = ("\n\n## 版权与许可 Licence\n本文以 CC BY-SA 4.0 许可发布。转载请注明出处，并保留本声明。"
          "Shared under CC BY-SA 4.0: keep this notice when you copy it. 数据来源：公开分类学表格与俱乐部观察记录。\n")


def corpus(n: int) -> list[tuple[str, str]]:
    rows = kb_corpus.species_rows()[:n]
    return [(name, HEADER + text + FOOTER) for name, text in (kb_corpus.card(r) for r in rows)]


def naive(docs, embedder) -> tuple[float, int]:
    import warnings

    from langchain_core.documents import Document
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from langchain_community.vectorstores import FAISS
    start = time.perf_counter()
    splitter = RecursiveCharacterTextSplitter(chunk_size=400, chunk_overlap=80)
    chunks = splitter.split_documents([Document(page_content=t, metadata={"source": n}) for n, t in docs])
    store = FAISS.from_documents(chunks, embedder)
    store.save_local(tempfile.mkdtemp())
    return time.perf_counter() - start, len(chunks)


def ours(service, docs, replace=False) -> tuple[float, int]:
    start = time.perf_counter()
    for i in range(0, len(docs), 20):  # uploads of 20 files, as the page sends them
        service.upload("bench", [(n, t.encode()) for n, t in docs[i:i + 20]], replace=replace)
    return time.perf_counter() - start, len(service.get("bench").current().chunks)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=150)
    args = parser.parse_args()
    registry = EmbedderRegistry()
    embedder = registry.get()
    docs = corpus(args.docs)
    edited = [(n, t.replace("## 保护", "## 保护（2025 修订）")) if i % 10 == 0 else (n, t) for i, (n, t) in enumerate(docs)]

    t_naive, c_naive = naive(docs, embedder)
    service = KnowledgeBaseService(Path(tempfile.mkdtemp()) / "kb", registry)
    service.create("bench")
    t_ours, c_ours = ours(service, docs)
    print(f"scenario 1 fresh ingest, {len(docs)} docs:")
    print(f"  naive LangChain: {c_naive} chunks in {t_naive:.2f} s = {c_naive / t_naive:.1f} chunks/s")
    print(f"  ours:            {c_ours} chunks in {t_ours:.2f} s = {c_ours / t_ours:.1f} chunks/s")
    print(f"  ratio (chunks/s): {(c_ours / t_ours) / (c_naive / t_naive):.2f}x; wall-clock: {t_naive / t_ours:.2f}x")

    t_naive2, c_naive2 = naive(edited, embedder)
    t_ours2, c_ours2 = ours(service, edited, replace=True)
    print(f"scenario 2 re-ingest after editing 10% of the docs:")
    print(f"  naive LangChain: {c_naive2} chunks in {t_naive2:.2f} s = {c_naive2 / t_naive2:.1f} chunks/s")
    print(f"  ours:            {c_ours2} chunks in {t_ours2:.2f} s = {c_ours2 / t_ours2:.1f} chunks/s")
    print(f"  ratio (chunks/s): {(c_ours2 / t_ours2) / (c_naive2 / t_naive2):.2f}x")


if __name__ == "__main__":
    main()
