// The knowledge-base page: list / create / delete knowledge bases, upload several files as background jobs
// with a progress bar (the job's chunks embedded) and a result per file, list and delete documents, and try a search.
import { ApiError, getJSON, postForm, uploadWithProgress, describeError } from "./api.js";
import { h, initChrome, showError, showNotice, hideNotice, describeScore } from "./ui.js";

const $ = (id) => document.getElementById(id);
const CURRENT_KEY = "birdsdao.kb.current";

const STATUS_TEXT = {
  added: "已添加 added",
  replaced: "已替换 replaced",
  skipped: "已跳过（已存在）skipped",
  rejected: "被拒绝 rejected",
};

function current() {
  return $("kb-select").value;
}

function formatBytes(n) {
  if (typeof n !== "number") return "";
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

function toDate(t) {
  if (t === undefined || t === null || t === "") return null;
  const date = typeof t === "number" ? new Date(t * (t < 1e12 ? 1000 : 1)) : new Date(t);
  return Number.isNaN(date.getTime()) ? null : date;
}

/** A table cell with the date on one line in the reader's short format ("2026/12/6 05:47"); the full one on hover. */
function timeCell(t) {
  const td = h("td", "date");
  const date = toDate(t);
  if (!date) {
    td.textContent = t === undefined || t === null ? "" : String(t);
    return td;
  }
  const time = h("time", null, date.toLocaleString(undefined, { dateStyle: "short", timeStyle: "short" }));
  time.dateTime = date.toISOString();
  time.title = date.toLocaleString();
  td.append(time);
  return td;
}

function actionButton(text, label, onClick) {
  const button = h("button", "small danger", text);
  button.type = "button";
  button.setAttribute("aria-label", label);
  button.addEventListener("click", onClick);
  return button;
}

async function refreshKbs(select) {
  let kbs = [];
  try {
    kbs = (await getJSON("/kb/list")).kbs || [];
  } catch (err) {
    showError(err);
  }
  const rows = $("kb-rows");
  rows.replaceChildren();
  if (!kbs.length) emptyRow(rows, "还没有知识库。No knowledge base yet.");
  for (const kb of kbs) {
    const tr = h("tr");
    tr.dataset.kb = kb.kb_name;
    const name = h("th", null, kb.kb_name);
    if (kb.bundled) name.append(" ", h("span", "badge", "内置 bundled"));
    tr.append(name, h("td", null, kb.description || ""), h("td", "num", kb.docs ?? ""), h("td", "num", kb.chunks ?? ""));
    const cell = h("td");
    const del = actionButton("删除", `删除知识库 ${kb.kb_name} Delete knowledge base`, () => deleteKb(kb, del));
    cell.append(del);
    tr.querySelector("th").scope = "row";
    tr.append(cell);
    rows.append(tr);
  }
  const sel = $("kb-select");
  const wanted = select || sel.value || localStorage.getItem(CURRENT_KEY);
  sel.replaceChildren(...kbs.map((kb) => Object.assign(h("option", null, kb.kb_name), { value: kb.kb_name })));
  if (wanted && kbs.some((kb) => kb.kb_name === wanted)) sel.value = wanted;
  await refreshDocs();
}

/** One muted row spanning the table, saying it is empty. */
function emptyRow(rows, text) {
  const td = h("td", "muted", text);
  td.colSpan = 5;
  const tr = h("tr");
  tr.append(td);
  rows.append(tr);
}

async function refreshDocs() {
  const rows = $("doc-rows");
  const kb = current();
  rows.replaceChildren();
  if (!kb) return;
  try { localStorage.setItem(CURRENT_KEY, kb); } catch { /* ignore */ }
  let docs = [];
  try {
    docs = (await getJSON(`/kb/docs?kb_name=${encodeURIComponent(kb)}`)).docs || [];
  } catch (err) {
    showError(err);
    return;
  }
  if (!docs.length) emptyRow(rows, "这个知识库还没有文档。No documents yet.");
  for (const doc of docs) {
    const tr = h("tr");
    tr.dataset.doc = doc.doc_name;
    const name = h("th", null, doc.doc_name);
    name.scope = "row";
    tr.append(name, h("td", "num", doc.chunks ?? ""), h("td", "num", formatBytes(doc.bytes)), timeCell(doc.added_at));
    const cell = h("td");
    cell.append(actionButton("删除", `删除文档 ${doc.doc_name} Delete document`, () => deleteDoc(kb, doc.doc_name)));
    tr.append(cell);
    rows.append(tr);
  }
}

/** Ask for the KB's name typed out before deleting it (a misclick on a row of delete buttons loses a whole
 * KB); → the typed name, or null when cancelled. The bundled species KB also needs it server-side. */
function confirmKbName(kb, opener) {
  const dialog = $("delete-kb-dialog");
  const input = $("delete-kb-confirm");
  const ok = $("delete-kb-ok");
  const text = $("delete-kb-text");
  text.replaceChildren(`将删除知识库“${kb.kb_name}”及其全部文档（${kb.docs ?? "?"} 个），无法撤销。`
    + ` Deletes "${kb.kb_name}" and all its documents; this cannot be undone.`);
  if (kb.bundled) {
    text.append(h("strong", "bundled-warning", " 这是内置的物种知识库，重建需要很长时间。"
      + " This is the bundled species knowledge base; rebuilding it takes a long time."));
  }
  input.value = "";
  input.placeholder = kb.kb_name;
  ok.disabled = true;
  const sync = () => { ok.disabled = input.value.trim() !== kb.kb_name; };
  input.addEventListener("input", sync);
  return new Promise((resolve) => {
    const onCancel = () => dialog.close("cancel");
    $("delete-kb-cancel").addEventListener("click", onCancel);
    const onSubmit = (e) => {
      if (ok.disabled) e.preventDefault();
      else dialog.returnValue = "ok";
    };
    $("delete-kb-form").addEventListener("submit", onSubmit);
    dialog.addEventListener("close", () => {
      input.removeEventListener("input", sync);
      $("delete-kb-cancel").removeEventListener("click", onCancel);
      $("delete-kb-form").removeEventListener("submit", onSubmit);
      if (opener && opener.isConnected) opener.focus();
      resolve(dialog.returnValue === "ok" ? input.value.trim() : null);
    }, { once: true });
    dialog.returnValue = "";
    dialog.showModal();
    input.focus();
  });
}

async function deleteKb(kb, opener) {
  const typed = await confirmKbName(kb, opener);
  if (typed === null) return;
  const name = kb.kb_name;
  try {
    await postForm("/kb/delete", { kb_name: name, confirm: typed });
    showNotice(`已删除知识库 ${name}。Deleted.`, "info");
    await refreshKbs();
  } catch (err) {
    showError(err);
  }
}

async function deleteDoc(kb, doc) {
  if (!window.confirm(`确定删除文档“${doc}”？\nDelete document "${doc}"?`)) return;
  try {
    await postForm("/kb/delete_doc", { kb_name: kb, doc_name: doc });
    showNotice(`已删除文档 ${doc}。Deleted.`, "info");
    await refreshKbs(kb);
  } catch (err) {
    showError(err);
  }
}

function uploadRow(file) {
  const li = h("li", "upload");
  li.dataset.file = file.name;
  const name = h("span", "upload-name", file.name);
  const progress = h("progress");
  progress.max = 1;
  progress.value = 0;
  progress.setAttribute("aria-label", `上传进度 ${file.name} Upload progress`);
  const result = h("span", "upload-result", "等待 waiting");
  li.append(name, progress, result);
  return { li, progress, result };
}

const JOB_POLL_MS = 700;
const JOB_POLL_RETRIES = 10; // consecutive failed polls (server restarting, database failing over) before giving up

const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

/**
 * Follow an upload job (/kb/jobs/<id>) until it ends, showing its real progress: the bar is the chunks
 * embedded of the chunks to embed, the line says queued / embedding n of m. Returns the finished job.
 */
async function followJob(jobId, { li, progress, result }) {
  li.dataset.jobId = jobId;
  let failures = 0;
  for (;;) {
    let job;
    try {
      job = await getJSON(`/kb/jobs/${encodeURIComponent(jobId)}`);
      failures = 0;
    } catch (err) {
      // A 503 or a dropped connection is a server (re)starting: the job lives on in the queue.
      const transient = !(err instanceof ApiError) || err.status >= 502;
      if (!transient || ++failures > JOB_POLL_RETRIES) throw err;
      await sleep(JOB_POLL_MS * 2);
      continue;
    }
    li.dataset.job = job.state;
    if (job.state === "done" || job.state === "failed") return job;
    const p = job.progress || {};
    if (job.state === "running" && p.chunks_to_embed) {
      progress.max = p.chunks_to_embed;
      progress.value = p.chunks_embedded || 0;
      result.textContent = `嵌入中 embedding ${p.chunks_embedded || 0} / ${p.chunks_to_embed} 片段 chunks`;
    } else {
      progress.removeAttribute("value"); // indeterminate until the job reports its chunks
      result.textContent = job.state === "queued" ? "排队中 queued" : "处理中 processing";
    }
    await sleep(JOB_POLL_MS);
  }
}

function showFileResult(li, result, r) {
  li.dataset.status = r.status || "unknown";
  let text = STATUS_TEXT[r.status] || r.status || "?";
  if (typeof r.chunks === "number" && r.status !== "rejected") text += ` · ${r.chunks} 片段 chunks`;
  if (r.error) text += ` — ${r.error}`;
  result.textContent = text;
}

/**
 * One background job per file (async=1), so each has its own progress bar and its own result line: the bar
 * first shows the file being sent, then the job's chunks being embedded; no request waits for the embedding.
 */
async function uploadFiles(files, replace) {
  const kb = current();
  if (!kb) {
    showNotice("请先创建或选择一个知识库。Create or pick a knowledge base first.");
    return;
  }
  const list = $("upload-list");
  list.replaceChildren();
  const rows = files.map((file) => {
    const row = uploadRow(file);
    list.append(row.li);
    return row;
  });
  // Two at a time: the jobs run one after another on the server anyway, and a full queue answers 503.
  let next = 0;
  const worker = async () => {
    while (next < files.length) {
      const i = next++;
      const row = rows[i];
      const { li, progress, result } = row;
      result.textContent = "上传中 uploading";
      const fields = { kb_name: kb, files: files[i], async: "1" };
      if (replace) fields.replace = "1";
      const { promise } = uploadWithProgress("/kb/upload", fields, (f) => {
        progress.value = f;
      });
      try {
        const accepted = await promise;
        const job = await followJob(accepted.job_id, row);
        progress.max = 1;
        progress.value = 1;
        if (job.state === "failed") {
          li.dataset.status = "error";
          result.textContent = `失败 failed — ${(job.result && job.result.error) || "?"}`;
        } else {
          showFileResult(li, result, ((job.result && job.result.files) || [])[0] || {});
        }
      } catch (err) {
        li.dataset.status = "error";
        result.textContent = `失败 failed — ${describeError(err)}`;
      }
    }
  };
  await Promise.all([worker(), worker()]);
  await refreshKbs(kb);
}

async function search(query) {
  const kb = current();
  const status = $("search-status");
  const hits = $("search-hits");
  hits.replaceChildren();
  if (!kb) {
    status.textContent = "请先选择知识库。Pick a knowledge base first.";
    return;
  }
  status.textContent = "搜索中… Searching…";
  try {
    const body = await postForm("/kb/search", { kb_name: kb, query, top_k: 5 });
    const list = body.hits || [];
    status.textContent = list.length ? `${list.length} 条结果 results` : "没有找到。No results.";
    for (const hit of list) {
      const li = h("li", "hit");
      const head = h("p", "hit-head");
      head.append(h("strong", null, hit.doc_name || "?"));
      const score = describeScore(hit);
      if (score) {
        const span = h("span", "muted", ` · ${score.short}`);
        span.title = score.long;
        head.append(span);
      }
      li.append(head, h("blockquote", "source-text", hit.text || ""));
      hits.append(li);
    }
  } catch (err) {
    status.textContent = `搜索失败：${describeError(err)}`;
  }
}

function init() {
  initChrome();
  $("create-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    hideNotice();
    const name = $("new-kb-name").value.trim();
    try {
      await postForm("/kb/create", { kb_name: name, description: $("new-kb-desc").value.trim() });
      showNotice(`已创建知识库 ${name}。Created.`, "info");
      e.target.reset();
      await refreshKbs(name);
    } catch (err) {
      showError(err);
    }
  });
  $("kb-select").addEventListener("change", refreshDocs);
  $("upload-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    hideNotice();
    const input = $("upload-files");
    const files = [...input.files];
    if (!files.length) {
      showNotice("请选择要上传的文件。Choose files to upload.");
      return;
    }
    const button = e.target.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      await uploadFiles(files, $("upload-replace").checked);
      input.value = "";
    } finally {
      button.disabled = false;
    }
  });
  $("search-form").addEventListener("submit", (e) => {
    e.preventDefault();
    search($("search-query").value.trim());
  });
  refreshKbs();
}

init();
