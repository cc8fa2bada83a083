// "Teach a new species" on the chat page: POST /species/teach with 3+ of the user's own photos (no
// retraining on the server), the list of taught species (GET /species/taught) and forgetting one.
import { getJSON, postForm, describeError } from "./api.js";
import { h } from "./ui.js";

const $ = (id) => document.getElementById(id);

function displayName(record) {
  const names = record.names || {};
  return [names.chinese_name, names.english_name].filter(Boolean).join(" ") || record.label;
}

async function refreshTaught() {
  const list = $("taught-list");
  let species = [];
  try {
    species = (await getJSON("/species/taught")).species || [];
  } catch (err) {
    list.replaceChildren(h("li", "muted", `无法读取 Cannot load: ${describeError(err)}`));
    return;
  }
  list.replaceChildren(...species.map((record) => {
    const li = h("li", "taught");
    li.dataset.label = record.label;
    li.append(h("span", null, `${displayName(record)} · ${record.images ?? "?"} 张 photos`));
    const forget = h("button", "small danger", "忘记");
    forget.type = "button";
    forget.setAttribute("aria-label", `忘记 ${record.label} Forget this taught species`);
    forget.addEventListener("click", async () => {
      try {
        await postForm("/species/forget", { label: record.label });
        $("teach-status").textContent = `已忘记 ${record.label}。Forgotten.`;
      } catch (err) {
        $("teach-status").textContent = `失败：${describeError(err)}`;
      }
      refreshTaught();
    });
    li.append(forget);
    return li;
  }));
}

export function initTeach() {
  const form = $("teach-form");
  const status = $("teach-status");
  let loaded = false;
  $("teach-panel").addEventListener("toggle", () => {
    if ($("teach-panel").open && !loaded) {
      loaded = true;
      refreshTaught();
    }
  });
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const files = [...$("teach-images").files];
    if (files.length < 3) {
      status.dataset.kind = "error";
      status.textContent = "请至少选择 3 张照片。Pick at least 3 photos.";
      return;
    }
    const data = new FormData();
    for (const name of ["label", "english_name", "chinese_name", "scientific_name"]) {
      const value = form.elements[name].value.trim();
      if (value) data.append(name, value);
    }
    for (const file of files) data.append("images", file);
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    status.dataset.kind = "busy";
    status.textContent = "正在学习… Learning…";
    try {
      const body = await postForm("/species/teach", data);
      status.dataset.kind = "done";
      status.textContent = `已学会 ${body.label}（${body.images_used} 张照片），现在认识 ${body.species_count} 种鸟。`
        + ` Learned; ${body.species_count} species known.`;
      form.reset();
      refreshTaught();
    } catch (err) {
      status.dataset.kind = "error";
      status.textContent = `学习失败：${describeError(err)}`;
    } finally {
      button.disabled = false;
    }
  });
}
